//! The gate's decision: per metric, is the current set of runs a regression from the
//! baseline's?
//!
//! For each metric the median of the current runs is compared with the median of the
//! baseline's runs. The change counts as a regression only when it is worse than both
//! - the metric's threshold (`--max-regression`, defaults in [`Thresholds::defaults`]), and
//! - the noise floor: the larger run-to-run spread of the two sets ([`stats::relative_noise`]).
//!
//! When there are enough runs for a one-sided Mann-Whitney U test to reach significance
//! ([`ALPHA`]), the test must confirm the call, or the metric passes as "not confirmed". With
//! fewer runs the threshold and noise floor decide alone. Every result says which rule decided.

use crate::bench::report::summary::Summary;

use super::stats::{mann_whitney_greater, median, relative_noise, smallest_p_value};

/// Significance level of the Mann-Whitney U test.
pub const ALPHA: f64 = 0.05;

/// What the gate judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Throughput,
    P50,
    P99,
    P999,
    Max,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Throughput,
        Metric::P50,
        Metric::P99,
        Metric::P999,
        Metric::Max,
    ];

    /// The name used in `--max-regression` and in machine-readable reports.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::P999 => "p999",
            Metric::Max => "max",
        }
    }

    /// The name people read.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Throughput => "achieved throughput",
            Metric::P50 => "p50 latency",
            Metric::P99 => "p99 latency",
            Metric::P999 => "p99.9 latency",
            Metric::Max => "max latency",
        }
    }

    pub fn higher_is_better(self) -> bool {
        self == Metric::Throughput
    }

    pub fn unit(self, normalized: bool) -> &'static str {
        match (self, normalized) {
            (Metric::Throughput, _) => "events/s",
            (_, true) => "x loopback rtt p50",
            (_, false) => "us",
        }
    }

    /// This metric's value in one run: corrected latency (µs, or in loopback round trips when
    /// `normalized`), or achieved throughput. `None` when normalising a run without calibration.
    pub fn value(self, run: &Summary, normalized: bool) -> Option<f64> {
        let latency = &run.main.latency_us.corrected;
        let raw = match self {
            Metric::Throughput => return Some(run.main.achieved_rate_per_s),
            Metric::P50 => latency.p50,
            Metric::P99 => latency.p99,
            Metric::P999 => latency.p999,
            Metric::Max => latency.max,
        };
        if !normalized {
            return Some(raw);
        }
        let rtt_p50 = run.calibration.as_ref()?.loopback_rtt_us.p50;
        (rtt_p50 > 0.0).then(|| raw / rtt_p50)
    }

    fn from_key(key: &str) -> Option<Metric> {
        let key = key.trim().to_ascii_lowercase();
        let key = match key.as_str() {
            "p99.9" => "p999",
            "rate" | "tput" => "throughput",
            other => other,
        };
        Metric::ALL.into_iter().find(|metric| metric.key() == key)
    }
}

/// The largest worsening each metric may show, as a fraction; `None` is not judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    limits: [Option<f64>; 5],
}

impl Thresholds {
    /// throughput 10%, p50 10%, p99 10%, p99.9 20%; max is not judged unless asked for.
    pub fn defaults() -> Thresholds {
        Thresholds {
            limits: [Some(0.10), Some(0.10), Some(0.10), Some(0.20), None],
        }
    }

    /// The defaults with the overrides of a spec such as `p99=5%,p999=15%,max=50%,p50=off`.
    pub fn parse(spec: &str) -> Result<Thresholds, String> {
        let mut thresholds = Thresholds::defaults();
        for item in spec.split(',').filter(|item| !item.trim().is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                format!("--max-regression: \"{item}\" is not METRIC=PERCENT (for example p99=10%)")
            })?;
            let metric = Metric::from_key(key).ok_or_else(|| {
                let known: Vec<&str> = Metric::ALL.iter().map(|metric| metric.key()).collect();
                format!(
                    "--max-regression: unknown metric \"{}\"; use one of {}",
                    key.trim(),
                    known.join(", ")
                )
            })?;
            thresholds.limits[metric as usize] = parse_limit(value.trim())
                .map_err(|problem| format!("--max-regression: {}: {problem}", key.trim()))?;
        }
        Ok(thresholds)
    }

    pub fn limit(&self, metric: Metric) -> Option<f64> {
        self.limits[metric as usize]
    }
}

