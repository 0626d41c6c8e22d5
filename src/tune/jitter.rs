//! Measured jitter: what the shard CPUs actually suffer, whatever the settings say.
//!
//! One thread is pinned to each shard CPU (all at once, as a node's shards run) and spins,
//! reading the monotonic clock. Whenever two successive reads are further apart than a threshold,
//! something took the CPU away (an interrupt, a timer tick, a kernel thread, another task, the
//! hypervisor) and the gap is recorded as a hiccup in an HdrHistogram, the way `hiccups` and
//! `sysjitter` measure. The report gives, per CPU, the number of hiccups, their p99, p99.9 and
//! maximum in microseconds, and the share of the spin they took. Runs only on the live host.

use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::checks::{Check, Severity};
use crate::constants::HICCUP_NS_MAX;
use crate::host::affinity::pin_current_thread;
use crate::host::cpuset::CpuSet;

/// How to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct JitterConfig {
    /// Spin per CPU.
    pub duration_ms: u64,
    /// A gap between clock reads longer than this is a hiccup.
    pub threshold_ns: u64,
    /// The check passes if no shard CPU's longest hiccup exceeds this.
    pub allowed_hiccup_us_max: u64,
}

/// What one CPU suffered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuJitter {
    pub cpu: usize,
    pub hiccups: u64,
    pub hiccup_us_p99: f64,
    pub hiccup_us_p999: f64,
    pub hiccup_us_max: f64,
    /// Share of the spin lost to hiccups, in percent.
    pub lost_percent: f64,
}

/// A measurement over all shard CPUs.
#[derive(Clone, Debug, Serialize)]
pub struct JitterReport {
    #[serde(flatten)]
    pub config: JitterConfig,
    pub cpus: Vec<CpuJitter>,
    /// CPUs that could not be measured, and why.
    pub errors: Vec<String>,
}

impl JitterReport {
    /// Spins on every CPU of `cpus` at once and gathers the results.
    pub fn measure(cpus: &CpuSet, config: JitterConfig) -> JitterReport {
        let (measured, failed): (Vec<_>, Vec<_>) =
            measure(cpus, config).into_iter().partition(Result::is_ok);
        JitterReport {
            config,
            cpus: measured.into_iter().filter_map(Result::ok).collect(),
            errors: failed.into_iter().filter_map(Result::err).collect(),
        }
    }

    /// The report's row: every shard CPU measured, none with a hiccup above the pass mark.
    pub fn check(&self) -> Check {
        let limit_us = self.config.allowed_hiccup_us_max as f64;
        let worst = self
            .cpus
            .iter()
            .max_by(|a, b| a.hiccup_us_max.total_cmp(&b.hiccup_us_max));
        let current = match (self.errors.first(), worst) {
            (Some(error), _) => error.clone(),
            (None, Some(worst)) => format!(
                "max {} µs on cpu {} (p99.9 {} µs)",
                worst.hiccup_us_max, worst.cpu, worst.hiccup_us_p999
            ),
            (None, None) => "no CPU measured".to_string(),
        };
        let passed =
            self.errors.is_empty() && worst.is_some_and(|worst| worst.hiccup_us_max <= limit_us);
        Check::new(
            "measured jitter",
            Severity::Warning,
            format!("max hiccup <= {} µs", self.config.allowed_hiccup_us_max),
            current,
            passed,
        )
        .fix([
            "# find what interrupts the shard CPUs: the checks above, then perf/osnoise tracing"
                .to_string(),
        ])
    }
}

/// Spins on every CPU of `cpus` at once; a CPU that cannot be pinned gets an error instead.
pub fn measure(cpus: &CpuSet, config: JitterConfig) -> Vec<Result<CpuJitter, String>> {
    thread::scope(|scope| {
        let spinners: Vec<_> = cpus
            .iter()
            .map(|cpu| scope.spawn(move || measure_cpu(cpu, config)))
            .collect();
        spinners
            .into_iter()
            .map(|spinner| {
                spinner
                    .join()
                    .unwrap_or_else(|_| Err("the spinning thread panicked".to_string()))
            })
            .collect()
    })
}

