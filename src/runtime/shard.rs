//! One shard's glommio shell around its [`ShardCore`]: the tasks that feed it, the wakes that
//! follow its outputs, and the stop sequence.
//!
//! A [`Shard`] lives on its own executor, behind an `Rc`, and is never touched from another
//! core. Every decision (admission, credit, routing, reply routing, stop) is the core's; the
//! shell reads the clock, calls the core, and wakes the tasks its outputs concern:
//! - connection tasks (in `net`) call [`Shard::handle_frame`], [`Shard::poll_replies`],
//!   [`Shard::handle_written`] and wait in [`Shard::until_readable`] and
//!   [`Shard::until_writable`];
//! - per peer, a receiver task hands arriving batches to the core, and a flusher task sends
//!   what [`ShardCore::poll_mesh`] gives it, at the end of each loop pass (the flusher runs
//!   after the tasks that filled the batch) or as soon as a batch is full.
//!
//! Waits: a reader waits for credit on `credit_freed`, a writer on its own queue, a flusher on
//! its peer's queue; each is woken only when the core lists it. No pending I/O future is ever
//! raced against one of these queues, only against the one-shot [`Latch`]es of the stop.

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};

use crate::constants::{LOG_STOP_WAIT_MS_MAX, TIMEOUT_CHECK_INTERVAL_MS_MAX};
use crate::core::codec::{FrameBuilder, FrameError, FrameHeader, FrameKind};
use crate::core::ids::{ConnectionId, Epoch, NodeId, PartitionId, ShardId};
use crate::core::message::ArchivedLinkAccepted;
use crate::core::partition::{MapError, Placement};
use crate::core::shard::{
    CloseReason, ConnectRefusal, Durability, FrameProgress, LinkDest, LinkError, LinkPoll,
    LogFaultKind, LogFaultStep, LogOp, LogSync, MeshBatch, MeshOutput, MoveError, MoveInstall,
    MoveReport, NodeLease, Readable, ReplayError, ShardConfig, ShardCore, ShardLoad, ShardStats,
    SourceAddr,
};
use crate::core::snapshot::PartitionSnapshot;
use crate::runtime::config::RuntimeConfig;
use crate::runtime::mesh::ShardMesh;
use crate::runtime::stall::spawn_timed;
use crate::runtime::wait::{FileOpsInFlight, Latch, WaitQueue};

/// What a connection's writer does next.
pub enum WriteStep {
    /// `out` holds replies to write.
    Write,
    /// Nothing more will ever be written: close the socket.
    Finish,
}

/// What a connection's tasks wait on: its writer's queue, and the latch set when the core
/// decides to close it (a timeout, an eviction).
#[derive(Clone)]
pub struct ConnectionSignals {
    pub writer: Rc<WaitQueue>,
    pub close: Rc<Latch>,
}

/// A connection's signals, and the connection they belong to.
struct WriterSlot {
    id: ConnectionId,
    signals: ConnectionSignals,
}

/// One shard's shell. See the module documentation.
pub struct Shard {
    id: ShardId,
    cpu: usize,
    core: RefCell<ShardCore>,
    /// The shard's clock: nanoseconds since it started, the time the core is given.
    started: Instant,
    /// Woken when credit returns (replies written, connections closed, replies back from
    /// peers) and when the shard stops: readers waiting to read look again.
    credit_freed: WaitQueue,
    /// Each connection's writer queue, by slot.
    writers: RefCell<Vec<Option<WriterSlot>>>,
    /// Each peer's flusher queue, by shard (`None` for this shard).
    flushers: Vec<Option<WaitQueue>>,
    apply_delay: Option<Duration>,
    /// Set once, when the shard starts stopping: acceptors and readers stop.
    stop_started: Latch,
    /// Set once, when the shutdown grace period is over: connections close now.
    force_close: Latch,
    /// Woken when a connection goes away and when a peer's batch arrives: what draining waits
    /// for. Only [`Shard::run`] waits here, never a task with I/O pending.
    drain_progress: WaitQueue,
    /// Woken when the core has queued log records: the log writer (`runtime::store`) looks.
    log_queued: WaitQueue,
    /// Woken when a partition handed off here waits to be written to the store
    /// ([`Self::poll_move_install`]).
    move_installs: WaitQueue,
    /// The store's file operations the shard does not end under ([`Self::run`]).
    file_ops: FileOpsInFlight,
    /// Each outgoing link's task signals, by destination, once its task runs.
    link_tasks: RefCell<BTreeMap<LinkDest, Rc<LinkSignals>>>,
    /// Destinations the core listed that have no task yet, for the link supervisor.
    links_unstarted: RefCell<Vec<LinkDest>>,
    /// Woken when `links_unstarted` gains one.
    link_supervisor: WaitQueue,
    /// Each inbound link's writer queue, by slot.
    inbound_writers: RefCell<Vec<Option<InboundWriter>>>,
    /// How an outgoing link connects, set by the network layer when it starts serving.
    link_connector: std::cell::RefCell<Option<crate::runtime::link::LinkConnector>>,
    /// Where the core's move reports go (the node's control thread, from
    /// `RuntimeConfig::move_reports`); `None` for a single node, whose reports stay in the
    /// core's bounded queue.
    move_reports: Option<flume::Sender<MoveReport>>,
    /// A report the full channel did not take, sent first next time.
    move_report_unsent: RefCell<Option<MoveReport>>,
}

