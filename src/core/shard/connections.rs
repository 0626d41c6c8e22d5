//! A shard's client connections, each one's in-flight state in one place.
//!
//! A [`Connection`] holds everything the shard knows about one client: its share of the
//! socket budget, the replies queued for its socket and the credit they hold, what is being
//! written, how many of its events are away at other shards, the frame it is part-way
//! through, whether its read side or its socket has closed, where it connected from, and what
//! its reader measured (a frame's arrival, its sojourn). The table hands out
//! [`ConnectionId`]s whose generation tells a reused slot apart from the connection that had
//! it before, so a late reply for a closed connection can never reach its successor.
//! Shard-local.

use crate::constants::{CONNECTION_STATE_BYTES_MAX, CONNECTIONS_PER_SHARD_MAX};
use crate::core::codec::{FrameBuilder, FrameError};
use crate::core::credit::{Credit, CreditPool};
use crate::core::ids::{ConnectionId, Epoch};
use crate::core::shard::ShardCore;

/// Why a connection's socket closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Everything was written; the connection ended normally.
    Finished,
    /// The socket failed (reset, broken pipe): nothing more can be written.
    Broken,
    /// The shard cut it off: its replies could not be written before the stop grace ended.
    ForceClosed,
    /// The client failed or did not finish the authentication handshake; nothing was read.
    Unauthenticated,
    /// The client failed or did not finish the TLS handshake; nothing was read.
    TlsFailed,
    /// Nothing in flight and silent for the idle timeout.
    IdleTimeout,
    /// Its replies waited the write-stall timeout for a socket that took none of them.
    WriteStalled,
    /// The shard was full and this was its longest-idle connection: it gave way to a new one.
    Evicted,
    /// A frame it had started did not arrive whole within the frame-arrival time.
    FrameTooSlow,
}

/// A connection's source address, as IPv6 octets (IPv4 mapped): the core names no socket type.
pub type SourceAddr = [u8; 16];

/// Why [`ShardCore::handle_connect_from`] refused a connection; the shell says so in an
/// error frame and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The shard is stopping.
    Stopping,
    /// Every slot is taken and no connection is idle enough to give way.
    Full,
    /// The source address already holds `max` connections at this shard.
    PerSource { max: usize },
}

// The memory sum in `constants` counts a connection slot as this much.
const _: () = assert!(size_of::<Option<Connection>>() <= CONNECTION_STATE_BYTES_MAX);

/// A frame part-way through admission: the records before `records_done` are dispatched.
#[derive(Clone, Copy, Debug)]
pub(super) struct FrameInProgress {
    pub records_done: u32,
    pub arrived_ns: u64,
    /// What the next record waits for: socket credit, and mesh or link credit if it goes to
    /// another shard.
    pub blocked_on: Credit,
    pub blocked_peer: Option<Waiting>,
    /// When it last stopped for credit.
    pub blocked_ns: u64,
}

/// Whose credit beside the socket's a blocked event waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Mesh credit at a shard of this node.
    Shard(crate::core::ids::ShardId),
    /// Link credit at a shard of another node.
    Link(crate::core::shard::links::LinkDest),
}

/// The read side of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ReadSide {
    Open,
    /// The reader stopped; `error` is what was wrong with the input, to be sent after the
    /// replies to everything admitted before it.
    Closed {
        error: Option<FrameError>,
    },
}

/// One client connection of a shard. See the module documentation.
pub(super) struct Connection {
    pub id: ConnectionId,
    /// The connection's share of the shard's socket budget. Held = events away at peers +
    /// replies queued + replies being written.
    pub credit: CreditPool,
    /// Replies (and map and error frames) waiting for the socket.
    pub out: FrameBuilder,
    /// Credit held by the replies in `out`.
    pub out_credit: Credit,
    /// Credit held by the bytes handed to the writer and not yet reported written.
    pub writing: Credit,
    pub writing_bytes: usize,
    /// Events forwarded to other shards whose replies have not come back, and their credit.
    pub remote_inflight: u32,
    pub remote_credit: Credit,
    pub frame: Option<FrameInProgress>,
    pub read: ReadSide,
    pub error_queued: bool,
    pub socket_closed: bool,
    /// The newest map epoch this connection was sent.
    pub map_epoch_sent: Epoch,
    /// An event of the frame being dispatched was for another node's partition: its sender
    /// routes by an older map, or by none (see `owner_hinted`).
    pub sent_to_other_node: bool,
    /// The connection was sent the map because its events had to go to another node (the
    /// owner hint): once, then again only when the placement changes.
    pub owner_hinted: bool,
    /// Listed in the shard's writable list (so it is listed once).
    pub writable_listed: bool,
    /// The last time it sent a frame, had replies written, or connected.
    pub last_active_ns: u64,
    /// Since when (by the timeout checks) a write has been outstanding without progress.
    pub write_watch_ns: Option<u64>,
    /// The core asked the shell to close it.
    pub closing: bool,
    pub close_reason: Option<CloseReason>,
    /// Where it connected from, when the shell said.
    pub source: Option<SourceAddr>,
    /// Since when the reader has held the start of a frame whose rest has not arrived.
    pub frame_started_ns: Option<u64>,
    /// What its reader measured of the wait before its events were read (fail-fast shedding).
    pub sojourn: crate::core::shard::shedding::SojournGate,
    /// Events its reader found in the socket after the shard began stopping, never applied:
    /// named in one error frame after the last reply.
    pub unread_at_stop: u64,
    pub stop_notice_queued: bool,
}

