//! Load shedding in fail-fast mode: an event that waited too long before it was read is
//! answered `Busy`, so the events that are answered are answered in time.
//!
//! Under overload the backlog does not sit in trove's credit pools but in the sockets: the
//! shard reads as fast as it applies, the kernel queues the rest, and credit never runs out.
//! So the signal is the one CoDel uses, the *sojourn*: how long an event waited between
//! reaching the node's socket and being dispatched. The shell measures, per read, a lower
//! bound of the sojourn of the newest bytes it read (see `net::sojourn`: the socket's unread
//! bytes are sampled with `FIONREAD` at each read, and a byte's arrival is bounded by the
//! first sample that counted it); the core turns it into an arrival time and, for each event,
//! into the wait at the moment it is dispatched (time spent in the receive buffer behind
//! slower events included).
//!
//! The decision is CoDel's with its control law replaced for clients that do not slow down
//! when refused (an open-loop producer sends as much after a `Busy` as before), in the manner
//! of the CoDel adaptation for RPC queues described in "Fail at Scale" (Maurer, ACM Queue
//! 2015): a per-connection state machine with two states.
//! - **Absorbing**: a wait past the target is a burst and is served, up to the interval; a wait
//!   that stays past the target for a whole interval means a standing queue: start shedding.
//! - **Shedding**: every event that waited past the target is answered `Busy` (cheap: no apply,
//!   no credit), which drains the socket faster than it fills; the ones under the target are
//!   served. Once waits stay under the target for a whole interval, go back to absorbing.
//!
//! So under sustained overload the answered events wait at most about the target, and a
//! short burst is absorbed as CoDel would (never past the interval). Per connection, like
//! fq_codel's per-flow queues: a client that stops reading its replies (its socket backs up
//! because the shard stops reading it) sheds its own events, not everyone's. Shard-local.

use crate::core::ids::ConnectionId;
use crate::core::shard::ShardCore;

/// Where one connection's sojourn stands. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SojournGate {
    /// When the newest bytes read had reached the socket at the latest; `None` until the
    /// shell measured a read (a shell that does not measure is never shed).
    arrived_ns: Option<u64>,
    state: ShedState,
}

#[derive(Clone, Copy, Debug)]
enum ShedState {
    /// Serving bursts; `above_since` is when waits went past the target.
    Absorbing { above_since: Option<u64> },
    /// A standing queue: shedding what waited past the target; `below_since` is when waits
    /// went under it.
    Shedding { below_since: Option<u64> },
}

impl Default for ShedState {
    fn default() -> ShedState {
        ShedState::Absorbing { above_since: None }
    }
}

impl SojournGate {
    /// Bytes read at `now_ns` whose newest had waited at least `sojourn_ns` in the socket.
    fn read(&mut self, now_ns: u64, sojourn_ns: u64) {
        self.arrived_ns = Some(now_ns.saturating_sub(sojourn_ns));
    }

    /// Whether an event of the bytes last read, dispatched at `now_ns`, is served (`true`) or
    /// answered `Busy`.
    fn admit(&mut self, now_ns: u64, target_ns: u64, interval_ns: u64) -> bool {
        let Some(arrived_ns) = self.arrived_ns else {
            return true;
        };
        let wait_ns = now_ns.saturating_sub(arrived_ns);
        match &mut self.state {
            ShedState::Absorbing { above_since } => {
                if wait_ns <= target_ns {
                    *above_since = None;
                    return true;
                }
                let since = *above_since.get_or_insert(now_ns);
                if now_ns - since >= interval_ns {
                    self.state = ShedState::Shedding { below_since: None };
                    return false;
                }
                wait_ns <= interval_ns
            }
            ShedState::Shedding { below_since } => {
                if wait_ns > target_ns {
                    *below_since = None;
                    return false;
                }
                let since = *below_since.get_or_insert(now_ns);
                if now_ns - since >= interval_ns {
                    self.state = ShedState::default();
                }
                true
            }
        }
    }

