//! The gate's reports: a table for the terminal, markdown for a CI job summary or a
//! pull-request comment, JUnit XML (one test case per metric) for CI test tabs, and JSON
//! (schema `trove.gate.report/v1`) for other tools.

use std::fmt::Write as _;

use serde_json::json;

use super::judge::{Judgement, MetricResult, Verdict};

/// The schema name and version of the gate's JSON report.
pub const GATE_REPORT_SCHEMA: &str = "trove.gate.report/v1";

/// What was compared, for the reports' headers.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The baseline, e.g. `ci/baseline.json (5 runs)`.
    pub baseline: String,
    /// The current runs, e.g. `5 runs of trove bench`.
    pub current: String,
    /// Things the reader should know (unlike hosts compared anyway, configs that differ).
    pub warnings: Vec<String>,
}

fn headline(judgement: &Judgement) -> String {
    let regressions: Vec<&str> = judgement
        .regressions()
        .map(|result| result.metric.label())
        .collect();
    if regressions.is_empty() {
        "PASS: no regression".to_string()
    } else {
        format!("REGRESSION: {}", regressions.join(", "))
    }
}

fn value(result: &MetricResult, number: f64) -> String {
    match result.unit {
        "events/s" => format!("{number:.0}"),
        "us" => format!("{number:.1}"),
        _ => format!("{number:.2}"),
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

fn change(result: &MetricResult) -> String {
    result
        .change
        .map(|change| format!("{:+.1}%", change * 100.0))
        .unwrap_or_else(|| "-".to_string())
}

/// The cells of one metric's row: metric, baseline, current, change, limit, noise floor,
/// verdict, decided by.
fn cells(result: &MetricResult) -> [String; 8] {
    [
        format!("{} ({})", result.metric.label(), result.unit),
        value(result, result.baseline_median),
        value(result, result.current_median),
        change(result),
        percent(result.threshold),
        percent(result.noise_floor),
        result.verdict.as_str().to_string(),
        result.rule.describe(),
    ]
}

const COLUMNS: [&str; 8] = [
    "metric",
    "baseline",
    "current",
    "change",
    "limit",
    "noise floor",
    "verdict",
    "decided by",
];

/// The terminal table, aligned, with the headline and warnings.
pub fn terminal(judgement: &Judgement, context: &Context) -> String {
    let rows: Vec<[String; 8]> = judgement.results.iter().map(cells).collect();
    let mut widths = COLUMNS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = format!(
        "trove gate: {}\nbaseline: {}\ncurrent:  {}\n\n",
        headline(judgement),
        context.baseline,
        context.current
    );
    let header = COLUMNS.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Numbers are right-aligned; names and words left-aligned.
            if (1..=5).contains(&index) {
                let _ = write!(line, "{cell:>width$}  ");
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    for warning in &context.warnings {
        let _ = writeln!(text, "warning: {warning}");
    }
    text
}

/// Markdown for a CI job summary or a pull-request comment.
pub fn markdown(judgement: &Judgement, context: &Context) -> String {
    let mut text = format!("### trove gate: {}\n\n", headline(judgement));
    let _ = writeln!(text, "- baseline: {}", escape_markdown(&context.baseline));
    let _ = writeln!(text, "- current: {}", escape_markdown(&context.current));
    if judgement.normalized {
        text.push_str("- latency is in multiples of the loopback round trip's p50\n");
    }
    text.push('\n');
    let _ = writeln!(
        text,
        "| Metric | Baseline | Current | Change | Limit | Noise floor | Verdict | Decided by |"
    );
    text.push_str("|---|---:|---:|---:|---:|---:|---|---|\n");
    for result in &judgement.results {
        let mut row = cells(result).map(|cell| escape_markdown(&cell));
        if result.verdict == Verdict::Regression {
            row[0] = format!("**{}**", row[0]);
            row[6] = "**regression**".to_string();
        }
        let _ = writeln!(text, "| {} |", row.join(" | "));
    }
    if !context.warnings.is_empty() {
        text.push('\n');
        for warning in &context.warnings {
            let _ = writeln!(text, "> warning: {}", escape_markdown(warning));
        }
    }
    text
}

fn escape_markdown(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// JUnit XML: one test suite, one test case per metric; a regression is a failure, a metric
/// not judged is skipped.
pub fn junit(judgement: &Judgement, context: &Context) -> String {
    let tests = judgement.results.len();
    let failures = judgement.regressions().count();
    let skipped = judgement
        .results
        .iter()
        .filter(|result| result.verdict == Verdict::Skipped)
        .count();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"trove gate\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">"
    );
    let _ = writeln!(
        xml,
        "  <testsuite name=\"trove gate\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"0\">"
    );
    let _ = writeln!(
        xml,
        "    <properties>\n      <property name=\"baseline\" value=\"{}\"/>\n      <property name=\"current\" value=\"{}\"/>\n    </properties>",
        escape_xml(&context.baseline),
        escape_xml(&context.current)
    );
    for result in &judgement.results {
        let [name, baseline, current, change, limit, noise, _, rule] = cells(result);
        let summary = format!(
            "{name}: baseline {baseline}, current {current}, change {change}, limit {limit}, noise floor {noise}; {rule}"
        );
        let _ = write!(
            xml,
            "    <testcase classname=\"trove.gate\" name=\"{}\" time=\"0\"",
            escape_xml(result.metric.key())
        );
        match result.verdict {
            Verdict::Pass => {
                let _ = writeln!(
                    xml,
                    ">\n      <system-out>{}</system-out>\n    </testcase>",
                    escape_xml(&summary)
                );
            }
            Verdict::Regression => {
                let _ = writeln!(
                    xml,
                    ">\n      <failure type=\"regression\" message=\"{} regressed {change} (limit {limit})\">{}</failure>\n    </testcase>",
                    escape_xml(result.metric.label()),
                    escape_xml(&summary)
                );
            }
            Verdict::Skipped => {
                let _ = writeln!(
                    xml,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape_xml(&rule)
                );
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn escape_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The JSON report.
pub fn json(judgement: &Judgement, context: &Context, exit_code: i32) -> serde_json::Value {
    let metrics: Vec<serde_json::Value> = judgement
        .results
        .iter()
        .map(|result| {
            json!({
                "metric": result.metric.key(),
                "label": result.metric.label(),
                "unit": result.unit,
                "baseline_median": result.baseline_median,
                "current_median": result.current_median,
                "change": result.change,
                "threshold": result.threshold,
                "noise_floor": result.noise_floor,
                "mann_whitney_p": result.p_value,
                "verdict": result.verdict.as_str(),
                "rule": result.rule.key(),
                "decided_by": result.rule.describe(),
                "baseline_values": result.baseline_values,
                "current_values": result.current_values,
            })
        })
        .collect();
    json!({
        "schema": GATE_REPORT_SCHEMA,
        "verdict": if judgement.passed() { "pass" } else { "regression" },
        "exit_code": exit_code,
        "baseline": context.baseline,
        "current": context.current,
        "normalized_by_loopback": judgement.normalized,
        "warnings": context.warnings,
        "metrics": metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::super::judge::{Metric, judge_metric};
    use super::*;

    fn judgement() -> Judgement {
        let baseline = vec![100.0, 101.0, 99.0, 100.5, 99.5];
        let regressed: Vec<f64> = baseline.iter().map(|v| v * 1.3).collect();
        let mut skipped = judge_metric(Metric::Max, vec![0.0], vec![5.0], 0.5);
        skipped.unit = "us";
        Judgement {
            results: vec![
                judge_metric(Metric::P50, baseline.clone(), baseline.clone(), 0.1),
                judge_metric(Metric::P99, baseline, regressed, 0.1),
                skipped,
            ],
            normalized: false,
        }
    }

    fn context() -> Context {
        Context {
            baseline: "ci/baseline.json (5 runs) <&>".to_string(),
            current: "5 runs".to_string(),
            warnings: vec!["configs differ".to_string()],
        }
    }

    #[test]
    fn the_markdown_names_the_regression() {
        let text = markdown(&judgement(), &context());
        assert!(
            text.starts_with("### trove gate: REGRESSION: p99 latency"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|line| line.contains("p99 latency (us)"))
            .unwrap();
        assert!(
            row.contains("**regression**") && row.contains("+30.0%"),
            "{row}"
        );
        assert!(row.contains("Mann-Whitney U confirms"), "{row}");
        assert!(text.contains("> warning: configs differ"));
    }

    #[test]
    fn the_junit_is_well_formed_with_one_case_per_metric() {
        let xml = junit(&judgement(), &context());
        let document = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let cases: Vec<_> = document
            .descendants()
            .filter(|node| node.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 3);
        let failed: Vec<&str> = cases
            .iter()
            .filter(|case| case.children().any(|child| child.has_tag_name("failure")))
            .map(|case| case.attribute("name").unwrap())
            .collect();
        assert_eq!(failed, ["p99"]);
        let suite = document
            .descendants()
            .find(|node| node.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("failures"), Some("1"));
        assert_eq!(suite.attribute("skipped"), Some("1"));
        let property = document
            .descendants()
            .find(|node| node.attribute("name") == Some("baseline"))
            .unwrap();
        assert_eq!(
            property.attribute("value"),
            Some("ci/baseline.json (5 runs) <&>")
        );
    }

    #[test]
    fn the_terminal_table_has_a_row_per_metric_and_the_headline() {
        let text = terminal(&judgement(), &context());
        assert!(text.starts_with("trove gate: REGRESSION"), "{text}");
        assert!(
            text.lines()
                .any(|line| line.starts_with("p99 latency (us)") && line.contains("regression"))
        );
        assert!(
            text.lines()
                .any(|line| line.starts_with("max latency (us)") && line.contains("skipped"))
        );
        assert!(text.contains("warning: configs differ"));
    }

    #[test]
    fn the_json_report_carries_every_metric_and_the_verdict() {
        let value = json(&judgement(), &context(), 1);
        assert_eq!(value["schema"], GATE_REPORT_SCHEMA);
        assert_eq!(value["verdict"], "regression");
        assert_eq!(value["exit_code"], 1);
        let metrics = value["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 3);
        assert_eq!(metrics[1]["metric"], "p99");
        assert_eq!(metrics[1]["rule"], "confirmed_by_mann_whitney");
        assert_eq!(metrics[1]["current_values"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn xml_escaping_covers_markup_and_control_characters() {
        assert_eq!(
            escape_xml("a<b>&\"c'\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos; "
        );
    }
}
