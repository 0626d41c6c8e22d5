//! The engine over real loopback sockets: a node, clients, and everything between.

use std::collections::HashMap;
use std::time::Duration;

use trove::client::{self, ClientConfig, Incoming};
use trove::core::ids::{HuntId, PlayerId, TreasureId};
use trove::core::message::{
    ArchivedOutcome, Event, EventKind, HuntSpec, TreasureSpec, claim_code_hash,
};
use trove::net::{Node, NodeConfig};
use trove::runtime::config::allowed_cpus;

fn two_shards() -> Vec<usize> {
    let cpus = allowed_cpus();
    vec![cpus[0], *cpus.get(1).unwrap_or(&cpus[0])]
}

fn event(seq: u64, hunt: u64, player: u64, kind: EventKind) -> Event {
    Event {
        hunt: HuntId(hunt),
        player: PlayerId(player),
        client_seq: seq,
        client_ts: seq,
        kind,
    }
}

#[test]
fn smoke() {
    let node = Node::start(&NodeConfig::loopback(two_shards())).expect("node starts");
    let mut config = ClientConfig::new(node.addr());
    config.shard_aware = false;
    let (mut sender, mut receiver) = client::connect(&config).expect("client connects");
    let spec = HuntSpec {
        waypoints: vec![],
        treasures: vec![TreasureSpec {
            code_hash: claim_code_hash(b"gold"),
            points: 5,
        }],
    };
    let mut seq = 0;
    for hunt in 0..20 {
        sender
            .send(&event(seq, hunt, 0, EventKind::CreateHunt(spec.clone())))
            .unwrap();
        seq += 1;
        sender.send(&event(seq, hunt, 1, EventKind::Join)).unwrap();
        seq += 1;
        sender
            .send(&event(
                seq,
                hunt,
                1,
                EventKind::Claim {
                    treasure: TreasureId(0),
                    code: "gold".into(),
                },
            ))
            .unwrap();
        seq += 1;
    }
    sender.flush().unwrap();
    let mut outcomes = HashMap::new();
    while outcomes.len() < seq as usize {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Incoming::Replies(frame)) => {
                for reply in frame.replies() {
                    outcomes.insert(reply.client_seq.to_native(), format!("{:?}", reply.outcome));
                }
            }
            Ok(Incoming::NodeError { message, .. }) => panic!("node error {message}"),
            Ok(Incoming::Closed { error, .. }) => panic!("closed {error:?}"),
            Err(error) => panic!("{error:?} with {} of {seq} replies", outcomes.len()),
        }
    }
    for s in (2..seq).step_by(3) {
        assert!(outcomes[&s].contains("Claimed"), "{}", outcomes[&s]);
    }
    let _ = ArchivedOutcome::Busy;
    sender.finish().unwrap();
    let report = node.stop();
    let forwarded: u64 = report.shards.iter().map(|s| s.events_forwarded).sum();
    assert!(forwarded > 0);
}
