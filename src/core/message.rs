//! Every message on the wire, as rkyv types: events (client → node), replies (node → client),
//! the partition map and error reports.
//!
//! A client archives each event once; the archive's bytes then travel unchanged to the shard
//! that owns the event's partition, where the state machine reads them in place. Replies are
//! archived once by the shard that applied the event and travel back the same way. The types
//! here are plain data, valid on any core; their archived forms are read wherever bytes land.

use rkyv::{Archive, Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::core::ids::{HuntId, PlayerId, TreasureId};

/// A point on the earth, in units of 1e-7 degrees (about 1 cm), as GPS receivers report it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Position {
    /// Latitude in 1e-7 degrees, −90° to +90°.
    pub lat_e7: i32,
    /// Longitude in 1e-7 degrees, −180° to +180°.
    pub lon_e7: i32,
}

/// A place a player must visit: checking in inside its radius scores its points, once.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WaypointSpec {
    /// Centre of the waypoint.
    pub position: Position,
    /// A check-in counts within this distance of the centre.
    pub radius_m: u32,
    /// Points for the first check-in of each player.
    pub points: u32,
}

/// A treasure: whoever first presents the code whose hash this is wins its points.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TreasureSpec {
    /// [`claim_code_hash`] of the secret code; the code itself never reaches the engine
    /// before a player finds it.
    pub code_hash: u64,
    /// Points for the winner.
    pub points: u32,
}

/// The content of a new hunt.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HuntSpec {
    pub waypoints: Vec<WaypointSpec>,
    pub treasures: Vec<TreasureSpec>,
}

/// What an event asks for.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum EventKind {
    /// Create the hunt; the event's player is its organiser.
    CreateHunt(HuntSpec),
    /// Enter the event's player in the hunt.
    Join,
    /// The player is here; scores the first waypoint not yet visited whose radius holds it.
    CheckIn { position: Position },
    /// The player presents a code for a treasure.
    Claim { treasure: TreasureId, code: String },
    /// The hunt's best `top_k` players.
    Leaderboard { top_k: u16 },
    /// End the hunt: its state is dropped and its slot in the partition freed. Only the hunt's
    /// organiser (the player of its `CreateHunt`) may.
    EndHunt,
}

/// One event. Every event is keyed by its hunt, which decides the partition that applies it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Event {
    pub hunt: HuntId,
    pub player: PlayerId,
    /// The client's session: a number the client picks at random for itself and keeps across
    /// reconnects, so that a retry of an event is recognised ([`NO_SESSION`], 0: none, and no
    /// de-duplication). With `client_seq` it names the event: each partition remembers the
    /// events of a session it applied and answers a retry `Duplicate` instead of applying it
    /// twice (`core::partition_sessions`).
    pub client_session: u64,
    /// Chosen by the client, echoed in the reply, so the client can match them. Within a
    /// session, a new event takes a `client_seq` above every earlier one's; a retry keeps its own.
    pub client_seq: u64,
    /// Opaque to the engine and echoed in the reply: the client puts its send time here.
    pub client_ts: u64,
    pub kind: EventKind,
}

/// The `client_session` of an event that asks for no de-duplication (a hand-written tool).
pub const NO_SESSION: u64 = 0;

/// Why an event was refused. Refusals are answers, not errors: the event was well formed.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash, Clone, Copy))]
#[repr(u8)]
pub enum RejectReason {
    /// No hunt with this id exists.
    UnknownHunt = 1,
    /// A hunt with this id exists already.
    HuntExists = 2,
    /// The player has not joined the hunt.
    UnknownPlayer = 3,
    /// The player has joined the hunt already.
    AlreadyJoined = 4,
    /// The hunt has no treasure with this id.
    UnknownTreasure = 5,
    /// The code does not open the treasure.
    WrongCode = 6,
    /// The position is inside no waypoint's radius.
    OutsideRadius = 7,
    /// The player has checked in at every waypoint whose radius holds the position.
    AlreadyCheckedIn = 8,
    /// The partition holds `HUNTS_PER_PARTITION_MAX` hunts already.
    HuntTableFull = 9,
    /// The hunt holds `PLAYERS_PER_HUNT_MAX` players already.
    PlayerTableFull = 10,
    /// The hunt spec breaks a limit (too many waypoints or treasures, radius too large).
    InvalidHuntSpec = 11,
    /// The claim's code is longer than `CLAIM_CODE_BYTES_MAX`.
    CodeTooLong = 12,
    /// The leaderboard query asks for more than `LEADERBOARD_TOP_K_MAX` or for none.
    InvalidTopK = 13,
    /// The position is not a point on the earth.
    InvalidPosition = 14,
    /// The player presented `CLAIM_WRONG_CODES_MAX` wrong codes for this treasure already; its
    /// claims of it are refused from now on, right code or not.
    TooManyAttempts = 15,
    /// Only the hunt's organiser may end it.
    NotOrganiser = 16,
}

