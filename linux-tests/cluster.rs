//! A real cluster on loopback: an etcd of the test's own (temporary folder, no fsync, short
//! elections) and `trove node --cluster` processes. Membership, controller election and
//! hand-over, placement covering every partition once, a paused node going `Offline` and
//! coming back at a new epoch, an etcd outage that moves nothing, and `trove cluster up` /
//! `status`; each node's shards serving exactly the partitions the placement gives it (and
//! `Unavailable` for a paused node's); a client that knows one node served for every
//! partition over the links between nodes, and a link from another cluster refused. Each
//! test skips, saying so, when `etcd` is not installed, and stops everything
//! it started (the processes also die with the test process).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use trove::client::{ClientConfig, Incoming, connect};
use trove::cluster::coordinator::{Request, Response, WatchChange, WatchMessage};
use trove::cluster::etcd::EtcdClient;
use trove::cluster::local::{EtcdProcess, pause, signal};
use trove::cluster::placement::{OwnerState, Placement};
use trove::core::ids::{HuntId, NodeId, PartitionId, PlayerId};
use trove::core::message::{Event, EventError, EventKind, Outcome, RejectReason, Reply};
use trove::core::partition::Partitioner;

use support::cluster::{
    ClusterSpec, Nodes, answers, client_of, cluster_up_until_placed, etcd_or_skip, outcomes_from,
    stop_cluster_up, wait_for, wait_printed,
};
use support::{COMMAND_WAIT, ChildNode, installed, run_bounded, trove};

const PARTITIONS: u32 = 64;
const NAME: &str = "test";
/// This file's clusters: `NAME`, `PARTITIONS`, and a 2 s lease unless a test says otherwise.
const CLUSTER: ClusterSpec = ClusterSpec {
    name: NAME,
    partitions: PARTITIONS,
    lease_ttl_s: 2,
};

fn partitions_of(placement: &Placement, node: NodeId) -> Vec<PartitionId> {
    (0..placement.partitions())
        .map(PartitionId)
        .filter(|&p| placement.owner(p).node == node)
        .collect()
}

#[test]
fn three_nodes_register_one_becomes_controller_and_every_partition_is_placed_once() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 3);
    let (view, placement) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    assert_eq!(placement.partitions(), PARTITIONS);
    let mut owned = 0;
    for node in 1..=3 {
        let mine = partitions_of(&placement, NodeId(node)).len();
        assert!(mine > 0, "node {node} owns partitions");
        owned += mine;
    }
    assert_eq!(owned, PARTITIONS as usize, "each partition exactly once");
    let controller = view.controller.unwrap().node;
    wait_printed(&mut nodes, controller, "this node is now the controller");
    let epoch_line = format!("placement epoch {}", placement.epoch().get());
    for node in 1..=3 {
        let node = NodeId(node);
        wait_for(
            &mut nodes,
            Duration::from_secs(5),
            "placement line",
            |nodes| nodes.printed(node, &epoch_line).then_some(()),
        );
    }

    let status = run_bounded(
        trove().args([
            "cluster",
            "status",
            "--cluster",
            &etcd.endpoint(),
            "--cluster-name",
            NAME,
        ]),
        COMMAND_WAIT,
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains(&format!("controller: {controller}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "epoch {}, {PARTITIONS} partitions, 0 offline",
            placement.epoch().get()
        )),
        "{text}"
    );
    assert_eq!(text.matches("lease ").count(), 3, "{text}");
}

