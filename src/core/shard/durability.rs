//! Durability, sans-IO: the log records a shard owes its write-ahead log, and the replies that
//! wait for their record to be on disk.
//!
//! Every event this shard applies (from its own sockets or forwarded by a peer) becomes a log
//! record: its archive exactly as received, its partition and a log sequence number (LSN),
//! handed to the shell by [`ShardCore::take_log`]. In [`Durability::Sync`] mode the event's
//! reply is held until the shell reports the record durable with
//! [`ShardCore::handle_durable`]; replies are released in LSN order, and a reply that needs no
//! record (a refusal) is held behind the ones before it, so no reply overtakes an earlier one
//! of its partition. A held reply keeps the credit its event holds (socket credit here, mesh
//! credit at the peer that forwarded it), so a slow disk pushes back on clients the way a slow
//! core does. In [`Durability::Async`] mode records are logged the same way but replies leave
//! at once, as long as at most `DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX` events are unsynced;
//! past that they wait as in sync mode, so the disk's pace still bounds what is in memory.
//! In [`Durability::Memory`] mode (no data dir) nothing is logged.
//!
//! A held reply to one of this shard's connections counts as work away from the connection
//! (like an event forwarded to a peer), so the connection neither finishes nor frees its slot
//! before the reply is written.
//!
//! Snapshots: [`ShardCore::export_partition`] copies a partition's state with the LSN it
//! covers (the last given out), [`ShardCore::restore_partition`] puts one back at recovery.
//! When the shell finds the log at its disk bound it calls [`ShardCore::set_log_full`]: every
//! event this shard would apply is then answered `Error { LogFull }` at once, without a record,
//! while replies already held still leave as their records become durable.
//!
//! Disk faults: when a log write, a new segment's allocation, a sync or a snapshot fails, the
//! shell reports the operation and the kind of error ([`ShardCore::handle_log_fault`]) and the
//! core decides: every event this shard would apply is answered `Error { DiskFull }` (no
//! space) or `Error { DiskFailed }` (any other I/O error) at once, without a record; the shell
//! is told when to retry (a back-off doubling from `LOG_FAULT_RETRY_MS_MIN` to
//! `LOG_FAULT_RETRY_MS_MAX`) and whether to say so (once, when the first operation fails).
//! Replies already held keep waiting: the failed write or sync is retried with the same
//! records, and they leave once it succeeds, so nothing is answered that is not durable and
//! nothing answered is lost. When every failed operation has succeeded again
//! ([`ShardCore::handle_log_recovered`]), the shard takes events again. An I/O error (not a
//! full disk) that lasts `LOG_FAULT_HOLD_MS_MAX` ends the wait: the held replies are answered
//! `Error { OutcomeUnknown }` (their records may or may not be on disk), so that the refusals
//! queued behind them reach their clients; the operation is still retried.
//!
//! Stopping: a stopping shard waits for its log to be durable, so a clean stop loses nothing.
//! When it is still not durable after `LOG_STOP_WAIT_MS_MAX` (a failed or hung disk), the shell
//! calls [`ShardCore::handle_log_abandoned`]: every held reply is answered (`OutcomeUnknown`
//! for those whose record is not on disk), the log counts as closed, and the records given up
//! are counted so that the node exits non-zero. In sync mode none of them was answered as
//! applied; in async mode some may have been. Shard-local, like the core.

use std::collections::VecDeque;

use crate::constants::{
    DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX, DURABILITY_HELD_REPLY_BYTES_MAX,
    DURABILITY_HELD_UNCREDITED_MAX, DURABILITY_QUEUED_RECORD_BYTES, LOG_FAULT_HOLD_MS_MAX,
    LOG_FAULT_RETRY_MS_MAX, LOG_FAULT_RETRY_MS_MIN,
};
use crate::core::codec::{FrameError, access_record};
use crate::core::credit::Credit;
use crate::core::hunt::PartitionState;
use crate::core::ids::{ConnectionId, Epoch, PartitionId, ShardId};
use crate::core::message::{ArchivedEvent, EventError, Outcome, Reply};
use crate::core::shard::ShardCore;
use crate::core::shard::mesh::BatchEntry;
use crate::core::shard::routing::LocalEvent;
use crate::core::snapshot::PartitionSnapshot;

/// When a shard's answers are on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// No log: a crash loses everything (no data dir).
    #[default]
    Memory,
    /// Logged, answered at once, synced behind: a crash loses what was answered but not yet
    /// synced (at most `DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX` events per shard).
    Async,
    /// Logged, answered only once the record is synced: what was answered survives a crash.
    Sync,
}

/// One completed sync of the shard's log, as the shell saw it (the core keeps no clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSync {
    /// Records up to this LSN are on disk.
    pub lsn: u64,
    /// From the first write the sync covers being issued to the sync completing.
    pub write_to_sync_ns: u64,
    /// Bytes the writes the sync covers put in the log's segments.
    pub bytes_written: u64,
}

/// A log operation of the shell's that can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// Opening a segment, or pre-allocating a new one (`fallocate`).
    Open,
    /// Writing records to a segment.
    Write,
    /// Syncing written records (`fdatasync`).
    Sync,
    /// Writing a partition's snapshot file.
    Snapshot,
}

impl LogOp {
    const ALL: [LogOp; 4] = [LogOp::Open, LogOp::Write, LogOp::Sync, LogOp::Snapshot];

    fn index(self) -> usize {
        self as usize
    }

    /// What the shard could not do, for the node's line.
    pub fn describe(self) -> &'static str {
        match self {
            LogOp::Open => "allocate a log segment",
            LogOp::Write => "write its log",
            LogOp::Sync => "sync its log",
            LogOp::Snapshot => "write a snapshot",
        }
    }
}

/// Why a log operation failed, as the shell classified the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFaultKind {
    /// ENOSPC or EDQUOT: an operator must free space.
    NoSpace,
    /// EIO or any other error: the disk itself failed.
    Io,
}

/// What the shell does after a failed log operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogFaultStep {
    /// The shard just started refusing events: say so (one line per episode, not per retry).
    pub announce: bool,
    /// Retry the operation after this long.
    pub retry_after_ms: u64,
    /// Held replies this failure answered `OutcomeUnknown` (an I/O error lasted
    /// `LOG_FAULT_HOLD_MS_MAX`): the shell wakes their writers.
    pub replies_given_up: u64,
}

/// What a stopping shard gave up when its log could not be made durable in time
/// ([`ShardCore::handle_log_abandoned`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogAbandoned {
    /// Records logged but never reported durable. In sync mode none of their events was
    /// answered as applied; in async mode up to this many answered events may be lost.
    pub records: u64,
    /// Replies that waited for those records, answered `OutcomeUnknown` now.
    pub replies_unknown: u64,
}

/// The log operations failing now, how often each has failed in a row, and since when the
/// shard refuses events.
#[derive(Default)]
struct LogFaults {
    failing: [Option<LogFaultKind>; 4],
    attempts: [u32; 4],
    /// When the first operation of this episode failed (the core's `now_ns`).
    since_ns: Option<u64>,
}

impl LogFaults {
    fn any(&self) -> bool {
        self.failing.iter().any(Option::is_some)
    }

    /// The refusal's reason: no space when any failing operation says so (the one an operator
    /// can fix), else an I/O error.
    fn kind(&self) -> Option<LogFaultKind> {
        let mut kinds = self.failing.iter().flatten();
        let first = *kinds.next()?;
        Some(if self.failing.contains(&Some(LogFaultKind::NoSpace)) {
            LogFaultKind::NoSpace
        } else {
            first
        })
    }
}

/// The wait before retry number `attempt` (1 for the first failure) of a failed operation.
fn retry_after_ms(attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(u64::BITS - 1);
    LOG_FAULT_RETRY_MS_MIN
        .saturating_mul(1 << doublings)
        .min(LOG_FAULT_RETRY_MS_MAX)
}

