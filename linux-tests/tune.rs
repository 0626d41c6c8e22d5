//! `trove tune` end to end: the built binary against the fixture hosts in
//! `linux-tests/fixtures/tune` (tuned, default, broken), against this machine, and the shell it
//! writes and ships in `tuning/`.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use trove::host::cpuset::CpuSet;

use support::{COMMAND_WAIT, repo_path, run_bounded, scratch_dir, stderr, stdout};

fn fixture(name: &str) -> PathBuf {
    repo_path("linux-tests/fixtures/tune").join(name)
}

/// `trove ARGS`, run to its end.
fn trove(args: &[&str]) -> Output {
    run_bounded(support::trove().args(args), COMMAND_WAIT)
}

/// `bash`, to run to its end.
fn bash() -> Command {
    Command::new("bash")
}

/// `trove tune check --json` with `args`: the exit code and the parsed report.
fn check_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["tune", "check", "--json"];
    all.extend_from_slice(args);
    let output = trove(&all);
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap_or_else(|error| {
        panic!(
            "JSON does not parse ({error}); stdout: {} stderr: {}",
            stdout(&output),
            stderr(&output)
        )
    });
    (output.status.code().expect("exited"), report)
}

fn check_fixture(name: &str, args: &[&str]) -> (i32, Value) {
    let root = fixture(name);
    let mut all = vec!["--root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    check_json(&all)
}

/// The failed checks of a report, as (name, severity).
fn failed(report: &Value) -> BTreeSet<(String, String)> {
    rows(report)
        .filter(|row| row["passed"] == false)
        .map(|row| {
            (
                row["check"].as_str().unwrap().to_string(),
                row["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rows(report: &Value) -> impl Iterator<Item = &Value> {
    report["checks"].as_array().expect("checks array").iter()
}

fn row<'r>(report: &'r Value, name: &str) -> &'r Value {
    rows(report)
        .find(|row| row["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

fn warnings(names: &[&str]) -> BTreeSet<(String, String)> {
    names
        .iter()
        .map(|name| (name.to_string(), "warning".to_string()))
        .collect()
}

#[test]
fn a_tuned_host_is_ready() {
    let (code, report) = check_fixture("tuned", &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["verdict"], "ready");
    assert!(failed(&report).is_empty(), "{:?}", failed(&report));
    assert_eq!(report["shard_cpus"], "1-3,5-7");
    assert_eq!(report["housekeeping_cpus"], "0,4,8,12");
    assert!(
        report["jitter"].is_null(),
        "jitter is measured only on the live host"
    );
}

#[test]
fn a_default_host_fails_warnings_only() {
    let (code, report) = check_fixture("default", &[]);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["verdict"], "warnings");
    let expected = warnings(&[
        "isolcpus",
        "nohz_full",
        "rcu_nocbs",
        "smt siblings",
        "cpu governor",
        "transparent hugepages",
        "vm.swappiness",
        "kernel.numa_balancing",
        "net.ipv4.tcp_max_syn_backlog",
        "nic irq affinity",
        "irqbalance",
    ]);
    assert_eq!(failed(&report), expected);
    assert_eq!(
        row(&report, "irqbalance")["current"],
        "running (pid 812), no banned CPUs"
    );
    assert_eq!(
        row(&report, "nic irq affinity")["current"],
        "8 of 8 reach shard CPUs (irq 120 → 0-15)"
    );
}

#[test]
fn a_broken_host_is_not_ready() {
    let (code, report) = check_fixture("broken", &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["verdict"], "not_ready");
    let failed = failed(&report);
    let fatal: BTreeSet<&str> = failed
        .iter()
        .filter(|(_, severity)| severity == "fatal")
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        fatal,
        BTreeSet::from(["io_uring", "memlock (glommio floor)"])
    );
    assert!(failed.contains(&("memlock (shards)".to_string(), "warning".to_string())));
    assert!(failed.contains(&("virtualisation".to_string(), "warning".to_string())));
    assert!(failed.contains(&("steal time".to_string(), "warning".to_string())));
    let io_uring = row(&report, "io_uring")["current"].as_str().unwrap();
    assert!(
        io_uring.contains("kernel.io_uring_disabled = 2"),
        "{io_uring}"
    );
    assert_eq!(row(&report, "memlock (glommio floor)")["current"], "64 KiB");
    assert_eq!(
        row(&report, "clocksource")["passed"],
        true,
        "kvm-clock is read by the vDSO"
    );
}

#[test]
fn the_table_carries_the_same_verdict_as_the_json() {
    for (name, code) in [("tuned", 0), ("default", 2), ("broken", 1)] {
        let root = fixture(name);
        let output = trove(&["tune", "check", "--root", root.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(code), "{name}");
        let table = stdout(&output);
        let header = table
            .lines()
            .find(|line| line.starts_with("check"))
            .unwrap();
        let columns: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(
            columns,
            ["check", "required", "current", "severity", "passed"]
        );
        assert!(table.contains(&format!("exit {code}")), "{table}");
    }
}

#[test]
fn shard_cpus_outside_the_host_are_fatal() {
    let (code, report) = check_fixture("tuned", &["--cpus", "1,99"]);
    assert_eq!(code, 1);
    let affinity = row(&report, "cpu affinity");
    assert_eq!(affinity["passed"], false);
    assert!(
        affinity["current"]
            .as_str()
            .unwrap()
            .ends_with(": 99 outside"),
        "{affinity}"
    );
}

#[test]
fn shards_sharing_a_core_are_a_warning() {
    let (code, report) = check_fixture("tuned", &["--cpus", "1,9"]);
    assert_eq!(code, 2, "{report:#}");
    let smt = row(&report, "smt siblings");
    assert_eq!(smt["passed"], false);
    assert_eq!(smt["current"], "shards 1,9 share cores");
    assert_eq!(report["housekeeping_cpus"], "0,2-8,10-15");
}

#[test]
fn bad_input_is_refused_with_a_reason_and_exit_3() {
    let tuned = fixture("tuned");
    let root = tuned.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["tune", "check", "--root", root, "--cpus", "3-1"],
            "runs backwards",
        ),
        (
            &["tune", "check", "--root", root, "--cpus", "a"],
            "'a' is not a CPU number",
        ),
        (
            &["tune", "check", "--root", "/no/such/root"],
            "cannot open --root",
        ),
        (
            &["tune", "script", "--root", env!("CARGO_MANIFEST_DIR")],
            "has no proc/",
        ),
        (
            &["tune", "check", "--jitter-ms", "999999"],
            "above the limit",
        ),
    ];
    for (args, reason) in cases {
        let output = trove(args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {message}");
        assert!(message.contains(reason), "{args:?}: {message}");
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let output = trove(&["tune", "check", "--help"]);
    let help = stdout(&output);
    assert_eq!(output.status.code(), Some(0));
    for line in [
        "0  ready",
        "1  not ready",
        "2  warnings only",
        "3  the check could not run",
    ] {
        assert!(help.contains(line), "{line} missing from:\n{help}");
    }
}

#[test]
fn this_machine_is_checked_without_panicking_and_its_json_parses() {
    let (code, report) = check_json(&["--jitter-ms", "20"]);
    assert!([0, 1, 2].contains(&code), "exit {code}: {report:#}");
    assert_eq!(report["exit_code"], code);
    assert_eq!(report["root"], "/");
    assert!(rows(&report).count() >= 21, "{report:#}");
    for row in rows(&report) {
        assert!(
            row["passed"].is_boolean() && row["current"].is_string(),
            "{row}"
        );
    }
    let shards = CpuSet::parse(report["shard_cpus"].as_str().unwrap()).unwrap();
    let jitter = &report["jitter"];
    let measured = jitter["cpus"].as_array().unwrap().len();
    let unmeasured = jitter["errors"].as_array().unwrap().len();
    assert_eq!(measured + unmeasured, shards.len(), "{jitter:#}");
    // Only a gap longer than the threshold is a hiccup: a CPU that counted some has a longest
    // one above the threshold (figures are rounded to 0.1 µs), one that counted none lost nothing.
    let threshold_us = jitter["threshold_ns"].as_f64().unwrap() / 1000.0;
    let allowed_us = jitter["allowed_hiccup_us_max"].as_f64().unwrap();
    let mut all_within = unmeasured == 0;
    for cpu in jitter["cpus"].as_array().unwrap() {
        let hiccups = cpu["hiccups"].as_u64().unwrap();
        let max_us = cpu["hiccup_us_max"].as_f64().unwrap();
        let lost_percent = cpu["lost_percent"].as_f64().unwrap();
        if hiccups == 0 {
            assert_eq!((max_us, lost_percent), (0.0, 0.0), "{cpu}");
        } else {
            assert!(max_us + 0.05 >= threshold_us, "{cpu}");
        }
        all_within &= max_us <= allowed_us;
    }
    // The row's verdict follows from the figures the report prints beside it.
    assert_eq!(
        row(&report, "measured jitter")["passed"],
        all_within,
        "{jitter:#}"
    );
}

/// Writes `text` to a file of its own and runs `bash -n` on it.
fn assert_valid_bash(text: &str, name: &str) {
    let dir = scratch_dir(&format!("tune-{name}"));
    let path = dir.join("script.sh");
    fs::write(&path, text).unwrap();
    let output = run_bounded(bash().arg("-n").arg(&path), COMMAND_WAIT);
    fs::remove_dir_all(&dir).unwrap();
    assert!(
        output.status.success(),
        "{name}: {}\n{text}",
        stderr(&output)
    );
}

#[test]
fn generated_scripts_are_valid_shell() {
    for name in ["tuned", "default", "broken"] {
        let root = fixture(name);
        let output = trove(&["tune", "script", "--root", root.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_valid_bash(&stdout(&output), name);
    }
    let live = trove(&["tune", "script"]);
    assert_eq!(live.status.code(), Some(0));
    assert_valid_bash(&stdout(&live), "live");
}

#[test]
fn scripts_fix_what_fails_and_nothing_else() {
    let script = |name: &str| {
        let root = fixture(name);
        stdout(&trove(&[
            "tune",
            "script",
            "--root",
            root.to_str().unwrap(),
        ]))
    };
    let tuned = script("tuned");
    assert!(tuned.contains("fixes the 0 failing checks"), "{tuned}");
    assert!(!tuned.contains("sysctl -w"), "{tuned}");
    let default = script("default");
    for fix in [
        "sysctl -w vm.swappiness=1",
        "sysctl -w kernel.numa_balancing=0",
        "nohz_full=1-3,5-7,9-11,13-15",
        "for irq in 120 121 122 123 124 125 126 127; do echo 0,4,8,12 > /proc/irq/$irq/smp_affinity_list",
        "echo 'IRQBALANCE_BANNED_CPULIST=1-3,5-7'",
    ] {
        assert!(default.contains(fix), "{fix} missing from:\n{default}");
    }
    assert!(
        !default.contains("somaxconn"),
        "somaxconn passed on the default host"
    );
    let broken = script("broken");
    assert!(
        broken.contains("sysctl -w kernel.io_uring_disabled=0"),
        "{broken}"
    );
    assert!(
        broken.contains("/etc/security/limits.d/60-trove-memlock.conf"),
        "{broken}"
    );
    assert_eq!(
        broken.matches("limits.d/60-trove-memlock.conf").count(),
        1,
        "{broken}"
    );
}

#[test]
fn tune_cpus_prints_the_split() {
    let root = fixture("tuned");
    let output = trove(&["tune", "cpus", "--root", root.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    let field = |name: &str| {
        let line = text.lines().find(|line| line.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("shards"), "1-3,5-7 mask 000000ee");
    assert_eq!(field("idle siblings"), "9-11,13-15 mask 0000ee00");
    assert_eq!(field("housekeeping"), "0,4,8,12 mask 00001111");
    assert!(text.contains("trove node --cpus 1-3,5-7"), "{text}");
}

/// Copies a fixture tree (files, directories and symbolic links) to a scratch directory.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The `key = value` lines of a sysctl.d file (a leading `-` only silences errors).
fn sysctl_settings(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key = value");
            let key = key.trim().trim_start_matches('-');
            (key.to_string(), value.trim().to_string())
        })
        .collect()
}

#[test]
fn the_shipped_sysctl_file_passes_the_sysctl_checks() {
    let settings = sysctl_settings(&repo_path("tuning/sysctl.d/60-trove.conf"));
    let root = scratch_dir("tune-sysctl");
    copy_tree(&fixture("default"), &root);
    for (key, value) in &settings {
        let path = root.join("proc/sys").join(key.replace('.', "/"));
        fs::write(path, format!("{value}\n")).unwrap();
    }
    let (_, report) = check_json(&["--root", root.to_str().unwrap()]);
    fs::remove_dir_all(&root).unwrap();
    for name in [
        "vm.swappiness",
        "kernel.numa_balancing",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.busy_read/busy_poll",
    ] {
        assert_eq!(
            row(&report, name)["passed"],
            true,
            "{name}: {}",
            row(&report, name)
        );
    }
}

/// The CPU list of each `name=LIST` parameter in a command line (isolcpus flags dropped).
fn cmdline_cpus(cmdline: &str) -> Vec<(String, CpuSet)> {
    cmdline
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| {
            let list = value.trim_start_matches("managed_irq,domain,");
            (name.to_string(), CpuSet::parse(list).unwrap())
        })
        .collect()
}

#[test]
fn the_shipped_kernel_command_line_matches_tune_cpus_for_its_example_host() {
    let cfg = repo_path("tuning/grub.d/60-trove-isolation.cfg");
    let sourced = run_bounded(
        bash()
            .arg("-c")
            .arg("source \"$1\" && echo \"$GRUB_CMDLINE_LINUX_DEFAULT\"")
            .arg("bash")
            .arg(&cfg),
        COMMAND_WAIT,
    );
    assert!(sourced.status.success(), "{}", stderr(&sourced));
    let shipped = cmdline_cpus(&stdout(&sourced));
    // The example host of tuning/ is the fixture machine.
    let root = fixture("tuned");
    let cpus = stdout(&trove(&["tune", "cpus", "--root", root.to_str().unwrap()]));
    let line = |prefix: &str| {
        let line = cpus.lines().find(|line| line.starts_with(prefix)).unwrap();
        line[prefix.len()..].trim().to_string()
    };
    let mut proposed = cmdline_cpus(&line("kernel command line:"));
    let housekeeping = line("housekeeping")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    proposed.push((
        "irqaffinity".to_string(),
        CpuSet::parse(&housekeeping).unwrap(),
    ));
    assert_eq!(shipped, proposed);
}

/// Every interrupt's affinity, as /proc/irq shows it.
fn irq_affinities() -> Vec<(String, String)> {
    let mut affinities: Vec<(String, String)> = fs::read_dir("/proc/irq")
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("smp_affinity_list");
            let list = fs::read_to_string(&path).ok()?;
            Some((path.display().to_string(), list))
        })
        .collect();
    affinities.sort();
    affinities
}

#[test]
fn the_irq_affinity_script_is_valid_and_its_dry_run_changes_nothing() {
    let script = repo_path("tuning/irq-affinity.sh");
    let syntax = run_bounded(bash().arg("-n").arg(&script), COMMAND_WAIT);
    assert!(syntax.status.success(), "{}", stderr(&syntax));
    let before = irq_affinities();
    let dry = run_bounded(bash().arg(&script).args(["--dry-run", "0"]), COMMAND_WAIT);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("would move"), "{}", stdout(&dry));
    assert_eq!(irq_affinities(), before);
    let bad = run_bounded(bash().arg(&script).arg("0-x"), COMMAND_WAIT);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("must be a kernel CPU list"),
        "{}",
        stderr(&bad)
    );
}
