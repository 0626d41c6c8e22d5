//! Admission: a frame from a connection, validated once, then each event admitted against the
//! credit pools and dispatched.
//!
//! An event takes credit from the shard's socket budget and from its connection's share
//! before it is applied here or forwarded; a forwarded one also takes this shard's share of
//! the owner's mesh budget. When any of them is short, the frame stops part-way
//! ([`FrameProgress::Blocked`]): the shell keeps the frame's bytes, stops reading (so TCP
//! pushes back on the client) and offers the same frame again once [`ShardCore::readable`]
//! says the credit is there; the records already dispatched are skipped. In fail-fast mode an
//! event without credit is answered `Busy` instead, and so is one that waited too long before
//! it was read (see `shedding`). Once the shard stops, events are answered
//! `Error { ShuttingDown }` instead of being admitted. Shard-local.

use crate::constants::{CONNECTION_BACKLOG_BYTES_MAX, EVENT_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::core::codec::{
    FrameError, FrameHeader, FrameKind, Records, ValidatedArchive, ValidatedFrame,
};
use crate::core::credit::{Acquire, Credit};
use crate::core::ids::{ConnectionId, Epoch};
use crate::core::message::{ArchivedEvent, EventError, Outcome};
use crate::core::shard::ShardCore;
use crate::core::shard::connections::{FrameInProgress, ReadSide, Waiting};
use crate::core::shard::links::{LinkAdmit, LinkDest};
use crate::core::shard::routing::{LocalEvent, Route, reply_to};

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
    Blocked { need: Credit, peer: Option<Waiting> },
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
        self.frame_dispatched_arrived_ns = None;
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
                (progress.records_done, progress.arrived_ns)
            }
            None => {
                self.stats.frames_received += 1;
                self.stats.traffic.bytes_received += (FRAME_HEADER_BYTES + body.len()) as u64;
                (0, now_ns)
            }
        };
        // The records before `first` were validated and dispatched when the frame was first
        // offered; the rest are validated, all of them, before any is used.
        let records = ValidatedFrame::<ArchivedEvent>::validate_from(records, first)?;
        // Two passes, as MICA and FASTER batch their lookups: the state each event will touch
        // is requested for the whole frame first, so its cache misses overlap instead of
        // stalling one event after another in `apply`.
        for event in records.iter() {
            self.prefetch(event.get());
        }
        for (index, event) in (first..).zip(records.iter()) {
            if let Dispatch::Blocked { need, peer } = self.dispatch(now_ns, id, event) {
                let connection = self.connections.get_mut(id).expect("checked above");
                connection.frame = Some(FrameInProgress {
                    records_done: index,
                    arrived_ns,
                    blocked_on: need,
                    blocked_peer: peer,
                    blocked_ns: now_ns,
                });
                return Ok(FrameProgress::Blocked);
            }
        }
        // The stage ends when this call returns, which only the shell's clock can tell.
        self.frame_dispatched_arrived_ns = Some(arrived_ns);
        let epoch = self.placement.epoch();
        let connection = self.connections.get_mut(id).expect("checked above");
        connection.frame = None;
        // The owner hint: a client whose events had to go to another node learns the owners
        // (once per connection; a client that knows no map sends epoch 0, and a new
        // connection counts as up to date with the placement it opened under).
        let hint = std::mem::take(&mut connection.sent_to_other_node) && !connection.owner_hinted;
        if sender_epoch < epoch && (connection.map_epoch_sent < epoch || hint) {
            // The client routes by an older map: send it the current one with its replies.
            connection.owner_hinted |= hint;
            self.queue_map(id);
        }
        Ok(FrameProgress::Done)
    }

    /// The shell's clock right after a [`Self::handle_frame`] call that returned
    /// [`FrameProgress::Done`] for an events frame: records the frame-dispatch stage, from the
    /// time the frame was first offered (credit waits included) to now. The core keeps no
    /// clock, so without this call the stage is simply not recorded.
    pub fn record_frame_dispatched(&mut self, now_ns: u64) {
        if let Some(arrived_ns) = self.frame_dispatched_arrived_ns.take() {
            self.stats
                .stages
                .frame_dispatch_ns
                .saturating_record(now_ns.saturating_sub(arrived_ns).max(1));
        }
    }

    /// Admits one validated event of connection `id` and applies or forwards it, or answers it
    /// at once (`Busy`, `ShuttingDown`, `Moved`, `Unavailable`) without taking credit.
    fn dispatch(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        archive: ValidatedArchive<'_, ArchivedEvent>,
    ) -> Dispatch {
        let event = archive.get();
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
        if !matches!(route, Route::Node(..)) && self.shed(now_ns, id) {
            // Fail-fast and waited past the shedding target under a standing queue.
            self.answer_uncredited(id, event, Outcome::Busy);
            return Dispatch::Done;
        }
        let credit = Credit::new(1, archive.bytes().len() as u32);
        match route {
            Route::Local(local) => {
                if !self.try_take_socket_credit(id, credit) {
                    self.stats.socket_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, None);
                }
                self.apply_client_event(id, local, archive, credit);
            }
            Route::Hold(partition) => {
                if !self.try_take_socket_credit(id, credit) {
                    self.stats.socket_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, None);
                }
                self.hold_client_event(now_ns, id, partition, archive.bytes(), credit);
            }
            Route::Shard(owner) => {
                if !self.socket_credit_covers(id, credit) {
                    self.stats.socket_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, Some(Waiting::Shard(owner)));
                }
                let peer = self.peers[owner.index()]
                    .as_mut()
                    .expect("the placement names shards of this node only");
                if peer.credit.try_acquire(credit) != Acquire::Granted {
                    self.stats.mesh_credit_waits += 1;
                    return self.out_of_credit(id, event, credit, Some(Waiting::Shard(owner)));
                }
                self.take_socket_credit(id, credit);
                self.forward(now_ns, owner, id, archive, credit);
                let connection = self.connections.get_mut(id).expect("admitted above");
                connection.remote_inflight += 1;
                connection.remote_credit = connection.remote_credit.plus(credit);
                self.stats.events_forwarded += 1;
            }
            Route::Node(node, shard) => {
                if let Some(connection) = self.connections.get_mut(id) {
                    connection.sent_to_other_node = true;
                }
                return self.dispatch_to_node(now_ns, id, archive, LinkDest { node, shard });
            }
        }
        Dispatch::Done
    }

    /// Applies a client's event of a partition this shard serves (its socket credit taken),
    /// streams it to the partition's next owner if it is moving, and queues the reply.
    #[inline]
    pub(super) fn apply_client_event(
        &mut self,
        id: ConnectionId,
        local: LocalEvent,
        archive: ValidatedArchive<'_, ArchivedEvent>,
        credit: Credit,
    ) {
        let event = archive.get();
        let reply = self.apply(local, event);
        self.stats.events_applied += 1;
        self.stats.events.count(&event.kind, &reply.outcome);
        if local.is_moving() {
            if let Some(seq) = self.capture_tail(local, archive.bytes()) {
                if let Some(held) =
                    self.gate_local_reply(id, local, archive.bytes(), &reply, credit)
                {
                    self.gate_reply(local.partition(), seq, held);
                }
                return;
            }
        }
        self.reply_applied(id, local, archive.bytes(), &reply, credit);
    }

    /// Forwards an event over the link to its owner on another node, taking socket credit
    /// and this shard's share of the owner's link budget; or answers it at once when no link
    /// can carry it (`Moved` on a single node or past `LINKS_PER_SHARD_MAX` links,
    /// `Unavailable` while the link is down).
    fn dispatch_to_node(
        &mut self,
        now_ns: u64,
        id: ConnectionId,
        archive: ValidatedArchive<'_, ArchivedEvent>,
        dest: LinkDest,
    ) -> Dispatch {
        let event = archive.get();
        let dest = match self.link_admit(dest, event) {
            LinkAdmit::Forward(dest) => dest,
            LinkAdmit::Answer(outcome) => {
                if matches!(outcome, Outcome::Moved { .. }) {
                    self.stats.events_moved += 1;
                }
                self.answer_uncredited(id, event, outcome);
                return Dispatch::Done;
            }
        };
        let credit = Credit::new(1, archive.bytes().len() as u32);
        if !self.socket_credit_covers(id, credit) {
            self.stats.socket_credit_waits += 1;
            return self.out_of_credit(id, event, credit, Some(Waiting::Link(dest)));
        }
        if !self.try_take_link_credit(dest, credit) {
            self.stats.link_credit_waits += 1;
            return self.out_of_credit(id, event, credit, Some(Waiting::Link(dest)));
        }
        self.take_socket_credit(id, credit);
        self.forward_to_node(now_ns, dest, id, archive, credit);
        let connection = self.connections.get_mut(id).expect("admitted above");
        connection.remote_inflight += 1;
        connection.remote_credit = connection.remote_credit.plus(credit);
        self.stats.events_forwarded += 1;
        Dispatch::Done
    }

    /// Credit is short (the caller counted which kind): `Busy` in fail-fast mode, else wait.
    fn out_of_credit(
        &mut self,
        id: ConnectionId,
        event: &ArchivedEvent,
        need: Credit,
        peer: Option<Waiting>,
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

    /// Takes `credit` from connection `id`'s share and the shard's pool when both cover it
    /// (one look-up of the connection, on the path of every local event).
    fn try_take_socket_credit(&mut self, id: ConnectionId, credit: Credit) -> bool {
        let connection = self.connections.get_mut(id).expect("a live connection");
        if !(connection.credit.available().covers(credit) && self.credit.available().covers(credit))
        {
            return false;
        }
        assert_eq!(connection.credit.try_acquire(credit), Acquire::Granted);
        assert_eq!(self.credit.try_acquire(credit), Acquire::Granted);
        true
    }

    fn take_socket_credit(&mut self, id: ConnectionId, credit: Credit) {
        let connection = self.connections.get_mut(id).expect("a live connection");
        assert_eq!(connection.credit.try_acquire(credit), Acquire::Granted);
        assert_eq!(self.credit.try_acquire(credit), Acquire::Granted);
    }

    fn answer_uncredited(&mut self, id: ConnectionId, event: &ArchivedEvent, outcome: Outcome) {
        self.stats.events.count(&event.kind, &outcome);
        let reply = reply_to(event, outcome);
        self.reply_uncredited(id, &reply);
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
        if connection.out.len() > CONNECTION_BACKLOG_BYTES_MAX || self.durability_backlog_full() {
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
        let mesh = match peer {
            None => true,
            Some(Waiting::Shard(peer)) => self.peers[peer.index()]
                .as_ref()
                .is_some_and(|peer| peer.credit.available().covers(need)),
            Some(Waiting::Link(dest)) => self.link_credit_covers(dest, need),
        };
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

#[cfg(test)]
mod tests {
    use rkyv::util::AlignedVec;

    use super::*;
    use crate::core::codec::{Decoded, FrameBuilder, decode_frame};
    use crate::core::ids::{HuntId, PlayerId, ShardId};
    use crate::core::message::{Event, EventKind};
    use crate::core::partition::Placement;
    use crate::core::shard::ShardConfig;

    fn leaderboard_frame(events: u64) -> AlignedVec {
        let mut builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        for seq in 0..events {
            let event = Event {
                hunt: HuntId(seq),
                player: PlayerId(1),
                client_session: 0,
                client_seq: seq,
                client_ts: 0,
                kind: EventKind::Leaderboard { top_k: 3 },
            };
            builder.push(&event).unwrap();
        }
        builder.finish(0);
        let mut bytes = AlignedVec::new();
        bytes.extend_from_slice(builder.bytes());
        bytes
    }

    fn offer(core: &mut ShardCore, now_ns: u64, id: ConnectionId, frame: &[u8]) -> FrameProgress {
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
            panic!("a whole frame");
        };
        core.handle_frame(now_ns, id, &header, body).unwrap()
    }

    fn dispatch_stage(core: &ShardCore) -> (u64, u64) {
        let histogram = &core.stats().stages.frame_dispatch_ns;
        (histogram.len(), histogram.max())
    }

    #[test]
    fn the_dispatch_stage_runs_from_the_first_offer_to_the_time_after_the_last_call() {
        let placement = Placement::round_robin(64, 1).unwrap();
        let config = ShardConfig {
            shard_budget: Credit::new(3, 1 << 20),
            ..ShardConfig::defaults(1)
        };
        let mut core = ShardCore::with_config(ShardId(0), placement, config);
        let id = core.handle_connect(0).unwrap();

        // Dispatched in one call: the stage is the call, as long as the shell says it took.
        assert_eq!(
            offer(&mut core, 1_000, id, &leaderboard_frame(2)),
            FrameProgress::Done
        );
        assert_eq!(
            dispatch_stage(&core),
            (0, 0),
            "nothing until the shell's clock says"
        );
        core.record_frame_dispatched(4_000);
        let (count, max) = dispatch_stage(&core);
        assert_eq!(count, 1);
        assert!(
            (2_990..=3_010).contains(&max),
            "recorded {max} ns, not 3 000"
        );
        core.record_frame_dispatched(9_000);
        assert_eq!(dispatch_stage(&core).0, 1, "one frame is recorded once");

        // Blocked on credit, then dispatched once replies are written: the wait is included.
        assert_eq!(
            offer(&mut core, 10_000, id, &leaderboard_frame(2)),
            FrameProgress::Blocked
        );
        core.record_frame_dispatched(11_000);
        assert_eq!(
            dispatch_stage(&core).0,
            1,
            "a blocked frame is not dispatched yet"
        );
        let mut out = FrameBuilder::new();
        assert!(core.poll_replies(id, &mut out));
        core.handle_written(50_000, id, out.len());
        assert_eq!(
            offer(&mut core, 60_000, id, &leaderboard_frame(2)),
            FrameProgress::Done
        );
        core.record_frame_dispatched(70_000);
        let (count, max) = dispatch_stage(&core);
        assert_eq!(count, 2);
        assert!(
            (59_900..=60_100).contains(&max),
            "recorded {max} ns, not 60 000"
        );
    }
}
