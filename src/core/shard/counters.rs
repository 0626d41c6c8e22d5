//! What a shard counts: events by fate, connections, frames, credit waits, and the latency of
//! its stages as HdrHistograms. Plain values on the shard's core; a copy is handed out when
//! asked ([`ShardCore::stats`](crate::core::shard::ShardCore::stats)).

use hdrhistogram::Histogram;

use crate::constants::STAGE_LATENCY_NS_MAX;
use crate::core::credit::Credit;
use crate::core::message::{ArchivedEventKind, EventError, Outcome};

/// How long the stages of a shard's data path took, as HdrHistograms of nanoseconds.
#[derive(Clone, Debug)]
pub struct StageLatencies {
    /// From a frame's arrival to the dispatch of its last event: credit waits included.
    pub frame_dispatch_ns: Histogram<u64>,
    /// From forwarding an event to another shard to its reply arriving back: the cross-core hop.
    pub mesh_round_trip_ns: Histogram<u64>,
    /// From the first write a log sync covers being issued to the `fdatasync` completing: what
    /// the oldest record of a group-commit batch waited for the disk. `None` for a shard with
    /// no log (no data dir): a histogram's counters are about 220 KiB
    /// (`STAGE_HISTOGRAM_BYTES_MAX`), counted in the memory sum only with the log's buffers.
    pub log_sync_ns: Option<Histogram<u64>>,
    /// How long the shard stopped to take one partition's snapshot (copy its state and
    /// serialize it); the writing happens after, without stopping it. `None` without a log,
    /// like `log_sync_ns`.
    pub snapshot_pause_ns: Option<Histogram<u64>>,
    /// From forwarding an event to a shard of another node to its reply arriving back over
    /// the link: the inter-node hop.
    pub link_round_trip_ns: Histogram<u64>,
    /// How long a moving partition's events were held at its source, from the hold's start
    /// to the flip (or the abandon) that let them go: the pause its clients saw. `None` until
    /// the shard ends its first move that held (a histogram is about 220 KiB; most shards
    /// never move a partition).
    pub move_pause_ns: Option<Histogram<u64>>,
}

impl StageLatencies {
    /// The stages of a shard, with the log-sync stage if it has a log.
    pub fn new(logged: bool) -> StageLatencies {
        StageLatencies {
            frame_dispatch_ns: stage_histogram(),
            mesh_round_trip_ns: stage_histogram(),
            log_sync_ns: logged.then(stage_histogram),
            snapshot_pause_ns: logged.then(stage_histogram),
            link_round_trip_ns: stage_histogram(),
            move_pause_ns: None,
        }
    }
}

/// A shard without a log: no log-sync stage.
impl Default for StageLatencies {
    fn default() -> StageLatencies {
        StageLatencies::new(false)
    }
}

/// One stage's histogram: 1 ns to `STAGE_LATENCY_NS_MAX`, three significant digits.
pub(super) fn stage_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, STAGE_LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// Counters of one shard. Shard-local; reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: u16,
    /// The CPU the shard ran on (filled in by the shell; the core does not know it).
    pub cpu: usize,
    pub events_applied: u64,
    pub events_forwarded: u64,
    pub events_applied_for_peers: u64,
    /// Events answered `Moved`: their partition is owned elsewhere.
    pub events_moved: u64,
    /// Events received after the shard started stopping, answered `ShuttingDown`.
    pub shutting_down_replies: u64,
    pub mesh_batches_sent: u64,
    pub mesh_batches_received: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Connections cut at shutdown because their replies could not be written in time.
    pub connections_force_closed: u64,
    /// Connections closed because they failed or did not finish the authentication handshake.
    pub connections_unauthenticated: u64,
    /// Connections closed because they failed or did not finish the TLS handshake.
    pub connections_tls_failed: u64,
    /// Connections closed for staying idle past the idle timeout.
    pub connections_idle_closed: u64,
    /// Connections closed because their socket took no replies for the write-stall timeout.
    pub connections_write_stalled: u64,
    /// Idle connections closed to make room for a new one when the shard was full.
    pub connections_evicted: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub busy_replies: u64,
    /// Of `busy_replies`, events answered `Busy` because they waited past the shedding
    /// target under a standing queue (fail-fast mode), not for want of credit.
    pub events_shed: u64,
    /// Connections closed because a frame they had started did not arrive whole in time.
    pub connections_frame_too_slow: u64,
    /// Connections refused because their source address already held its share of slots.
    pub connections_refused_per_source: u64,
    /// Times an event found no socket credit and waited (or was answered `Busy`).
    pub socket_credit_waits: u64,
    /// Times a forward found no mesh credit at its owner and waited (or was answered `Busy`).
    pub mesh_credit_waits: u64,
    /// The most socket credit ever held at once.
    pub socket_inflight_peak: Credit,
    /// The most mesh credit ever held at once at any one peer.
    pub mesh_inflight_peak: Credit,
    pub stages: StageLatencies,
    /// What the executor's stall detector saw (filled in by the shell, like `cpu`).
    pub stalls: Stalls,
    /// Every event this shard answered, by kind and outcome.
    pub events: EventTally,
    /// Frames and bytes through the shard's client sockets.
    pub traffic: Traffic,
    /// Nanoseconds frames spent stopped for credit before they went on, summed over the
    /// connections (two waiting at once count twice).
    pub credit_wait_ns: u64,
    /// What the shard's write-ahead log wrote and synced (zero without a data dir).
    pub log: LogTally,
    /// Events, bytes and batches over links to and from other nodes.
    pub links: LinkTally,
    /// Times a forward to another node found no link credit and waited (or was answered `Busy`).
    pub link_credit_waits: u64,
    /// The most link credit ever held at once at any one shard of another node.
    pub link_inflight_peak: Credit,
    /// Live partition moves, out of this shard and into it.
    pub moves: MoveTally,
}

