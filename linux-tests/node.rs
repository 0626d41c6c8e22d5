//! `trove node` as an operator runs it: it serves until SIGTERM or SIGINT and then stops
//! cleanly, and on a host that cannot run it, it says what to change instead of panicking.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use trove::client::{self, ClientConfig, Incoming};
use trove::constants::{PARTITIONS_DEFAULT, node_memory_bytes_max};
use trove::core::ids::{HuntId, PlayerId};
use trove::core::message::{Event, EventKind, HuntSpec};

use support::{COMMAND_WAIT, ChildNode, run_bounded, trove, trove_binary};

#[test]
fn a_node_serves_until_sigterm_then_stops_cleanly() {
    let node = ChildNode::start(&["--listen", "127.0.0.1", "--port", "0", "--shards", "2"]);
    let addr = node.addr;
    let (mut sender, mut receiver) = client::connect(&ClientConfig::new(addr)).unwrap();
    for hunt in 0..50u64 {
        let kind = EventKind::CreateHunt(HuntSpec::default());
        sender
            .send(&Event {
                hunt: HuntId(hunt),
                player: PlayerId(1),
                client_session: 0,
                client_seq: hunt,
                client_ts: 0,
                kind,
            })
            .unwrap();
    }
    sender.flush().unwrap();
    let mut answered = 0;
    while answered < 50 {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Incoming::Replies(frame)) => answered += frame.replies().count(),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }
    // One thread per shard carries its name; its thread of glommio's blocking pool has its own.
    let threads = thread_names(node.pid());
    for shard in 0..2 {
        let named = |prefix: &str| {
            let prefix = format!("{prefix}{shard}");
            let name_is =
                |name: &&String| *name == &prefix || name.starts_with(&format!("{prefix}-"));
            threads.iter().filter(name_is).count()
        };
        assert_eq!(named("trove-shard-"), 1, "{threads:?}");
        assert_eq!(named("trove-files-"), 1, "{threads:?}");
    }
    // SIGTERM; panics unless the node exits with success within its bound.
    let rest = node.stop();
    assert!(rest.contains("stopping"), "{rest}");
    // The budget line states the sum in `constants` for this node's partitions and shards.
    let budget_mib = node_memory_bytes_max(PARTITIONS_DEFAULT as usize, 2).div_ceil(1 << 20);
    assert!(
        rest.lines()
            .any(|line| line
                .starts_with(&format!("trove node: worst-case memory {budget_mib} MiB ("))),
        "no budget line of {budget_mib} MiB in {rest}"
    );
    let applied: u64 = rest
        .lines()
        .filter_map(|line| {
            line.split(": ")
                .nth(1)?
                .split(" events applied")
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        applied, 50,
        "the shards' report does not add up to the events sent:\n{rest}"
    );
}

/// The names (`comm`) of process `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map_while(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn a_memlock_limit_too_low_is_explained_not_panicked() {
    for tool in ["node --port 0 --metrics-listen off", "bench --duration 1"] {
        let output = run_bounded(
            Command::new("sh")
                .arg("-c")
                .arg(format!("ulimit -l 64 && exec \"$0\" {tool}"))
                .arg(trove_binary()),
            COMMAND_WAIT,
        );
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{tool}: {text}");
        assert!(
            text.contains("RLIMIT_MEMLOCK is 64 KiB") && text.contains("ulimit -l"),
            "{tool}: {text}"
        );
        assert!(!text.contains("panicked"), "{tool}: {text}");
    }
}

#[test]
fn bad_node_flags_are_usage_errors() {
    for (flags, expected) in [
        (vec!["--partitions", "1000"], "power of two"),
        (vec!["--cpus", "1000"], "affinity mask"),
        (vec!["--cpus", "3-1"], "CPU list"),
    ] {
        let output = run_bounded(trove().arg("node").args(&flags), COMMAND_WAIT);
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {text}");
        assert!(text.contains(expected), "{flags:?}: {text}");
    }
}

#[test]
fn a_shard_that_does_not_yield_shows_its_stall_in_the_report() {
    use trove::core::ids::ShardId;
    use trove::host::affinity::allowed_cpus;
    use trove::node::{Node, NodeConfig};
    use trove::runtime::config::ApplyDelay;

    let mut config = NodeConfig::loopback(vec![allowed_cpus()[0]]);
    // Applying one event spins far past the 10 ms stall threshold, in one poll of the reader.
    config.runtime.apply_delay = Some(ApplyDelay {
        shard: ShardId(0),
        per_event: Duration::from_millis(400),
    });
    let node = Node::start(&config).expect("the node starts");
    let (mut sender, mut receiver) = client::connect(&ClientConfig::new(node.addr())).unwrap();
    let create = Event {
        hunt: HuntId(1),
        player: PlayerId(1),
        client_session: 0,
        client_seq: 1,
        client_ts: 0,
        kind: EventKind::CreateHunt(HuntSpec::default()),
    };
    sender.send(&create).unwrap();
    sender.flush().unwrap();
    match receiver.recv_timeout(Duration::from_secs(10)) {
        Ok(Incoming::Replies(frame)) => assert_eq!(frame.replies().count(), 1),
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    drop((sender, receiver));
    let report = node.stop();
    let stalls = report.shards[0].stalls;
    assert!(stalls.count >= 1, "{stalls:?}");
    // The poll lasted at least the 400 ms spin, 390 ms past the threshold.
    assert!(stalls.worst_overage_ns >= 250_000_000, "{stalls:?}");
    let text = report.describe();
    assert!(text.contains(" past the stall threshold)"), "{text}");
}
