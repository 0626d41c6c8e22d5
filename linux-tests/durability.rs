//! `trove node --data-dir`: what a node answered survives `kill -9` (with snapshots taken and
//! segments truncated in between), a torn tail is cut, damage before the tail is refused (or
//! cut on request), another node's data dir is refused, and under load the data dir stays
//! within `--log-disk-max-mb` while everything answered survives a restart after truncation.
//! On a small loop-mounted ext4 filesystem (root, `mkfs.ext4` and loop devices needed; skipped
//! with a message otherwise), a full disk (a snapshot, the first segment or a later one finding
//! no room) makes the shards answer `DiskFull` and say so once (and `/metrics` count them
//! `outcome="disk_full"`, not `unavailable`), answers waiting for records
//! that could not be written leave once they are, the shards take events again by themselves
//! when space returns, and everything answered survives `kill -9`.
//!
//! The model is the engine's own state machine (`PartitionState`), fed the same events in the
//! same per-hunt order. After each `kill -9` the client, keeping its session, re-sends every
//! event it sent and got no answer for, with its `client_seq`: the node answers `Duplicate`
//! for those it had kept (a crash may keep events it had not answered yet, never lose answered
//! ones) and applies the others; every answer and each hunt's leaderboard must then be the
//! model's after applying every sent event exactly once.
//! Data dirs live under the cargo target's tmp dir, on a real disk (not tmpfs), so O_DIRECT
//! and fdatasync are the real thing.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use trove::client::{self, ClientConfig, Incoming};
use trove::constants::{SNAPSHOT_SPARE_FILES_MAX, WAL_RECORD_HEADER_BYTES};
use trove::core::ids::{HuntId, PlayerId};
use trove::core::message::{
    Event, EventError, EventKind, HuntSpec, Outcome, OutcomeClass, Reply, TreasureSpec,
    WaypointSpec,
};
use trove::store::format::{SegmentHeader, scan_segment};

use support::hunts::{Model, Rng, World, seed_from_env, waypoint_position};
use support::{metric_sum, scrape_metrics, wait_until};

const WORLD: World = World {
    first_hunt: 0,
    hunts: 8,
    players: 8,
    waypoints: 16,
    treasures: 8,
};
const HUNTS: u64 = WORLD.hunts;
const PLAYERS: u64 = WORLD.players;
/// Events in flight on the client's connection.
const WINDOW: usize = 128;
const PARTITIONS: &str = "64";
const WAIT: Duration = Duration::from_secs(20);

fn data_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running node, the lines it printed at start, and what it printed on stderr so far.
struct Node {
    child: Child,
    addr: SocketAddr,
    start_lines: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// The lines the node printed on stderr so far that contain `text`.
    fn stderr_lines(&self, text: &str) -> Vec<String> {
        let lines = self.stderr.lock().unwrap();
        lines
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }

    /// The `/metrics` address it printed at start (started with `--metrics-listen`).
    fn metrics(&self) -> SocketAddr {
        const LINE: &str = "trove node: metrics at http://";
        self.start_lines
            .iter()
            .find_map(|line| line.strip_prefix(LINE)?.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {:?}", self.start_lines))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a two-shard node on `dir`, without `/metrics` unless `extra` has a
/// `--metrics-listen`; `Err` holds its exit code and stderr when it refuses to start.
fn start_node(dir: &Path, extra: &[&str]) -> Result<Node, (Option<i32>, String)> {
    let metrics_off: &[&str] = if extra.contains(&"--metrics-listen") {
        &[]
    } else {
        &["--metrics-listen", "off"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_trove"))
        .args([
            "node",
            "--port",
            "0",
            "--shards",
            "2",
            "--partitions",
            PARTITIONS,
        ])
        .args(metrics_off)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let stderr_lines = stderr.clone();
    let stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            stderr_lines.lock().unwrap().push(line);
        }
    });
    let (lines_in, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_in.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut start_lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("worst-case memory");
                start_lines.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                // The pipe closes with the node: the reader ends.
                stderr_reader.join().unwrap();
                let stderr = stderr.lock().unwrap().join("\n");
                return Err((status.code(), stderr));
            }
        }
    }
    let addr = start_lines[0]
        .split_whitespace()
        .find(|word| word.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {start_lines:?}"))
        .parse()
        .unwrap();
    Ok(Node {
        child,
        addr,
        start_lines,
        stderr,
    })
}

/// Runs `trove node` on `dir` expecting it to refuse to start; returns its exit code and stderr.
fn refused(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    match start_node(dir, extra) {
        Ok(node) => panic!("the node started: {:?}", node.start_lines),
        Err(refusal) => refusal,
    }
}

/// What the node's recovery line says: "recovered P partitions from S snapshots and E events
/// replayed in T s" gives (S, E).
fn recovery(node: &Node) -> (u64, u64) {
    let line = node
        .start_lines
        .iter()
        .find(|line| line.contains("recovered "))
        .unwrap_or_else(|| panic!("no recovery line in {:?}", node.start_lines));
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no `{word}` in `{line}`"));
        words[at - 1]
            .parse()
            .unwrap_or_else(|_| panic!("no count before `{word}` in `{line}`"))
    };
    (number_before("snapshots"), number_before("events"))
}

fn recovered_events(node: &Node) -> u64 {
    recovery(node).1
}

/// Snapshot flags that make a round start after every MiB of log (or second).
const SNAPSHOT_OFTEN: [&str; 4] = ["--snapshot-every-mb", "1", "--snapshot-every-s", "1"];

/// Sends `events` over one connection with `WINDOW` in flight and returns each reply by
/// `client_seq`; with `kill_after`, the node is SIGKILLed that long after the first send and
/// the replies received until then are returned. A client of its own (a new session).
fn drive(node: &mut Node, events: &[Event], kill_after: Option<Duration>) -> HashMap<u64, Reply> {
    drive_as(node, events, kill_after, client::new_session()).0
}

