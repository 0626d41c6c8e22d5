//! The shard's side of the cross-shard mesh: the batches it owes each peer, its share of each
//! peer's mesh budget, and what it does with the batches peers send it.
//!
//! A [`MeshBatch`] carries the events one shard forwards to the owner of their partition and
//! the replies to events the receiver forwarded earlier. Each archive's bytes are copied once
//! into the batch and read in place at the other end. A batch holds only validated archives
//! ([`ValidatedArchives`]): an event goes in as the [`ValidatedArchive`] its connection's frame
//! validation made, a reply as a value the applying shard archives itself, so the receiver
//! reads them without checking them again and without `unsafe`. A batch is filled on its
//! source shard and handed, whole, to its destination shard: it is the one value of the shard
//! protocol that changes cores (it is `Send`).
//!
//! The receiver re-routes every event it is given: an event of a partition that is no longer
//! its own is answered `Moved`, never applied. Mesh credit is taken on the sending shard, per
//! destination, and returns when the reply comes back.

use std::collections::VecDeque;

use crate::constants::{BATCH_ENTRY_BYTES, MESH_BATCH_BYTES, MESH_BATCH_EVENTS_MAX};
use crate::core::codec::{ValidatedArchive, ValidatedArchives};
use crate::core::credit::{Credit, CreditPool};
use crate::core::ids::{ConnectionId, ShardId};
use crate::core::message::{ArchivedEvent, ArchivedReply, Reply};
use crate::core::shard::ShardCore;
use crate::core::shard::durability::HeldReply;

/// What a batch keeps beside each archive: whose event it is, on its home shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchEntry {
    /// The connection, on the event's home shard, that awaits the reply.
    pub connection: ConnectionId,
    /// Credit the event holds on its home shard, released when its reply is written.
    pub credit: Credit,
    /// When the home shard forwarded the event, on its own clock (a reply carries its event's
    /// time back), for the mesh round-trip histogram.
    pub forwarded_ns: u64,
}

/// Validated archives of `T` packed back to back, each starting 16-byte aligned, each with
/// its [`BatchEntry`].
pub struct ArchiveBatch<T> {
    archives: ValidatedArchives<T, BatchEntry>,
}

impl<T> Default for ArchiveBatch<T> {
    fn default() -> Self {
        ArchiveBatch {
            archives: ValidatedArchives::default(),
        }
    }
}

impl<T: rkyv::Portable> ArchiveBatch<T> {
    pub fn len(&self) -> usize {
        self.archives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.archives.is_empty()
    }

    /// Each archive with its entry, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = (ValidatedArchive<'_, T>, &BatchEntry)> {
        self.archives.iter_with()
    }
}

/// One message on a cross-shard channel. Built on its source shard, read on its destination.
pub struct MeshBatch {
    events: ArchiveBatch<ArchivedEvent>,
    replies: ArchiveBatch<ArchivedReply>,
    /// The sender's connections are done: it forwards no more events (shutdown).
    no_more_events: bool,
    /// When the batch was opened, on the sender's clock: the forwarding time of its events,
    /// read once per batch rather than once per event.
    opened_ns: u64,
}

impl MeshBatch {
    /// An empty batch, opened at `now_ns`.
    pub fn new(now_ns: u64) -> MeshBatch {
        MeshBatch {
            events: ArchiveBatch::default(),
            replies: ArchiveBatch::default(),
            no_more_events: false,
            opened_ns: now_ns,
        }
    }

    /// Events for the receiving shard to apply.
    pub fn events(&self) -> &ArchiveBatch<ArchivedEvent> {
        &self.events
    }

    /// Replies to events the receiving shard forwarded to the sender.
    pub fn replies(&self) -> &ArchiveBatch<ArchivedReply> {
        &self.replies
    }

    /// The sender forwards no more events.
    pub fn no_more_events(&self) -> bool {
        self.no_more_events
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.replies.is_empty() && !self.no_more_events
    }

    /// Copies a validated event archive into the batch, for connection `connection` of the
    /// sending shard, holding `credit` there.
    pub fn push_event(
        &mut self,
        event: ValidatedArchive<'_, ArchivedEvent>,
        connection: ConnectionId,
        credit: Credit,
    ) {
        let entry = BatchEntry {
            connection,
            credit,
            forwarded_ns: self.opened_ns,
        };
        self.events.archives.push_with(event, entry);
    }