/// A reply waiting for the record it (or an earlier reply) depends on, or (at a move's
/// source) for the move's target to have its event (`moves`).
pub(super) enum HeldReply {
    /// To a connection of this shard, holding `credit` there.
    Local {
        id: ConnectionId,
        reply: Reply,
        credit: Credit,
    },
    /// To an event peer `from` forwarded, for its next batch.
    Peer {
        from: ShardId,
        reply: Reply,
        entry: BatchEntry,
    },
    /// To the event with `token` of inbound link `link` (from another node), holding
    /// `credit` of that source's share.
    Link {
        link: ConnectionId,
        token: u64,
        reply: Reply,
        credit: Credit,
    },
    /// At a move's target that logs: its acknowledgement of the tail's first `events` events
    /// (`bytes` bytes) after the hand-off, once they are durable here (`moves`).
    MoveAck {
        link: ConnectionId,
        partition: PartitionId,
        part_epoch: Epoch,
        events: u64,
        bytes: u64,
    },
}

impl HeldReply {
    /// The reply to a client's event, if this is one (not a move's acknowledgement).
    pub(super) fn reply_mut(&mut self) -> Option<&mut Reply> {
        match self {
            HeldReply::Local { reply, .. }
            | HeldReply::Peer { reply, .. }
            | HeldReply::Link { reply, .. } => Some(reply),
            HeldReply::MoveAck { .. } => None,
        }
    }
}

/// One record for the log: where its payload sits in the queue's bytes.
#[derive(Clone, Copy)]
struct QueuedRecord {
    lsn: u64,
    partition: PartitionId,
    start: u32,
    len: u32,
}

/// A held reply and the LSN it waits for.
struct HeldEntry {
    waits_for: u64,
    /// The reply's own event was logged (applied here): if its record never becomes durable,
    /// nobody knows whether it survives, and it is answered `OutcomeUnknown`. A refusal (no
    /// record) keeps its answer.
    logged: bool,
    reply: HeldReply,
}

// The memory sum (`constants::WAL_SHARD_BYTES_MAX`) counts these at their sizes.
const _: () = assert!(size_of::<QueuedRecord>() <= DURABILITY_QUEUED_RECORD_BYTES);
const _: () = assert!(size_of::<HeldEntry>() <= DURABILITY_HELD_REPLY_BYTES_MAX);

/// The shard's durability state. See the module documentation.
#[derive(Default)]
pub(super) struct DurabilityState {
    mode: Durability,
    /// The LSN the next logged event gets; LSNs start at 1.
    next_lsn: u64,
    durable_lsn: u64,
    /// Records not yet taken by the shell, their payloads back to back in `bytes`. Bounded by
    /// credit: every record's event holds credit until its reply is written.
    bytes: Vec<u8>,
    records: Vec<QueuedRecord>,
    /// Replies waiting for their LSN to be durable, in LSN order.
    held: VecDeque<HeldEntry>,
    /// Held replies that hold no credit (bounded by `DURABILITY_HELD_UNCREDITED_MAX`).
    held_uncredited: usize,
    /// The credit of held replies to this shard's connections.
    held_credit: Credit,
    /// The log reached its disk bound: events are refused until it has room again.
    log_full: bool,
    /// Log operations that failed and are being retried: events are refused meanwhile.
    faults: LogFaults,
    /// A stopping shard gave up waiting for its log: it counts as closed, and every event the
    /// shard would still apply is answered `ShuttingDown`.
    abandoned: bool,
    /// Partitions whose state this shard dropped because the placement gave them to another
    /// shard, for the store to forget ([`ShardCore::poll_departed`]); each listed once, so at
    /// most one per partition.
    departed: Vec<PartitionId>,
}

impl DurabilityState {
    pub fn new(mode: Durability) -> DurabilityState {
        DurabilityState {
            mode,
            next_lsn: 1,
            ..DurabilityState::default()
        }
    }

    /// The credit held replies to this shard's connections hold (it counts as away from the
    /// connection, like a forwarded event's).
    pub fn held_credit(&self) -> Credit {
        self.held_credit
    }

    fn logs(&self) -> bool {
        self.mode != Durability::Memory
    }

    /// Whether a reply must wait: when anything before it waits; in sync mode also when its
    /// event was logged; in async mode when its event is logged and more than
    /// `DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX` events are not yet synced.
    fn must_hold(&self, logged: bool) -> bool {
        match self.mode {
            Durability::Memory => false,
            Durability::Sync => logged || !self.held.is_empty(),
            Durability::Async => {
                let unsynced = self.last_lsn() - self.durable_lsn;
                !self.held.is_empty() || (logged && unsynced > DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX)
            }
        }
    }

    fn log(&mut self, partition: PartitionId, payload: &[u8]) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.records.push(QueuedRecord {
            lsn,
            partition,
            start: self.bytes.len() as u32,
            len: payload.len() as u32,
        });
        self.bytes.extend_from_slice(payload);
        lsn
    }

    /// The LSN a reply held now waits for: the last one given out.
    fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }
}

/// Why a record could not be replayed into this shard's partitions.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// The payload is not a valid event archive.
    Invalid(FrameError),
    /// The record's partition is not the event's, or not one this shard serves.
    Partition {
        logged: PartitionId,
        routed: Option<PartitionId>,
    },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Invalid(error) => write!(f, "the record is not a valid event: {error}"),
            ReplayError::Partition {
                logged,
                routed: Some(routed),
            } => write!(
                f,
                "the record names partition {} but its event belongs to partition {}",
                logged.0, routed.0
            ),
            ReplayError::Partition {
                logged,
                routed: None,
            } => write!(
                f,
                "the record's partition {} is not served by this shard",
                logged.0
            ),
        }
    }
}

impl ShardCore {
    /// The shard's durability mode.
    pub fn durability(&self) -> Durability {
        self.durability.mode
    }

    /// Hands every log record queued since the last call to `sink`, in LSN order: its LSN,
    /// partition and payload (the event's archive exactly as received). Returns whether there
    /// were any.
    pub fn take_log(&mut self, mut sink: impl FnMut(u64, PartitionId, &[u8])) -> bool {
        let state = &mut self.durability;
        if state.records.is_empty() {
            return false;
        }
        for record in &state.records {
            let payload = &state.bytes[record.start as usize..][..record.len as usize];
            sink(record.lsn, record.partition, payload);
        }
        state.records.clear();
        state.bytes.clear();
        true
    }

    /// Whether log records wait for [`Self::take_log`].
    pub fn log_queued(&self) -> bool {
        !self.durability.records.is_empty()
    }

    /// A sync of the log completed: counts it (the log-sync stage, records and bytes) and
    /// releases the replies waiting for its records ([`Self::handle_durable`]).
    pub fn handle_log_synced(&mut self, now_ns: u64, sync: LogSync) {
        let records = sync.lsn.saturating_sub(self.durability.durable_lsn);
        let tally = &mut self.stats.log;
        tally.syncs += 1;
        tally.records += records;
        tally.bytes += sync.bytes_written;
        if let Some(stage) = &mut self.stats.stages.log_sync_ns {
            stage.saturating_record(sync.write_to_sync_ns.max(1));
        }
        self.handle_durable(now_ns, sync.lsn);
    }

    /// Records up to `lsn` are on disk: the replies waiting for them leave, in order.
    pub fn handle_durable(&mut self, now_ns: u64, lsn: u64) {
        if lsn <= self.durability.durable_lsn {
            return;
        }
        self.durability.durable_lsn = lsn;
        while self
            .durability
            .held
            .front()
            .is_some_and(|entry| entry.waits_for <= lsn)
        {
            let entry = self.durability.held.pop_front().expect("checked");
            self.release_held(now_ns, entry.reply);
        }
        // Even when no reply was held: in async mode the sync can be the last thing a stopping
        // shard waits for (its replies left before it), and its flushers look only when listed.
        self.after_release();
    }

    /// The highest LSN reported durable.
    pub fn durable_lsn(&self) -> u64 {
        self.durability.durable_lsn
    }

