//! A node as an attacker or a careless operator meets it (issue 12), over loopback only:
//! authentication, loopback by default, a port already served, error text without addresses,
//! `trove bench --target` that gives up instead of hanging, and usage errors that exit 2.
//!
//! Every test is bounded: child processes are killed on a deadline, sockets time out.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use trove::client::ClientConfig;
use trove::core::auth::AuthSecret;
use trove::core::codec::{
    Decoded, FrameBuilder, FrameKind, Records, access_record, archive_aligned, decode_frame,
};
use trove::core::ids::{HuntId, PlayerId, TreasureId};
use trove::core::message::{ArchivedErrorMessage, ArchivedEvent, Event, EventKind, HuntSpec};
use trove::core::partition::PartitionMap;

use support::{
    COMMAND_WAIT, ChildNode, create_hunt, free_port, in_process_node, round_trip, run_bounded,
    scratch_dir, stderr, trove,
};

const SECRET: &str = "a shared secret for the abuse tests";

/// A file in a fresh scratch directory holding `contents`.
fn secret_file(name: &str, contents: &str) -> PathBuf {
    let path = scratch_dir(&format!("abuse-{name}")).join("secret");
    std::fs::write(&path, contents).unwrap();
    path
}

/// Removes a [`secret_file`] and its directory.
fn remove_secret_file(path: &Path) {
    let _ = std::fs::remove_dir_all(path.parent().expect("a secret file has a directory"));
}

// ---- authentication and the listen address ----------------------------------------------

#[test]
fn without_a_secret_a_node_listens_on_loopback_and_refuses_a_public_address() {
    let node = ChildNode::start(&["--port", "0", "--shards", "1"]);
    assert!(node.addr.ip().is_loopback(), "{}", node.addr);
    node.stop();
    // Refused before anything is bound, so nothing listens beyond loopback even for a moment.
    let output = run_bounded(
        trove().args([
            "node", "--listen", "0.0.0.0", "--port", "0", "--shards", "1",
        ]),
        COMMAND_WAIT,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--auth-secret-file") && text.contains("--insecure-no-auth"),
        "{text}"
    );
    assert_eq!(text.trim().lines().count(), 1, "one sentence: {text}");
}

#[test]
fn a_node_with_a_secret_serves_only_clients_that_prove_it() {
    let secret_path = secret_file("node", &format!("{SECRET}\n"));
    let node = ChildNode::start(&[
        "--port",
        "0",
        "--shards",
        "2",
        "--auth-secret-file",
        secret_path.to_str().unwrap(),
    ]);
    let right = Arc::new(AuthSecret::from_file_contents(SECRET.as_bytes()).unwrap());
    let wrong =
        Arc::new(AuthSecret::from_file_contents(b"not the secret the node was given").unwrap());

    let mut config = ClientConfig::new(node.addr);
    config.auth = Some(right);
    round_trip(&config, 20).expect("a client with the secret is served, on every shard port");

    config.auth = Some(wrong);
    match round_trip(&config, 1) {
        Err(error) => {
            let text = error.to_string();
            assert!(text.contains("does not match"), "{text}");
            assert!(!text.contains(SECRET), "{text}");
        }
        Ok(()) => panic!("a client with the wrong secret was served"),
    }

    config.auth = None;
    match round_trip(&config, 1) {
        Err(error) => assert!(
            error.to_string().contains("requires authentication"),
            "{error}"
        ),
        Ok(()) => panic!("a client without the secret was served"),
    }

    // A client that skips the handshake and sends a large frame of events is told why, even
    // though most of its frame is never read (closing on it unread would reset the connection).
    // Several MiB, more than the sockets buffer: without the drain the write fails with a reset.
    let mut events = FrameBuilder::new();
    for frame in 0..64 {
        events.begin(FrameKind::Events);
        for seq in 0..1000 {
            events.push(&create_hunt(frame * 1000 + seq)).unwrap();
        }
        events.finish(0);
    }
    assert!(events.len() > 4 << 20, "{} bytes", events.len());
    let text = error_text_for(node.addr, events.bytes());
    assert!(text.contains("requires authentication"), "{text}");

    let report = node.stop();
    remove_secret_file(&secret_path);
    let failed: u64 = report
        .lines()
        .filter_map(|line| {
            let (before, _) = line.split_once(" failed authentication")?;
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(failed, 3, "{report}");
}

#[test]
fn a_client_with_a_secret_is_told_when_the_node_asks_for_none() {
    let node = in_process_node(1, |_| {});
    let mut config = ClientConfig::new(node.addr());
    config.auth = Some(Arc::new(
        AuthSecret::from_file_contents(SECRET.as_bytes()).unwrap(),
    ));
    config.connect_timeout = Duration::from_millis(500);
    match round_trip(&config, 1) {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains("did not answer within 500 ms")
                    && text.contains("--auth-secret-file"),
                "{text}"
            );
            assert!(!text.contains("os error"), "{text}");
        }
        Ok(()) => panic!("the client authenticated against a node without a secret"),
    }
    node.stop();
}

