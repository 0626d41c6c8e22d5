//! Scaffolding the integration tests in `linux-tests/` share: the `trove` binary, commands run
//! to their end within a bound, `trove node` as a child process, bounded waits, free ports,
//! scratch directories, skips for services a host may lack, and the few client helpers several
//! files use; [`cluster`] has what the cluster tests share (etcd, cluster nodes, placements),
//! [`pki`] the certificates of the TLS tests, [`hunts`] a hunt world and its model for
//! oracle tests.
//!
//! Every wait here is bounded: a child that outlives its bound is killed and the test fails
//! naming it, so a hung node or command fails one test instead of hanging `cargo test`. A
//! child's output goes to files, never pipes: a grandchild that keeps a pipe open (a
//! redis-server a bench started) cannot hold a wait, and nothing blocks on a full pipe.
//!
//! Included by each test file (`#[path = "support/mod.rs"] mod support;`): each test crate
//! compiles its own copy, on the test's threads, and uses only part of it. Its own tests are
//! in `linux-tests/support/tests.rs`.

#![allow(dead_code)] // each test crate uses only part of this module

pub mod cluster;
pub mod hunts;
pub mod pki;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use trove::client::{self, ClientConfig, ClientError, Incoming};
use trove::core::ids::{HuntId, PlayerId};
use trove::core::message::{Event, EventKind, HuntSpec};
use trove::host::affinity::allowed_cpus;
use trove::node::{Node, NodeConfig};

/// How long a command that ends on its own (a usage error, a check, a report) may run.
pub const COMMAND_WAIT: Duration = Duration::from_secs(60);
/// How long `trove node` may take to print its banner (and its metrics address, if asked).
pub const NODE_START_WAIT: Duration = Duration::from_secs(30);
/// How long `trove node` may take to stop after SIGTERM: its shutdown grace
/// (`SHUTDOWN_GRACE_MS_MAX`, 5 s) and room for a loaded host.
pub const NODE_STOP_WAIT: Duration = Duration::from_secs(20);
/// How long a killed child may take to be reaped before the test gives up on it.
const REAP_WAIT: Duration = Duration::from_secs(10);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// How often a wait for a child's exit looks again (exits are waited for often, and briefly).
const EXIT_POLL: Duration = Duration::from_millis(10);
/// How much of a child's stderr a failing test prints.
const STDERR_TAIL_BYTES_MAX: usize = 8 * 1024;

// ---- the binary ----------------------------------------------------------------------------

/// The `trove` binary of this build (release under `cargo test --release`).
pub fn trove_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trove"))
}

/// A command that runs the `trove` binary of this build.
pub fn trove() -> Command {
    Command::new(trove_binary())
}

/// A file of the repository, by its path from the top.
pub fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

// ---- scratch space -------------------------------------------------------------------------

/// Tells apart the directories of one test process.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn unique_name(name: &str) -> String {
    let index = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    format!("trove-test-{name}-{}-{index}", std::process::id())
}

fn fresh(dir: PathBuf) -> PathBuf {
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    dir
}

/// A new, empty directory in the temporary directory, named after `name`; the test removes it.
pub fn scratch_dir(name: &str) -> PathBuf {
    fresh(std::env::temp_dir().join(unique_name(name)))
}

/// As [`scratch_dir`], on the disk the build is on (never tmpfs): for syncs that must be real.
pub fn disk_scratch_dir(name: &str) -> PathBuf {
    fresh(Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_name(name)))
}

// ---- child processes -----------------------------------------------------------------------

