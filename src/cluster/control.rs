//! The node's control thread: drives a [`Coordinator`] against etcd and publishes what the
//! node may serve.
//!
//! One control thread per node, not a shard, never waiting on one: the lease is renewed
//! whatever the shards are doing, so a busy node is never taken for a dead one. A second,
//! helper thread holds an etcd watch on the cluster's prefix and hands the control thread each
//! change as it comes, which the coordinator applies to the keys it last read without reading
//! them back (a flip goes through three nodes' views: each read saved is a round trip of the
//! whole prefix off the pause). When a watch opens, the keys are read back whole (what changed
//! while none was open); the control thread also probes them every poll interval, so a watch
//! that breaks delays nothing by more than that.
//!
//! What the rest of the node gets, through [`ControlHandle`]:
//! - [`ControlHandle::serving_view`]: the latest placement, this node's registration and until
//!   when its lease is known valid, with [`ServingView::serves`] to ask about one partition
//!   (times in the handle's own monotonic clock, [`ControlHandle::now_ns`]);
//! - [`ControlHandle::events`]: a bounded channel of what happened (placement changes, lease
//!   lost, controller changes, etcd outages). When the reader falls behind, newer events are
//!   dropped, never waited for; the serving view is always current;
//! - the shards' [`MoveReport`]s arrive on the channel given to [`ControlHandle::start`] (the
//!   node makes it, bounded by `NODE_MOVE_REPORTS_QUEUED_MAX`); a report wakes the control thread
//!   at once (the flip pause counts every wait) and is put in etcd as `moves/<p>`;
//! - [`ControlHandle::metrics_source`]: a read-only view for the housekeeping thread's
//!   `/metrics` (lease time left, map epoch, partitions owned, moving and offline, controller
//!   flag), copied from what the control thread last published, never waiting on etcd.
//!
//! - [`ServingChange`], called on the control thread whenever the placement or the lease
//!   changed: the node hands both to its shards (`runtime::control_feed`), which install
//!   placements and fence themselves without reading the serving view (no lock on the data
//!   path).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorEvent, ServingView, WatchMessage,
};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::feed::ShardFeed;
use crate::cluster::placement::{OwnerState, Placement};
use crate::constants::{CLUSTER_EVENTS_QUEUED_MAX, CLUSTER_RETRY_MS_MAX, CLUSTER_RETRY_MS_MIN};
use crate::core::ids::{Epoch, PartitionId};
use crate::core::shard::moves::MoveReport;
use crate::metrics::ClusterGauges;
use crate::metrics::housekeeping::ClusterSource;

/// What the control thread knows beyond the serving view, published with it: for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Standing {
    controller: bool,
    etcd_reachable: bool,
}

/// The value behind `shared`, even if a thread panicked holding it: every writer here replaces
/// the whole value, so a poisoned one is still a complete, last-published value.
fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T: Clone>(shared: &Mutex<T>) -> T {
    lock(shared).clone()
}

/// The cluster families of `/metrics` from a serving view at `now_ns` (its clock).
fn cluster_gauges(view: &ServingView, standing: Standing, now_ns: u64) -> ClusterGauges {
    let mut gauges = ClusterGauges {
        node_id: view.node.map_or(0, |node| node.0),
        lease_left_s: view.lease_valid_until_ns.saturating_sub(now_ns) as f64 / 1e9,
        controller: standing.controller,
        etcd_reachable: standing.etcd_reachable,
        ..ClusterGauges::default()
    };
    let (Some(node), Some(placement)) = (view.node, &view.placement) else {
        return gauges;
    };
    gauges.map_epoch = u64::from(placement.epoch().0);
    for (index, owner) in placement.owners().iter().enumerate() {
        if owner.state == OwnerState::Offline {
            gauges.partitions_offline += 1;
        }
        if owner.node != node {
            continue;
        }
        gauges.partitions_owned += 1;
        let partition = PartitionId(index as u32);
        if owner.state.applies() && !view.serves(now_ns, partition) {
            gauges.partitions_moving += 1;
        }
    }
    gauges
}