/// `10%` or `10` (percent) → 0.10; `off` → not judged.
fn parse_limit(text: &str) -> Result<Option<f64>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a percentage (for example 10%) or off"))?;
    if !percent.is_finite() || percent < 0.0 {
        return Err(format!("\"{text}\" must be a percentage of 0 or more"));
    }
    Ok(Some(percent / 100.0))
}

/// How one metric is judged.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeOptions {
    pub thresholds: Thresholds,
    /// Latency in loopback round trips rather than µs.
    pub normalized: bool,
    /// False when hosts differ and only normalised latency can be compared.
    pub judge_throughput: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Regression,
    /// Reported but not judged.
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Regression => "regression",
            Verdict::Skipped => "skipped",
        }
    }
}

/// The rule that decided a metric's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// No worse than the threshold.
    WithinThreshold,
    /// Worse than the threshold, but within the runs' own spread.
    WithinNoiseFloor,
    /// Beyond threshold and noise floor, and the test confirms it.
    ConfirmedByMannWhitney { p_value: f64 },
    /// Beyond threshold and noise floor, but the test does not confirm it.
    NotConfirmedByMannWhitney { p_value: f64 },
    /// Beyond threshold and noise floor; too few runs for the test to reach significance.
    ThresholdTooFewRunsForTest,
    /// Not judged, and why.
    NotJudged(String),
}

impl Rule {
    /// A stable key for machine-readable reports.
    pub fn key(&self) -> &'static str {
        match self {
            Rule::WithinThreshold => "within_threshold",
            Rule::WithinNoiseFloor => "within_noise_floor",
            Rule::ConfirmedByMannWhitney { .. } => "confirmed_by_mann_whitney",
            Rule::NotConfirmedByMannWhitney { .. } => "not_confirmed_by_mann_whitney",
            Rule::ThresholdTooFewRunsForTest => "threshold_and_noise_floor",
            Rule::NotJudged(_) => "not_judged",
        }
    }

    /// The rule in words.
    pub fn describe(&self) -> String {
        match self {
            Rule::WithinThreshold => "within the threshold".to_string(),
            Rule::WithinNoiseFloor => "beyond the threshold but within the noise floor".to_string(),
            Rule::ConfirmedByMannWhitney { p_value } => format!(
                "beyond threshold and noise floor; Mann-Whitney U confirms (p = {p_value:.4})"
            ),
            Rule::NotConfirmedByMannWhitney { p_value } => format!(
                "beyond threshold and noise floor, but Mann-Whitney U does not confirm (p = {p_value:.4})"
            ),
            Rule::ThresholdTooFewRunsForTest => {
                "beyond threshold and noise floor (too few runs for Mann-Whitney U)".to_string()
            }
            Rule::NotJudged(reason) => format!("not judged: {reason}"),
        }
    }
}

/// The judgement of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricResult {
    pub metric: Metric,
    pub unit: &'static str,
    pub baseline_values: Vec<f64>,
    pub current_values: Vec<f64>,
    pub baseline_median: f64,
    pub current_median: f64,
    /// (current − baseline) / baseline of the medians; `None` for a zero baseline.
    pub change: Option<f64>,
    /// The threshold, as a fraction.
    pub threshold: f64,
    /// The noise floor, as a fraction.
    pub noise_floor: f64,
    /// One-sided Mann-Whitney U p-value that the current runs are worse.
    pub p_value: Option<f64>,
    pub verdict: Verdict,
    pub rule: Rule,
}

impl MetricResult {
    /// The change oriented so that positive is worse.
    pub fn worsening(&self) -> Option<f64> {
        let change = self.change?;
        Some(if self.metric.higher_is_better() {
            -change
        } else {
            change
        })
    }
}

