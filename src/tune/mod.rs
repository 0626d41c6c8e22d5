//! `trove tune`: is this host ready to run a pinned node, how quiet are its shard CPUs really,
//! and what would make it better.
//!
//! Operators of thread-per-core engines have tools that inspect settings (Redpanda's
//! `rpk redpanda check`, Seastar's perftune.py, tuned profiles); `trove tune` does that for what
//! glommio and io_uring need, and also measures what the shard CPUs suffer (see [`jitter`]).
//!
//! - `trove tune check` runs every check in [`checks`] against a [`host::Host`] and prints a
//!   table or JSON ([`report`]); its exit code says ready (0), a fatal check failed (1) or only
//!   warnings failed (2).
//! - `trove tune script` prints the fixes of the failing checks as a bash script ([`script`]).
//! - `trove tune cpus` prints the split of CPUs into shards and housekeeping ([`topology`]).
//!
//! Host state is read under a root (default `/`), so every check runs against recorded
//! `/proc` and `/sys` trees in tests. Runs on one thread, except the jitter measurement, which
//! spins one pinned thread per shard CPU for a moment.

pub mod checks;
pub mod jitter;
pub mod report;
pub mod script;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::constants::{
    HICCUP_NS_MAX, HICCUP_THRESHOLD_NS_DEFAULT, HICCUP_US_MAX_DEFAULT, JITTER_MS_DEFAULT,
    JITTER_MS_MAX, SHARDS_MAX,
};
use crate::host::cpuset::CpuSet;
use crate::host::topology::Topology;
use crate::host::tree::Host;
use checks::{Context, Verdict};
use jitter::{JitterConfig, JitterReport};
use report::Report;

/// Every check passed.
pub const EXIT_READY: i32 = 0;
/// A fatal check failed: a node cannot start here, or cannot pin its shards.
pub const EXIT_FATAL: i32 = 1;
/// Only warnings failed: a node runs, with longer tails than it could.
pub const EXIT_WARNINGS: i32 = 2;
/// The command could not run: a bad `--cpus`, `--root` or other value.
pub const EXIT_ERROR: i32 = 3;

const EXIT_CODES_HELP: &str = "\
Exit codes of `trove tune check`:
  0  ready: every check passed
  1  not ready: a fatal check failed (io_uring, kernel, locked memory, shard CPUs not usable)
  2  warnings only: the node runs, with longer tails than it could
  3  the check could not run (bad --cpus, --root or other value)
A command-line syntax error (unknown flag, missing value) also exits 2, with clap's usage
message on stderr; JSON output (--json) carries the verdict and exit code explicitly.";

/// Check this host for a pinned trove node, measure its CPUs' jitter, print fixes.
#[derive(Args, Debug)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct TuneArgs {
    #[command(subcommand)]
    pub command: TuneCommand,
}

#[derive(Subcommand, Debug)]
pub enum TuneCommand {
    /// Check the host for a node: a table of check, required, current, severity, passed.
    ///
    /// Exit 0 ready, 1 a fatal check failed, 2 warnings only, 3 bad input.
    #[command(after_help = EXIT_CODES_HELP)]
    Check(CheckArgs),
    /// Print a bash script that would fix each failing check. It applies nothing itself.
    Script(ScriptArgs),
    /// Print the proposed split of CPUs into shard CPUs and housekeeping CPUs (IRQs, the OS).
    Cpus(CpusArgs),
}

/// Where to look and which CPUs run shards.
#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Shard CPUs in the kernel's list syntax, e.g. 1-3,8,10-11 (at most 256).
    /// Default: the shard CPUs `trove tune cpus` proposes.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    #[command(flatten)]
    pub root: RootArg,
}

