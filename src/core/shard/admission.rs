//! Admission: a frame from a connection, validated once, then each event admitted against the
//! credit pools and dispatched.
//!
//! An event takes credit from the shard's socket budget and from its connection's share
//! before it is applied here or forwarded; a forwarded one also takes this shard's share of
//! the owner's mesh budget. When any of them is short, the frame stops part-way
//! ([`FrameProgress::Blocked`]): the shell keeps the frame's bytes, stops reading (so TCP
//! pushes back on the client) and offers the same frame again once [`ShardCore::readable`]
//! says the credit is there; the records already dispatched are skipped. In fail-fast mode an
//! event without credit is answered `Busy` instead. Once the shard stops, events are answered
//! `Error { ShuttingDown }` instead of being admitted. Shard-local.

use crate::constants::{CONNECTION_BACKLOG_BYTES_MAX, EVENT_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::core::codec::{
    FrameError, FrameHeader, FrameKind, Records, access_record, access_validated,
};
use crate::core::credit::{Acquire, Credit};
use crate::core::ids::{ConnectionId, Epoch, ShardId};
use crate::core::message::{ArchivedEvent, EventError, Outcome};
use crate::core::shard::ShardCore;
use crate::core::shard::connections::{FrameInProgress, ReadSide};
use crate::core::shard::routing::{Route, reply_to};

/// What [`ShardCore::handle_frame`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameProgress {
    /// Every record is dispatched or answered: drop the frame's bytes.
    Done,
    /// Credit ran out part-way: keep the bytes, wait for [`Readable::Yes`], offer the same
    /// frame again.
    Blocked,
}

/// Whether a connection's reader may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readable {
    /// Read (or offer the blocked frame again).
    Yes,
    /// Not now: wait for credit to be freed or replies to be written.
    NotYet,
    /// Never again: the shard is stopping or the connection is gone. Offer any whole frames
    /// still buffered once more (they are answered `ShuttingDown`), then close the read side.
    Never,
}

/// What dispatching one event came to.
enum Dispatch {
    Done,
    Blocked { need: Credit, peer: Option<ShardId> },
}

impl ShardCore {
    /// A whole, checksummed frame from connection `id`. Events are validated (all of them
    /// before any is used, so a bad frame is refused whole), then admitted and dispatched in
    /// order. A map request is answered whatever the budgets. `Err` is malformed input: the
    /// shell stops reading and reports it with [`Self::handle_read_closed`].
    pub fn handle_frame(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        header: &FrameHeader,
        body: &[u8],
    ) -> Result<FrameProgress, FrameError> {
        let Some(connection) = self.connections.get(id) else {
            return Ok(FrameProgress::Done);
        };
        if connection.socket_closed {
            return Ok(FrameProgress::Done);
        }
        self.connections
            .get_mut(id)
            .expect("checked above")
            .last_active_ns = now_ns;
        match header.kind {
            FrameKind::Events => self.handle_events(now_ns, id, Epoch(header.epoch), body),
            FrameKind::MapRequest => {
                Records::parse(header.kind, body)?;
                self.stats.frames_received += 1;
                self.stats.traffic.bytes_received += (FRAME_HEADER_BYTES + body.len()) as u64;
                self.queue_map(id);
                Ok(FrameProgress::Done)
            }
            kind => Err(FrameError::UnexpectedKind { kind }),
        }
    }

    fn handle_events(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        sender_epoch: Epoch,
        body: &[u8],
    ) -> Result<FrameProgress, FrameError> {
        let records = Records::parse(FrameKind::Events, body)?;
        let progress = self.connections.get(id).and_then(|c| c.frame);
        let (first, arrived_ns) = match progress {
            Some(progress) => {
                self.stats.credit_wait_ns += now_ns.saturating_sub(progress.blocked_ns);
                (progress.records_done as usize, progress.arrived_ns)
            }
            None => {
                self.stats.frames_received += 1;
                self.stats.traffic.bytes_received += (FRAME_HEADER_BYTES + body.len()) as u64;
                (0, now_ns)
            }
        };
        for (index, record) in records.iter().enumerate().skip(first) {
            access_record::<ArchivedEvent>(index as u32, record)?;
        }
        for (index, record) in records.iter().enumerate().skip(first) {
            // SAFETY: every record from `first` on passed `access_record` just above, and the
            // frame's records stay where they were validated.
            let event = unsafe { access_validated::<ArchivedEvent>(record) };
            if let Dispatch::Blocked { need, peer } = self.dispatch(now_ns, id, record, event) {
                let connection = self.connections.get_mut(id).expect("checked above");
                connection.frame = Some(FrameInProgress {
                    records_done: index as u32,
                    arrived_ns,
                    blocked_on: need,
                    blocked_peer: peer,
                    blocked_ns: now_ns,
                });
                return Ok(FrameProgress::Blocked);
            }
        }
        self.stats
            .stages
            .frame_dispatch_ns
            .saturating_record(now_ns.saturating_sub(arrived_ns).max(1));
        let epoch = self.placement.epoch();
        let connection = self.connections.get_mut(id).expect("checked above");
        connection.frame = None;
        if sender_epoch < epoch && connection.map_epoch_sent < epoch {
            // The client routes by an older map: send it the current one with its replies.
            self.queue_map(id);
        }
        Ok(FrameProgress::Done)
    }