/// The judgement of every metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub results: Vec<MetricResult>,
    pub normalized: bool,
}

impl Judgement {
    pub fn regressions(&self) -> impl Iterator<Item = &MetricResult> {
        self.results
            .iter()
            .filter(|result| result.verdict == Verdict::Regression)
    }

    pub fn passed(&self) -> bool {
        self.regressions().next().is_none()
    }
}

/// Judges `current` against `baseline`. Both must be non-empty, and, when `normalized`,
/// every run must carry calibration (the caller checks).
pub fn judge(baseline: &[Summary], current: &[Summary], options: &JudgeOptions) -> Judgement {
    let results = Metric::ALL
        .into_iter()
        .filter_map(|metric| {
            let threshold = options.thresholds.limit(metric)?;
            let values = |runs: &[Summary]| -> Vec<f64> {
                runs.iter()
                    .filter_map(|run| metric.value(run, options.normalized))
                    .collect()
            };
            let mut result = judge_metric(metric, values(baseline), values(current), threshold);
            result.unit = metric.unit(options.normalized);
            if metric == Metric::Throughput && !options.judge_throughput {
                result.verdict = Verdict::Skipped;
                result.rule = Rule::NotJudged(
                    "throughput from unlike hosts has no loopback normalisation".to_string(),
                );
            }
            Some(result)
        })
        .collect();
    Judgement {
        results,
        normalized: options.normalized,
    }
}

