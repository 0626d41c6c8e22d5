//! Reports of a `trove bench` run: everything that turns measured histograms into files a
//! performance engineer (or a CI job) reads.
//!
//! The load generator fills a [`Report`]: one [`RunRecord`] against trove, optionally one
//! against a peer (Redis) driven by the same event stream, optionally a loopback
//! [`Calibration`] and a rate [`Sweep`]. [`write_all`] then writes, into one directory:
//!
//! | file | what it is | module |
//! |---|---|---|
//! | `summary.json` | the summary, schema `trove.bench.summary/v2` ([`SUMMARY_SCHEMA_JSON`]) | [`summary`] |
//! | `<target>.corrected.hgrm`, `<target>.uncorrected.hgrm` | HdrHistogram percentile distributions, µs | [`hgrm`] |
//! | `<target>.hlog` | HdrHistogram V2 interval log, 1 s intervals, corrected latency, ns | [`hlog`] |
//! | `redis-benchmark.csv` | redis-benchmark 7 `--csv` header and one row per target | [`formats`] |
//! | `bencher.json` | Bencher Metric Format | [`formats`] |
//! | `github-action-benchmark.json` | github-action-benchmark `customSmallerIsBetter` | [`formats`] |
//! | `latency-by-percentile.svg` | corrected and uncorrected latency by percentile, log axis | [`plot`] |
//! | `sweep-p99-vs-throughput.svg` | a sweep's p99 against achieved throughput (sweeps only) | [`plot`] |
//!
//! `<target>` is `trove` and, when a peer ran, the peer's name. [`print_summary`] prints the
//! compact table a person reads on the terminal. Everything here runs on the generator's
//! control thread after the measured phase; nothing here is on a shard.

pub mod formats;
pub mod hgrm;
pub mod hlog;
pub mod plot;
pub mod summary;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

pub use summary::{SUMMARY_SCHEMA, SUMMARY_SCHEMA_JSON, SUMMARY_SCHEMA_V1, Summary};

/// How the load generator paced its sends.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadModel {
    /// Open loop: events are sent on a fixed schedule, whatever the replies do.
    Open { rate_per_s: f64 },
    /// Closed loop: each connection keeps this many events in flight.
    Closed { inflight_per_connection: u32 },
}

/// One measured run of the load generator against one target.
///
/// Latency histograms record nanoseconds (3 significant figures). Counts cover the measured
/// phase only; warm-up is excluded. Every event sent ends in exactly one of `acknowledged`,
/// `rejected`, `busy` or `errors`, or was still in flight when the phase ended.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// `"trove"` or a peer's name (`"redis"`). Also the prefix of this run's file names.
    pub target: String,
    pub load: LoadModel,
    /// Wall clock at the start of the measured phase, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Length of the measured phase, seconds.
    pub duration_s: f64,
    /// Events written to the target.
    pub sent: u64,
    /// Events the target applied and answered with success.
    pub acknowledged: u64,
    /// Events the target applied and refused by its rules (a claim already won, a full hunt).
    pub rejected: u64,
    /// Events the target refused without applying them, because it was full (fail-fast mode).
    pub busy: u64,
    /// Events that got an error reply, a broken connection or no reply at all.
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Latency from each event's intended send time (coordinated-omission corrected), ns.
    pub corrected_ns: Histogram<u64>,
    /// Latency from each event's actual send time, ns.
    pub uncorrected_ns: Histogram<u64>,
    /// Generator lag: actual send time minus intended send time, ns.
    pub lag_ns: Histogram<u64>,
    /// One sample per second of the measured phase, in order.
    pub intervals: Vec<IntervalSample>,
}

impl RunRecord {
    /// The rate the generator meant to send at, for an open-loop run.
    pub fn offered_rate_per_s(&self) -> Option<f64> {
        match self.load {
            LoadModel::Open { rate_per_s } => Some(rate_per_s),
            LoadModel::Closed { .. } => None,
        }
    }

    /// Events the target applied (acknowledged or rejected by its rules), per second.
    pub fn achieved_rate_per_s(&self) -> f64 {
        per_second((self.acknowledged + self.rejected) as f64, self.duration_s)
    }

