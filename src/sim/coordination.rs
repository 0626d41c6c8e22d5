//! `trove sim --strategy coordination`: the real `cluster::Coordinator` of every node run
//! against a modelled etcd (`cluster::model::ModelEtcd`: leases with TTLs, revisions,
//! transactions), in virtual time, with a modelled round trip to etcd and a watch delay.
//!
//! Each run starts N nodes (at seeded offsets), then measures, in virtual time:
//! - **settle**: until every node has installed one placement covering every partition;
//! - **detect**: after a node (not the controller) stops dead, until every live node has
//!   installed a placement with that node's partitions `Offline`;
//! - **failover**: after the controller stops dead, until another is controller and every
//!   live node has installed a placement with the old controller's partitions `Offline`;
//! - the requests every node makes to etcd per second in steady state;
//! - and, sampled every 100 ms, how many partitions two nodes would serve at once (must be 0).
//!
//! A run is a pure function of its parameters and seed; nothing here reads a clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write;
use std::sync::Arc;

use crate::cluster::coordinator::{Coordinator, CoordinatorConfig, CoordinatorEvent, Response};
use crate::cluster::keys::{ClusterKeys, NodeInfo};
use crate::cluster::model::ModelEtcd;
use crate::cluster::placement::{OwnerState, Placement};
use crate::constants::{
    CLUSTER_LEASE_TTL_S_DEFAULT, CLUSTER_POLL_MS_DEFAULT, CLUSTER_SETTLE_MS_DEFAULT,
    SIM_COORDINATION_NODES_MAX, SIM_COORDINATION_PHASE_MS_MAX,
};
use crate::core::ids::{NodeId, PartitionId};
use crate::core::rng::Rng;

const NS_PER_MS: u64 = 1_000_000;
/// How often the modelled etcd expires leases, and how often the phases are checked.
const TICK_NS: u64 = 10 * NS_PER_MS;
/// How often the no-double-serving property is sampled.
const SAFETY_SAMPLE_NS: u64 = 100 * NS_PER_MS;
/// Steady state between two phases, so each starts from a quiet cluster.
const QUIET_NS: u64 = 2_000 * NS_PER_MS;

/// The model's parameters.
#[derive(Clone, Debug)]
pub struct CoordinationModel {
    pub partitions: u32,
    pub shards_per_node: u16,
    pub lease_ttl_s: u64,
    pub poll_ms: u64,
    pub settle_ms: u64,
    /// One request's round trip to etcd.
    pub etcd_rtt_us: u64,
    /// From a change in etcd to the watch telling a node.
    pub watch_delay_ms: u64,
    /// Nodes start at seeded times spread over this.
    pub start_spread_ms: u64,
}

impl CoordinationModel {
    /// trove's defaults, with the cluster's partition and shard counts.
    pub fn new(partitions: u32, shards_per_node: u16) -> CoordinationModel {
        CoordinationModel {
            partitions,
            shards_per_node,
            lease_ttl_s: CLUSTER_LEASE_TTL_S_DEFAULT,
            poll_ms: CLUSTER_POLL_MS_DEFAULT,
            settle_ms: CLUSTER_SETTLE_MS_DEFAULT,
            etcd_rtt_us: 500,
            watch_delay_ms: 5,
            start_spread_ms: 200,
        }
    }

    /// The keys of the simulated cluster.
    pub fn keys() -> ClusterKeys {
        ClusterKeys::new("sim").expect("a valid name")
    }

    /// The real coordinator of node `index` (its id is `index + 1`), configured by this model.
    pub fn coordinator(&self, index: usize) -> Coordinator {
        Coordinator::new(CoordinatorConfig {
            keys: Self::keys(),
            node: NodeId(index as u32 + 1),
            info: NodeInfo {
                address: format!("node-{}", index + 1),
                port: 7700,
                shard_ports: (0..self.shards_per_node).map(|s| 7701 + s).collect(),
                version: "sim".into(),
                metrics: None,
            },
            partitions: self.partitions,
            lease_ttl_s: self.lease_ttl_s,
            poll_ns: self.poll_ms * NS_PER_MS,
            settle_ns: self.settle_ms * NS_PER_MS,
        })
    }

