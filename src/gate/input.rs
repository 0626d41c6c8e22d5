//! The gate's inputs: baseline files and bench summaries, read with errors that name the file
//! and the problem.
//!
//! A baseline file (schema `trove.gate.baseline/v1`) keeps every run it was made from, so the
//! baseline's own run-to-run spread is known. A single `trove bench` summary
//! (`trove.bench.summary/v2`, or v1 from older builds) is accepted wherever a baseline or a
//! current run is.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bench::report::summary::{GIT_REVISION, SUMMARY_SCHEMA, SUMMARY_SCHEMA_V1, Summary};
use crate::constants::{GATE_INPUT_FILE_BYTES_MAX, GATE_RUNS_PER_SIDE_MAX};

/// The schema name and version of a baseline file.
pub const BASELINE_SCHEMA: &str = "trove.gate.baseline/v1";

/// A baseline file: the runs a baseline was made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineFile {
    /// Always [`BASELINE_SCHEMA`].
    pub schema: String,
    /// When `--update-baseline` wrote it, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The git revision of the trove that wrote it.
    pub written_by_revision: String,
    /// Every run, each a full bench summary.
    pub runs: Vec<serde_json::Value>,
}

/// The runs of one side of a comparison, with the files they came from.
#[derive(Clone, Debug)]
pub struct RunSet {
    pub sources: Vec<PathBuf>,
    pub runs: Vec<Summary>,
    /// Where each run came from (`file` or `file run N`), parallel to `runs`.
    pub origins: Vec<String>,
}

/// An input problem: which file, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    pub message: String,
}

impl InputError {
    fn in_file(role: &str, path: &Path, problem: impl std::fmt::Display) -> InputError {
        InputError {
            message: format!("{role} file {}: {problem}", path.display()),
        }
    }
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads the runs of one file: a baseline file or a single summary. `role` ("baseline",
/// "current") names the file in errors.
pub fn read_runs(role: &str, path: &Path) -> Result<Vec<Summary>, InputError> {
    let text = read_bounded(path).map_err(|problem| InputError::in_file(role, path, problem))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| InputError::in_file(role, path, format!("is not JSON ({error})")))?;
    runs_of_value(value).map_err(|problem| InputError::in_file(role, path, problem))
}

/// Reads and joins the runs of several files.
pub fn read_run_set(role: &str, paths: &[PathBuf]) -> Result<RunSet, InputError> {
    let mut runs = Vec::new();
    let mut origins = Vec::new();
    for path in paths {
        let file_runs = read_runs(role, path)?;
        let count = file_runs.len();
        origins.extend((1..=count).map(|index| match count {
            1 => path.display().to_string(),
            _ => format!("{} run {index}", path.display()),
        }));
        runs.extend(file_runs);
        if runs.len() > GATE_RUNS_PER_SIDE_MAX {
            return Err(InputError {
                message: format!(
                    "the {role} files hold more than {GATE_RUNS_PER_SIDE_MAX} runs; judge fewer"
                ),
            });
        }
    }
    Ok(RunSet {
        sources: paths.to_vec(),
        runs,
        origins,
    })
}

/// The runs of a parsed document, or what is wrong with it.
pub fn runs_of_value(value: serde_json::Value) -> Result<Vec<Summary>, String> {
    let schema = value.get("schema").and_then(|schema| schema.as_str());
    match schema {
        Some(BASELINE_SCHEMA) => {
            let baseline: BaselineFile = serde_json::from_value(value)
                .map_err(|error| format!("is not a valid baseline ({error})"))?;
            if baseline.runs.is_empty() {
                return Err(
                    "is a baseline with no runs; write it again with --update-baseline".into(),
                );
            }
            if baseline.runs.len() > GATE_RUNS_PER_SIDE_MAX {
                return Err(format!(
                    "holds {} runs, more than the {GATE_RUNS_PER_SIDE_MAX} the gate reads",
                    baseline.runs.len()
                ));
            }
            baseline
                .runs
                .into_iter()
                .enumerate()
                .map(|(index, run)| {
                    Summary::from_value(run)
                        .map_err(|problem| format!("run {}: {problem}", index + 1))
                })
                .collect()
        }
        Some(SUMMARY_SCHEMA | SUMMARY_SCHEMA_V1) => Ok(vec![Summary::from_value(value)?]),
        Some(other) => Err(format!(
            "has schema \"{other}\"; expected \"{BASELINE_SCHEMA}\" (a baseline) or \"{SUMMARY_SCHEMA}\" or \"{SUMMARY_SCHEMA_V1}\" (a bench summary)"
        )),
        None => Err(format!(
            "has no \"schema\" field; expected a baseline (\"{BASELINE_SCHEMA}\") or a bench summary (\"{SUMMARY_SCHEMA}\")"
        )),
    }
}

/// The file's text, refusing files larger than [`GATE_INPUT_FILE_BYTES_MAX`].
fn read_bounded(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|error| format!("cannot be opened ({error})"))?;
    let mut text = String::new();
    file.take(GATE_INPUT_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|error| format!("cannot be read as UTF-8 text ({error})"))?;
    if text.len() as u64 > GATE_INPUT_FILE_BYTES_MAX {
        return Err(format!(
            "is larger than {GATE_INPUT_FILE_BYTES_MAX} bytes; is it really a baseline or summary?"
        ));
    }
    Ok(text)
}

