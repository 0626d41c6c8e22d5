//! Links to and from shards of other nodes, sans-IO: the events this shard forwards to the
//! owner of their partition on another node, and the events shards of other nodes forward to
//! it. Shard-local, like the core; the bytes cross the network in the shell (`net::link`).
//!
//! ```text
//! sender:    dispatch ─ Route::Node(node, shard) ─▶ outgoing link (node, shard)
//!            poll_links_ready() / poll_link(dest, &mut bytes) ─▶ LinkEvents frames to write
//!            handle_link_replies(now, dest, body) ◀─ LinkReplies frames
//! receiver:  handle_link_hello(now, header, body, &mut answer) ─▶ an inbound link id
//!            handle_link_events(now, link, body) ─ re-route, apply Local only
//!            poll_link_writable() / poll_link_replies(link, &mut bytes) ─▶ LinkReplies frames
//! ```
//!
//! A link carries the events' archived bytes exactly as their clients sent them, each with a
//! token the sender chooses (the last record of a `LinkEvents` frame lists them); replies come
//! back with their tokens (the last record of a `LinkReplies` frame). Like the mesh, a link is
//! bounded by credit: the sender takes socket credit for the event, as for a mesh forward, and
//! its share of the destination's link budget, returned when the reply comes back; the
//! receiver checks the share again and closes a link whose sender goes past it.
//!
//! The receiver re-routes every event and applies only the ones it serves; any other is
//! answered `Moved` or `Unavailable` on the link, never forwarded a second time. In sync mode
//! its replies wait for their log records as mesh replies do.
//!
//! A link that fails answers everything it carried: events not yet handed to the shell to
//! write are answered `Unavailable` (naming their partition); events handed out whose reply never came are answered
//! `OutcomeUnknown`, since the other node may or may not have applied them. A reply with a
//! token the sender does not know is a protocol error: the link is closed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasherDefault;

use crate::constants::{
    ARCHIVE_ALIGN, LINK_BATCH_EVENTS_MAX, LINK_BUFFER_RETAINED_BYTES_MAX, LINK_PENDING_ENTRY_BYTES,
    LINK_SOURCES_PER_SHARD_MAX, LINK_TOKENS_RECORD_BYTES_MAX, LINKS_PER_SHARD_MAX, REPLY_BYTES_MAX,
};
use crate::core::codec::{
    FrameBuilder, FrameError, FrameHeader, FrameKind, Records, ValidatedArchive, ValidatedFrame,
    WireArchive, access_record,
};
use crate::core::credit::{Acquire, Credit, CreditPool};
use crate::core::hunt::IdHasher;
use crate::core::ids::{ConnectionId, NodeId, PartitionId, ShardId};
use crate::core::message::{
    ArchivedEvent, ArchivedLinkAccepted, ArchivedLinkHello, ArchivedLinkTokens, ArchivedReply,
    EventError, LinkAccepted, LinkHello, LinkTokens, MoveAck, Outcome, Reply,
};
use crate::core::shard::ShardCore;
use crate::core::shard::counters::KindIndex;
use crate::core::shard::durability::HeldReply;
use crate::core::shard::mesh::BatchEntry;
use crate::core::shard::routing::{reply_to, unavailable};

/// Error code of the frame that refuses a link at its handshake. Codes below 100 are
/// `FrameError` codes; 100–102 are the connection limit, authentication and shutdown.
pub const ERROR_CODE_LINK_REFUSED: u16 = 103;
/// Error code of the frame that closes a link for a protocol error of its peer.
pub const ERROR_CODE_LINK_PROTOCOL: u16 = 104;

/// A shard of another node: where an outgoing link goes, or where an inbound one comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkDest {
    pub node: NodeId,
    pub shard: ShardId,
}

/// What the task of an outgoing link should do next ([`ShardCore::poll_link`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPoll {
    /// Events wait and the link is not connected: connect, send the hello, and report the
    /// answer with [`ShardCore::handle_link_connected`] (or [`ShardCore::handle_link_failed`]).
    Connect,
    /// This many bytes of `LinkEvents` frames were appended: write them.
    Write(usize),
    /// The shard is stopping and nothing is in flight on the link: close it.
    Close,
}

/// Why a link's peer broke the protocol; the link is closed (an outgoing one with
/// [`ShardCore::handle_link_failed`], an inbound one with [`ShardCore::handle_link_closed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The frame itself is malformed.
    Frame(FrameError),
    /// A link frame without its token record, or with a token count that is not its record
    /// count.
    Tokens { records: usize, tokens: usize },
    /// A reply names a token no event in flight on the link has.
    UnknownToken { token: u64 },
    /// The sender has more in flight than its share of this shard's link budget.
    OverShare {
        held: Credit,
        frame: Credit,
        share: Credit,
    },
    /// The handshake answer names another shard than the one the link was opened to, or
    /// grants less than this shard's share assumes.
    BadAccept { detail: String },
}