/// What a shard's live partition moves did (`core::shard::moves`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveTally {
    /// Moves this shard started streaming as their source.
    pub out_started: u64,
    /// Of those, moves whose partition flipped to the target.
    pub out_flipped: u64,
    /// Moves the placement ended without flipping to the target (the source stays owner).
    pub out_abandoned: u64,
    /// Moves that could not start or go on (the target refused, the link failed).
    pub out_refused: u64,
    /// Partitions whose snapshot this shard received whole and staged, as a target.
    pub in_staged: u64,
    /// Staged partitions this shard then served, from the staged state, at their flip.
    pub in_installed: u64,
    /// Of the staged partitions, those written to this shard's store before their hand-off
    /// was acknowledged (a target with a data dir).
    pub in_durable: u64,
    /// Staged (or half-received) partitions dropped: the move was abandoned, or its link
    /// closed before the hand-off.
    pub in_dropped: u64,
    /// Moves this shard refused as a target (its limits, its durability).
    pub in_refused: u64,
    /// Events held at this shard during hand-offs (each counted once, when held): at a
    /// target, those that came before its move's seal; at a source, those past the tail's
    /// bound, or after a refused hand-off.
    pub events_held: u64,
    /// Replies a source kept back after its hand-off until the target acknowledged their
    /// events.
    pub replies_kept_back: u64,
    /// The most events held at once.
    pub held_peak: u64,
    /// Replies a source kept back for its target's acknowledgement and answered
    /// `OutcomeUnknown` instead, because the target could not confirm their events after the
    /// flip (the link failed, or the target served without them when its source went away).
    pub replies_unknown: u64,
}

/// What went over a shard's links to other nodes, each way: events forwarded (sent: handed to
/// the link's socket, so not those answered before their link was up) or received to apply,
/// their archived bytes, and the link frames that carried them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkTally {
    pub events_sent: u64,
    pub events_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub batches_sent: u64,
    pub batches_received: u64,
    /// Links that failed with events of this shard in flight on them.
    pub links_failed: u64,
    /// Links refused at the handshake (another cluster, an unknown node, a single node).
    pub links_refused: u64,
    /// Links closed for a protocol error of the peer (an unknown token, a sender over its share).
    pub protocol_errors: u64,
}

/// What a shard's write-ahead log did: its syncs, the records they made durable and the bytes
/// written for them. Records per sync is the group-commit batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTally {
    /// `fdatasync` rounds completed (one round may sync two segments when a batch crossed one).
    pub syncs: u64,
    /// Records made durable by those syncs.
    pub records: u64,
    /// Bytes written to the log's segments, whole blocks: a partial last block is written again
    /// by the next write, so this is at least the records' size.
    pub bytes: u64,
    /// Partition snapshots written, and log segments deleted because no snapshot needed them.
    pub snapshots: u64,
    pub segments_deleted: u64,
    /// Replies answered `OutcomeUnknown` because their record could not be made durable (an
    /// I/O error that lasted `LOG_FAULT_HOLD_MS_MAX`, or a stop that gave up on the log).
    pub replies_unknown: u64,
    /// Records a stopping shard gave up on, never reported durable (`LOG_STOP_WAIT_MS_MAX`):
    /// non-zero means the log could not be closed cleanly, and the node exits non-zero.
    pub records_abandoned: u64,
}