    /// Admits one validated event of connection `id` and applies or forwards it, or answers it
    /// at once (`Busy`, `ShuttingDown`, `Moved`, `OwnerUnavailable`) without taking credit.
    fn dispatch(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        record: &[u8],
        event: &ArchivedEvent,
    ) -> Dispatch {
        if self.stopping {
            self.stats.shutting_down_replies += 1;
            self.answer_uncredited(id, event, shutting_down());
            return Dispatch::Done;
        }
        let route = match self.route_or_answer(event) {
            Ok(route) => route,
            Err(outcome) => {
                self.answer_uncredited(id, event, outcome);
                return Dispatch::Done;
            }
        };
        let credit = Credit::new(1, record.len() as u32);
        match route {
            Route::Local(local) => {
                if !self.socket_credit_covers(id, credit) {
                    self.stats.socket_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, None);
                }
                self.take_socket_credit(id, credit);
                let reply = self.apply(local, event);
                self.stats.events_applied += 1;
                self.stats.events.count(&event.kind, &reply.outcome);
                self.queue_reply(id, &reply, credit);
            }
            Route::Shard(owner) => {
                if !self.socket_credit_covers(id, credit) {
                    self.stats.socket_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, Some(owner));
                }
                let peer = self.peers[owner.index()]
                    .as_mut()
                    .expect("the placement names shards of this node only");
                if peer.credit.try_acquire(credit) != Acquire::Granted {
                    self.stats.mesh_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, Some(owner));
                }
                self.take_socket_credit(id, credit);
                self.forward(now_ns, owner, id, record, credit);
                let connection = self.connections.get_mut(id).expect("admitted above");
                connection.remote_inflight += 1;
                connection.remote_credit = connection.remote_credit.plus(credit);
                self.stats.events_forwarded += 1;
            }
            Route::Node(..) => {
                // No links to other nodes yet: tell the client where the partition lives.
                self.stats.events_moved += 1;
                let outcome = self.moved(event);
                self.answer_uncredited(id, event, outcome);
            }
        }
        Dispatch::Done
    }

    /// Credit is short (the caller counted which kind): `Busy` in fail-fast mode, else wait.
    fn out_of_credit(
        &mut self,
        id: ConnectionId,
        event: &ArchivedEvent,
        need: Credit,
        peer: Option<ShardId>,
    ) -> Dispatch {
        if self.config.fail_fast {
            self.stats.busy_replies += 1;
            self.answer_uncredited(id, event, Outcome::Busy);
            return Dispatch::Done;
        }
        Dispatch::Blocked { need, peer }
    }

    fn socket_credit_covers(&self, id: ConnectionId, credit: Credit) -> bool {
        let connection = self.connections.get(id).expect("a live connection");
        connection.credit.available().covers(credit) && self.credit.available().covers(credit)
    }

    fn take_socket_credit(&mut self, id: ConnectionId, credit: Credit) {
        let connection = self.connections.get_mut(id).expect("a live connection");
        assert_eq!(connection.credit.try_acquire(credit), Acquire::Granted);
        assert_eq!(self.credit.try_acquire(credit), Acquire::Granted);
    }

    fn answer_uncredited(&mut self, id: ConnectionId, event: &ArchivedEvent, outcome: Outcome) {
        self.stats.events.count(&event.kind, &outcome);
        let reply = reply_to(event, outcome);
        self.queue_reply(id, &reply, Credit::ZERO);
    }

    /// Whether connection `id`'s reader may go on: its backlog of replies is short, and the
    /// credit its next event needs is there (for a blocked frame, exactly what its next record
    /// waits for; otherwise one event of the largest size), or it holds no credit at all.
    /// Fail-fast shards read on and answer `Busy`.
    pub fn readable(&self, id: ConnectionId) -> Readable {
        let Some(connection) = self.connections.get(id) else {
            return Readable::Never;
        };
        if self.stopping
            || connection.socket_closed
            || connection.closing
            || connection.read != ReadSide::Open
        {
            return Readable::Never;
        }
        if connection.out.len() > CONNECTION_BACKLOG_BYTES_MAX {
            return Readable::NotYet;
        }
        if self.config.fail_fast {
            return Readable::Yes;
        }
        if connection.frame.is_none() && connection.credit.is_idle() {
            // A connection holding nothing may always read: its control requests (the map)
            // are answered whatever others hold, and its events wait for credit in its
            // receive buffer, which is bounded.
            return Readable::Yes;
        }
        let (need, peer) = match connection.frame {
            Some(progress) => (progress.blocked_on, progress.blocked_peer),
            None => (Credit::new(1, EVENT_BYTES_MAX as u32), None),
        };
        let socket =
            connection.credit.available().covers(need) && self.credit.available().covers(need);
        let mesh = peer.is_none_or(|peer| {
            self.peers[peer.index()]
                .as_ref()
                .is_some_and(|peer| peer.credit.available().covers(need))
        });
        if socket && mesh {
            Readable::Yes
        } else {
            Readable::NotYet
        }
    }
}

fn shutting_down() -> Outcome {
    Outcome::Error {
        error: EventError::ShuttingDown,
    }
}
