//! The host checks of `trove tune check`: each reads the host through [`Host`] and returns one
//! row of the report (what is required, what the host has, how bad a failure is) and, when it
//! fails, the shell lines that would fix it (`trove tune script` prints them).
//!
//! A fatal check is one without which a node cannot start or cannot be trusted to run (io_uring,
//! kernel, locked memory, CPUs it may not use); a warning is one that costs latency or
//! throughput. The groups: [`engine`] (can glommio run at all), [`cpu`] (are the shard CPUs
//! quiet), [`settings`] (memory and network sysctls), [`irq`] (where interrupts land).

mod cpu;
mod engine;
mod irq;
mod settings;

use serde::Serialize;

use crate::host::cpuset::CpuSet;
use crate::host::topology::Topology;
use crate::host::tree::Host;

/// How bad a failed check is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A node cannot start, or its shards cannot be pinned.
    Fatal,
    /// A node runs, but slower or with longer tails than it could.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Warning => "warning",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub required: String,
    pub current: String,
    pub severity: Severity,
    pub passed: bool,
    /// Shell lines that would make the check pass (empty when it passed): commands, and
    /// comments where only a person can act (a kernel upgrade, a different machine).
    #[serde(skip)]
    pub fix: Vec<String>,
}

impl Check {
    pub(in crate::tune) fn new(
        check: &'static str,
        severity: Severity,
        required: impl Into<String>,
        current: impl Into<String>,
        passed: bool,
    ) -> Check {
        Check {
            check,
            required: required.into(),
            current: one_line(current.into()),
            severity,
            passed,
            fix: Vec::new(),
        }
    }

    /// Attaches the fix, kept only if the check failed.
    pub(in crate::tune) fn fix(mut self, lines: impl IntoIterator<Item = String>) -> Check {
        if !self.passed {
            self.fix = lines.into_iter().collect();
        }
        self
    }
}

/// Report cells stay on one line, so the table and the script's comments stay well-formed.
fn one_line(text: String) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What every check needs to know: the host, its CPUs, and which of them run shards.
pub struct Context<'a> {
    pub host: &'a Host,
    pub topology: &'a Topology,
    pub shards: CpuSet,
    /// Where IRQs and the OS belong: online CPUs outside the shards' cores (or, if that leaves
    /// nothing, outside the shards themselves).
    pub housekeeping: CpuSet,
}

impl<'a> Context<'a> {
    pub fn new(host: &'a Host, topology: &'a Topology, shards: CpuSet) -> Context<'a> {
        let outside_cores = topology
            .online
            .difference(&Self::cores_of(topology, &shards));
        let housekeeping = if outside_cores.is_empty() {
            topology.online.difference(&shards)
        } else {
            outside_cores
        };
        Context {
            host,
            topology,
            shards,
            housekeeping,
        }
    }

    /// Every online thread of the cores the shards run on: the CPUs to isolate.
    pub fn shard_cores(&self) -> CpuSet {
        Self::cores_of(self.topology, &self.shards)
    }

    fn cores_of(topology: &Topology, cpus: &CpuSet) -> CpuSet {
        cpus.iter().fold(CpuSet::default(), |all, cpu| {
            all.union(&topology.core_of(cpu))
        })
    }
}

/// Runs every check, in the report's order.
pub fn run_all(context: &Context) -> Vec<Check> {
    let mut checks = engine::checks(context);
    checks.extend(cpu::checks(context));
    checks.extend(settings::checks(context));
    checks.extend(irq::checks(context));
    checks
}

/// The overall outcome of a set of checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed.
    Ready,
    /// Only warnings failed.
    Warnings,
    /// A fatal check failed.
    NotReady,
}

impl Verdict {
    pub fn of(checks: &[Check]) -> Verdict {
        let failed = |severity| {
            checks
                .iter()
                .any(|check| !check.passed && check.severity == severity)
        };
        if failed(Severity::Fatal) {
            Verdict::NotReady
        } else if failed(Severity::Warning) {
            Verdict::Warnings
        } else {
            Verdict::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(severity: Severity, passed: bool) -> Check {
        Check::new("x", severity, "r", "c", passed)
    }

    #[test]
    fn the_verdict_is_the_worst_failure() {
        assert_eq!(Verdict::of(&[check(Severity::Fatal, true)]), Verdict::Ready);
        assert_eq!(
            Verdict::of(&[
                check(Severity::Fatal, true),
                check(Severity::Warning, false)
            ]),
            Verdict::Warnings
        );
        assert_eq!(
            Verdict::of(&[
                check(Severity::Warning, false),
                check(Severity::Fatal, false)
            ]),
            Verdict::NotReady
        );
    }

    #[test]
    fn fixes_are_kept_only_for_failures() {
        let fix = || vec!["sysctl -w vm.swappiness=1".to_string()];
        assert!(check(Severity::Warning, true).fix(fix()).fix.is_empty());
        assert_eq!(check(Severity::Warning, false).fix(fix()).fix, fix());
    }

    #[test]
    fn cells_stay_on_one_line() {
        let check = Check::new("x", Severity::Warning, "r", "a\nb\tc", false);
        assert_eq!(check.current, "a b c");
    }
}