/// What the stall detector saw on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stalls {
    /// Polls of the shard's tasks that ran longer than the stall threshold without yielding.
    pub count: u64,
    /// The largest overage past the threshold, in nanoseconds.
    pub worst_overage_ns: u64,
}

/// Credit held and capacity of a shard's pools, and its open connections, at one instant.
/// Plain numbers taken on the shard's core, so they may leave it (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    pub connections_open: u64,
    /// The shard's budget for events read from its sockets.
    pub socket_held: Credit,
    pub socket_capacity: Credit,
    /// This shard's shares of its peers' mesh budgets, summed over the peers (events, bytes).
    pub mesh_held: (u64, u64),
    pub mesh_capacity: (u64, u64),
    /// Batches waiting for the mesh channels to the peers, summed over the peers.
    pub mesh_batches_queued: u64,
    /// Reply bytes queued or being written to client sockets, summed over the connections.
    pub reply_bytes_queued: u64,
    /// Connections with replies queued or being written.
    pub connections_writing: u64,
    /// This shard's shares of other nodes' shards' link budgets, summed over its outgoing
    /// links (events, bytes).
    pub link_held: (u64, u64),
    pub link_capacity: (u64, u64),
    /// Links open now: outgoing ones up, and incoming ones.
    pub links_open: u64,
    /// One connection's share of the socket budget (the same for every connection).
    pub connection_share: Credit,
    /// The most credit any one open connection holds, in each dimension (the most events
    /// and the most bytes may be two connections'). Over all connections together they hold
    /// `socket_held`.
    pub connection_held_max: Credit,
    /// Open connections whose share cannot take their next event now: each is read again
    /// only once its own replies are written. A client that never reads its replies stays
    /// here; the shard's other connections go on.
    pub connections_at_share: u64,
}

/// An event's kind, as the index of its counters and the value of the `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindIndex {
    CreateHunt,
    Join,
    CheckIn,
    Claim,
    Leaderboard,
    EndHunt,
}

impl KindIndex {
    pub const ALL: [KindIndex; 6] = [
        KindIndex::CreateHunt,
        KindIndex::Join,
        KindIndex::CheckIn,
        KindIndex::Claim,
        KindIndex::Leaderboard,
        KindIndex::EndHunt,
    ];

    pub fn of(kind: &ArchivedEventKind) -> KindIndex {
        match kind {
            ArchivedEventKind::CreateHunt(_) => KindIndex::CreateHunt,
            ArchivedEventKind::Join => KindIndex::Join,
            ArchivedEventKind::CheckIn { .. } => KindIndex::CheckIn,
            ArchivedEventKind::Claim { .. } => KindIndex::Claim,
            ArchivedEventKind::Leaderboard { .. } => KindIndex::Leaderboard,
            ArchivedEventKind::EndHunt => KindIndex::EndHunt,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            KindIndex::CreateHunt => "create_hunt",
            KindIndex::Join => "join",
            KindIndex::CheckIn => "check_in",
            KindIndex::Claim => "claim",
            KindIndex::Leaderboard => "leaderboard",
            KindIndex::EndHunt => "end_hunt",
        }
    }
}

/// What became of an event, as the index of its counters and the value of the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeIndex {
    /// Applied, with any answer but a rejection (`Accepted`, `Claimed`, `AlreadyClaimed`, a
    /// leaderboard).
    Accepted,
    /// Applied and refused (the reason is counted apart).
    Rejected,
    /// Not applied: out of credit in fail-fast mode.
    Busy,
    /// Not applied: nobody serves its partition here now (`Unavailable { partition }`).
    Unavailable,
    /// Not applied: the owner's log reached its disk bound (`Error { LogFull }`).
    LogFull,
    /// Not applied: the disk of the owner's log is full (`Error { DiskFull }`).
    DiskFull,
    /// Not applied: the disk of the owner's log failed (`Error { DiskFailed }`).
    DiskFailed,
    /// Not applied: its partition is owned elsewhere.
    Moved,
    /// Not applied: the shard was stopping.
    ShuttingDown,
    /// Forwarded to another node whose link failed before the reply came back: applied or
    /// not, nobody here knows (`OutcomeUnknown`).
    OutcomeUnknown,
    /// Not applied again: a retry of an event its partition applied before (`Duplicate`,
    /// `DuplicateUnknown`).
    Duplicate,
}

