//! Busy is not dead: the failure trove exists to avoid. A 3-node cluster (an etcd of the test's
//! own, default 5 s lease TTL) is driven far past what it can serve, by one `trove bench` per
//! node at an open-loop rate the machine cannot reach, while busy loops keep both CPUs at 100%,
//! for 30 s. The nodes must stay registered with the leases they started with, the placement
//! must not change (no partition `Offline`, none moved), and no node may fence itself: overload
//! shows as credit waits and slow answers, never as a missed keepalive.
//!
//! Skips, saying so, when `etcd` is not installed; every process it starts is stopped at the
//! end (and dies with the test process).

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trove::cluster::coordinator::ClusterView;
use trove::cluster::local::NodeProcess;
use trove::cluster::placement::{OwnerState, Placement};
use trove::core::ids::NodeId;

use support::cluster::{ClusterSpec, etcd_or_skip, poll_for};
use support::{Spawned, scratch_dir, trove};

const NODES: u32 = 3;
/// The default lease TTL: the overload must not cost a lease at the TTL operators run.
const CLUSTER: ClusterSpec = ClusterSpec {
    name: "overload",
    partitions: 64,
    lease_ttl_s: 5,
};
const OVERLOAD: Duration = Duration::from_secs(30);
/// Far past what a node serves on this machine (about 2 M events/s for the whole node).
const OFFERED_RATE: &str = "5000000";
/// Spinning threads: twice the CPUs, so the nodes' threads compete for every time slice.
const BUSY_THREADS: usize = 4;

/// What must not change under overload: each node's lease, and the placement.
#[derive(Debug, PartialEq)]
struct Standing {
    leases: Vec<(NodeId, i64)>,
    placement: Placement,
}

impl Standing {
    fn of(view: &ClusterView) -> Option<Standing> {
        let placement = (*view.assignment.clone()?).clone();
        let settled = view.nodes.len() == NODES as usize
            && placement
                .owners()
                .iter()
                .all(|owner| owner.state == OwnerState::Serving);
        settled.then(|| Standing {
            leases: view
                .nodes
                .iter()
                .map(|(node, entry)| (*node, entry.lease))
                .collect(),
            placement,
        })
    }
}

/// Threads that spin until dropped.
struct BusyLoops {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyLoops {
    fn start(count: usize) -> BusyLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut spins: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                })
            })
            .collect();
        BusyLoops { stop, threads }
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A `trove bench` against one node, killed if it outlives its bound.
struct Load {
    bench: Spawned,
    out: std::path::PathBuf,
}

impl Load {
    fn start(node: &NodeProcess) -> Load {
        let out = scratch_dir(&format!("overload-node{}", node.node_id));
        let bench = Spawned::start(
            trove()
                .args(["bench", "--target", &node.addr, "--no-shard-aware"])
                .args(["--rate", OFFERED_RATE, "--warmup", "0", "--quiet"])
                .args(["--duration", &OVERLOAD.as_secs().to_string()])
                .arg("--out")
                .arg(&out),
        );
        Load { bench, out }
    }

    /// Waits for the bench to end (killing it past `limit`) and says how many events its
    /// node answered (any outcome: under overload, `Moved` and `Busy` are answers too).
    fn finish(mut self, limit: Duration) -> u64 {
        let Some(status) = self.bench.wait_exit(limit) else {
            self.bench.kill();
            panic!("trove bench still running {limit:?} after its end");
        };
        assert!(
            status.success(),
            "trove bench failed: {status}: {}",
            self.bench.stderr()
        );
        let summary = std::fs::read_to_string(self.out.join("summary.json"))
            .expect("the bench writes summary.json");
        let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
        let events = &summary["main"]["events"];
        ["acknowledged", "rejected", "busy", "errors"]
            .iter()
            .map(|outcome| {
                events[outcome]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no {outcome} count in {events}"))
            })
            .sum()
    }
}

impl Drop for Load {
    /// The bench is killed (if still running) when `bench` drops, after this.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

#[test]
fn both_cpus_saturated_for_30_s_cost_no_lease_and_move_no_partition() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let nodes: Vec<NodeProcess> = (1..=NODES)
        .map(|node_id| CLUSTER.start_node(&etcd, node_id, &[]))
        .collect();
    let before = poll_for(Duration::from_secs(20), "a settled placement", || {
        CLUSTER.read_view(&etcd).as_ref().and_then(Standing::of)
    });

    let busy = BusyLoops::start(BUSY_THREADS);
    let loads: Vec<Load> = nodes.iter().map(Load::start).collect();
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < OVERLOAD {
        // etcd shares the saturated CPUs too: a read that fails is not a verdict, a read
        // that shows a change is.
        if let Some(view) = CLUSTER.read_view(&etcd) {
            reads += 1;
            let now = Standing::of(&view);
            assert_eq!(
                now.as_ref(),
                Some(&before),
                "after {:?} of overload the cluster changed (a lease lost or a partition \
                 moved): {view:?}",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let answered: Vec<u64> = loads
        .into_iter()
        .map(|load| load.finish(Duration::from_secs(30)))
        .collect();
    drop(busy);

    assert!(reads >= 10, "only {reads} reads of etcd in {OVERLOAD:?}");
    for (node, answered) in nodes.iter().zip(&answered) {
        assert!(
            *answered > 0,
            "node {} answered nothing under overload",
            node.node_id
        );
    }
    let after = CLUSTER.read_view(&etcd).as_ref().and_then(Standing::of);
    assert_eq!(
        after.as_ref(),
        Some(&before),
        "the cluster changed at the end"
    );
    for node in &nodes {
        let printed: Vec<String> = node.lines.try_iter().collect();
        for line in &printed {
            assert!(
                !line.contains("lease lost") && !line.contains("lease not confirmed"),
                "node {} lost its lease under overload: {line}",
                node.node_id
            );
        }
    }
}