#[derive(Args, Debug)]
pub struct RootArg {
    /// Root of the host's /proc and /sys. `/` is this machine; any other root is a recorded
    /// tree, which also records the io_uring probe in trove-probe/io_uring_setup.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub root: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Spin this long on each shard CPU to measure hiccups (0 skips it; at most 60000).
    /// Measured on this machine only, not under another --root.
    #[arg(long, value_name = "N", default_value_t = JITTER_MS_DEFAULT)]
    pub jitter_ms: u64,
    /// A gap between two clock reads longer than this counts as a hiccup.
    #[arg(long, value_name = "NS", default_value_t = HICCUP_THRESHOLD_NS_DEFAULT)]
    pub jitter_threshold_ns: u64,
    /// The jitter check fails if a shard CPU's longest hiccup exceeds this.
    #[arg(long, value_name = "US", default_value_t = HICCUP_US_MAX_DEFAULT)]
    pub jitter_max_us: u64,
}

#[derive(Args, Debug)]
pub struct ScriptArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct CpusArgs {
    #[command(flatten)]
    pub root: RootArg,
}

/// Runs a `trove tune` command and returns its exit code.
pub fn run(args: TuneArgs) -> i32 {
    let result = match args.command {
        TuneCommand::Check(args) => run_check(&args),
        TuneCommand::Script(args) => run_script(&args),
        TuneCommand::Cpus(args) => run_cpus(&args),
    };
    result.unwrap_or_else(|message| {
        eprintln!("trove tune: {message}");
        EXIT_ERROR
    })
}

/// The host to check and the shard CPUs to check it for.
struct Target {
    host: Host,
    topology: Topology,
    shards: CpuSet,
}

impl Target {
    fn open(args: &TargetArgs) -> Result<Target, String> {
        let host = Host::open(&args.root.root)?;
        let topology = Topology::read(&host)?;
        let shards = match &args.cpus {
            Some(list) => parse_shard_cpus(list)?,
            None => topology.split().shards,
        };
        Ok(Target {
            host,
            topology,
            shards,
        })
    }

    fn context(&self) -> Context<'_> {
        Context::new(&self.host, &self.topology, self.shards.clone())
    }

    fn root_text(&self) -> String {
        self.host.root().display().to_string()
    }
}

fn parse_shard_cpus(list: &str) -> Result<CpuSet, String> {
    let cpus = CpuSet::parse(list).map_err(|error| format!("--cpus: {error}"))?;
    if cpus.is_empty() {
        return Err("--cpus names no CPU; give at least one, e.g. --cpus 1-3".to_string());
    }
    if cpus.len() > SHARDS_MAX {
        return Err(format!(
            "--cpus names {} CPUs but a node runs at most {SHARDS_MAX} shards",
            cpus.len()
        ));
    }
    Ok(cpus)
}

/// The jitter measurement asked for, if any: only on the live host, and never with 0 ms.
fn jitter_config(args: &CheckArgs, host: &Host) -> Result<Option<JitterConfig>, String> {
    if args.jitter_ms > JITTER_MS_MAX {
        return Err(format!(
            "--jitter-ms {} is above the limit of {JITTER_MS_MAX} ms",
            args.jitter_ms
        ));
    }
    if args.jitter_threshold_ns == 0 || args.jitter_threshold_ns >= HICCUP_NS_MAX {
        return Err(format!(
            "--jitter-threshold-ns must be between 1 and {}",
            HICCUP_NS_MAX - 1
        ));
    }
    if args.jitter_ms == 0 || !host.is_live() {
        return Ok(None);
    }
    Ok(Some(JitterConfig {
        duration_ms: args.jitter_ms,
        threshold_ns: args.jitter_threshold_ns,
        allowed_hiccup_us_max: args.jitter_max_us,
    }))
}