/// An inbound link's id and its writer's queue.
type InboundWriter = (ConnectionId, Rc<WaitQueue>);

/// What an outgoing link's task waits on: its queue (the core listed the link), and the
/// latch of its current connection, set when the core fails the link or either loop ends.
pub struct LinkSignals {
    pub queue: WaitQueue,
    pub broken: RefCell<Rc<Latch>>,
}

fn core_config(config: &RuntimeConfig) -> ShardConfig {
    let shards = config.shards();
    ShardConfig {
        shard_budget: config.budget.shard(),
        connection_budget: config.budget.connection(),
        mesh_budget_per_source: config.budget.mesh_per_source(shards),
        fail_fast: config.fail_fast,
        shard_ports: config.shard_ports.clone(),
        idle_timeout_ns: config.idle_timeout.as_nanos() as u64,
        write_stall_ns: config.write_stall.as_nanos() as u64,
        // A cluster node serves nothing until its control thread confirms its lease.
        node: config.cluster_node.unwrap_or(NodeId(0)),
        lease_at_start: match config.cluster_node {
            Some(_) => NodeLease::Fenced,
            None => NodeLease::SINGLE_NODE,
        },
        frame_arrival_ns: config.frame_arrival.as_nanos() as u64,
        connections_per_source_max: config.connections_per_source_max,
        shed_target_ns: config.shed_target.as_nanos() as u64,
        durability: config
            .store
            .as_ref()
            .map_or(Durability::Memory, |store| store.durability),
        cluster: config.cluster_name.clone(),
        ..ShardConfig::defaults(shards)
    }
}

impl Shard {
    pub fn new(id: ShardId, cpu: usize, placement: Placement, config: &RuntimeConfig) -> Shard {
        let apply_delay = config
            .apply_delay
            .filter(|delay| delay.shard == id)
            .map(|delay| delay.per_event);
        let flushers = (0..config.shards())
            .map(|peer| (peer != id.index()).then(WaitQueue::new))
            .collect();
        Shard {
            id,
            cpu,
            core: RefCell::new(ShardCore::with_config(id, placement, core_config(config))),
            started: Instant::now(),
            credit_freed: WaitQueue::new(),
            writers: RefCell::default(),
            flushers,
            apply_delay,
            stop_started: Latch::new(),
            force_close: Latch::new(),
            drain_progress: WaitQueue::new(),
            log_queued: WaitQueue::new(),
            move_installs: WaitQueue::new(),
            file_ops: FileOpsInFlight::new(),
            link_tasks: RefCell::default(),
            links_unstarted: RefCell::default(),
            link_supervisor: WaitQueue::new(),
            inbound_writers: RefCell::default(),
            link_connector: std::cell::RefCell::new(None),
            move_reports: config.move_reports.0.clone(),
            move_report_unsent: RefCell::new(None),
        }
    }

    /// Installs `placement` from the node's control thread when it is newer than the
    /// shard's (cloned only then), and wakes what it concerns.
    pub fn install_placement(&self, placement: &Placement) -> Result<(), MapError> {
        if placement.epoch() <= self.core.borrow().placement().epoch() {
            return Ok(());
        }
        let now = self.now_ns();
        let installed = self.core().handle_placement(now, placement.clone());
        self.wake();
        installed
    }