    /// Every record logged so far is on disk (always true without a log): a stopping shard
    /// waits for this, so a clean stop loses nothing in async mode either.
    pub fn log_durable(&self) -> bool {
        self.durability.abandoned || self.durability.durable_lsn + 1 >= self.durability.next_lsn
    }

    /// The LSN the next logged event gets.
    pub fn next_lsn(&self) -> u64 {
        self.durability.next_lsn
    }

    /// Continues the log after recovery: records up to `next_lsn - 1` are on disk already.
    pub fn resume_log(&mut self, next_lsn: u64) {
        debug_assert!(self.durability.records.is_empty() && self.durability.held.is_empty());
        self.durability.next_lsn = next_lsn;
        self.durability.durable_lsn = next_lsn - 1;
    }

    /// Applies a record read back from the log (recovery): the payload is validated, its
    /// partition checked against the event's, and the event applied with no reply and no new
    /// record. A single node replays only the partitions this shard owns. A cluster node
    /// recovers before it knows the cluster's placement: it replays every partition its log
    /// holds, served by nobody until the placement gives them back to this shard.
    pub fn replay(&mut self, partition: PartitionId, payload: &[u8]) -> Result<(), ReplayError> {
        let event = access_record::<ArchivedEvent>(0, payload).map_err(ReplayError::Invalid)?;
        let routed = self.placement.partitioner().partition_of(event.hunt.get());
        let owner = self.placement.owner(routed);
        let owned = owner.node == self.node && owner.shard == self.shard;
        if routed != partition || (self.placed && !owned) {
            return Err(ReplayError::Partition {
                logged: partition,
                routed: (routed != partition).then_some(routed),
            });
        }
        self.partitions[partition.index()]
            .get_or_insert_with(|| PartitionState::new(partition))
            .apply(event);
        Ok(())
    }

    /// Copies partition `partition`'s state for a snapshot, with the LSN it covers: the last
    /// one given out, since every event applied so far was logged. `None` when this shard holds
    /// no state for the partition, or only state recovered before its node was given the
    /// cluster's placement (which may hand it away: snapshotting it again would only make a
    /// stale copy look newer).
    pub fn export_partition(&self, partition: PartitionId) -> Option<(u64, PartitionSnapshot)> {
        if !self.placed {
            return None;
        }
        let state = self.partitions.get(partition.index())?.as_ref()?;
        Some((self.durability.last_lsn(), state.export()))
    }

    /// The placement gave `partition` to another shard and its state here was dropped: the
    /// store forgets it (see [`Self::poll_departed`]).
    pub(super) fn note_departed(&mut self, partition: PartitionId) {
        let departed = &mut self.durability.departed;
        if self.durability.mode != Durability::Memory && !departed.contains(&partition) {
            departed.push(partition);
        }
    }

    /// A partition whose state this shard dropped since the last call because the placement
    /// gave it to another shard. The store forgets it if it is still gone
    /// ([`Self::partition_gone`]): its snapshot files, and the log segments its records
    /// held back.
    pub fn poll_departed(&mut self) -> Option<PartitionId> {
        self.durability.departed.pop()
    }

    /// The last LSN given out (0 before the first): a snapshot of state that no record of
    /// this log after it touches covers it.
    pub(super) fn last_lsn_given(&self) -> u64 {
        self.durability.last_lsn()
    }

    /// Whether applied events are logged (a data dir).
    pub(super) fn logs(&self) -> bool {
        self.durability.logs()
    }

    /// Puts a partition's state back from a snapshot (recovery, before the log after it is
    /// replayed). A cluster node recovers before it knows the placement: like
    /// [`Self::replay`], it takes every partition back, for the placement to confirm or hand
    /// away. Refused when the snapshot breaks a limit or names a partition this shard does
    /// not hold.
    pub fn restore_partition(&mut self, snapshot: &PartitionSnapshot) -> Result<(), String> {
        let index = snapshot.partition as usize;
        let placed = self.placed;
        let Some(slot) = self
            .partitions
            .get_mut(index)
            .filter(|slot| slot.is_some() || !placed)
        else {
            return Err(format!(
                "it holds partition {index}, which this shard does not serve"
            ));
        };
        *slot = Some(PartitionState::import(snapshot).map_err(|error| error.0)?);
        Ok(())
    }

    /// The log is at its disk bound (`true`) or has room again (`false`).
    pub fn set_log_full(&mut self, full: bool) {
        self.durability.log_full = full;
    }

    /// Whether events are refused because the log is at its disk bound.
    pub fn log_full(&self) -> bool {
        self.durability.log_full
    }

    /// How long taking one partition's snapshot stopped the shard (measured by the shell).
    pub fn record_snapshot_pause(&mut self, pause_ns: u64) {
        if let Some(pause) = self.stats.stages.snapshot_pause_ns.as_mut() {
            pause.saturating_record(pause_ns.max(1));
        }
    }

    /// The shell wrote a snapshot file and deleted `segments` log segments no snapshot needs.
    pub fn count_snapshot(&mut self, segments: u64) {
        self.stats.log.snapshots += 1;
        self.stats.log.segments_deleted += segments;
    }

    /// Log operation `op` failed with an error of `kind`: events are refused from now on
    /// (until [`Self::handle_log_recovered`] for every failed operation). Returns when to
    /// retry and whether this failure starts the refusal (the shell says so once).
    ///
    /// When the refusal is for an I/O error (not for space, which an operator can free) and
    /// has lasted `LOG_FAULT_HOLD_MS_MAX`, the replies held for records that could not be
    /// written or synced are answered now, `OutcomeUnknown` (see [`Self::give_up_held`]):
    /// a failed disk rarely comes back, and the refusals queued behind them must reach their
    /// clients. The operation is still retried; if it succeeds, those events are on disk.
    pub fn handle_log_fault(&mut self, now_ns: u64, op: LogOp, kind: LogFaultKind) -> LogFaultStep {
        let faults = &mut self.durability.faults;
        let announce = !faults.any();
        let since_ns = *faults.since_ns.get_or_insert(now_ns);
        faults.failing[op.index()] = Some(kind);
        // A partition being installed here could not be made durable either.
        let why = match kind {
            LogFaultKind::NoSpace => "its disk is full",
            LogFaultKind::Io => "its disk failed",
        };
        self.refuse_installs(format!("it could not {} ({why})", op.describe()));
        let faults = &mut self.durability.faults;
        let attempts = &mut faults.attempts[op.index()];
        *attempts = attempts.saturating_add(1);
        let retry_after_ms = retry_after_ms(*attempts);
        let failed_for_ms = now_ns.saturating_sub(since_ns) / 1_000_000;
        let replies_given_up =
            if faults.kind() == Some(LogFaultKind::Io) && failed_for_ms >= LOG_FAULT_HOLD_MS_MAX {
                self.give_up_held(now_ns)
            } else {
                0
            };
        LogFaultStep {
            announce,
            retry_after_ms,
            replies_given_up,
        }
    }

    /// Answers every held reply now, in order, without waiting for its record: a reply to an
    /// event logged here becomes `Error { OutcomeUnknown }` (its record may or may not have
    /// reached the disk before it failed: the client reads the state back before sending it
    /// again), a refusal keeps its answer. The event's outcome tally keeps what was applied
    /// in memory; [`LogTally::replies_unknown`](crate::core::shard::LogTally) counts these.
    /// Returns how many became `OutcomeUnknown`.
    fn give_up_held(&mut self, now_ns: u64) -> u64 {
        let mut unknown = 0;
        while let Some(entry) = self.durability.held.pop_front() {
            let mut held = entry.reply;
            if let Some(reply) = held.reply_mut().filter(|_| entry.logged) {
                unknown += 1;
                reply.outcome = Outcome::Error {
                    error: EventError::OutcomeUnknown,
                };
            }
            self.release_held(now_ns, held);
        }
        self.stats.log.replies_unknown += unknown;
        self.after_release();
        unknown
    }

