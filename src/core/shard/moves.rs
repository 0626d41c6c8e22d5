//! Live partition moves, sans-IO: one partition's state and the events applied to it stream
//! from the shard that owns it (the source) to a shard of another node (the target), over the
//! node link between them, while the source keeps serving; then the controller flips ownership.
//!
//! # The hand-off
//!
//! 1. The source sends the partition's snapshot (`MoveSnapshot`), then every event it applies,
//!    as the same bytes (`MoveEvents`); the target stages them and acknowledges (`MoveAck`).
//! 2. Once the target is within `MOVE_CATCHUP_EVENTS_MAX` events, the source sends the
//!    hand-off marker (`MoveHandoff`) and keeps serving, but keeps each of the partition's
//!    replies back until the target acknowledges its event ([`ShardCore::gate_reply`]): what
//!    the source answers, the target has. When the target acknowledges the marker, the source
//!    reports the move `Ready` and the controller flips it (through etcd, which no client
//!    waits on).
//! 3. When the source sees the flip it stops applying the partition's events (they go to the
//!    target now) and seals the tail (`MoveSeal`, with the flip's partition epoch). The
//!    target serves the partition from the seal on, even before its own node's watch shows
//!    the flip (`Moves::flips_known`), and until then holds the partition's events in arrival
//!    order ([`Arriving`]). A target whose watch shows the flip first says so to the source
//!    (`MoveAck::flip_epoch`), which seals at once: the flip takes effect from whichever node
//!    learns it first, a link hop later at the other. If the link the move came on closes after the hand-off, what came
//!    is all there is: the target serves it at its own flip, and the source answers the
//!    replies it still kept back `OutcomeUnknown`. The target acknowledges the seal with the
//!    events it held and how long the first waited: the flip pause, which the source reports.
//! 4. If the controller abandons the move instead, the source answers the replies it kept back
//!    (it applied their events and still owns the partition) and the target drops its copy.
//!
//! If the unacknowledged tail reaches `MOVE_TAIL_EVENTS_MAX` / `MOVE_TAIL_BYTES_MAX`, or the
//! move is refused after its hand-off, the source holds the partition's new events (with
//! their credit) instead of applying them, until the target catches up or the controller
//! decides.
//!
//! The controller starts a move by writing the partition `Migrating { to, to_shard }` in the
//! assignment; each shard learns it from its placement. What the source's shard has to tell
//! the controller (the target has everything: flip now; or the move cannot go on) comes out of
//! [`ShardCore::poll_move_report`](super::ShardCore) as a [`MoveReport`], which the node's
//! control thread writes to etcd. Lives on the shard's core.
//!
//! # A target with a store (`--durability sync|async`)
//!
//! The flip must never go to a target whose copy a crash would lose, so a target that logs
//! acknowledges the hand-off only once the staged partition is durable in its own store:
//!
//! 1. The snapshot and the tail up to the hand-off arrive and are applied to the staged state
//!    as on any target (nothing is logged: the install below covers them). Before it stages
//!    anything, a target whose log refuses events now (a disk fault, the disk bound) refuses
//!    the move.
//! 2. At the hand-off (the last tail event is in) the target does not acknowledge it: the
//!    install is queued for the shell ([`ShardCore::poll_move_install`]), which takes a copy
//!    of the staged state with the LSN it covers (the last one given out: no record of this
//!    log after it is the partition's), waits for the log to be durable up to that LSN, and
//!    writes the copy as an ordinary snapshot file of the partition through the store's
//!    snapshot path (`.tmp`, `fdatasync`, rename, directory sync). Only then
//!    ([`ShardCore::handle_move_installed`]) does the hand-off acknowledgement leave, and the
//!    source reports the move `Ready`.
//! 3. Tail events after the hand-off are logged as they arrive, as records of the partition
//!    (after the install's LSN, or covered by it), and acknowledged once durable, so the
//!    source answers nothing a crash here would lose; the partition is served only once every
//!    tail event is durable. After the flip its events are logged like any other, so recovery
//!    loads the snapshot and replays the records after it, the way it recovers any partition.
//!
//! A disk fault while an install is queued or written ([`ShardCore::handle_log_fault`]), or a
//! failed snapshot write ([`ShardCore::handle_move_install_failed`]), refuses the move with the
//! reason: the staged state is dropped, the source reports `Refused`, the controller abandons
//! the move and the source applies what it held. The move never flips.
//!
//! No stale copy comes back. A snapshot written for a move that is then abandoned, or the
//! log of a source that moved a partition away, still hold that partition; a cluster node
//! recovers every partition its store holds before it knows the placement, and the first
//! placement it is given drops the ones it does not own (`adopt_placement`), before anything
//! is served. Such a node snapshots nothing before that placement (`export_partition`), so
//! the stale copy never gets a newer snapshot. A partition the placement takes from this
//! shard is handed to the store to forget ([`ShardCore::poll_departed`]): its snapshot files
//! are deleted and its records no longer keep log segments, unless it is staged here again
//! ([`ShardCore::partition_gone`]). A partition comes back here only by another move (the
//! controller places partitions once, then moves them), whose installed snapshot covers a
//! later LSN than anything stale, so recovery loads it and skips the stale records before it.
//!
//! What it does not cover: a damaged installed snapshot makes recovery fall back as for any
//! partition (to the snapshot before it, or to the whole log), which may hold the partition's
//! state from before it last left this shard.

use crate::core::ids::{Epoch, NodeId, PartitionId, ShardId};

/// What a source shard says about one move, for its node's control thread to pass on to the
/// controller (through etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveReport {
    pub partition: PartitionId,
    /// The partition epoch of the `Migrating` entry: which move this is about.
    pub part_epoch: Epoch,
    pub to: NodeId,
    pub to_shard: ShardId,
    pub step: MoveStep,
}

/// How a move stands, as its source shard reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// The target has the partition's state and acknowledged the hand-off; the source keeps
    /// serving, answering the partition's events once the target has them, until the
    /// controller flips ownership (or abandons).
    Ready {
        snapshot_bytes: u64,
        events_streamed: u64,
    },
    /// The move cannot go on (the target refused it, or the link to it failed): the
    /// controller should abandon it. The source keeps serving.
    Refused { reason: String },
    /// The move ended: the controller flipped ownership (`flipped`) and the target
    /// acknowledged the seal, saying it held `events_held` of the partition's events until
    /// then, the first for `pause_ns` (the flip pause; zero when none waited); or the
    /// controller abandoned it, and the source applied what it held itself (`pause_ns` from
    /// the first).
    Released {
        flipped: bool,
        events_held: u64,
        pause_ns: u64,
    },
}

use std::collections::VecDeque;
use std::fmt;

use rkyv::util::AlignedVec;

use crate::constants::{
    ARCHIVE_ALIGN, ERROR_MESSAGE_BYTES_MAX, LINK_BATCH_EVENTS_MAX, MOVE_CATCHUP_EVENTS_MAX,
    MOVE_CHUNK_BYTES_MAX, MOVE_GATED_REPLY_BYTES, MOVE_HELD_EVENT_BYTES, MOVE_REPORTS_QUEUED_MAX,
    MOVE_TAIL_BYTES_MAX, MOVE_TAIL_EVENTS_MAX, MOVES_INCOMING_MAX, MOVES_OUTGOING_MAX,
    MOVES_STAGED_MAX, SNAPSHOT_ARCHIVE_BYTES_MAX,
};
use crate::core::codec::{
    FrameBuilder, FrameError, FrameKind, Records, ValidatedArchive, ValidatedFrame, access_record,
};
use crate::core::credit::Credit;
use crate::core::hunt::PartitionState;
use crate::core::ids::ConnectionId;
use crate::core::message::{
    ArchivedEvent, ArchivedMoveAck, ArchivedMoveChunk, ArchivedMoveHead, ArchivedMoveSeal,
    EventError, MoveAck, MoveChunk, MoveHead, MoveSeal, Outcome,
};
use crate::core::partition::{Owner, OwnerState};
use crate::core::shard::ShardCore;
use crate::core::shard::durability::HeldReply;
use crate::core::shard::links::{LinkAdmit, LinkDest};
use crate::core::shard::mesh::BatchEntry;
use crate::core::shard::routing::{LocalEvent, Route, reply_to};
use crate::core::snapshot::PartitionSnapshot;

/// Why a move frame breaks the protocol: the link it came on is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveError {
    /// The frame itself is malformed.
    Frame(FrameError),
    /// The frame does not fit the move it names (out of order, past its size, another
    /// partition's events, an acknowledgement of more than was sent...).
    Protocol { detail: String },
}

impl From<FrameError> for MoveError {
    fn from(error: FrameError) -> MoveError {
        MoveError::Frame(error)
    }
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveError::Frame(error) => write!(f, "move frame: {error}"),
            MoveError::Protocol { detail } => write!(
                f,
                "move protocol: {detail}; the link is closed (the peer runs an incompatible trove, or a bug)"
            ),
        }
    }
}