/// A baseline file holding `runs`.
pub fn baseline_of(runs: &[Summary], created_unix_ms: u64) -> Result<BaselineFile, String> {
    let runs = runs
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("a run cannot be written as JSON ({error})"))?;
    Ok(BaselineFile {
        schema: BASELINE_SCHEMA.to_string(),
        created_unix_ms,
        written_by_revision: GIT_REVISION.to_string(),
        runs,
    })
}

/// Writes a baseline of `runs` to `path`, through a temporary file so a failed write leaves
/// the old baseline in place.
pub fn write_baseline(path: &Path, runs: &[Summary], created_unix_ms: u64) -> Result<(), String> {
    let baseline = baseline_of(runs, created_unix_ms)?;
    let mut text = serde_json::to_string_pretty(&baseline).map_err(|error| error.to_string())?;
    text.push('\n');
    let temporary = path.with_extension("json.tmp");
    fs::write(&temporary, text)
        .and_then(|()| fs::rename(&temporary, path))
        .map_err(|error| {
            format!(
                "baseline file {}: cannot be written ({error})",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::fixtures::{simple_report, temp_dir};

    fn summary() -> Summary {
        Summary::of_report(&simple_report())
    }

    #[test]
    fn a_single_summary_is_one_run() {
        let value = serde_json::to_value(summary()).unwrap();
        assert_eq!(runs_of_value(value).unwrap().len(), 1);
    }

    #[test]
    fn a_version_1_summary_is_still_a_run() {
        let mut value = serde_json::to_value(summary()).unwrap();
        value["schema"] = SUMMARY_SCHEMA_V1.into();
        value.as_object_mut().unwrap().remove("node");
        let runs = runs_of_value(value).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].main, summary().main);
    }

    #[test]
    fn a_baseline_written_is_read_back_with_every_run() {
        let dir = temp_dir("baseline");
        let path = dir.join("baseline.json");
        let runs = vec![summary(), summary(), summary()];
        write_baseline(&path, &runs, 1_790_000_000_000).unwrap();
        let read = read_runs("baseline", &path).unwrap();
        assert_eq!(read, runs);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn problems_name_the_file_and_what_is_wrong() {
        let dir = temp_dir("bad-inputs");
        let missing = dir.join("missing.json");
        let error = read_runs("baseline", &missing).unwrap_err().message;
        assert!(
            error.contains("missing.json") && error.contains("cannot be opened"),
            "{error}"
        );

        let garbage = dir.join("garbage.json");
        fs::write(&garbage, "{ not json").unwrap();
        let error = read_runs("baseline", &garbage).unwrap_err().message;
        assert!(
            error.contains("garbage.json") && error.contains("is not JSON"),
            "{error}"
        );

        let other = dir.join("other.json");
        fs::write(&other, r#"{"schema": "something/v1"}"#).unwrap();
        let error = read_runs("current", &other).unwrap_err().message;
        assert!(
            error.starts_with("current file") && error.contains("something/v1"),
            "{error}"
        );

        let empty = dir.join("empty.json");
        fs::write(
            &empty,
            r#"{"schema": "trove.gate.baseline/v1", "created_unix_ms": 0, "written_by_revision": "x", "runs": []}"#,
        )
        .unwrap();
        let error = read_runs("baseline", &empty).unwrap_err().message;
        assert!(error.contains("no runs"), "{error}");

        let mut broken_run = serde_json::to_value(summary()).unwrap();
        broken_run["main"]["latency_us"] = serde_json::json!("fast");
        let baseline = serde_json::json!({
            "schema": BASELINE_SCHEMA, "created_unix_ms": 0, "written_by_revision": "x",
            "runs": [serde_json::to_value(summary()).unwrap(), broken_run],
        });
        let broken = dir.join("broken.json");
        fs::write(&broken, baseline.to_string()).unwrap();
        let error = read_runs("baseline", &broken).unwrap_err().message;
        assert!(
            error.contains("run 2") && error.contains("latency_us"),
            "{error}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
