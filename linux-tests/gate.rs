//! `trove gate` end to end: the binary judges summary files written the way `trove bench`
//! writes them, and its exit code, terminal output, markdown and JUnit say the right thing.

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use hdrhistogram::Histogram;
use serde_json::Value;
use trove::bench::report::{Calibration, LoadModel, Report, RunRecord, Summary};
use trove::host::fingerprint::{HostFingerprint, HostSources};

use support::{COMMAND_WAIT, run_bounded, scratch_dir, trove};

/// A latency histogram (ns) with `count` values spread evenly over `low..high`.
fn histogram(low: u64, high: u64, count: u64) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for index in 0..count {
        histogram
            .record(low + (high - low) * index / count)
            .unwrap();
    }
    histogram
}

fn host(cpu_model: &str) -> HostFingerprint {
    let sources = HostSources {
        osrelease: Some("6.1.0-test".into()),
        cpuinfo: Some(format!("processor : 0\nmodel name : {cpu_model}\n")),
        cpus_online_list: Some("0-3".into()),
        ..HostSources::default()
    };
    HostFingerprint::from_sources(&sources, "x86_64")
}

/// A summary as `trove bench` writes it, on a host with `cpu_model`.
fn base_summary(cpu_model: &str) -> Value {
    let record = RunRecord {
        target: "trove".into(),
        load: LoadModel::Open {
            rate_per_s: 5_000.0,
        },
        started_unix_ms: 1_790_000_000_000,
        duration_s: 2.0,
        sent: 10_000,
        acknowledged: 9_990,
        rejected: 10,
        busy: 0,
        errors: 0,
        bytes_sent: 960_000,
        bytes_received: 480_000,
        corrected_ns: histogram(20_000, 200_000, 10_000),
        uncorrected_ns: histogram(15_000, 150_000, 10_000),
        lag_ns: histogram(1_000, 5_000, 10_000),
        intervals: Vec::new(),
    };
    let report = Report {
        config: serde_json::json!({"rate": 5000.0, "duration_s": 2}),
        seed: 42,
        main: record,
        peer: None,
        calibration: Some(Calibration {
            loopback_rtt_ns: histogram(10_000, 30_000, 1_000),
            loopback_bytes_per_s: 3.0e9,
            cpus: vec![0, 1],
        }),
        sweep: None,
        node: None,
        cluster: None,
    };
    serde_json::to_value(Summary::of_report_on(&report, host(cpu_model))).unwrap()
}

/// A run whose p50, p99 and p99.9 are the base run's times `factor`.
fn run_with_latency_factor(cpu_model: &str, factor: f64) -> Value {
    let mut value = base_summary(cpu_model);
    let corrected = &mut value["main"]["latency_us"]["corrected"];
    for key in ["p50", "p99", "p999"] {
        corrected[key] = Value::from(corrected[key].as_f64().unwrap() * factor);
    }
    value
}

struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    fn new(name: &str) -> Workspace {
        Workspace {
            dir: scratch_dir(&format!("gate-{name}")),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes one summary file per run and returns their paths.
    fn runs(&self, prefix: &str, runs: &[Value]) -> Vec<PathBuf> {
        runs.iter()
            .enumerate()
            .map(|(index, run)| {
                let path = self.path(&format!("{prefix}-{index}.json"));
                fs::write(&path, serde_json::to_string_pretty(run).unwrap()).unwrap();
                path
            })
            .collect()
    }

    /// A baseline file made by `trove gate --update-baseline` from `runs`.
    fn baseline(&self, runs: &[Value]) -> PathBuf {
        let baseline = self.path("baseline.json");
        let files = self.runs("baseline-run", runs);
        let output = gate(&baseline, &files, &["--update-baseline"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        baseline
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn gate(baseline: &Path, current: &[PathBuf], extra: &[&str]) -> Output {
    let mut command = trove();
    command.arg("gate").arg("--baseline").arg(baseline);
    if !current.is_empty() {
        command.arg("--current").args(current);
    }
    run_bounded(command.args(extra), COMMAND_WAIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Five runs around the base run, within half a percent of each other.
fn steady_runs(cpu_model: &str, factor: f64) -> Vec<Value> {
    [1.0, 1.004, 0.996, 1.002, 0.998]
        .iter()
        .map(|jitter| run_with_latency_factor(cpu_model, factor * jitter))
        .collect()
}

fn assert_junit_well_formed(path: &Path) -> roxmltree::Document<'static> {
    let xml: &'static str = Box::leak(fs::read_to_string(path).unwrap().into_boxed_str());
    let document = roxmltree::Document::parse(xml).expect("the JUnit file is well-formed XML");
    assert_eq!(document.root_element().tag_name().name(), "testsuites");
    document
}

#[test]
fn identical_inputs_pass() {
    let workspace = Workspace::new("identical");
    let runs = steady_runs("Example CPU", 1.0);
    let baseline = workspace.baseline(&runs);
    let current = workspace.runs("current", &runs);
    let junit = workspace.path("gate.xml");
    let output = gate(&baseline, &current, &["--junit", junit.to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.starts_with("trove gate: PASS"), "{stdout}");
    let document = assert_junit_well_formed(&junit);
    let failures = document
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .count();
    assert_eq!(failures, 0);
}

#[test]
fn a_single_summary_is_accepted_as_baseline_and_as_current_run() {
    let workspace = Workspace::new("single");
    let files = workspace.runs("run", &[base_summary("Example CPU")]);
    let output = gate(&files[0], &files, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

#[test]
fn a_30_percent_p99_regression_fails_and_is_named_in_markdown_and_junit() {
    let workspace = Workspace::new("regression");
    let baseline = workspace.baseline(&steady_runs("Example CPU", 1.0));
    let current = workspace.runs("current", &steady_runs("Example CPU", 1.3));
    let (markdown, junit, json) = (
        workspace.path("gate.md"),
        workspace.path("gate.xml"),
        workspace.path("gate.json"),
    );
    let output = gate(
        &baseline,
        &current,
        &[
            "--markdown",
            markdown.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));

    let markdown = fs::read_to_string(&markdown).unwrap();
    assert!(markdown.contains("REGRESSION"), "{markdown}");
    let p99_row = markdown
        .lines()
        .find(|line| line.starts_with("| ") && line.contains("p99 latency"))
        .expect("a p99 row");
    assert!(
        p99_row.contains("**regression**") && p99_row.contains("+30.0%"),
        "{p99_row}"
    );

    let document = assert_junit_well_formed(&junit);
    let failed: Vec<&str> = document
        .descendants()
        .filter(|node| node.has_tag_name("testcase"))
        .filter(|case| case.children().any(|child| child.has_tag_name("failure")))
        .map(|case| case.attribute("name").unwrap())
        .collect();
    assert!(failed.contains(&"p99"), "{failed:?}");
    assert!(!failed.contains(&"throughput"), "{failed:?}");

    let report: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["verdict"], "regression");
    assert_eq!(report["exit_code"], 1);
}

#[test]
fn variation_inside_the_noise_floor_passes() {
    let workspace = Workspace::new("noise");
    // Runs that scatter by about ±20%: a 12% higher median is inside their own spread.
    let noisy = |center: f64| -> Vec<Value> {
        [1.0, 1.2, 0.8, 1.15, 0.85]
            .iter()
            .map(|spread| run_with_latency_factor("Example CPU", center * spread))
            .collect()
    };
    let baseline = workspace.baseline(&noisy(1.0));
    let current = workspace.runs("current", &noisy(1.12));
    let markdown = workspace.path("gate.md");
    let output = gate(
        &baseline,
        &current,
        &["--markdown", markdown.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    let markdown = fs::read_to_string(&markdown).unwrap();
    let p99_row = markdown
        .lines()
        .find(|line| line.starts_with("| ") && line.contains("p99 latency"))
        .unwrap();
    assert!(
        p99_row.contains("+12.0%") && p99_row.contains("within the noise floor"),
        "{p99_row}"
    );
}

#[test]
fn a_host_mismatch_exits_3_and_names_the_difference() {
    let workspace = Workspace::new("hosts");
    let baseline = workspace.baseline(&steady_runs("Example CPU", 1.0));
    let current = workspace.runs("current", &steady_runs("Other CPU", 1.0));
    let output = gate(&baseline, &current, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("hosts not comparable") && stderr.contains("Other CPU"),
        "{stderr}"
    );

    let allowed = gate(&baseline, &current, &["--allow-unlike-hosts"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));
    assert!(text(&allowed.stdout).contains("unlike hosts"));
}

#[test]
fn a_missing_baseline_exits_2_naming_the_file() {
    let workspace = Workspace::new("missing");
    let current = workspace.runs("current", &[base_summary("Example CPU")]);
    let missing = workspace.path("no-such-baseline.json");
    let output = gate(&missing, &current, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-baseline.json"), "{stderr}");
    assert!(stderr.contains("cannot be opened"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_malformed_baseline_exits_2_naming_the_file_and_the_problem() {
    let workspace = Workspace::new("malformed");
    let current = workspace.runs("current", &[base_summary("Example CPU")]);
    let cases = [
        (
            "truncated.json",
            "{\"schema\": \"trove.gate.baseline/v1\", \"runs\": [",
            "is not JSON",
        ),
        (
            "wrong-kind.json",
            "{\"schema\": \"someone.else/v3\"}",
            "someone.else/v3",
        ),
        ("no-schema.json", "[1, 2, 3]", "no \"schema\" field"),
    ];
    for (name, content, problem) in cases {
        let path = workspace.path(name);
        fs::write(&path, content).unwrap();
        let output = gate(&path, &current, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(problem),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let mut broken = base_summary("Example CPU");
    broken["main"]["latency_us"]["corrected"]["p99"] = Value::from("slow");
    let path = workspace.path("bad-field.json");
    fs::write(&path, broken.to_string()).unwrap();
    let output = gate(&path, &current, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad-field.json") && stderr.contains("invalid type"),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_exits_2() {
    let workspace = Workspace::new("flags");
    let files = workspace.runs("run", &[base_summary("Example CPU")]);
    let output = gate(&files[0], &files, &["--max-regression", "p99=ten"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not a percentage"));
    let output = gate(&files[0], &files, &["--runs", "0"]);
    assert_eq!(output.status.code(), Some(2));
}