#[test]
fn a_paused_node_goes_offline_within_its_ttl_and_returns_at_a_new_epoch() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let ttl_s = 2;
    let mut nodes = Nodes::start(&CLUSTER.with_lease_ttl_s(ttl_s), &etcd, 3);
    let (view, before) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    let controller = view.controller.unwrap().node;
    let paused = NodeId(controller.0 % 3 + 1);
    let its = partitions_of(&before, paused);

    pause(&nodes.process(paused).child).expect("the node stops");
    let stopped = Instant::now();
    let offline = wait_for(
        &mut nodes,
        Duration::from_secs(ttl_s + 5),
        "offline",
        |_| {
            let placement = view_placement(&etcd)?;
            (placement.offline().collect::<Vec<_>>() == its).then_some(placement)
        },
    );
    let detected = stopped.elapsed();
    assert!(
        detected <= Duration::from_secs(ttl_s + 1),
        "offline after {detected:?}, more than TTL + 1 s"
    );
    for p in (0..PARTITIONS)
        .map(PartitionId)
        .filter(|p| !its.contains(p))
    {
        assert_eq!(
            offline.owner(p),
            before.owner(p),
            "{p} of a live node untouched"
        );
    }

    signal(&nodes.process(paused).child, libc::SIGCONT);
    let back = wait_for(&mut nodes, Duration::from_secs(10), "return", |_| {
        let placement = view_placement(&etcd)?;
        (placement.offline().count() == 0).then_some(placement)
    });
    for p in &its {
        let owner = back.owner(*p);
        assert_eq!(owner.node, paused, "{p} comes back to the node that has it");
        assert!(
            owner.part_epoch > offline.epoch(),
            "{p} at a new partition epoch"
        );
    }
    // It fenced itself.
    wait_printed(&mut nodes, paused, "lease lost");
}

fn view_placement(etcd: &EtcdProcess) -> Option<Placement> {
    CLUSTER
        .read_view(etcd)?
        .assignment
        .map(|placement| (*placement).clone())
}

#[test]
fn when_the_controller_is_killed_another_takes_over_and_placements_advance() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 3);
    let (view, before) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    let old = view.controller.unwrap().node;
    let its = partitions_of(&before, old);
    signal(&nodes.process(old).child, libc::SIGKILL);
    let (new, after) = wait_for(
        &mut nodes,
        Duration::from_secs(10),
        "a new controller",
        |_| {
            let view = CLUSTER.read_view(&etcd)?;
            let controller = view.controller?.node;
            let placement = view.assignment?;
            (controller != old && placement.epoch() > before.epoch())
                .then_some((controller, placement))
        },
    );
    wait_printed(&mut nodes, new, "this node is now the controller");
    assert_eq!(
        after.offline().collect::<Vec<_>>(),
        its,
        "the dead one's partitions"
    );
}

#[test]
fn an_etcd_outage_moves_nothing_and_the_nodes_carry_on_when_it_returns() {
    let Some(mut etcd) = etcd_or_skip() else {
        return;
    };
    let ttl_s = 3;
    let mut nodes = Nodes::start(&CLUSTER.with_lease_ttl_s(ttl_s), &etcd, 3);
    let (_, before) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    etcd.kill();
    for node in (1..=3).map(NodeId) {
        wait_printed(
            &mut nodes,
            node,
            "etcd unreachable, keeping the current placement",
        );
    }
    // Longer than the TTL: the nodes fence themselves, but nobody can declare them dead.
    std::thread::sleep(Duration::from_secs(ttl_s + 1));
    for node in (1..=3).map(NodeId) {
        wait_printed(&mut nodes, node, "serving nothing");
    }
    etcd.start_again().expect("etcd restarts on its data");
    for node in 1..=3 {
        let node = NodeId(node);
        wait_for(&mut nodes, Duration::from_secs(10), "etcd back", |nodes| {
            (nodes.printed(node, "etcd reachable again") && nodes.printed(node, "lease confirmed"))
                .then_some(())
        });
    }
    // Time for a keepalive round and a controller pass: still the same placement.
    std::thread::sleep(Duration::from_secs(2));
    let (_, after) = CLUSTER
        .settled_placement(&etcd, 3)
        .expect("all three nodes still registered");
    assert_eq!(after, before, "nothing moved");
    for node in 1..=3 {
        assert!(
            !nodes.printed(NodeId(node), "lease lost"),
            "node {node} kept its lease"
        );
    }
}