impl OutcomeIndex {
    pub const ALL: [OutcomeIndex; 11] = [
        OutcomeIndex::Accepted,
        OutcomeIndex::Rejected,
        OutcomeIndex::Busy,
        OutcomeIndex::Unavailable,
        OutcomeIndex::LogFull,
        OutcomeIndex::DiskFull,
        OutcomeIndex::DiskFailed,
        OutcomeIndex::Moved,
        OutcomeIndex::ShuttingDown,
        OutcomeIndex::OutcomeUnknown,
        OutcomeIndex::Duplicate,
    ];

    pub fn of(outcome: &Outcome) -> OutcomeIndex {
        match outcome {
            Outcome::Accepted { .. }
            | Outcome::Claimed { .. }
            | Outcome::AlreadyClaimed { .. }
            | Outcome::Leaderboard { .. } => OutcomeIndex::Accepted,
            Outcome::Rejected { .. } => OutcomeIndex::Rejected,
            Outcome::Busy => OutcomeIndex::Busy,
            Outcome::Unavailable { .. } => OutcomeIndex::Unavailable,
            Outcome::Error {
                error: EventError::LogFull,
            } => OutcomeIndex::LogFull,
            Outcome::Error {
                error: EventError::DiskFull,
            } => OutcomeIndex::DiskFull,
            Outcome::Error {
                error: EventError::DiskFailed,
            } => OutcomeIndex::DiskFailed,
            Outcome::Error {
                error: EventError::ShuttingDown,
            } => OutcomeIndex::ShuttingDown,
            Outcome::Error {
                error: EventError::OutcomeUnknown,
            } => OutcomeIndex::OutcomeUnknown,
            Outcome::Moved { .. } => OutcomeIndex::Moved,
            Outcome::Duplicate { .. } | Outcome::DuplicateUnknown => OutcomeIndex::Duplicate,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            OutcomeIndex::Accepted => "accepted",
            OutcomeIndex::Rejected => "rejected",
            OutcomeIndex::Busy => "busy",
            OutcomeIndex::Unavailable => "unavailable",
            OutcomeIndex::LogFull => "log_full",
            OutcomeIndex::DiskFull => "disk_full",
            OutcomeIndex::DiskFailed => "disk_failed",
            OutcomeIndex::Moved => "moved",
            OutcomeIndex::ShuttingDown => "shutting_down",
            OutcomeIndex::OutcomeUnknown => "outcome_unknown",
            OutcomeIndex::Duplicate => "duplicate",
        }
    }
}

/// Reject reasons, as counted: `RejectReason as u8 - 1` indexes them.
pub const REJECT_REASONS: usize = 16;

/// The value of the `reason` label of a reject reason.
pub fn reject_reason_label(index: usize) -> &'static str {
    const LABELS: [&str; REJECT_REASONS] = [
        "unknown_hunt",
        "hunt_exists",
        "unknown_player",
        "already_joined",
        "unknown_treasure",
        "wrong_code",
        "outside_radius",
        "already_checked_in",
        "hunt_table_full",
        "player_table_full",
        "invalid_hunt_spec",
        "code_too_long",
        "invalid_top_k",
        "invalid_position",
        "too_many_attempts",
        "not_organiser",
    ];
    LABELS.get(index).copied().unwrap_or("unknown")
}

/// Every event a shard answered, by kind and outcome, and its rejections by reason: plain
/// arrays indexed on the hot path (no map, no atomic). Each event is counted once, by the
/// shard that decided its outcome: the owner for an event it applied (forwarded or not), the
/// receiving shard for one it answered without applying (`Busy`, `Moved`, `ShuttingDown`,
/// unavailable), the owner for one its log refused (`LogFull`, `DiskFull`, `DiskFailed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTally {
    pub by_outcome: [[u64; OutcomeIndex::ALL.len()]; KindIndex::ALL.len()],
    pub rejected: [[u64; REJECT_REASONS]; KindIndex::ALL.len()],
}

impl Default for EventTally {
    fn default() -> EventTally {
        EventTally {
            by_outcome: [[0; OutcomeIndex::ALL.len()]; KindIndex::ALL.len()],
            rejected: [[0; REJECT_REASONS]; KindIndex::ALL.len()],
        }
    }
}

impl EventTally {
    /// Counts one answered event.
    #[inline]
    pub fn count(&mut self, kind: &ArchivedEventKind, outcome: &Outcome) {
        self.count_kind(KindIndex::of(kind), outcome);
    }

