//! The summary of a bench run: one JSON document with a named, versioned schema
//! (`trove.bench.summary/v2`, described by `summary.schema.json` beside this file), which is
//! what `trove gate` and other tools read. Version 2 adds `node`: what the embedded node's
//! shards counted and how long their stages took. Version 1 documents (no `node`) are still
//! read.
//!
//! Every latency is in microseconds; every rate is per second. A ratio whose denominator is
//! zero is `null`, never infinity. The document is built from a [`Report`] on the generator's
//! control thread.

use serde::{Deserialize, Serialize};

use super::{Calibration, Report, RunRecord, Sweep};
use crate::bench::config::CONFIG_HASH_IGNORED;
use crate::host::fingerprint::HostFingerprint;
use hdrhistogram::Histogram;

/// The schema name and version every summary this trove writes carries in its `schema` field.
pub const SUMMARY_SCHEMA: &str = "trove.bench.summary/v2";
/// The previous version, still read: the same document without `node`.
pub const SUMMARY_SCHEMA_V1: &str = "trove.bench.summary/v1";

/// The JSON Schema (draft 2020-12) of a summary.
pub const SUMMARY_SCHEMA_JSON: &str = include_str!("summary.schema.json");

/// The git revision this binary was built from (`unknown` outside a checkout).
pub const GIT_REVISION: &str = env!("TROVE_GIT_REVISION");

/// The summary document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Always [`SUMMARY_SCHEMA`].
    pub schema: String,
    pub tool: ToolInfo,
    /// The bench configuration as run.
    pub config: serde_json::Value,
    /// `xxh3-64:` and 16 hex digits: the xxh3 of the config's canonical JSON (keys sorted, no
    /// spaces), so two runs of the same configuration share it.
    pub config_hash: String,
    pub seed: u64,
    pub host: HostFingerprint,
    /// The run against trove.
    pub main: RunSummary,
    /// The same event stream against a peer, if one ran.
    pub peer: Option<RunSummary>,
    /// trove's figures divided by the peer's, if a peer ran.
    pub ratios_to_peer: Option<PeerRatios>,
    pub calibration: Option<CalibrationSummary>,
    pub sweep: Option<SweepSummary>,
    /// The embedded node's own account of the run (`null` against a `--target`; absent in v1).
    #[serde(default)]
    pub node: Option<NodeSummary>,
    /// With `--cluster`, the cluster's account of the run: events per node, inter-node
    /// messages and bytes per event, CPU-seconds per million events (absent before it).
    #[serde(default)]
    pub cluster: Option<crate::bench::cluster::ClusterFigures>,
}

/// What the embedded node's shards counted over the whole session (set-up, warm-up and run),
/// and how long their stages took, from the node's report when it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub shards: Vec<ShardSummary>,
    /// The write-ahead log's group commit, when the node logged (`--durability`); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSummary>,
}

/// What the node's write-ahead log did over the whole session (set-up, warm-up, run and the
/// final sync at stop), from its shards' counters, summed over shards. The shards hand their
/// counters over only when they stop, so the set-up's syncs count too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogSummary {
    /// `sync` or `async`.
    pub durability: String,
    /// Syncs that made records durable.
    pub syncs: u64,
    /// Records (events) those syncs made durable.
    pub records_synced: u64,
    /// From the node's start to the end of the run against it (a peer's run comes after).
    pub node_seconds: f64,
    /// `syncs` over `node_seconds`.
    pub syncs_per_s: Option<f64>,
    /// `records_synced` over `syncs`: how many events each sync carried (group commit).
    pub events_per_sync: Option<f64>,
}

impl LogSummary {
    /// The log's figures from the node's report; `node_seconds` is how long the node ran.
    pub fn of(durability: &str, report: &crate::node::NodeReport, node_seconds: f64) -> LogSummary {
        let syncs = report.shards.iter().map(|shard| shard.log.syncs).sum();
        let records_synced = report.shards.iter().map(|shard| shard.log.records).sum();
        LogSummary {
            durability: durability.to_owned(),
            syncs,
            records_synced,
            node_seconds,
            syncs_per_s: ratio(syncs as f64, node_seconds),
            events_per_sync: ratio(records_synced as f64, syncs as f64),
        }
    }
}