#[test]
fn a_watch_says_when_it_opened_then_reports_each_change_with_its_key_and_value() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let (messages_tx, messages) = flume::bounded(8);
    let endpoint = etcd.endpoint();
    let watcher = std::thread::spawn(move || {
        EtcdClient::watch_prefix(&endpoint, "/trove/watched/", 0, |message| {
            let more = !matches!(&message, WatchMessage::Changes { changes, .. }
                if matches!(changes.last(), Some(WatchChange::Delete { .. })));
            messages_tx.send(message).is_ok() && more
        })
    });
    let wait = Duration::from_secs(10);
    let Ok(WatchMessage::Started { revision: opened }) = messages.recv_timeout(wait) else {
        panic!("the watch did not say it opened");
    };
    let mut client = EtcdClient::new(vec![etcd.endpoint()], Duration::from_secs(2));
    let Ok(Response::LeaseGranted { lease, .. }) =
        client.execute(&Request::LeaseGrant { ttl_s: 60 })
    else {
        panic!("etcd granted no lease");
    };
    // Bound to a lease, so that revoking it deletes the key.
    let put = Request::Put {
        key: "/trove/watched/key".into(),
        value: b"v".to_vec(),
        lease,
    };
    let Ok(Response::Put { revision: put_at }) = client.execute(&put) else {
        panic!("etcd refused a put");
    };
    assert!(put_at > opened);
    let Ok(WatchMessage::Changes { revision, changes }) = messages.recv_timeout(wait) else {
        panic!("the watch reported no change");
    };
    assert_eq!(revision, put_at);
    let [WatchChange::Put(kv)] = &changes[..] else {
        panic!("{changes:?}");
    };
    assert_eq!(
        (kv.key.as_str(), &kv.value[..]),
        ("/trove/watched/key", &b"v"[..])
    );
    assert_eq!(kv.mod_revision, put_at);
    client.lease_revoke(lease).expect("etcd revokes the lease");
    let Ok(WatchMessage::Changes { changes, .. }) = messages.recv_timeout(wait) else {
        panic!("the watch did not report the delete");
    };
    assert!(
        matches!(&changes[..], [WatchChange::Delete { key, revision }] if key == "/trove/watched/key" && *revision > put_at),
        "{changes:?}"
    );
    watcher.join().unwrap().expect("the watch ended cleanly");
}

#[test]
fn cluster_up_runs_nodes_and_its_own_etcd_and_stops_them_on_sigterm() {
    if installed("etcd").is_none() {
        return;
    }
    let args = ["--nodes", "2", "--partitions", "16", "--lease-ttl-s", "2"];
    let (up, seen) = cluster_up_until_placed(&args, None, 2);
    let etcd_dir = seen
        .iter()
        .find_map(|line| line.split("(data in ").nth(1))
        .map(|rest| rest.trim_end_matches(')').to_owned())
        .expect("the etcd folder is printed");
    assert_eq!(
        seen.iter()
            .filter(|l| l.contains(": node ") && l.contains(" on 127.0.0.1:"))
            .count(),
        2
    );

    let (status, seen) = stop_cluster_up(up);
    assert!(status.success(), "{seen:#?}");
    assert!(seen.last().unwrap().contains("stopped"), "{seen:#?}");
    assert!(
        !std::path::Path::new(&etcd_dir).exists(),
        "etcd's folder removed"
    );
}

#[test]
fn cluster_up_without_etcd_says_how_to_install_it() {
    let empty = std::env::temp_dir().join(format!("trove-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let output = run_bounded(
        trove()
            .args(["cluster", "up", "--nodes", "1"])
            .env("PATH", &empty),
        COMMAND_WAIT,
    );
    std::fs::remove_dir(&empty).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apt-get install etcd-server"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
}

/// The first hunt of each partition, as `Join` events (client sequence = partition): a probe
/// that changes nothing, answered `UnknownHunt` where the partition is served.
fn probes() -> Vec<Event> {
    let partitioner = Partitioner::new(PARTITIONS).unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            let hunt = (0..)
                .map(HuntId)
                .find(|hunt| partitioner.partition_of(*hunt) == PartitionId(partition))
                .unwrap();
            Event {
                hunt,
                player: PlayerId(1),
                client_session: 0,
                client_seq: u64::from(partition),
                client_ts: 0,
                kind: EventKind::Join,
            }
        })
        .collect()
}