    /// The stopping shard gives up on its log: the shell waited `LOG_STOP_WAIT_MS_MAX` and
    /// records are still not durable (a failed or hung disk). Every held reply is answered
    /// now ([`Self::give_up_held`]), the log counts as closed so the stop can finish, and
    /// every event the shard would still apply is answered `ShuttingDown`. Returns what was
    /// given up, for the shell's line and the node's exit status; nothing when the log was
    /// durable (or the shard is not stopping).
    pub fn handle_log_abandoned(&mut self, now_ns: u64) -> Option<LogAbandoned> {
        if !self.stopping || self.log_durable() {
            return None;
        }
        let records = self.durability.last_lsn() - self.durability.durable_lsn;
        let replies_unknown = self.give_up_held(now_ns);
        self.durability.abandoned = true;
        self.stats.log.records_abandoned += records;
        self.after_release();
        Some(LogAbandoned {
            records,
            replies_unknown,
        })
    }

    /// Log operation `op` succeeded. Returns whether that ends a refusal (the last failing
    /// operation recovered): the shard takes events again, and the shell says so.
    pub fn handle_log_recovered(&mut self, op: LogOp) -> bool {
        let faults = &mut self.durability.faults;
        if faults.failing[op.index()].take().is_none() {
            return false;
        }
        faults.attempts[op.index()] = 0;
        if faults.any() {
            return false;
        }
        faults.since_ns = None;
        true
    }

    /// Why events are refused because the log's disk fails, if they are.
    pub fn log_fault(&self) -> Option<LogFaultKind> {
        self.durability.faults.kind()
    }