    fn push_reply(&mut self, reply: &Reply, entry: &BatchEntry) {
        self.replies
            .archives
            .push_value_with(reply, *entry)
            .expect("a reply always fits its archive limits");
    }
}

// The memory sum in `constants` counts these sizes.
const _: () =
    assert!(ValidatedArchives::<ArchivedEvent, BatchEntry>::ENTRY_BYTES <= BATCH_ENTRY_BYTES);
const _: () = assert!(size_of::<MeshBatch>() <= MESH_BATCH_BYTES);

/// What a peer's flusher sends next.
pub enum MeshOutput {
    Batch(MeshBatch),
    /// Neither side forwards events any more and no replies are owed: close the channel.
    Close,
}

/// This shard's view of one other shard.
pub(super) struct Peer {
    /// This shard's share of the peer's mesh budget.
    pub credit: CreditPool,
    /// Batches waiting for the channel; the back one is being filled.
    outbox: VecDeque<MeshBatch>,
    /// Listed in the shard's mesh-ready list.
    ready_listed: bool,
    /// The peer said it forwards no more events.
    done_receiving: bool,
    /// This shard told the peer it forwards no more events.
    done_sending: bool,
    closed: bool,
}

impl Peer {
    pub fn new(credit: Credit) -> Peer {
        Peer {
            credit: CreditPool::new(credit),
            outbox: VecDeque::new(),
            ready_listed: false,
            done_receiving: false,
            done_sending: false,
            closed: false,
        }
    }

    /// The batch being filled, starting a new one when `part` of the back one is full.
    fn filling(&mut self, now_ns: u64, part: fn(&MeshBatch) -> usize) -> &mut MeshBatch {
        let full = self
            .outbox
            .back()
            .is_none_or(|batch| part(batch) >= MESH_BATCH_EVENTS_MAX || batch.no_more_events);
        if full {
            self.outbox.push_back(MeshBatch::new(now_ns));
        }
        self.outbox.back_mut().expect("just ensured")
    }

    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Batches waiting for the channel, the one being filled included.
    pub fn batches_queued(&self) -> usize {
        self.outbox.len()
    }
}

impl ShardCore {
    /// Copies a validated, admitted event into the next batch for `owner` (whose mesh credit
    /// the caller took).
    pub(super) fn forward(
        &mut self,
        now_ns: u64,
        owner: ShardId,
        id: ConnectionId,
        event: ValidatedArchive<'_, ArchivedEvent>,
        credit: Credit,
    ) {
        let peer = self.peers[owner.index()].as_mut().expect("a peer");
        peer.filling(now_ns, |batch| batch.events.len())
            .push_event(event, id, credit);
        self.list_mesh_ready(owner);
    }

    /// A batch from peer `from`: applies its events (re-routing each one) and queues their
    /// replies for `from`; delivers its replies to their connections and returns the mesh
    /// credit they held.
    pub fn handle_mesh(&mut self, now_ns: u64, from: ShardId, batch: MeshBatch) {
        if self
            .peers
            .get(from.index())
            .and_then(Option::as_ref)
            .is_none()
        {
            return;
        }
        self.stats.mesh_batches_received += 1;
        self.apply_forwarded(now_ns, from, &batch.events);
        for (archive, entry) in batch.replies.iter() {
            self.peers[from.index()]
                .as_mut()
                .expect("checked above")
                .credit
                .release(entry.credit);
            self.stats
                .stages
                .mesh_round_trip_ns
                .saturating_record(now_ns.saturating_sub(entry.forwarded_ns).max(1));
            self.deliver_reply(entry.connection, archive.bytes(), entry.credit);
        }
        if batch.no_more_events {
            self.peers[from.index()]
                .as_mut()
                .expect("checked above")
                .done_receiving = true;
            self.list_mesh_ready(from);
        }
        if !batch.replies.is_empty() {
            self.after_release();
        }
    }

    fn apply_forwarded(
        &mut self,
        now_ns: u64,
        from: ShardId,
        events: &ArchiveBatch<ArchivedEvent>,
    ) {
        for (archive, entry) in events.iter() {
            self.apply_peer_event(now_ns, from, archive, entry);
        }
        if !events.is_empty() {
            self.list_mesh_ready(from);
        }
    }

