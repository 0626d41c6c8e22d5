//! A shard's life against what clients and faults do to it: it outlives any number of
//! connections, and if it dies anyway the whole node stops at once (fail-stop) instead of
//! staying half alive.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use trove::client::{self, ClientConfig, Incoming};
use trove::core::codec::{FrameBuilder, FrameKind};
use trove::core::ids::{HuntId, PlayerId, ShardId};
use trove::core::message::{Event, EventKind, HuntSpec};
use trove::host::affinity::allowed_cpus;
use trove::node::{Node, NodeConfig};
use trove::runtime::executors::EXIT_SHARD_DIED;

#[path = "support/mod.rs"]
mod support;

use support::{COMMAND_WAIT, run_bounded};

/// glommio 0.9 counts a task's wakers in 16 bits: 32,767 re-polls of one pending I/O future
/// panic its shard. A few hundred past that proves the node does not re-poll on closes.
const CONNECTIONS: usize = 33_000;

fn one_cpu() -> Vec<usize> {
    allowed_cpus().into_iter().take(1).collect()
}

/// Opens a connection, has the shard answer a map request on it (so it was accepted and
/// served, and the client never outruns the listen backlog), then resets it.
fn open_serve_reset(addr: SocketAddr, map_request: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("the shard accepts");
    stream.write_all(map_request).unwrap();
    let mut first = [0u8; 1];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.read_exact(&mut first).expect("the shard answers");
    // An abortive close (RST) leaves no TIME_WAIT behind, so 33,000 of them fit the
    // ephemeral port range.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Sends a few events to `addr` and checks every one is answered.
fn assert_serves(addr: SocketAddr, shard_aware: bool) {
    let mut config = ClientConfig::new(addr);
    config.shard_aware = shard_aware;
    let (mut sender, mut receiver) = client::connect(&config).expect("the node still accepts");
    for hunt in 0..20u64 {
        sender
            .send(&Event {
                hunt: HuntId(hunt),
                player: PlayerId(1),
                client_session: 0,
                client_seq: hunt,
                client_ts: 0,
                kind: EventKind::CreateHunt(HuntSpec::default()),
            })
            .unwrap();
    }
    sender.flush().unwrap();
    let mut answered = 0;
    while answered < 20 {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Incoming::Replies(frame)) => answered += frame.replies().count(),
            other => panic!("no replies from {addr}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn a_shard_outlives_more_connections_than_its_waker_count_allows() {
    let node = Node::start(&NodeConfig::loopback(one_cpu())).expect("the node starts");
    let mut map_request = FrameBuilder::new();
    map_request
        .single::<()>(FrameKind::MapRequest, 0, None)
        .unwrap();
    // The shard's own port stays idle with its accept pending while every connection on the
    // shared port opens and closes: each close used to re-poll that accept.
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        open_serve_reset(node.addr(), map_request.bytes());
    }
    eprintln!(
        "{CONNECTIONS} connections opened, served and reset in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_serves(node.shard_addrs()[0], false);
    assert_serves(node.addr(), true);
    let report = node.stop();
    assert!(
        report.shards[0].connections_accepted >= CONNECTIONS as u64,
        "{}",
        report.describe()
    );
}

/// Set in the child process that runs a node whose shard dies.
const CHILD: &str = "TROVE_TEST_SHARD_DIES";

#[test]
fn a_dead_shard_stops_the_whole_node_with_one_line_and_a_nonzero_exit() {
    if std::env::var_os(CHILD).is_some() {
        let mut config = NodeConfig::loopback(one_cpu());
        config.runtime.panic_shard = Some(ShardId(0));
        let _node = Node::start(&config).expect("the node starts");
        std::thread::sleep(Duration::from_secs(20));
        // Still alive: the fail-stop did not happen. The parent sees exit status 0.
        std::process::exit(0);
    }
    let started = Instant::now();
    let output = run_bounded(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_dead_shard_stops_the_whole_node_with_one_line_and_a_nonzero_exit",
                "--nocapture",
            ])
            .env(CHILD, "1"),
        COMMAND_WAIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_SHARD_DIED), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the node lingered after its shard died"
    );
    let line = stderr
        .lines()
        .find(|line| line.starts_with("trove: shard 0 died:"))
        .unwrap_or_else(|| panic!("no fail-stop line in:\n{stderr}"));
    assert!(line.contains("injected fault"), "{line}");
}