/// An event the engine could not process. Unlike a rejection, the client did nothing wrong
/// in the hunt's terms; the event may be retried.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash, Clone, Copy))]
#[repr(u8)]
pub enum EventError {
    /// The node is stopping and did not apply the event.
    ShuttingDown = 1,
    // 2 was `OwnerUnavailable` up to wire version 3: nobody serves the event's partition now
    // is `Outcome::Unavailable { partition }` since version 4, which names the partition. Not
    // reused, so that a 2 in an old capture or log line keeps its one meaning.
    /// The shard's write-ahead log reached its disk bound (`trove node --log-disk-max-mb`)
    /// before a snapshot could free space: the event was not applied. Retry later.
    LogFull = 3,
    /// The event was forwarded to its owner on another node and the link failed before its
    /// reply came back: it may or may not have been applied. Do not assume either way; read
    /// the state back (a leaderboard, say) before sending it again.
    OutcomeUnknown = 4,
    /// The disk of the shard's write-ahead log is full (ENOSPC or a quota: a log write, a new
    /// segment, a sync or a snapshot failed): the event was not applied. The node retries by
    /// itself and takes events again once space returns; retry later. Unlike `LogFull` (the
    /// node's own bound, which its snapshots clear), an operator has to free space.
    DiskFull = 5,
    /// The disk of the shard's write-ahead log failed (EIO or another I/O error): the event
    /// was not applied. The node retries by itself and takes events again once the disk
    /// works; retry later. An operator should look at the disk.
    DiskFailed = 6,
}

/// One line of a leaderboard.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaderboardEntry {
    pub player: PlayerId,
    pub score: u32,
}

/// The result of one event.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Outcome {
    /// Applied. `score` is the player's score afterwards (0 for a new hunt or player).
    Accepted { score: u32 },
    /// Well formed but refused.
    Rejected { reason: RejectReason },
    /// The player won the treasure.
    Claimed { points: u32, score: u32 },
    /// Somebody won the treasure before.
    AlreadyClaimed { winner: PlayerId },
    /// The hunt's best players, best first.
    Leaderboard { entries: Vec<LeaderboardEntry> },
    /// The node is at its limit and runs in fail-fast mode: the event was not applied.
    Busy,
    /// The event could not be processed.
    Error { error: EventError },
    /// The event's partition is owned by shard `shard` of node `node` since placement
    /// `epoch`: the receiver did not apply it. Send it there (and fetch the newer map).
    Moved { node: u32, shard: u16, epoch: u32 },
    /// A retry: the partition applied this event (same `client_session` and `client_seq`)
    /// before and did not apply it again. `original` is how it went then: its class, not its
    /// numbers (a score may have changed since; read it back if it matters).
    Duplicate { original: OutcomeClass },
    /// A retry of an event older than what the partition remembers of its session (its
    /// `client_seq` is at or below one the partition has forgotten, past
    /// `SESSION_WINDOW_EVENTS_MAX` later events of the session): not applied now, and the
    /// partition cannot tell how it went. A session's events reach a partition in the order
    /// they were sent, so it was applied before, unless the client re-sent it after later
    /// events of the same partition were applied (an event answered `Busy` or `Moved` and
    /// re-sent late): read the state back before deciding.
    DuplicateUnknown,
    /// Nobody serves partition `partition` now: its owner's node is down or paused (the
    /// partition is `Offline` in the placement), the answering node is fenced (its lease is
    /// not known valid), or the link to the owner's node failed before the event was sent.
    /// Not applied; answered at once rather than left to time out. Retry later, or after a
    /// newer partition map says the partition is served again. The partition is the one the
    /// event's hunt hashes to, so a client that sent a batch can tell which of its events
    /// were refused and an operator reading a client log sees which partition is down.
    ///
    /// New in wire version 4 (before, `Error { error: 2 }` without the partition): a client
    /// of an earlier version is refused at its first frame with the wire version error, never
    /// handed a reply it cannot read.
    Unavailable { partition: u32 },
}