    /// Bytes the generator wrote to the target, per second.
    pub fn bytes_sent_per_s(&self) -> f64 {
        per_second(self.bytes_sent as f64, self.duration_s)
    }
}

fn per_second(amount: f64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        amount / duration_s
    } else {
        0.0
    }
}

/// The latencies of one interval (one second) of the measured phase.
#[derive(Clone, Debug)]
pub struct IntervalSample {
    /// Start of the interval, seconds after the start of the measured phase.
    pub start_offset_s: f64,
    pub duration_s: f64,
    pub corrected_ns: Histogram<u64>,
    pub uncorrected_ns: Histogram<u64>,
}

/// The physical limits measured in the same run, on the same CPUs: a plain-socket loopback
/// round trip and one-way byte rate.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Round-trip time of a small message over loopback TCP, ns.
    pub loopback_rtt_ns: Histogram<u64>,
    /// One-way bytes per second over loopback TCP.
    pub loopback_bytes_per_s: f64,
    /// The CPUs the calibration ran on.
    pub cpus: Vec<usize>,
}

/// One step of a rate sweep.
#[derive(Clone, Debug)]
pub struct SweepStep {
    pub offered_rate_per_s: f64,
    pub record: RunRecord,
    /// Whether the step's corrected p99 held the objective.
    pub met_slo: bool,
}

/// A search for the highest rate that holds a p99 objective.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub slo_p99_us: f64,
    pub steps: Vec<SweepStep>,
    /// The highest offered rate whose step met the objective, if any did.
    pub best_rate_per_s: Option<f64>,
}

/// Everything one `trove bench` invocation measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The bench configuration as run (the serde form of the bench's config).
    pub config: serde_json::Value,
    /// The seed the workload was generated from.
    pub seed: u64,
    /// The run against trove.
    pub main: RunRecord,
    /// The same event stream against a peer.
    pub peer: Option<RunRecord>,
    pub calibration: Option<Calibration>,
    pub sweep: Option<Sweep>,
    /// The embedded node's own account, once it stopped.
    pub node: Option<summary::NodeSummary>,
    /// A local cluster's own account of the run (`--cluster`).
    pub cluster: Option<crate::bench::cluster::ClusterFigures>,
}

/// File name of the summary inside the output directory.
pub const SUMMARY_FILE: &str = "summary.json";
/// File name of the redis-benchmark-shaped CSV.
pub const REDIS_CSV_FILE: &str = "redis-benchmark.csv";
/// File name of the Bencher Metric Format JSON.
pub const BENCHER_FILE: &str = "bencher.json";
/// File name of the github-action-benchmark `customSmallerIsBetter` JSON.
pub const GITHUB_ACTION_BENCHMARK_FILE: &str = "github-action-benchmark.json";
/// File name of the latency-by-percentile plot.
pub const LATENCY_PLOT_FILE: &str = "latency-by-percentile.svg";
/// File name of the sweep plot (written only for a sweep).
pub const SWEEP_PLOT_FILE: &str = "sweep-p99-vs-throughput.svg";