#[test]
fn a_connection_that_never_authenticates_is_closed_after_the_handshake_limit() {
    let node = in_process_node(1, |config| {
        config.auth = Some(AuthSecret::from_file_contents(SECRET.as_bytes()).unwrap());
    });
    let mut silent = TcpStream::connect(node.addr()).unwrap();
    let limit = Duration::from_millis(trove::constants::AUTH_HANDSHAKE_MS_MAX);
    silent.set_read_timeout(Some(limit * 3)).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    // The challenge arrives, then nothing, then the node closes: read to the end.
    let ended = silent.read_to_end(&mut received);
    let waited = started.elapsed();
    assert!(
        ended.is_ok(),
        "the node kept the connection open: {ended:?}"
    );
    assert!(
        waited >= limit && waited < limit * 3,
        "closed after {waited:?}"
    );
    match decode_frame(&received) {
        Ok(Decoded::Frame { header, .. }) => assert_eq!(header.kind, FrameKind::AuthChallenge),
        other => panic!("expected a challenge first, got {other:?}"),
    }
    let report = node.stop();
    assert_eq!(report.shards[0].connections_unauthenticated, 1);
}

// ---- a port another process serves ----------------------------------------------------

#[test]
fn a_second_node_on_the_same_port_exits_2() {
    let port = free_port().to_string();
    let first = ChildNode::start(&[
        "--port",
        &port,
        "--shard-port-base",
        &free_port().to_string(),
        "--shards",
        "1",
    ]);
    // Its own shard ports are free: only the shared port is taken, and SO_REUSEPORT would
    // have let it join the first node's group.
    let output = run_bounded(
        trove().args([
            "node",
            "--port",
            &port,
            "--shard-port-base",
            &free_port().to_string(),
            "--shards",
            "1",
        ]),
        COMMAND_WAIT,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("port {port} is already in use")),
        "{text}"
    );
    assert_eq!(text.trim().lines().count(), 1, "one sentence: {text}");
    first.stop();
}

// ---- error text -----------------------------------------------------------------------

/// Sends `frame` on a fresh connection and returns the text of the error frame that answers it.
fn error_text_for(addr: SocketAddr, frame: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(frame).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let mut aligned: AlignedVec = AlignedVec::new();
    aligned.extend_from_slice(&received);
    let mut at = 0;
    while let Ok(Decoded::Frame {
        header,
        body,
        frame_len,
    }) = decode_frame(&aligned[at..])
    {
        if header.kind == FrameKind::Error {
            let records = Records::parse(FrameKind::Error, body).unwrap();
            let record = records.iter().next().unwrap();
            let mut owned: AlignedVec = AlignedVec::new();
            owned.extend_from_slice(record);
            return access_record::<ArchivedErrorMessage>(0, &owned)
                .unwrap()
                .message
                .to_string();
        }
        at += frame_len;
    }
    panic!("no error frame in {} bytes", received.len());
}