/// How an applied event went, without its numbers: what a partition remembers of each recent
/// event of a session, and what it answers a retry of one with.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash, Clone, Copy))]
pub enum OutcomeClass {
    /// It was `Accepted`.
    Accepted,
    /// It was `Claimed`: the player won the treasure.
    Claimed,
    /// It was `AlreadyClaimed`.
    AlreadyClaimed,
    /// It was `Rejected` for `reason`: it changed nothing (bar a wrong code's count).
    Rejected { reason: RejectReason },
}

impl OutcomeClass {
    /// The class of an outcome of `PartitionState::apply` that changes or may change state;
    /// `None` for an answer that is not one (a leaderboard, which is read-only, or an answer
    /// given without applying: `Busy`, `Error`, `Moved`, duplicates, `Unavailable`).
    pub fn of(outcome: &Outcome) -> Option<OutcomeClass> {
        match outcome {
            Outcome::Accepted { .. } => Some(OutcomeClass::Accepted),
            Outcome::Claimed { .. } => Some(OutcomeClass::Claimed),
            Outcome::AlreadyClaimed { .. } => Some(OutcomeClass::AlreadyClaimed),
            Outcome::Rejected { reason } => Some(OutcomeClass::Rejected { reason: *reason }),
            Outcome::Leaderboard { .. }
            | Outcome::Busy
            | Outcome::Error { .. }
            | Outcome::Moved { .. }
            | Outcome::Duplicate { .. }
            | Outcome::DuplicateUnknown
            | Outcome::Unavailable { .. } => None,
        }
    }
}

/// The reply to one event, matched to it by `client_seq`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Reply {
    pub client_seq: u64,
    pub client_ts: u64,
    pub outcome: Outcome,
}

/// One partition's owner in a [`PartitionMapMessage`].
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MapOwner {
    /// The owner's node: an index into [`PartitionMapMessage::nodes`] (an index, not the node
    /// id, keeps an entry at 6 bytes, so a map of `PARTITIONS_MAX` partitions fits one frame).
    pub node: u16,
    /// The owning shard of that node.
    pub shard: u16,
    /// Whether the owner serves the partition now. An owner that does not (its node's lease
    /// ended, or the answering node does not know where it is reached) answers nothing: its
    /// events get `Unavailable { partition }`.
    pub serving: bool,
}

/// One node of a [`PartitionMapMessage`]: where it is reached.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MapNode {
    /// The node's id.
    pub node: u32,
    /// The host it is reached at; empty for "the host you reached the answering node at" (a
    /// single node does not know the address its clients use).
    pub host: String,
    /// Shard `s` of the node accepts connections on `shard_ports[s]`; empty when the answering
    /// node does not know where the node is reached (its registration is gone).
    pub shard_ports: Vec<u16>,
}

/// The partition map a node sends a client that asks for it (or is behind): which node and
/// shard owns each partition, whether it serves it, and where every owner is reached.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PartitionMapMessage {
    /// Bumped whenever ownership changes.
    pub epoch: u32,
    /// The id of the node that sent this map; it is listed in `nodes`.
    pub answering_node: u32,
    /// The owner of partition `i` is `owners[i]`; its length is the partition count.
    pub owners: Vec<MapOwner>,
    /// Every node an owner names, and the answering node, each once.
    pub nodes: Vec<MapNode>,
}

/// Sent by a node before it closes a connection whose input it cannot accept.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorMessage {
    /// A stable code: `FrameError::code` of what was wrong.
    pub code: u16,
    /// What was wrong and what to do about it, for a human.
    pub message: String,
}

/// The first frame on a link from a shard of one node to a shard of another (sent on the
/// receiving shard's own port): who is asking, and in which cluster.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LinkHello {
    /// The sender's cluster name (`trove node --cluster-name`); the receiver refuses another.
    pub cluster: String,
    /// The sending node, which must be in the receiver's placement.
    pub node: u32,
    /// The sending shard, on its node.
    pub shard: u16,
    /// The sender's placement epoch.
    pub epoch: u32,
}

/// The receiver's answer to a [`LinkHello`] it accepts: link frames follow.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LinkAccepted {
    /// The receiving node and shard.
    pub node: u32,
    pub shard: u16,
    /// The sender's share of the receiver's link budget: it may have at most this many
    /// events and event bytes in flight on the link (the receiver checks it).
    pub events_inflight_max: u32,
    pub bytes_inflight_max: u32,
}

/// The last record of a `LinkEvents` or `LinkReplies` frame: one token per other record, in
/// order. The sender of an event chooses its token; the reply carries it back.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct LinkTokens {
    pub tokens: Vec<u64>,
}

