//! `trove bench --profile`: where the embedded node's time goes during a run, as flame graphs
//! written beside the reports.
//!
//! The bench's own process (the embedded node's shards and the load generator) is sampled by
//! `perf record -g` on the software `cpu-clock` event, which works on virtual machines without
//! a hardware PMU, from the start of the run's warm-up to its end. `perf script` turns the
//! samples into text; the inferno crate folds the stacks and draws two SVGs:
//! - `flamegraph-shards.svg`: the node's shard threads (`trove-shard-N`) alone;
//! - `flamegraph.svg`: every thread of the process, load generator included.
//!
//! The folded stacks (`profile.folded`) and `perf.data` are kept beside them. perf is a child
//! process that the bench's coordinating thread starts and stops; nothing here runs on a shard.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::constants::{PROFILE_PERF_STOP_MS_MAX, PROFILE_SAMPLE_HZ_DEFAULT};

/// The thread-name prefix of a node's shard threads (`runtime::executors`).
const SHARD_THREAD_PREFIX: &str = "trove-shard-";

/// The files a profile leaves in the report folder.
pub const SHARDS_SVG: &str = "flamegraph-shards.svg";
pub const PROCESS_SVG: &str = "flamegraph.svg";
pub const FOLDED: &str = "profile.folded";
pub const PERF_DATA: &str = "perf.data";

/// Says whether this machine can profile, and what to do when it cannot: `perf` must be
/// installed and allowed to sample a process of the same user.
pub fn check_perf() -> Result<(), String> {
    let probe = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-o",
            "/dev/null",
            "-q",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(
            "--profile needs perf, which is not installed (Debian: apt-get install linux-perf; \
             Ubuntu: apt-get install linux-tools-generic); run without --profile, or install it"
                .into(),
        ),
        Err(error) => Err(format!("--profile: cannot run perf: {error}")),
        Ok(output) if !output.status.success() => Err(format!(
            "--profile: perf may not sample here ({}); run as root, or lower \
             kernel.perf_event_paranoid (sysctl -w kernel.perf_event_paranoid=1), and in a \
             container allow perf_event_open",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// A `perf record` of this process, running until [`Recording::finish`].
pub struct Recording {
    perf: Child,
    dir: PathBuf,
}

impl Recording {
    /// Starts sampling this process into `dir/perf.data`; the caller checked [`check_perf`].
    pub fn start(dir: &Path) -> Result<Recording, String> {
        std::fs::create_dir_all(dir)
            .map_err(|error| format!("--profile: cannot create {}: {error}", dir.display()))?;
        let log = std::fs::File::create(dir.join("perf-record.txt"))
            .map_err(|error| format!("--profile: cannot write in {}: {error}", dir.display()))?;
        let perf = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-g", "-q"])
            .args(["-F", &PROFILE_SAMPLE_HZ_DEFAULT.to_string()])
            .args(["-p", &std::process::id().to_string()])
            .arg("-o")
            .arg(dir.join(PERF_DATA))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|error| format!("--profile: cannot start perf record: {error}"))?;
        Ok(Recording {
            perf,
            dir: dir.to_path_buf(),
        })
    }

    /// Stops the recording (as Ctrl-C would, so perf writes its file whole) and draws the
    /// flame graphs; returns the files written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, String> {
        self.stop()?;
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(self.dir.join(PERF_DATA))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|error| format!("--profile: cannot run perf script: {error}"))?;
        if !script.status.success() {
            return Err(format!(
                "--profile: perf script could not read {}",
                self.dir.join(PERF_DATA).display()
            ));
        }
        write_flame_graphs(&script.stdout, &self.dir)
    }

    /// Sends SIGINT and waits at most `PROFILE_PERF_STOP_MS_MAX` for perf to write its data;
    /// kills it after that.
    fn stop(&mut self) -> Result<(), String> {
        // SAFETY: `kill` only sends a signal to the perf child this recording started and
        // still holds (so its id names no other process).
        unsafe {
            libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_millis(PROFILE_PERF_STOP_MS_MAX);
        loop {
            match self.perf.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.perf.kill();
                    let _ = self.perf.wait();
                    return Err(format!(
                        "--profile: perf record did not stop within {PROFILE_PERF_STOP_MS_MAX} ms \
                         of SIGINT; see {}",
                        self.dir.join("perf-record.txt").display()
                    ));
                }
            }
        }
    }
}