#[test]
fn no_error_frame_sent_for_a_corrupted_event_holds_an_address() {
    let node = in_process_node(1, |_| {});
    let event = Event {
        hunt: HuntId(1),
        player: PlayerId(2),
        client_session: 0,
        client_seq: 3,
        client_ts: 4,
        kind: EventKind::Claim {
            treasure: TreasureId(5),
            code: "a code long enough to be stored out of line".into(),
        },
    };
    let mut archive: AlignedVec = AlignedVec::new();
    let (start, len) = archive_aligned(&mut archive, &event).unwrap();
    let record = archive[start..start + len].to_vec();
    let mut checked = 0;
    for at in 0..len {
        for value in [0x01u8, 0x80, 0xff] {
            let mut corrupted = record.clone();
            corrupted[at] = value;
            if access_record::<ArchivedEvent>(0, &aligned(&corrupted)).is_ok() {
                continue;
            }
            let mut frame = FrameBuilder::new();
            frame.begin(FrameKind::Events);
            frame.push_archived(&corrupted).unwrap();
            frame.finish(0);
            let text = error_text_for(node.addr(), frame.bytes());
            assert!(!text.contains("0x"), "byte {at} = {value}: {text}");
            checked += 1;
        }
    }
    // And a header with reserved bits set (its checksum made right), whose value is named.
    let mut frame = FrameBuilder::new();
    frame.single(FrameKind::Events, 0, Some(&event)).unwrap();
    let mut frame = frame.bytes().to_vec();
    frame[6] = 0xff;
    let header_hash = xxhash_rust::xxh3::xxh3_64(&frame[..24]);
    frame[24..32].copy_from_slice(&header_hash.to_le_bytes());
    let text = error_text_for(node.addr(), &frame);
    assert!(text.contains("flags") && !text.contains("0x"), "{text}");
    assert!(checked > 10, "only {checked} malformed frames were tried");
    node.stop();
}

fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut buf: AlignedVec = AlignedVec::new();
    buf.extend_from_slice(bytes);
    buf
}

// ---- trove bench --target -------------------------------------------------------------

#[test]
fn bench_target_refuses_the_embedded_nodes_flags() {
    for flag in [
        vec!["--fail-fast"],
        vec!["--partitions", "64"],
        vec!["--node-cpus", "0"],
    ] {
        let output = run_bounded(
            trove()
                .args(["bench", "--target", "127.0.0.1:9", "--quiet"])
                .args(&flag),
            COMMAND_WAIT,
        );
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{flag:?}: {text}");
        assert!(text.contains(flag[0]), "{flag:?}: {text}");
    }
}

/// A fake node: answers the first connection's map request (one shard, its own port), then
/// reads nothing more from anyone, like a shard that stopped reading.
fn stalled_node(answer_map: bool) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    if answer_map && held.is_empty() {
                        stream.set_nonblocking(false).unwrap();
                        let mut request = [0u8; 48];
                        let _ = stream.read_exact(&mut request);
                        let map = PartitionMap::round_robin(64, 1).unwrap();
                        let mut reply = FrameBuilder::new();
                        reply
                            .single(
                                FrameKind::MapReply,
                                map.epoch().get(),
                                Some(&map.to_message(trove::core::ids::NodeId(0), &[addr.port()])),
                            )
                            .unwrap();
                        stream.write_all(reply.bytes()).unwrap();
                    }
                    held.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (addr, handle)
}

#[test]
fn bench_target_gives_up_on_a_node_that_does_not_answer() {
    for (answer_map, expected) in [
        (false, "did not send its partition map"),
        (true, "no reply from the node"),
    ] {
        let (addr, _fake) = stalled_node(answer_map);
        let output = run_bounded(
            trove().args([
                "bench",
                "--target",
                &addr.to_string(),
                "--quiet",
                "--hunts",
                "10",
                "--players",
                "2",
                "--duration",
                "1",
            ]),
            Duration::from_secs(35),
        );
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains("os error 11"), "{text}");
    }
}

// ---- usage errors and the stop report -------------------------------------------------

