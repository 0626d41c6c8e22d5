//! The stop protocol: stop reading, answer what was received but not admitted, drain what was
//! admitted, then tell every peer this shard forwards no more and close the mesh.
//!
//! After [`ShardCore::handle_stop`] no connection may read ([`Readable::Never`]); whole frames
//! a reader still holds are answered `Error { ShuttingDown }` event by event; new connections
//! are refused. Every event admitted before is still applied (here or at its owner) and
//! answered. Once no connection is open and no socket credit is held, each peer gets a last
//! batch saying so; once both sides of a peer said it, the channel closes. Shard-local.
//!
//! [`Readable::Never`]: crate::core::shard::Readable::Never

use crate::core::shard::ShardCore;

impl ShardCore {
    /// The shard starts stopping.
    pub fn handle_stop(&mut self, _now_ns: u64) {
        self.stopping = true;
        self.after_release();
    }

    pub fn stopping(&self) -> bool {
        self.stopping
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
    }

    /// Credit came back or a connection ended: once a stopping shard has drained its
    /// connections, every flusher must look again (to say "no more events").
    pub(super) fn after_release(&mut self) {
        if self.stopping && self.connections_drained() {
            for peer in 0..self.peers.len() {
                self.list_mesh_ready(crate::core::ids::ShardId(peer as u16));
            }
        }
    }
}