/// Judges one metric from its per-run values.
pub fn judge_metric(
    metric: Metric,
    baseline_values: Vec<f64>,
    current_values: Vec<f64>,
    threshold: f64,
) -> MetricResult {
    let baseline_median = median(&baseline_values).unwrap_or(0.0);
    let current_median = median(&current_values).unwrap_or(0.0);
    let change =
        (baseline_median > 0.0).then(|| (current_median - baseline_median) / baseline_median);
    let noise_floor = relative_noise(&baseline_values).max(relative_noise(&current_values));
    let p_value = if metric.higher_is_better() {
        mann_whitney_greater(&baseline_values, &current_values)
    } else {
        mann_whitney_greater(&current_values, &baseline_values)
    };
    let mut result = MetricResult {
        metric,
        unit: metric.unit(false),
        baseline_median,
        current_median,
        change,
        threshold,
        noise_floor,
        p_value,
        verdict: Verdict::Pass,
        rule: Rule::WithinThreshold,
        baseline_values,
        current_values,
    };
    let Some(worsening) = result.worsening() else {
        result.verdict = Verdict::Skipped;
        result.rule = Rule::NotJudged("the baseline's value is zero".to_string());
        return result;
    };
    let test_can_decide =
        smallest_p_value(result.current_values.len(), result.baseline_values.len()) <= ALPHA;
    (result.verdict, result.rule) = if worsening <= threshold {
        (Verdict::Pass, Rule::WithinThreshold)
    } else if worsening <= noise_floor {
        (Verdict::Pass, Rule::WithinNoiseFloor)
    } else if !test_can_decide {
        (Verdict::Regression, Rule::ThresholdTooFewRunsForTest)
    } else {
        let p_value = p_value.unwrap_or(1.0);
        if p_value <= ALPHA {
            (
                Verdict::Regression,
                Rule::ConfirmedByMannWhitney { p_value },
            )
        } else {
            (Verdict::Pass, Rule::NotConfirmedByMannWhitney { p_value })
        }
    };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_runs_pass_within_the_threshold() {
        let values = vec![100.0, 102.0, 98.0, 101.0, 99.0];
        let result = judge_metric(Metric::P99, values.clone(), values, 0.10);
        assert_eq!(result.verdict, Verdict::Pass);
        assert_eq!(result.rule, Rule::WithinThreshold);
        assert_eq!(result.change, Some(0.0));
    }

    #[test]
    fn a_clear_30_percent_regression_is_confirmed_by_the_test() {
        let baseline = vec![100.0, 102.0, 98.0, 101.0, 99.0];
        let current: Vec<f64> = baseline.iter().map(|v| v * 1.3).collect();
        let result = judge_metric(Metric::P99, baseline, current, 0.10);
        assert_eq!(result.verdict, Verdict::Regression);
        assert!(
            matches!(result.rule, Rule::ConfirmedByMannWhitney { p_value } if p_value < 0.01),
            "{:?}",
            result.rule
        );
        assert!((result.change.unwrap() - 0.3).abs() < 1e-9);
    }

    #[test]
    fn a_change_inside_the_runs_spread_passes_on_the_noise_floor() {
        let baseline = vec![100.0, 130.0, 80.0, 115.0, 90.0];
        let current = vec![115.0, 140.0, 95.0, 125.0, 100.0];
        let result = judge_metric(Metric::P99, baseline, current, 0.10);
        assert!(
            result.worsening().unwrap() > 0.10,
            "the change exceeds the threshold"
        );
        assert_eq!(result.verdict, Verdict::Pass);
        assert_eq!(result.rule, Rule::WithinNoiseFloor);
    }

    #[test]
    fn one_run_each_is_decided_by_the_threshold_alone() {
        let result = judge_metric(Metric::P99, vec![100.0], vec![130.0], 0.10);
        assert_eq!(result.verdict, Verdict::Regression);
        assert_eq!(result.rule, Rule::ThresholdTooFewRunsForTest);
    }

    #[test]
    fn an_outlier_run_that_the_test_does_not_support_passes_unconfirmed() {
        // Medians 30% apart and no spread around either median, but the baseline's slow runs
        // are slower than every current run: no evidence the current runs are worse.
        let baseline = vec![100.0, 100.0, 100.0, 100.0, 100.0, 200.0, 200.0];
        let current = vec![100.0, 100.0, 100.0, 130.0, 130.0, 130.0, 130.0];
        let result = judge_metric(Metric::P99, baseline, current, 0.10);
        assert_eq!(result.verdict, Verdict::Pass, "{:?}", result);
        assert!(
            matches!(result.rule, Rule::NotConfirmedByMannWhitney { .. }),
            "{:?}",
            result.rule
        );
    }

    #[test]
    fn throughput_regresses_when_it_falls() {
        let baseline = vec![10_000.0, 10_100.0, 9_900.0];
        let lower: Vec<f64> = baseline.iter().map(|v| v * 0.7).collect();
        let higher: Vec<f64> = baseline.iter().map(|v| v * 1.3).collect();
        assert_eq!(
            judge_metric(Metric::Throughput, baseline.clone(), lower, 0.1).verdict,
            Verdict::Regression
        );
        assert_eq!(
            judge_metric(Metric::Throughput, baseline, higher, 0.1).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn thresholds_parse_overrides_over_defaults() {
        let thresholds = Thresholds::parse("p99=5%,p99.9=15,max=50%,p50=off").unwrap();
        assert_eq!(thresholds.limit(Metric::P99), Some(0.05));
        assert_eq!(thresholds.limit(Metric::P999), Some(0.15));
        assert_eq!(thresholds.limit(Metric::Max), Some(0.5));
        assert_eq!(thresholds.limit(Metric::P50), None);
        assert_eq!(thresholds.limit(Metric::Throughput), Some(0.10));
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::defaults());
    }

    #[test]
    fn bad_threshold_specs_say_what_is_wrong() {
        let error = Thresholds::parse("p98=10%").unwrap_err();
        assert!(
            error.contains("unknown metric \"p98\"") && error.contains("p999"),
            "{error}"
        );
        let error = Thresholds::parse("p99").unwrap_err();
        assert!(error.contains("METRIC=PERCENT"), "{error}");
        let error = Thresholds::parse("p99=-3%").unwrap_err();
        assert!(error.contains("0 or more"), "{error}");
        let error = Thresholds::parse("p99=lots").unwrap_err();
        assert!(error.contains("not a percentage"), "{error}");
    }
}
