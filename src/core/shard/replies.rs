//! Reply routing: the bytes each connection's socket is owed, and the credit they return.
//!
//! A reply to an event applied here, or one that came back from the shard that applied it, is
//! appended to its connection's reply frames together with the credit the event holds. The
//! shell's writer takes everything queued with [`ShardCore::poll_replies`], writes it, and
//! reports it with [`ShardCore::handle_written`]; only then does the credit return, so a client
//! that does not read its replies holds its budget and is throttled, not the shard's memory.
//! Map frames and the error frame that ends a connection go out in order with the replies.
//! Shard-local.

use crate::core::codec::{FrameBuilder, FrameKind};
use crate::core::credit::Credit;
use crate::core::ids::ConnectionId;
use crate::core::message::Reply;
use crate::core::shard::ShardCore;
use crate::core::shard::connections::ReadSide;

impl ShardCore {
    /// Moves everything queued for connection `id` (whole frames) into `out`, which must be
    /// empty, and returns whether there was anything. The credit of those replies returns when
    /// [`Self::handle_written`] reports all of their bytes written. Nothing is handed out while
    /// a previous batch is still being written.
    pub fn poll_replies(&mut self, id: ConnectionId, out: &mut FrameBuilder) -> bool {
        debug_assert!(out.is_empty(), "the writer hands in an empty builder");
        let epoch = self.placement.epoch().get();
        let Some(connection) = self.connections.get_mut(id) else {
            return false;
        };
        if connection.socket_closed || connection.writing_bytes > 0 {
            return false;
        }
        if let ReadSide::Closed { error: Some(error) } = &connection.read {
            // The error frame is the last thing the connection writes: after the replies to
            // every event admitted before the bad input, those away at other shards included.
            if !connection.error_queued && connection.remote_inflight == 0 {
                if connection.out.is_open() {
                    connection.out.finish(epoch);
                }
                connection.out.error(epoch, error);
                connection.error_queued = true;
                self.stats.traffic.frames_sent += 1;
            }
        }
        if connection.read != ReadSide::Open
            && connection.unread_at_stop > 0
            && !connection.stop_notice_queued
            && connection.remote_inflight == 0
        {
            // After the last reply: how many events the stopping shard read but never applied.
            if connection.out.is_open() {
                connection.out.finish(epoch);
            }
            let message = crate::core::shard::stop::unread_notice(connection.unread_at_stop);
            connection.out.error_message(
                epoch,
                crate::core::shard::stop::ERROR_CODE_SHUTTING_DOWN,
                message,
            );
            connection.stop_notice_queued = true;
        }
        if connection.out.is_empty() {
            return false;
        }
        if connection.out.is_open() {
            connection.out.finish(epoch);
        }
        std::mem::swap(&mut connection.out, out);
        connection.writing = std::mem::take(&mut connection.out_credit);
        connection.writing_bytes = out.len();
        true
    }

    /// `written` bytes of what [`Self::poll_replies`] handed out reached the socket. Once all
    /// of them have, their credit returns.
    pub fn handle_written(&mut self, now_ns: u64, id: ConnectionId, written: usize) {
        let Some(connection) = self.connections.get_mut(id) else {
            return;
        };
        connection.last_active_ns = now_ns;
        connection.write_watch_ns = None;
        connection.writing_bytes = connection.writing_bytes.saturating_sub(written);
        self.stats.traffic.bytes_sent += written as u64;
        if connection.writing_bytes > 0 {
            return;
        }
        let credit = std::mem::take(&mut connection.writing);
        connection.credit.release(credit);
        self.credit.release(self.faults.credit_to_return(credit));
        if connection.finished() {
            self.list_writable(id);
        }
        self.after_release();
    }

    /// True once connection `id` has nothing more to write, ever: its read side closed, every
    /// reply (and the error frame, if any) written. The writer then closes the socket.
    pub fn write_finished(&self, id: ConnectionId) -> bool {
        self.connections
            .get(id)
            .is_none_or(|connection| connection.socket_closed || connection.finished())
    }

    /// A connection whose writer should look again (replies queued, or its end reached);
    /// each is listed once until taken.
    pub fn poll_writable(&mut self) -> Option<ConnectionId> {
        let id = self.writable.pop()?;
        if let Some(connection) = self.connections.get_mut(id) {
            connection.writable_listed = false;
        }
        Some(id)
    }

    pub(super) fn list_writable(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.get_mut(id) {
            if !connection.writable_listed {
                connection.writable_listed = true;
                self.writable.push(id);
            }
        }
    }

    /// Queues a reply this shard archives, holding `credit` until it is written.
    pub(super) fn queue_reply(&mut self, id: ConnectionId, reply: &Reply, credit: Credit) {
        self.queue_record(id, credit, |frames| frames.push(reply).is_ok());
    }

    /// Queues a reply another shard archived, holding `credit` until it is written.
    pub(super) fn queue_archived_reply(
        &mut self,
        id: ConnectionId,
        archive: &[u8],
        credit: Credit,
    ) {
        self.queue_record(id, credit, |frames| frames.push_archived(archive).is_ok());
    }

    fn queue_record(
        &mut self,
        id: ConnectionId,
        credit: Credit,
        push: impl Fn(&mut FrameBuilder) -> bool,
    ) {
        let epoch = self.placement.epoch().get();
        let Some(connection) = self.connections.get_mut(id) else {
            return;
        };
        let frames = &mut connection.out;
        if !frames.is_open() {
            frames.begin(FrameKind::Replies);
            self.stats.traffic.frames_sent += 1;
        }
        if !push(frames) {
            // Replies are bounded below the frame limit, so this frame is merely full.
            frames.finish(epoch);
            frames.begin(FrameKind::Replies);
            self.stats.traffic.frames_sent += 1;
            assert!(push(frames), "a reply fits an empty frame");
        }
        connection.out_credit = connection.out_credit.plus(credit);
        // `list_writable`, without looking the connection up again.
        if !connection.writable_listed {
            connection.writable_listed = true;
            self.writable.push(id);
        }
    }

    /// Queues the current map for connection `id`, after the replies queued so far.
    pub(super) fn queue_map(&mut self, id: ConnectionId) {
        let epoch = self.placement.epoch();
        let Some(connection) = self.connections.get_mut(id) else {
            return;
        };
        if connection.out.is_open() {
            connection.out.finish(epoch.get());
        }
        connection.out.append_frames(&self.map_reply);
        connection.map_epoch_sent = epoch;
        self.stats.traffic.frames_sent += 1;
        self.list_writable(id);
    }
}