    /// The line that says what was modelled.
    pub fn describe(&self) -> String {
        format!(
            "coordination: every node's real Coordinator against a modelled etcd (lease TTL {} s, \
             poll {} ms, settle {} ms, etcd round trip {} µs, watch delay {} ms, {} partitions)",
            self.lease_ttl_s,
            self.poll_ms,
            self.settle_ms,
            self.etcd_rtt_us,
            self.watch_delay_ms,
            self.partitions
        )
    }
}

/// What one run measured. Times in virtual ms; `None`: the phase did not finish within
/// `SIM_COORDINATION_PHASE_MS_MAX` (or did not apply: too few nodes).
#[derive(Clone, Debug, PartialEq)]
pub struct CoordinationRun {
    pub nodes: usize,
    pub settle_ms: Option<u64>,
    pub detect_ms: Option<u64>,
    pub failover_ms: Option<u64>,
    pub etcd_requests_per_s_per_node: f64,
    pub placement_writes: u64,
    /// Partition-samples where two nodes would both serve one partition.
    pub double_served: u64,
}

impl CoordinationRun {
    /// Whether the run broke a property or did not finish a phase it should have.
    pub fn failed(&self) -> bool {
        self.double_served > 0
            || self.settle_ms.is_none()
            || (self.nodes >= 2 && self.detect_ms.is_none())
            || (self.nodes >= 3 && self.failover_ms.is_none())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Start(usize),
    Wake(usize, u64),
    Reply(usize),
    Watch(usize),
    Tick,
}

/// The state of one run.
struct World {
    model: CoordinationModel,
    etcd: ModelEtcd,
    nodes: Vec<Coordinator>,
    started: Vec<bool>,
    dead: Vec<bool>,
    wake_token: Vec<u64>,
    replies: Vec<Option<Result<Response, String>>>,
    installed: Vec<Option<Arc<Placement>>>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    now_ns: u64,
    requests: u64,
    writes: u64,
    double_served: u64,
    next_sample_ns: u64,
}

impl World {
    fn new(model: &CoordinationModel, nodes: usize, seed: u64) -> World {
        let coordinators = (0..nodes).map(|i| model.coordinator(i)).collect();
        let mut world = World {
            model: model.clone(),
            etcd: ModelEtcd::new(),
            nodes: coordinators,
            started: vec![false; nodes],
            dead: vec![false; nodes],
            wake_token: vec![0; nodes],
            replies: vec![None; nodes],
            installed: vec![None; nodes],
            queue: BinaryHeap::new(),
            sequence: 0,
            now_ns: 0,
            requests: 0,
            writes: 0,
            double_served: 0,
            next_sample_ns: SAFETY_SAMPLE_NS,
        };
        let mut rng = Rng::stream(seed, 0xc00d);
        for i in 0..nodes {
            let offset_ns = rng.below(model.start_spread_ms.max(1) * NS_PER_MS);
            world.push(offset_ns, Event::Start(i));
        }
        world.push(TICK_NS, Event::Tick);
        world
    }

    fn push(&mut self, at_ns: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((at_ns, self.sequence, event)));
    }

    fn live(&self, i: usize) -> bool {
        self.started[i] && !self.dead[i]
    }

    /// Runs events until `until_ns`, or until `done` holds at a tick; returns the tick time.
    fn run_until(&mut self, until_ns: u64, done: &mut dyn FnMut(&World) -> bool) -> Option<u64> {
        while let Some(Reverse((at_ns, sequence, event))) = self.queue.pop() {
            if at_ns > until_ns {
                self.queue.push(Reverse((at_ns, sequence, event)));
                return None;
            }
            self.now_ns = at_ns;
            match event {
                Event::Start(i) => {
                    self.started[i] = true;
                    self.drive(i);
                }
                Event::Wake(i, token) if token == self.wake_token[i] => self.drive(i),
                Event::Wake(..) => {}
                Event::Reply(i) => self.reply(i),
                Event::Watch(i) if self.live(i) => {
                    self.nodes[i].handle_changed(self.now_ns);
                    self.drive(i);
                }
                Event::Watch(_) => {}
                Event::Tick => {
                    let before = self.etcd.revision();
                    self.etcd.expire(self.now_ns);
                    if self.etcd.revision() != before {
                        self.notify_watchers();
                    }
                    self.sample_safety();
                    self.push(self.now_ns + TICK_NS, Event::Tick);
                    if done(self) {
                        return Some(self.now_ns);
                    }
                }
            }
        }
        None
    }