/// What the control thread needs: etcd's endpoints and the coordinator's configuration.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub endpoints: Vec<String>,
    pub coordinator: CoordinatorConfig,
}

/// What was last sent to the shards: the placement's epoch, the registration and the lease end.
type Sent = (Epoch, Option<Epoch>, u64);

/// Told on the control thread whenever the placement or the lease changed: the placement; the
/// revision at which this node registered, while its lease is known valid (`None`: fenced);
/// and when the lease stops being known valid if nothing newer comes. Must not wait.
pub type ServingChange = Box<dyn FnMut(&Arc<Placement>, Option<Epoch>, Instant) + Send>;

enum Wake {
    /// The watch opened, or saw changes under the cluster's prefix.
    Watch(WatchMessage),
    Stop,
}

/// What ended the control loop's wait.
enum Woken {
    Wake(Result<Wake, flume::RecvError>),
    /// A shard's move report arrived (or, never while the handle lives, the channel closed).
    Report(Result<MoveReport, flume::RecvError>),
    Timeout,
}

/// The running control thread, owned by the node's composition root. See the module doc.
pub struct ControlHandle {
    clock: Instant,
    serving: Arc<Mutex<ServingView>>,
    standing: Arc<Mutex<Standing>>,
    events: flume::Receiver<CoordinatorEvent>,
    wake: flume::Sender<Wake>,
    stopping: Arc<AtomicBool>,
    control: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
}

impl ControlHandle {
    /// Starts the control thread and its watch thread; `reports` is where the node's shards
    /// send their move reports (bounded; a shard that finds it full keeps its report and
    /// sends it again later, never waits).
    pub fn start(
        config: ControlConfig,
        on_change: ServingChange,
        reports: flume::Receiver<MoveReport>,
    ) -> Result<ControlHandle, String> {
        let clock = Instant::now();
        let serving = Arc::new(Mutex::new(ServingView::default()));
        let standing = Arc::new(Mutex::new(Standing::default()));
        let (events_tx, events) = flume::bounded(CLUSTER_EVENTS_QUEUED_MAX);
        let (wake, wake_rx) = flume::bounded(CLUSTER_EVENTS_QUEUED_MAX);
        let stopping = Arc::new(AtomicBool::new(false));
        let timeout = Duration::from_nanos(config.coordinator.request_timeout_ns());
        let client = EtcdClient::new(config.endpoints.clone(), timeout);
        let control = ControlLoop {
            clock,
            coordinator: Coordinator::new(config.coordinator.clone()),
            client,
            serving: serving.clone(),
            standing: standing.clone(),
            events: events_tx,
            wake: wake_rx,
            reports,
            stopping: stopping.clone(),
            on_change,
            sent: None,
        };
        let control = std::thread::Builder::new()
            .name("trove-control".into())
            .spawn(move || control.run())
            .map_err(|error| format!("cannot start the cluster control thread: {error}"))?;
        let watch = Watcher {
            endpoints: config.endpoints,
            prefix: config.coordinator.keys.prefix().to_owned(),
            wake: wake.clone(),
            stopping: stopping.clone(),
        };
        let watcher = std::thread::Builder::new()
            .name("trove-watch".into())
            .spawn(move || watch.run())
            .map_err(|error| format!("cannot start the cluster watch thread: {error}"))?;
        Ok(ControlHandle {
            clock,
            serving,
            standing,
            events,
            wake,
            stopping,
            control: Some(control),
            watcher: Some(watcher),
        })
    }

    /// Now, in the clock of [`ServingView::lease_valid_until_ns`].
    pub fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// What this node may serve, as of the control thread's last step.
    pub fn serving_view(&self) -> ServingView {
        read(&self.serving)
    }

    /// Whether this node may apply events of `partition` now.
    pub fn serves(&self, partition: PartitionId) -> bool {
        self.serving_view().serves(self.now_ns(), partition)
    }

