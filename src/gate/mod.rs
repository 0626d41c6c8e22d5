//! `trove gate`: a latency regression gate for CI that judges the distribution of several
//! runs, not one number.
//!
//! The gate compares a set of current runs (bench summaries, or runs it asks a runner for)
//! with a baseline committed to the user's repository (a file written by
//! `--update-baseline`, which keeps every run it was made from). Per metric (throughput,
//! p50, p99, p99.9, optionally max) it compares medians against a threshold and a noise floor
//! and lets a Mann-Whitney U test confirm the call ([`judge`]). Results from unlike hosts are
//! refused unless the user allows them or asks for latency normalised by the loopback round
//! trip. Reports go to the terminal and, on request, to markdown, JUnit XML and JSON files
//! ([`render`]).
//!
//! The gate does not drive the load generator itself: running the benchmark N times goes
//! through a runner the caller injects ([`run_with`]), so the gate is tested with fakes. It
//! runs on the CLI's thread; nothing here is on a shard.

pub mod input;
pub mod judge;
pub mod render;
pub mod stats;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::bench::report::summary::Summary;
use crate::constants::{GATE_CURRENT_FILES_MAX, GATE_RUNS_MAX};

use input::{InputError, RunSet};
use judge::{JudgeOptions, Thresholds};
use render::Context;

/// No metric regressed.
pub const EXIT_PASS: i32 = 0;
/// At least one metric regressed.
pub const EXIT_REGRESSION: i32 = 1;
/// A bad flag, or a missing, unreadable or malformed file.
pub const EXIT_USAGE: i32 = 2;
/// The baseline and the current runs come from unlike hosts.
pub const EXIT_UNLIKE_HOSTS: i32 = 3;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  pass: no metric regressed
  1  regression: at least one metric regressed beyond its threshold and the noise floor
  2  usage or input error: a bad flag, or a missing, unreadable or malformed file
  3  hosts not comparable: the baseline and the current runs come from unlike hosts
     (pass --allow-unlike-hosts, or --normalize-by-loopback when every run has calibration)

Decision: per metric, the median of the current runs is compared with the baseline's. A metric
regresses when it is worse than both its threshold and the noise floor (3 robust standard
deviations of the runs' own spread); with enough runs a one-sided Mann-Whitney U test
(alpha 0.05) must also confirm it. The report says which rule decided.";

/// Judge benchmark runs against a committed baseline; fail CI on a latency regression.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct GateArgs {
    /// Baseline file: written by --update-baseline (it keeps every run), or a single
    /// `trove bench` summary JSON.
    #[arg(long, value_name = "FILE")]
    pub baseline: PathBuf,

    /// Judge runs already made: `trove bench` summary JSON files (or baseline files).
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["runs", "workload"])]
    pub current: Vec<PathBuf>,

    /// Run the benchmark this many times when no --current is given.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(GATE_RUNS_MAX)))]
    pub runs: u32,

    /// Workload file (TOML) for the runs the gate makes.
    #[arg(long, value_name = "FILE")]
    pub workload: Option<PathBuf>,

    /// Largest worsening per metric, over the defaults
    /// throughput=10%,p50=10%,p99=10%,p999=20% (max is judged only when given; `off`
    /// stops judging a metric).
    #[arg(long, value_name = "METRIC=PCT,...")]
    pub max_regression: Option<String>,

    /// Compare runs from unlike hosts anyway.
    #[arg(long)]
    pub allow_unlike_hosts: bool,

    /// Compare latency in multiples of the loopback round trip (p50) measured in the same run
    /// (`trove bench --calibrate`); unlike hosts are then accepted, and throughput is judged
    /// only with --allow-unlike-hosts.
    #[arg(long)]
    pub normalize_by_loopback: bool,

    /// Write the report as markdown (for a CI job summary or a pull-request comment).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,

    /// Write the report as JUnit XML, one test case per metric.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Write the report as JSON (schema trove.gate.report/v1).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the current runs to --baseline as the new baseline instead of judging them.
    #[arg(long)]
    pub update_baseline: bool,
}

/// What the gate asks a runner for: one run of the benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateRunRequest {
    /// The workload file given with --workload, if any.
    pub workload: Option<PathBuf>,
    /// Which run this is, from 1.
    pub run_index: u32,
    /// How many runs the gate makes.
    pub runs: u32,
}