    /// Counts one answered event whose kind is known by its index only (an event forwarded
    /// over a link whose bytes are gone by the time it is answered).
    #[inline]
    pub fn count_kind(&mut self, kind: KindIndex, outcome: &Outcome) {
        let kind = kind as usize;
        self.by_outcome[kind][OutcomeIndex::of(outcome) as usize] += 1;
        if let Outcome::Rejected { reason } = outcome {
            let reason = (*reason as usize).saturating_sub(1).min(REJECT_REASONS - 1);
            self.rejected[kind][reason] += 1;
        }
    }

    /// Events with this outcome, over every kind.
    pub fn outcome_total(&self, outcome: OutcomeIndex) -> u64 {
        self.by_outcome
            .iter()
            .map(|row| row[outcome as usize])
            .sum()
    }

    /// Every event counted.
    pub fn total(&self) -> u64 {
        self.by_outcome.iter().flatten().sum()
    }
}

/// Frames and bytes through a shard's client sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes of whole frames received (headers included), rejected frames aside.
    pub bytes_received: u64,
    /// Frames queued for clients: replies, maps, and the error frame that ends a connection.
    pub frames_sent: u64,
    /// Bytes written to client sockets.
    pub bytes_sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::STAGE_HISTOGRAM_BYTES_MAX;

    #[test]
    fn each_reject_reason_has_its_own_label() {
        use crate::core::message::RejectReason::*;
        let reasons = [
            UnknownHunt,
            HuntExists,
            UnknownPlayer,
            AlreadyJoined,
            UnknownTreasure,
            WrongCode,
            OutsideRadius,
            AlreadyCheckedIn,
            HuntTableFull,
            PlayerTableFull,
            InvalidHuntSpec,
            CodeTooLong,
            InvalidTopK,
            InvalidPosition,
            TooManyAttempts,
            NotOrganiser,
        ];
        assert_eq!(reasons.len(), REJECT_REASONS);
        for reason in reasons {
            // The label is the variant's name in snake case.
            let name: String = format!("{reason:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    sep.into_iter()
                        .chain(std::iter::once(c.to_ascii_lowercase()))
                })
                .collect();
            assert_eq!(reject_reason_label(reason as usize - 1), name);
        }
    }

    /// Operators tell a full or failed disk from a partition not served here.
    #[test]
    fn store_refusals_have_their_own_outcomes_and_unavailable_is_ownership_only() {
        let refused = |error| OutcomeIndex::of(&Outcome::Error { error });
        assert_eq!(refused(EventError::LogFull).label(), "log_full");
        assert_eq!(refused(EventError::DiskFull).label(), "disk_full");
        assert_eq!(refused(EventError::DiskFailed).label(), "disk_failed");
        let unserved = OutcomeIndex::of(&Outcome::Unavailable { partition: 3 });
        assert_eq!(unserved.label(), "unavailable");
        let mut labels: Vec<&str> = OutcomeIndex::ALL.iter().map(|o| o.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), OutcomeIndex::ALL.len(), "one label each");
        for (index, outcome) in OutcomeIndex::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, index, "ALL is in index order");
        }
    }

    #[test]
    fn the_memory_sum_covers_a_stage_histogram() {
        let stages = StageLatencies::new(true);
        let histograms = [
            &stages.frame_dispatch_ns,
            &stages.mesh_round_trip_ns,
            stages
                .log_sync_ns
                .as_ref()
                .expect("a logged shard's stages"),
            stages
                .snapshot_pause_ns
                .as_ref()
                .expect("a logged shard's stages"),
        ];
        for histogram in histograms {
            // `distinct_values` is the length of the histogram's counter array, all allocated.
            let counters = histogram.distinct_values();
            let bytes = size_of::<Histogram<u64>>() + counters * size_of::<u64>();
            assert!(
                bytes <= STAGE_HISTOGRAM_BYTES_MAX,
                "a stage histogram takes {bytes} bytes, STAGE_HISTOGRAM_BYTES_MAX counts {STAGE_HISTOGRAM_BYTES_MAX}"
            );
        }
    }

    /// The memory sum counts the log-sync histogram only with a log (in `WAL_SHARD_BYTES_MAX`).
    #[test]
    fn only_a_shard_with_a_log_has_a_log_sync_histogram() {
        assert!(StageLatencies::default().log_sync_ns.is_none());
        assert!(StageLatencies::new(false).log_sync_ns.is_none());
        assert!(StageLatencies::new(false).snapshot_pause_ns.is_none());
        assert!(StageLatencies::new(true).log_sync_ns.is_some());
    }
}