    fn drive(&mut self, i: usize) {
        if !self.live(i) {
            return;
        }
        if let Some(request) = self.nodes[i].poll_request(self.now_ns) {
            let arrives_ns = self.now_ns + self.model.etcd_rtt_us * 1_000 / 2;
            let before = self.etcd.revision();
            let reply = self.etcd.handle(arrives_ns, &request);
            self.requests += 1;
            if self.etcd.revision() != before {
                self.notify_watchers();
            }
            if matches!(
                reply,
                Ok(Response::Txn {
                    succeeded: true,
                    ..
                })
            ) && matches!(
                request,
                crate::cluster::coordinator::Request::CompareAndSwap { .. }
            ) {
                self.writes += 1;
            }
            self.replies[i] = Some(reply);
            self.push(
                self.now_ns + self.model.etcd_rtt_us * 1_000,
                Event::Reply(i),
            );
        }
        self.collect_events(i);
        self.schedule_wake(i);
    }

    fn reply(&mut self, i: usize) {
        let Some(reply) = self.replies[i].take() else {
            return;
        };
        if !self.live(i) {
            return;
        }
        match reply {
            Ok(response) => self.nodes[i].handle_response(self.now_ns, response),
            Err(reason) => self.nodes[i].handle_failure(self.now_ns, &reason),
        }
        self.drive(i);
    }

    fn collect_events(&mut self, i: usize) {
        while let Some(event) = self.nodes[i].poll_event() {
            if let CoordinatorEvent::PlacementChanged(placement) = event {
                self.installed[i] = Some(placement);
            }
        }
    }

    fn schedule_wake(&mut self, i: usize) {
        let at_ns = self.nodes[i].next_wakeup_ns();
        if at_ns == u64::MAX {
            return;
        }
        self.wake_token[i] += 1;
        let token = self.wake_token[i];
        self.push(at_ns.max(self.now_ns), Event::Wake(i, token));
    }

    fn notify_watchers(&mut self) {
        let at_ns = self.now_ns + self.model.watch_delay_ms * NS_PER_MS;
        for i in 0..self.nodes.len() {
            if self.live(i) {
                self.push(at_ns, Event::Watch(i));
            }
        }
    }

    /// Counts partitions two live nodes would serve at once (a paused node's clock runs on
    /// here, as a real one's does, so dead nodes are checked too).
    fn sample_safety(&mut self) {
        if self.now_ns < self.next_sample_ns {
            return;
        }
        self.next_sample_ns += SAFETY_SAMPLE_NS;
        let views: Vec<_> = (0..self.nodes.len())
            .filter(|&i| self.started[i])
            .map(|i| self.nodes[i].serving_view())
            .collect();
        for partition in (0..self.model.partitions).map(PartitionId) {
            let serving = views
                .iter()
                .filter(|view| view.serves(self.now_ns, partition))
                .count();
            if serving > 1 {
                self.double_served += 1;
            }
        }
    }

    /// Whether every live node has installed the same placement and it satisfies `holds`.
    fn all_installed(&self, holds: impl Fn(&Placement) -> bool) -> bool {
        let mut live = (0..self.nodes.len()).filter(|&i| self.live(i)).peekable();
        let Some(&first) = live.peek() else {
            return false;
        };
        let Some(reference) = &self.installed[first] else {
            return false;
        };
        live.all(|i| {
            self.installed[i]
                .as_ref()
                .is_some_and(|placement| placement.epoch() == reference.epoch())
        }) && holds(reference)
    }

    fn controller(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.live(i) && self.nodes[i].is_controller())
    }

    /// Stops node `i` dead (as SIGKILL would: its lease is not revoked) and measures until
    /// every live node installed a placement with its partitions offline.
    fn kill_and_measure(&mut self, i: usize, need_controller: bool) -> Option<u64> {
        let victim = NodeId(i as u32 + 1);
        self.dead[i] = true;
        let killed_ns = self.now_ns;
        let limit_ns = killed_ns + SIM_COORDINATION_PHASE_MS_MAX * NS_PER_MS;
        let mut done = |world: &World| {
            (!need_controller || world.controller().is_some())
                && world.all_installed(|placement| {
                    placement
                        .owners()
                        .iter()
                        .filter(|owner| owner.node == victim)
                        .all(|owner| owner.state == OwnerState::Offline)
                })
        };
        let at_ns = self.run_until(limit_ns, &mut done)?;
        Some((at_ns - killed_ns) / NS_PER_MS)
    }
}