    /// The log operations failing now.
    pub fn log_ops_failing(&self) -> impl Iterator<Item = LogOp> + '_ {
        LogOp::ALL
            .into_iter()
            .filter(|op| self.durability.faults.failing[op.index()].is_some())
    }

    /// The answer for an event this shard would apply, while the log's disk fails or the log
    /// is at its bound; `None` when the event may be applied.
    pub(super) fn log_refusal(&self) -> Option<Outcome> {
        let error = match self.durability.faults.kind() {
            _ if self.durability.abandoned => EventError::ShuttingDown,
            Some(LogFaultKind::NoSpace) => EventError::DiskFull,
            Some(LogFaultKind::Io) => EventError::DiskFailed,
            None if self.durability.log_full => EventError::LogFull,
            None => return None,
        };
        Some(Outcome::Error { error })
    }

    /// Stop reading while too many refusals wait behind replies for a sync.
    pub(super) fn durability_backlog_full(&self) -> bool {
        self.durability.held_uncredited >= DURABILITY_HELD_UNCREDITED_MAX
    }

    /// The reply to an event of connection `id` applied here: logged, then queued or held.
    pub(super) fn reply_applied(
        &mut self,
        id: ConnectionId,
        local: LocalEvent,
        record: &[u8],
        reply: &Reply,
        credit: Credit,
    ) {
        if !self.durability.logs() {
            self.queue_reply(id, reply, credit);
            return;
        }
        self.durability.log(local.partition(), record);
        self.hold_or_queue_local(id, reply, credit, true);
    }

    /// A reply to connection `id` that needs no record (a refusal): held behind earlier
    /// replies waiting for a sync, queued otherwise.
    pub(super) fn reply_uncredited(&mut self, id: ConnectionId, reply: &Reply) {
        self.hold_or_queue_local(id, reply, Credit::ZERO, false);
    }

    /// The answer to an event of connection `id` that holds `credit` and was not applied (a
    /// released move's `Moved`, say): behind earlier replies waiting for a sync, like any.
    pub(super) fn reply_answered(&mut self, id: ConnectionId, reply: &Reply, credit: Credit) {
        self.hold_or_queue_local(id, reply, credit, false);
    }

    fn hold_or_queue_local(
        &mut self,
        id: ConnectionId,
        reply: &Reply,
        credit: Credit,
        logged: bool,
    ) {
        if !self.durability.must_hold(logged) {
            self.queue_reply(id, reply, credit);
            return;
        }
        let Some(held) = self.held_local(id, reply, credit) else {
            return;
        };
        let waits_for = self.durability.last_lsn();
        self.durability.held.push_back(HeldEntry {
            waits_for,
            logged,
            reply: held,
        });
    }

    /// A reply to connection `id` kept back (for a sync, or by a move), counted as away from
    /// the connection like a forwarded event until [`Self::release_held`]; `None` when the
    /// connection is gone.
    fn held_local(&mut self, id: ConnectionId, reply: &Reply, credit: Credit) -> Option<HeldReply> {
        let connection = self.connections.get_mut(id)?;
        connection.remote_inflight += 1;
        connection.remote_credit = connection.remote_credit.plus(credit);
        let state = &mut self.durability;
        state.held_credit = state.held_credit.plus(credit);
        if credit == Credit::ZERO {
            state.held_uncredited += 1;
        }
        Some(HeldReply::Local {
            id,
            reply: reply.clone(),
            credit,
        })
    }

    /// The reply to an event of connection `id` applied here, of a partition whose move gates
    /// its replies: logged now (in order with the partition's other records), kept back
    /// until the move lets it go ([`Self::release_or_wait_for_sync`]).
    pub(super) fn gate_local_reply(
        &mut self,
        id: ConnectionId,
        local: LocalEvent,
        record: &[u8],
        reply: &Reply,
        credit: Credit,
    ) -> Option<HeldReply> {
        self.log_gated(local.partition(), record);
        self.held_local(id, reply, credit)
    }

    /// The record of an event another shard or node sent, applied here, whose reply a move
    /// gates (see [`Self::gate_local_reply`]).
    pub(super) fn log_gated(&mut self, partition: PartitionId, record: &[u8]) {
        if self.durability.logs() {
            self.durability.log(partition, record);
        }
    }

    /// A reply a move kept back is let go (or, at a target that logs, the acknowledgement of
    /// tail events it logged): it still waits for the sync of the records logged so far where
    /// the mode asks, else it leaves now.
    pub(super) fn release_or_wait_for_sync(&mut self, now_ns: u64, held: HeldReply) {
        let state = &self.durability;
        // Records already durable are not synced again: nothing would release it.
        let synced = state.last_lsn() <= state.durable_lsn && state.held.is_empty();
        if state.logs() && state.must_hold(true) && !synced {
            let waits_for = self.durability.last_lsn();
            self.durability.held.push_back(HeldEntry {
                waits_for,
                logged: true,
                reply: held,
            });
        } else {
            self.release_held(now_ns, held);
        }
    }

    /// The reply to an event peer `from` forwarded: logged when it was applied here
    /// (`applied` holds its partition and archive), then held or queued for the peer.
    /// Returns whether it was held.
    pub(super) fn hold_peer_reply(
        &mut self,
        from: ShardId,
        applied: Option<(LocalEvent, &[u8])>,
        reply: &Reply,
        entry: &BatchEntry,
    ) -> bool {
        self.log_and_hold_remote(applied, || HeldReply::Peer {
            from,
            reply: reply.clone(),
            entry: *entry,
        })
    }

    /// The reply to the event with `token` of inbound link `link`: logged when it was applied
    /// here (`applied`), then held or not, like [`Self::hold_peer_reply`]. Returns whether
    /// it was held.
    pub(super) fn hold_link_reply(
        &mut self,
        link: ConnectionId,
        token: u64,
        credit: Credit,
        applied: Option<(LocalEvent, &[u8])>,
        reply: &Reply,
    ) -> bool {
        self.log_and_hold_remote(applied, || HeldReply::Link {
            link,
            token,
            reply: reply.clone(),
            credit,
        })
    }

    /// What replies to another shard's or node's events share: the record is logged when
    /// the event was applied here, and the reply (made by `held` only when needed) waits for
    /// its sync when the mode asks. Returns whether it was held.
    fn log_and_hold_remote(
        &mut self,
        applied: Option<(LocalEvent, &[u8])>,
        held: impl FnOnce() -> HeldReply,
    ) -> bool {
        if !self.durability.logs() {
            return false;
        }
        if let Some((local, archive)) = applied {
            self.durability.log(local.partition(), archive);
        }
        if !self.durability.must_hold(applied.is_some()) {
            return false;
        }
        let waits_for = self.durability.last_lsn();
        self.durability.held.push_back(HeldEntry {
            waits_for,
            logged: applied.is_some(),
            reply: held(),
        });
        true
    }

    fn release_held(&mut self, now_ns: u64, held: HeldReply) {
        match held {
            HeldReply::Local { id, reply, credit } => {
                let state = &mut self.durability;
                state.held_credit = state.held_credit.minus(credit);
                if credit == Credit::ZERO {
                    state.held_uncredited -= 1;
                }
                match self.connections.get_mut(id) {
                    Some(connection) if !connection.socket_closed => {
                        connection.remote_inflight -= 1;
                        connection.remote_credit = connection.remote_credit.minus(credit);
                        self.queue_reply(id, &reply, credit);
                    }
                    Some(_) => self.release_remote(id, credit),
                    None => self.credit.release(credit),
                }
            }
            HeldReply::Peer { from, reply, entry } => {
                self.queue_peer_reply(now_ns, from, &reply, &entry);
                self.list_mesh_ready(from);
            }
            HeldReply::Link {
                link,
                token,
                reply,
                credit,
            } => self.queue_link_reply(now_ns, link, token, &reply, credit),
            HeldReply::MoveAck {
                link,
                partition,
                part_epoch,
                events,
                bytes,
            } => self.ack_staged(now_ns, link, partition, part_epoch, events, bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use rkyv::util::AlignedVec;

    use super::*;
    use crate::core::codec::{Decoded, FrameBuilder, FrameKind, Records, decode_frame};
    use crate::core::ids::{HuntId, PlayerId};
    use crate::core::message::{ArchivedReply, Event, EventKind, HuntSpec, Outcome};
    use crate::core::partition::Placement;
    use crate::core::shard::{LogTally, OutcomeIndex};
    use crate::core::shard::{MeshOutput, ShardConfig};

    fn placement(shards: usize) -> Placement {
        Placement::round_robin(64, shards).unwrap()
    }

    fn cores(shards: usize, durability: Durability) -> Vec<ShardCore> {
        let config = ShardConfig {
            durability,
            ..ShardConfig::defaults(shards)
        };
        (0..shards)
            .map(|s| ShardCore::with_config(ShardId(s as u16), placement(shards), config.clone()))
            .collect()
    }

    /// The `n`th hunt whose partition shard `owner` of `shards` owns.
    fn hunt_owned_by(shards: usize, owner: u16, n: usize) -> HuntId {
        let map = placement(shards);
        (0..)
            .map(HuntId)
            .filter(|hunt| map.route(*hunt).1 == ShardId(owner))
            .nth(n)
            .unwrap()
    }

    fn event(seq: u64, hunt: HuntId, kind: EventKind) -> Event {
        Event {
            hunt,
            player: PlayerId(seq % 5),
            client_session: 0,
            client_seq: seq,
            client_ts: 0,
            kind,
        }
    }

    fn frame(events: &[Event]) -> AlignedVec {
        let mut builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        for event in events {
            builder.push(event).unwrap();
        }
        builder.finish(0);
        let mut bytes = AlignedVec::new();
        bytes.extend_from_slice(builder.bytes());
        bytes
    }

    /// Shard 0 of `shards`, a connection to it, and a hunt of shard 0's created on it as
    /// event 1 (applied; with a log, its reply waits for the record's sync).
    fn shard_0_with_a_hunt(
        shards: usize,
        durability: Durability,
    ) -> (ShardCore, ConnectionId, HuntId) {
        let mut core = cores(shards, durability).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(shards, 0, 0);
        offer(
            &mut core,
            conn,
            &[event(1, hunt, EventKind::CreateHunt(HuntSpec::default()))],
        );
        (core, conn, hunt)
    }

    fn offer(core: &mut ShardCore, conn: ConnectionId, events: &[Event]) {
        let bytes = frame(events);
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(&bytes) else {
            panic!("a whole frame")
        };
        core.handle_frame(0, conn, &header, body).unwrap();
    }

    /// The replies the connection's writer takes now, written whole.
    fn written(core: &mut ShardCore, conn: ConnectionId) -> Vec<Reply> {
        let mut replies = Vec::new();
        let mut out = FrameBuilder::new();
        while core.poll_replies(conn, &mut out) {
            let mut rest = out.bytes();
            while let Ok(Decoded::Frame {
                header,
                body,
                frame_len,
            }) = decode_frame(rest)
            {
                if header.kind == FrameKind::Replies {
                    for (index, record) in Records::parse(header.kind, body)
                        .unwrap()
                        .iter()
                        .enumerate()
                    {
                        let reply = access_record::<ArchivedReply>(index as u32, record).unwrap();
                        replies
                            .push(rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap());
                    }
                }
                rest = &rest[frame_len..];
            }
            let len = out.len();
            core.handle_written(0, conn, len);
            out.clear(0);
        }
        replies
    }

    fn logged(core: &mut ShardCore) -> Vec<(u64, PartitionId, Vec<u8>)> {
        let mut records = Vec::new();
        core.take_log(|lsn, partition, payload| records.push((lsn, partition, payload.to_vec())));
        records
    }

    fn seqs(replies: &[Reply]) -> Vec<u64> {
        replies.iter().map(|reply| reply.client_seq).collect()
    }

    #[test]
    fn sync_mode_holds_each_reply_until_its_record_is_durable_with_its_credit() {
        let mut core = cores(1, Durability::Sync).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        let events = [
            event(1, hunt, EventKind::CreateHunt(HuntSpec::default())),
            event(2, hunt, EventKind::Join),
            event(3, hunt, EventKind::Join),
        ];
        offer(&mut core, conn, &events);
        assert!(
            written(&mut core, conn).is_empty(),
            "nothing is durable yet"
        );
        assert_eq!(
            core.credit_held().events,
            3,
            "held replies keep their credit"
        );
        core.check_credit().unwrap();
        let records = logged(&mut core);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        let expected = frame(&events[1..2]);
        let Ok(Decoded::Frame { body, .. }) = decode_frame(&expected) else {
            panic!()
        };
        let archive = Records::parse(FrameKind::Events, body)
            .unwrap()
            .iter()
            .next()
            .unwrap();
        assert_eq!(
            records[1].2, archive,
            "the record is the event's archive as received"
        );
        core.handle_durable(0, 2);
        assert_eq!(seqs(&written(&mut core, conn)), [1, 2]);
        assert_eq!(core.credit_held().events, 1);
        core.check_credit().unwrap();
        core.handle_durable(0, 3);
        assert_eq!(seqs(&written(&mut core, conn)), [3]);
        assert_eq!(core.credit_held(), Credit::ZERO);
    }

    #[test]
    fn a_log_sync_is_counted_with_its_records_bytes_and_latency() {
        let mut core = cores(1, Durability::Sync).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        let events = [
            event(1, hunt, EventKind::CreateHunt(HuntSpec::default())),
            event(2, hunt, EventKind::Join),
            event(3, hunt, EventKind::Join),
        ];
        offer(&mut core, conn, &events);
        assert_eq!(logged(&mut core).len(), 3);
        let sync = |lsn, write_to_sync_ns, bytes_written| LogSync {
            lsn,
            write_to_sync_ns,
            bytes_written,
        };
        core.handle_log_synced(0, sync(2, 300_000, 4096));
        assert_eq!(seqs(&written(&mut core, conn)), [1, 2], "the sync releases");
        core.handle_log_synced(0, sync(3, 5_000_000, 8192));
        assert_eq!(seqs(&written(&mut core, conn)), [3]);
        let stats = core.stats();
        assert_eq!(
            stats.log,
            LogTally {
                syncs: 2,
                records: 3,
                bytes: 12_288,
                ..LogTally::default()
            },
            "records count once each, from the durable LSN before the sync"
        );
        let stage = stats
            .stages
            .log_sync_ns
            .as_ref()
            .expect("a shard with a log has the log-sync stage");
        assert_eq!(stage.len(), 2);
        assert!(stage.equivalent(stage.min(), 300_000));
        assert!(stage.equivalent(stage.max(), 5_000_000));
    }

    #[test]
    fn memory_mode_records_no_log_sync() {
        let (mut core, conn, _) = shard_0_with_a_hunt(1, Durability::Memory);
        assert_eq!(seqs(&written(&mut core, conn)), [1]);
        let stats = core.stats();
        assert_eq!(stats.log, LogTally::default());
        assert!(
            stats.stages.log_sync_ns.is_none(),
            "no log, no log-sync histogram"
        );
    }

    #[test]
    fn a_refusal_does_not_overtake_a_reply_waiting_for_its_sync() {
        let (mut core, conn, hunt) = shard_0_with_a_hunt(1, Durability::Sync);
        core.handle_stop(0);
        // Refused at once (the shard stops), but answered only after event 1.
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        assert!(written(&mut core, conn).is_empty());
        core.handle_durable(0, 1);
        let replies = written(&mut core, conn);
        assert_eq!(seqs(&replies), [1, 2]);
        assert!(matches!(replies[1].outcome, Outcome::Error { .. }));
        core.check_credit().unwrap();
    }

    #[test]
    fn a_sync_that_drains_a_stopping_shard_has_its_flushers_say_no_more_events() {
        // Async mode: the reply leaves before its record is durable, so the connection can be
        // gone before the last sync. A flusher looks only when listed: unlisted, the peer never
        // hears "no more events" and the node never stops.
        let (mut core, conn, _) = shard_0_with_a_hunt(2, Durability::Async);
        assert_eq!(seqs(&written(&mut core, conn)), [1]);
        assert_eq!(logged(&mut core).len(), 1);
        core.handle_stop(0);
        core.handle_read_closed(0, conn, Ok(()));
        core.handle_closed(0, conn, crate::core::shard::CloseReason::Finished);
        while core.poll_mesh_ready().is_some() {}
        assert!(!core.connections_drained(), "record 1 is not durable yet");
        let sync = LogSync {
            lsn: 1,
            write_to_sync_ns: 1,
            bytes_written: 4096,
        };
        core.handle_log_synced(0, sync);
        assert!(core.connections_drained());
        assert_eq!(
            core.poll_mesh_ready(),
            Some(ShardId(1)),
            "the flusher looks"
        );
        assert!(matches!(
            core.poll_mesh(ShardId(1)),
            Some(MeshOutput::Batch(batch)) if batch.no_more_events()
        ));
    }

    #[test]
    fn a_connection_closed_with_replies_waiting_gives_their_credit_back_once_durable() {
        let (mut core, conn, _) = shard_0_with_a_hunt(1, Durability::Sync);
        core.handle_read_closed(0, conn, Ok(()));
        core.handle_closed(0, conn, crate::core::shard::CloseReason::Broken);
        assert_eq!(
            core.credit_held().events,
            1,
            "the record is not durable yet"
        );
        core.check_credit().unwrap();
        core.handle_durable(0, 1);
        assert_eq!(core.credit_held(), Credit::ZERO);
        core.check_credit().unwrap();
        assert_eq!(core.connections_open(), 0);
    }

    #[test]
    fn refusals_held_behind_a_sync_are_bounded_by_stopping_reads() {
        let config = ShardConfig {
            durability: Durability::Sync,
            fail_fast: true,
            shard_budget: Credit::new(1, 1 << 20),
            ..ShardConfig::defaults(1)
        };
        let mut core = ShardCore::with_config(ShardId(0), placement(1), config);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        // The first event takes the only credit and waits for its sync; the rest are Busy,
        // held behind it.
        let mut seq = 0;
        while !core.durability_backlog_full() {
            assert_eq!(core.readable(conn), crate::core::shard::Readable::Yes);
            let events: Vec<Event> = (seq..seq + 1000)
                .map(|seq| event(seq, hunt, EventKind::Join))
                .collect();
            offer(&mut core, conn, &events);
            seq += 1000;
        }
        assert_eq!(core.readable(conn), crate::core::shard::Readable::NotYet);
        assert!(written(&mut core, conn).is_empty());
        core.handle_durable(0, 1);
        let replies = written(&mut core, conn);
        assert_eq!(
            replies.len() as u64,
            seq,
            "every reply, in order, once durable"
        );
        assert!(
            replies
                .windows(2)
                .all(|pair| pair[0].client_seq < pair[1].client_seq)
        );
        assert!(
            replies[1..]
                .iter()
                .all(|reply| reply.outcome == Outcome::Busy)
        );
        assert_eq!(core.readable(conn), crate::core::shard::Readable::Yes);
    }

    #[test]
    fn async_mode_logs_every_applied_event_and_answers_at_once() {
        let mut core = cores(1, Durability::Async).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        offer(
            &mut core,
            conn,
            &[
                event(1, hunt, EventKind::CreateHunt(HuntSpec::default())),
                event(2, hunt, EventKind::Join),
            ],
        );
        assert_eq!(seqs(&written(&mut core, conn)), [1, 2]);
        assert_eq!(logged(&mut core).len(), 2);
        assert!(!core.take_log(|_, _, _| ()), "taken once");
    }

    #[test]
    fn async_mode_holds_replies_once_too_many_events_are_unsynced() {
        let mut core = cores(1, Durability::Async).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        let limit = DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX;
        let mut answered = 0;
        let mut seq = 0;
        // Frames of 100 events, written as they come, never synced.
        while seq < limit + 300 {
            let events: Vec<Event> = (seq..seq + 100)
                .map(|seq| event(seq, hunt, EventKind::Join))
                .collect();
            offer(&mut core, conn, &events);
            answered += written(&mut core, conn).len() as u64;
            seq += 100;
        }
        assert_eq!(answered, limit, "answers stop at the unsynced limit");
        core.check_credit().unwrap();
        core.handle_durable(0, seq);
        assert_eq!(written(&mut core, conn).len() as u64, seq - limit);
    }

    #[test]
    fn memory_mode_logs_nothing() {
        let (mut core, conn, _) = shard_0_with_a_hunt(1, Durability::Memory);
        assert_eq!(seqs(&written(&mut core, conn)), [1]);
        assert!(!core.log_queued());
    }

    #[test]
    fn a_forwarded_event_is_logged_by_the_shard_that_applies_it_and_answered_once_durable() {
        let mut cores = cores(2, Durability::Sync);
        let conn = cores[0].handle_connect(0).unwrap();
        let hunt = hunt_owned_by(2, 1, 0);
        offer(
            &mut cores[0],
            conn,
            &[event(1, hunt, EventKind::CreateHunt(HuntSpec::default()))],
        );
        let Some(MeshOutput::Batch(batch)) = cores[0].poll_mesh(ShardId(1)) else {
            panic!("the event is forwarded")
        };
        cores[1].handle_mesh(0, ShardId(0), batch);
        assert!(
            logged(&mut cores[0]).is_empty(),
            "the forwarding shard logs nothing"
        );
        assert_eq!(logged(&mut cores[1]).len(), 1);
        assert!(
            cores[1].poll_mesh(ShardId(0)).is_none(),
            "the reply waits for the sync"
        );
        assert_eq!(cores[0].mesh_credit_held(ShardId(1)).events, 1);
        cores[1].handle_durable(0, 1);
        let Some(MeshOutput::Batch(batch)) = cores[1].poll_mesh(ShardId(0)) else {
            panic!("the reply goes back once durable")
        };
        cores[0].handle_mesh(0, ShardId(1), batch);
        assert_eq!(seqs(&written(&mut cores[0], conn)), [1]);
        assert_eq!(cores[0].mesh_credit_held(ShardId(1)), Credit::ZERO);
        cores[0].check_credit().unwrap();
    }

    #[test]
    fn replaying_the_log_rebuilds_the_same_partition_state() {
        let mut live = cores(1, Durability::Sync).remove(0);
        let conn = live.handle_connect(0).unwrap();
        let mut events = Vec::new();
        for n in 0..4 {
            let hunt = hunt_owned_by(1, 0, n);
            events.push(event(
                10 * n as u64,
                hunt,
                EventKind::CreateHunt(HuntSpec::default()),
            ));
            for seq in 1..6 {
                events.push(event(10 * n as u64 + seq, hunt, EventKind::Join));
            }
        }
        offer(&mut live, conn, &events);
        let records = logged(&mut live);
        let mut fresh = cores(1, Durability::Sync).remove(0);
        for (_, partition, payload) in &records {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(payload);
            fresh.replay(*partition, &aligned).unwrap();
        }
        for (_, partition, _) in &records {
            assert_eq!(
                format!("{:?}", live.partition(*partition)),
                format!("{:?}", fresh.partition(*partition))
            );
        }
        let (_, partition, payload) = &records[0];
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(payload);
        let wrong = PartitionId((partition.0 + 1) % 64);
        assert!(matches!(
            fresh.replay(wrong, &aligned),
            Err(ReplayError::Partition { .. })
        ));
        assert!(matches!(
            fresh.replay(*partition, &aligned[..aligned.len() - 3]),
            Err(ReplayError::Invalid(_))
        ));
    }

    #[test]
    fn a_partition_exported_with_its_lsn_and_restored_then_replayed_matches_the_live_one() {
        let mut live = cores(1, Durability::Sync).remove(0);
        let conn = live.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        let mut events = vec![event(1, hunt, EventKind::CreateHunt(HuntSpec::default()))];
        events.extend((2..8).map(|seq| event(seq, hunt, EventKind::Join)));
        offer(&mut live, conn, &events[..4]);
        let partition = logged(&mut live)[0].1;
        let (lsn, snapshot) = live.export_partition(partition).unwrap();
        assert_eq!(lsn, 4, "the snapshot covers every record given out");
        offer(&mut live, conn, &events[4..]);
        let after = logged(&mut live);
        assert_eq!(after.first().map(|r| r.0), Some(5));

        let mut restored = cores(1, Durability::Sync).remove(0);
        restored.restore_partition(&snapshot).unwrap();
        for (_, partition, payload) in &after {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(payload);
            restored.replay(*partition, &aligned).unwrap();
        }
        assert_eq!(
            format!("{:?}", restored.partition(partition)),
            format!("{:?}", live.partition(partition))
        );
        let foreign = PartitionSnapshot {
            partition: 64,
            ..snapshot
        };
        assert!(restored.restore_partition(&foreign).is_err());
    }

    #[test]
    fn a_full_log_refuses_new_events_unlogged_but_releases_what_waits_for_its_sync() {
        let (mut core, conn, hunt) = shard_0_with_a_hunt(1, Durability::Sync);
        core.set_log_full(true);
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        assert_eq!(
            logged(&mut core).len(),
            1,
            "the refused event is not logged"
        );
        assert!(written(&mut core, conn).is_empty(), "held behind record 1");
        core.handle_durable(0, 1);
        let replies = written(&mut core, conn);
        assert_eq!(seqs(&replies), [1, 2]);
        assert_eq!(
            replies[1].outcome,
            Outcome::Error {
                error: EventError::LogFull
            }
        );
        counted_once_as(&core, OutcomeIndex::LogFull);
        core.set_log_full(false);
        offer(&mut core, conn, &[event(3, hunt, EventKind::Join)]);
        assert_eq!(logged(&mut core).len(), 1, "room again: applied and logged");
        core.check_credit().unwrap();
    }

    /// The core counted one refusal under `outcome`, and none as unavailable: operators tell a
    /// full or failed disk from a partition not served here.
    fn counted_once_as(core: &ShardCore, outcome: OutcomeIndex) {
        let tally = core.stats().events;
        assert_eq!(tally.outcome_total(outcome), 1, "{}", outcome.label());
        assert_eq!(tally.outcome_total(OutcomeIndex::Unavailable), 0);
    }

    fn disk_error(error: EventError) -> Outcome {
        Outcome::Error { error }
    }

    #[test]
    fn a_failed_write_refuses_new_events_with_its_reason_and_releases_held_replies_once_retried() {
        let (mut core, conn, hunt) = shard_0_with_a_hunt(1, Durability::Sync);
        assert_eq!(logged(&mut core).len(), 1);
        let first = core.handle_log_fault(0, LogOp::Write, LogFaultKind::NoSpace);
        assert!(first.announce, "the first failure starts the refusal");
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        assert!(
            logged(&mut core).is_empty(),
            "a refused event is not logged"
        );
        let again = core.handle_log_fault(0, LogOp::Write, LogFaultKind::NoSpace);
        assert!(!again.announce, "one line per refusal, not per retry");
        assert!(again.retry_after_ms > first.retry_after_ms);
        assert!(
            written(&mut core, conn).is_empty(),
            "event 1 is not durable, so neither reply leaves"
        );
        assert!(core.handle_log_recovered(LogOp::Write), "the refusal ends");
        assert_eq!(core.log_fault(), None);
        core.handle_durable(0, 1);
        let replies = written(&mut core, conn);
        assert_eq!(seqs(&replies), [1, 2]);
        assert!(matches!(replies[0].outcome, Outcome::Accepted { .. }));
        assert_eq!(replies[1].outcome, disk_error(EventError::DiskFull));
        offer(&mut core, conn, &[event(3, hunt, EventKind::Join)]);
        assert_eq!(logged(&mut core).len(), 1, "applied and logged again");
        core.handle_durable(0, 2);
        assert_eq!(seqs(&written(&mut core, conn)), [3]);
        counted_once_as(&core, OutcomeIndex::DiskFull);
        core.check_credit().unwrap();
    }

    #[test]
    fn the_refusal_lasts_until_every_failed_operation_succeeds_and_names_no_space_first() {
        let mut core = cores(1, Durability::Sync).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        assert!(
            core.handle_log_fault(0, LogOp::Sync, LogFaultKind::Io)
                .announce
        );
        offer(
            &mut core,
            conn,
            &[event(1, hunt, EventKind::CreateHunt(HuntSpec::default()))],
        );
        assert_eq!(
            written(&mut core, conn)[0].outcome,
            disk_error(EventError::DiskFailed)
        );
        assert!(
            !core
                .handle_log_fault(0, LogOp::Snapshot, LogFaultKind::NoSpace)
                .announce,
            "already refusing"
        );
        assert_eq!(core.log_fault(), Some(LogFaultKind::NoSpace));
        assert!(
            !core.handle_log_recovered(LogOp::Write),
            "an operation that never failed changes nothing"
        );
        assert!(
            !core.handle_log_recovered(LogOp::Sync),
            "the snapshot still fails"
        );
        assert_eq!(
            core.log_ops_failing().collect::<Vec<_>>(),
            [LogOp::Snapshot]
        );
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        assert_eq!(
            written(&mut core, conn)[0].outcome,
            disk_error(EventError::DiskFull)
        );
        assert!(core.handle_log_recovered(LogOp::Snapshot));
        offer(&mut core, conn, &[event(3, hunt, EventKind::Join)]);
        assert_eq!(logged(&mut core).len(), 1);
    }

    #[test]
    fn a_disk_fault_outranks_the_disk_bound_and_the_bound_holds_after_it() {
        let mut core = cores(1, Durability::Async).remove(0);
        let conn = core.handle_connect(0).unwrap();
        let hunt = hunt_owned_by(1, 0, 0);
        core.set_log_full(true);
        core.handle_log_fault(0, LogOp::Open, LogFaultKind::NoSpace);
        offer(
            &mut core,
            conn,
            &[event(1, hunt, EventKind::CreateHunt(HuntSpec::default()))],
        );
        assert!(core.handle_log_recovered(LogOp::Open));
        offer(
            &mut core,
            conn,
            &[event(2, hunt, EventKind::CreateHunt(HuntSpec::default()))],
        );
        let outcomes: Vec<Outcome> = written(&mut core, conn)
            .into_iter()
            .map(|reply| reply.outcome)
            .collect();
        assert_eq!(
            outcomes,
            [
                disk_error(EventError::DiskFull),
                disk_error(EventError::LogFull)
            ]
        );
    }

    const MS: u64 = 1_000_000;

    fn outcomes(replies: &[Reply]) -> Vec<Outcome> {
        replies.iter().map(|reply| reply.outcome.clone()).collect()
    }

    #[test]
    fn an_io_error_that_lasts_answers_held_replies_unknown_so_the_refusals_behind_them_leave() {
        let (mut core, conn, hunt) = shard_0_with_a_hunt(1, Durability::Sync);
        assert_eq!(logged(&mut core).len(), 1);
        let first = core.handle_log_fault(0, LogOp::Write, LogFaultKind::Io);
        assert_eq!(first.replies_given_up, 0);
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        let early = core.handle_log_fault(
            LOG_FAULT_HOLD_MS_MAX * MS - 1,
            LogOp::Write,
            LogFaultKind::Io,
        );
        assert_eq!(early.replies_given_up, 0, "held until the bound");
        assert!(
            written(&mut core, conn).is_empty(),
            "the refusal waits behind event 1"
        );
        let late =
            core.handle_log_fault(LOG_FAULT_HOLD_MS_MAX * MS, LogOp::Write, LogFaultKind::Io);
        assert_eq!(late.replies_given_up, 1);
        assert!(!late.announce, "still one line for the whole refusal");
        let replies = written(&mut core, conn);
        assert_eq!(seqs(&replies), [1, 2]);
        assert_eq!(
            outcomes(&replies),
            [
                disk_error(EventError::OutcomeUnknown),
                disk_error(EventError::DiskFailed)
            ]
        );
        offer(&mut core, conn, &[event(3, hunt, EventKind::Join)]);
        assert_eq!(
            outcomes(&written(&mut core, conn)),
            [disk_error(EventError::DiskFailed)],
            "nothing held any more: refused at once"
        );
        assert_eq!(core.stats().log.replies_unknown, 1);
        core.check_credit().unwrap();
        // The retried write succeeds after all: the record is on disk, nobody waits for it.
        assert!(core.handle_log_recovered(LogOp::Write));
        core.handle_durable(0, 1);
        assert!(written(&mut core, conn).is_empty());
        offer(&mut core, conn, &[event(4, hunt, EventKind::Join)]);
        assert_eq!(logged(&mut core).len(), 1, "taking events again");
        core.handle_durable(0, 2);
        assert!(matches!(
            written(&mut core, conn)[0].outcome,
            Outcome::Accepted { .. }
        ));
        core.check_credit().unwrap();
    }

    #[test]
    fn a_full_disk_holds_its_replies_however_long_it_lasts() {
        let (mut core, conn, _) = shard_0_with_a_hunt(1, Durability::Sync);
        core.handle_log_fault(0, LogOp::Write, LogFaultKind::NoSpace);
        let step = core.handle_log_fault(60_000 * MS, LogOp::Write, LogFaultKind::NoSpace);
        assert_eq!(step.replies_given_up, 0);
        assert!(
            written(&mut core, conn).is_empty(),
            "answered once space returns"
        );
        // A new episode starts its own clock.
        core.handle_log_recovered(LogOp::Write);
        core.handle_log_fault(100_000 * MS, LogOp::Sync, LogFaultKind::Io);
        let step = core.handle_log_fault(101_000 * MS, LogOp::Sync, LogFaultKind::Io);
        assert_eq!(step.replies_given_up, 0);
    }

    #[test]
    fn a_stop_whose_sync_never_completes_answers_every_held_reply_once_the_shell_gives_up() {
        let (mut core, conn, hunt) = shard_0_with_a_hunt(1, Durability::Sync);
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        assert_eq!(
            logged(&mut core).len(),
            2,
            "both records go to a sync that never ends"
        );
        core.handle_log_fault(0, LogOp::Sync, LogFaultKind::Io);
        offer(&mut core, conn, &[event(3, hunt, EventKind::Join)]);
        assert_eq!(
            core.handle_log_abandoned(1),
            None,
            "only a stopping shard gives up on its log"
        );
        core.handle_stop(1);
        assert!(!core.connections_drained(), "the stop waits for the log");
        assert!(written(&mut core, conn).is_empty());
        let abandoned = core
            .handle_log_abandoned(2)
            .expect("the log is not durable");
        assert_eq!(
            abandoned,
            LogAbandoned {
                records: 2,
                replies_unknown: 2
            }
        );
        let replies = written(&mut core, conn);
        assert_eq!(seqs(&replies), [1, 2, 3], "every held reply, in order");
        assert_eq!(
            outcomes(&replies),
            [
                disk_error(EventError::OutcomeUnknown),
                disk_error(EventError::OutcomeUnknown),
                disk_error(EventError::DiskFailed)
            ]
        );
        assert!(core.log_durable(), "the log counts as closed");
        assert_eq!(core.credit_held(), Credit::ZERO);
        core.check_credit().unwrap();
        core.handle_read_closed(3, conn, Ok(()));
        assert!(core.write_finished(conn));
        assert_eq!(core.stats().log.records_abandoned, 2);
        assert_eq!(core.stats().log.replies_unknown, 2);
        assert_eq!(core.handle_log_abandoned(4), None, "given up once");
        // An event a peer forwards now is refused, not logged for a log nobody syncs.
        assert_eq!(
            core.log_refusal(),
            Some(disk_error(EventError::ShuttingDown))
        );
    }

    #[test]
    fn a_stop_with_a_durable_log_gives_up_nothing() {
        let (mut core, conn, _) = shard_0_with_a_hunt(1, Durability::Sync);
        core.handle_durable(1, 1);
        assert_eq!(seqs(&written(&mut core, conn)), [1]);
        core.handle_stop(2);
        assert_eq!(core.handle_log_abandoned(3), None);
        assert_eq!(core.stats().log.records_abandoned, 0);
    }

    #[test]
    fn an_async_stop_that_gives_up_counts_the_answered_records_not_on_disk() {
        let (mut core, conn, hunt) = shard_0_with_a_hunt(1, Durability::Async);
        offer(&mut core, conn, &[event(2, hunt, EventKind::Join)]);
        assert_eq!(
            seqs(&written(&mut core, conn)),
            [1, 2],
            "answered before the sync"
        );
        core.handle_durable(0, 1);
        core.handle_stop(1);
        assert!(
            !core.connections_drained(),
            "a clean stop syncs record 2 first"
        );
        let abandoned = core
            .handle_log_abandoned(2)
            .expect("record 2 is not durable");
        assert_eq!(
            abandoned,
            LogAbandoned {
                records: 1,
                replies_unknown: 0
            }
        );
        assert!(core.log_durable());
    }

    #[test]
    fn retries_back_off_by_doubling_up_to_the_limit_and_start_over_after_a_success() {
        let mut core = cores(1, Durability::Sync).remove(0);
        let waits: Vec<u64> = (0..16)
            .map(|_| {
                core.handle_log_fault(0, LogOp::Write, LogFaultKind::Io)
                    .retry_after_ms
            })
            .collect();
        assert_eq!(waits[0], LOG_FAULT_RETRY_MS_MIN);
        assert_eq!(waits[1], 2 * LOG_FAULT_RETRY_MS_MIN);
        assert!(waits.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(*waits.last().unwrap(), LOG_FAULT_RETRY_MS_MAX);
        assert_eq!(retry_after_ms(u32::MAX), LOG_FAULT_RETRY_MS_MAX);
        core.handle_log_recovered(LogOp::Write);
        let step = core.handle_log_fault(0, LogOp::Write, LogFaultKind::Io);
        assert_eq!(step.retry_after_ms, LOG_FAULT_RETRY_MS_MIN);
        assert!(step.announce, "a new refusal is announced again");
    }
}