fn protocol(detail: String) -> MoveError {
    MoveError::Protocol { detail }
}

/// Who is waiting for the answer to a held event.
#[derive(Clone, Copy, Debug)]
enum HeldOrigin {
    /// A client of this shard: the event holds `credit` of its connection's share and of the
    /// shard's socket budget, and counts as away from the connection.
    Client { id: ConnectionId, credit: Credit },
    /// Another shard of this node (it holds the mesh credit until the reply goes back).
    Peer { from: ShardId, entry: BatchEntry },
    /// A shard of another node, over inbound link `link` (the link credit stays held).
    Link { link: ConnectionId, token: u64 },
}

/// An event of a partition being handed off, held in arrival order until the flip or the
/// abandon: its archived bytes (validated when it arrived) and who waits for its answer.
struct HeldEvent {
    bytes: AlignedVec,
    origin: HeldOrigin,
}

/// A hold: the events held, and when the first of them came (the pause its
/// client sees is from then).
#[derive(Default)]
struct Hold {
    events: VecDeque<HeldEvent>,
    count: u64,
    first_held_ns: Option<u64>,
}

impl Hold {
    /// The events held and how long the first of them waited, at `now_ns`.
    fn pause(&self, now_ns: u64) -> (u64, u64) {
        let waited = self
            .first_held_ns
            .map_or(0, |first| now_ns.saturating_sub(first));
        (self.count, waited)
    }
}

/// One partition this shard streams to its next owner.
struct OutgoingMove {
    partition: PartitionId,
    part_epoch: Epoch,
    dest: LinkDest,
    /// Move frames not handed to the link yet (snapshot pieces, tail batches, the hand-off);
    /// the open frame is a tail batch being filled.
    stream: FrameBuilder,
    snapshot_bytes: u64,
    snapshot_acked: bool,
    streamed: u64,
    streamed_bytes: u64,
    acked: u64,
    acked_bytes: u64,
    hold: Option<Hold>,
    /// The hand-off marker went out: from then on the replies to the partition's events wait
    /// in `gated` until the target acknowledges having their events.
    handoff_sent: bool,
    gated: VecDeque<GatedReply>,
    ready: bool,
    refused: bool,
    /// The source saw the flip and sent its seal: it applies none of the partition's events
    /// any more, and waits for the target's acknowledgement of the seal.
    sealed: bool,
}

/// A reply the source keeps back until its target has the event: `seq` is the event's index
/// in the move's tail.
struct GatedReply {
    seq: u64,
    reply: HeldReply,
}

// What the memory sum counts for them (`SHARD_MOVES_BYTES_MAX`).
const _: () = assert!(size_of::<HeldEvent>() <= MOVE_HELD_EVENT_BYTES);
const _: () = assert!(size_of::<GatedReply>() <= MOVE_GATED_REPLY_BYTES);
const _: () = assert!(MOVE_HELD_EVENT_BYTES <= MOVE_GATED_REPLY_BYTES);

impl OutgoingMove {
    fn unacked(&self) -> (u64, u64) {
        (
            self.streamed - self.acked,
            self.streamed_bytes - self.acked_bytes,
        )
    }
}

/// Where a staged move stands with the store of a target that logs (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Install {
    /// Not handed off yet, or the target keeps no store (its hand-off is acknowledged at once).
    None,
    /// Handed off: the shell has not taken the staged state to write yet.
    Queued,
    /// The shell writes the staged state as a snapshot file covering the log up to `lsn`.
    Writing { lsn: u64 },
    /// The snapshot file is durable and the hand-off was acknowledged.
    Done,
}

/// A partition handed off to this shard, for the shell to write as a snapshot file before
/// the hand-off is acknowledged ([`ShardCore::poll_move_install`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MoveInstall {
    pub partition: PartitionId,
    /// The partition epoch of the move (for [`ShardCore::handle_move_installed`]).
    pub part_epoch: Epoch,
    /// The last LSN this shard's log gave out: the snapshot covers the log up to it (no
    /// record after it is the partition's), and is written once the log is durable up to it.
    pub lsn: u64,
    pub snapshot: PartitionSnapshot,
}

/// One partition this shard receives from its owner, staged (not served) until its flip.
struct IncomingMove {
    partition: PartitionId,
    part_epoch: Epoch,
    link: ConnectionId,
    /// The snapshot's archive as its pieces arrive; emptied once it is imported.
    snapshot: AlignedVec,
    total: u64,
    state: Option<PartitionState>,
    events: u64,
    bytes: u64,
    /// The hand-off marker came: the target has caught up, and its source answers each of
    /// the partition's events only once this shard acknowledged it (logged, with a store).
    handed_off: bool,
    /// The source's seal came (it saw the flip and applies nothing more), or the link the
    /// move came on closed: the tail is complete.
    sealed: bool,
    /// The tail events (and their bytes) acknowledged to the source: all of them, except at
    /// a target that logs, where those after the hand-off count once they are durable.
    confirmed: u64,
    /// The source was told that this node's placement shows the flip.
    flip_notified: bool,
    confirmed_bytes: u64,
    install: Install,
}

impl IncomingMove {
    /// Whether the hand-off was acknowledged: at once without a store, once the staged state
    /// is durable with one. Only then may the flip make the staged state this shard's.
    fn acked_handoff(&self) -> bool {
        self.handed_off && matches!(self.install, Install::None | Install::Done)
    }
}

/// A partition handed off to this shard whose flip this shard has not seen yet: its events
/// (from this shard's clients, other shards, and the source forwarding what it held) wait
/// here in arrival order until the placement makes the partition this shard's (then they are
/// applied here) or drops the move (then they go where it says). Without it they would be
/// answered `Moved` back and forth between a source that flipped and a target that has not.
struct Arriving {
    partition: PartitionId,
    hold: Hold,
}

/// The shard's moves, out and in. See the module documentation.
#[derive(Default)]
pub(super) struct Moves {
    out: Vec<OutgoingMove>,
    incoming: Vec<IncomingMove>,
    arriving: Vec<Arriving>,
    reports: VecDeque<MoveReport>,
    /// Moves installed here whose seal acknowledgement waits for their arriving events to be
    /// let go (it says how long the first of them waited).
    installed: Vec<IncomingMove>,
    /// Flips this shard knows of before its placement shows them: a partition a move's source
    /// sealed to this shard (the source saw the flip), or one whose target said its placement
    /// shows the flip. Each names the partition, the flip's partition epoch and the new owner;
    /// it stands for the placement's entry until the placement reaches that epoch, so a flip
    /// takes effect from the first side to see it, not from each node's watch. At most one
    /// per partition moving from or to this shard.
    flips_known: Vec<(PartitionId, Epoch, LinkDest)>,
    /// Socket credit of the client events held, summed (away from their connections).
    held_credit: Credit,
    held_now: u64,
}

impl Moves {
    /// Socket credit held by held client events.
    pub fn held_credit(&self) -> Credit {
        self.held_credit
    }

    /// Whether a move to `dest` has frames for its link.
    pub fn streams_to(&self, dest: LinkDest) -> bool {
        self.out
            .iter()
            .any(|m| m.dest == dest && !m.stream.is_empty())
    }

    fn out_index(&self, partition: PartitionId) -> Option<usize> {
        self.out.iter().position(|m| m.partition == partition)
    }

    fn incoming_index(&self, partition: u32, part_epoch: u32) -> Option<usize> {
        self.incoming
            .iter()
            .position(|m| m.partition.0 == partition && m.part_epoch.0 == part_epoch)
    }
}

/// Whether one more tail event of `len` bytes fits the open `MoveEvents` frame.
fn room_for_event(stream: &FrameBuilder, len: usize) -> bool {
    stream.open_records() < LINK_BATCH_EVENTS_MAX + 1 && stream.fits(len + ARCHIVE_ALIGN)
}