    /// Shedding now (a standing queue was seen and has not drained for an interval yet).
    fn shedding(&self) -> bool {
        matches!(self.state, ShedState::Shedding { .. })
    }
}

impl ShardCore {
    /// The shell read bytes from connection `id` at `now_ns`, and the newest of them had
    /// waited at least `sojourn_ns` in the socket. Only fail-fast shards use it.
    pub fn handle_sojourn(&mut self, now_ns: u64, id: ConnectionId, sojourn_ns: u64) {
        if let Some(connection) = self.connections.get_mut(id) {
            connection.sojourn.read(now_ns, sojourn_ns);
        }
    }

    /// Whether connection `id` is shedding now (for tests and metrics).
    pub fn shedding(&self, id: ConnectionId) -> bool {
        self.connections
            .get(id)
            .is_some_and(|connection| connection.sojourn.shedding())
    }

    /// In fail-fast mode, whether the next event of connection `id`, dispatched at `now_ns`,
    /// waited too long and is to be answered `Busy`; counts it if so.
    pub(super) fn shed(&mut self, now_ns: u64, id: ConnectionId) -> bool {
        if !self.config.fail_fast {
            return false;
        }
        let (target_ns, interval_ns) = (self.config.shed_target_ns, self.config.shed_interval_ns);
        let Some(connection) = self.connections.get_mut(id) else {
            return false;
        };
        if connection.sojourn.admit(now_ns, target_ns, interval_ns) {
            return false;
        }
        self.stats.busy_replies += 1;
        self.stats.events_shed += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const TARGET: u64 = 5 * MS;
    const INTERVAL: u64 = 100 * MS;

    #[test]
    fn a_connection_never_measured_is_never_shed() {
        let mut gate = SojournGate::default();
        assert!(gate.admit(10_000 * MS, TARGET, INTERVAL));
    }

    #[test]
    fn a_burst_is_absorbed_up_to_the_interval() {
        let mut gate = SojournGate::default();
        gate.read(0, 0);
        // Waits past the target, but for less than an interval: served...
        assert!(gate.admit(50 * MS, TARGET, INTERVAL));
        assert!(gate.admit(90 * MS, TARGET, INTERVAL));
        assert!(!gate.shedding());
        // ...and back under the target: the burst is over.
        gate.read(100 * MS, 0);
        assert!(gate.admit(101 * MS, TARGET, INTERVAL));
        // A single wait past the interval itself is refused even while absorbing.
        gate.read(200 * MS, 150 * MS);
        assert!(!gate.admit(200 * MS, TARGET, INTERVAL));
        assert!(!gate.shedding(), "one late event is not a standing queue");
    }

    #[test]
    fn a_standing_queue_is_shed_past_the_target_until_it_drains_for_an_interval() {
        let mut gate = SojournGate::default();
        gate.read(0, 0);
        // Past the target for a whole interval: shedding starts.
        assert!(gate.admit(10 * MS, TARGET, INTERVAL));
        assert!(!gate.admit(110 * MS, TARGET, INTERVAL));
        assert!(gate.shedding());
        // Shedding: anything past the target is refused, anything under it served.
        gate.read(120 * MS, 6 * MS);
        assert!(!gate.admit(120 * MS, TARGET, INTERVAL));
        gate.read(130 * MS, MS);
        assert!(gate.admit(130 * MS, TARGET, INTERVAL));
        // An event that waits in the receive buffer past the target is refused too.
        assert!(!gate.admit(140 * MS, TARGET, INTERVAL));
        // Under the target for a whole interval: back to absorbing bursts.
        gate.read(150 * MS, 0);
        assert!(gate.admit(150 * MS, TARGET, INTERVAL));
        gate.read(250 * MS, 0);
        assert!(gate.admit(250 * MS, TARGET, INTERVAL));
        assert!(!gate.shedding());
        gate.read(300 * MS, 50 * MS);
        assert!(gate.admit(300 * MS, TARGET, INTERVAL), "a burst again");
    }
}