    /// Applies (or answers, or holds for a move's hand-off) one event peer `from` forwarded,
    /// and queues its reply unless the log or the hold keeps it.
    #[inline]
    pub(super) fn apply_peer_event(
        &mut self,
        now_ns: u64,
        from: ShardId,
        archive: ValidatedArchive<'_, ArchivedEvent>,
        entry: &BatchEntry,
    ) {
        let (reply, applied) = match self.apply_for_peer(archive) {
            Ok(answered) => answered,
            Err(held) => return self.hold_peer_event(now_ns, held, archive.bytes(), from, *entry),
        };
        if let Some((local, bytes)) = applied.filter(|(local, _)| local.is_moving()) {
            if let Some(seq) = self.capture_tail(local, bytes) {
                self.log_gated(local.partition(), bytes);
                let held = HeldReply::Peer {
                    from,
                    reply,
                    entry: *entry,
                };
                return self.gate_reply(local.partition(), seq, held);
            }
        }
        if !self.hold_peer_reply(from, applied, &reply, entry) {
            self.queue_peer_reply(now_ns, from, &reply, entry);
        }
    }

    /// Queues the reply to an event peer `from` forwarded, for its next batch.
    pub(super) fn queue_peer_reply(
        &mut self,
        now_ns: u64,
        from: ShardId,
        reply: &Reply,
        entry: &BatchEntry,
    ) {
        let peer = self.peers[from.index()].as_mut().expect("a peer");
        peer.filling(now_ns, |batch| batch.replies.len())
            .push_reply(reply, entry);
    }

    /// A reply another shard sent back for an event of connection `id`.
    pub(super) fn deliver_reply(&mut self, id: ConnectionId, archive: &[u8], credit: Credit) {
        if self.reply_came_back(id, credit) {
            self.queue_archived_reply(id, archive, credit);
        }
    }

    /// The answer to an event of connection `id` that was away (at another shard or node) is
    /// here: the connection stops counting it as away. `false` when there is nobody to write
    /// it to (the connection is closed, or long gone): its `credit` is released here instead.
    pub(super) fn reply_came_back(&mut self, id: ConnectionId, credit: Credit) -> bool {
        let Some(connection) = self.connections.get_mut(id) else {
            // The connection is long gone (its slot freed): only the shard's credit remains.
            self.credit.release(credit);
            return false;
        };
        if connection.socket_closed {
            self.release_remote(id, credit);
            return false;
        }
        connection.remote_inflight -= 1;
        connection.remote_credit = connection.remote_credit.minus(credit);
        true
    }

    /// What the flusher of `peer` sends next: the oldest batch (full, or the one being filled:
    /// the flusher runs after the tasks that filled it, so that is the end of a loop pass), a
    /// last batch saying this shard forwards no more, or the channel's close.
    pub fn poll_mesh(&mut self, peer: ShardId) -> Option<MeshOutput> {
        let drained = self.connections_drained();
        let stopping = self.stopping;
        let state = self.peers.get_mut(peer.index())?.as_mut()?;
        if let Some(batch) = state.outbox.pop_front() {
            self.stats.mesh_batches_sent += 1;
            return Some(MeshOutput::Batch(batch));
        }
        if stopping && drained && !state.done_sending {
            state.done_sending = true;
            self.stats.mesh_batches_sent += 1;
            let mut batch = MeshBatch::new(0);
            batch.no_more_events = true;
            return Some(MeshOutput::Batch(batch));
        }
        if state.done_sending && state.done_receiving && !state.closed {
            state.closed = true;
            return Some(MeshOutput::Close);
        }
        None
    }

    /// A peer whose flusher should look again; each is listed once until taken.
    pub fn poll_mesh_ready(&mut self) -> Option<ShardId> {
        let peer = self.mesh_ready.pop()?;
        if let Some(state) = self.peers[peer.index()].as_mut() {
            state.ready_listed = false;
        }
        Some(peer)
    }

    pub(super) fn list_mesh_ready(&mut self, peer: ShardId) {
        if let Some(state) = self.peers[peer.index()].as_mut() {
            if !state.ready_listed {
                state.ready_listed = true;
                self.mesh_ready.push(peer);
            }
        }
    }
}