/// One shard's counters and stage latencies (microseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub shard: u16,
    pub cpu: usize,
    /// Events this shard applied as their partition's owner, whoever received them.
    pub events_applied: u64,
    /// Of those, events another shard received and forwarded here.
    pub events_applied_for_peers: u64,
    pub events_forwarded: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub connections_accepted: u64,
    pub socket_credit_waits: u64,
    pub mesh_credit_waits: u64,
    pub busy_replies: u64,
    /// From a frame's arrival to the dispatch of its last event, credit waits included.
    pub frame_dispatch_us: Percentiles,
    /// From forwarding an event to another shard to its reply arriving back.
    pub mesh_round_trip_us: Percentiles,
}

impl NodeSummary {
    pub fn of(report: &crate::node::NodeReport) -> NodeSummary {
        let shards = report
            .shards
            .iter()
            .map(|stats| ShardSummary {
                shard: stats.shard,
                cpu: stats.cpu,
                events_applied: stats.events_applied + stats.events_applied_for_peers,
                events_applied_for_peers: stats.events_applied_for_peers,
                events_forwarded: stats.events_forwarded,
                frames_received: stats.frames_received,
                frames_rejected: stats.frames_rejected,
                connections_accepted: stats.connections_accepted,
                socket_credit_waits: stats.socket_credit_waits,
                mesh_credit_waits: stats.mesh_credit_waits,
                busy_replies: stats.busy_replies,
                frame_dispatch_us: Percentiles::of_ns(&stats.stages.frame_dispatch_ns),
                mesh_round_trip_us: Percentiles::of_ns(&stats.stages.mesh_round_trip_ns),
            })
            .collect();
        NodeSummary { shards, log: None }
    }
}

/// Which build produced the summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    pub git_revision: String,
}

/// The figures of one run against one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub target: String,
    /// `"open"` or `"closed"`.
    pub load_model: String,
    /// Events in flight per connection (to each node it reaches), for a closed-loop run.
    pub inflight_per_connection: Option<u32>,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    /// The schedule's rate, for an open-loop run.
    pub offered_rate_per_s: Option<f64>,
    /// Events the target applied (acknowledged or rejected by its rules) per second.
    pub achieved_rate_per_s: f64,
    pub events: EventCounts,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency_us: Latencies,
    /// How far sends fell behind their schedule.
    pub generator_lag_us: Percentiles,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventCounts {
    pub sent: u64,
    pub acknowledged: u64,
    pub rejected: u64,
    pub busy: u64,
    pub errors: u64,
}

/// Latency measured from the intended send time (corrected) and from the actual one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub corrected: Percentiles,
    pub uncorrected: Percentiles,
}

/// A distribution in microseconds. All zero when `count` is zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
}

/// trove divided by the peer (below 1 for latency means trove is faster; above 1 for the rate
/// means trove carried more). `null` where the peer's figure is zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRatios {
    pub achieved_rate: Option<f64>,
    pub corrected_p50: Option<f64>,
    pub corrected_p99: Option<f64>,
    pub corrected_p999: Option<f64>,
    pub uncorrected_p50: Option<f64>,
    pub uncorrected_p99: Option<f64>,
}

/// The loopback limits and trove's figures stated against them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    pub loopback_rtt_us: Percentiles,
    pub loopback_bytes_per_s: f64,
    pub cpus: Vec<usize>,
    /// trove's corrected p50 as a multiple of the loopback round trip's p50.
    pub latency_p50_over_rtt_p50: Option<f64>,
    /// trove's corrected p99 as a multiple of the loopback round trip's p99.
    pub latency_p99_over_rtt_p99: Option<f64>,
    /// Bytes the generator sent to trove per second.
    pub engine_bytes_per_s: f64,
    /// `engine_bytes_per_s` as a fraction of the loopback byte rate.
    pub byte_rate_fraction_of_loopback: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    pub slo_p99_us: f64,
    pub steps: Vec<SweepStepSummary>,
    pub best_rate_per_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepStepSummary {
    pub offered_rate_per_s: f64,
    pub achieved_rate_per_s: f64,
    pub corrected_p99_us: f64,
    pub uncorrected_p99_us: f64,
    pub met_slo: bool,
}

