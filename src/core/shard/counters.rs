//! What a shard counts: events by fate, connections, frames, credit waits, and the latency of
//! its stages as HdrHistograms. Plain values on the shard's core; a copy is handed out when
//! asked ([`ShardCore::stats`](crate::core::shard::ShardCore::stats)).

use hdrhistogram::Histogram;

use crate::constants::STAGE_LATENCY_NS_MAX;
use crate::core::credit::Credit;

/// How long the stages of a shard's data path took, as HdrHistograms of nanoseconds.
#[derive(Clone, Debug)]
pub struct StageLatencies {
    /// From a frame's arrival to the dispatch of its last event: credit waits included.
    pub frame_dispatch_ns: Histogram<u64>,
    /// From forwarding an event to another shard to its reply arriving back: the cross-core hop.
    pub mesh_round_trip_ns: Histogram<u64>,
}

impl Default for StageLatencies {
    fn default() -> StageLatencies {
        let histogram = || {
            Histogram::new_with_bounds(1, STAGE_LATENCY_NS_MAX, 3).expect("valid histogram bounds")
        };
        StageLatencies {
            frame_dispatch_ns: histogram(),
            mesh_round_trip_ns: histogram(),
        }
    }
}

/// Counters of one shard. Shard-local; reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: u16,
    /// The CPU the shard ran on (filled in by the shell; the core does not know it).
    pub cpu: usize,
    pub events_applied: u64,
    pub events_forwarded: u64,
    pub events_applied_for_peers: u64,
    /// Events answered `Moved`: their partition is owned elsewhere.
    pub events_moved: u64,
    /// Events received after the shard started stopping, answered `ShuttingDown`.
    pub shutting_down_replies: u64,
    pub mesh_batches_sent: u64,
    pub mesh_batches_received: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Connections cut at shutdown because their replies could not be written in time.
    pub connections_force_closed: u64,
    /// Connections closed because they failed or did not finish the authentication handshake.
    pub connections_unauthenticated: u64,
    /// Connections closed because they failed or did not finish the TLS handshake.
    pub connections_tls_failed: u64,
    /// Connections closed for staying idle past the idle timeout.
    pub connections_idle_closed: u64,
    /// Connections closed because their socket took no replies for the write-stall timeout.
    pub connections_write_stalled: u64,
    /// Idle connections closed to make room for a new one when the shard was full.
    pub connections_evicted: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub busy_replies: u64,
    /// Of `busy_replies`, events answered `Busy` because they waited past the shedding
    /// target under a standing queue (fail-fast mode), not for want of credit.
    pub events_shed: u64,
    /// Connections closed because a frame they had started did not arrive whole in time.
    pub connections_frame_too_slow: u64,
    /// Connections refused because their source address already held its share of slots.
    pub connections_refused_per_source: u64,
    /// Times an event found no socket credit and waited (or was answered `Busy`).
    pub socket_credit_waits: u64,
    /// Times a forward found no mesh credit at its owner and waited (or was answered `Busy`).
    pub mesh_credit_waits: u64,
    /// The most socket credit ever held at once.
    pub socket_inflight_peak: Credit,
    /// The most mesh credit ever held at once at any one peer.
    pub mesh_inflight_peak: Credit,
    pub stages: StageLatencies,
    /// What the executor's stall detector saw (filled in by the shell, like `cpu`).
    pub stalls: Stalls,
}

/// What the stall detector saw on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stalls {
    /// Task-queue runs that went past their time slice by more than the threshold.
    pub count: u64,
    /// The largest overage past the time slice, in nanoseconds.
    pub worst_overage_ns: u64,
}

/// Credit held and capacity of a shard's pools, and its open connections, at one instant.
/// Plain numbers taken on the shard's core, so they may leave it (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    pub connections_open: u64,
    /// The shard's budget for events read from its sockets.
    pub socket_held: Credit,
    pub socket_capacity: Credit,
    /// This shard's shares of its peers' mesh budgets, summed over the peers (events, bytes).
    pub mesh_held: (u64, u64),
    pub mesh_capacity: (u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::STAGE_HISTOGRAM_BYTES_MAX;

    #[test]
    fn the_memory_sum_covers_a_stage_histogram() {
        let stages = StageLatencies::default();
        // `distinct_values` is the length of the histogram's counter array, all of it allocated.
        let counters = stages.frame_dispatch_ns.distinct_values();
        let bytes = size_of::<Histogram<u64>>() + counters * size_of::<u64>();
        assert!(
            bytes <= STAGE_HISTOGRAM_BYTES_MAX,
            "a stage histogram takes {bytes} bytes, STAGE_HISTOGRAM_BYTES_MAX counts {STAGE_HISTOGRAM_BYTES_MAX}"
        );
    }
}