fn run_check(args: &CheckArgs) -> Result<i32, String> {
    let target = Target::open(&args.target)?;
    let jitter_config = jitter_config(args, &target.host)?;
    let context = target.context();
    let mut checks = checks::run_all(&context);
    let jitter = jitter_config.map(|config| JitterReport::measure(&target.shards, config));
    if let Some(jitter) = &jitter {
        checks.push(jitter.check());
    }
    let verdict = Verdict::of(&checks);
    let report = Report {
        root: target.root_text(),
        shard_cpus: target.shards.to_string(),
        housekeeping_cpus: context.housekeeping.to_string(),
        checks,
        jitter,
        verdict,
        exit_code: exit_code(verdict),
    };
    if args.json {
        print_stdout(&format!("{}\n", report.to_json()));
    } else {
        print_stdout(&report.to_table());
    }
    Ok(report.exit_code)
}

/// Writes to stdout; a reader that went away (`trove tune check | head`) is not an error.
fn print_stdout(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}

fn exit_code(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Ready => EXIT_READY,
        Verdict::NotReady => EXIT_FATAL,
        Verdict::Warnings => EXIT_WARNINGS,
    }
}

fn run_script(args: &ScriptArgs) -> Result<i32, String> {
    let target = Target::open(&args.target)?;
    let context = target.context();
    let checks = checks::run_all(&context);
    let script_target = script::ScriptTarget {
        root: &target.root_text(),
        shard_cpus: &target.shards.to_string(),
        housekeeping_cpus: &context.housekeeping.to_string(),
    };
    print_stdout(&script::render(&checks, &script_target));
    Ok(EXIT_READY)
}

fn run_cpus(args: &CpusArgs) -> Result<i32, String> {
    let host = Host::open(&args.root.root)?;
    let topology = Topology::read(&host)?;
    print_stdout(&cpus_text(&topology, host.root()));
    Ok(EXIT_READY)
}

/// The split as `trove tune cpus` prints it, with the lines that put it to use.
fn cpus_text(topology: &Topology, root: &Path) -> String {
    let split = topology.split();
    let row = |name: &str, cpus: &CpuSet, what: &str| {
        let list = if cpus.is_empty() {
            "none".to_string()
        } else {
            cpus.to_string()
        };
        format!("{name:<14}{list:<20}mask {:<12}{what}\n", cpus.to_mask())
    };
    let isolated = split.isolated();
    let mut out = format!(
        "CPUs of root {}: {} online, {} cores, {} NUMA nodes\n\n",
        root.display(),
        topology.online.len(),
        topology.cores.len(),
        topology.nodes.len()
    );
    out.push_str(&row(
        "shards",
        &split.shards,
        "one shard per core, on its first thread",
    ));
    out.push_str(&row(
        "idle siblings",
        &split.idle_siblings,
        "SMT siblings of shard CPUs: isolated, left idle",
    ));
    out.push_str(&row(
        "housekeeping",
        &split.housekeeping,
        "IRQs, kernel threads and the OS (first core of each NUMA node)",
    ));
    if split.shards == split.housekeeping {
        out.push_str("\none CPU only: the shard shares it with everything else\n");
    }
    out.push_str(&format!(
        "\nrun a node:           trove node --cpus {}\n\
         kernel command line:  isolcpus=managed_irq,domain,{isolated} nohz_full={isolated} rcu_nocbs={isolated}\n\
         IRQ affinity:         tuning/irq-affinity.sh {}\n",
        split.shards, split.housekeeping
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_cpus_are_validated() {
        assert_eq!(parse_shard_cpus("1-3").unwrap().len(), 3);
        assert!(parse_shard_cpus("").unwrap_err().contains("names no CPU"));
        assert!(
            parse_shard_cpus("3-1")
                .unwrap_err()
                .starts_with("--cpus: invalid CPU list")
        );
        let too_many = parse_shard_cpus("0-300").unwrap_err();
        assert!(too_many.contains("at most 256 shards"), "{too_many}");
    }

    #[test]
    fn exit_codes_follow_the_verdict() {
        assert_eq!(exit_code(Verdict::Ready), 0);
        assert_eq!(exit_code(Verdict::NotReady), 1);
        assert_eq!(exit_code(Verdict::Warnings), 2);
    }
}