#[test]
fn node_usage_errors_exit_2_and_name_the_right_bound() {
    for (flags, expected) in [
        (
            vec!["--connection-events-max", "99999"],
            "--connection-events-max 99999",
        ),
        (vec!["--port", "65535"], "past 65535"),
        (
            vec!["--auth-secret-file", "/nonexistent/trove-secret"],
            "cannot read it",
        ),
        // TEST-NET-1: never an address of this host, so nothing is bound.
        (
            vec!["--listen", "192.0.2.1", "--insecure-no-auth", "--port", "0"],
            "not an address of this host",
        ),
    ] {
        let output = run_bounded(
            trove().args(["node", "--shards", "1"]).args(&flags),
            COMMAND_WAIT,
        );
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {text}");
        assert!(text.contains(expected), "{flags:?}: {text}");
    }
    let short = secret_file("short", "short\n");
    let output = run_bounded(
        trove().args([
            "node",
            "--shards",
            "1",
            "--auth-secret-file",
            short.to_str().unwrap(),
        ]),
        COMMAND_WAIT,
    );
    remove_secret_file(&short);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("at least 16"),
        "{}",
        stderr(&output)
    );
}

/// A one-shard `trove node` that serves at most `max` connections from one address.
fn node_allowing_per_source(max: usize) -> ChildNode {
    let max = max.to_string();
    let per_source = ["--connections-per-source-max", max.as_str()];
    ChildNode::start(&[&["--port", "0", "--shards", "1"][..], &per_source].concat())
}