/// What a node answers for each probe under `placement`: every served partition's answer
/// (its own applied, another node's forwarded over a link and applied there), an `Offline`
/// one `Unavailable` naming it.
fn expected_outcomes(placement: &Placement, _node: NodeId) -> Vec<Outcome> {
    (0..placement.partitions())
        .map(|p| {
            let owner = placement.owner(PartitionId(p));
            if owner.state == OwnerState::Offline {
                Outcome::Unavailable { partition: p }
            } else {
                Outcome::Rejected {
                    reason: RejectReason::UnknownHunt,
                }
            }
        })
        .collect()
}

#[test]
fn shards_serve_the_placement_they_are_given_and_a_paused_nodes_partitions_are_unavailable() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let ttl_s = 2;
    let mut nodes = Nodes::start(&CLUSTER.with_lease_ttl_s(ttl_s), &etcd, 3);
    let (view, placement) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    let probes = probes();
    for node in (1..=3).map(NodeId) {
        let addr = nodes.process(node).addr.clone();
        let expected = expected_outcomes(&placement, node);
        // Until its shard installs the placement and its lease, a node answers Unavailable.
        wait_for(
            &mut nodes,
            Duration::from_secs(10),
            "served placement",
            |_| (outcomes_from(&addr, &probes)? == expected).then_some(()),
        );
    }

    let controller = view.controller.unwrap().node;
    let paused = NodeId(controller.0 % 3 + 1);
    let asked = NodeId(paused.0 % 3 + 1);
    let its = partitions_of(&placement, paused);
    pause(&nodes.process(paused).child).expect("the node stops");
    let offline = wait_for(
        &mut nodes,
        Duration::from_secs(ttl_s + 5),
        "offline",
        |_| {
            let placement = view_placement(&etcd)?;
            (placement.offline().collect::<Vec<_>>() == its).then_some(placement)
        },
    );
    // Another node answers Unavailable for the paused node's partitions, at once, and serves
    // or redirects the rest as before.
    let addr = nodes.process(asked).addr.clone();
    let expected = expected_outcomes(&offline, asked);
    assert!(
        its.iter()
            .all(|p| expected[p.index()] == Outcome::Unavailable { partition: p.0 })
    );
    wait_for(&mut nodes, Duration::from_secs(10), "unavailable", |_| {
        let started = Instant::now();
        let outcomes = outcomes_from(&addr, &probes)?;
        assert!(
            started.elapsed() < Duration::from_secs(ttl_s),
            "answered at once, not after a timeout"
        );
        (outcomes == expected).then_some(())
    });

    // Resumed, the paused node has fenced itself: it answers Unavailable (or redirects to the
    // same owners) until the controller confirms its partitions at a new epoch, then serves.
    signal(&nodes.process(paused).child, libc::SIGCONT);
    let back = wait_for(&mut nodes, Duration::from_secs(10), "return", |_| {
        let placement = view_placement(&etcd)?;
        (placement.offline().count() == 0).then_some(placement)
    });
    let addr = nodes.process(paused).addr.clone();
    let expected = expected_outcomes(&back, paused);
    wait_for(&mut nodes, Duration::from_secs(10), "served again", |_| {
        let outcomes = outcomes_from(&addr, &probes)?;
        for (p, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
            // Fenced, or its link to an owner not yet open again.
            let unavailable = *got
                == Outcome::Unavailable {
                    partition: p as u32,
                };
            assert!(
                got == want || unavailable,
                "partition {p}: the resumed node answered {got:?}, expected {want:?} or Unavailable"
            );
        }
        (outcomes == expected).then_some(())
    });
}

/// Sends `events` to the node at `addr` on one connection and returns the replies in the
/// order they arrived; `None` when the node did not answer every one within `limit`.
fn replies_in_order(addr: &str, events: &[Event], limit: Duration) -> Option<Vec<Reply>> {
    let mut config = ClientConfig::new(addr.parse().unwrap());
    config.shard_aware = false;
    let (mut sender, mut receiver) = connect(&config).ok()?;
    for event in events {
        sender.send(event).ok()?;
    }
    sender.flush().ok()?;
    let mut replies = Vec::new();
    let deadline = Instant::now() + limit;
    while replies.len() < events.len() {
        let left = deadline.checked_duration_since(Instant::now())?;
        let Ok(Incoming::Replies(frame)) = receiver.recv_timeout(left) else {
            return None;
        };
        for reply in frame.replies() {
            replies.push(rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap());
        }
    }
    drop(sender);
    Some(replies)
}

