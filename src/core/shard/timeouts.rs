//! Connection timeouts, decided in virtual time: an idle connection is closed after the idle
//! timeout, a connection whose socket takes no replies for the write-stall timeout is closed
//! (its credit returns), a frame that started arriving must arrive whole within the
//! frame-arrival time (a slowloris is closed), and when the slots are full the longest-idle
//! connection gives way to a new one. The core only decides; the shell closes what
//! [`ShardCore::poll_close`] lists, first telling the client why where its socket can still
//! take it ([`ShardCore::close_notice`]), and reports it with `handle_closed`. Shard-local.

use crate::core::ids::ConnectionId;
use crate::core::shard::admission::Readable;
use crate::core::shard::{CloseReason, ShardCore};

/// Error code of the frame that tells a client why the node closed its connection (idle,
/// evicted, a frame too slow). See `stop::ERROR_CODE_SHUTTING_DOWN` for the codes before it.
pub const ERROR_CODE_CONNECTION_CLOSED: u16 = 103;

impl ShardCore {
    /// Checks every connection's timeouts at `now_ns`. The shell calls it at least every
    /// `TIMEOUT_CHECK_INTERVAL_MS_MAX`; a write is watched from the first check that sees it
    /// outstanding, so a stall is noticed within one interval of its timeout.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        let (idle_ns, stall_ns) = (self.config.idle_timeout_ns, self.config.write_stall_ns);
        let frame_ns = self.config.frame_arrival_ns;
        // A reader that may not read cannot receive the rest of its frame: its time starts
        // over, so a client is never closed for the shard's own back-pressure.
        let waiting: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|c| c.frame_started_ns.is_some())
            .map(|c| c.id)
            .filter(|&id| self.readable(id) == Readable::NotYet)
            .collect();
        for id in waiting {
            if let Some(connection) = self.connections.get_mut(id) {
                connection.frame_started_ns = Some(now_ns);
            }
        }
        let mut expired = Vec::new();
        for connection in self.connections.iter_mut() {
            if connection.socket_closed || connection.closing {
                continue;
            }
            let frame_late = connection
                .frame_started_ns
                .is_some_and(|started| now_ns.saturating_sub(started) >= frame_ns);
            if frame_late {
                expired.push((connection.id, CloseReason::FrameTooSlow));
            } else if connection.writing_bytes > 0 {
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

    /// Whether connection `id`'s reader holds the start of a frame whose rest has not arrived
    /// (`true`) or only whole frames (`false`), after a read at `now_ns`. The frame-arrival
    /// time runs from the first report of a partial frame.
    pub fn handle_partial_frame(&mut self, now_ns: u64, id: ConnectionId, partial: bool) {
        if let Some(connection) = self.connections.get_mut(id) {
            connection.frame_started_ns = match (partial, connection.frame_started_ns) {
                (false, _) => None,
                (true, None) => Some(now_ns),
                (true, started) => started,
            };
        }
    }

    /// The text of the error frame that tells a client why the core closed its connection,
    /// for the reasons a client can act on; `None` for the others (a write stall: its socket
    /// takes nothing, and a frame after a half-written batch would corrupt the stream).
    pub fn close_notice(&self, reason: CloseReason) -> Option<String> {
        let ms = |ns: u64| ns / 1_000_000;
        Some(match reason {
            CloseReason::IdleTimeout => format!(
                "closed after {} ms with nothing in flight and nothing sent (the node's --idle-timeout-ms); reconnect when there is something to send",
                ms(self.config.idle_timeout_ns)
            ),
            CloseReason::Evicted => format!(
                "closed to make room for a new connection: {} was full and this connection was its longest idle; reconnect when there is something to send",
                self.shard
            ),
            CloseReason::FrameTooSlow => format!(
                "closed: a frame took longer than {} ms to arrive whole (the node's --frame-arrival-ms); send each frame in one go",
                ms(self.config.frame_arrival_ns)
            ),
            _ => return None,
        })
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

#[cfg(test)]
mod tests {
    use crate::core::ids::ShardId;
    use crate::core::partition::Placement;
    use crate::core::shard::{CloseReason, ConnectRefusal, ShardConfig, ShardCore};

    const MS: u64 = 1_000_000;

    fn core(edit: impl FnOnce(&mut ShardConfig)) -> ShardCore {
        let mut config = ShardConfig::defaults(1);
        edit(&mut config);
        ShardCore::with_config(ShardId(0), Placement::round_robin(64, 1).unwrap(), config)
    }

    #[test]
    fn a_frame_that_does_not_arrive_whole_in_time_closes_its_connection() {
        let mut core = core(|config| config.frame_arrival_ns = 500 * MS);
        let slow = core.handle_connect(0).unwrap();
        let steady = core.handle_connect(0).unwrap();
        core.handle_partial_frame(10 * MS, slow, true);
        core.handle_partial_frame(10 * MS, steady, true);
        // The steady one's frame completes; the slow one only dribbles on.
        core.handle_partial_frame(200 * MS, steady, false);
        core.handle_partial_frame(300 * MS, slow, true);
        core.handle_timeout(509 * MS);
        assert_eq!(core.poll_close(), None, "not 500 ms yet");
        core.handle_timeout(510 * MS);
        assert_eq!(core.poll_close(), Some((slow, CloseReason::FrameTooSlow)));
        assert_eq!(core.poll_close(), None);
        let notice = core.close_notice(CloseReason::FrameTooSlow).unwrap();
        assert!(notice.contains("500 ms") && notice.contains("--frame-arrival-ms"));
        core.handle_closed(510 * MS, slow, CloseReason::FrameTooSlow);
        assert_eq!(core.stats().connections_frame_too_slow, 1);
        assert!(core.close_notice(CloseReason::WriteStalled).is_none());
    }

    #[test]
    fn one_address_is_refused_past_its_share_and_others_are_not() {
        let mut core = core(|config| config.connections_per_source_max = 2);
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let first = core.handle_connect_from(0, Some(a)).unwrap();
        core.handle_connect_from(0, Some(a)).unwrap();
        assert_eq!(
            core.handle_connect_from(0, Some(a)),
            Err(ConnectRefusal::PerSource { max: 2 })
        );
        core.handle_connect_from(0, Some(b)).unwrap();
        // A closed connection frees its address's share.
        core.handle_read_closed(1, first, Ok(()));
        core.handle_closed(1, first, CloseReason::Finished);
        core.handle_connect_from(2, Some(a)).unwrap();
        let stats = core.stats();
        assert_eq!(stats.connections_refused_per_source, 1);
        assert_eq!(stats.connections_refused, 0, "not a full shard");
    }
}