/// Runs the benchmark once and returns its summary JSON (`trove.bench.summary/v1`), or a
/// message saying why it could not.
pub type Runner<'a> = &'a dyn Fn(&GateRunRequest) -> Result<serde_json::Value, String>;

/// `trove gate`: judges, reports, and returns the exit code. `runner` runs the benchmark when
/// the gate has to make its own runs (the command line passes `trove bench`'s).
pub fn run(args: GateArgs, runner: Runner) -> i32 {
    run_with(
        &args,
        runner,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// The gate with an injected runner and output streams.
pub fn run_with(
    args: &GateArgs,
    runner: Runner<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    match gate(args, runner, out) {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(err, "trove gate: {}", failure.message);
            failure.code
        }
    }
}

/// Why the gate stopped before a verdict, and with which exit code.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl From<InputError> for Failure {
    fn from(error: InputError) -> Failure {
        Failure::usage(error.message)
    }
}

fn gate(args: &GateArgs, runner: Runner<'_>, out: &mut dyn Write) -> Result<i32, Failure> {
    let thresholds =
        Thresholds::parse(args.max_regression.as_deref().unwrap_or("")).map_err(Failure::usage)?;
    if args.update_baseline {
        let current = current_runs(args, runner)?;
        return update_baseline(args, &current, out);
    }
    // The baseline first: it is the input a user most often gets wrong, and reading it costs
    // nothing, while the current runs may have to be made.
    let baseline = input::read_run_set("baseline", std::slice::from_ref(&args.baseline))
        .map_err(|error| {
            let hint = if args.baseline.exists() {
                ""
            } else {
                "; write one with `trove gate --baseline FILE --current RUN.json... --update-baseline`"
            };
            Failure::usage(format!("{error}{hint}"))
        })?;
    let current = current_runs(args, runner)?;

    let mut context = Context {
        baseline: describe_files(&baseline),
        current: describe_current(args, &current),
        warnings: Vec::new(),
    };
    let hosts_alike = check_hosts(args, &baseline, &current, &mut context)?;
    if let Some(warning) = config_warning(&baseline, &current) {
        context.warnings.push(warning);
    }

    let options = JudgeOptions {
        thresholds,
        normalized: args.normalize_by_loopback,
        judge_throughput: hosts_alike || args.allow_unlike_hosts,
    };
    let judgement = judge::judge(&baseline.runs, &current.runs, &options);
    let code = if judgement.passed() {
        EXIT_PASS
    } else {
        EXIT_REGRESSION
    };
    // The table first, so the verdict is on the terminal even if a report file cannot be
    // written.
    out.write_all(render::terminal(&judgement, &context).as_bytes())
        .map_err(|error| Failure::usage(format!("cannot write to the terminal ({error})")))?;
    write_reports(args, &judgement, &context, code)?;
    Ok(code)
}

/// Refuses unlike hosts unless the flags allow them, and checks calibration when latency is
/// normalised. Returns whether the hosts are alike; notes any allowance in the warnings.
fn check_hosts(
    args: &GateArgs,
    baseline: &RunSet,
    current: &RunSet,
    context: &mut Context,
) -> Result<bool, Failure> {
    let host_lines = host_differences(baseline, current);
    let hosts_alike = host_lines.is_empty();
    if !hosts_alike {
        if !args.allow_unlike_hosts && !args.normalize_by_loopback {
            return Err(unlike_hosts_failure(&host_lines, baseline, current));
        }
        let allowed_by = if args.normalize_by_loopback {
            "--normalize-by-loopback"
        } else {
            "--allow-unlike-hosts"
        };
        context.warnings.push(format!(
            "the runs come from unlike hosts ({}); compared because {allowed_by} was given",
            host_lines.join("; ")
        ));
    }
    if args.normalize_by_loopback {
        require_calibration(baseline)?;
        require_calibration(current)?;
    }
    Ok(hosts_alike)
}