#[test]
fn the_stop_report_counts_connections_evicted_when_full() {
    let slots = trove::constants::CONNECTIONS_PER_SHARD_MAX;
    // Every slot from one address: lift the per-source limit, which would refuse them first.
    let node = node_allowing_per_source(slots);
    let mut held = Vec::with_capacity(slots);
    for _ in 0..slots {
        held.push(TcpStream::connect(node.addr).unwrap());
    }
    // One more than the shard has slots for: the longest-idle connection gives way, and the
    // newcomer is served.
    let mut stream = TcpStream::connect(node.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut map_request = FrameBuilder::new();
    map_request
        .single::<()>(FrameKind::MapRequest, 0, None)
        .unwrap();
    stream.write_all(map_request.bytes()).unwrap();
    let mut first = [0u8; 1];
    stream
        .read_exact(&mut first)
        .expect("a newcomer to a full shard is served");
    drop(stream);
    drop(held);
    let report = node.stop();
    assert!(report.contains("0 refused when full"), "{report}");
    assert!(report.contains("1 evicted when full"), "{report}");
}

// ---- load shedding, per-source limits, slow frames, stop, brute force (issue 12) -------

/// What a raw client reads from a node: replies (sequence number, timestamp, outcome as its
/// debug text), error frames, or the end of the stream.
enum Received {
    Reply { seq: u64, ts: u64, outcome: String },
    Error { code: u16, message: String },
    End,
}

/// Reads frames off a raw socket, one message at a time.
struct FrameReader {
    stream: TcpStream,
    buf: AlignedVec,
    /// Where the first frame not yet parsed starts (a multiple of 16: frames are).
    at: usize,
    queued: std::collections::VecDeque<Received>,
}

impl FrameReader {
    fn new(stream: TcpStream) -> FrameReader {
        FrameReader {
            stream,
            buf: AlignedVec::new(),
            at: 0,
            queued: Default::default(),
        }
    }

    /// The next message; `End` at the end of the stream, a reset, or a read timeout.
    fn next(&mut self) -> Received {
        loop {
            if let Some(message) = self.queued.pop_front() {
                return message;
            }
            if !self.parse_one() {
                let mut chunk = [0u8; 64 * 1024];
                match self.stream.read(&mut chunk) {
                    // An in-process node's threads take signals; this thread may see EINTR.
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(0) | Err(_) => return Received::End,
                    Ok(len) => self.buf.extend_from_slice(&chunk[..len]),
                }
            }
        }
    }

    /// Moves one whole frame from the buffer into the queue; false if there is none.
    fn parse_one(&mut self) -> bool {
        let Ok(Decoded::Frame {
            header,
            body,
            frame_len,
        }) = decode_frame(&self.buf[self.at..])
        else {
            if self.at > 0 {
                // Keep the partial frame at the front, aligned as the buffer is.
                let rest = self.buf[self.at..].to_vec();
                self.buf.clear();
                self.buf.extend_from_slice(&rest);
                self.at = 0;
            }
            return false;
        };
        match header.kind {
            FrameKind::Replies => {
                let records = Records::parse(header.kind, body).unwrap();
                for (index, record) in records.iter().enumerate() {
                    let reply =
                        access_record::<trove::core::message::ArchivedReply>(index as u32, record)
                            .unwrap();
                    let outcome = match reply.outcome {
                        trove::core::message::ArchivedOutcome::Busy => "Busy".to_string(),
                        ref other => format!("{other:?}"),
                    };
                    self.queued.push_back(Received::Reply {
                        seq: reply.client_seq.to_native(),
                        ts: reply.client_ts.to_native(),
                        outcome,
                    });
                }
            }
            FrameKind::Error => {
                let records = Records::parse(header.kind, body).unwrap();
                let record = records.iter().next().unwrap();
                let error = access_record::<ArchivedErrorMessage>(0, record).unwrap();
                self.queued.push_back(Received::Error {
                    code: error.code.to_native(),
                    message: error.message.to_string(),
                });
            }
            _ => {}
        }
        self.at += frame_len;
        true
    }
}

/// Asserts that the next thing `reader` reads is an error frame with `code` whose message
/// names each of `words`; `who` is whom the frame should have told.
fn assert_error_naming(reader: &mut FrameReader, code: u16, words: &[&str], who: &str) {
    match reader.next() {
        Received::Error { code: got, message } => {
            assert_eq!(got, code, "{who}: {message}");
            assert!(
                words.iter().all(|word| message.contains(word)),
                "{who}: {message} does not name {words:?}"
            );
        }
        _ => panic!("{who} was closed without a reason"),
    }
}

fn events_frame(events: &[Event]) -> Vec<u8> {
    let mut frame = FrameBuilder::new();
    frame.begin(FrameKind::Events);
    for event in events {
        frame.push(event).unwrap();
    }
    frame.finish(0);
    frame.bytes().to_vec()
}

fn join_event(seq: u64, ts: u64) -> Event {
    Event {
        hunt: HuntId(seq % 1000),
        player: PlayerId(seq),
        client_session: 0,
        client_seq: seq,
        client_ts: ts,
        kind: EventKind::Join,
    }
}

/// The `fraction` percentile of sorted latencies; none at all is as bad as it gets.
fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return u64::MAX / 4;
    }
    sorted[((sorted.len() - 1) as f64 * fraction) as usize]
}

/// What one overload run saw: the latencies of events served (not `Busy`) that were sent
/// after the warm-up, sorted; the `Busy` answers; events sent and answered; the stop report.
struct OverloadRun {
    latencies_ns: Vec<u64>,
    busy: u64,
    sent: u64,
    answered: u64,
    report: trove::node::NodeReport,
}