/// One piece of a partition's snapshot on its way to the partition's next owner (a
/// `MoveSnapshot` frame): the bytes `offset..offset + bytes.len()` of the snapshot's rkyv
/// archive, `total` bytes in all. A move is named by its partition and the partition epoch
/// of its `Migrating` entry.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MoveChunk {
    pub partition: u32,
    pub part_epoch: u32,
    pub offset: u64,
    pub total: u64,
    pub bytes: Vec<u8>,
}

/// The first record of a `MoveEvents` frame (the events follow, archived as their clients
/// sent them) and the only one of a `MoveHandoff` frame. `seq` is the index of the frame's
/// first event in the move's tail; in a hand-off, the number of events in the whole tail.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MoveHead {
    pub partition: u32,
    pub part_epoch: u32,
    pub seq: u64,
}

/// The only record of a `MoveSeal` frame: the source of the move of `partition` named by
/// `part_epoch` saw the controller flip it to the target at partition epoch `owner_epoch`,
/// and applies none of its events any more; it streamed `seq` tail events in all.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MoveSeal {
    pub partition: u32,
    pub part_epoch: u32,
    pub seq: u64,
    pub owner_epoch: u32,
}

/// The target's answer on the link's reply direction (a `MoveAck` frame): how much of the
/// move it has (the snapshot, then `events` tail events of `bytes` archived bytes), whether
/// it has the hand-off, or why it refuses the move (`refusal` not empty). `sealed`: the target
/// had the source's seal and serves the partition now; it held `events_held` events for it
/// meanwhile, the first for `pause_ns` (the pause the partition's clients saw at the flip).
/// `flip_epoch` (not zero): the target's placement shows the partition flipped to it at this
/// partition epoch, so the source seals at once instead of waiting for its own watch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MoveAck {
    pub partition: u32,
    pub part_epoch: u32,
    pub snapshot_done: bool,
    pub events: u64,
    pub bytes: u64,
    pub handed_off: bool,
    pub sealed: bool,
    pub events_held: u64,
    pub pause_ns: u64,
    pub flip_epoch: u32,
    pub refusal: String,
}

/// The hash a treasure stores in place of its secret code.
pub fn claim_code_hash(code: &[u8]) -> u64 {
    // A fixed seed keeps treasure hashes apart from the partitioner's hashes of hunt ids.
    const CLAIM_CODE_SEED: u64 = 0x7472_6f76_6563_6f64; // "trovecod"
    xxh3_64_with_seed(code, CLAIM_CODE_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::{EVENT_FIXED_BYTES, REPLY_BYTES_MAX, REPLY_FIXED_BYTES};

    #[test]
    fn a_check_in_is_one_cache_line_on_the_wire() {
        assert_eq!(std::mem::size_of::<ArchivedEvent>(), EVENT_FIXED_BYTES);
        let check_in = Event {
            hunt: HuntId(u64::MAX),
            player: PlayerId(u64::MAX),
            client_session: u64::MAX,
            client_seq: u64::MAX,
            client_ts: u64::MAX,
            kind: EventKind::CheckIn {
                position: Position::default(),
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&check_in).unwrap();
        assert_eq!(bytes.len(), EVENT_FIXED_BYTES);
    }

    #[test]
    fn reply_sizes_match_the_limits_memory_is_computed_from() {
        assert_eq!(std::mem::size_of::<ArchivedReply>(), REPLY_FIXED_BYTES);
        let duplicate = Reply {
            client_seq: u64::MAX,
            client_ts: u64::MAX,
            outcome: Outcome::Duplicate {
                original: OutcomeClass::Rejected {
                    reason: RejectReason::NotOrganiser,
                },
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&duplicate).unwrap();
        assert_eq!(
            bytes.len(),
            REPLY_FIXED_BYTES,
            "a duplicate's answer is fixed-size"
        );
        // Answered at once without credit, counted in the memory sum at the fixed size.
        let unavailable = Reply {
            client_seq: u64::MAX,
            client_ts: u64::MAX,
            outcome: Outcome::Unavailable {
                partition: u32::MAX,
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&unavailable).unwrap();
        assert_eq!(
            bytes.len(),
            REPLY_FIXED_BYTES,
            "an Unavailable answer is fixed-size"
        );
        let full_board = Reply {
            client_seq: u64::MAX,
            client_ts: u64::MAX,
            outcome: Outcome::Leaderboard {
                entries: vec![
                    LeaderboardEntry {
                        player: PlayerId(u64::MAX),
                        score: u32::MAX
                    };
                    crate::constants::LEADERBOARD_TOP_K_MAX
                ],
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&full_board).unwrap();
        assert!(bytes.len() <= REPLY_BYTES_MAX, "{} bytes", bytes.len());
    }
}