/// Per partition: a new hunt, a player joining it twice, its leaderboard; `rounds` times
/// over every partition, so later rounds meet the hunts of the first.
fn link_workload(rounds: u64) -> Vec<Event> {
    let partitioner = Partitioner::new(PARTITIONS).unwrap();
    let hunts: Vec<HuntId> = (0..PARTITIONS)
        .map(|partition| {
            (0..)
                .map(HuntId)
                .find(|hunt| partitioner.partition_of(*hunt) == PartitionId(partition))
                .unwrap()
        })
        .collect();
    let mut events = Vec::new();
    for round in 0..rounds {
        for &hunt in &hunts {
            for kind in [
                EventKind::CreateHunt(Default::default()),
                EventKind::Join,
                EventKind::Join,
                EventKind::Leaderboard { top_k: 3 },
            ] {
                events.push(Event {
                    hunt,
                    player: PlayerId(round + 2),
                    client_session: 0,
                    client_seq: events.len() as u64,
                    client_ts: 0,
                    kind,
                });
            }
        }
    }
    events
}

/// The numbers in a node's stop-report line "links: S events sent (…), R received (…)",
/// summed over its shards: (sent, received). SIGTERMs the node and reads until it exits.
fn stop_and_read_link_counts(nodes: &mut Nodes, node: NodeId) -> (u64, u64) {
    signal(&nodes.process(node).child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines = Vec::new();
    let index = node.0 as usize - 1;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match nodes.nodes[index]
            .lines
            .recv_timeout(left.min(Duration::from_millis(200)))
        {
            Ok(line) => lines.push(line),
            Err(flume::RecvTimeoutError::Disconnected) => break,
            Err(flume::RecvTimeoutError::Timeout) => {
                assert!(Instant::now() < deadline, "node {} did not stop", node.0);
            }
        }
    }
    let mut counts = (0, 0);
    for line in lines
        .iter()
        .filter_map(|line| line.trim().strip_prefix("links: "))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        counts.0 += words[0].parse::<u64>().unwrap();
        let received = words.iter().position(|word| *word == "received").unwrap();
        counts.1 += words[received - 1].parse::<u64>().unwrap();
    }
    counts
}

#[test]
fn a_client_that_knows_one_node_is_served_for_every_partition_over_links() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 3);
    let (_, placement) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    let asked = NodeId(1);
    let addr = nodes.process(asked).addr.clone();
    let probes = probes();
    let expected = expected_outcomes(&placement, asked);
    wait_for(
        &mut nodes,
        Duration::from_secs(10),
        "served over links",
        |_| (outcomes_from(&addr, &probes)? == expected).then_some(()),
    );

    let events = link_workload(3);
    let replies = replies_in_order(&addr, &events, Duration::from_secs(20))
        .expect("every event answered in time");
    let single = ChildNode::start(&[
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--shards",
        "1",
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
    let reference = replies_in_order(&single.addr.to_string(), &events, Duration::from_secs(20))
        .expect("the single node answers every event");

    // Every event answered exactly once, with a single node's outcome.
    let mut answered = vec![None; events.len()];
    for reply in &replies {
        let slot = &mut answered[reply.client_seq as usize];
        assert!(slot.is_none(), "event {} answered twice", reply.client_seq);
        *slot = Some(reply.outcome.clone());
    }
    let mut want = vec![None; events.len()];
    for reply in &reference {
        want[reply.client_seq as usize] = Some(reply.outcome.clone());
    }
    assert_eq!(answered, want);
    // In order per partition.
    let partitioner = Partitioner::new(PARTITIONS).unwrap();
    let mut last_seq = std::collections::HashMap::new();
    for reply in &replies {
        let partition = partitioner.partition_of(events[reply.client_seq as usize].hunt);
        if let Some(previous) = last_seq.insert(partition, reply.client_seq) {
            assert!(
                previous < reply.client_seq,
                "partition {partition:?} out of order"
            );
        }
    }

    // The asked node forwarded everything it does not own over its links, and the others
    // received exactly what it sent.
    let elsewhere = events
        .iter()
        .filter(|event| placement.owner(partitioner.partition_of(event.hunt)).node != asked)
        .count() as u64;
    let (sent, received_by_asked) = stop_and_read_link_counts(&mut nodes, asked);
    assert!(
        sent >= elsewhere,
        "{sent} events sent over links, {elsewhere} owned elsewhere"
    );
    assert_eq!(
        received_by_asked, 0,
        "nobody forwards to node 1: clients know only it"
    );
    let mut received = 0;
    for node in [NodeId(2), NodeId(3)] {
        let (sent_by_other, received_by_other) = stop_and_read_link_counts(&mut nodes, node);
        assert_eq!(sent_by_other, 0);
        received += received_by_other;
    }
    assert_eq!(
        received, sent,
        "every event sent over a link was received once"
    );
}

#[test]
fn a_link_hello_from_another_cluster_is_refused_with_the_reason() {
    use std::io::{Read, Write};
    use trove::core::codec::{Decoded, FrameBuilder, FrameKind, ValidatedFrame, decode_frame};
    use trove::core::message::{ArchivedErrorMessage, LinkHello};
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 2);
    wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 2)
    });
    let addr = nodes.process(NodeId(1)).addr.clone();
    let hello = LinkHello {
        cluster: "another".into(),
        node: 2,
        shard: 0,
        epoch: 1,
    };
    let mut frames = FrameBuilder::new();
    frames
        .single(FrameKind::LinkHello, 1, Some(&hello))
        .unwrap();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(frames.bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&answer);
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(&aligned) else {
        panic!("an error frame, got {} bytes", answer.len());
    };
    assert_eq!(header.kind, FrameKind::Error);
    let message = ValidatedFrame::<ArchivedErrorMessage>::validate(header.kind, body)
        .unwrap()
        .first()
        .unwrap()
        .get()
        .message
        .to_string();
    assert!(
        message.contains("cluster \"test\", not \"another\""),
        "{message}"
    );
}