    /// A read-only view of this node's standing for the housekeeping thread's `/metrics`: each
    /// call copies what the control thread last published.
    pub fn metrics_source(&self) -> ClusterSource {
        let (clock, serving, standing) = (self.clock, self.serving.clone(), self.standing.clone());
        Box::new(move || {
            let now_ns = clock.elapsed().as_nanos() as u64;
            cluster_gauges(&read(&serving), read(&standing), now_ns)
        })
    }

    /// What happened, oldest first (bounded; see the module doc).
    pub fn events(&self) -> &flume::Receiver<CoordinatorEvent> {
        &self.events
    }

    /// Stops the control thread, which ends this node's lease in etcd (so its partitions go
    /// `Offline` now rather than after the TTL), and the watch thread.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(Wake::Stop);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
        // The watch ends at its next message: revoking the lease deleted this node's key,
        // which is one. With etcd gone the stream has broken already. Wait a little for it;
        // a watch still blocked after that ends with the process.
        if let Some(watcher) = self.watcher.take() {
            let deadline = Instant::now() + Duration::from_millis(CLUSTER_RETRY_MS_MAX);
            while !watcher.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(CLUSTER_RETRY_MS_MIN));
            }
            if watcher.is_finished() {
                let _ = watcher.join();
            }
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// The control thread's state.
struct ControlLoop {
    clock: Instant,
    coordinator: Coordinator,
    client: EtcdClient,
    serving: Arc<Mutex<ServingView>>,
    standing: Arc<Mutex<Standing>>,
    events: flume::Sender<CoordinatorEvent>,
    wake: flume::Receiver<Wake>,
    reports: flume::Receiver<MoveReport>,
    stopping: Arc<AtomicBool>,
    on_change: ServingChange,
    sent: Option<Sent>,
}

impl ControlLoop {
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn run(mut self) {
        while !self.stopping.load(Ordering::SeqCst) {
            self.step();
            self.publish();
            let wait_ns = self
                .coordinator
                .next_wakeup_ns()
                .saturating_sub(self.now_ns());
            let woken = flume::Selector::new()
                .recv(&self.wake, Woken::Wake)
                .recv(&self.reports, Woken::Report)
                .wait_timeout(Duration::from_nanos(wait_ns))
                .unwrap_or(Woken::Timeout);
            match woken {
                Woken::Wake(Ok(Wake::Watch(message))) => self.take_watch(message),
                Woken::Wake(Ok(Wake::Stop) | Err(_)) | Woken::Report(Err(_)) => break,
                Woken::Report(Ok(report)) => self.take_reports(report),
                Woken::Timeout => {}
            }
        }
        if let Some(lease) = self.coordinator.lease_id() {
            // Best effort: when etcd is unreachable the lease simply runs out.
            let _ = self.client.lease_revoke(lease);
        }
    }

    fn take_watch(&mut self, message: WatchMessage) {
        let now_ns = self.now_ns();
        match message {
            WatchMessage::Started { revision } => {
                self.coordinator.handle_watch_started(now_ns, revision);
            }
            WatchMessage::Changes { revision, changes } => {
                self.coordinator
                    .handle_watch_changes(now_ns, revision, changes);
            }
        }
    }

    /// Hands `first` and every other report waiting to the coordinator, which puts them.
    fn take_reports(&mut self, first: MoveReport) {
        self.coordinator.handle_move_report(first);
        while let Ok(report) = self.reports.try_recv() {
            self.coordinator.handle_move_report(report);
        }
    }