/// Output value unit scaling ratio of the `.hgrm` files: histograms hold ns, files show µs.
pub const HGRM_NS_PER_OUTPUT_UNIT: f64 = 1_000.0;
/// Percentile ticks per half distance in the `.hgrm` files (HdrHistogram's customary 5).
pub const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Writes every report file of `report` into `out_dir` (created if missing) and returns the
/// paths written, summary first.
pub fn write_all(out_dir: &Path, report: &Report) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(out_dir)?;
    let summary = Summary::of_report(report);
    let mut written = Vec::new();
    let mut write_file = |name: &str, bytes: &[u8]| -> io::Result<()> {
        let path = out_dir.join(name);
        fs::write(&path, bytes).map_err(|error| with_path(error, &path))?;
        written.push(path);
        Ok(())
    };

    write_file(SUMMARY_FILE, &summary.to_json_pretty()?)?;
    for record in std::iter::once(&report.main).chain(report.peer.as_ref()) {
        let prefix = file_prefix(&record.target);
        let mut hgrm_bytes = Vec::new();
        for (kind, histogram) in [
            ("corrected", &record.corrected_ns),
            ("uncorrected", &record.uncorrected_ns),
        ] {
            hgrm_bytes.clear();
            hgrm::write_percentile_distribution(
                histogram,
                HGRM_TICKS_PER_HALF_DISTANCE,
                HGRM_NS_PER_OUTPUT_UNIT,
                &mut hgrm_bytes,
            )?;
            write_file(&format!("{prefix}.{kind}.hgrm"), &hgrm_bytes)?;
        }
        let mut hlog_bytes = Vec::new();
        hlog::write_interval_log(record, &mut hlog_bytes)?;
        write_file(&format!("{prefix}.hlog"), &hlog_bytes)?;
    }
    write_file(
        REDIS_CSV_FILE,
        formats::redis_benchmark_csv(report).as_bytes(),
    )?;
    write_file(
        BENCHER_FILE,
        &json_bytes(&formats::bencher_metric_format(&summary))?,
    )?;
    write_file(
        GITHUB_ACTION_BENCHMARK_FILE,
        &json_bytes(&formats::github_action_benchmark(&summary))?,
    )?;
    write_file(
        LATENCY_PLOT_FILE,
        plot::latency_by_percentile(report)?.as_bytes(),
    )?;
    if let Some(sweep) = &report.sweep {
        write_file(
            SWEEP_PLOT_FILE,
            plot::sweep_p99_vs_throughput(sweep)?.as_bytes(),
        )?;
    }
    Ok(written)
}

/// A target name made safe to start a file name: anything but ASCII letters, digits, `-` and
/// `_` becomes `_`.
pub fn file_prefix(target: &str) -> String {
    let prefix: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if prefix.is_empty() {
        "target".to_string()
    } else {
        prefix
    }
}

fn json_bytes(value: &serde_json::Value) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Prints the compact terminal table: rate and corrected/uncorrected p50, p99, p99.9 and max,
/// with the peer's column and the trove/peer ratio when a peer ran.
pub fn print_summary(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let summary = Summary::of_report(report);
    let main = &summary.main;
    let peer = summary.peer.as_ref();
    let mut header = format!("{:<24} {:>14}", "", main.target);
    if let Some(peer) = peer {
        header.push_str(&format!(" {:>14} {:>12}", peer.target, "ratio"));
    }
    writeln!(out, "{}", header.trim_end())?;

    let mut row = |label: &str, ours: f64, theirs: Option<f64>| -> io::Result<()> {
        let mut line = format!("{label:<24} {ours:>14.1}");
        if let Some(theirs) = theirs {
            let ratio = summary::ratio(ours, theirs)
                .map(|ratio| format!("{ratio:.2}x"))
                .unwrap_or_else(|| "-".to_string());
            line.push_str(&format!(" {theirs:>14.1} {ratio:>12}"));
        }
        writeln!(out, "{line}")
    };
    if let Some(offered) = main.offered_rate_per_s {
        row(
            "offered rate (/s)",
            offered,
            peer.and_then(|p| p.offered_rate_per_s),
        )?;
    }
    row(
        "achieved rate (/s)",
        main.achieved_rate_per_s,
        peer.map(|p| p.achieved_rate_per_s),
    )?;
    for (kind, ours, theirs) in [
        (
            "corrected",
            &main.latency_us.corrected,
            peer.map(|p| &p.latency_us.corrected),
        ),
        (
            "uncorrected",
            &main.latency_us.uncorrected,
            peer.map(|p| &p.latency_us.uncorrected),
        ),
    ] {
        for (name, pick) in summary::TABLE_PERCENTILES {
            row(&format!("{kind} {name} (us)"), pick(ours), theirs.map(pick))?;
        }
    }
    writeln!(
        out,
        "events: {} sent, {} acknowledged, {} rejected, {} busy, {} errors",
        main.events.sent,
        main.events.acknowledged,
        main.events.rejected,
        main.events.busy,
        main.events.errors
    )?;
    if let Some(log) = summary.node.as_ref().and_then(|node| node.log.as_ref()) {
        writeln!(
            out,
            "write-ahead log ({}): {} syncs, {} events per sync, {} syncs/s over the node's {:.1} s to the end of its run (set-up and warm-up included)",
            log.durability,
            log.syncs,
            format_optional(log.events_per_sync),
            format_optional(log.syncs_per_s),
            log.node_seconds,
        )?;
    }
    if let Some(calibration) = &summary.calibration {
        writeln!(
            out,
            "loopback: rtt p50 {:.1} us, p99 {:.1} us; latency p50 = {} x rtt p50, p99 = {} x rtt p99",
            calibration.loopback_rtt_us.p50,
            calibration.loopback_rtt_us.p99,
            format_optional(calibration.latency_p50_over_rtt_p50),
            format_optional(calibration.latency_p99_over_rtt_p99),
        )?;
    }
    if let Some(sweep) = &summary.sweep {
        let best = sweep
            .best_rate_per_s
            .map(|rate| format!("{rate:.0}/s"))
            .unwrap_or_else(|| "none".to_string());
        writeln!(
            out,
            "sweep: {} steps, best rate holding p99 <= {} us: {best}",
            sweep.steps.len(),
            sweep.slo_p99_us
        )?;
    }
    Ok(())
}