/// Sends `events` to the node at `addr` and returns each one's outcome by client sequence,
/// waiting at most `limit`; panics if any is not answered by then (a hang) or twice.
fn all_answered_within(addr: &str, events: &[Event], limit: Duration) -> Vec<Outcome> {
    let outcomes = answers(&client_of(addr), events, limit);
    let unanswered = outcomes.iter().filter(|outcome| outcome.is_none()).count();
    assert_eq!(unanswered, 0, "events still unanswered after {limit:?}");
    outcomes.into_iter().map(Option::unwrap).collect()
}

#[test]
fn events_forwarded_to_a_paused_owner_end_unavailable_or_outcome_unknown_and_never_hang() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let ttl_s = 2;
    let mut nodes = Nodes::start(&CLUSTER.with_lease_ttl_s(ttl_s), &etcd, 3);
    let (view, placement) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 3)
    });
    let asked = NodeId(1);
    let controller = view.controller.unwrap().node;
    let paused = [NodeId(2), NodeId(3)]
        .into_iter()
        .find(|node| *node != controller)
        .unwrap();
    let addr = nodes.process(asked).addr.clone();
    let probes = probes();
    let expected = expected_outcomes(&placement, asked);
    wait_for(
        &mut nodes,
        Duration::from_secs(10),
        "served over links",
        |_| (outcomes_from(&addr, &probes)? == expected).then_some(()),
    );

    pause(&nodes.process(paused).child).expect("the node stops");
    // Sent at once: the events for the paused node's partitions go over a link nobody
    // answers; they end when the controller marks those partitions Offline (after the TTL).
    let outcomes = all_answered_within(&addr, &probes, Duration::from_secs(ttl_s + 4));
    signal(&nodes.process(paused).child, libc::SIGCONT);
    let its = partitions_of(&placement, paused);
    for (p, outcome) in outcomes.iter().enumerate() {
        if its.contains(&PartitionId(p as u32)) {
            assert!(
                *outcome
                    == Outcome::Unavailable {
                        partition: p as u32
                    }
                    || *outcome
                        == Outcome::Error {
                            error: EventError::OutcomeUnknown
                        },
                "partition {p} of the paused node answered {outcome:?}"
            );
        } else {
            assert_eq!(*outcome, expected[p], "partition {p} is served as before");
        }
    }
}