/// Pins the calling thread to `cpu`, spins, and summarises the hiccups.
fn measure_cpu(cpu: usize, config: JitterConfig) -> Result<CpuJitter, String> {
    if !pin_current_thread(cpu) {
        return Err(format!("cpu {cpu}: cannot pin a thread to it"));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, HICCUP_NS_MAX, 3)
        .map_err(|error| format!("cpu {cpu}: histogram: {error}"))?;
    let duration = Duration::from_millis(config.duration_ms);
    let lost_ns = spin(duration, config.threshold_ns, &mut histogram);
    let us_at = |quantile| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(CpuJitter {
        cpu,
        hiccups: histogram.len(),
        hiccup_us_p99: round_tenth(us_at(0.99)),
        hiccup_us_p999: round_tenth(us_at(0.999)),
        hiccup_us_max: round_tenth(histogram.max() as f64 / 1000.0),
        lost_percent: round_tenth(100.0 * lost_ns as f64 / duration.as_nanos().max(1) as f64),
    })
}

/// Reads the clock in a tight loop for `duration`, recording every gap above `threshold_ns`.
/// Returns the nanoseconds lost to them.
fn spin(duration: Duration, threshold_ns: u64, histogram: &mut Histogram<u64>) -> u64 {
    let start = Instant::now();
    let mut last = start;
    let mut lost_ns = 0u64;
    loop {
        let now = Instant::now();
        let gap_ns = u64::try_from(now.duration_since(last).as_nanos()).unwrap_or(u64::MAX);
        if gap_ns > threshold_ns {
            histogram.saturating_record(gap_ns);
            lost_ns = lost_ns.saturating_add(gap_ns);
        }
        last = now;
        if now.duration_since(start) >= duration {
            return lost_ns;
        }
    }
}

fn round_tenth(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_threshold_counts_every_gap_and_the_summary_is_ordered() {
        let config = JitterConfig {
            duration_ms: 5,
            threshold_ns: 0,
            allowed_hiccup_us_max: 50,
        };
        let cpu = crate::host::affinity::allowed_cpus()[0];
        let result = measure(&CpuSet::from_cpus([cpu]), config);
        let jitter = result[0].as_ref().unwrap();
        assert_eq!(jitter.cpu, cpu);
        assert!(jitter.hiccups > 0, "{jitter:?}");
        assert!(jitter.hiccup_us_p99 <= jitter.hiccup_us_p999);
        assert!(jitter.hiccup_us_p999 <= jitter.hiccup_us_max);
    }

    fn report(max_us: &[f64], errors: &[&str]) -> JitterReport {
        let cpus = max_us.iter().enumerate().map(|(cpu, &max)| CpuJitter {
            cpu,
            hiccups: 1,
            hiccup_us_p99: max,
            hiccup_us_p999: max,
            hiccup_us_max: max,
            lost_percent: 0.0,
        });
        JitterReport {
            config: JitterConfig {
                duration_ms: 10,
                threshold_ns: 1000,
                allowed_hiccup_us_max: 50,
            },
            cpus: cpus.collect(),
            errors: errors.iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn the_check_fails_on_the_worst_cpu_or_an_unmeasured_one() {
        assert!(report(&[3.0, 50.0], &[]).check().passed);
        let slow = report(&[3.0, 80.5], &[]).check();
        assert!(!slow.passed);
        assert_eq!(slow.current, "max 80.5 µs on cpu 1 (p99.9 80.5 µs)");
        let unpinned = report(&[3.0], &["cpu 7: cannot pin a thread to it"]).check();
        assert!(!unpinned.passed);
        assert!(unpinned.current.contains("cannot pin"));
    }

    #[test]
    fn a_cpu_that_cannot_be_pinned_is_reported_not_measured() {
        let config = JitterConfig {
            duration_ms: 1,
            threshold_ns: 1000,
            allowed_hiccup_us_max: 50,
        };
        let absent = CpuSet::from_cpus([1023, crate::constants::CPU_ID_MAX]);
        for result in measure(&absent, config) {
            let error = result.unwrap_err();
            assert!(error.contains("cannot pin"), "{error}");
        }
    }
}