impl Connection {
    /// Nothing this connection will ever write is still to come.
    pub fn finished(&self) -> bool {
        let error_pending =
            matches!(self.read, ReadSide::Closed { error: Some(_) }) && !self.error_queued;
        let stop_notice_pending = self.unread_at_stop > 0 && !self.stop_notice_queued;
        matches!(self.read, ReadSide::Closed { .. })
            && !error_pending
            && !stop_notice_pending
            && self.remote_inflight == 0
            && self.out.is_empty()
            && self.writing_bytes == 0
    }

    /// Open, and nothing in flight, queued, being written or part-way admitted.
    pub fn idle(&self) -> bool {
        !self.socket_closed
            && !self.closing
            && self.read == ReadSide::Open
            && self.frame.is_none()
            && self.credit.is_idle()
            && self.out.is_empty()
            && self.writing_bytes == 0
    }

    /// The credit held by the events of this connection that are done here: replies queued
    /// or being written.
    pub fn local_credit(&self) -> Credit {
        self.out_credit.plus(self.writing)
    }
}

/// The shard's connections, by slot. At most `CONNECTIONS_PER_SHARD_MAX` open sockets; a
/// closed connection keeps its slot until the replies to its forwarded events are back.
#[derive(Default)]
pub(super) struct Connections {
    slots: Vec<Option<Connection>>,
    free_slots: Vec<u32>,
    generation_next: u32,
    open: usize,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open
    }

    pub fn get(&self, id: ConnectionId) -> Option<&Connection> {
        self.slots
            .get(id.slot())?
            .as_ref()
            .filter(|connection| connection.id == id)
    }

    pub fn get_mut(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        self.slots
            .get_mut(id.slot())?
            .as_mut()
            .filter(|connection| connection.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.slots.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Connection> {
        self.slots.iter_mut().flatten()
    }

    fn insert(
        &mut self,
        budget: Credit,
        epoch: Epoch,
        now_ns: u64,
        source: Option<SourceAddr>,
    ) -> ConnectionId {
        let generation = self.generation_next;
        self.generation_next = generation.wrapping_add(1);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let id = ConnectionId::new(slot, generation);
        self.slots[id.slot()] = Some(Connection {
            id,
            credit: CreditPool::new(budget),
            out: FrameBuilder::new(),
            out_credit: Credit::ZERO,
            writing: Credit::ZERO,
            writing_bytes: 0,
            remote_inflight: 0,
            remote_credit: Credit::ZERO,
            frame: None,
            read: ReadSide::Open,
            error_queued: false,
            socket_closed: false,
            map_epoch_sent: epoch,
            sent_to_other_node: false,
            owner_hinted: false,
            writable_listed: false,
            last_active_ns: now_ns,
            write_watch_ns: None,
            closing: false,
            close_reason: None,
            source,
            frame_started_ns: None,
            sojourn: Default::default(),
            unread_at_stop: 0,
            stop_notice_queued: false,
        });
        self.open += 1;
        id
    }

    /// Frees the slot of a connection whose socket closed and that holds no credit.
    fn remove_if_done(&mut self, id: ConnectionId) {
        let done = self
            .get(id)
            .is_some_and(|c| c.socket_closed && c.remote_inflight == 0);
        if done {
            debug_assert!(self.get(id).is_some_and(|c| c.credit.is_idle()));
            self.slots[id.slot()] = None;
            self.free_slots.push(id.slot() as u32);
        }
    }
}

impl ShardCore {
    /// A new connection: its id, or `None` when the shard is stopping or already serves as
    /// many as it may and none of them is idle (the shell answers with an error frame and
    /// closes). When the slots are full, the longest-idle connection gives way (the core lists
    /// it in [`Self::poll_close`]).
    pub fn handle_connect(&mut self, now_ns: u64) -> Option<ConnectionId> {
        self.handle_connect_from(now_ns, None).ok()
    }

    /// A new connection from `source`: like [`Self::handle_connect`], and refused also when
    /// that address already holds `connections_per_source_max` open connections here (it
    /// does not evict others to make room for itself).
    pub fn handle_connect_from(
        &mut self,
        now_ns: u64,
        source: Option<SourceAddr>,
    ) -> Result<ConnectionId, ConnectRefusal> {
        let refusal = if self.stopping {
            Some(ConnectRefusal::Stopping)
        } else if source.is_some_and(|source| self.at_source_limit(source)) {
            // Counted apart from the refusals for a full shard: this one is the client's doing.
            self.stats.connections_refused_per_source += 1;
            return Err(ConnectRefusal::PerSource {
                max: self.config.connections_per_source_max,
            });
        } else if self.connections.open() >= CONNECTIONS_PER_SHARD_MAX && !self.evict_longest_idle()
        {
            Some(ConnectRefusal::Full)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.stats.connections_refused += 1;
            return Err(refusal);
        }
        self.stats.connections_accepted += 1;
        Ok(self.connections.insert(
            self.config.connection_budget,
            self.placement.epoch(),
            now_ns,
            source,
        ))
    }

    /// Whether `source` already holds as many open connections here as one address may. A
    /// limit of the shard's whole slot count is no limit: the shard's own (with eviction)
    /// then applies alone.
    fn at_source_limit(&self, source: SourceAddr) -> bool {
        if self.config.connections_per_source_max >= CONNECTIONS_PER_SHARD_MAX {
            return false;
        }
        let open_from_source = self
            .connections
            .iter()
            .filter(|c| !c.socket_closed && c.source == Some(source))
            .count();
        open_from_source >= self.config.connections_per_source_max
    }

    /// The connection's reader stopped: end of stream, a read error, the shard stopping, or
    /// malformed input (`Err`), which is answered with an error frame after the replies to
    /// everything admitted before it.
    pub fn handle_read_closed(
        &mut self,
        _now_ns: u64,
        id: ConnectionId,
        outcome: Result<(), FrameError>,
    ) {
        let Some(connection) = self.connections.get_mut(id) else {
            return;
        };
        if connection.read != ReadSide::Open {
            return;
        }
        if outcome.is_err() {
            self.stats.frames_rejected += 1;
        }
        connection.read = ReadSide::Closed {
            error: outcome.err(),
        };
        // A frame left part-way had its remaining events never admitted: nothing is owed.
        connection.frame = None;
        self.list_writable(id);
    }

    /// The connection's socket is gone: replies not yet written never will be, so their
    /// credit returns now; replies still away at other shards return theirs when they arrive.
    pub fn handle_closed(&mut self, _now_ns: u64, id: ConnectionId, reason: CloseReason) {
        let Some(connection) = self.connections.get_mut(id) else {
            return;
        };
        if connection.socket_closed {
            return;
        }
        // When the core asked for the close, its reason is the one that counts.
        let reason = connection.close_reason.unwrap_or(reason);
        connection.socket_closed = true;
        if connection.read == ReadSide::Open {
            connection.read = ReadSide::Closed { error: None };
        }
        connection.frame = None;
        let unwritten = connection.local_credit();
        connection.out_credit = Credit::ZERO;
        connection.writing = Credit::ZERO;
        connection.writing_bytes = 0;
        connection.out.clear(0);
        connection.credit.release(unwritten);
        self.credit.release(unwritten);
        self.connections.open -= 1;
        match reason {
            CloseReason::ForceClosed => self.stats.connections_force_closed += 1,
            CloseReason::Unauthenticated => self.stats.connections_unauthenticated += 1,
            CloseReason::TlsFailed => self.stats.connections_tls_failed += 1,
            CloseReason::IdleTimeout => self.stats.connections_idle_closed += 1,
            CloseReason::WriteStalled => self.stats.connections_write_stalled += 1,
            CloseReason::Evicted => self.stats.connections_evicted += 1,
            CloseReason::FrameTooSlow => self.stats.connections_frame_too_slow += 1,
            CloseReason::Finished | CloseReason::Broken => {}
        }
        self.connections.remove_if_done(id);
        self.after_release();
    }

    /// Gives back the credit of one event of `id` that is done (its reply written, or its
    /// connection gone), freeing the connection's slot when it was the last.
    pub(super) fn release_remote(&mut self, id: ConnectionId, credit: Credit) {
        if let Some(connection) = self.connections.get_mut(id) {
            connection.remote_inflight -= 1;
            connection.remote_credit = connection.remote_credit.minus(credit);
            connection.credit.release(credit);
        }
        self.credit.release(credit);
        self.connections.remove_if_done(id);
    }
}
