//! The result of `trove tune check`, written as a table for people or as JSON for programs.
//! Both carry the same facts; the JSON field names are a stable interface.

use serde::Serialize;

use super::checks::{Check, Verdict};
use super::jitter::JitterReport;

/// Everything a check run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The root the host was read from (`/` for this machine).
    pub root: String,
    pub shard_cpus: String,
    pub housekeeping_cpus: String,
    pub checks: Vec<Check>,
    /// Present when jitter was measured (live host, `--jitter-ms` above 0).
    pub jitter: Option<JitterReport>,
    pub verdict: Verdict,
    pub exit_code: i32,
}

impl Report {
    pub fn to_json(&self) -> String {
        // A tree of strings, numbers and booleans always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "trove tune check: root {}, shard CPUs {} (housekeeping {})\n\n",
            self.root, self.shard_cpus, self.housekeeping_cpus
        );
        out.push_str(&checks_table(&self.checks));
        if let Some(jitter) = &self.jitter {
            out.push('\n');
            out.push_str(&jitter_table(jitter));
        }
        out.push('\n');
        out.push_str(&self.verdict_line());
        out
    }

    fn verdict_line(&self) -> String {
        let failed = self.checks.iter().filter(|check| !check.passed).count();
        let verdict = match self.verdict {
            Verdict::Ready => "ready".to_string(),
            Verdict::Warnings => format!("warnings only ({failed} checks failed)"),
            Verdict::NotReady => {
                format!("not ready: a fatal check failed ({failed} checks failed)")
            }
        };
        format!(
            "verdict: {verdict}; exit {}. `trove tune script` prints the fixes.\n",
            self.exit_code
        )
    }
}

fn checks_table(checks: &[Check]) -> String {
    let header = ["check", "required", "current", "severity", "passed"].map(String::from);
    let rows = checks.iter().map(|check| {
        [
            check.check.to_string(),
            check.required.clone(),
            check.current.clone(),
            check.severity.as_str().to_string(),
            if check.passed { "yes" } else { "NO" }.to_string(),
        ]
    });
    table(std::iter::once(header).chain(rows).collect())
}

fn jitter_table(jitter: &JitterReport) -> String {
    let config = &jitter.config;
    let mut out = format!(
        "measured jitter: {} ms spin on each shard CPU; a hiccup is a gap > {} ns between clock reads\n",
        config.duration_ms, config.threshold_ns
    );
    let header = ["cpu", "hiccups", "p99 µs", "p99.9 µs", "max µs", "lost %"].map(String::from);
    let rows = jitter.cpus.iter().map(|cpu| {
        [
            cpu.cpu.to_string(),
            cpu.hiccups.to_string(),
            format!("{:.1}", cpu.hiccup_us_p99),
            format!("{:.1}", cpu.hiccup_us_p999),
            format!("{:.1}", cpu.hiccup_us_max),
            format!("{:.1}", cpu.lost_percent),
        ]
    });
    out.push_str(&table(std::iter::once(header).chain(rows).collect()));
    for error in &jitter.errors {
        out.push_str(&format!("not measured: {error}\n"));
    }
    out
}

/// Left-aligned columns, two spaces apart, the last column unpadded.
fn table<const N: usize>(rows: Vec<[String; N]>) -> String {
    let mut widths = [0; N];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![
            ["a".to_string(), "long cell".to_string(), "x".to_string()],
            ["longer".to_string(), "b".to_string(), "y".to_string()],
        ];
        assert_eq!(table(rows), "a       long cell  x\nlonger  b          y\n");
    }
}