    /// Makes every request that is due now.
    fn step(&mut self) {
        while let Some(request) = self.coordinator.poll_request(self.now_ns()) {
            let result = self.client.execute(&request);
            let now_ns = self.now_ns();
            match result {
                Ok(response) => self.coordinator.handle_response(now_ns, response),
                Err(reason) => self.coordinator.handle_failure(now_ns, &reason),
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    fn publish(&mut self) {
        let view = self.coordinator.serving_view();
        self.feed_shards(&view);
        *lock(&self.serving) = view;
        *lock(&self.standing) = Standing {
            controller: self.coordinator.is_controller(),
            etcd_reachable: self.coordinator.etcd_reachable(),
        };
        while let Some(event) = self.coordinator.poll_event() {
            // Never wait for the reader: the serving view above is what counts.
            let _ = self.events.try_send(event);
        }
    }
}

impl ControlLoop {
    /// Tells the node the placement and the lease when either changed since last time.
    fn feed_shards(&mut self, view: &ServingView) {
        let Some(feed) = ShardFeed::of(view, self.now_ns()) else {
            return;
        };
        if self.sent == Some(feed.sent()) {
            return;
        }
        self.sent = Some(feed.sent());
        let lease_end = self.clock + Duration::from_nanos(feed.lease_valid_until_ns);
        (self.on_change)(&feed.placement, feed.registered, lease_end);
    }
}

/// The watch thread: hands the control thread every change under the prefix as it comes.
struct Watcher {
    endpoints: Vec<String>,
    prefix: String,
    wake: flume::Sender<Wake>,
    stopping: Arc<AtomicBool>,
}

impl Watcher {
    fn run(self) {
        let mut endpoint = 0;
        let mut retry_ms = CLUSTER_RETRY_MS_MIN;
        while !self.stopping.load(Ordering::SeqCst) {
            // Every message is sent, waiting for room if need be: a change left out would
            // leave the control thread's keys behind etcd's until its next whole read. (When
            // the watch opens, the control thread reads what changed while none was open.)
            let result =
                EtcdClient::watch_prefix(&self.endpoints[endpoint], &self.prefix, 0, |message| {
                    self.wake.send(Wake::Watch(message)).is_ok()
                        && !self.stopping.load(Ordering::SeqCst)
                });
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if result.is_err() {
                endpoint = (endpoint + 1) % self.endpoints.len();
            }
            std::thread::sleep(Duration::from_millis(retry_ms));
            retry_ms = if result.is_err() {
                (retry_ms * 2).min(CLUSTER_RETRY_MS_MAX)
            } else {
                CLUSTER_RETRY_MS_MIN
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::Owner;
    use crate::core::ids::{NodeId, ShardId};

    #[test]
    fn cluster_gauges_count_this_node_s_partitions_and_the_cluster_s_offline_ones() {
        let owner = |node: u32, part_epoch: u32, state: OwnerState| Owner {
            node: NodeId(node),
            shard: ShardId(0),
            part_epoch: Epoch(part_epoch),
            state,
        };
        let placement = Placement::from_owners(
            Epoch(40),
            vec![
                owner(1, 30, OwnerState::Serving), // confirmed after registration 20: served
                owner(1, 10, OwnerState::Serving), // from before it: moving
                owner(1, 30, OwnerState::Offline),
                owner(2, 30, OwnerState::Offline),
                owner(2, 30, OwnerState::Serving),
                owner(3, 30, OwnerState::Serving),
                owner(3, 30, OwnerState::Serving),
                owner(3, 30, OwnerState::Serving),
            ],
        )
        .expect("a placement of 8 partitions");
        let view = ServingView {
            node: Some(NodeId(1)),
            placement: Some(Arc::new(placement)),
            registered_revision: Some(20),
            lease_valid_until_ns: 5_000_000_000,
        };
        let standing = Standing {
            controller: true,
            etcd_reachable: true,
        };
        let gauges = cluster_gauges(&view, standing, 1_000_000_000);
        assert_eq!(
            gauges,
            ClusterGauges {
                node_id: 1,
                lease_left_s: 4.0,
                map_epoch: 40,
                partitions_owned: 3,
                partitions_moving: 1,
                partitions_offline: 2,
                controller: true,
                etcd_reachable: true,
            }
        );
        // Past its lease, nothing it owns is served: the serving ones count as moving.
        let late = cluster_gauges(&view, standing, 6_000_000_000);
        assert_eq!((late.lease_left_s, late.partitions_moving), (0.0, 2));
        // Before the first read of etcd: only the id.
        let empty = cluster_gauges(&ServingView::default(), Standing::default(), 0);
        assert_eq!(empty, ClusterGauges::default());
    }
}
