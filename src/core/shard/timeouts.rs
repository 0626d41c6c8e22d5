//! Connection timeouts, decided in virtual time: an idle connection is closed after the idle
//! timeout, a connection whose socket takes no replies for the write-stall timeout is closed
//! (its credit returns), and when the slots are full the longest-idle connection gives way to
//! a new one. The core only decides; the shell closes what [`ShardCore::poll_close`] lists
//! and reports it with `handle_closed`. Shard-local.

use crate::core::ids::ConnectionId;
use crate::core::shard::{CloseReason, ShardCore};

impl ShardCore {
    /// Checks every connection's timeouts at `now_ns`. The shell calls it at least every
    /// `TIMEOUT_CHECK_INTERVAL_MS_MAX`; a write is watched from the first check that sees it
    /// outstanding, so a stall is noticed within one interval of its timeout.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        let (idle_ns, stall_ns) = (self.config.idle_timeout_ns, self.config.write_stall_ns);
        let mut expired = Vec::new();
        for connection in self.connections.iter_mut() {
            if connection.socket_closed || connection.closing {
                continue;
            }
            if connection.writing_bytes > 0 {
                let since = *connection.write_watch_ns.get_or_insert(now_ns);
                if now_ns.saturating_sub(since) >= stall_ns {
                    expired.push((connection.id, CloseReason::WriteStalled));
                }
            } else if connection.idle()
                && now_ns.saturating_sub(connection.last_active_ns) >= idle_ns
            {
                expired.push((connection.id, CloseReason::IdleTimeout));
            }
        }
        for (id, reason) in expired {
            self.request_close(id, reason);
        }
    }

    /// Why the core asked to close connection `id`, if it did.
    pub fn close_requested(&self, id: ConnectionId) -> Option<CloseReason> {
        self.connections
            .get(id)
            .and_then(|connection| connection.close_reason)
    }

    /// A connection the core wants closed, and why; each is listed once.
    pub fn poll_close(&mut self) -> Option<(ConnectionId, CloseReason)> {
        self.closing.pop()
    }

    /// Asks the shell to close the idle connection that has been silent longest; false if no
    /// connection is idle.
    pub(super) fn evict_longest_idle(&mut self) -> bool {
        let longest = self
            .connections
            .iter()
            .filter(|connection| connection.idle())
            .min_by_key(|connection| connection.last_active_ns)
            .map(|connection| connection.id);
        match longest {
            Some(id) => {
                self.request_close(id, CloseReason::Evicted);
                true
            }
            None => false,
        }
    }

    fn request_close(&mut self, id: ConnectionId, reason: CloseReason) {
        if let Some(connection) = self.connections.get_mut(id) {
            connection.closing = true;
            connection.close_reason = Some(reason);
            self.closing.push((id, reason));
        }
    }
}
