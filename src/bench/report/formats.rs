//! The result in the shapes other tools already read:
//!
//! - redis-benchmark 7's `--csv` output: the header line and one row per target, so scripts
//!   that compare redis-benchmark runs take trove's (corrected latency, in ms);
//! - Bencher Metric Format JSON, for `bencher run --adapter json`: one benchmark per
//!   percentile, with Bencher's built-in `latency` (ns) and `throughput` (ops/s) measures;
//! - github-action-benchmark's `customSmallerIsBetter` JSON: one entry per percentile, in µs.

use serde_json::{Value, json};

use super::summary::{NamedPercentile, Percentiles, RunSummary, Summary};
use super::{Report, RunRecord};

/// redis-benchmark 7's `--csv` header line.
pub const REDIS_CSV_HEADER: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"";

/// The header and one row per target (trove, then the peer), corrected latency in ms.
pub fn redis_benchmark_csv(report: &Report) -> String {
    let mut csv = format!("{REDIS_CSV_HEADER}\n");
    for record in std::iter::once(&report.main).chain(report.peer.as_ref()) {
        csv.push_str(&redis_benchmark_row(record));
        csv.push('\n');
    }
    csv
}

fn redis_benchmark_row(record: &RunRecord) -> String {
    let histogram = &record.corrected_ns;
    let ms = |ns: f64| ns / 1_000_000.0;
    let (mean, min) = if histogram.is_empty() {
        (0.0, 0.0)
    } else {
        (histogram.mean(), histogram.min() as f64)
    };
    let at = |quantile: f64| ms(histogram.value_at_quantile(quantile) as f64);
    format!(
        "\"{}\",\"{:.2}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\"",
        record.target.replace('"', "\"\""),
        record.achieved_rate_per_s(),
        ms(mean),
        ms(min),
        at(0.5),
        at(0.95),
        at(0.99),
        ms(histogram.max() as f64),
    )
}

/// The percentiles every per-percentile format carries, with their names.
const PERCENTILE_NAMES: [NamedPercentile; 5] = [
    ("p50", |p| p.p50),
    ("p90", |p| p.p90),
    ("p99", |p| p.p99),
    ("p99.9", |p| p.p999),
    ("max", |p| p.max),
];

/// The runs of a summary with the latency kinds to report of each.
fn runs(summary: &Summary) -> impl Iterator<Item = &RunSummary> {
    std::iter::once(&summary.main).chain(summary.peer.as_ref())
}

fn kinds(run: &RunSummary) -> [(&'static str, &Percentiles); 2] {
    [
        ("corrected", &run.latency_us.corrected),
        ("uncorrected", &run.latency_us.uncorrected),
    ]
}

/// Bencher Metric Format: `<target>::<kind>::<percentile>` → `latency` in ns, and
/// `<target>::throughput` → `throughput` in events/s.
pub fn bencher_metric_format(summary: &Summary) -> Value {
    let mut benchmarks = serde_json::Map::new();
    for run in runs(summary) {
        for (kind, percentiles) in kinds(run) {
            for (name, pick) in PERCENTILE_NAMES {
                benchmarks.insert(
                    format!("{}::{kind}::{name}", run.target),
                    json!({ "latency": { "value": pick(percentiles) * 1_000.0 } }),
                );
            }
        }
        benchmarks.insert(
            format!("{}::throughput", run.target),
            json!({ "throughput": { "value": run.achieved_rate_per_s } }),
        );
    }
    Value::Object(benchmarks)
}

/// github-action-benchmark `customSmallerIsBetter`: `{name, unit, value, extra}` per
/// percentile, in µs. (Throughput is bigger-is-better and so has no place in this file.)
pub fn github_action_benchmark(summary: &Summary) -> Value {
    let mut entries = Vec::new();
    for run in runs(summary) {
        for (kind, percentiles) in kinds(run) {
            for (name, pick) in PERCENTILE_NAMES {
                entries.push(json!({
                    "name": format!("{} {kind} latency {name}", run.target),
                    "unit": "us",
                    "value": pick(percentiles),
                    "extra": format!(
                        "{} events at {:.0}/s, config {}, revision {}",
                        percentiles.count,
                        run.achieved_rate_per_s,
                        summary.config_hash,
                        summary.tool.git_revision
                    ),
                }));
            }
        }
    }
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{report_with_everything, simple_report};
    use super::*;

    /// Splits a CSV line of quoted fields.
    fn fields(line: &str) -> Vec<String> {
        line.split(',')
            .map(|field| {
                let inner = field.strip_prefix('"').and_then(|f| f.strip_suffix('"'));
                inner.expect("every field is quoted").to_string()
            })
            .collect()
    }

    #[test]
    fn the_csv_has_redis_benchmark_s_columns_and_a_row_per_target() {
        let report = report_with_everything();
        let csv = redis_benchmark_csv(&report);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(fields(lines[0]).len(), 8);
        assert_eq!(fields(lines[0])[6], "p99_latency_ms");
        let trove = fields(lines[1]);
        assert_eq!(trove[0], "trove");
        assert_eq!(fields(lines[2])[0], "redis");
        let rps: f64 = trove[1].parse().unwrap();
        assert!((rps - report.main.achieved_rate_per_s()).abs() < 0.01);
        let p99_ms: f64 = trove[6].parse().unwrap();
        let expected = report.main.corrected_ns.value_at_quantile(0.99) as f64 / 1e6;
        assert!((p99_ms - expected).abs() < 0.0005, "{p99_ms} vs {expected}");
        let numbers: Vec<f64> = trove[2..].iter().map(|f| f.parse().unwrap()).collect();
        assert!(numbers[1] <= numbers[2] && numbers[2] <= numbers[3]); // min <= p50 <= p95
        assert!(numbers[3] <= numbers[4] && numbers[4] <= numbers[5]); // p95 <= p99 <= max
    }

    #[test]
    fn bencher_json_has_latency_in_ns_and_throughput_per_target() {
        let summary = Summary::of_report(&report_with_everything());
        let bmf = bencher_metric_format(&summary);
        let p99 = &bmf["trove::corrected::p99"]["latency"]["value"];
        assert_eq!(
            p99.as_f64(),
            Some(summary.main.latency_us.corrected.p99 * 1_000.0)
        );
        assert!(
            bmf["redis::throughput"]["throughput"]["value"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        // Every benchmark has measures with a numeric value, as the BMF schema requires.
        for (_, measures) in bmf.as_object().unwrap() {
            for (_, metric) in measures.as_object().unwrap() {
                assert!(metric["value"].is_number());
            }
        }
    }

    #[test]
    fn github_action_benchmark_entries_have_name_unit_and_value() {
        let summary = Summary::of_report(&simple_report());
        let entries = github_action_benchmark(&summary);
        let entries = entries.as_array().unwrap();
        assert_eq!(entries.len(), 2 * PERCENTILE_NAMES.len());
        let p99 = entries
            .iter()
            .find(|e| e["name"] == "trove corrected latency p99")
            .expect("the corrected p99 entry");
        assert_eq!(p99["unit"], "us");
        assert_eq!(
            p99["value"].as_f64(),
            Some(summary.main.latency_us.corrected.p99)
        );
    }
}