/// Runs the coordination model on `nodes` nodes with `seed`.
pub fn run(model: &CoordinationModel, nodes: usize, seed: u64) -> CoordinationRun {
    assert!(
        (1..=SIM_COORDINATION_NODES_MAX).contains(&nodes),
        "the flags are checked before a run"
    );
    let mut world = World::new(model, nodes, seed);
    let partitions = model.partitions;
    let settled_ns = world.run_until(SIM_COORDINATION_PHASE_MS_MAX * NS_PER_MS, &mut |world| {
        world.started.iter().all(|&started| started)
            && world.all_installed(|placement| {
                placement.partitions() == partitions
                    && placement
                        .owners()
                        .iter()
                        .all(|owner| owner.state == OwnerState::Serving)
            })
    });
    let mut run = CoordinationRun {
        nodes,
        settle_ms: settled_ns.map(|at_ns| at_ns / NS_PER_MS),
        detect_ms: None,
        failover_ms: None,
        etcd_requests_per_s_per_node: 0.0,
        placement_writes: 0,
        double_served: 0,
    };
    if let Some(settled_ns) = settled_ns {
        let requests_before = world.requests;
        world.run_until(settled_ns + QUIET_NS, &mut |_| false);
        let window_s = QUIET_NS as f64 / 1e9;
        run.etcd_requests_per_s_per_node =
            (world.requests - requests_before) as f64 / window_s / nodes as f64;
        let controller = world.controller();
        if nodes >= 2 {
            let victim = (0..nodes)
                .find(|&i| Some(i) != controller)
                .expect("two nodes");
            run.detect_ms = world.kill_and_measure(victim, false);
        }
        if nodes >= 3 && run.detect_ms.is_some() {
            let quiet_until = world.now_ns + QUIET_NS;
            world.run_until(quiet_until, &mut |_| false);
            if let Some(controller) = world.controller() {
                run.failover_ms = world.kill_and_measure(controller, true);
            }
        }
    }
    run.placement_writes = world.writes;
    run.double_served = world.double_served;
    run
}

/// The runs as a table.
pub fn table(model: &CoordinationModel, runs: &[CoordinationRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", model.describe());
    let _ = writeln!(
        out,
        "{:>5} {:>10} {:>10} {:>12} {:>16} {:>7} {:>14}",
        "nodes",
        "settle ms",
        "detect ms",
        "failover ms",
        "etcd req/s/node",
        "writes",
        "double-served"
    );
    let ms = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |ms| ms.to_string());
    for run in runs {
        let _ = writeln!(
            out,
            "{:>5} {:>10} {:>10} {:>12} {:>16.1} {:>7} {:>14}",
            run.nodes,
            ms(run.settle_ms),
            ms(run.detect_ms),
            ms(run.failover_ms),
            run.etcd_requests_per_s_per_node,
            run.placement_writes,
            run.double_served
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> CoordinationModel {
        CoordinationModel {
            lease_ttl_s: 2,
            ..CoordinationModel::new(256, 2)
        }
    }

    #[test]
    fn a_cluster_settles_detects_a_dead_node_and_fails_over_without_double_serving() {
        let run = run(&model(), 5, 1);
        assert!(!run.failed(), "{run:?}");
        let settle_ms = run.settle_ms.unwrap();
        // The first placement waits for the nodes to settle, and not much longer.
        assert!(settle_ms >= model().settle_ms, "{run:?}");
        assert!(settle_ms < model().settle_ms + 2_000, "{run:?}");
        // Detection takes the lease's TTL, at most, plus the poll or watch and a tick.
        let ttl_ms = model().lease_ttl_s * 1_000;
        assert!(run.detect_ms.unwrap() <= ttl_ms + 500, "{run:?}");
        assert!(run.failover_ms.unwrap() <= ttl_ms + 500, "{run:?}");
        // Keepalives every TTL/3 and reads every poll interval: a few requests per second.
        assert!(run.etcd_requests_per_s_per_node < 50.0, "{run:?}");
    }

    #[test]
    fn a_run_is_a_function_of_its_seed() {
        assert_eq!(run(&model(), 4, 7), run(&model(), 4, 7));
    }

    #[test]
    fn one_node_settles_and_has_nothing_to_fail_over_to() {
        let run = run(&model(), 1, 3);
        assert!(
            run.settle_ms.is_some() && run.detect_ms.is_none(),
            "{run:?}"
        );
        assert!(!run.failed());
    }
}