fn format_optional(value: Option<f64>) -> String {
    value
        .map(|value| format!("{value:.2}"))
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::fixtures::{report_with_everything, simple_report};
    use super::*;

    #[test]
    fn write_all_writes_every_documented_file() {
        let dir = fixtures::temp_dir("write-all");
        let written = write_all(&dir, &report_with_everything()).expect("reports are written");
        let names: Vec<String> = written
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            SUMMARY_FILE,
            "trove.corrected.hgrm",
            "trove.uncorrected.hgrm",
            "trove.hlog",
            "redis.corrected.hgrm",
            "redis.uncorrected.hgrm",
            "redis.hlog",
            REDIS_CSV_FILE,
            BENCHER_FILE,
            GITHUB_ACTION_BENCHMARK_FILE,
            LATENCY_PLOT_FILE,
            SWEEP_PLOT_FILE,
        ] {
            assert!(
                names.iter().any(|name| name == expected),
                "{expected} in {names:?}"
            );
        }
        for path in &written {
            assert!(
                fs::metadata(path).unwrap().len() > 0,
                "{} is empty",
                path.display()
            );
        }
        assert_eq!(names[0], SUMMARY_FILE);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_all_skips_the_sweep_plot_without_a_sweep() {
        let dir = fixtures::temp_dir("no-sweep");
        let written = write_all(&dir, &simple_report()).expect("reports are written");
        assert!(!written.iter().any(|path| path.ends_with(SWEEP_PLOT_FILE)));
        assert!(!written.iter().any(|path| path.ends_with("redis.hlog")));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_terminal_table_has_peer_and_ratio_columns_only_with_a_peer() {
        let mut alone = Vec::new();
        print_summary(&simple_report(), &mut alone).unwrap();
        let alone = String::from_utf8(alone).unwrap();
        assert!(alone.contains("corrected p99 (us)"), "{alone}");
        assert!(!alone.contains("ratio"), "{alone}");

        let mut compared = Vec::new();
        print_summary(&report_with_everything(), &mut compared).unwrap();
        let compared = String::from_utf8(compared).unwrap();
        let header = compared.lines().next().unwrap();
        assert!(header.contains("trove") && header.contains("redis") && header.contains("ratio"));
        assert!(compared.contains("sweep: "), "{compared}");
        assert!(compared.contains("loopback: "), "{compared}");
    }

    #[test]
    fn file_prefixes_are_safe_names() {
        assert_eq!(file_prefix("redis"), "redis");
        assert_eq!(file_prefix("../etc/x y"), "___etc_x_y");
        assert_eq!(file_prefix(""), "target");
    }

    #[test]
    fn achieved_rate_counts_applied_events_only() {
        let report = simple_report();
        let record = &report.main;
        let expected = (record.acknowledged + record.rejected) as f64 / record.duration_s;
        assert_eq!(record.achieved_rate_per_s(), expected);
        assert!(
            record.busy > 0,
            "the fixture has busy events, which must not count"
        );
    }
}