/// [`drive`] as client session `session` (`ClientConfig::session`, which the client writes
/// into every event): returns the replies and how many of `events` were sent, in order.
fn drive_as(
    node: &mut Node,
    events: &[Event],
    kill_after: Option<Duration>,
    session: u64,
) -> (HashMap<u64, Reply>, usize) {
    let mut config = ClientConfig::new(node.addr);
    config.session = session;
    config.shard_aware = false;
    config.stall_timeout = Some(Duration::from_secs(5));
    let (mut sender, mut receiver) = client::connect(&config).unwrap();
    let started = Instant::now();
    let mut replies = HashMap::new();
    let mut next = 0;
    let mut killed = false;
    loop {
        if let Some(after) = kill_after {
            if !killed && started.elapsed() >= after {
                node.child.kill().unwrap();
                let _ = node.child.wait();
                killed = true;
            }
        }
        if !killed {
            let mut sent_any = false;
            while next < events.len() && next - replies.len() < WINDOW {
                if sender.send(&events[next]).is_err() {
                    break;
                }
                next += 1;
                sent_any = true;
            }
            if sent_any && sender.flush().is_err() && kill_after.is_none() {
                panic!("the node stopped reading");
            }
        }
        if replies.len() == events.len() {
            if kill_after.is_some() && !killed {
                // Everything answered before the moment came: kill now all the same.
                node.child.kill().unwrap();
                let _ = node.child.wait();
            }
            return (replies, next);
        }
        match receiver.recv_timeout(Duration::from_millis(50)) {
            Ok(Incoming::Replies(frame)) => {
                for reply in frame.replies() {
                    let reply = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap();
                    replies.insert(reply.client_seq, reply);
                }
            }
            Ok(Incoming::Closed { .. }) if killed => return (replies, next),
            Ok(Incoming::Closed { error, .. }) => {
                panic!("the node closed the connection: {error:?}")
            }
            Ok(Incoming::NodeError { message, .. }) => panic!("the node sent an error: {message}"),
            Err(_) if killed => return (replies, next),
            Err(_) => assert!(started.elapsed() < WAIT, "no replies for {WAIT:?}"),
        }
    }
}

/// Creates the hunts and joins the players, and checks every answer.
fn set_up(node: &mut Node, model: &mut Model, seq: &mut u64) {
    let events = WORLD.set_up_events(seq);
    let replies = drive(node, &events, None);
    for event in &events {
        assert_eq!(replies[&event.client_seq].outcome, model.apply(event));
    }
}

fn load(rng: &mut Rng, seq: &mut u64, count: usize) -> Vec<Event> {
    WORLD.load(rng, seq, count)
}

/// Every hunt's leaderboard query (numbered on from `seq`), and the node's answers to them.
fn leaderboards(node: &mut Node, seq: &mut u64) -> (Vec<Event>, HashMap<u64, Reply>) {
    let queries = WORLD.leaderboard_queries(seq);
    let answers = drive(node, &queries, None);
    (queries, answers)
}

/// The events of `hunt` among `sent`, in order, and how many of them were answered: replies
/// keep each hunt's order, so the answered ones are a prefix (asserted).
fn events_of_hunt<'a>(
    hunt: u64,
    sent: &'a [Event],
    acked: &HashMap<u64, Reply>,
) -> (Vec<&'a Event>, usize) {
    let events: Vec<&Event> = sent.iter().filter(|e| e.hunt.0 == hunt).collect();
    let acked_count = events
        .iter()
        .take_while(|event| acked.contains_key(&event.client_seq))
        .count();
    assert!(
        events[acked_count..]
            .iter()
            .all(|event| !acked.contains_key(&event.client_seq)),
        "hunt {hunt}: replies came out of order"
    );
    (events, acked_count)
}

/// After a restart: for each hunt, finds how many of the round's events after the acknowledged
/// ones the node kept, checking every acknowledged answer against the model on the way and the
/// node's leaderboard against the model's; moves `model` to the node's state.
fn reconcile(
    node: &mut Node,
    model: &mut Model,
    round: &[Event],
    acked: &HashMap<u64, Reply>,
    seq: &mut u64,
) -> usize {
    let mut kept_unacked = 0;
    let (queries, answers) = leaderboards(node, seq);
    for (hunt, query) in (0..HUNTS).zip(&queries) {
        let (events, acked_count) = events_of_hunt(hunt, round, acked);
        let mut candidate = model.clone();
        for event in &events[..acked_count] {
            let outcome = candidate.apply(event);
            assert_eq!(
                acked[&event.client_seq].outcome, outcome,
                "hunt {hunt}: an acknowledged answer differs from the replayed state"
            );
        }
        let on_node = &answers[&query.client_seq].outcome;
        let mut kept = None;
        for extra in 0..=events.len() - acked_count {
            if extra > 0 {
                candidate.apply(events[acked_count + extra - 1]);
            }
            if candidate.clone().apply(query) == *on_node {
                kept_unacked += extra;
                kept = Some(candidate.clone());
                break;
            }
        }
        let kept = kept.unwrap_or_else(|| {
            panic!(
                "hunt {hunt}: the node's leaderboard {on_node:?} is not the model's after its {acked_count} acknowledged events plus any of the {} unacknowledged ones",
                events.len() - acked_count
            )
        });
        model.adopt_hunt(hunt, &kept);
        model.apply(query);
    }
    kept_unacked
}

/// What the retries of one round found among the events sent and not answered before the kill.
#[derive(Default)]
struct Retried {
    /// Kept by the node: answered `Duplicate` with their original class.
    duplicates: usize,
    /// Kept by the node, past what it remembers of the session: `DuplicateUnknown`.
    unknown: usize,
    /// Lost in the kill (never applied, or applied and not yet logged): applied by the retry.
    applied_now: usize,
}

/// After a restart: re-sends, as the same client session with the same seqs, every event of
/// the round that was sent and got no answer, then checks hunt by hunt that every answer (the
/// acknowledged ones, the retries' and the node's leaderboard) is the model's after applying
/// each sent event exactly once. A retry answered `Duplicate` had been applied before the kill
/// (its class must be the model's); any other answer to a retry is its first application (it
/// must equal the model's). An event applied twice shows: a check-in scores once per waypoint
/// and a treasure is won once, so a second application answers `AlreadyCheckedIn` or
/// `AlreadyClaimed` where the model, applying it once, says `Accepted` or `Claimed`. Moves
/// `model` to the node's state.
fn reconcile_with_retries(
    node: &mut Node,
    model: &mut Model,
    sent: &[Event],
    acked: &HashMap<u64, Reply>,
    session: u64,
    seq: &mut u64,
) -> Retried {
    let unanswered: Vec<Event> = (sent.iter())
        .filter(|event| !acked.contains_key(&event.client_seq))
        .cloned()
        .collect();
    let (retries, _) = drive_as(node, &unanswered, None, session);
    let (queries, answers) = leaderboards(node, seq);
    let mut found = Retried::default();
    for (hunt, query) in (0..HUNTS).zip(&queries) {
        let (events, acked_count) = events_of_hunt(hunt, sent, acked);
        // A kill keeps a prefix of each partition's log, so of a hunt's unanswered events the
        // node kept the first few, if any.
        let mut kept_so_far = true;
        for (at, event) in events.iter().enumerate() {
            let outcome = model.apply(event);
            let number = event.client_seq;
            if at < acked_count {
                assert_eq!(
                    acked[&number].outcome, outcome,
                    "hunt {hunt}: an acknowledged answer differs from the model"
                );
                continue;
            }
            match &retries[&number].outcome {
                Outcome::Duplicate { original } => {
                    assert!(
                        kept_so_far,
                        "hunt {hunt}: event {number} was kept after a lost one"
                    );
                    assert_eq!(
                        Some(*original),
                        OutcomeClass::of(&outcome),
                        "hunt {hunt}: event {number}: the retry's original class is not the model's {outcome:?}"
                    );
                    found.duplicates += 1;
                }
                Outcome::DuplicateUnknown => {
                    assert!(
                        kept_so_far,
                        "hunt {hunt}: event {number} was kept after a lost one"
                    );
                    found.unknown += 1;
                }
                answer => {
                    kept_so_far = false;
                    assert_eq!(
                        *answer, outcome,
                        "hunt {hunt}: event {number}: its retry was answered as if applied a second time, or differs from the model"
                    );
                    found.applied_now += 1;
                }
            }
        }
        let on_node = &answers[&query.client_seq].outcome;
        assert_eq!(
            *on_node,
            model.apply(query),
            "hunt {hunt}: the node's leaderboard is not the one rebuilt from the acknowledged and duplicate-confirmed events, each applied once"
        );
    }
    found
}