/// Offers one shard that applies at most 5,000 events a second (it spins 200 µs for each)
/// 50,000 a second for three seconds, from one client that reads every reply. With
/// `wait_for_all`, the node stops once every event is answered; else at once.
fn overload(fail_fast: bool, wait_for_all: bool, warm_up: Duration) -> OverloadRun {
    let node = in_process_node(1, |config| {
        config.runtime.fail_fast = fail_fast;
        config.runtime.apply_delay = Some(trove::runtime::config::ApplyDelay {
            shard: trove::core::ids::ShardId(0),
            per_event: Duration::from_micros(200),
        });
    });
    let stream = TcpStream::connect(node.addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let (offered_per_s, run) = (50_000u64, Duration::from_secs(3));
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        while start.elapsed() < run {
            let due = start.elapsed().as_nanos() as u64 * offered_per_s / 1_000_000_000;
            while sent < due {
                let now = start.elapsed().as_nanos() as u64;
                // 25 events a frame: 5 ms of applying, the shard's unit of admission.
                let count = (due - sent).min(25);
                let events: Vec<Event> = (sent..sent + count)
                    .map(|seq| join_event(seq, now))
                    .collect();
                writer.write_all(&events_frame(&events)).unwrap();
                sent += count;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    });
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut reader = FrameReader::new(stream);
    let counter = answered.clone();
    let collector = std::thread::spawn(move || {
        let (mut latencies_ns, mut busy) = (Vec::new(), 0u64);
        loop {
            match reader.next() {
                Received::Reply { ts, outcome, .. } => {
                    if outcome.contains("Busy") {
                        busy += 1;
                    } else if ts >= warm_up.as_nanos() as u64 && !outcome.contains("ShuttingDown") {
                        latencies_ns.push(start.elapsed().as_nanos() as u64 - ts);
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Stopped before every event was read: counted, not served.
                Received::Error { .. } => {}
                Received::End => return (latencies_ns, busy),
            }
        }
    });
    let sent = sender.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while wait_for_all
        && answered.load(std::sync::atomic::Ordering::Relaxed) < sent
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    let report = node.stop();
    let (mut latencies_ns, busy) = collector.join().unwrap();
    latencies_ns.sort_unstable();
    OverloadRun {
        latencies_ns,
        busy,
        sent,
        answered,
        report,
    }
}

#[test]
fn fail_fast_at_ten_times_overload_answers_in_time_or_busy() {
    let target = trove::runtime::config::RuntimeConfig::on_cpus(vec![0]).shed_target;
    let shed = overload(true, true, Duration::from_secs(1));
    let OverloadRun {
        ref latencies_ns,
        busy,
        sent,
        ..
    } = shed;
    assert_eq!(shed.answered, sent, "every event answered, Busy or not");
    assert!(
        busy > sent / 2,
        "10x overload, yet only {busy} of {sent} Busy"
    );
    assert!(shed.report.shards[0].events_shed > 0, "{:?}", shed.report);
    assert!(
        latencies_ns.len() > 1_000,
        "only {} events served after the warm-up",
        latencies_ns.len()
    );
    // The same load on a node that queues instead (the default), in the same run: a
    // reference for how long a queue in the sockets makes events wait on this host now.
    // Every event it answered counts (those it had not answered when it stopped waited
    // longer still, and are left out).
    let queued = overload(false, false, Duration::ZERO);
    let p =
        |run: &OverloadRun, fraction| Duration::from_nanos(percentile(&run.latencies_ns, fraction));
    let (p50, p99, queued_p99) = (p(&shed, 0.5), p(&shed, 0.99), p(&queued, 0.99));
    eprintln!(
        "fail-fast served p50 {p50:?} p99 {p99:?} over {} events after the warm-up, {busy} of {sent} Busy; queueing node p99 {queued_p99:?} over {} events",
        latencies_ns.len(),
        queued.latencies_ns.len()
    );
    // Waits before reading are held near the target; the bound leaves room for the 5 ms a
    // frame takes to apply, the reply's way back and a shared, busy 2-vCPU host.
    let bound = target * 100;
    assert!(
        p99 < bound,
        "p99 of served events {p99:?} (p50 {p50:?}) is past {bound:?}; {busy} of {sent} Busy"
    );
    assert!(
        p99 * 3 < queued_p99,
        "fail-fast p99 {p99:?} is not well below the queueing node's {queued_p99:?}"
    );
}

/// A socket bound to `source` (one of 127.0.0.0/8), connected to `to`.
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from = SocketAddr::from((source, 0));
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Asks for the partition map; true if it came.
fn map_answered(stream: &mut TcpStream) -> bool {
    let mut request = FrameBuilder::new();
    request
        .single::<()>(FrameKind::MapRequest, 0, None)
        .unwrap();
    stream.write_all(request.bytes()).unwrap();
    let mut received: AlignedVec = AlignedVec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match decode_frame(&received) {
            Ok(Decoded::Frame { header, .. }) => return header.kind == FrameKind::MapReply,
            Ok(Decoded::NeedMore { .. }) => {}
            Err(_) => return false,
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(len) => received.extend_from_slice(&chunk[..len]),
        }
    }
}

#[test]
fn one_address_gets_its_share_of_connections_and_others_still_get_in() {
    let node = node_allowing_per_source(2);
    let mut first = connect_from([127, 0, 0, 2], node.addr);
    let mut second = connect_from([127, 0, 0, 2], node.addr);
    assert!(map_answered(&mut first) && map_answered(&mut second));
    let third = connect_from([127, 0, 0, 2], node.addr);
    assert_error_naming(
        &mut FrameReader::new(third),
        trove::core::codec::ERROR_CODE_CONNECTION_LIMIT,
        &["--connections-per-source-max", "2 connections"],
        "the third connection from one address",
    );
    let mut other = connect_from([127, 0, 0, 3], node.addr);
    assert!(map_answered(&mut other), "another address is served");
    assert!(map_answered(&mut first), "the first two are still served");
    drop((first, second, other));
    let report = node.stop();
    assert!(report.contains("1 refused per source"), "{report}");
    assert!(report.contains("0 refused when full"), "{report}");
}

#[test]
fn a_frame_dribbled_a_byte_a_second_is_closed_with_a_reason() {
    let limit = Duration::from_millis(500);
    let node = in_process_node(1, |config| config.runtime.frame_arrival = limit);
    let stream = TcpStream::connect(node.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let frame = events_frame(&[join_event(1, 0)]);
    let started = Instant::now();
    let dribbler = std::thread::spawn(move || {
        for byte in frame {
            if writer.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let mut reader = FrameReader::new(stream);
    assert_error_naming(
        &mut reader,
        trove::core::shard::ERROR_CODE_CONNECTION_CLOSED,
        &["--frame-arrival-ms", "500 ms"],
        "a connection dribbling a frame",
    );
    let waited = started.elapsed();
    assert!(
        waited >= limit && waited < limit * 6,
        "closed after {waited:?}"
    );
    assert!(matches!(reader.next(), Received::End));
    drop(reader);
    let _ = dribbler.join();
    let report = node.stop();
    assert_eq!(report.shards[0].connections_frame_too_slow, 1);
    assert_eq!(
        report.shards[0].socket_inflight_peak.events, 0,
        "a partial frame holds no credit"
    );
}

#[test]
fn an_idle_connection_is_told_why_it_is_closed() {
    let node = in_process_node(1, |config| {
        config.runtime.idle_timeout = Duration::from_millis(300)
    });
    let stream = TcpStream::connect(node.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = FrameReader::new(stream);
    assert_error_naming(
        &mut reader,
        trove::core::shard::ERROR_CODE_CONNECTION_CLOSED,
        &["300 ms", "--idle-timeout-ms"],
        "an idle connection",
    );
    assert!(matches!(reader.next(), Received::End));
    assert_eq!(node.stop().shards[0].connections_idle_closed, 1);
}

#[test]
fn stopping_under_load_answers_or_counts_every_event_written() {
    // A shard that applies at most 50,000 events a second, sent 60,000 as fast as the sockets
    // take them; the node stops as soon as the client has written them all, with most of
    // them still in the sockets.
    let node = in_process_node(1, |config| {
        config.runtime.apply_delay = Some(trove::runtime::config::ApplyDelay {
            shard: trove::core::ids::ShardId(0),
            per_event: Duration::from_micros(20),
        });
    });
    let stream = TcpStream::connect(node.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let total = 60_000u64;
    let mut bytes = Vec::new();
    for first in (0..total).step_by(100) {
        let events: Vec<Event> = (first..first + 100).map(|seq| join_event(seq, 0)).collect();
        bytes.extend_from_slice(&events_frame(&events));
    }
    let mut reader = FrameReader::new(stream.try_clone().unwrap());
    let collector = std::thread::spawn(move || {
        let (mut replies, mut shutting_down, mut counted, mut notices) = (0u64, 0u64, 0u64, 0);
        loop {
            match reader.next() {
                Received::Reply { outcome, .. } => {
                    replies += 1;
                    shutting_down += u64::from(outcome.contains("ShuttingDown"));
                }
                Received::Error { code, message } => {
                    assert_eq!(
                        code,
                        trove::core::shard::ERROR_CODE_SHUTTING_DOWN,
                        "{message}"
                    );
                    notices += 1;
                    counted += message
                        .split_whitespace()
                        .find_map(|word| word.parse::<u64>().ok())
                        .unwrap_or_else(|| panic!("no count in {message}"));
                }
                Received::End => return (replies, shutting_down, counted, notices),
            }
        }
    });
    let mut writer = stream;
    writer.write_all(&bytes).unwrap();
    let report = node.stop();
    let (replies, shutting_down, counted, notices) = collector.join().unwrap();
    assert_eq!(
        replies + counted,
        total,
        "{replies} replies ({shutting_down} ShuttingDown) and {counted} counted unread"
    );
    assert!(notices <= 1);
    assert!(
        counted > 0 && report.shards[0].events_applied < total,
        "the node drained everything before it stopped: nothing was left to count"
    );
    assert_eq!(
        report.shards[0].shutting_down_replies,
        shutting_down + counted
    );
}

#[test]
fn a_client_guessing_claim_codes_is_stopped_and_never_wins() {
    use trove::core::message::{Position, TreasureSpec, WaypointSpec, claim_code_hash};
    let node = in_process_node(1, |_| {});
    let stream = TcpStream::connect(node.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let hunt = HuntId(7);
    let event = |seq: u64, player: u64, kind: EventKind| Event {
        hunt,
        player: PlayerId(player),
        client_session: 0,
        client_seq: seq,
        client_ts: 0,
        kind,
    };
    let spec = HuntSpec {
        waypoints: vec![WaypointSpec {
            position: Position::default(),
            radius_m: 100,
            points: 1,
        }],
        treasures: vec![TreasureSpec {
            code_hash: claim_code_hash(b"4711"),
            points: 100,
        }],
    };
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(&events_frame(&[
            event(0, 1, EventKind::CreateHunt(spec)),
            event(1, 2, EventKind::Join),
        ]))
        .unwrap();
    // Every four-digit code in order, as one guessing player, 500 a frame.
    let guesses: Vec<Event> = (0..10_000u64)
        .map(|code| {
            event(
                2 + code,
                2,
                EventKind::Claim {
                    treasure: TreasureId(0),
                    code: format!("{code:04}"),
                },
            )
        })
        .collect();
    for chunk in guesses.chunks(500) {
        writer.write_all(&events_frame(chunk)).unwrap();
    }
    let mut reader = FrameReader::new(stream);
    let mut outcomes = std::collections::BTreeMap::new();
    while outcomes.len() < 10_002 {
        match reader.next() {
            Received::Reply { seq, outcome, .. } => {
                outcomes.insert(seq, outcome);
            }
            _ => panic!("the node ended after {} replies", outcomes.len()),
        }
    }
    assert!(outcomes[&0].contains("Accepted") && outcomes[&1].contains("Accepted"));
    let claims: Vec<&String> = outcomes.range(2..).map(|(_, outcome)| outcome).collect();
    let limit = trove::constants::CLAIM_WRONG_CODES_MAX;
    assert!(
        claims[..limit].iter().all(|o| o.contains("WrongCode")),
        "{:?}",
        &claims[..limit]
    );
    assert!(
        claims[limit..]
            .iter()
            .all(|o| o.contains("TooManyAttempts")),
        "after {limit} wrong codes, every claim (the right code, 4711, too) is refused"
    );
    assert!(!claims.iter().any(|o| o.contains("Claimed")));
    node.stop();
}
