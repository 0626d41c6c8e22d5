//! Synthetic reports for the report and gate tests: deterministic histograms shaped like a
//! real run (a body around a few tens of µs and a tail), built without a load generator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use super::summary::{LogSummary, NodeSummary, Percentiles, ShardSummary};
use super::{Calibration, IntervalSample, LoadModel, Report, RunRecord, Sweep, SweepStep};
use crate::bench::cluster::{ClusterFigures, ClusterSpec, NodeFigures};

/// A histogram of ns with `count` values: a body near `body_ns` and a 1% tail up to
/// `tail_factor` times the body, spread by a fixed xorshift sequence seeded with `seed`.
pub fn latency_histogram(count: u64, body_ns: u64, tail_factor: u64, seed: u64) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut state = seed | 1;
    for index in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let spread = state % body_ns;
        let value = if index % 100 == 99 {
            body_ns * (1 + state % tail_factor.max(1)) + spread
        } else {
            body_ns / 2 + spread
        };
        histogram.record(value).unwrap();
    }
    histogram
}

/// An open-loop run of `seconds` one-second intervals against `target`.
pub fn run_record(target: &str, rate_per_s: f64, body_ns: u64, seed: u64) -> RunRecord {
    let seconds = 3;
    let per_second = 2_000;
    let mut corrected = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut uncorrected = corrected.clone();
    let mut intervals = Vec::new();
    for second in 0..seconds {
        let interval_corrected = latency_histogram(per_second, body_ns, 20, seed + second);
        let interval_uncorrected = latency_histogram(per_second, body_ns, 4, seed + second);
        corrected.add(&interval_corrected).unwrap();
        uncorrected.add(&interval_uncorrected).unwrap();
        intervals.push(IntervalSample {
            start_offset_s: second as f64,
            duration_s: 1.0,
            corrected_ns: interval_corrected,
            uncorrected_ns: interval_uncorrected,
        });
    }
    let sent = seconds * per_second;
    RunRecord {
        target: target.to_string(),
        load: LoadModel::Open { rate_per_s },
        started_unix_ms: 1_790_000_000_000,
        duration_s: seconds as f64,
        sent,
        acknowledged: sent - 30,
        rejected: 20,
        busy: 10,
        errors: 0,
        bytes_sent: sent * 96,
        bytes_received: sent * 48,
        corrected_ns: corrected,
        uncorrected_ns: uncorrected,
        lag_ns: latency_histogram(sent, 2_000, 5, seed ^ 0xabcd),
        intervals,
    }
}

/// trove alone: no peer, calibration or sweep.
pub fn simple_report() -> Report {
    Report {
        config: serde_json::json!({"rate": 2000.0, "hunts": 64, "mix": {"join": 10, "check_in": 70}}),
        seed: 7,
        main: run_record("trove", 2_000.0, 40_000, 11),
        peer: None,
        calibration: None,
        sweep: None,
        node: None,
        cluster: None,
    }
}

/// trove with a Redis peer, a loopback calibration and a three-step sweep.
pub fn report_with_everything() -> Report {
    let mut report = simple_report();
    report.peer = Some(run_record("redis", 2_000.0, 90_000, 23));
    report.calibration = Some(Calibration {
        loopback_rtt_ns: latency_histogram(5_000, 15_000, 3, 5),
        loopback_bytes_per_s: 2.5e9,
        cpus: vec![0, 1],
    });
    let steps = [
        (1_000.0, 30_000, true),
        (2_000.0, 45_000, true),
        (4_000.0, 400_000, false),
    ]
    .into_iter()
    .map(|(rate, body_ns, met_slo)| SweepStep {
        offered_rate_per_s: rate,
        record: run_record("trove", rate, body_ns, rate as u64),
        met_slo,
    })
    .collect();
    report.sweep = Some(Sweep {
        slo_p99_us: 1_000.0,
        steps,
        best_rate_per_s: Some(2_000.0),
    });
    report.node = Some(NodeSummary {
        shards: (0..2)
            .map(|shard| ShardSummary {
                shard,
                cpu: usize::from(shard),
                events_applied: 20_000,
                events_applied_for_peers: 100,
                events_forwarded: 100,
                frames_received: 400,
                frames_rejected: 0,
                connections_accepted: 1,
                socket_credit_waits: 3,
                mesh_credit_waits: 0,
                busy_replies: 0,
                frame_dispatch_us: Percentiles::of_ns(&latency_histogram(400, 8_000, 2, 31)),
                mesh_round_trip_us: Percentiles::of_ns(&latency_histogram(100, 20_000, 2, 37)),
            })
            .collect(),
        log: Some(LogSummary {
            durability: "sync".into(),
            syncs: 80,
            records_synced: 40_000,
            node_seconds: 2.0,
            syncs_per_s: Some(40.0),
            events_per_sync: Some(500.0),
        }),
    });
    report.cluster = Some(ClusterFigures {
        spec: ClusterSpec {
            nodes: 2,
            shards_per_node: 1,
            partitions: 64,
        },
        nodes: (1..=2)
            .map(|node| NodeFigures {
                node,
                events_applied: 20_000,
                link_messages: 10_000,
                link_bytes: 400_000,
                cpu_seconds: 1.5,
            })
            .collect(),
        link_metrics_exported: true,
        events_applied: 40_000,
        link_messages_per_event: 0.5,
        link_bytes_per_event: 20.0,
        cpu_seconds_per_million_events: 75.0,
        moves: None,
        drain: None,
    });
    report
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "trove-report-{}-{name}-{unique}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