/// A percentile's label and how to read it from a distribution.
pub type NamedPercentile = (&'static str, fn(&Percentiles) -> f64);

/// The percentiles of the terminal table, by label.
pub const TABLE_PERCENTILES: [NamedPercentile; 4] = [
    ("p50", |p| p.p50),
    ("p99", |p| p.p99),
    ("p99.9", |p| p.p999),
    ("max", |p| p.max),
];

impl Summary {
    /// Summarises a report, fingerprinting the host this runs on.
    pub fn of_report(report: &Report) -> Summary {
        Summary::of_report_on(report, HostFingerprint::of_this_host())
    }

    /// Summarises a report measured on `host`.
    pub fn of_report_on(report: &Report, host: HostFingerprint) -> Summary {
        let main = RunSummary::of_record(&report.main);
        let peer = report.peer.as_ref().map(RunSummary::of_record);
        let ratios_to_peer = peer.as_ref().map(|peer| PeerRatios::of(&main, peer));
        let calibration = report
            .calibration
            .as_ref()
            .map(|calibration| CalibrationSummary::of(calibration, &report.main, &main));
        Summary {
            schema: SUMMARY_SCHEMA.to_string(),
            tool: ToolInfo {
                name: env!("CARGO_PKG_NAME").to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                git_revision: GIT_REVISION.to_string(),
            },
            config: report.config.clone(),
            config_hash: config_hash(&report.config),
            seed: report.seed,
            host,
            main,
            peer,
            ratios_to_peer,
            calibration,
            sweep: report.sweep.as_ref().map(SweepSummary::of),
            node: report.node.clone(),
            cluster: report.cluster.clone(),
        }
    }

    /// The document as indented JSON with a final newline.
    pub fn to_json_pretty(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads a summary from a JSON value, saying what is wrong when it is not one.
    pub fn from_value(value: serde_json::Value) -> Result<Summary, String> {
        match value.get("schema").and_then(|schema| schema.as_str()) {
            Some(SUMMARY_SCHEMA | SUMMARY_SCHEMA_V1) => {}
            Some(other) => {
                return Err(format!(
                    "its schema is \"{other}\"; this trove reads \"{SUMMARY_SCHEMA}\" and \"{SUMMARY_SCHEMA_V1}\""
                ));
            }
            None => {
                return Err(format!(
                    "it has no \"schema\" field; a bench summary has \"schema\": \"{SUMMARY_SCHEMA}\""
                ));
            }
        }
        serde_path_to_error::deserialize(value).map_err(|error| {
            format!(
                "it is not a valid summary: at {}: {}",
                error.path(),
                error.inner()
            )
        })
    }
}

impl RunSummary {
    pub fn of_record(record: &RunRecord) -> RunSummary {
        let (load_model, inflight_per_connection) = match record.load {
            super::LoadModel::Open { .. } => ("open", None),
            super::LoadModel::Closed {
                inflight_per_connection,
            } => ("closed", Some(inflight_per_connection)),
        };
        RunSummary {
            target: record.target.clone(),
            load_model: load_model.to_string(),
            inflight_per_connection,
            started_unix_ms: record.started_unix_ms,
            duration_s: record.duration_s,
            offered_rate_per_s: record.offered_rate_per_s(),
            achieved_rate_per_s: record.achieved_rate_per_s(),
            events: EventCounts {
                sent: record.sent,
                acknowledged: record.acknowledged,
                rejected: record.rejected,
                busy: record.busy,
                errors: record.errors,
            },
            bytes_sent: record.bytes_sent,
            bytes_received: record.bytes_received,
            latency_us: Latencies {
                corrected: Percentiles::of_ns(&record.corrected_ns),
                uncorrected: Percentiles::of_ns(&record.uncorrected_ns),
            },
            generator_lag_us: Percentiles::of_ns(&record.lag_ns),
        }
    }
}

impl Percentiles {
    /// The distribution of a histogram of nanoseconds, in microseconds.
    pub fn of_ns(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles {
                count: 0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                p9999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        let us = |quantile: f64| ns_to_us(histogram.value_at_quantile(quantile) as f64);
        Percentiles {
            count: histogram.len(),
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            p9999: us(0.9999),
            max: ns_to_us(histogram.max() as f64),
            mean: ns_to_us(histogram.mean()),
        }
    }
}

fn ns_to_us(ns: f64) -> f64 {
    ns / 1_000.0
}

impl PeerRatios {
    fn of(main: &RunSummary, peer: &RunSummary) -> PeerRatios {
        let (ours, theirs) = (&main.latency_us, &peer.latency_us);
        PeerRatios {
            achieved_rate: ratio(main.achieved_rate_per_s, peer.achieved_rate_per_s),
            corrected_p50: ratio(ours.corrected.p50, theirs.corrected.p50),
            corrected_p99: ratio(ours.corrected.p99, theirs.corrected.p99),
            corrected_p999: ratio(ours.corrected.p999, theirs.corrected.p999),
            uncorrected_p50: ratio(ours.uncorrected.p50, theirs.uncorrected.p50),
            uncorrected_p99: ratio(ours.uncorrected.p99, theirs.uncorrected.p99),
        }
    }
}

impl CalibrationSummary {
    fn of(calibration: &Calibration, record: &RunRecord, main: &RunSummary) -> CalibrationSummary {
        let loopback_rtt_us = Percentiles::of_ns(&calibration.loopback_rtt_ns);
        let engine_bytes_per_s = record.bytes_sent_per_s();
        CalibrationSummary {
            latency_p50_over_rtt_p50: ratio(main.latency_us.corrected.p50, loopback_rtt_us.p50),
            latency_p99_over_rtt_p99: ratio(main.latency_us.corrected.p99, loopback_rtt_us.p99),
            byte_rate_fraction_of_loopback: ratio(
                engine_bytes_per_s,
                calibration.loopback_bytes_per_s,
            ),
            loopback_rtt_us,
            loopback_bytes_per_s: calibration.loopback_bytes_per_s,
            cpus: calibration.cpus.clone(),
            engine_bytes_per_s,
        }
    }
}

impl SweepSummary {
    fn of(sweep: &Sweep) -> SweepSummary {
        SweepSummary {
            slo_p99_us: sweep.slo_p99_us,
            steps: sweep
                .steps
                .iter()
                .map(|step| SweepStepSummary {
                    offered_rate_per_s: step.offered_rate_per_s,
                    achieved_rate_per_s: step.record.achieved_rate_per_s(),
                    corrected_p99_us: ns_to_us(
                        step.record.corrected_ns.value_at_quantile(0.99) as f64
                    ),
                    uncorrected_p99_us: ns_to_us(
                        step.record.uncorrected_ns.value_at_quantile(0.99) as f64,
                    ),
                    met_slo: step.met_slo,
                })
                .collect(),
            best_rate_per_s: sweep.best_rate_per_s,
        }
    }
}

/// `numerator / denominator`, or `None` when that is not a finite number.
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    let value = numerator / denominator;
    (denominator != 0.0 && value.is_finite()).then_some(value)
}

/// The xxh3 of a configuration's canonical JSON (object keys sorted, no whitespace), as
/// `xxh3-64:` and 16 lowercase hex digits, without the fields that do not change the workload
/// ([`CONFIG_HASH_IGNORED`]).
pub fn config_hash(config: &serde_json::Value) -> String {
    let mut hashed = config.clone();
    for (object, field) in CONFIG_HASH_IGNORED {
        if let Some(object) = hashed
            .get_mut(*object)
            .and_then(serde_json::Value::as_object_mut)
        {
            object.remove(*field);
        }
    }
    let mut canonical = String::new();
    write_canonical(&hashed, &mut canonical);
    format!(
        "xxh3-64:{:016x}",
        xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())
    )
}

/// Writes canonical JSON: sorted keys whatever map order serde_json was built with.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{report_with_everything, simple_report};
    use super::*;

    #[test]
    fn the_log_summary_adds_its_shards_up_and_has_no_ratio_without_syncs() {
        let shard = |syncs, records| crate::core::shard::ShardStats {
            log: crate::core::shard::LogTally {
                syncs,
                records,
                bytes: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        let report = crate::node::NodeReport {
            shards: vec![shard(3, 30), shard(1, 10)],
        };
        let log = LogSummary::of("sync", &report, 2.0);
        assert_eq!((log.syncs, log.records_synced), (4, 40));
        assert_eq!(log.events_per_sync, Some(10.0));
        assert_eq!(log.syncs_per_s, Some(2.0));
        let idle = crate::node::NodeReport {
            shards: vec![shard(0, 0)],
        };
        assert_eq!(LogSummary::of("async", &idle, 2.0).events_per_sync, None);
    }

    fn validator() -> jsonschema::Validator {
        let schema: serde_json::Value = serde_json::from_str(SUMMARY_SCHEMA_JSON).unwrap();
        jsonschema::validator_for(&schema).expect("the schema itself is valid")
    }

    fn validation_errors(document: &serde_json::Value) -> Vec<String> {
        validator()
            .iter_errors(document)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect()
    }

    #[test]
    fn emitted_summaries_validate_against_the_schema() {
        for report in [simple_report(), report_with_everything()] {
            let summary = Summary::of_report(&report);
            let bytes = summary.to_json_pretty().unwrap();
            let document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let errors = validation_errors(&document);
            assert!(errors.is_empty(), "{errors:#?}");
        }
    }

    #[test]
    fn the_schema_rejects_a_summary_that_drifts() {
        let summary = Summary::of_report(&report_with_everything());
        let good = serde_json::to_value(&summary).unwrap();

        let mut wrong_name = good.clone();
        wrong_name["schema"] = "trove.bench.summary/v9".into();
        let mut missing_latency = good.clone();
        missing_latency["main"]["latency_us"]
            .as_object_mut()
            .unwrap()
            .remove("corrected");
        let mut unknown_field = good.clone();
        unknown_field["main"]["surprise"] = 1.into();
        let mut negative_rate = good.clone();
        negative_rate["main"]["achieved_rate_per_s"] = (-1.0).into();
        let mut bad_hash = good;
        bad_hash["config_hash"] = "abc".into();

        for (name, document) in [
            ("wrong schema name", wrong_name),
            ("missing corrected latency", missing_latency),
            ("unknown field", unknown_field),
            ("negative rate", negative_rate),
            ("malformed hash", bad_hash),
        ] {
            assert!(
                !validation_errors(&document).is_empty(),
                "{name} was accepted"
            );
        }
    }

    #[test]
    fn a_summary_reads_back_into_the_same_value() {
        let summary = Summary::of_report(&report_with_everything());
        let value = serde_json::to_value(&summary).unwrap();
        assert_eq!(Summary::from_value(value).unwrap(), summary);
    }

    #[test]
    fn a_version_1_summary_is_still_read() {
        let mut value =
            serde_json::to_value(Summary::of_report(&report_with_everything())).unwrap();
        assert!(value["node"].is_object(), "the fixture has a node");
        value["schema"] = SUMMARY_SCHEMA_V1.into();
        value.as_object_mut().unwrap().remove("node");
        let summary = Summary::from_value(value).unwrap();
        assert_eq!(summary.node, None);
        assert_eq!(
            summary.main,
            Summary::of_report(&report_with_everything()).main
        );
    }

    #[test]
    fn a_summary_of_another_schema_is_refused_with_its_name() {
        let mut value = serde_json::to_value(Summary::of_report(&simple_report())).unwrap();
        value["schema"] = "trove.bench.summary/v9".into();
        let error = Summary::from_value(value).unwrap_err();
        assert!(error.contains("trove.bench.summary/v9"), "{error}");
        let error = Summary::from_value(serde_json::json!({"runs": []})).unwrap_err();
        assert!(error.contains("no \"schema\""), "{error}");
    }

    #[test]
    fn percentiles_are_the_histogram_s_in_microseconds() {
        let report = simple_report();
        let summary = Summary::of_report(&report);
        let corrected = &report.main.corrected_ns;
        let percentiles = &summary.main.latency_us.corrected;
        assert_eq!(percentiles.count, corrected.len());
        assert_eq!(
            percentiles.p99,
            corrected.value_at_quantile(0.99) as f64 / 1_000.0
        );
        assert_eq!(percentiles.max, corrected.max() as f64 / 1_000.0);
        assert!(percentiles.p50 < percentiles.p90 && percentiles.p90 < percentiles.p99);
        assert!(percentiles.p99 <= percentiles.p999 && percentiles.p999 <= percentiles.max);
    }

    #[test]
    fn peer_ratios_and_calibration_ratios_divide_the_right_figures() {
        let summary = Summary::of_report(&report_with_everything());
        let peer = summary.peer.as_ref().unwrap();
        let ratios = summary.ratios_to_peer.as_ref().unwrap();
        let expected = summary.main.latency_us.corrected.p99 / peer.latency_us.corrected.p99;
        assert_eq!(ratios.corrected_p99, Some(expected));
        assert!(expected < 1.0, "the fixture's peer is slower");

        let calibration = summary.calibration.as_ref().unwrap();
        assert_eq!(
            calibration.latency_p50_over_rtt_p50,
            Some(summary.main.latency_us.corrected.p50 / calibration.loopback_rtt_us.p50)
        );
        let fraction = calibration.byte_rate_fraction_of_loopback.unwrap();
        assert!(fraction > 0.0 && fraction < 1.0, "{fraction}");
    }

    #[test]
    fn a_zero_denominator_gives_no_ratio() {
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }

    #[test]
    fn the_config_hash_ignores_key_order_and_sees_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 2}"#).unwrap();
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_ne!(config_hash(&a), config_hash(&c));
        assert!(config_hash(&a).starts_with("xxh3-64:") && config_hash(&a).len() == 24);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        let empty = Histogram::<u64>::new(3).unwrap();
        let percentiles = Percentiles::of_ns(&empty);
        assert_eq!(percentiles.count, 0);
        assert_eq!(percentiles.max, 0.0);
    }
}