impl From<FrameError> for LinkError {
    fn from(error: FrameError) -> LinkError {
        LinkError::Frame(error)
    }
}

impl LinkError {
    /// The code of the error frame that closes the link.
    pub fn code(&self) -> u16 {
        match self {
            LinkError::Frame(error) => error.code(),
            _ => ERROR_CODE_LINK_PROTOCOL,
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Frame(error) => write!(f, "link frame: {error}"),
            LinkError::Tokens { records, tokens } => write!(
                f,
                "a link frame carries {records} records but {tokens} tokens; the peer runs an incompatible trove"
            ),
            LinkError::UnknownToken { token } => write!(
                f,
                "a link reply names token {token}, which no event in flight on the link has; the link is closed"
            ),
            LinkError::OverShare { held, frame, share } => write!(
                f,
                "the sending shard has {held:?} in flight and sent {frame:?} more, past its share {share:?} of this shard's link budget; the link is closed"
            ),
            LinkError::BadAccept { detail } => write!(f, "link handshake: {detail}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// What an outgoing link keeps per event until its reply comes back: where the reply goes,
/// and enough of the event to answer it if the link fails (its bytes are gone by then),
/// `Unavailable` answers naming its partition.
#[derive(Clone, Copy, Debug)]
struct LinkPending {
    entry: BatchEntry,
    client_seq: u64,
    client_ts: u64,
    partition: PartitionId,
    kind: KindIndex,
}

// The memory sum in `constants` counts a pending event (a hash map slot) as this much.
// (the `<` leaves room for the map's control byte)
const _: () = assert!(size_of::<(u64, LinkPending)>() < LINK_PENDING_ENTRY_BYTES);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Not connected; connects when an event is queued.
    Idle,
    /// The shell is connecting; events queue.
    Connecting,
    /// Connected and accepted: frames are handed out.
    Up,
    /// Failed; events for it are answered `Unavailable` until the shell tries again
    /// ([`ShardCore::handle_link_retry`]).
    Down,
    /// Closed for good (the shard stopped).
    Closed,
}

/// One outgoing link of this shard.
struct OutLink {
    state: LinkState,
    /// This shard's share of the destination's link budget.
    credit: CreditPool,
    /// Finished `LinkEvents` frames, and the one being filled.
    frames: FrameBuilder,
    /// Frames finished in `frames`.
    frames_sealed: u64,
    /// The tokens of the open frame's events, in order.
    open_tokens: Vec<u64>,
    next_token: u64,
    /// Tokens below this were handed to the shell to write.
    handed_through: u64,
    /// Archived bytes of the events queued and not yet handed to the shell.
    queued_bytes: u64,
    /// By token. The tokens are this shard's own, one after another (a peer's reply can only
    /// look one up), so `IdHasher`'s multiply-and-fold spreads them well enough, without the
    /// cost of the default SipHash (in `benches/link_hop.rs` the map's insert, remove and
    /// hashing took 16% of the forwarding core's samples with SipHash, 12% without).
    pending: HashMap<u64, LinkPending, BuildHasherDefault<IdHasher>>,
    ready_listed: bool,
}

impl OutLink {
    fn new(share: Credit) -> OutLink {
        OutLink {
            state: LinkState::Idle,
            credit: CreditPool::new(share),
            frames: FrameBuilder::new(),
            frames_sealed: 0,
            open_tokens: Vec::new(),
            next_token: 1,
            handed_through: 1,
            queued_bytes: 0,
            pending: HashMap::default(),
            ready_listed: false,
        }
    }
}

/// One inbound link: a connection of its own kind, from a shard of another node.
struct InboundLink {
    id: ConnectionId,
    source: LinkDest,
    /// The source's share of this shard's link budget, as this shard checks it: held by
    /// every event from the source until its reply is handed to the writer.
    credit: CreditPool,
    /// `LinkReplies` frames waiting for the writer, and the one being filled.
    out: FrameBuilder,
    /// Frames finished in `out`.
    out_sealed: u64,
    out_tokens: Vec<u64>,
    /// Credit of the replies in `out`.
    out_credit: Credit,
    writable_listed: bool,
}

/// The shard's links. See the module documentation.
#[derive(Default)]
pub(super) struct Links {
    out: BTreeMap<LinkDest, OutLink>,
    ready: Vec<LinkDest>,
    inbound: Vec<Option<InboundLink>>,
    inbound_generation: u32,
    writable: Vec<ConnectionId>,
    /// Outgoing links the core failed, for the shell to close (at most one entry per link:
    /// bounded by `LINKS_PER_SHARD_MAX`).
    failed: Vec<LinkDest>,
}

impl Links {
    /// Credit this shard holds at other nodes' shards, summed.
    pub fn held(&self) -> Credit {
        self.out
            .values()
            .fold(Credit::ZERO, |sum, link| sum.plus(link.credit.held()))
    }

    /// Nothing is queued or held for an inbound link's writer.
    pub fn inbound_drained(&self) -> bool {
        self.inbound
            .iter()
            .flatten()
            .all(|link| link.credit.is_idle() && link.out.is_empty())
    }

    fn inbound_mut(&mut self, id: ConnectionId) -> Option<&mut InboundLink> {
        self.inbound
            .get_mut(id.slot())?
            .as_mut()
            .filter(|link| link.id == id)
    }

    fn list_ready(&mut self, dest: LinkDest) {
        if let Some(link) = self.out.get_mut(&dest) {
            if !link.ready_listed {
                link.ready_listed = true;
                self.ready.push(dest);
            }
        }
    }

    /// Lists the outgoing link to `dest` for its task to look at (a move has frames for it).
    pub(super) fn list_ready_dest(&mut self, dest: LinkDest) {
        self.list_ready(dest);
    }

    /// Lists every outgoing link (a stopping shard's links look again, to close).
    pub fn list_all_ready(&mut self) {
        let dests: Vec<LinkDest> = self.out.keys().copied().collect();
        for dest in dests {
            self.list_ready(dest);
        }
    }

    fn list_writable(&mut self, id: ConnectionId) {
        if let Some(link) = self.inbound_mut(id) {
            if !link.writable_listed {
                link.writable_listed = true;
                self.writable.push(id);
            }
        }
    }
}

/// Whether one more record of `len` bytes fits the open link frame with room left for its
/// token record, and the batch is not full.
fn room_for(frames: &FrameBuilder, len: usize) -> bool {
    frames.open_records() < LINK_BATCH_EVENTS_MAX
        && frames.fits(len + LINK_TOKENS_RECORD_BYTES_MAX + ARCHIVE_ALIGN)
}

/// Closes the open link frame, if any: its token record, then its header. Returns whether
/// there was one.
fn seal(frames: &mut FrameBuilder, tokens: &mut Vec<u64>, epoch: u32) -> bool {
    if !frames.is_open() {
        return false;
    }
    let record = LinkTokens {
        tokens: std::mem::take(tokens),
    };
    frames
        .push(&record)
        .expect("room for the token record is kept while the frame fills");
    *tokens = record.tokens;
    tokens.clear();
    frames.finish(epoch);
    true
}

/// A link frame's records, validated once as `T`, and their tokens.
fn split_link_frame<T: WireArchive>(
    kind: FrameKind,
    body: &[u8],
) -> Result<(ValidatedFrame<'_, T>, &ArchivedLinkTokens), LinkError> {
    let records = Records::parse(kind, body)?;
    let count = records.count();
    let Some((head, last)) = records.split_last() else {
        return Err(LinkError::Tokens {
            records: 0,
            tokens: 0,
        });
    };
    let tokens = access_record::<ArchivedLinkTokens>(count - 1, last)?;
    let records = ValidatedFrame::<T>::validate_from(head, 0)?;
    if tokens.tokens.len() != records.len() {
        return Err(LinkError::Tokens {
            records: records.len(),
            tokens: tokens.tokens.len(),
        });
    }
    Ok((records, tokens))
}

/// What the sender does with an event routed to another node (see `admission`).
pub(super) enum LinkAdmit {
    /// No link can carry it: answer with this at once, without credit.
    Answer(Outcome),
    /// The link may carry it once its credit covers the event.
    Forward(LinkDest),
}

impl ShardCore {
    // ---- sender ------------------------------------------------------------------------

    /// Whether an event for `dest` can go over a link, or the answer it gets instead: a
    /// single node has no links (`Moved`, the owner hint); a link that failed answers
    /// `Unavailable` until it is tried again; a shard with `LINKS_PER_SHARD_MAX` links
    /// answers `Moved` for any other destination.
    pub(super) fn link_admit(&self, dest: LinkDest, event: &ArchivedEvent) -> LinkAdmit {
        if self.config.cluster.is_none() {
            return LinkAdmit::Answer(self.moved(event));
        }
        match self.links.out.get(&dest).map(|link| link.state) {
            Some(LinkState::Down | LinkState::Closed) => {
                let partition = self.placement.partitioner().partition_of(event.hunt.get());
                LinkAdmit::Answer(unavailable(partition))
            }
            Some(_) => LinkAdmit::Forward(dest),
            None if self.links.out.len() >= LINKS_PER_SHARD_MAX => {
                LinkAdmit::Answer(self.moved(event))
            }
            None => LinkAdmit::Forward(dest),
        }
    }

    /// Whether this shard's share of `dest`'s link budget covers `credit` now.
    pub(super) fn link_credit_covers(&self, dest: LinkDest, credit: Credit) -> bool {
        self.links
            .out
            .get(&dest)
            .is_none_or(|link| link.credit.available().covers(credit))
    }

    /// Takes link credit at `dest` (opening the link's state on first use) if it covers
    /// `credit`.
    pub(super) fn try_take_link_credit(&mut self, dest: LinkDest, credit: Credit) -> bool {
        let share = self.config.link_budget_per_source;
        let link = self
            .links
            .out
            .entry(dest)
            .or_insert_with(|| OutLink::new(share));
        link.credit.try_acquire(credit) == Acquire::Granted
    }

    /// Appends an admitted event's archive, unchanged, to the next `LinkEvents` frame for
    /// `dest` (whose link credit the caller took), keeping its entry under a new token.
    pub(super) fn forward_to_node(
        &mut self,
        now_ns: u64,
        dest: LinkDest,
        id: ConnectionId,
        archive: ValidatedArchive<'_, ArchivedEvent>,
        credit: Credit,
    ) {
        let epoch = self.placement.epoch().get();
        let link = self.links.out.get_mut(&dest).expect("credit taken first");
        let bytes = archive.bytes();
        if !room_for(&link.frames, bytes.len())
            && seal(&mut link.frames, &mut link.open_tokens, epoch)
        {
            link.frames_sealed += 1;
        }
        if !link.frames.is_open() {
            link.frames.begin(FrameKind::LinkEvents);
        }
        link.frames
            .push_archived(bytes)
            .expect("a validated event fits an empty link frame");
        let token = link.next_token;
        link.next_token += 1;
        link.open_tokens.push(token);
        let event = archive.get();
        link.pending.insert(
            token,
            LinkPending {
                entry: BatchEntry {
                    connection: id,
                    credit,
                    forwarded_ns: now_ns,
                },
                client_seq: event.client_seq.to_native(),
                client_ts: event.client_ts.to_native(),
                partition: self.placement.partitioner().partition_of(event.hunt.get()),
                kind: KindIndex::of(&event.kind),
            },
        );
        if link.state == LinkState::Idle {
            link.state = LinkState::Connecting;
        }
        link.queued_bytes += bytes.len() as u64;
        self.links.list_ready(dest);
    }

    /// An outgoing link whose task should look again ([`Self::poll_link`]); each is listed
    /// once until taken.
    pub fn poll_links_ready(&mut self) -> Option<LinkDest> {
        let dest = self.links.ready.pop()?;
        if let Some(link) = self.links.out.get_mut(&dest) {
            link.ready_listed = false;
        }
        Some(dest)
    }

    /// What the task of the link to `dest` does next. Frames are appended to `out` whole.
    pub fn poll_link(&mut self, dest: LinkDest, out: &mut Vec<u8>) -> Option<LinkPoll> {
        let epoch = self.placement.epoch().get();
        let stopping = self.stopping;
        let streaming = self.moves.streams_to(dest);
        let link = self.links.out.get_mut(&dest)?;
        match link.state {
            LinkState::Connecting if !link.pending.is_empty() || streaming => {
                Some(LinkPoll::Connect)
            }
            LinkState::Up if link.frames.is_empty() && !streaming => {
                if stopping && link.pending.is_empty() {
                    link.state = LinkState::Closed;
                    return Some(LinkPoll::Close);
                }
                None
            }
            LinkState::Up => {
                let start = out.len();
                let sealed = seal(&mut link.frames, &mut link.open_tokens, epoch);
                let frames = std::mem::take(&mut link.frames_sealed) + u64::from(sealed);
                out.extend_from_slice(link.frames.bytes());
                link.frames.clear(LINK_BUFFER_RETAINED_BYTES_MAX);
                // Counted as sent once handed to the socket: events answered before that (a
                // refused handshake, a link that failed while connecting) never left.
                self.stats.links.events_sent += link.next_token - link.handed_through;
                self.stats.links.bytes_sent += std::mem::take(&mut link.queued_bytes);
                link.handed_through = link.next_token;
                self.stats.links.batches_sent += frames;
                self.take_move_frames(dest, out);
                Some(LinkPoll::Write(out.len() - start))
            }
            LinkState::Idle | LinkState::Down if stopping && link.pending.is_empty() => {
                link.state = LinkState::Closed;
                Some(LinkPoll::Close)
            }
            _ => None,
        }
    }

    /// The link to `dest` is connected and its peer accepted the hello: queued frames go out.
    pub fn handle_link_connected(
        &mut self,
        _now_ns: u64,
        dest: LinkDest,
        accepted: &ArchivedLinkAccepted,
    ) -> Result<(), LinkError> {
        let Some(link) = self.links.out.get_mut(&dest) else {
            return Ok(());
        };
        let (node, shard) = (accepted.node.to_native(), accepted.shard.to_native());
        if (NodeId(node), ShardId(shard)) != (dest.node, dest.shard) {
            return Err(LinkError::BadAccept {
                detail: format!(
                    "opened to node {} shard {} but node {node} shard {shard} answered; the node's registered address is stale",
                    dest.node.0, dest.shard.0
                ),
            });
        }
        let grant = Credit::new(
            accepted.events_inflight_max.to_native(),
            accepted.bytes_inflight_max.to_native(),
        );
        if !grant.covers(link.credit.capacity()) {
            return Err(LinkError::BadAccept {
                detail: format!(
                    "node {node} shard {shard} grants {grant:?} per source, less than this shard's share {:?}; run the same trove version on every node",
                    link.credit.capacity()
                ),
            });
        }
        link.state = LinkState::Up;
        self.links.list_ready(dest);
        Ok(())
    }

    /// Replies from `dest`: each goes to its connection as a mesh reply does, and returns the
    /// credit its event held. `Err` is a protocol error: the shell closes the link and reports
    /// it with [`Self::handle_link_failed`].
    pub fn handle_link_replies(
        &mut self,
        now_ns: u64,
        dest: LinkDest,
        body: &[u8],
    ) -> Result<(), LinkError> {
        if !self.links.out.contains_key(&dest) {
            return Ok(());
        }
        let (replies, tokens) = split_link_frame::<ArchivedReply>(FrameKind::LinkReplies, body)?;
        self.stats.links.batches_received += 1;
        for (reply, token) in replies.iter().zip(tokens.tokens.iter()) {
            let token = token.to_native();
            let link = self.links.out.get_mut(&dest).expect("checked above");
            let Some(pending) = link.pending.remove(&token) else {
                self.stats.links.protocol_errors += 1;
                return Err(LinkError::UnknownToken { token });
            };
            link.credit.release(pending.entry.credit);
            self.stats
                .stages
                .link_round_trip_ns
                .saturating_record(now_ns.saturating_sub(pending.entry.forwarded_ns).max(1));
            self.deliver_reply(
                pending.entry.connection,
                reply.bytes(),
                pending.entry.credit,
            );
        }
        if !replies.is_empty() {
            self.after_release();
            self.links.list_ready(dest);
        }
        Ok(())
    }

    /// The link to `dest` failed (connect, handshake, read, write or a protocol error):
    /// events not yet handed out are answered `Unavailable { partition }`, events handed out and not
    /// answered `OutcomeUnknown`, in the order they were forwarded. Until
    /// [`Self::handle_link_retry`], new events for `dest` are answered `Unavailable`.
    pub fn handle_link_failed(&mut self, now_ns: u64, dest: LinkDest) {
        let Some(link) = self.links.out.get_mut(&dest) else {
            return;
        };
        let handed_through = link.handed_through;
        let mut pending: Vec<(u64, LinkPending)> = link.pending.drain().collect();
        pending.sort_unstable_by_key(|(token, _)| *token);
        link.frames.clear(0);
        link.frames_sealed = 0;
        link.queued_bytes = 0;
        link.open_tokens.clear();
        link.handed_through = link.next_token;
        if link.state != LinkState::Closed {
            link.state = LinkState::Down;
        }
        if !pending.is_empty() {
            self.stats.links.links_failed += 1;
        }
        if !self.links.failed.contains(&dest) {
            self.links.failed.push(dest);
        }
        for (token, pending) in pending {
            let outcome = if token < handed_through {
                Outcome::Error {
                    error: EventError::OutcomeUnknown,
                }
            } else {
                unavailable(pending.partition)
            };
            let link = self.links.out.get_mut(&dest).expect("looked up above");
            link.credit.release(pending.entry.credit);
            self.stats.events.count_kind(pending.kind, &outcome);
            let reply = Reply {
                client_seq: pending.client_seq,
                client_ts: pending.client_ts,
                outcome,
            };
            self.deliver_reply_value(pending.entry.connection, &reply, pending.entry.credit);
        }
        self.fail_moves_to(now_ns, dest);
        self.after_release();
        self.links.list_ready(dest);
    }

    /// Opens (or keeps) the outgoing link to `dest` for a move's frames; why not, when no
    /// link can carry them.
    pub(super) fn open_link_for_move(&mut self, dest: LinkDest) -> Result<(), String> {
        if self.config.cluster.is_none() {
            return Err("a single node has no links to move partitions over".to_string());
        }
        let share = self.config.link_budget_per_source;
        let count = self.links.out.len();
        let link = match self.links.out.get_mut(&dest) {
            Some(link) => link,
            None if count >= LINKS_PER_SHARD_MAX => {
                return Err(format!(
                    "this shard already keeps {LINKS_PER_SHARD_MAX} links (LINKS_PER_SHARD_MAX); none is left for node {} shard {}",
                    dest.node.0, dest.shard.0
                ));
            }
            None => self
                .links
                .out
                .entry(dest)
                .or_insert_with(|| OutLink::new(share)),
        };
        match link.state {
            LinkState::Down | LinkState::Closed => Err(format!(
                "the link to node {} shard {} is down",
                dest.node.0, dest.shard.0
            )),
            LinkState::Idle => {
                link.state = LinkState::Connecting;
                Ok(())
            }
            LinkState::Connecting | LinkState::Up => Ok(()),
        }
    }

    /// An outgoing link the core failed (or was told failed): the shell closes its socket if
    /// it is still open. Each is listed once until taken.
    pub fn poll_links_failed(&mut self) -> Option<LinkDest> {
        self.links.failed.pop()
    }

    /// The shell's back-off after a failure of the link to `dest` is over: the next event
    /// for it opens the link again.
    pub fn handle_link_retry(&mut self, _now_ns: u64, dest: LinkDest) {
        if let Some(link) = self.links.out.get_mut(&dest) {
            if link.state == LinkState::Down && !self.stopping {
                link.state = LinkState::Idle;
            }
        }
    }

    /// Fails every outgoing link whose destination serves no partition in the current
    /// placement (its node's lease ended, its partitions are `Offline` or moved): what it
    /// carried will not be answered.
    pub(super) fn fail_links_to_absent_owners(&mut self, now_ns: u64) {
        let absent: Vec<LinkDest> = self
            .links
            .out
            .iter()
            .filter(|(_, link)| !link.pending.is_empty())
            .map(|(dest, _)| *dest)
            .filter(|dest| {
                self.placement
                    .partitions_served_by(dest.node, dest.shard)
                    .next()
                    .is_none()
            })
            .collect();
        for dest in absent {
            self.handle_link_failed(now_ns, dest);
        }
    }

    /// A reply this shard made itself (a failed link's answer) for an event of connection
    /// `id` that was away: queued like a reply that came back.
    fn deliver_reply_value(&mut self, id: ConnectionId, reply: &Reply, credit: Credit) {
        if self.reply_came_back(id, credit) {
            self.queue_reply(id, reply, credit);
        }
    }

    /// The hello frame this shard sends first on each link it opens.
    pub fn link_hello_frame(&self) -> Vec<u8> {
        let hello = LinkHello {
            cluster: self.config.cluster.clone().unwrap_or_default(),
            node: self.node.0,
            shard: self.shard.0,
            epoch: self.placement.epoch().get(),
        };
        let mut frames = FrameBuilder::new();
        frames
            .single(FrameKind::LinkHello, hello.epoch, Some(&hello))
            .expect("a cluster name of at most CLUSTER_NAME_BYTES_MAX fits the hello");
        frames.bytes().to_vec()
    }

    /// Credit this shard holds now at `dest` (its share of that shard's link budget).
    pub fn link_credit_held(&self, dest: LinkDest) -> Credit {
        self.links
            .out
            .get(&dest)
            .map_or(Credit::ZERO, |link| link.credit.held())
    }

    // ---- receiver ----------------------------------------------------------------------

    /// The first frame of a connection on this shard's port was a `LinkHello`: accepts the
    /// link when this shard is in a cluster of that name and the node is in its placement,
    /// and appends the answer to `answer` (a `LinkAccepted` frame, or an `Error` frame that
    /// says why, after which the shell closes).
    pub fn handle_link_hello(
        &mut self,
        _now_ns: u64,
        header: &FrameHeader,
        body: &[u8],
        answer: &mut FrameBuilder,
    ) -> Option<ConnectionId> {
        let epoch = self.placement.epoch().get();
        let refusal = match self.link_refusal(header, body) {
            Ok(source) => {
                if let Some(id) = self.insert_inbound(source) {
                    let accepted = LinkAccepted {
                        node: self.node.0,
                        shard: self.shard.0,
                        events_inflight_max: self.config.link_budget_per_source.events,
                        bytes_inflight_max: self.config.link_budget_per_source.bytes,
                    };
                    answer
                        .single(FrameKind::LinkAccepted, epoch, Some(&accepted))
                        .expect("an acceptance fits its frame");
                    return Some(id);
                }
                format!(
                    "node {} shard {} already accepts {LINK_SOURCES_PER_SHARD_MAX} links; no more are taken",
                    self.node.0, self.shard.0
                )
            }
            Err(refusal) => refusal,
        };
        self.stats.links.links_refused += 1;
        answer.error_message(epoch, ERROR_CODE_LINK_REFUSED, refusal);
        None
    }

    /// Why a hello is refused, or who sent it.
    fn link_refusal(&self, header: &FrameHeader, body: &[u8]) -> Result<LinkDest, String> {
        if header.kind != FrameKind::LinkHello {
            return Err(format!(
                "a link starts with a LinkHello frame, not {:?}",
                header.kind
            ));
        }
        let hello = ValidatedFrame::<ArchivedLinkHello>::validate(header.kind, body)
            .map_err(|error| format!("link hello: {error}"))?
            .first()
            .ok_or_else(|| "a link hello frame without its hello".to_string())?
            .get();
        let Some(cluster) = &self.config.cluster else {
            return Err(format!(
                "node {} is a single node, not in a cluster: it accepts no links (cluster {:?} asked)",
                self.node.0,
                hello.cluster.as_str()
            ));
        };
        if hello.cluster.as_str() != cluster {
            return Err(format!(
                "node {} is in cluster {cluster:?}, not {:?}: a link from another cluster is refused; check --cluster-name",
                self.node.0,
                hello.cluster.as_str()
            ));
        }
        let node = NodeId(hello.node.to_native());
        let shard = ShardId(hello.shard.to_native());
        if node == self.node || !self.placement.owners().iter().any(|o| o.node == node) {
            return Err(format!(
                "node {} of cluster {cluster:?} is not in this node's placement (epoch {}); links come only from its other nodes",
                node.0,
                self.placement.epoch().get()
            ));
        }
        Ok(LinkDest { node, shard })
    }

    fn insert_inbound(&mut self, source: LinkDest) -> Option<ConnectionId> {
        let links = &mut self.links;
        let slot = match links.inbound.iter().position(Option::is_none) {
            Some(slot) => slot,
            None if links.inbound.len() < LINK_SOURCES_PER_SHARD_MAX => {
                links.inbound.push(None);
                links.inbound.len() - 1
            }
            None => return None,
        };
        let id = ConnectionId::new(slot as u32, links.inbound_generation);
        links.inbound_generation = links.inbound_generation.wrapping_add(1);
        links.inbound[slot] = Some(InboundLink {
            id,
            source,
            credit: CreditPool::new(self.config.link_budget_per_source),
            out: FrameBuilder::new(),
            out_sealed: 0,
            out_tokens: Vec::new(),
            out_credit: Credit::ZERO,
            writable_listed: false,
        });
        Some(id)
    }

    /// A `LinkEvents` frame on inbound link `link`: every event is re-routed; the ones this
    /// shard serves are applied, any other is answered `Moved` or `Unavailable` (never sent
    /// on); each reply goes back with its token. `Err` is a protocol error: the shell sends
    /// an error frame and closes, then calls [`Self::handle_link_closed`].
    pub fn handle_link_events(
        &mut self,
        now_ns: u64,
        link: ConnectionId,
        body: &[u8],
    ) -> Result<(), LinkError> {
        if self.links.inbound_mut(link).is_none() {
            return Ok(());
        }
        let (events, tokens) = split_link_frame::<ArchivedEvent>(FrameKind::LinkEvents, body)?;
        let frame = events.iter().fold(Credit::ZERO, |sum, event| {
            sum.plus(Credit::new(1, event.bytes().len() as u32))
        });
        let inbound = self.links.inbound_mut(link).expect("checked above");
        if inbound.credit.try_acquire(frame) != Acquire::Granted {
            let (held, share) = (inbound.credit.held(), inbound.credit.capacity());
            self.stats.links.protocol_errors += 1;
            return Err(LinkError::OverShare { held, frame, share });
        }
        self.stats.links.batches_received += 1;
        self.stats.links.events_received += events.len() as u64;
        self.stats.links.bytes_received += u64::from(frame.bytes);
        for (archive, token) in events.iter().zip(tokens.tokens.iter()) {
            self.apply_linked(now_ns, link, archive, token.to_native());
        }
        Ok(())
    }

    pub(super) fn apply_linked(
        &mut self,
        now_ns: u64,
        link: ConnectionId,
        archive: ValidatedArchive<'_, ArchivedEvent>,
        token: u64,
    ) {
        let credit = Credit::new(1, archive.bytes().len() as u32);
        let (reply, applied) = if self.stopping {
            self.stats.shutting_down_replies += 1;
            let event = archive.get();
            let outcome = Outcome::Error {
                error: EventError::ShuttingDown,
            };
            let reply = reply_to(event, outcome);
            self.stats.events.count(&event.kind, &reply.outcome);
            (reply, None)
        } else {
            match self.apply_for_peer(archive) {
                Ok(answered) => answered,
                Err(held) => {
                    return self.hold_link_event(now_ns, held, archive.bytes(), link, token);
                }
            }
        };
        if let Some((local, bytes)) = applied.filter(|(local, _)| local.is_moving()) {
            if let Some(seq) = self.capture_tail(local, bytes) {
                self.log_gated(local.partition(), bytes);
                let held = HeldReply::Link {
                    link,
                    token,
                    reply,
                    credit,
                };
                return self.gate_reply(local.partition(), seq, held);
            }
        }
        if !self.hold_link_reply(link, token, credit, applied, &reply) {
            self.queue_link_reply(now_ns, link, token, &reply, credit);
        }
    }

    /// Queues the reply to the event of inbound link `link` with `token`, holding `credit`
    /// of the source's share until the writer takes it.
    pub(super) fn queue_link_reply(
        &mut self,
        _now_ns: u64,
        link: ConnectionId,
        token: u64,
        reply: &Reply,
        credit: Credit,
    ) {
        let epoch = self.placement.epoch().get();
        let Some(inbound) = self.links.inbound_mut(link) else {
            return;
        };
        let frames = &mut inbound.out;
        if !room_for(frames, REPLY_BYTES_MAX) && seal(frames, &mut inbound.out_tokens, epoch) {
            inbound.out_sealed += 1;
        }
        if !frames.is_open() {
            frames.begin(FrameKind::LinkReplies);
        }
        frames
            .push(reply)
            .expect("a reply fits a link frame with room kept for it");
        inbound.out_tokens.push(token);
        inbound.out_credit = inbound.out_credit.plus(credit);
        self.links.list_writable(link);
    }

    /// An inbound link whose writer should look again; each is listed once until taken.
    pub fn poll_link_writable(&mut self) -> Option<ConnectionId> {
        let id = self.links.writable.pop()?;
        if let Some(link) = self.links.inbound_mut(id) {
            link.writable_listed = false;
        }
        Some(id)
    }

    /// Appends the `LinkReplies` frames queued for inbound link `link` to `out` and returns
    /// whether there were any. The credit of those replies returns to the source's share now:
    /// the source may send as many more as soon as it reads them.
    pub fn poll_link_replies(&mut self, link: ConnectionId, out: &mut Vec<u8>) -> bool {
        let epoch = self.placement.epoch().get();
        let Some(inbound) = self.links.inbound_mut(link) else {
            return false;
        };
        if inbound.out.is_empty() {
            return false;
        }
        let sealed = seal(&mut inbound.out, &mut inbound.out_tokens, epoch);
        let frames = std::mem::take(&mut inbound.out_sealed) + u64::from(sealed);
        out.extend_from_slice(inbound.out.bytes());
        inbound.out.clear(LINK_BUFFER_RETAINED_BYTES_MAX);
        let credit = std::mem::take(&mut inbound.out_credit);
        inbound.credit.release(credit);
        self.stats.links.batches_sent += frames;
        self.after_release();
        true
    }

    /// Inbound link `link` closed (its peer went away, a protocol error, the shard stopped):
    /// replies not yet taken never will be; held ones are dropped when released.
    pub fn handle_link_closed(&mut self, now_ns: u64, link: ConnectionId) {
        if let Some(slot) = self.links.inbound.get_mut(link.slot()) {
            if slot.as_ref().is_some_and(|inbound| inbound.id == link) {
                *slot = None;
            }
        }
        self.drop_moves_of_link(now_ns, link);
        self.after_release();
    }

    /// Queues a move's acknowledgement on inbound link `link`, after the replies before it.
    pub(super) fn queue_move_frame(&mut self, link: ConnectionId, ack: &MoveAck) {
        let epoch = self.placement.epoch().get();
        let Some(inbound) = self.links.inbound_mut(link) else {
            return;
        };
        if seal(&mut inbound.out, &mut inbound.out_tokens, epoch) {
            inbound.out_sealed += 1;
        }
        inbound
            .out
            .single(FrameKind::MoveAck, epoch, Some(ack))
            .expect("an acknowledgement of a bounded refusal fits its frame");
        self.links.list_writable(link);
    }

    /// The source of inbound link `link`.
    pub fn link_source(&self, link: ConnectionId) -> Option<LinkDest> {
        self.links
            .inbound
            .get(link.slot())?
            .as_ref()
            .filter(|inbound| inbound.id == link)
            .map(|inbound| inbound.source)
    }

    /// Links open now: outgoing ones up, and inbound ones.
    pub fn links_open(&self) -> usize {
        let out = self
            .links
            .out
            .values()
            .filter(|link| link.state == LinkState::Up)
            .count();
        out + self.links.inbound.iter().flatten().count()
    }

    /// Link credit held and capacity over the outgoing links (events, bytes).
    pub(super) fn link_load(&self) -> ((u64, u64), (u64, u64)) {
        let mut held = (0, 0);
        let mut capacity = (0, 0);
        for link in self.links.out.values() {
            held.0 += u64::from(link.credit.held().events);
            held.1 += u64::from(link.credit.held().bytes);
            capacity.0 += u64::from(link.credit.capacity().events);
            capacity.1 += u64::from(link.credit.capacity().bytes);
        }
        (held, capacity)
    }

    /// The most link credit held at once at any one destination.
    pub(super) fn link_inflight_peak(&self) -> Credit {
        self.links.out.values().fold(Credit::ZERO, |peak, link| {
            let held = link.credit.held_peak();
            Credit::new(peak.events.max(held.events), peak.bytes.max(held.bytes))
        })
    }
}