/// A child process whose stdin, stdout and stderr are files of its own, killed (and its files
/// removed) when dropped. Every wait on it is bounded.
pub struct Spawned {
    child: Child,
    /// The command as `Debug` shows it, for messages.
    command: String,
    dir: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Spawned {
    /// Starts `command` with nothing on its stdin.
    pub fn start(command: &mut Command) -> Spawned {
        Spawned::start_with_input(command, b"")
    }

    /// Starts `command` with `input` on its stdin.
    pub fn start_with_input(command: &mut Command, input: &[u8]) -> Spawned {
        let dir = scratch_dir("output");
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::File::create(&path)
                .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()))
        };
        std::fs::write(dir.join("stdin"), input).unwrap();
        let stdin = std::fs::File::open(dir.join("stdin")).unwrap();
        let description = format!("{command:?}");
        let child = command
            .stdin(stdin)
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .unwrap_or_else(|error| panic!("{description} does not start: {error}"));
        Spawned {
            child,
            command: description,
            dir,
            reaped: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM...) to the child, unless it has been reaped.
    pub fn signal(&self, signal: i32) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped (so not reused).
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// What the child has written to stdout so far.
    pub fn stdout(&self) -> String {
        self.read("stdout")
    }

    /// What the child has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.read("stderr")
    }

    fn read(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join(name)).unwrap_or_default())
            .into_owned()
    }

    /// The exit status, if the child has exited. (Never panics: `Drop` asks it while a failed
    /// test unwinds, where a second panic would abort every test of the process.)
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().unwrap_or(None);
        }
        self.reaped
    }

    /// Waits at most `limit` for the child to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// SIGKILL, and reaps the child if it dies within a bound.
    pub fn kill(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = self.child.kill();
        if self.wait_exit(REAP_WAIT).is_none() {
            eprintln!(
                "{} (pid {}) survived SIGKILL for {REAP_WAIT:?}; left behind",
                self.command,
                self.pid()
            );
        }
    }

    /// Waits for the child to end, at most `limit`; past it, kills the child and panics naming
    /// the command and what it printed.
    pub fn finish(mut self, limit: Duration) -> Output {
        match self.wait_exit(limit) {
            Some(status) => Output {
                status,
                stdout: std::fs::read(self.dir.join("stdout")).unwrap_or_default(),
                stderr: std::fs::read(self.dir.join("stderr")).unwrap_or_default(),
            },
            None => {
                self.kill();
                panic!(
                    "{} was still running after {limit:?}; killed. It printed:\n{}{}",
                    self.command,
                    self.stdout(),
                    self.stderr()
                );
            }
        }
    }

    /// The last bytes of stderr, for a failing test.
    fn stderr_tail(&self) -> String {
        let text = self.stderr();
        let mut start = text.len().saturating_sub(STDERR_TAIL_BYTES_MAX);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let running = self.exited().is_none();
        if running && std::thread::panicking() {
            // The test failed while the child ran: what it said may be why.
            eprintln!(
                "{} (pid {}) was running when the test failed; its stderr ends:\n{}",
                self.command,
                self.pid(),
                self.stderr_tail()
            );
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` to its end, with nothing on its stdin; past `limit` kills it and panics
/// naming it.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    Spawned::start(command).finish(limit)
}

/// As [`run_bounded`], with `input` on the command's stdin.
pub fn run_bounded_with_input(command: &mut Command, input: &[u8], limit: Duration) -> Output {
    Spawned::start_with_input(command, input).finish(limit)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The lines of `printed` that are whole (a child may be caught halfway through one).
pub fn whole_lines(printed: &str) -> std::str::Lines<'_> {
    printed[..printed.rfind('\n').map_or(0, |end| end + 1)].lines()
}

/// Stdout then stderr, as one text.
pub fn text(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

// ---- bounded waits -------------------------------------------------------------------------

/// Tries `attempt` until it gives a value, every 50 ms, for at most `limit`; past it, panics
/// naming `what` and what the last attempt saw (its `Err`).
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let last = match attempt() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last seen: {last}"
        );
        std::thread::sleep(POLL);
    }
}

/// The tests of a file that take this lock run one at a time (each starts nodes or load that
/// would compete for the same CPUs, or measures what others would move).
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- ports and services --------------------------------------------------------------------

/// A loopback port nobody listens on right now (another process could take it after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Where `program` is on PATH; `None` after saying, once, that the test skips and how to
/// install what it needs. Services (redis-server, prometheus, etcd) are started by the tests
/// themselves; this only says whether they can be.
pub fn installed(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let package = match program {
            "promtool" => "prometheus",
            "etcd" => "etcd-server",
            other => other,
        };
        let test = std::thread::current()
            .name()
            .filter(|name| *name != "main")
            .map_or(String::new(), |name| format!("{name}: "));
        eprintln!(
            "{test}SKIPPED: `{program}` is not on PATH; `apt-get install {package}` runs this test"
        );
    }
    found
}

// ---- trove node as a child process ---------------------------------------------------------

/// A `trove node` child process with its ports read from what it printed; killed when dropped.
pub struct ChildNode {
    process: Spawned,
    /// Its first line: "trove node listening on ADDR… with N shards…".
    pub banner: String,
    /// The address clients connect to.
    pub addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl ChildNode {
    /// `trove node ARGS`, with `--metrics-listen off` unless ARGS say otherwise; waits (at
    /// most [`NODE_START_WAIT`]) for its banner and, if it serves metrics, their address.
    pub fn start(args: &[&str]) -> ChildNode {
        let mut command = trove();
        command.arg("node");
        if !args.contains(&"--metrics-listen") {
            command.args(["--metrics-listen", "off"]);
        }
        let mut process = Spawned::start(command.args(args));
        let serves_metrics = args
            .windows(2)
            .any(|pair| pair[0] == "--metrics-listen" && pair[1] != "off");
        let (banner, addr, metrics) = wait_until("trove node's banner", NODE_START_WAIT, || {
            let printed = process.stdout();
            if let Some(found) = parse_banner(&printed, serves_metrics) {
                return Ok(found);
            }
            if let Some(status) = process.exited() {
                panic!(
                    "trove node {args:?} exited with {status} before its banner; it printed:\n{printed}{}",
                    process.stderr()
                );
            }
            Err(format!("stdout {printed:?}, stderr {:?}", process.stderr()))
        });
        ChildNode {
            process,
            banner,
            addr,
            metrics,
        }
    }

    /// The `/metrics` address; the node must have been started with `--metrics-listen`.
    pub fn metrics(&self) -> SocketAddr {
        self.metrics
            .expect("this node was started with --metrics-listen off")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// SIGTERM, then everything the node printed after its banner (its stop report). Panics if
    /// it does not stop within [`NODE_STOP_WAIT`] (then it is killed) or stops with a failure.
    pub fn stop(self) -> String {
        self.stop_within(NODE_STOP_WAIT)
    }

    /// As [`Self::stop`], with its own bound.
    pub fn stop_within(mut self, limit: Duration) -> String {
        self.process.signal(libc::SIGTERM);
        let Some(status) = self.process.wait_exit(limit) else {
            self.process.kill();
            panic!(
                "trove node (pid {}) did not stop within {limit:?} of SIGTERM; killed. stderr:\n{}",
                self.pid(),
                self.process.stderr_tail()
            );
        };
        let printed = self.process.stdout();
        assert!(
            status.success(),
            "trove node exited with {status}: {printed}{}",
            self.process.stderr_tail()
        );
        printed
            .lines()
            .skip_while(|line| !line.starts_with(BANNER))
            .skip(1)
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

const BANNER: &str = "trove node listening on ";
const METRICS_LINE: &str = "trove node: metrics at http://";

/// The banner, the address in it and the metrics address, once `printed` holds them all.
fn parse_banner(
    printed: &str,
    serves_metrics: bool,
) -> Option<(String, SocketAddr, Option<SocketAddr>)> {
    let banner = whole_lines(printed).find(|line| line.starts_with(BANNER))?;
    let addr = banner[BANNER.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let metrics = if serves_metrics {
        let line = whole_lines(printed).find(|line| line.starts_with(METRICS_LINE))?;
        Some(line[METRICS_LINE.len()..].split('/').next()?.parse().ok()?)
    } else {
        None
    };
    Some((banner.to_owned(), addr, metrics))
}

// ---- a node's /metrics ---------------------------------------------------------------------

/// One scrape of the `/metrics` at `metrics`, read with a Prometheus text-format parser.
pub fn scrape_metrics(metrics: SocketAddr) -> prometheus_parse::Scrape {
    let body = trove::metrics::scrape::fetch(metrics).unwrap_or_else(|error| panic!("{error}"));
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned())))
        .expect("the exposition parses as Prometheus text")
}

/// The sum of the samples of `name` (a counter or a gauge) whose labels include every pair of
/// `labels`, over every shard of the scrape.
pub fn metric_sum(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(label, value)| sample.labels.get(label) == Some(*value))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is a histogram: {sample:?}"),
        })
        .sum()
}

// ---- in-process nodes and clients ----------------------------------------------------------

/// A node in this process on loopback, its `shards` on the CPUs this process may use (in
/// turn), configured further by `edit`.
pub fn in_process_node(shards: usize, edit: impl FnOnce(&mut NodeConfig)) -> Node {
    let cpus = allowed_cpus().into_iter().cycle().take(shards).collect();
    let mut config = NodeConfig::loopback(cpus);
    edit(&mut config);
    Node::start(&config).expect("the node starts")
}

/// A hunt of its own for each `seq`, created by player 1.
pub fn create_hunt(seq: u64) -> Event {
    Event {
        hunt: HuntId(seq),
        player: PlayerId(1),
        client_session: 0,
        client_seq: seq,
        client_ts: 0,
        kind: EventKind::CreateHunt(HuntSpec::default()),
    }
}

/// Sends `count` events and waits (10 s at most for each frame of replies) for as many
/// replies. An error is why they were not all answered: the client's error, or the reason a
/// connection was closed with (as a TLS connection refused is).
pub fn round_trip(config: &ClientConfig, count: u64) -> Result<(), String> {
    let text = |error: ClientError| error.to_string();
    let (mut sender, mut receiver) = client::connect(config).map_err(text)?;
    for seq in 0..count {
        sender.send(&create_hunt(seq)).map_err(text)?;
    }
    sender.flush().map_err(text)?;
    let mut answered = 0;
    while answered < count {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Incoming::Replies(frame)) => answered += frame.replies().count() as u64,
            Ok(Incoming::Closed {
                error: Some(error), ..
            }) => return Err(error),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }
    sender.finish().map_err(text)
}