/// The runs to judge: the --current files, or `--runs` runs from the runner.
fn current_runs(args: &GateArgs, runner: Runner<'_>) -> Result<RunSet, Failure> {
    if !args.current.is_empty() {
        if args.current.len() > GATE_CURRENT_FILES_MAX {
            return Err(Failure::usage(format!(
                "{} --current files given; the gate reads at most {GATE_CURRENT_FILES_MAX}",
                args.current.len()
            )));
        }
        return Ok(input::read_run_set("current", &args.current)?);
    }
    let mut set = RunSet {
        sources: Vec::new(),
        runs: Vec::new(),
        origins: Vec::new(),
    };
    for run_index in 1..=args.runs {
        let request = GateRunRequest {
            workload: args.workload.clone(),
            run_index,
            runs: args.runs,
        };
        let value = runner(&request).map_err(|problem| {
            Failure::usage(format!("run {run_index} of {}: {problem}", args.runs))
        })?;
        let summary = Summary::from_value(value).map_err(|problem| {
            Failure::usage(format!(
                "run {run_index} of {}: the summary {problem}",
                args.runs
            ))
        })?;
        set.runs.push(summary);
        set.origins.push(format!("run {run_index}"));
    }
    Ok(set)
}

fn update_baseline(args: &GateArgs, current: &RunSet, out: &mut dyn Write) -> Result<i32, Failure> {
    let lines = differences_within(current, "current");
    if !lines.is_empty() && !args.allow_unlike_hosts {
        return Err(Failure {
            code: EXIT_UNLIKE_HOSTS,
            message: format!(
                "the runs for the new baseline come from unlike hosts: {}; make them on one kind of host, or pass --allow-unlike-hosts",
                lines.join("; ")
            ),
        });
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    input::write_baseline(&args.baseline, &current.runs, now_ms).map_err(Failure::usage)?;
    let _ = writeln!(
        out,
        "trove gate: wrote baseline {} from {} run(s)",
        args.baseline.display(),
        current.runs.len()
    );
    Ok(EXIT_PASS)
}

/// Most host differences listed in a message.
const HOST_DIFFERENCES_SHOWN_MAX: usize = 10;

/// Every way a run's host differs from the baseline's first run, one line each (deduplicated).
fn host_differences(baseline: &RunSet, current: &RunSet) -> Vec<String> {
    let mut lines = differences_within(baseline, "baseline");
    let reference = &baseline.runs[0].host;
    let mut seen = BTreeSet::new();
    for (run, origin) in current.runs.iter().zip(&current.origins) {
        for difference in reference.differences(&run.host) {
            let line = format!(
                "{}: baseline \"{}\", {origin} \"{}\"",
                difference.field, difference.ours, difference.theirs
            );
            if seen.insert((difference.field, difference.theirs.clone())) {
                lines.push(line);
            }
        }
    }
    lines.truncate(HOST_DIFFERENCES_SHOWN_MAX);
    lines
}

/// How runs of one set differ from the set's first run.
fn differences_within(set: &RunSet, role: &str) -> Vec<String> {
    let Some(first) = set.runs.first() else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (run, origin) in set.runs.iter().zip(&set.origins).skip(1) {
        for difference in first.host.differences(&run.host) {
            lines.push(format!(
                "{role} runs differ in {}: \"{}\" and \"{}\" ({origin})",
                difference.field, difference.ours, difference.theirs
            ));
        }
    }
    lines.truncate(HOST_DIFFERENCES_SHOWN_MAX);
    lines
}

fn unlike_hosts_failure(lines: &[String], baseline: &RunSet, current: &RunSet) -> Failure {
    let calibrated = baseline
        .runs
        .iter()
        .chain(&current.runs)
        .all(|run| run.calibration.is_some());
    let hint = if calibrated {
        "Every run carries loopback calibration: pass --normalize-by-loopback to compare latency in loopback round trips, or --allow-unlike-hosts to compare anyway"
    } else {
        "Make the baseline on this kind of host (--update-baseline), run `trove bench --calibrate` for both and pass --normalize-by-loopback, or pass --allow-unlike-hosts to compare anyway"
    };
    Failure {
        code: EXIT_UNLIKE_HOSTS,
        message: format!("hosts not comparable: {}.\n{hint}", lines.join("; ")),
    }
}

/// Fails with the first run that has no usable loopback calibration.
fn require_calibration(set: &RunSet) -> Result<(), Failure> {
    for (run, origin) in set.runs.iter().zip(&set.origins) {
        let usable = run
            .calibration
            .as_ref()
            .is_some_and(|calibration| calibration.loopback_rtt_us.p50 > 0.0);
        if !usable {
            return Err(Failure::usage(format!(
                "--normalize-by-loopback needs loopback calibration in every run, and {origin} has none; make the runs with `trove bench --calibrate`"
            )));
        }
    }
    Ok(())
}

/// A warning when the runs were made with different bench configurations.
fn config_warning(baseline: &RunSet, current: &RunSet) -> Option<String> {
    let hashes: BTreeSet<&str> = baseline
        .runs
        .iter()
        .chain(&current.runs)
        .map(|run| run.config_hash.as_str())
        .collect();
    (hashes.len() > 1).then(|| {
        format!(
            "the runs were made with {} different bench configurations ({}); the comparison may not be like for like",
            hashes.len(),
            hashes.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Most file names listed in a report header.
const FILES_SHOWN_MAX: usize = 3;

fn describe_files(set: &RunSet) -> String {
    let mut names: Vec<String> = set
        .sources
        .iter()
        .take(FILES_SHOWN_MAX)
        .map(|path| path.display().to_string())
        .collect();
    if set.sources.len() > FILES_SHOWN_MAX {
        names.push(format!("and {} more", set.sources.len() - FILES_SHOWN_MAX));
    }
    format!("{} ({} runs)", names.join(", "), set.runs.len())
}

fn describe_current(args: &GateArgs, current: &RunSet) -> String {
    if !current.sources.is_empty() {
        return describe_files(current);
    }
    match &args.workload {
        Some(workload) => format!(
            "{} runs of trove bench with workload {}",
            current.runs.len(),
            workload.display()
        ),
        None => format!("{} runs of trove bench", current.runs.len()),
    }
}

fn write_reports(
    args: &GateArgs,
    judgement: &judge::Judgement,
    context: &Context,
    code: i32,
) -> Result<(), Failure> {
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|error| {
            Failure::usage(format!(
                "report file {}: cannot be written ({error})",
                path.display()
            ))
        })
    };
    if let Some(path) = &args.markdown {
        write(path, render::markdown(judgement, context))?;
    }
    if let Some(path) = &args.junit {
        write(path, render::junit(judgement, context))?;
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&render::json(judgement, context, code))
            .map_err(|error| Failure::usage(error.to_string()))?;
        text.push('\n');
        write(path, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::bench::report::fixtures::{report_with_everything, simple_report, temp_dir};
    use crate::host::fingerprint::{HostFingerprint, HostSources};

    fn host(cpu_model: &str) -> HostFingerprint {
        let sources = HostSources {
            osrelease: Some("6.1.0".into()),
            cpuinfo: Some(format!("processor : 0\nmodel name : {cpu_model}\n")),
            ..HostSources::default()
        };
        HostFingerprint::from_sources(&sources, "x86_64")
    }

    /// A summary on host `cpu_model` with its corrected p99 scaled by `p99_factor`.
    fn summary(cpu_model: &str, p99_factor: f64) -> serde_json::Value {
        let mut summary = Summary::of_report_on(&report_with_everything(), host(cpu_model));
        summary.main.latency_us.corrected.p99 *= p99_factor;
        serde_json::to_value(summary).unwrap()
    }

    fn args(baseline: &Path) -> GateArgs {
        GateArgs {
            baseline: baseline.to_path_buf(),
            current: Vec::new(),
            runs: 5,
            workload: None,
            max_regression: None,
            allow_unlike_hosts: false,
            normalize_by_loopback: false,
            markdown: None,
            junit: None,
            json: None,
            update_baseline: false,
        }
    }

    fn run_gate(args: &GateArgs, runner: Runner<'_>) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(args, runner, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// A baseline of five runs on `cpu_model`, written with --update-baseline through a fake
    /// runner.
    fn baseline_file(dir: &Path, cpu_model: &str) -> PathBuf {
        let path = dir.join("baseline.json");
        let mut update = args(&path);
        update.update_baseline = true;
        let factors = [1.0, 1.01, 0.99, 1.005, 0.995];
        let runner = |request: &GateRunRequest| {
            Ok(summary(cpu_model, factors[request.run_index as usize - 1]))
        };
        let (code, out, err) = run_gate(&update, &runner);
        assert_eq!(code, EXIT_PASS, "{err}");
        assert!(out.contains("wrote baseline"), "{out}");
        path
    }

    #[test]
    fn the_runner_is_asked_for_every_run_with_the_workload() {
        let dir = temp_dir("gate-runner");
        let baseline = baseline_file(&dir, "Example CPU");
        let calls = Cell::new(0);
        let mut gate_args = args(&baseline);
        gate_args.runs = 3;
        gate_args.workload = Some(PathBuf::from("ci/workload.toml"));
        let runner = |request: &GateRunRequest| {
            calls.set(calls.get() + 1);
            assert_eq!(
                request.workload.as_deref(),
                Some(Path::new("ci/workload.toml"))
            );
            assert_eq!((request.run_index, request.runs), (calls.get(), 3));
            Ok(summary("Example CPU", 1.0))
        };
        let (code, out, err) = run_gate(&gate_args, &runner);
        assert_eq!(code, EXIT_PASS, "{out}{err}");
        assert_eq!(calls.get(), 3);
        assert!(
            out.contains("3 runs of trove bench with workload ci/workload.toml"),
            "{out}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_regression_from_the_runner_exits_1() {
        let dir = temp_dir("gate-regression");
        let baseline = baseline_file(&dir, "Example CPU");
        let runner = |_: &GateRunRequest| Ok(summary("Example CPU", 1.3));
        let (code, out, _) = run_gate(&args(&baseline), &runner);
        assert_eq!(code, EXIT_REGRESSION, "{out}");
        assert!(out.contains("REGRESSION: p99 latency"), "{out}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_runner_is_an_input_error_with_its_message() {
        let dir = temp_dir("gate-runner-fails");
        let baseline = baseline_file(&dir, "Example CPU");
        let no_bench = |_: &GateRunRequest| Err("no node to run against".to_string());
        let (code, _, err) = run_gate(&args(&baseline), &no_bench);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("run 1 of 5: no node to run against"), "{err}");
        let not_a_summary = |_: &GateRunRequest| Ok(serde_json::json!({"rate": 1}));
        let (code, _, err) = run_gate(&args(&baseline), &not_a_summary);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("no \"schema\""), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unlike_hosts_are_refused_unless_normalised_by_loopback() {
        let dir = temp_dir("gate-hosts");
        let baseline = baseline_file(&dir, "Example CPU");
        let elsewhere = |_: &GateRunRequest| Ok(summary("Other CPU", 1.0));
        let (code, _, err) = run_gate(&args(&baseline), &elsewhere);
        assert_eq!(code, EXIT_UNLIKE_HOSTS);
        assert!(
            err.contains("cpu_model") && err.contains("Other CPU"),
            "{err}"
        );
        assert!(err.contains("--normalize-by-loopback"), "{err}");

        let mut normalised = args(&baseline);
        normalised.normalize_by_loopback = true;
        let (code, out, err) = run_gate(&normalised, &elsewhere);
        assert_eq!(code, EXIT_PASS, "{out}{err}");
        assert!(out.contains("x loopback rtt p50"), "{out}");
        assert!(out.contains("throughput from unlike hosts"), "{out}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn normalising_without_calibration_names_the_run() {
        let dir = temp_dir("gate-no-calibration");
        let baseline = baseline_file(&dir, "Example CPU");
        let uncalibrated = |_: &GateRunRequest| {
            let summary = Summary::of_report_on(&simple_report(), host("Example CPU"));
            Ok(serde_json::to_value(summary).unwrap())
        };
        let mut normalised = args(&baseline);
        normalised.normalize_by_loopback = true;
        let (code, _, err) = run_gate(&normalised, &uncalibrated);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("run 1 has none"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_threshold_is_a_usage_error() {
        let mut gate_args = args(Path::new("unused.json"));
        gate_args.max_regression = Some("p42=1%".into());
        let never = |_: &GateRunRequest| -> Result<serde_json::Value, String> { unreachable!() };
        let (code, _, err) = run_gate(&gate_args, &never);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("unknown metric \"p42\""), "{err}");
    }
}