impl Drop for Recording {
    /// A recording dropped without `finish` (the run failed) stops perf all the same.
    fn drop(&mut self) {
        if let Ok(None) = self.perf.try_wait() {
            let _ = self.perf.kill();
            let _ = self.perf.wait();
        }
    }
}

/// Folds `perf script` output and draws the shard threads' and the whole process's flame
/// graphs into `dir`; returns the files written.
pub fn write_flame_graphs(perf_script: &[u8], dir: &Path) -> Result<Vec<PathBuf>, String> {
    let folded = fold(perf_script)?;
    let shard_lines: Vec<&str> = folded
        .lines()
        .filter(|line| line.starts_with(SHARD_THREAD_PREFIX))
        .collect();
    if shard_lines.is_empty() {
        return Err(
            "--profile: perf recorded no sample of a shard thread (trove-shard-N); was the run \
             too short, or perf not allowed to follow the process's threads?"
                .into(),
        );
    }
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut file| file.write_all(bytes))
            .map_err(|error| format!("--profile: cannot write {}: {error}", path.display()))?;
        Ok(path)
    };
    let shards = draw("trove node: shard threads", &shard_lines)?;
    let process = draw(
        "trove bench: the whole process (node and load generator)",
        &folded.lines().collect::<Vec<_>>(),
    )?;
    Ok(vec![
        write(SHARDS_SVG, &shards)?,
        write(PROCESS_SVG, &process)?,
        write(FOLDED, folded.as_bytes())?,
        dir.join(PERF_DATA),
    ])
}

/// One line per distinct stack, `thread;caller;...;leaf count`, the thread's name first.
fn fold(perf_script: &[u8]) -> Result<String, String> {
    use inferno::collapse::Collapse;
    let mut options = inferno::collapse::perf::Options::default();
    options.nthreads = 1;
    let mut folder = inferno::collapse::perf::Folder::from(options);
    let mut folded = Vec::new();
    folder
        .collapse(perf_script, &mut folded)
        .map_err(|error| format!("--profile: cannot fold perf's stacks: {error}"))?;
    String::from_utf8(folded).map_err(|_| "--profile: perf's stacks are not UTF-8".into())
}

fn draw(title: &str, folded: &[&str]) -> Result<Vec<u8>, String> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.iter().copied(), &mut svg)
        .map_err(|error| format!("--profile: cannot draw the flame graph: {error}"))?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two samples in `perf script`'s text format: one on a shard thread, one on a load
    /// thread.
    const SCRIPT: &str = "trove-shard-0  4242/4243  100.000000:     1001001 cpu-clock:pppH: \n\
        \t    55d0c0a01000 trove::core::hunt::PartitionState::apply+0x10 (/usr/bin/trove)\n\
        \t    55d0c0a02000 trove::core::shard::ShardCore::handle_frame+0x20 (/usr/bin/trove)\n\
        \n\
        trove-load-0  4242/4250  100.001000:     1001001 cpu-clock:pppH: \n\
        \t    55d0c0a03000 trove::bench::generator::run+0x30 (/usr/bin/trove)\n\
        \n";

    #[test]
    fn shard_threads_get_a_flame_graph_of_their_own() {
        let dir = std::env::temp_dir().join(format!("trove-profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = write_flame_graphs(SCRIPT.as_bytes(), &dir).unwrap();
        assert!(files.contains(&dir.join(SHARDS_SVG)), "{files:?}");
        let shards = std::fs::read_to_string(dir.join(SHARDS_SVG)).unwrap();
        let process = std::fs::read_to_string(dir.join(PROCESS_SVG)).unwrap();
        assert!(shards.starts_with("<?xml") && shards.contains("PartitionState::apply"));
        assert!(
            !shards.contains("generator::run"),
            "the load thread is left out"
        );
        assert!(process.contains("generator::run") && process.contains("PartitionState::apply"));
        let folded = std::fs::read_to_string(dir.join(FOLDED)).unwrap();
        assert!(
            folded
                .lines()
                .any(|line| line.starts_with("trove-shard-0;"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_profile_without_shard_samples_says_so() {
        let load_only = SCRIPT.split("\n\n").nth(1).unwrap();
        let dir = std::env::temp_dir().join(format!("trove-profile-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = write_flame_graphs(load_only.as_bytes(), &dir).unwrap_err();
        assert!(error.contains("no sample of a shard thread"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