/// `text` cut to what an acknowledgement carries.
fn bounded(mut text: String) -> String {
    if text.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut end = ERROR_MESSAGE_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl ShardCore {
    // ---- source ------------------------------------------------------------------------

    /// What this shard has to tell its control thread about its moves, oldest first.
    pub fn poll_move_report(&mut self) -> Option<MoveReport> {
        self.moves.reports.pop_front()
    }

    fn report_move(&mut self, index: usize, step: MoveStep) {
        let m = &self.moves.out[index];
        let report = MoveReport {
            partition: m.partition,
            part_epoch: m.part_epoch,
            to: m.dest.node,
            to_shard: m.dest.shard,
            step,
        };
        self.push_report(report);
    }

    fn push_report(&mut self, report: MoveReport) {
        if self.moves.reports.len() >= MOVE_REPORTS_QUEUED_MAX {
            // Nobody drains them (no control thread): the oldest is the least useful.
            self.moves.reports.pop_front();
        }
        self.moves.reports.push_back(report);
    }

    /// After a new placement (or lease): a move whose partition flipped to its target is
    /// sealed (the source applies nothing more of it and says so to the target); one whose
    /// partition is no longer `Migrating` from this shard at its epoch otherwise is abandoned;
    /// moves the placement asks for start, and the routes of moving partitions say so. Held
    /// events are let go last, under the new routes. On the target side, staged moves the
    /// placement left behind are dropped, and sealed ones it flipped here are served.
    pub(super) fn settle_moves(&mut self, now_ns: u64) {
        let mut flipped = Vec::new();
        let mut abandoned = Vec::new();
        for m in self.moves.out.iter().filter(|m| !m.sealed) {
            let owner = self.placement.owner(m.partition);
            let goes_on = owner.node == self.node
                && owner.shard == self.shard
                && owner.part_epoch == m.part_epoch
                && owner.state.migrating_to() == Some((m.dest.node, m.dest.shard));
            if goes_on {
                continue;
            }
            let to_target = owner.node == m.dest.node
                && owner.shard == m.dest.shard
                && owner.state == OwnerState::Serving
                && owner.part_epoch > m.part_epoch;
            if to_target {
                flipped.push(m.partition);
            } else {
                abandoned.push(m.partition);
            }
        }
        let mut ended = Vec::new();
        for partition in abandoned {
            let index = self.moves.out_index(partition).expect("listed above");
            let m = self.moves.out.remove(index);
            self.routes[m.partition.index()] = self.base_route(m.partition);
            ended.push(m);
        }
        self.start_moves(now_ns);
        self.patch_move_routes();
        for partition in flipped {
            let owner_epoch = self.placement.owner(partition).part_epoch;
            self.seal_move(now_ns, partition, owner_epoch);
        }
        for m in ended {
            self.abandon_move(now_ns, m);
        }
        let placement = &self.placement;
        self.moves
            .flips_known
            .retain(|&(partition, part_epoch, _)| {
                placement.owner(partition).part_epoch < part_epoch
            });
        self.settle_incoming();
        self.notify_flips();
        self.install_sealed();
        self.settle_arriving(now_ns);
    }

    /// Starts the moves the placement asks of this shard that are not under way: partitions
    /// it serves, `Migrating` to a shard of another node.
    fn start_moves(&mut self, now_ns: u64) {
        for index in 0..self.routes.len() {
            if !matches!(self.routes[index], Route::Local(_)) {
                continue;
            }
            let partition = PartitionId(index as u32);
            let owner = *self.placement.owner(partition);
            let Some((to, to_shard)) = owner.state.migrating_to() else {
                continue;
            };
            if self.moves.out_index(partition).is_some() {
                continue;
            }
            let dest = LinkDest {
                node: to,
                shard: to_shard,
            };
            if let Err(reason) = self.start_move(now_ns, partition, owner.part_epoch, dest) {
                self.stats.moves.out_refused += 1;
                self.push_report(MoveReport {
                    partition,
                    part_epoch: owner.part_epoch,
                    to,
                    to_shard,
                    step: MoveStep::Refused { reason },
                });
            }
        }
    }

    /// Exports `partition`'s state, queues it for `dest` in pieces, and opens the link.
    fn start_move(
        &mut self,
        _now_ns: u64,
        partition: PartitionId,
        part_epoch: Epoch,
        dest: LinkDest,
    ) -> Result<(), String> {
        if dest.node == self.node {
            return Err(format!(
                "partition {} is moving to node {} shard {}, this shard's own node: a move goes to another node",
                partition.0, dest.node.0, dest.shard.0
            ));
        }
        if self.moves.out.len() >= MOVES_OUTGOING_MAX {
            return Err(format!(
                "node {} shard {} already streams {MOVES_OUTGOING_MAX} partitions; move fewer at once",
                self.node.0, self.shard.0
            ));
        }
        let Some(state) = self.partitions[partition.index()].as_ref() else {
            return Err(format!("partition {} has no state here", partition.0));
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&state.export())
            .map_err(|error| format!("partition {}'s snapshot: {error}", partition.0))?;
        if archive.len() > SNAPSHOT_ARCHIVE_BYTES_MAX {
            return Err(format!(
                "partition {}'s snapshot is {} bytes, past SNAPSHOT_ARCHIVE_BYTES_MAX ({SNAPSHOT_ARCHIVE_BYTES_MAX})",
                partition.0,
                archive.len()
            ));
        }
        self.open_link_for_move(dest)?;
        let epoch = self.placement.epoch().get();
        let mut stream = FrameBuilder::new();
        let total = archive.len() as u64;
        for (piece, bytes) in archive.chunks(MOVE_CHUNK_BYTES_MAX).enumerate() {
            let chunk = MoveChunk {
                partition: partition.0,
                part_epoch: part_epoch.get(),
                offset: (piece * MOVE_CHUNK_BYTES_MAX) as u64,
                total,
                bytes: bytes.to_vec(),
            };
            stream
                .single(FrameKind::MoveSnapshot, epoch, Some(&chunk))
                .map_err(|error| format!("partition {}'s snapshot piece: {error}", partition.0))?;
        }
        self.moves.out.push(OutgoingMove {
            partition,
            part_epoch,
            dest,
            stream,
            snapshot_bytes: total,
            snapshot_acked: false,
            streamed: 0,
            streamed_bytes: 0,
            acked: 0,
            acked_bytes: 0,
            hold: None,
            handoff_sent: false,
            gated: VecDeque::new(),
            ready: false,
            refused: false,
            sealed: false,
        });
        self.stats.moves.out_started += 1;
        self.links.list_ready_dest(dest);
        Ok(())
    }

    /// Marks the route of every partition this shard streams and serves: `Local` with the
    /// moving flag while its events are applied and streamed, `Hold` while they are held.
    pub(super) fn patch_move_routes(&mut self) {
        for m in &self.moves.out {
            let route = &mut self.routes[m.partition.index()];
            if let Route::Local(local) = route {
                *route = if m.hold.is_some() {
                    Route::Hold(m.partition)
                } else {
                    Route::Local(local.moving())
                };
            }
        }
        for arriving in &self.moves.arriving {
            let route = &mut self.routes[arriving.partition.index()];
            if !matches!(route, Route::Local(_)) {
                *route = Route::Hold(arriving.partition);
            }
        }
    }

    /// An event of a moving partition was applied here: it joins the tail, in order. Past
    /// the tail's bound the source holds the partition's next events instead of growing it.
    /// Returns the event's index in the tail when its reply must wait for the target to have
    /// it (the hand-off went out: see [`Self::gate_reply`]).
    #[cold]
    #[inline(never)]
    pub(super) fn capture_tail(&mut self, local: LocalEvent, bytes: &[u8]) -> Option<u64> {
        let index = self.moves.out_index(local.partition())?;
        let epoch = self.placement.epoch().get();
        let m = &mut self.moves.out[index];
        if m.refused {
            return None;
        }
        if m.stream.is_open() && !room_for_event(&m.stream, bytes.len()) {
            m.stream.finish(epoch);
        }
        if !m.stream.is_open() {
            m.stream.begin(FrameKind::MoveEvents);
            let head = MoveHead {
                partition: m.partition.0,
                part_epoch: m.part_epoch.get(),
                seq: m.streamed,
            };
            m.stream
                .push(&head)
                .expect("a move head fits an empty frame");
        }
        m.stream
            .push_archived(bytes)
            .expect("a validated event fits a move frame with room checked");
        let seq = m.streamed;
        m.streamed += 1;
        m.streamed_bytes += bytes.len() as u64;
        let (events, bytes) = m.unacked();
        let (dest, gates) = (m.dest, m.handoff_sent);
        self.links.list_ready_dest(dest);
        if events >= MOVE_TAIL_EVENTS_MAX || bytes >= MOVE_TAIL_BYTES_MAX {
            self.start_hold(index);
        }
        gates.then_some(seq)
    }

    /// Keeps back the reply to tail event `seq` of `partition` until the target acknowledges
    /// having it: a reply that leaves then is never lost with the source, whoever serves the
    /// partition next.
    pub(super) fn gate_reply(&mut self, partition: PartitionId, seq: u64, reply: HeldReply) {
        let index = self
            .moves
            .out_index(partition)
            .expect("a gated event's move streams it");
        self.moves.out[index]
            .gated
            .push_back(GatedReply { seq, reply });
        self.stats.moves.replies_kept_back += 1;
    }

    /// Lets go of the replies of move `index` whose events the target acknowledged.
    fn release_acked(&mut self, now_ns: u64, index: usize) {
        let acked = self.moves.out[index].acked;
        while let Some(gated) = self.moves.out[index].gated.front() {
            if gated.seq >= acked {
                break;
            }
            let gated = self.moves.out[index].gated.pop_front().expect("checked");
            self.release_or_wait_for_sync(now_ns, gated.reply);
        }
        self.after_release();
    }

    /// Stops applying the partition's events: new ones are held in arrival order.
    fn start_hold(&mut self, index: usize) {
        let m = &mut self.moves.out[index];
        if m.hold.is_some() {
            return;
        }
        m.hold = Some(Hold::default());
        let partition = m.partition;
        if matches!(self.routes[partition.index()], Route::Local(_)) {
            self.routes[partition.index()] = Route::Hold(partition);
        }
    }

    /// The target is within `MOVE_CATCHUP_EVENTS_MAX` of the tail: the hand-off marker goes
    /// out, and from then on the partition's replies wait for the target's acknowledgements
    /// (the source keeps applying). Events held because the tail had outgrown its bound are
    /// applied now, in order.
    fn catch_up(&mut self, now_ns: u64, index: usize) {
        let m = &self.moves.out[index];
        if m.refused || m.sealed || !m.snapshot_acked || m.unacked().0 > MOVE_CATCHUP_EVENTS_MAX {
            return;
        }
        let epoch = self.placement.epoch().get();
        let m = &mut self.moves.out[index];
        if !m.handoff_sent {
            if m.stream.is_open() {
                m.stream.finish(epoch);
            }
            let head = MoveHead {
                partition: m.partition.0,
                part_epoch: m.part_epoch.get(),
                seq: m.streamed,
            };
            m.stream
                .single(FrameKind::MoveHandoff, epoch, Some(&head))
                .expect("a move head fits a frame");
            m.handoff_sent = true;
            let dest = m.dest;
            self.links.list_ready_dest(dest);
        }
        let Some(hold) = self.moves.out[index].hold.take() else {
            return;
        };
        let partition = self.moves.out[index].partition;
        self.routes[partition.index()] = self.base_route(partition);
        self.patch_move_routes();
        self.release_hold(now_ns, hold);
    }

    /// Lets go of a hold's events, in order, under the routes as they are now.
    fn release_hold(&mut self, now_ns: u64, hold: Hold) {
        self.moves.held_now -= hold.events.len() as u64;
        for event in hold.events {
            self.release_held_event(now_ns, event);
        }
        self.after_release();
    }

    /// The controller flipped `partition` to the move's target: this shard stops applying
    /// its events (they go to the target now, what it held first) and seals the tail, so the
    /// target knows it has every event this shard applied. The move ends when the target
    /// acknowledges the seal.
    fn seal_move(&mut self, now_ns: u64, partition: PartitionId, owner_epoch: Epoch) {
        let index = self
            .moves
            .out_index(partition)
            .expect("a sealed partition's move is listed");
        let epoch = self.placement.epoch().get();
        let m = &mut self.moves.out[index];
        m.sealed = true;
        let known = (partition, owner_epoch, m.dest);
        let refused = m.refused;
        if !refused {
            if m.stream.is_open() {
                m.stream.finish(epoch);
            }
            let seal = MoveSeal {
                partition: m.partition.0,
                part_epoch: m.part_epoch.get(),
                seq: m.streamed,
                owner_epoch: owner_epoch.get(),
            };
            m.stream
                .single(FrameKind::MoveSeal, epoch, Some(&seal))
                .expect("a move seal fits a frame");
        }
        let (dest, hold) = (m.dest, m.hold.take());
        self.stats.moves.out_flipped += 1;
        self.know_flip(known);
        if self.partitions[partition.index()].take().is_some() && self.placed {
            // Flipped by the target's notice, before this node's placement shows it.
            self.note_departed(partition);
        }
        self.routes[partition.index()] = self.base_route(partition);
        self.links.list_ready_dest(dest);
        if let Some(hold) = hold {
            self.release_hold(now_ns, hold);
        }
        if refused {
            // The target will not acknowledge anything more of this move.
            let index = self.moves.out_index(partition).expect("still listed");
            self.finish_flipped(now_ns, index, None);
        }
    }

    /// A flipped move ends: the target acknowledged the seal (`seal_ack`: the events it held
    /// for the partition meanwhile and how long the first waited), or never will (the link
    /// failed, or the target no longer has the move). Replies still kept back are answered
    /// `OutcomeUnknown`: their events were applied here, but may not be at the target, which
    /// serves the partition now.
    fn finish_flipped(&mut self, now_ns: u64, index: usize, seal_ack: Option<(u64, u64)>) {
        let mut m = self.moves.out.remove(index);
        for gated in std::mem::take(&mut m.gated) {
            let mut held = gated.reply;
            if let Some(reply) = held.reply_mut() {
                reply.outcome = Outcome::Error {
                    error: EventError::OutcomeUnknown,
                };
            }
            self.stats.moves.replies_unknown += 1;
            self.release_or_wait_for_sync(now_ns, held);
        }
        self.report_released(&m, true, seal_ack);
        self.after_release();
    }

    /// Reports move `m` released (flipped or abandoned), with the events held and how long the
    /// first waited (`pause`, recorded as a `move_pause` sample when known).
    fn report_released(&mut self, m: &OutgoingMove, flipped: bool, pause: Option<(u64, u64)>) {
        let (events_held, pause_ns) = pause.unwrap_or((0, 0));
        if pause.is_some() {
            self.stats
                .stages
                .move_pause_ns
                .get_or_insert_with(super::counters::stage_histogram)
                .saturating_record(pause_ns.max(1));
        }
        self.push_report(MoveReport {
            partition: m.partition,
            part_epoch: m.part_epoch,
            to: m.dest.node,
            to_shard: m.dest.shard,
            step: MoveStep::Released {
                flipped,
                events_held,
                pause_ns,
            },
        });
    }

    /// Appends the move frames for `dest` to `out` (the link's task writes them after its
    /// event frames).
    pub(super) fn take_move_frames(&mut self, dest: LinkDest, out: &mut Vec<u8>) {
        let epoch = self.placement.epoch().get();
        for m in self.moves.out.iter_mut().filter(|m| m.dest == dest) {
            if m.stream.is_open() {
                m.stream.finish(epoch);
            }
            out.extend_from_slice(m.stream.bytes());
            m.stream.clear(0);
        }
    }

    /// A `MoveAck` frame from `dest` on an outgoing link: how far the target got, or its
    /// refusal. `Err` is a protocol error: the shell closes the link.
    pub fn handle_move_ack(
        &mut self,
        now_ns: u64,
        dest: LinkDest,
        body: &[u8],
    ) -> Result<(), MoveError> {
        let frame = ValidatedFrame::<ArchivedMoveAck>::validate(FrameKind::MoveAck, body)?;
        let Some(ack) = frame.first() else {
            return Err(protocol("a MoveAck frame without its record".to_string()));
        };
        let ack = ack.get();
        let Some(index) = self.moves.out.iter().position(|m| {
            m.dest == dest
                && m.partition.0 == ack.partition.to_native()
                && m.part_epoch.get() == ack.part_epoch.to_native()
        }) else {
            // A move that ended here meanwhile.
            return Ok(());
        };
        if !ack.refusal.is_empty() {
            if self.moves.out[index].sealed {
                // The target no longer has the move (it dropped it, or served the partition
                // when the link it came on closed): it acknowledges nothing more.
                self.finish_flipped(now_ns, index, None);
                return Ok(());
            }
            let reason = format!(
                "node {} shard {} refused the move: {}",
                dest.node.0,
                dest.shard.0,
                ack.refusal.as_str()
            );
            self.refuse_move(index, reason);
            return Ok(());
        }
        let (events, bytes) = (ack.events.to_native(), ack.bytes.to_native());
        let m = &mut self.moves.out[index];
        if events < m.acked
            || events > m.streamed
            || bytes > m.streamed_bytes
            || (ack.handed_off && !m.handoff_sent)
            || (ack.sealed && (!m.sealed || events != m.streamed))
        {
            self.stats.links.protocol_errors += 1;
            return Err(protocol(format!(
                "partition {}: the target acknowledged {events} events ({bytes} bytes, hand-off {}, seal {}) of {} sent ({} bytes, hand-off {}, seal {})",
                m.partition.0,
                ack.handed_off,
                ack.sealed,
                m.streamed,
                m.streamed_bytes,
                m.handoff_sent,
                m.sealed
            )));
        }
        m.snapshot_acked |= ack.snapshot_done;
        m.acked = events;
        m.acked_bytes = bytes;
        self.release_acked(now_ns, index);
        if ack.sealed {
            let seal_ack = (ack.events_held.to_native(), ack.pause_ns.to_native());
            self.finish_flipped(now_ns, index, Some(seal_ack));
            return Ok(());
        }
        let flip_epoch = ack.flip_epoch.to_native();
        if flip_epoch > self.moves.out[index].part_epoch.get() && !self.moves.out[index].sealed {
            // The target's placement shows the flip: seal now, not at this node's own watch.
            let partition = self.moves.out[index].partition;
            self.seal_move(now_ns, partition, Epoch(flip_epoch));
            return Ok(());
        }
        let m = &mut self.moves.out[index];
        if ack.handed_off && !m.ready && !m.refused {
            m.ready = true;
            let step = MoveStep::Ready {
                snapshot_bytes: m.snapshot_bytes,
                events_streamed: m.streamed,
            };
            self.report_move(index, step);
            return Ok(());
        }
        self.catch_up(now_ns, index);
        Ok(())
    }

    /// The move cannot go on: reported once. A move that has not handed off ends here (the
    /// source keeps serving); one that has keeps its kept-back replies and holds the
    /// partition's new events (they could not reach the target) until the controller decides,
    /// since it may be flipping right now.
    fn refuse_move(&mut self, index: usize, reason: String) {
        let m = &mut self.moves.out[index];
        if m.refused {
            return;
        }
        m.refused = true;
        m.stream.clear(0);
        self.stats.moves.out_refused += 1;
        self.report_move(index, MoveStep::Refused { reason });
        let m = &self.moves.out[index];
        if m.handoff_sent || m.hold.is_some() {
            self.start_hold(index);
        } else {
            let m = self.moves.out.remove(index);
            self.routes[m.partition.index()] = self.base_route(m.partition);
        }
    }

    /// The link to `dest` failed: every move to it is refused, and every sealed one ends.
    pub(super) fn fail_moves_to(&mut self, now_ns: u64, dest: LinkDest) {
        let mut index = self.moves.out.len();
        while index > 0 {
            index -= 1;
            if self.moves.out[index].dest != dest {
                continue;
            }
            if self.moves.out[index].sealed {
                self.finish_flipped(now_ns, index, None);
                continue;
            }
            let reason = format!(
                "the link to node {} shard {} failed",
                dest.node.0, dest.shard.0
            );
            self.refuse_move(index, reason);
        }
    }

    /// The controller abandoned a move: this shard stays the partition's owner. The replies
    /// kept back leave (their events were applied here), what it held is applied, in order,
    /// under the new routes, and the source reports the move released.
    fn abandon_move(&mut self, now_ns: u64, mut m: OutgoingMove) {
        self.stats.moves.out_abandoned += 1;
        for gated in std::mem::take(&mut m.gated) {
            self.release_or_wait_for_sync(now_ns, gated.reply);
        }
        let pause = m.hold.as_ref().map(|hold| hold.pause(now_ns));
        self.report_released(&m, false, pause);
        match m.hold {
            Some(hold) => self.release_hold(now_ns, hold),
            None => self.after_release(),
        }
    }

    /// Holds an event of connection `id` (its socket credit taken) for a held partition.
    #[cold]
    #[inline(never)]
    pub(super) fn hold_client_event(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        partition: PartitionId,
        bytes: &[u8],
        credit: Credit,
    ) {
        if let Some(connection) = self.connections.get_mut(id) {
            // Away from the connection until released, like a forwarded event.
            connection.remote_inflight += 1;
            connection.remote_credit = connection.remote_credit.plus(credit);
        }
        self.moves.held_credit = self.moves.held_credit.plus(credit);
        self.hold_event(now_ns, partition, bytes, HeldOrigin::Client { id, credit });
    }

    /// Holds an event another shard of this node forwarded.
    #[cold]
    #[inline(never)]
    pub(super) fn hold_peer_event(
        &mut self,
        now_ns: u64,
        partition: PartitionId,
        bytes: &[u8],
        from: ShardId,
        entry: BatchEntry,
    ) {
        self.hold_event(now_ns, partition, bytes, HeldOrigin::Peer { from, entry });
    }

    /// Holds an event a shard of another node sent over inbound link `link`.
    #[cold]
    #[inline(never)]
    pub(super) fn hold_link_event(
        &mut self,
        now_ns: u64,
        partition: PartitionId,
        bytes: &[u8],
        link: ConnectionId,
        token: u64,
    ) {
        self.hold_event(now_ns, partition, bytes, HeldOrigin::Link { link, token });
    }

    fn hold_event(
        &mut self,
        now_ns: u64,
        partition: PartitionId,
        bytes: &[u8],
        origin: HeldOrigin,
    ) {
        let hold = match self.moves.out_index(partition) {
            Some(index) => self.moves.out[index]
                .hold
                .as_mut()
                .expect("a partition routed Hold is holding"),
            None => {
                &mut self
                    .moves
                    .arriving
                    .iter_mut()
                    .find(|arriving| arriving.partition == partition)
                    .expect("a partition routed Hold has its move")
                    .hold
            }
        };
        let mut copy = AlignedVec::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        hold.events.push_back(HeldEvent {
            bytes: copy,
            origin,
        });
        hold.count += 1;
        hold.first_held_ns.get_or_insert(now_ns);
        self.moves.held_now += 1;
        self.stats.moves.events_held += 1;
        self.stats.moves.held_peak = self.stats.moves.held_peak.max(self.moves.held_now);
    }

    /// Lets go of one held event: it goes where the routes say now, as if it had just arrived
    /// (applied here, forwarded to the new owner, or answered).
    fn release_held_event(&mut self, now_ns: u64, held: HeldEvent) {
        let Ok(archive) = ValidatedArchive::<ArchivedEvent>::validate(0, &held.bytes) else {
            // Cannot happen: the bytes passed the same check when they arrived.
            if let HeldOrigin::Client { id, credit } = held.origin {
                self.moves.held_credit = self.moves.held_credit.minus(credit);
                self.release_remote(id, credit);
            }
            return;
        };
        match held.origin {
            HeldOrigin::Client { id, credit } => {
                self.moves.held_credit = self.moves.held_credit.minus(credit);
                match self.connections.get_mut(id) {
                    Some(connection) if !connection.socket_closed => {
                        connection.remote_inflight -= 1;
                        connection.remote_credit = connection.remote_credit.minus(credit);
                        self.dispatch_released(now_ns, id, archive, credit);
                    }
                    Some(_) => self.release_remote(id, credit),
                    None => self.credit.release(credit),
                }
            }
            HeldOrigin::Peer { from, entry } => {
                self.apply_peer_event(now_ns, from, archive, &entry);
                self.list_mesh_ready(from);
            }
            HeldOrigin::Link { link, token } => {
                if self.link_source(link).is_some() {
                    self.apply_linked(now_ns, link, archive, token);
                }
            }
        }
    }

    /// A released client event, its socket credit still taken: applied here if this shard
    /// serves its partition again, forwarded over the link to its new owner when the link's
    /// credit allows (else answered `Moved`, and the client asks the new owner itself), or
    /// answered.
    fn dispatch_released(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        archive: ValidatedArchive<'_, ArchivedEvent>,
        credit: Credit,
    ) {
        let event = archive.get();
        let outcome = match self.route_or_answer(event) {
            Ok(Route::Local(local)) => {
                self.apply_client_event(id, local, archive, credit);
                return;
            }
            Ok(Route::Hold(partition)) => {
                self.hold_client_event(now_ns, id, partition, archive.bytes(), credit);
                return;
            }
            Ok(Route::Node(node, shard)) => {
                if let LinkAdmit::Forward(dest) = self.link_admit(LinkDest { node, shard }, event) {
                    if self.try_take_link_credit(dest, credit) {
                        self.forward_to_node(now_ns, dest, id, archive, credit);
                        let connection = self.connections.get_mut(id).expect("open: checked");
                        connection.remote_inflight += 1;
                        connection.remote_credit = connection.remote_credit.plus(credit);
                        self.stats.events_forwarded += 1;
                        return;
                    }
                }
                self.stats.events_moved += 1;
                self.moved(event)
            }
            Ok(Route::Shard(_)) => {
                self.stats.events_moved += 1;
                self.moved(event)
            }
            Err(outcome) => outcome,
        };
        self.stats.events.count(&event.kind, &outcome);
        self.reply_answered(id, &reply_to(event, outcome), credit);
    }

    // ---- target ------------------------------------------------------------------------

    /// A move frame (`MoveSnapshot`, `MoveEvents`, `MoveHandoff`) on inbound link `link`:
    /// staged into the partition's next state, acknowledged on the link. Frames of a move this
    /// shard refused or dropped are ignored. `Err` is a protocol error: the shell closes the
    /// link.
    pub fn handle_move_frame(
        &mut self,
        now_ns: u64,
        link: ConnectionId,
        kind: FrameKind,
        body: &[u8],
    ) -> Result<(), MoveError> {
        if self.link_source(link).is_none() {
            return Ok(());
        }
        let result = match kind {
            FrameKind::MoveSnapshot => self.handle_move_chunk(link, body),
            FrameKind::MoveEvents => self.handle_move_events(now_ns, link, body),
            FrameKind::MoveHandoff => self.handle_move_handoff(link, body),
            FrameKind::MoveSeal => self.handle_move_seal(now_ns, link, body),
            kind => Err(MoveError::Frame(FrameError::UnexpectedKind { kind })),
        };
        if result.is_err() {
            self.stats.links.protocol_errors += 1;
        }
        result
    }

    fn check_partition(&self, partition: u32) -> Result<(), MoveError> {
        if partition >= self.placement.partitions() {
            return Err(protocol(format!(
                "a move of partition {partition}, past this node's {} partitions",
                self.placement.partitions()
            )));
        }
        Ok(())
    }

    /// Why this shard will not stage a move of `partition` at `part_epoch`, if it will not.
    fn incoming_refusal(&self, partition: u32, part_epoch: u32, total: u64) -> Option<String> {
        if let Some(error) = self.log_refusal_error() {
            return Some(format!(
                "node {} shard {} cannot log now ({error:?}), so it could not make the partition durable before the hand-off; move it once its disk works",
                self.node.0, self.shard.0
            ));
        }
        if total as usize > SNAPSHOT_ARCHIVE_BYTES_MAX {
            return Some(format!(
                "the snapshot is {total} bytes, past SNAPSHOT_ARCHIVE_BYTES_MAX ({SNAPSHOT_ARCHIVE_BYTES_MAX})"
            ));
        }
        let owner = self.placement.owner(PartitionId(partition));
        if owner.part_epoch.get() > part_epoch {
            return Some(format!(
                "this node's placement already has partition {partition} at epoch {}, after the move's {part_epoch}",
                owner.part_epoch.get()
            ));
        }
        // A move whose hand-off this shard acknowledged waits for this node to see its flip,
        // which can come well after the controller wrote it and started the next moves: those
        // wait counted apart, or a busy node would refuse the moves its controller paced
        // correctly. (Until acknowledged, an install to the store counts as receiving.)
        let receiving = self
            .moves
            .incoming
            .iter()
            .filter(|m| !m.acked_handoff())
            .count();
        if receiving >= MOVES_INCOMING_MAX {
            return Some(format!(
                "node {} shard {} already receives {MOVES_INCOMING_MAX} moves; try again after they are handed off",
                self.node.0, self.shard.0
            ));
        }
        if self.moves.incoming.len() >= MOVES_STAGED_MAX {
            return Some(format!(
                "node {} shard {} already stages {MOVES_STAGED_MAX} moves; try again after they flip",
                self.node.0, self.shard.0
            ));
        }
        None
    }

    fn handle_move_chunk(&mut self, link: ConnectionId, body: &[u8]) -> Result<(), MoveError> {
        let frame = ValidatedFrame::<ArchivedMoveChunk>::validate(FrameKind::MoveSnapshot, body)?;
        let chunk = frame
            .first()
            .ok_or_else(|| protocol("a MoveSnapshot frame without its record".to_string()))?
            .get();
        let (partition, part_epoch) = (chunk.partition.to_native(), chunk.part_epoch.to_native());
        let (offset, total) = (chunk.offset.to_native(), chunk.total.to_native());
        self.check_partition(partition)?;
        let index = match self.moves.incoming_index(partition, part_epoch) {
            Some(index) => index,
            None if offset != 0 => return Ok(()),
            None => {
                if let Some(refusal) = self.incoming_refusal(partition, part_epoch, total) {
                    self.stats.moves.in_refused += 1;
                    self.queue_move_refusal(link, partition, part_epoch, refusal);
                    return Ok(());
                }
                // An older move of the same partition that never flipped is over.
                if let Some(older) = self
                    .moves
                    .incoming
                    .iter()
                    .position(|m| m.partition.0 == partition)
                {
                    let older = self.moves.incoming.swap_remove(older);
                    self.stats.moves.in_dropped += 1;
                    self.forget_staged(&older);
                }
                self.moves.incoming.push(IncomingMove {
                    partition: PartitionId(partition),
                    part_epoch: Epoch(part_epoch),
                    link,
                    snapshot: AlignedVec::new(),
                    total,
                    state: None,
                    events: 0,
                    bytes: 0,
                    handed_off: false,
                    sealed: false,
                    confirmed: 0,
                    flip_notified: false,
                    confirmed_bytes: 0,
                    install: Install::None,
                });
                self.moves.incoming.len() - 1
            }
        };
        let m = &mut self.moves.incoming[index];
        let have = m.snapshot.len() as u64;
        if m.state.is_some()
            || offset != have
            || total != m.total
            || have + chunk.bytes.len() as u64 > total
        {
            return Err(protocol(format!(
                "partition {partition}: a snapshot piece at {offset} of {total} bytes, {} long, after {have} of {} bytes",
                chunk.bytes.len(),
                m.total
            )));
        }
        m.snapshot.extend_from_slice(chunk.bytes.as_slice());
        if (m.snapshot.len() as u64) < total {
            return Ok(());
        }
        let snapshot = rkyv::from_bytes::<PartitionSnapshot, rkyv::rancor::Error>(&m.snapshot)
            .map_err(|error| protocol(format!("partition {partition}'s snapshot: {error}")))?;
        if snapshot.partition != partition {
            return Err(protocol(format!(
                "a move of partition {partition} carries partition {}'s snapshot",
                snapshot.partition
            )));
        }
        let state = PartitionState::import(&snapshot)
            .map_err(|error| protocol(format!("partition {partition}'s snapshot: {error}")))?;
        m.state = Some(state);
        m.snapshot = AlignedVec::new();
        self.stats.moves.in_staged += 1;
        self.ack_incoming(index);
        Ok(())
    }

    fn move_head<'a>(
        kind: FrameKind,
        body: &'a [u8],
    ) -> Result<(&'a ArchivedMoveHead, Records<'a>), MoveError> {
        let records = Records::parse(kind, body)?;
        let first = records
            .iter()
            .next()
            .ok_or_else(|| protocol(format!("a {kind:?} frame without its head")))?;
        Ok((access_record::<ArchivedMoveHead>(0, first)?, records))
    }

    /// The staged move a head names, if this shard stages it; a move it has no state for yet
    /// (its snapshot is not all here), or whose tail is sealed, breaks the protocol, and so
    /// does a head that does not continue the tail.
    fn staged_index(&self, head: &ArchivedMoveHead) -> Result<Option<usize>, MoveError> {
        let partition = head.partition.to_native();
        self.check_partition(partition)?;
        let Some(index) = self
            .moves
            .incoming_index(partition, head.part_epoch.to_native())
        else {
            return Ok(None);
        };
        let m = &self.moves.incoming[index];
        if m.state.is_none() || m.sealed || head.seq.to_native() != m.events {
            return Err(protocol(format!(
                "partition {partition}: tail frame at event {} after {} events (snapshot {}, sealed {})",
                head.seq.to_native(),
                m.events,
                if m.state.is_some() {
                    "complete"
                } else {
                    "incomplete"
                },
                m.sealed
            )));
        }
        Ok(Some(index))
    }

    /// Tail events: applied to the staged state in order. After the hand-off their source
    /// answers them only once this shard acknowledges them, so a target that logs logs them
    /// first (records of the partition after its installed snapshot's) and acknowledges them
    /// once they are durable; one whose log refuses events now refuses the move.
    fn handle_move_events(
        &mut self,
        now_ns: u64,
        _link: ConnectionId,
        body: &[u8],
    ) -> Result<(), MoveError> {
        let (head, records) = Self::move_head(FrameKind::MoveEvents, body)?;
        let Some(index) = self.staged_index(head)? else {
            return Ok(());
        };
        let events = ValidatedFrame::<ArchivedEvent>::validate_from(records, 1)?;
        let logged = self.moves.incoming[index].handed_off && self.logs();
        if logged {
            if let Some(error) = self.log_refusal_error() {
                self.refuse_incoming(index, format!("its log refuses events now ({error:?})"));
                return Ok(());
            }
        }
        let partitioner = self.placement.partitioner();
        let m = &mut self.moves.incoming[index];
        for archive in events.iter() {
            let event = archive.get();
            let routed = partitioner.partition_of(event.hunt.get());
            if routed != m.partition {
                return Err(protocol(format!(
                    "partition {}'s tail carries an event of partition {}",
                    m.partition.0, routed.0
                )));
            }
        }
        for archive in events.iter() {
            m.state
                .as_mut()
                .expect("staged_index checked the state")
                .apply(archive.get());
            m.events += 1;
            m.bytes += archive.bytes().len() as u64;
        }
        if !logged {
            self.ack_incoming(index);
            return Ok(());
        }
        let partition = m.partition;
        let ack = HeldReply::MoveAck {
            link: m.link,
            partition: m.partition,
            part_epoch: m.part_epoch,
            events: m.events,
            bytes: m.bytes,
        };
        for archive in events.iter() {
            self.log_gated(partition, archive.bytes());
        }
        self.release_or_wait_for_sync(now_ns, ack);
        Ok(())
    }

    fn handle_move_handoff(&mut self, _link: ConnectionId, body: &[u8]) -> Result<(), MoveError> {
        let (head, records) = Self::move_head(FrameKind::MoveHandoff, body)?;
        if records.count() != 1 {
            return Err(protocol(
                "a MoveHandoff frame with more than its head".to_string(),
            ));
        }
        let Some(index) = self.staged_index(head)? else {
            return Ok(());
        };
        if self.moves.incoming[index].handed_off {
            return Err(protocol(format!(
                "partition {}: a second hand-off",
                head.partition.to_native()
            )));
        }
        self.moves.incoming[index].handed_off = true;
        if self.logs() {
            // Acknowledged once the staged state is durable (see the module documentation).
            match self.log_refusal_error() {
                Some(error) => {
                    self.refuse_incoming(index, format!("its log refuses events now ({error:?})"))
                }
                None => self.moves.incoming[index].install = Install::Queued,
            }
            return Ok(());
        }
        let partition = self.moves.incoming[index].partition;
        self.ack_incoming(index);
        self.hold_until_flip(partition);
        Ok(())
    }

    /// The source's seal: it saw the flip and applies none of the partition's events any more,
    /// and this shard has every one it applied. The partition is served here as soon as this
    /// node's placement flips it here too. A seal of a move this shard no longer stages (it
    /// dropped it, or served the partition when the link it came on closed) is answered with a
    /// refusal, so the source stops waiting for it.
    fn handle_move_seal(
        &mut self,
        now_ns: u64,
        link: ConnectionId,
        body: &[u8],
    ) -> Result<(), MoveError> {
        let frame = ValidatedFrame::<ArchivedMoveSeal>::validate(FrameKind::MoveSeal, body)?;
        let seal = frame
            .first()
            .ok_or_else(|| protocol("a MoveSeal frame without its record".to_string()))?
            .get();
        let (partition, part_epoch) = (seal.partition.to_native(), seal.part_epoch.to_native());
        let (seq, owner_epoch) = (seal.seq.to_native(), seal.owner_epoch.to_native());
        self.check_partition(partition)?;
        let Some(index) = self.moves.incoming_index(partition, part_epoch) else {
            let refusal = format!(
                "node {} shard {} no longer stages partition {partition}'s move",
                self.node.0, self.shard.0
            );
            self.queue_move_refusal(link, partition, part_epoch, refusal);
            return Ok(());
        };
        let m = &mut self.moves.incoming[index];
        if !m.handed_off || m.sealed || seq != m.events || owner_epoch <= part_epoch {
            return Err(protocol(format!(
                "partition {partition}: a seal at event {seq}, owner epoch {owner_epoch}, after {} events of the move at epoch {part_epoch} (hand-off {}, sealed {})",
                m.events, m.handed_off, m.sealed
            )));
        }
        m.sealed = true;
        let here = LinkDest {
            node: self.node,
            shard: self.shard,
        };
        self.know_flip((PartitionId(partition), Epoch(owner_epoch), here));
        self.install_sealed();
        self.settle_arriving(now_ns);
        Ok(())
    }

    /// Who owns `partition` as this shard serves it: the placement's owner, unless this
    /// shard knows of a later flip than the placement has (see `Moves::flips_known`).
    pub(super) fn owner_here(&self, partition: PartitionId) -> Owner {
        let owner = *self.placement.owner(partition);
        match self
            .moves
            .flips_known
            .iter()
            .find(|(p, ..)| *p == partition)
        {
            Some(&(_, part_epoch, to)) if part_epoch > owner.part_epoch => Owner {
                node: to.node,
                shard: to.shard,
                part_epoch,
                state: OwnerState::Serving,
            },
            _ => owner,
        }
    }

    fn know_flip(&mut self, flip: (PartitionId, Epoch, LinkDest)) {
        self.moves.flips_known.retain(|(p, ..)| *p != flip.0);
        self.moves.flips_known.push(flip);
    }

    /// Tells the source of each move whose flip this shard's placement shows, and whose seal
    /// has not come, that it flipped: the source seals at once (`MoveAck::flip_epoch`).
    fn notify_flips(&mut self) {
        for index in 0..self.moves.incoming.len() {
            let m = &self.moves.incoming[index];
            let owner = self.placement.owner(m.partition);
            let flipped_here = owner.node == self.node
                && owner.shard == self.shard
                && owner.part_epoch > m.part_epoch;
            if flipped_here && m.acked_handoff() && !m.sealed && !m.flip_notified {
                let flip_epoch = owner.part_epoch.get();
                self.moves.incoming[index].flip_notified = true;
                self.ack_incoming_with(index, flip_epoch);
            }
        }
    }

    /// Why this shard's log refuses events now, if it does.
    fn log_refusal_error(&self) -> Option<crate::core::message::EventError> {
        match self.log_refusal()? {
            crate::core::message::Outcome::Error { error } => Some(error),
            _ => None,
        }
    }

    /// Whether a handed-off partition waits for the shell to write it
    /// ([`Self::poll_move_install`]).
    pub fn move_install_queued(&self) -> bool {
        self.moves
            .incoming
            .iter()
            .any(|m| m.install == Install::Queued)
    }

    /// The next handed-off partition to make durable: a copy of its staged state and the LSN
    /// it covers. The shell writes it as the partition's snapshot file once the log is durable
    /// up to that LSN, then calls [`Self::handle_move_installed`] (or
    /// [`Self::handle_move_install_failed`]).
    pub fn poll_move_install(&mut self) -> Option<MoveInstall> {
        let lsn = self.last_lsn_given();
        let m = self
            .moves
            .incoming
            .iter_mut()
            .find(|m| m.install == Install::Queued)?;
        let state = m.state.as_ref().expect("handed off after its snapshot");
        m.install = Install::Writing { lsn };
        Some(MoveInstall {
            partition: m.partition,
            part_epoch: m.part_epoch,
            lsn,
            snapshot: state.export(),
        })
    }

    fn writing_index(&self, partition: PartitionId, part_epoch: Epoch, lsn: u64) -> Option<usize> {
        self.moves.incoming.iter().position(|m| {
            m.partition == partition
                && m.part_epoch == part_epoch
                && m.install == Install::Writing { lsn }
        })
    }

    /// The snapshot of a handed-off partition is durable: the hand-off is acknowledged (the
    /// source reports the move ready) and the partition's events wait here for the flip.
    /// Nothing when the move ended meanwhile (refused, abandoned): the file it wrote is a
    /// stale copy recovery drops (see the module documentation).
    pub fn handle_move_installed(&mut self, partition: PartitionId, part_epoch: Epoch, lsn: u64) {
        let Some(index) = self.writing_index(partition, part_epoch, lsn) else {
            return;
        };
        self.moves.incoming[index].install = Install::Done;
        self.stats.moves.in_durable += 1;
        self.ack_incoming(index);
        self.hold_until_flip(partition);
    }

    /// The shell could not write a handed-off partition's snapshot (`why`): the move is
    /// refused and its staged state dropped.
    pub fn handle_move_install_failed(
        &mut self,
        partition: PartitionId,
        part_epoch: Epoch,
        lsn: u64,
        why: String,
    ) {
        if let Some(index) = self.writing_index(partition, part_epoch, lsn) {
            self.refuse_incoming(index, why);
        }
    }

    /// The log's disk failed (`why`): every handed-off partition not durable yet is refused.
    pub(super) fn refuse_installs(&mut self, why: String) {
        let mut index = 0;
        while index < self.moves.incoming.len() {
            let m = &self.moves.incoming[index];
            if matches!(m.install, Install::Queued | Install::Writing { .. }) {
                self.refuse_incoming(index, why.clone());
            } else {
                index += 1;
            }
        }
    }

    /// Drops staged move `index` and tells its source why: the source reports the move
    /// refused, and the controller abandons it.
    fn refuse_incoming(&mut self, index: usize, why: String) {
        let m = self.moves.incoming.swap_remove(index);
        self.stats.moves.in_refused += 1;
        self.forget_staged(&m);
        let refusal = format!(
            "node {} shard {} cannot make partition {} durable: {why}",
            self.node.0, self.shard.0, m.partition.0
        );
        self.queue_move_refusal(m.link, m.partition.0, m.part_epoch.get(), refusal);
    }

    /// The partition was handed off here: its events wait for the flip (see [`Arriving`]).
    fn hold_until_flip(&mut self, partition: PartitionId) {
        let waiting = self.moves.arriving.iter().any(|a| a.partition == partition);
        if waiting || matches!(self.routes[partition.index()], Route::Local(_)) {
            return;
        }
        self.moves.arriving.push(Arriving {
            partition,
            hold: Hold::default(),
        });
        self.routes[partition.index()] = Route::Hold(partition);
    }

    /// Lets go of the events held for partitions whose flip came (they are served here now)
    /// or whose move was dropped, under the routes of the new placement.
    fn settle_arriving(&mut self, now_ns: u64) {
        let mut index = 0;
        while index < self.moves.arriving.len() {
            let partition = self.moves.arriving[index].partition;
            let staged = self
                .moves
                .incoming
                .iter()
                .any(|m| m.partition == partition && m.acked_handoff());
            if staged && !matches!(self.base_route(partition), Route::Local(_)) {
                index += 1;
                continue;
            }
            let arriving = self.moves.arriving.swap_remove(index);
            self.routes[partition.index()] = self.base_route(partition);
            self.patch_move_routes();
            self.ack_installed(now_ns, partition, Some(&arriving.hold));
            self.moves.held_now -= arriving.hold.events.len() as u64;
            for event in arriving.hold.events {
                self.release_held_event(now_ns, event);
            }
            self.after_release();
        }
        while let Some(partition) = self.moves.installed.first().map(|m| m.partition) {
            self.ack_installed(now_ns, partition, None);
        }
    }

    /// Acknowledges what move `index` has: every tail event, except at a target that logs,
    /// where the events after the hand-off wait for their sync ([`Self::ack_staged`]).
    fn ack_incoming(&mut self, index: usize) {
        self.ack_incoming_with(index, 0);
    }

    /// [`Self::ack_incoming`], telling the source the flip's partition epoch if not zero.
    fn ack_incoming_with(&mut self, index: usize, flip_epoch: u32) {
        let logs = self.logs();
        let m = &mut self.moves.incoming[index];
        if !(logs && m.handed_off) {
            m.confirmed = m.events;
            m.confirmed_bytes = m.bytes;
        }
        let ack = MoveAck {
            partition: m.partition.0,
            part_epoch: m.part_epoch.get(),
            snapshot_done: m.state.is_some(),
            events: m.confirmed,
            bytes: m.confirmed_bytes,
            handed_off: m.acked_handoff(),
            flip_epoch,
            ..MoveAck::default()
        };
        let link = m.link;
        self.queue_move_frame(link, &ack);
    }

    /// The first `events` tail events (`bytes` bytes) of a staged move, logged after its
    /// hand-off, are durable now: they are acknowledged, and a sealed move whose tail is all
    /// durable is served if its flip came. Nothing when the move ended meanwhile.
    pub(super) fn ack_staged(
        &mut self,
        now_ns: u64,
        link: ConnectionId,
        partition: PartitionId,
        part_epoch: Epoch,
        events: u64,
        bytes: u64,
    ) {
        let Some(index) =
            self.moves.incoming.iter().position(|m| {
                m.partition == partition && m.part_epoch == part_epoch && m.link == link
            })
        else {
            return;
        };
        let m = &mut self.moves.incoming[index];
        m.confirmed = m.confirmed.max(events);
        m.confirmed_bytes = m.confirmed_bytes.max(bytes);
        self.ack_incoming(index);
        if self.moves.incoming[index].sealed {
            self.install_sealed();
            self.settle_arriving(now_ns);
        }
    }

    fn queue_move_refusal(
        &mut self,
        link: ConnectionId,
        partition: u32,
        part_epoch: u32,
        refusal: String,
    ) {
        let ack = MoveAck {
            partition,
            part_epoch,
            refusal: bounded(refusal),
            ..MoveAck::default()
        };
        self.queue_move_frame(link, &ack);
    }

    /// Whether `m` may be served here once its flip comes: its hand-off was acknowledged,
    /// its source applies nothing more of it (it sealed the tail, or the link the move came on
    /// closed), and every tail event is confirmed (durable, at a target that logs).
    fn tail_complete(m: &IncomingMove) -> bool {
        m.acked_handoff() && m.sealed && m.confirmed == m.events
    }

    /// Whether `partition`, which the placement gives this shard at `part_epoch`, waits for
    /// its move's tail to be complete before it is served (its events are held meanwhile).
    pub(super) fn awaits_seal(&self, partition: PartitionId, part_epoch: Epoch) -> bool {
        self.moves.incoming.iter().any(|m| {
            m.partition == partition
                && m.acked_handoff()
                && m.part_epoch < part_epoch
                && !Self::tail_complete(m)
        })
    }

    /// Staged state of `partition` for an owner epoch of `part_epoch`: the state of a move
    /// handed off at an earlier epoch whose tail is complete, which the flip makes this
    /// shard's. Its source hears so once the events held for it are let go.
    pub(super) fn take_staged(
        &mut self,
        partition: PartitionId,
        part_epoch: Epoch,
    ) -> Option<PartitionState> {
        let index = self.moves.incoming.iter().position(|m| {
            m.partition == partition && m.part_epoch < part_epoch && Self::tail_complete(m)
        })?;
        let mut m = self.moves.incoming.swap_remove(index);
        self.stats.moves.in_installed += 1;
        let state = m.state.take();
        self.moves.installed.push(m);
        state
    }

    /// Serves the sealed moves whose flip this node has seen already.
    fn install_sealed(&mut self) {
        let mut index = 0;
        while index < self.moves.incoming.len() {
            let m = &self.moves.incoming[index];
            let partition = m.partition;
            let owner = self.owner_here(partition);
            let here = owner.node == self.node
                && owner.shard == self.shard
                && self.lease.serves(&owner)
                && self.partitions[partition.index()].is_none();
            if !here || m.part_epoch >= owner.part_epoch || !Self::tail_complete(m) {
                index += 1;
                continue;
            }
            let state = self.take_staged(partition, owner.part_epoch);
            self.partitions[partition.index()] = state;
            self.routes[partition.index()] = self.base_route(partition);
        }
        self.patch_move_routes();
    }

    /// Tells the sources of the moves installed here that their seal arrived, with the
    /// events held for the partition meanwhile and how long the first waited.
    fn ack_installed(&mut self, now_ns: u64, partition: PartitionId, held: Option<&Hold>) {
        let Some(index) = self
            .moves
            .installed
            .iter()
            .position(|m| m.partition == partition)
        else {
            return;
        };
        let m = self.moves.installed.swap_remove(index);
        let (events_held, pause_ns) = held.map_or((0, 0), |hold| hold.pause(now_ns));
        let ack = MoveAck {
            partition: m.partition.0,
            part_epoch: m.part_epoch.get(),
            snapshot_done: true,
            events: m.events,
            bytes: m.bytes,
            handed_off: true,
            sealed: true,
            events_held,
            pause_ns,
            ..MoveAck::default()
        };
        self.queue_move_frame(m.link, &ack);
    }

    /// Drops staged moves the placement went past without flipping them here.
    fn settle_incoming(&mut self) {
        let mut index = 0;
        while index < self.moves.incoming.len() {
            let m = &self.moves.incoming[index];
            let owner = self.placement.owner(m.partition);
            let ours = owner.node == self.node && owner.shard == self.shard;
            if owner.part_epoch > m.part_epoch && !(ours && m.acked_handoff()) {
                let m = self.moves.incoming.swap_remove(index);
                self.stats.moves.in_dropped += 1;
                self.forget_staged(&m);
            } else {
                index += 1;
            }
        }
    }

    /// Inbound link `link` closed: moves whose hand-off it had not acknowledged are dropped
    /// (their source reports the failure); acknowledged ones are complete with what came
    /// (their source can send nothing more, and answers nothing it could not confirm), and
    /// are served at their flip.
    pub(super) fn drop_moves_of_link(&mut self, now_ns: u64, link: ConnectionId) {
        let mut index = 0;
        while index < self.moves.incoming.len() {
            let m = &mut self.moves.incoming[index];
            if m.link != link {
                index += 1;
                continue;
            }
            if m.acked_handoff() {
                m.sealed = true;
                index += 1;
                continue;
            }
            let m = self.moves.incoming.swap_remove(index);
            self.stats.moves.in_dropped += 1;
            self.forget_staged(&m);
        }
        self.install_sealed();
        self.settle_arriving(now_ns);
    }

    /// A staged move was dropped: if its snapshot file is (or is being) written, the store
    /// forgets it once the partition is gone from here (see [`Self::poll_departed`]), so the
    /// file of an abandoned install does not stay until the next start.
    fn forget_staged(&mut self, m: &IncomingMove) {
        if matches!(m.install, Install::Writing { .. } | Install::Done) {
            self.note_departed(m.partition);
        }
    }

    /// Whether `partition` left this shard for good: the placement (one the node was given)
    /// has it on another shard, and this shard holds no state of it, served or staged. The
    /// store then forgets it (its snapshots, and the log it holds back).
    pub fn partition_gone(&self, partition: PartitionId) -> bool {
        let owner = self.placement.owner(partition);
        let owned = owner.node == self.node && owner.shard == self.shard;
        self.placed
            && !owned
            && self.partition(partition).is_none()
            && !self.moves.incoming.iter().any(|m| m.partition == partition)
    }

    /// Partitions staged here now (for tests and reports).
    pub fn moves_staged(&self) -> usize {
        self.moves.incoming.len()
    }

    /// Events held now, over every move.
    pub fn move_events_held(&self) -> u64 {
        self.moves.held_now
    }
}