/// Kill-restart rounds of [`acknowledged_events_survive_kill_9_under_load`]; each is a node
/// start, 50 to 300 ms of load, `kill -9` and a check of every hunt.
const KILL_ROUNDS: usize = 20;

#[test]
fn acknowledged_events_survive_kill_9_under_load() {
    let seed = seed_from_env("TROVE_DURABILITY_SEED");
    let mut rng = Rng(seed);
    // One client session for every round and every retry, as one client object keeps it.
    let session = client::new_session();
    let dir = data_dir("kill");
    let mut node = start_node(&dir, &SNAPSHOT_OFTEN).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let (mut total_acked, mut total_kept) = (0, 0);
    let mut restarts_from_snapshots = 0;
    for round in 0..KILL_ROUNDS {
        let events = load(&mut rng, &mut seq, 100_000);
        let kill_after = Duration::from_millis(50 + rng.below(250));
        let (acked, sent) = drive_as(&mut node, &events, Some(kill_after), session);
        total_acked += acked.len();
        node = start_node(&dir, &SNAPSHOT_OFTEN).unwrap_or_else(|(code, stderr)| {
            panic!("round {round}: the node did not restart (exit {code:?}): {stderr}")
        });
        let (snapshots, replayed) = recovery(&node);
        // Snapshots cover what they hold: only without any is every event replayed.
        assert!(
            snapshots > 0 || replayed >= HUNTS * (1 + PLAYERS) + total_acked as u64,
            "round {round}: recovered fewer events than were acknowledged: {:?}",
            node.start_lines
        );
        restarts_from_snapshots += u32::from(snapshots > 0);
        let retried = reconcile_with_retries(
            &mut node,
            &mut model,
            &events[..sent],
            &acked,
            session,
            &mut seq,
        );
        total_kept += retried.duplicates + retried.unknown;
        println!(
            "round {round}: killed after {kill_after:?}: {} of {sent} events sent were acknowledged; retried, {} were kept (Duplicate), {} kept past the window (DuplicateUnknown), {} applied now; {snapshots} snapshots loaded, {replayed} events replayed",
            acked.len(),
            retried.duplicates,
            retried.unknown,
            retried.applied_now,
        );
    }
    assert!(
        total_acked > 0,
        "no event was acknowledged before any kill: the test proved nothing"
    );
    assert!(
        total_kept > 0,
        "no retry found an event the node had kept without answering: de-duplication was not exercised"
    );
    assert!(
        restarts_from_snapshots > 0,
        "no restart loaded a snapshot: the test did not exercise them"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data dir with one clean stop behind it: `(dir, events logged)`.
fn logged_dir(name: &str) -> (PathBuf, u64) {
    let dir = data_dir(name);
    let mut node = start_node(&dir, &[]).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let events = load(&mut Rng(7), &mut seq, 2_000);
    let replies = drive(&mut node, &events, None);
    assert_eq!(replies.len(), events.len());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
    let status = node.child.wait().unwrap();
    assert!(status.success());
    (dir, HUNTS * (1 + PLAYERS) + events.len() as u64)
}

/// Shard 0's first segment, and its records' (start, end) byte ranges.
fn first_segment(dir: &Path) -> (PathBuf, Vec<(usize, usize)>) {
    let path = dir.join("shard-0").join(format!("{:020}.wal", 0));
    let bytes = std::fs::read(&path).unwrap();
    let header = SegmentHeader::decode(&bytes).unwrap();
    let records = scan_segment(&bytes, header.first_lsn)
        .records
        .iter()
        .map(|record| {
            (
                record.payload_offset - WAL_RECORD_HEADER_BYTES,
                record.payload_offset + record.payload_len,
            )
        })
        .collect();
    (path, records)
}

fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_torn_last_record_is_cut_and_reported() {
    let (dir, logged) = logged_dir("torn");
    let (path, records) = first_segment(&dir);
    let &(start, end) = records.last().unwrap();
    // The crash came half-way through writing the last record.
    rewrite(&path, |bytes| bytes[(start + end) / 2..end].fill(0));
    let node = start_node(&dir, &[]).unwrap();
    assert_eq!(
        recovered_events(&node),
        logged - 1,
        "{:?}",
        node.start_lines
    );
    assert!(
        node.start_lines
            .iter()
            .any(|line| line.contains("torn record") && line.contains(&format!("byte {start}"))),
        "{:?}",
        node.start_lines
    );
    drop(node);
    // Cut for good: the next start finds a clean log.
    let node = start_node(&dir, &[]).unwrap();
    assert_eq!(recovered_events(&node), logged - 1);
    assert!(
        !node
            .start_lines
            .iter()
            .any(|line| line.contains("torn record")),
        "{:?}",
        node.start_lines
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damage_before_the_tail_stops_the_node_unless_the_operator_cuts_it() {
    let (dir, logged) = logged_dir("damage");
    let (path, records) = first_segment(&dir);
    let victim = records.len() / 2;
    let (start, end) = records[victim];
    rewrite(&path, |bytes| bytes[(start + end) / 2] ^= 0x5a);
    let (code, stderr) = refused(&dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string())
            && stderr.contains(&format!("byte {start}"))
            && stderr.contains("--recover-truncate"),
        "the refusal names the file, the byte and the way out: {stderr}"
    );
    let node = start_node(&dir, &["--recover-truncate"]).unwrap();
    let shard0_after = (records.len() - victim) as u64;
    assert_eq!(
        recovered_events(&node),
        logged - shard0_after,
        "shard 0 keeps the {victim} records before the damage: {:?}",
        node.start_lines
    );
    assert!(
        node.start_lines.iter().any(|line| line.contains("damaged")),
        "{:?}",
        node.start_lines
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_dir_of_another_layout_is_refused() {
    let (dir, _) = logged_dir("foreign");
    for flags in [vec!["--partitions", "128"], vec!["--shards", "1"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_trove"));
        command
            .args([
                "node",
                "--port",
                "0",
                "--metrics-listen",
                "off",
                "--data-dir",
            ])
            .arg(&dir)
            .args(&flags);
        if !flags.contains(&"--shards") {
            command.args(["--shards", "2"]);
        }
        if !flags.contains(&"--partitions") {
            command.args(["--partitions", PARTITIONS]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(
            stderr.contains("belongs to another layout"),
            "{flags:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes of the files under `dir`, by their sizes (segments are pre-allocated whole); files
/// that vanish while it looks are skipped.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Mostly large events that change nothing (creating a hunt that exists, with a full spec:
/// about 2 KiB each, logged like any other), among the usual check-ins and claims.
fn heavy_load(rng: &mut Rng, seq: &mut u64, count: usize) -> Vec<Event> {
    let full = HuntSpec {
        waypoints: (0..64)
            .map(|w| WaypointSpec {
                position: waypoint_position(w),
                radius_m: 10,
                points: 1,
            })
            .collect(),
        treasures: (0..64u64)
            .map(|t| TreasureSpec {
                code_hash: t,
                points: 1,
            })
            .collect(),
    };
    let mut events = load(rng, seq, count);
    for event in events.iter_mut() {
        if rng.below(4) != 0 {
            event.kind = EventKind::CreateHunt(full.clone());
        }
    }
    events
}

/// The index of shard `shard`'s first log segment on disk.
fn first_segment_index(dir: &Path, shard: usize) -> Option<u64> {
    std::fs::read_dir(dir.join(format!("shard-{shard}")))
        .ok()?
        .map_while(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".wal")?.parse().ok()
        })
        .min()
}

#[test]
fn the_data_dir_stays_within_its_bound_and_a_restart_after_truncation_recovers_everything() {
    // Two shards at the smallest share: three 64 MiB segments each.
    const BOUND_MB: u64 = 384;
    let bound = BOUND_MB.to_string();
    let flags = [
        "--snapshot-every-mb",
        "4",
        "--snapshot-every-s",
        "1",
        "--log-disk-max-mb",
        &bound,
    ];
    let dir = data_dir("bound");
    let mut node = start_node(&dir, &flags).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let (stop, stopped) = mpsc::channel::<()>();
    let watched = dir.clone();
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            peak = peak.max(dir_bytes(&watched));
            if stopped.recv_timeout(Duration::from_millis(10)).is_ok() {
                return peak;
            }
        }
    });
    let mut rng = Rng(11);
    let (mut answered, mut log_full) = (0, 0);
    let started = Instant::now();
    // Until each shard's log went through three segments and the first two were deleted.
    while (0..2).any(|shard| first_segment_index(&dir, shard).is_none_or(|first| first < 2)) {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the logs were not truncated within 240 s: {:?}",
            std::fs::read_dir(dir.join("shard-0")).map(|d| d.count())
        );
        let events = heavy_load(&mut rng, &mut seq, 20_000);
        let replies = drive(&mut node, &events, None);
        for event in &events {
            let outcome = &replies[&event.client_seq].outcome;
            if *outcome
                == (Outcome::Error {
                    error: EventError::LogFull,
                })
            {
                // Refused, not applied; any other answer must be the model's.
                log_full += 1;
                continue;
            }
            answered += 1;
            assert_eq!(*outcome, model.apply(event), "event {}", event.client_seq);
        }
        println!(
            "{:.1} s: {answered} answered, {log_full} refused; {:.1} MiB on disk",
            started.elapsed().as_secs_f64(),
            dir_bytes(&dir) as f64 / (1 << 20) as f64
        );
    }
    stop.send(()).unwrap();
    let peak = watcher.join().unwrap();
    println!(
        "{answered} events answered, {log_full} refused LogFull, in {:.1} s; the data dir peaked at {:.1} MiB of {BOUND_MB}",
        started.elapsed().as_secs_f64(),
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= BOUND_MB << 20,
        "the data dir reached {peak} bytes, past --log-disk-max-mb {BOUND_MB}"
    );
    assert_spares_bounded_and_empty(&dir);
    // kill -9, then everything answered must come back from snapshots and the log's tail.
    drop(node);
    // What a crash can leave besides: a segment prepared ahead, a snapshot being written.
    let prepared = dir.join("shard-0").join("00000000000000000099.wal.ready");
    let scratch = dir.join("shard-1/snapshots/spare-planted.snap.tmp");
    std::fs::write(&prepared, [0u8; 4096]).unwrap();
    std::fs::write(&scratch, [7u8; 4096]).unwrap();
    let mut node = start_node(&dir, &flags).unwrap();
    assert!(
        !prepared.exists() && !scratch.exists(),
        "recovery kept a prepared segment or an unfinished snapshot file"
    );
    let (snapshots, replayed) = recovery(&node);
    println!("restart: {snapshots} snapshots loaded, {replayed} events replayed");
    assert!(snapshots > 0, "{:?}", node.start_lines);
    reconcile(&mut node, &mut model, &[], &HashMap::new(), &mut seq);
    let events = load(&mut rng, &mut seq, 5_000);
    let replies = drive(&mut node, &events, None);
    for event in &events {
        assert_eq!(
            replies[&event.client_seq].outcome,
            model.apply(event),
            "after the restart, event {} is answered from another state",
            event.client_seq
        );
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each shard keeps at most `SNAPSHOT_SPARE_FILES_MAX` replaced snapshot files to write the
/// next ones into, emptied: only the one being written (if any) holds bytes.
fn assert_spares_bounded_and_empty(dir: &Path) {
    for shard in 0..2 {
        let snapshots = dir.join(format!("shard-{shard}")).join("snapshots");
        let sizes: Vec<u64> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map_while(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("spare-"))
            .filter_map(|entry| Some(entry.metadata().ok()?.len()))
            .collect();
        assert!(
            sizes.len() <= SNAPSHOT_SPARE_FILES_MAX,
            "shard {shard} keeps {} spare files",
            sizes.len()
        );
        let holding = sizes.iter().filter(|&&size| size > 0).count();
        assert!(
            holding <= 1,
            "shard {shard}'s spare files hold bytes: {sizes:?}"
        );
    }
}

/// Every snapshot file of the data dir, by (shard, partition), oldest first.
fn snapshot_files(dir: &Path) -> HashMap<(usize, u32), Vec<PathBuf>> {
    let mut found: HashMap<(usize, u32), Vec<PathBuf>> = HashMap::new();
    for shard in 0..2 {
        let snapshots = dir.join(format!("shard-{shard}")).join("snapshots");
        for entry in std::fs::read_dir(&snapshots).unwrap().map_while(Result::ok) {
            let name = entry.file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".snap") else {
                continue;
            };
            let partition = stem[1..].split('-').next().unwrap().parse().unwrap();
            found
                .entry((shard, partition))
                .or_default()
                .push(entry.path());
        }
    }
    for files in found.values_mut() {
        files.sort();
    }
    found
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_one_before_it_or_the_whole_log() {
    let dir = data_dir("snapshot-damage");
    let mut node = start_node(&dir, &SNAPSHOT_OFTEN).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let mut rng = Rng(5);
    for _ in 0..3 {
        let events = load(&mut rng, &mut seq, 20_000);
        let replies = drive(&mut node, &events, None);
        for event in &events {
            assert_eq!(replies[&event.client_seq].outcome, model.apply(event));
        }
        // A round by age, too.
        std::thread::sleep(Duration::from_millis(1_500));
    }
    drop(node);
    let snapshots = snapshot_files(&dir);
    assert!(!snapshots.is_empty(), "no snapshot was written");
    // The newest snapshot of every partition gets a flipped byte in its archive.
    for files in snapshots.values() {
        rewrite(files.last().unwrap(), |bytes| bytes[4096 + 20] ^= 0x44);
    }
    let mut node = start_node(&dir, &SNAPSHOT_OFTEN).unwrap();
    let damaged_notes = node
        .start_lines
        .iter()
        .filter(|line| line.contains("is damaged") && line.contains("moved aside"))
        .count();
    assert_eq!(damaged_notes, snapshots.len(), "{:?}", node.start_lines);
    let (loaded, replayed) = recovery(&node);
    let with_older = snapshots.values().filter(|files| files.len() > 1).count();
    assert_eq!(loaded as usize, with_older, "{:?}", node.start_lines);
    println!(
        "{} partitions' newest snapshots damaged: {loaded} fell back to the one before, {replayed} events replayed",
        snapshots.len()
    );
    reconcile(&mut node, &mut model, &[], &HashMap::new(), &mut seq);
    let events = load(&mut rng, &mut seq, 2_000);
    let replies = drive(&mut node, &events, None);
    for event in &events {
        assert_eq!(replies[&event.client_seq].outcome, model.apply(event));
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small ext4 filesystem in a file, loop-mounted for one test, unmounted when dropped.
struct SmallDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl SmallDisk {
    /// A `mb` MiB filesystem, or why one cannot be made here (not root, no `mkfs.ext4`, no
    /// loop devices).
    fn new(name: &str, mb: u64) -> Result<SmallDisk, String> {
        let base = data_dir(name);
        std::fs::create_dir_all(&base).map_err(|error| error.to_string())?;
        let image = base.join("disk.img");
        let mount = base.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|error| error.to_string())?;
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(mb << 20))
            .map_err(|error| format!("cannot create {}: {error}", image.display()))?;
        let run = |program: &str, args: &[&std::ffi::OsStr]| -> Result<(), String> {
            let output = Command::new(program)
                .args(args)
                .output()
                .map_err(|error| format!("cannot run {program}: {error}"))?;
            if output.status.success() {
                return Ok(());
            }
            Err(format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        };
        run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        )?;
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mount.as_os_str(),
            ],
        )?;
        Ok(SmallDisk { image, mount })
    }

    /// Writes a file until the filesystem has no space left; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.mount.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap();
        // MiB chunks, then (once writeback has released what delayed allocation reserved)
        // blocks, each synced, until not even one fits.
        for chunk in [1 << 20, 4096] {
            let bytes = vec![0xa5u8; chunk];
            loop {
                let written = std::io::Write::write(&mut file, &bytes)
                    .and_then(|written| file.sync_data().map(|()| written));
                match written {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(error) => panic!("filling {}: {error}", path.display()),
                }
            }
            let _ = file.sync_all();
        }
        path
    }
}

impl SmallDisk {
    /// Unmounts the image; false if it stayed busy for 2 s. A node's io_uring lets go of its
    /// files some time after the process has exited (a kernel worker tears the ring down), so
    /// the first try can find the disk busy.
    fn unmount(&self) -> bool {
        (0..20).any(|_| {
            let done = Command::new("umount")
                .arg(&self.mount)
                .output()
                .is_ok_and(|output| output.status.success());
            if !done {
                std::thread::sleep(Duration::from_millis(100));
            }
            done
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Detached lazily rather than left mounted if it stays busy.
        if !self.unmount() {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
        let _ = std::fs::remove_file(&self.image);
        if let Some(base) = self.image.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// A small file system of 256 MiB for test `test`, or `None` after saying why the test is
/// skipped (making one needs root, mkfs.ext4 and loop devices).
fn small_disk_or_skip(name: &str, test: &str) -> Option<SmallDisk> {
    match SmallDisk::new(name, 256) {
        Ok(disk) => Some(disk),
        Err(why) => {
            eprintln!(
                "SKIPPED {test}...: cannot make a small filesystem ({why}); it needs root, mkfs.ext4 and loop devices"
            );
            None
        }
    }
}

fn is_disk_full(outcome: &Outcome) -> bool {
    *outcome
        == Outcome::Error {
            error: EventError::DiskFull,
        }
}

/// Sends load in batches until `stop` says so about a batch's replies (or `WAIT` passes);
/// returns every event sent and its reply.
fn drive_until(
    node: &mut Node,
    rng: &mut Rng,
    seq: &mut u64,
    what: &str,
    mut stop: impl FnMut(&Node, &[Event], &HashMap<u64, Reply>) -> bool,
) -> (Vec<Event>, HashMap<u64, Reply>) {
    let started = Instant::now();
    let (mut sent, mut answers) = (Vec::new(), HashMap::new());
    loop {
        assert!(
            started.elapsed() < WAIT,
            "{what}: not within {WAIT:?}; the node said {:?}",
            node.stderr_lines("")
        );
        let events = load(rng, seq, 2_000);
        let replies = drive(node, &events, None);
        let done = stop(node, &events, &replies);
        sent.extend(events);
        answers.extend(replies);
        if done {
            return (sent, answers);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_refuses_new_events_says_so_once_and_resumes_when_space_returns() {
    let Some(disk) = small_disk_or_skip("full", "a_full_disk_refuses_new_events") else {
        return;
    };
    let dir = disk.mount.join("data");
    let mut node = start_node(&dir, &SNAPSHOT_OFTEN).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let mut rng = Rng(7);
    let ballast = disk.fill();
    // The segments are pre-allocated: the log goes on until a snapshot (every second) or a
    // new segment needs space.
    let (before, before_replies) = drive_until(
        &mut node,
        &mut rng,
        &mut seq,
        "a DiskFull answer",
        |_, events, replies| {
            events
                .iter()
                .any(|event| is_disk_full(&replies[&event.client_seq].outcome))
        },
    );
    let refused = before_replies
        .values()
        .filter(|reply| is_disk_full(&reply.outcome))
        .count();
    let announced = node.stderr_lines("the disk is full");
    assert!(
        !announced.is_empty() && announced.len() <= 2,
        "one line per shard when its refusal starts, not one per event ({refused} refused): {announced:?}"
    );
    assert!(
        announced.iter().all(|line| line.contains("DiskFull")),
        "the line names the answer: {announced:?}"
    );
    std::fs::remove_file(&ballast).unwrap();
    let (after, after_replies) = drive_until(
        &mut node,
        &mut rng,
        &mut seq,
        "taking events again",
        |node, events, replies| {
            !node.stderr_lines("works again").is_empty()
                && events
                    .iter()
                    .all(|event| !is_disk_full(&replies[&event.client_seq].outcome))
        },
    );
    // One line per shard over the whole refusal (a shard whose disk fault came after the
    // first refusal the client saw says so later, once).
    let full_lines = node.stderr_lines("the disk is full");
    let mut per_shard = std::collections::BTreeMap::new();
    for line in &full_lines {
        let shard = line.split(':').nth(1).unwrap_or_default().trim().to_owned();
        *per_shard.entry(shard).or_insert(0) += 1;
    }
    assert!(
        per_shard.values().all(|&lines| lines == 1),
        "no more lines while refusing: {:?}",
        node.stderr_lines("")
    );
    println!(
        "{} events before space returned ({refused} refused DiskFull), {} after; the node said {:?}",
        before.len(),
        after.len(),
        node.stderr_lines("trove node: shard")
    );
    // kill -9 and restart: every event answered (refused ones excepted: not applied) is there,
    // and the refused ones were not applied.
    let mut replies = before_replies;
    replies.extend(after_replies);
    let applied: Vec<Event> = before
        .into_iter()
        .chain(after)
        .filter(|event| !is_disk_full(&replies[&event.client_seq].outcome))
        .collect();
    drop(node);
    let mut node = start_node(&dir, &SNAPSHOT_OFTEN).unwrap();
    let kept = reconcile(&mut node, &mut model, &applied, &replies, &mut seq);
    assert_eq!(kept, 0, "every event sent was answered");
    drop(node);
}

/// Waits (at most `WAIT`) until the node printed `count` lines on stderr containing `text`.
fn wait_for_lines(node: &Node, text: &str, count: usize) {
    let started = Instant::now();
    while node.stderr_lines(text).len() < count {
        assert!(
            started.elapsed() < WAIT,
            "no {count} lines with `{text}` within {WAIT:?}: {:?}",
            node.stderr_lines("")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_whose_first_segment_finds_no_space_refuses_events_until_it_can_allocate_it() {
    let Some(disk) = small_disk_or_skip("nospace", "a_node_whose_first_segment_finds_no_space")
    else {
        return;
    };
    let dir = disk.mount.join("data");
    // A data dir with its layout and no segments: the next start allocates segment 0 anew.
    drop(start_node(&dir, &[]).unwrap());
    for shard in 0..2 {
        let shard_dir = dir.join(format!("shard-{shard}"));
        for entry in std::fs::read_dir(&shard_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "wal") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    let ballast = disk.fill();
    let mut node = start_node(&dir, &["--metrics-listen", "127.0.0.1:0"]).unwrap();
    // Events that came before a shard found out would be applied and wait for the log.
    wait_for_lines(&node, "cannot allocate a log segment", 2);
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    let create: Vec<Event> = (0..HUNTS)
        .map(|hunt| {
            seq += 1;
            Event {
                hunt: HuntId(hunt),
                player: PlayerId(0),
                client_session: 0,
                client_seq: seq,
                client_ts: 0,
                kind: EventKind::CreateHunt(WORLD.spec(hunt)),
            }
        })
        .collect();
    let replies = drive(&mut node, &create, None);
    assert!(
        create
            .iter()
            .all(|event| is_disk_full(&replies[&event.client_seq].outcome)),
        "with no room for the log, every event is refused DiskFull: {replies:?}"
    );
    // /metrics tells the full disk apart from a partition nobody serves here.
    let disk_full = [("kind", "create_hunt"), ("outcome", "disk_full")];
    let scrape = wait_until("the refusals on /metrics", WAIT, || {
        let scrape = scrape_metrics(node.metrics());
        match metric_sum(&scrape, "trove_events_total", &disk_full) {
            counted if counted == HUNTS as f64 => Ok(scrape),
            counted => Err(format!("{counted} counted disk_full")),
        }
    });
    for elsewhere in ["unavailable", "log_full", "disk_failed", "accepted"] {
        let counted = metric_sum(&scrape, "trove_events_total", &[("outcome", elsewhere)]);
        assert_eq!(counted, 0.0, "refusals counted as {elsewhere}");
    }
    assert_eq!(
        node.stderr_lines("cannot allocate a log segment").len(),
        2,
        "one line per shard, not one per retry or event: {:?}",
        node.stderr_lines("")
    );
    std::fs::remove_file(&ballast).unwrap();
    wait_for_lines(&node, "works again", 2);
    set_up(&mut node, &mut model, &mut seq);
    drop(node);
    let mut node = start_node(&dir, &[]).unwrap();
    reconcile(&mut node, &mut model, &[], &HashMap::new(), &mut seq);
}

#[test]
fn a_new_segment_that_finds_no_space_holds_its_records_answers_until_space_returns() {
    let Some(disk) = small_disk_or_skip("rollover", "a_new_segment_that_finds_no_space") else {
        return;
    };
    let dir = disk.mount.join("data");
    // Snapshots small and often (they fit in the room left), segments never.
    let flags = ["--snapshot-every-mb", "4", "--snapshot-every-s", "1"];
    let mut node = start_node(&dir, &flags).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let spare = disk.mount.join("spare");
    std::fs::write(&spare, vec![0u8; 16 << 20]).unwrap();
    let ballast = disk.fill();
    std::fs::remove_file(&spare).unwrap();
    // Space comes back a second after the first shard found none for its next segment; the
    // records that went to that segment wait for it, and so do their answers.
    let stderr = node.stderr.clone();
    let freer = std::thread::spawn(move || {
        let started = Instant::now();
        let announced = || {
            let lines = stderr.lock().unwrap();
            lines
                .iter()
                .any(|line| line.contains("cannot allocate a log segment"))
        };
        while !announced() {
            if started.elapsed() > Duration::from_secs(120) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(1));
        std::fs::remove_file(&ballast).unwrap();
        true
    });
    let mut rng = Rng(5);
    let (mut answered, mut refused) = (0, 0);
    let started = Instant::now();
    while !freer.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no shard reached its second segment within 120 s"
        );
        let events = heavy_load(&mut rng, &mut seq, 10_000);
        let replies = drive(&mut node, &events, None);
        for event in &events {
            let outcome = &replies[&event.client_seq].outcome;
            if is_disk_full(outcome) {
                refused += 1;
                continue;
            }
            answered += 1;
            assert_eq!(*outcome, model.apply(event), "event {}", event.client_seq);
        }
    }
    assert!(freer.join().unwrap(), "no shard said it found no space");
    wait_for_lines(&node, "works again", 1);
    println!(
        "{answered} events answered, {refused} refused DiskFull in {:.1} s; the node said {:?}",
        started.elapsed().as_secs_f64(),
        node.stderr_lines("trove node: shard")
    );
    assert!(refused > 0, "no event was refused while there was no space");
    assert!(
        node.stderr_lines("the disk is full").len() <= 2,
        "one line per shard: {:?}",
        node.stderr_lines("")
    );
    drop(node);
    let mut node = start_node(&dir, &flags).unwrap();
    reconcile(&mut node, &mut model, &[], &HashMap::new(), &mut seq);
}

/// `EXT4_IOC_SHUTDOWN` (the same number as XFS's `GOINGDOWN`): `_IOR('X', 125, u32)`.
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
/// Shut down without flushing the journal, as a disk that dies would.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
/// The exit status of a node that stopped without its log closed cleanly
/// (`trove::runtime::store::EXIT_LOG_NOT_CLOSED`).
const EXIT_LOG_NOT_CLOSED: i32 = trove::runtime::store::EXIT_LOG_NOT_CLOSED;

/// Shuts the filesystem mounted at `mount` down: every I/O on it fails with EIO until it is
/// mounted again.
fn shut_down(mount: &Path) -> Result<(), String> {
    let file = std::fs::File::open(mount)
        .map_err(|error| format!("cannot open {}: {error}", mount.display()))?;
    let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 from the pointer, which points at `flags`; the fd is
    // open for the call.
    let done = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            EXT4_IOC_SHUTDOWN as _,
            &flags as *const u32,
        )
    };
    if done != 0 {
        return Err(format!(
            "EXT4_IOC_SHUTDOWN failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

impl SmallDisk {
    /// Unmounts the image and mounts it again: ext4 replays its journal.
    fn remount(&self) {
        let run = |args: &[&std::ffi::OsStr]| {
            let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                output.status.success(),
                "{:?} failed: {}",
                args,
                String::from_utf8_lossy(&output.stderr)
            );
        };
        assert!(self.unmount(), "{} stayed busy", self.mount.display());
        run(&[
            "mount".as_ref(),
            "-o".as_ref(),
            "loop".as_ref(),
            self.image.as_os_str(),
            self.mount.as_os_str(),
        ]);
    }
}

fn is_disk_failed(outcome: &Outcome) -> bool {
    *outcome
        == Outcome::Error {
            error: EventError::DiskFailed,
        }
}

fn is_outcome_unknown(outcome: &Outcome) -> bool {
    *outcome
        == Outcome::Error {
            error: EventError::OutcomeUnknown,
        }
}

/// Sends SIGTERM and waits at most `bound` for the node to exit; its exit code and how long it
/// took, or a kill and a failed test when it does not.
fn stop_within(node: &mut Node, bound: Duration) -> (Option<i32>, Duration) {
    let asked = Instant::now();
    // SAFETY: signals the child this test started, whose pid it holds.
    assert_eq!(
        unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            return (status.code(), asked.elapsed());
        }
        if asked.elapsed() > bound {
            let _ = node.child.kill();
            let _ = node.child.wait();
            panic!(
                "the node did not exit within {bound:?} of SIGTERM; it said {:?}",
                node.stderr_lines("")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failed_disk_refuses_events_answers_everything_stops_in_time_and_loses_nothing_acknowledged() {
    let Some(disk) = small_disk_or_skip("eio", "a_failed_disk_refuses_events") else {
        return;
    };
    let dir = disk.mount.join("data");
    let mut node = start_node(&dir, &[]).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    let mut rng = Rng(11);
    let mut sent = load(&mut rng, &mut seq, 4_000);
    let mut replies = drive(&mut node, &sent, None);
    // The filesystem dies under load: a thread shuts it down while events are in flight.
    let mount = disk.mount.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        shut_down(&mount).map(|()| Instant::now())
    });
    let under_load = load(&mut rng, &mut seq, 40_000);
    replies.extend(drive(&mut node, &under_load, None));
    sent.extend(under_load);
    let shut_at = match killer.join().unwrap() {
        Ok(at) => at,
        Err(why) => {
            eprintln!(
                "SKIPPED a_failed_disk_refuses_events...: {why} (the kernel's ext4 has no shutdown ioctl?)"
            );
            return;
        }
    };
    // Until every shard refuses: a whole batch answered DiskFailed.
    let (after, after_replies) = drive_until(
        &mut node,
        &mut rng,
        &mut seq,
        "every event refused DiskFailed",
        |_, events, replies| {
            events
                .iter()
                .all(|event| is_disk_failed(&replies[&event.client_seq].outcome))
        },
    );
    sent.extend(after);
    replies.extend(after_replies);
    let refusing_after = shut_at.elapsed();
    // The node stays up and answers: its map, and events (refused).
    let mut stream = client::connect_stream(node.addr, Duration::from_secs(2)).unwrap();
    client::fetch_map(&mut stream, Duration::from_secs(2))
        .expect("the map, from a node whose disk failed");
    drop(stream);
    let probe = WORLD.leaderboard_queries(&mut seq);
    let answers = drive(&mut node, &probe, None);
    assert!(
        probe
            .iter()
            .all(|event| is_disk_failed(&answers[&event.client_seq].outcome)),
        "every event is refused while the disk fails: {answers:?}"
    );
    let (mut accepted, mut unknown, mut refused) = (0, 0, 0);
    for event in &sent {
        let outcome = &replies[&event.client_seq].outcome;
        if is_disk_failed(outcome) {
            refused += 1;
        } else if is_outcome_unknown(outcome) {
            unknown += 1;
        } else {
            accepted += 1;
        }
    }
    let announced = node.stderr_lines("the disk failed");
    assert!(
        !announced.is_empty() && announced.len() <= 2,
        "one line per shard when its refusal starts, not one per retry or event: {:?}",
        node.stderr_lines("")
    );
    assert!(
        announced.iter().all(|line| line.contains("DiskFailed")),
        "the line names the answer: {announced:?}"
    );
    // SIGTERM: the stop gives up on the log within its bound and says so.
    let bound = Duration::from_millis(
        trove::constants::LOG_STOP_WAIT_MS_MAX + trove::constants::SHUTDOWN_GRACE_MS_MAX + 3_000,
    );
    let (code, took) = stop_within(&mut node, bound);
    let gave_up = node.stderr_lines("without closing the log cleanly");
    println!(
        "{accepted} events accepted, {unknown} OutcomeUnknown, {refused} DiskFailed; every event refused {:.2} s after the shutdown; stopped in {:.2} s with exit {code:?}; the node said {:?}",
        refusing_after.as_secs_f64(),
        took.as_secs_f64(),
        node.stderr_lines("trove node: shard")
    );
    assert!(accepted > 0 && refused > 0, "the disk failed under load");
    assert!(
        gave_up.len() <= 2,
        "one line per shard that gave up: {gave_up:?}"
    );
    if unknown > 0 {
        // Their records never reached the disk: the log was still open at the stop.
        assert_eq!(
            code,
            Some(EXIT_LOG_NOT_CLOSED),
            "{:?}",
            node.stderr_lines("")
        );
    }
    assert_eq!(
        code == Some(EXIT_LOG_NOT_CLOSED),
        !gave_up.is_empty(),
        "the exit status says what the line says: {:?}",
        node.stderr_lines("")
    );
    assert!(
        code == Some(0) || code == Some(EXIT_LOG_NOT_CLOSED),
        "exit {code:?}: {:?}",
        node.stderr_lines("")
    );
    drop(node);
    // The journal recovers at mount; a node on the data dir has every acknowledged event.
    disk.remount();
    let applied: Vec<Event> = sent
        .into_iter()
        .filter(|event| !is_disk_failed(&replies[&event.client_seq].outcome))
        .collect();
    let acknowledged: HashMap<u64, Reply> = replies
        .into_iter()
        .filter(|(_, reply)| !is_outcome_unknown(&reply.outcome) && !is_disk_failed(&reply.outcome))
        .collect();
    let mut node = start_node(&dir, &[]).unwrap();
    let (snapshots, replayed) = recovery(&node);
    let set_up_events = HUNTS * (1 + PLAYERS);
    assert!(
        snapshots > 0 || replayed >= set_up_events + accepted,
        "recovered fewer events than were acknowledged: {:?}",
        node.start_lines
    );
    let kept = reconcile(&mut node, &mut model, &applied, &acknowledged, &mut seq);
    println!(
        "after the remount: {replayed} events replayed ({} beyond the acknowledged ones), {kept} of the {unknown} OutcomeUnknown ones visibly kept",
        replayed.saturating_sub(set_up_events + accepted)
    );
    drop(node);
}

/// Everything the node sends on one connection until it closes it (or `bound` passes): the
/// replies by `client_seq`, and its error frames.
fn replies_until_closed(
    receiver: &mut client::ReplyReceiver,
    bound: Duration,
) -> (HashMap<u64, Reply>, Vec<String>) {
    let started = Instant::now();
    let (mut replies, mut errors) = (HashMap::new(), Vec::new());
    while started.elapsed() < bound {
        match receiver.recv_timeout(Duration::from_millis(50)) {
            Ok(Incoming::Replies(frame)) => {
                for reply in frame.replies() {
                    let reply = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap();
                    replies.insert(reply.client_seq, reply);
                }
            }
            Ok(Incoming::NodeError { message, .. }) => errors.push(message),
            Ok(Incoming::Closed { .. }) | Err(client::RecvError::Ended) => break,
            Err(client::RecvError::Timeout) => {}
        }
    }
    (replies, errors)
}

#[test]
fn a_node_stopped_while_its_disk_fails_answers_every_event_it_took_and_exits_in_time() {
    let Some(disk) = small_disk_or_skip("eio-stop", "a_node_stopped_while_its_disk_fails") else {
        return;
    };
    let dir = disk.mount.join("data");
    let mut node = start_node(&dir, &[]).unwrap();
    let (mut model, mut seq) = (Model::new(&WORLD), 0);
    set_up(&mut node, &mut model, &mut seq);
    if let Err(why) = shut_down(&disk.mount) {
        eprintln!("SKIPPED a_node_stopped_while_its_disk_fails...: {why}");
        return;
    }
    // Events the shards apply and log before a write tells them the disk is gone: their
    // answers wait for records that never reach it, and the stop comes before
    // LOG_FAULT_HOLD_MS_MAX would answer them.
    let mut config = ClientConfig::new(node.addr);
    config.shard_aware = false;
    let (mut sender, mut receiver) = client::connect(&config).unwrap();
    let events = load(&mut Rng(13), &mut seq, WINDOW);
    for event in &events {
        sender.send(event).unwrap();
    }
    sender.flush().unwrap();
    wait_for_lines(&node, "the disk failed", 1);
    let bound = Duration::from_millis(
        trove::constants::LOG_STOP_WAIT_MS_MAX + trove::constants::SHUTDOWN_GRACE_MS_MAX + 3_000,
    );
    let (code, took) = stop_within(&mut node, bound);
    let (replies, errors) = replies_until_closed(&mut receiver, Duration::from_secs(5));
    println!(
        "stopped in {:.2} s with exit {code:?}; {} of {} events answered: {:?}; errors {errors:?}; the node said {:?}",
        took.as_secs_f64(),
        replies.len(),
        events.len(),
        replies
            .values()
            .map(|reply| format!("{:?}", reply.outcome))
            .collect::<std::collections::BTreeSet<_>>(),
        node.stderr_lines("trove node: shard")
    );
    assert_eq!(replies.len(), events.len(), "every event taken is answered");
    assert!(
        replies
            .values()
            .all(|reply| is_outcome_unknown(&reply.outcome)
                || is_disk_failed(&reply.outcome)
                || reply.outcome
                    == Outcome::Error {
                        error: EventError::ShuttingDown
                    }),
        "nothing is answered as applied when its record never reached the disk: {replies:?}"
    );
    assert!(
        replies
            .values()
            .any(|reply| is_outcome_unknown(&reply.outcome)),
        "some events were applied and waited for the log"
    );
    assert_eq!(code, Some(EXIT_LOG_NOT_CLOSED));
    let gave_up = node.stderr_lines("without closing the log cleanly");
    assert!(
        !gave_up.is_empty() && gave_up.len() <= 2,
        "one line per shard that gave up: {:?}",
        node.stderr_lines("")
    );
    drop(node);
    disk.remount();
    let mut node = start_node(&dir, &[]).unwrap();
    reconcile(&mut node, &mut model, &events, &HashMap::new(), &mut seq);
}
