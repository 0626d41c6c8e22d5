//! The stop protocol: stop reading, answer what was received but not admitted, drain what was
//! admitted, then tell every peer this shard forwards no more and close the mesh.
//!
//! After [`ShardCore::handle_stop`] no connection may read ([`Readable::Never`]); whole frames
//! a reader still holds are answered `Error { ShuttingDown }` event by event; new connections
//! are refused. Every event admitted before is still applied (here or at its owner) and
//! answered. Once no connection is open and no socket credit is held, each peer gets a last
//! batch saying so; once both sides of a peer said it, the channel closes.
//!
//! Events still unread in a socket when the shard stops are not dropped behind a clean end of
//! stream: the shell reads on (bounded by `STOP_DRAIN_BYTES_MAX` and the grace period) and
//! counts them ([`ShardCore::handle_unread_at_stop`]), and the connection's last frame, after
//! its last reply, is an error frame ([`ERROR_CODE_SHUTTING_DOWN`]) naming how many were not
//! applied. Counting instead of answering each one keeps the cost at the receive buffer.
//! Shard-local.
//!
//! [`Readable::Never`]: crate::core::shard::Readable::Never

use crate::core::ids::ConnectionId;
use crate::core::shard::ShardCore;

/// Error code of the frame a stopping node sends after the last reply of a connection that
/// had sent events it did not apply. Codes below 100 are `FrameError` codes; 100 is
/// `ERROR_CODE_CONNECTION_LIMIT`, 101 `ERROR_CODE_AUTH_FAILED`.
pub const ERROR_CODE_SHUTTING_DOWN: u16 = 102;

/// The text of that frame.
pub fn unread_notice(events: u64) -> String {
    format!(
        "the node is stopping: {events} events sent after it stopped reading were not applied (ShuttingDown), nor will any sent after this; send them again once it is back, or to another node"
    )
}

impl ShardCore {
    /// The shard starts stopping.
    pub fn handle_stop(&mut self, _now_ns: u64) {
        self.stopping = true;
        self.after_release();
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The stopping shard's reader of connection `id` found `events` more events in its
    /// socket after its last whole frames; none is applied, and the connection's last frame
    /// says how many (counted with the `ShuttingDown` answers).
    pub fn handle_unread_at_stop(&mut self, id: ConnectionId, events: u64) {
        if events == 0 {
            return;
        }
        if let Some(connection) = self.connections.get_mut(id) {
            if !connection.socket_closed {
                connection.unread_at_stop += events;
                self.stats.shutting_down_replies += events;
                self.list_writable(id);
            }
        }
    }

    /// No connection is open and every event admitted from a socket has been answered.
    pub fn connections_drained(&self) -> bool {
        self.connections.open() == 0 && self.credit.is_idle() && self.log_durable()
    }

    /// Stopped for good: connections drained and every peer's channel closed both ways.
    pub fn drained(&self) -> bool {
        self.stopping
            && self.connections_drained()
            && self.peers.iter().flatten().all(|peer| peer.closed())
            && self.links.inbound_drained()
    }

    /// Credit came back or a connection ended: once a stopping shard has drained its
    /// connections, every flusher must look again (to say "no more events").
    pub(super) fn after_release(&mut self) {
        if self.stopping && self.connections_drained() {
            for peer in 0..self.peers.len() {
                self.list_mesh_ready(crate::core::ids::ShardId(peer as u16));
            }
            self.links.list_all_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::codec::{Decoded, FrameBuilder, FrameKind, decode_frame};
    use crate::core::ids::ShardId;
    use crate::core::partition::Placement;
    use crate::core::shard::ShardCore;

    #[test]
    fn events_left_unread_at_stop_are_named_in_the_last_frame() {
        let mut core = ShardCore::new(ShardId(0), Placement::round_robin(64, 1).unwrap());
        let conn = core.handle_connect(0).unwrap();
        core.handle_stop(1);
        core.handle_unread_at_stop(conn, 42);
        let mut out = FrameBuilder::new();
        assert!(!core.write_finished(conn));
        core.handle_read_closed(2, conn, Ok(()));
        assert!(core.poll_replies(conn, &mut out));
        match decode_frame(out.bytes()) {
            Ok(Decoded::Frame { header, .. }) => assert_eq!(header.kind, FrameKind::Error),
            other => panic!("expected the stop notice, got {other:?}"),
        }
        core.handle_written(3, conn, out.len());
        assert!(core.write_finished(conn));
        assert_eq!(core.stats().shutting_down_replies, 42);
    }
}