    /// What the node's control thread knows of its lease now (see [`ShardCore::handle_lease`]).
    pub fn install_lease(&self, lease: NodeLease) {
        let now = self.now_ns();
        self.core().handle_lease(now, lease);
        self.wake();
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The placement's epoch, for frame headers.
    pub fn epoch(&self) -> u32 {
        self.core.borrow().placement().epoch().get()
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// The core, for a call whose outputs the caller then hands to [`Self::wake`].
    fn core(&self) -> RefMut<'_, ShardCore> {
        self.core.borrow_mut()
    }

    /// Wakes the writers and flushers the core listed, and the log writer.
    fn wake(&self) {
        if self.core.borrow().log_queued() {
            self.log_queued.wake_all();
        }
        if self.core.borrow().move_install_queued() {
            self.move_installs.wake_all();
        }
        loop {
            let writable = self.core().poll_writable();
            let Some(id) = writable else { break };
            let writers = self.writers.borrow();
            if let Some(Some(writer)) = writers.get(id.slot()) {
                if writer.id == id {
                    writer.signals.writer.wake_all();
                }
            }
        }
        loop {
            let closing = self.core().poll_close();
            let Some((id, reason)) = closing else { break };
            let writers = self.writers.borrow();
            if let Some(Some(writer)) = writers.get(id.slot()) {
                if writer.id == id {
                    writer.signals.close.set();
                    continue;
                }
            }
            drop(writers);
            // No tasks to close it (a test's core): report it closed here.
            let now = self.now_ns();
            self.core().handle_closed(now, id, reason);
        }
        loop {
            let ready = self.core().poll_mesh_ready();
            let Some(peer) = ready else { break };
            if let Some(Some(queue)) = self.flushers.get(peer.index()) {
                queue.wake_all();
            }
        }
        self.wake_links();
        self.send_move_reports();
    }

    /// Wakes the outgoing links the core listed (asking the supervisor for a task when one
    /// has none yet), breaks the connections of links the core failed, and wakes the
    /// writers of inbound links with replies.
    fn wake_links(&self) {
        loop {
            let ready = self.core().poll_links_ready();
            let Some(dest) = ready else { break };
            match self.link_tasks.borrow().get(&dest) {
                Some(signals) => signals.queue.wake_all(),
                None => {
                    self.links_unstarted.borrow_mut().push(dest);
                    self.link_supervisor.wake_all();
                }
            }
        }
        loop {
            let failed = self.core().poll_links_failed();
            let Some(dest) = failed else { break };
            if let Some(signals) = self.link_tasks.borrow().get(&dest) {
                signals.broken.borrow().set();
                signals.queue.wake_all();
            }
        }
        loop {
            let writable = self.core().poll_link_writable();
            let Some(id) = writable else { break };
            if let Some(Some((writer, queue))) = self.inbound_writers.borrow().get(id.slot()) {
                if *writer == id {
                    queue.wake_all();
                }
            }
        }
    }

    /// Credit came back or a connection ended: readers and the stop sequence look again.
    fn wake_released(&self) {
        self.wake();
        self.credit_freed.wake_all();
        self.drain_progress.wake_all();
    }

    // ---- connections -------------------------------------------------------------------

    /// A new connection from `source`: its id and its tasks' signals, or why it is refused
    /// (the shard serves as many as it may, or as many from that address, or is stopping).
    pub fn connect(
        &self,
        source: Option<SourceAddr>,
    ) -> Result<(ConnectionId, ConnectionSignals), ConnectRefusal> {
        let now = self.now_ns();
        let id = self.core().handle_connect_from(now, source)?;
        let signals = ConnectionSignals {
            writer: Rc::new(WaitQueue::new()),
            close: Rc::new(Latch::new()),
        };
        let mut writers = self.writers.borrow_mut();
        if writers.len() <= id.slot() {
            writers.resize_with(id.slot() + 1, || None);
        }
        writers[id.slot()] = Some(WriterSlot {
            id,
            signals: signals.clone(),
        });
        drop(writers);
        // An eviction to make room is listed now: close that connection.
        self.wake();
        Ok((id, signals))
    }

    /// Whether this shard measures the sojourn of what its connections read: only fail-fast
    /// shards shed by it, and the measurement costs a system call per read.
    pub fn sheds(&self) -> bool {
        self.core.borrow().config().fail_fast
    }

    /// The newest bytes connection `id` just read had waited at least `sojourn_ns` in the
    /// socket (see [`ShardCore::handle_sojourn`]).
    pub fn handle_sojourn(&self, id: ConnectionId, sojourn_ns: u64) {
        let now = self.now_ns();
        self.core().handle_sojourn(now, id, sojourn_ns);
    }

    /// Whether connection `id`'s reader holds a partial frame (see
    /// [`ShardCore::handle_partial_frame`]).
    pub fn handle_partial_frame(&self, id: ConnectionId, partial: bool) {
        let now = self.now_ns();
        self.core().handle_partial_frame(now, id, partial);
    }

    /// Events the stopping shard found unread in connection `id`'s socket (see
    /// [`ShardCore::handle_unread_at_stop`]).
    pub fn handle_unread_at_stop(&self, id: ConnectionId, events: u64) {
        self.core().handle_unread_at_stop(id, events);
        self.wake();
    }

    /// The text telling a client why the core closed its connection, if it is one to tell.
    pub fn close_notice(&self, reason: CloseReason) -> Option<String> {
        self.core.borrow().close_notice(reason)
    }

    /// How many shards the node runs (one flusher slot each).
    pub fn shard_count(&self) -> usize {
        self.flushers.len()
    }

    /// True once the shard has started stopping.
    pub fn is_stopping(&self) -> bool {
        self.stop_started.is_set()
    }

    /// Why the core asked to close connection `id`, if it did.
    pub fn close_reason(&self, id: ConnectionId) -> Option<CloseReason> {
        self.core.borrow().close_requested(id)
    }

    /// Hands a whole frame to the core (see [`ShardCore::handle_frame`]); once the frame is
    /// dispatched, tells the core the time after the call, which ends its dispatch stage.
    pub fn handle_frame(
        &self,
        id: ConnectionId,
        header: &FrameHeader,
        body: &[u8],
    ) -> Result<FrameProgress, FrameError> {
        let now = self.now_ns();
        let applied_before = self.events_applied();
        let progress = self.core().handle_frame(now, id, header, body);
        self.delay_applied(applied_before);
        if matches!(progress, Ok(FrameProgress::Done)) {
            let done = self.now_ns();
            self.core().record_frame_dispatched(done);
        }
        self.wake();
        progress
    }

    /// Resolves once connection `id` may read again, or never will.
    pub async fn until_readable(&self, id: ConnectionId) -> Readable {
        self.credit_freed
            .until(|| match self.core.borrow().readable(id) {
                Readable::NotYet => None,
                readable => Some(readable),
            })
            .await
    }

    /// The connection's reader stopped (see [`ShardCore::handle_read_closed`]).
    pub fn handle_read_closed(&self, id: ConnectionId, outcome: Result<(), FrameError>) {
        let now = self.now_ns();
        self.core().handle_read_closed(now, id, outcome);
        self.wake();
    }

    /// Resolves once the writer of `id` has replies in `out` to write, or nothing more ever.
    pub async fn until_writable(
        &self,
        id: ConnectionId,
        queue: &WaitQueue,
        out: &mut FrameBuilder,
    ) -> WriteStep {
        queue
            .until(|| {
                let mut core = self.core();
                if core.poll_replies(id, out) {
                    Some(WriteStep::Write)
                } else if core.write_finished(id) {
                    Some(WriteStep::Finish)
                } else {
                    None
                }
            })
            .await
    }

    /// `written` bytes of the replies reached the socket.
    pub fn handle_written(&self, id: ConnectionId, written: usize) {
        let now = self.now_ns();
        self.core().handle_written(now, id, written);
        self.wake_released();
    }

    /// The connection's socket is closed; its writer is done.
    pub fn handle_closed(&self, id: ConnectionId, reason: CloseReason) {
        let now = self.now_ns();
        self.core().handle_closed(now, id, reason);
        let mut writers = self.writers.borrow_mut();
        if let Some(slot) = writers.get_mut(id.slot()) {
            if slot.as_ref().is_some_and(|writer| writer.id == id) {
                *slot = None;
            }
        }
        drop(writers);
        self.wake_released();
    }

    fn events_applied(&self) -> u64 {
        if self.apply_delay.is_none() {
            return 0;
        }
        let stats = self.core.borrow().stats();
        stats.events_applied + stats.events_applied_for_peers
    }

    /// A deliberate, test-only stall: spins for each event applied since `before`, rather than
    /// sleeping, so the shard is busy the way an overloaded core is.
    fn delay_applied(&self, before: u64) {
        let Some(delay) = self.apply_delay else {
            return;
        };
        let applied = self.events_applied() - before;
        let until = Instant::now() + delay * applied as u32;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    // ---- lifecycle ---------------------------------------------------------------------

    /// Resolves when the shard starts stopping: connections stop reading, acceptors stop.
    /// Safe to race against pending I/O: it wakes its waiter once.
    pub async fn stopping(&self) {
        self.stop_started.wait().await
    }

    /// Resolves when the shutdown grace period is over: connections close now. Safe to race
    /// against pending I/O: it wakes its waiter once.
    pub async fn force_closing(&self) {
        self.force_close.wait().await
    }

    /// Runs the shard's mesh until `stop` resolves and the node has drained, then reports.
    pub async fn run(
        self: Rc<Self>,
        mesh: ShardMesh,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> ShardStats {
        let mut tasks = Vec::new();
        for (peer, receiver) in mesh.receivers {
            tasks.push(spawn_timed(self.clone().receive_from(peer, receiver)));
        }
        for (peer, sender) in mesh.senders {
            tasks.push(spawn_timed(self.clone().flush_to(peer, sender)));
        }
        spawn_timed(self.clone().check_timeouts()).detach();
        spawn_timed(self.clone().supervise_links()).detach();
        stop.await;
        let now = self.now_ns();
        self.core().handle_stop(now);
        self.stop_started.set();
        self.wake_released();
        // Dropped (cancelled) when the stop is over: it acts only on a log still not durable.
        let _log_bound = spawn_timed(
            self.clone()
                .give_up_on_the_log_after(Duration::from_millis(LOG_STOP_WAIT_MS_MAX)),
        );
        let drained = finished_within(grace, self.until_connections_drained()).await;
        if !drained {
            self.force_close.set();
            self.until_connections_drained().await;
        }
        for task in tasks {
            task.await;
        }
        self.until_file_ops_done().await;
        self.stats()
    }

    /// The store's file operations, counted so that the shard does not end under them.
    pub fn file_ops(&self) -> &FileOpsInFlight {
        &self.file_ops
    }

    /// Waits, at most `LOG_STOP_WAIT_MS_MAX`, for the store's file operations in flight (see
    /// [`FileOpsInFlight`]). The store starts none once the shard is stopping.
    async fn until_file_ops_done(&self) {
        let bound = Duration::from_millis(LOG_STOP_WAIT_MS_MAX);
        if !finished_within(bound, self.file_ops.until_idle()).await {
            eprintln!(
                "trove node: shard {}: a file operation of its log (a rename, removal or directory sync) still had not completed {} ms after the stop; stopping without it",
                self.id().index(),
                bound.as_millis()
            );
        }
    }

    /// Hands the core the time every `TIMEOUT_CHECK_INTERVAL_MS_MAX`, for its connection
    /// timeouts, until the shard has stopped and drained. A local timer: it wakes nothing on
    /// another core.
    ///
    /// Each tick also has the waits for credit and for draining look again: a wake missed
    /// anywhere on those paths then costs one interval, never a shard that cannot stop.
    async fn check_timeouts(self: Rc<Self>) {
        let interval = Duration::from_millis(TIMEOUT_CHECK_INTERVAL_MS_MAX);
        while !(self.stop_started.is_set() && self.core.borrow().connections_drained()) {
            glommio::timer::sleep(interval).await;
            let now = self.now_ns();
            self.core().handle_timeout(now);
            self.wake_released();
        }
    }

    /// A stopping shard whose log is still not durable after `bound` (a failed or hung disk)
    /// gives up on it ([`ShardCore::handle_log_abandoned`]) and says so in one line: the
    /// replies still waiting are answered, the stop goes on, and the node exits non-zero.
    async fn give_up_on_the_log_after(self: Rc<Self>, bound: Duration) {
        glommio::timer::sleep(bound).await;
        let now = self.now_ns();
        let Some(abandoned) = self.core().handle_log_abandoned(now) else {
            return;
        };
        let lost = match self.durability() {
            Durability::Async => format!(
                "up to {} events answered before their sync may be lost",
                abandoned.records
            ),
            _ => "every event answered as applied is on disk".into(),
        };
        eprintln!(
            "trove node: shard {}: stopping without closing the log cleanly: {} records were still not on disk after {} ms (the disk failed or hangs); the {} replies still waiting for them were answered OutcomeUnknown now; {lost}; the node exits with status {}",
            self.id.index(),
            abandoned.records,
            bound.as_millis(),
            abandoned.replies_unknown,
            crate::runtime::store::EXIT_LOG_NOT_CLOSED,
        );
        self.wake_released();
    }

    async fn until_connections_drained(&self) {
        self.drain_progress
            .until(|| self.core.borrow().connections_drained().then_some(()))
            .await
    }

    /// Hands the batches a peer sends to the core, until the peer closes its channel.
    async fn receive_from(self: Rc<Self>, peer: ShardId, receiver: ConnectedReceiver<MeshBatch>) {
        while let Some(batch) = self.next_batch(&receiver).await {
            let now = self.now_ns();
            let applied_before = self.events_applied();
            self.core().handle_mesh(now, peer, batch);
            self.delay_applied(applied_before);
            self.wake_released();
            glommio::yield_if_needed().await;
        }
    }

    /// The peer's next batch, or `None` once it has closed its channel.
    ///
    /// glommio 0.9 can lose the cross-executor wake that a peer's close sends
    /// (DataDog/glommio#261); a lost one left a stopping shard waiting for ever, its node
    /// never exiting. So once the shard stops, the wait looks at the channel again every
    /// `TIMEOUT_CHECK_INTERVAL_MS_MAX`: a lost wake then costs one interval. Before the stop
    /// the receive waits alone (racing it against the one-shot stop latch), so the serving
    /// path arms no timer.
    async fn next_batch(&self, receiver: &ConnectedReceiver<MeshBatch>) -> Option<MeshBatch> {
        if !self.stop_started.is_set() {
            let before_stop =
                futures_lite::future::or(async { Some(receiver.recv().await) }, async {
                    self.stop_started.wait().await;
                    None
                })
                .await;
            if let Some(next) = before_stop {
                return next;
            }
        }
        let interval = Duration::from_millis(TIMEOUT_CHECK_INTERVAL_MS_MAX);
        loop {
            let next = futures_lite::future::or(async { Some(receiver.recv().await) }, async {
                glommio::timer::sleep(interval).await;
                None
            })
            .await;
            if let Some(next) = next {
                return next;
            }
        }
    }

    /// Sends the peer what the core has for it, until the core closes the channel.
    async fn flush_to(self: Rc<Self>, peer: ShardId, sender: ConnectedSender<MeshBatch>) {
        let queue = self.flushers[peer.index()]
            .as_ref()
            .expect("a shard does not flush to itself");
        loop {
            let next = queue.until(|| self.core().poll_mesh(peer)).await;
            match next {
                MeshOutput::Batch(batch) => {
                    if sender.send(batch).await.is_err() {
                        break;
                    }
                }
                MeshOutput::Close => {
                    sender.close();
                    break;
                }
            }
        }
    }
}

// ---- links to and from other nodes (see `runtime::link`, `net::link`) --------------------

impl Shard {
    /// Starts a task for each outgoing link the core asks for, lazily: on its first event.
    async fn supervise_links(self: Rc<Self>) {
        loop {
            self.link_supervisor
                .until(|| (!self.links_unstarted.borrow().is_empty()).then_some(()))
                .await;
            let unstarted = std::mem::take(&mut *self.links_unstarted.borrow_mut());
            for dest in unstarted {
                if self.link_tasks.borrow().contains_key(&dest) {
                    continue;
                }
                let signals = Rc::new(LinkSignals {
                    queue: WaitQueue::new(),
                    broken: RefCell::new(Rc::new(Latch::new())),
                });
                self.link_tasks.borrow_mut().insert(dest, signals.clone());
                spawn_timed(crate::runtime::link::run_outgoing(
                    self.clone(),
                    dest,
                    signals,
                ))
                .detach();
            }
        }
    }

    /// Hands the core's move reports to the control thread's channel, in order; a full
    /// channel keeps the next one for the next pass.
    fn send_move_reports(&self) {
        let Some(sender) = self.move_reports.as_ref() else {
            return;
        };
        let mut unsent = self.move_report_unsent.borrow_mut();
        loop {
            let Some(report) = unsent.take().or_else(|| self.core().poll_move_report()) else {
                return;
            };
            match sender.try_send(report) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(report)) => {
                    *unsent = Some(report);
                    return;
                }
                // The control thread is gone: nobody acts on reports any more.
                Err(flume::TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// How outgoing links connect (the network layer's connector).
    pub fn set_link_connector(&self, connector: crate::runtime::link::LinkConnector) {
        *self.link_connector.borrow_mut() = Some(connector);
    }

    pub fn link_connector(&self) -> Option<crate::runtime::link::LinkConnector> {
        self.link_connector.borrow().clone()
    }

    /// What the task of the link to `dest` does next (see [`ShardCore::poll_link`]).
    pub fn poll_link(&self, dest: LinkDest, out: &mut Vec<u8>) -> Option<LinkPoll> {
        self.core().poll_link(dest, out)
    }

    /// The hello frame this shard opens its links with.
    pub fn link_hello_frame(&self) -> Vec<u8> {
        self.core.borrow().link_hello_frame()
    }

    /// Where the shard `dest` is reached, from the placement's node addresses.
    pub fn link_address(&self, dest: LinkDest) -> Option<(String, u16)> {
        let core = self.core.borrow();
        let address = core.placement().node_address(dest.node)?;
        let port = *address.shard_ports.get(dest.shard.index())?;
        Some((address.host.clone(), port))
    }

    pub fn link_connected(
        &self,
        dest: LinkDest,
        accepted: &ArchivedLinkAccepted,
    ) -> Result<(), LinkError> {
        let now = self.now_ns();
        let connected = self.core().handle_link_connected(now, dest, accepted);
        self.wake();
        connected
    }

    pub fn link_replies(&self, dest: LinkDest, body: &[u8]) -> Result<(), LinkError> {
        let now = self.now_ns();
        let handled = self.core().handle_link_replies(now, dest, body);
        self.wake_released();
        handled
    }

    /// A move's acknowledgement from `dest` (see [`ShardCore::handle_move_ack`]).
    pub fn move_ack(&self, dest: LinkDest, body: &[u8]) -> Result<(), MoveError> {
        let now = self.now_ns();
        let handled = self.core().handle_move_ack(now, dest, body);
        self.wake_released();
        handled
    }

    pub fn link_failed(&self, dest: LinkDest) {
        let now = self.now_ns();
        self.core().handle_link_failed(now, dest);
        self.wake_released();
    }

    pub fn link_retry(&self, dest: LinkDest) {
        let now = self.now_ns();
        self.core().handle_link_retry(now, dest);
        self.wake();
    }

    /// A hello on this shard's port (see [`ShardCore::handle_link_hello`]): the inbound
    /// link's id and its writer's queue when accepted; `answer` holds what to send back.
    pub fn link_hello(
        &self,
        header: &FrameHeader,
        body: &[u8],
        answer: &mut FrameBuilder,
    ) -> Option<(ConnectionId, Rc<WaitQueue>)> {
        let now = self.now_ns();
        let id = self.core().handle_link_hello(now, header, body, answer)?;
        let queue = Rc::new(WaitQueue::new());
        let mut writers = self.inbound_writers.borrow_mut();
        if writers.len() <= id.slot() {
            writers.resize_with(id.slot() + 1, || None);
        }
        writers[id.slot()] = Some((id, queue.clone()));
        Some((id, queue))
    }

    pub fn link_events(&self, link: ConnectionId, body: &[u8]) -> Result<(), LinkError> {
        let now = self.now_ns();
        let applied_before = self.events_applied();
        let handled = self.core().handle_link_events(now, link, body);
        self.delay_applied(applied_before);
        self.wake();
        handled
    }

    /// A move frame on inbound link `link` (see [`ShardCore::handle_move_frame`]).
    pub fn move_frame(
        &self,
        link: ConnectionId,
        kind: FrameKind,
        body: &[u8],
    ) -> Result<(), MoveError> {
        let now = self.now_ns();
        let handled = self.core().handle_move_frame(now, link, kind, body);
        self.wake();
        handled
    }

    /// Resolves once inbound link `link` has replies in `out` to write.
    pub async fn until_link_replies(
        &self,
        link: ConnectionId,
        queue: &WaitQueue,
        out: &mut Vec<u8>,
    ) {
        queue
            .until(|| self.core().poll_link_replies(link, out).then_some(()))
            .await;
        self.wake_released();
    }

    pub fn link_closed(&self, link: ConnectionId) {
        let now = self.now_ns();
        self.core().handle_link_closed(now, link);
        let mut writers = self.inbound_writers.borrow_mut();
        if let Some(slot) = writers.get_mut(link.slot()) {
            if slot.as_ref().is_some_and(|(id, _)| *id == link) {
                *slot = None;
            }
        }
        drop(writers);
        self.wake_released();
    }
}

// ---- store hooks (see `runtime::store`) --------------------------------------------------

impl Shard {
    /// Woken when the core has log records for [`Self::take_log`].
    pub fn log_queued(&self) -> &WaitQueue {
        &self.log_queued
    }

    /// Hands the core's queued log records to `sink` (see [`ShardCore::take_log`]).
    pub fn take_log(&self, sink: impl FnMut(u64, PartitionId, &[u8])) -> bool {
        self.core().take_log(sink)
    }

    /// A log sync completed: it is counted, and the replies waiting for its records leave.
    pub fn handle_log_synced(&self, sync: LogSync) {
        let now = self.now_ns();
        self.core().handle_log_synced(now, sync);
        self.wake_released();
    }

    /// Applies a record read back from the log, before the shard serves.
    pub fn replay(&self, partition: PartitionId, payload: &[u8]) -> Result<(), ReplayError> {
        self.core().replay(partition, payload)
    }

    /// The log continues at `next_lsn` (after recovery).
    pub fn resume_log(&self, next_lsn: u64) {
        self.core().resume_log(next_lsn)
    }

    /// Records up to this LSN are on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.core.borrow().durable_lsn()
    }

    /// When the shard's answers are on disk.
    pub fn durability(&self) -> Durability {
        self.core.borrow().durability()
    }

    /// A partition's state and the LSN it covers, for a snapshot (see `runtime::store`).
    pub fn export_partition(&self, partition: PartitionId) -> Option<(u64, PartitionSnapshot)> {
        self.core.borrow().export_partition(partition)
    }

    /// Puts a partition's state back from a snapshot, before the shard serves.
    pub fn restore_partition(&self, snapshot: &PartitionSnapshot) -> Result<(), String> {
        self.core().restore_partition(snapshot)
    }

    /// The log is at its disk bound (events are refused) or has room again.
    pub fn set_log_full(&self, full: bool) {
        self.core().set_log_full(full)
    }

    /// A log operation failed: events are refused until it succeeds (see
    /// [`ShardCore::handle_log_fault`]); says when to retry and whether to say so.
    pub fn handle_log_fault(&self, op: LogOp, kind: LogFaultKind) -> LogFaultStep {
        let now = self.now_ns();
        let step = self.core().handle_log_fault(now, op, kind);
        if step.replies_given_up > 0 {
            self.wake_released();
        }
        step
    }

    /// A log operation succeeded; returns whether that ends the shard's refusal.
    pub fn handle_log_recovered(&self, op: LogOp) -> bool {
        self.core().handle_log_recovered(op)
    }

    /// Woken when a partition handed off here waits to be made durable.
    pub fn move_installs(&self) -> &WaitQueue {
        &self.move_installs
    }

    /// The next handed-off partition to write to the store (see [`ShardCore::poll_move_install`]).
    pub fn poll_move_install(&self) -> Option<MoveInstall> {
        self.core().poll_move_install()
    }

    /// A partition this shard dropped for another owner (see [`ShardCore::poll_departed`]).
    pub fn poll_departed(&self) -> Option<PartitionId> {
        self.core().poll_departed()
    }

    /// Whether `partition` left this shard for good (see [`ShardCore::partition_gone`]).
    pub fn partition_gone(&self, partition: PartitionId) -> bool {
        self.core.borrow().partition_gone(partition)
    }

    /// Whether a handed-off partition waits to be written to the store.
    pub fn move_install_queued(&self) -> bool {
        self.core.borrow().move_install_queued()
    }

    /// A handed-off partition's snapshot covering `lsn` is durable: the hand-off is
    /// acknowledged.
    pub fn handle_move_installed(&self, partition: PartitionId, part_epoch: Epoch, lsn: u64) {
        self.core()
            .handle_move_installed(partition, part_epoch, lsn);
        self.wake();
    }

    /// A handed-off partition's snapshot could not be written (`why`): the move is refused.
    pub fn handle_move_install_failed(
        &self,
        partition: PartitionId,
        part_epoch: Epoch,
        lsn: u64,
        why: String,
    ) {
        self.core()
            .handle_move_install_failed(partition, part_epoch, lsn, why);
        self.wake();
    }

    /// Counts how long a snapshot stopped the shard, and the snapshot with the segments deleted
    /// after it.
    pub fn count_snapshot(&self, pause_ns: u64, segments_deleted: u64) {
        let mut core = self.core();
        core.record_snapshot_pause(pause_ns);
        core.count_snapshot(segments_deleted);
    }
}

// ---- metrics hook -------------------------------------------------------------------------

impl Shard {
    /// What the shard holds now, for the node's once-a-second metrics snapshot.
    pub fn load(&self) -> ShardLoad {
        self.core.borrow().load()
    }

    /// Reads the shard's counters where they are, without copying its stage histograms: for
    /// the once-a-second metrics snapshot.
    pub fn with_counters<R>(&self, read: impl FnOnce(&ShardStats) -> R) -> R {
        read(self.core.borrow().counters())
    }

    /// Reads the shard's core where it is, between two awaits: for the metrics snapshot's
    /// per-partition counts.
    pub fn with_core<R>(&self, read: impl FnOnce(&ShardCore) -> R) -> R {
        read(&self.core.borrow())
    }

    /// The CPU the shard runs on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The shard's counters so far, with the CPU it runs on: for the stop report.
    pub fn stats(&self) -> ShardStats {
        let mut stats = self.core.borrow().stats();
        stats.cpu = self.cpu;
        stats
    }
}

/// Runs `work` for at most `bound`; whether it finished.
async fn finished_within(bound: Duration, work: impl std::future::Future<Output = ()>) -> bool {
    futures_lite::future::or(
        async {
            work.await;
            true
        },
        async {
            glommio::timer::sleep(bound).await;
            false
        },
    )
    .await
}
