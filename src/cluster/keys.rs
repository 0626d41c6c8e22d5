//! The cluster's keys in etcd and the records stored under them, apart from the assignment
//! (see `placement`): where a node registers, the controller key, how a node describes
//! itself, and the operator's keys for live moves (`pins/<p>`, `drains/<node>`, `settings`)
//! with how each move stands (`moves/<p>`). Plain values and functions, usable on any thread.

use serde::{Deserialize, Serialize};

use crate::constants::{
    CLUSTER_NAME_BYTES_MAX, MOVE_REASON_BYTES_MAX, MOVES_INFLIGHT_DEFAULT, MOVES_INFLIGHT_MAX,
};
use crate::core::ids::{Epoch, NodeId, ShardId};

/// The etcd keys of one cluster, all under `/trove/<name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterKeys {
    prefix: String,
}

impl ClusterKeys {
    /// The keys of cluster `name`, refusing names that could escape the prefix.
    pub fn new(name: &str) -> Result<ClusterKeys, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || name.len() > CLUSTER_NAME_BYTES_MAX || !name.chars().all(allowed) {
            return Err(format!(
                "cluster name {name:?}: use 1 to {CLUSTER_NAME_BYTES_MAX} letters, digits, '-' or '_'"
            ));
        }
        Ok(ClusterKeys {
            prefix: format!("/trove/{name}/"),
        })
    }

    /// Every key of the cluster starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where `node` registers, bound to its lease.
    pub fn node(&self, node: NodeId) -> String {
        format!("{}nodes/{}", self.prefix, node.0)
    }

    /// The controller key: the controller's node record, bound to its lease.
    pub fn controller(&self) -> String {
        format!("{}controller", self.prefix)
    }

    /// The one assignment record.
    pub fn assignment(&self) -> String {
        format!("{}assignment", self.prefix)
    }

    /// The operator's chosen owner of `partition` ([`PinRecord`]), kept until replaced.
    pub fn pin(&self, partition: u32) -> String {
        format!("{}pins/{partition}", self.prefix)
    }

    /// `node` excluded from placement ([`DrainRecord`]) while it keeps that registration.
    pub fn drain(&self, node: NodeId) -> String {
        format!("{}drains/{}", self.prefix, node.0)
    }

    /// How the latest move of `partition` stands ([`MoveRecord`]).
    pub fn moves(&self, partition: u32) -> String {
        format!("{}moves/{partition}", self.prefix)
    }

    /// The operator's settings for moves ([`SettingsRecord`]).
    pub fn settings(&self) -> String {
        format!("{}settings", self.prefix)
    }

    /// What `key` is, within this cluster.
    pub fn classify(&self, key: &str) -> KeyKind {
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return KeyKind::Other;
        };
        match rest {
            "controller" => return KeyKind::Controller,
            "assignment" => return KeyKind::Assignment,
            "settings" => return KeyKind::Settings,
            _ => {}
        }
        let Some((dir, id)) = rest.split_once('/') else {
            return KeyKind::Other;
        };
        let Ok(id) = id.parse::<u32>() else {
            return KeyKind::Other;
        };
        match dir {
            "nodes" => KeyKind::Node(NodeId(id)),
            "drains" => KeyKind::Drain(NodeId(id)),
            "pins" => KeyKind::Pin(id),
            "moves" => KeyKind::Move(id),
            _ => KeyKind::Other,
        }
    }
}

/// What a key of the cluster holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Node(NodeId),
    Controller,
    Assignment,
    /// `pins/<partition>`.
    Pin(u32),
    /// `drains/<node>`.
    Drain(NodeId),
    /// `moves/<partition>`.
    Move(u32),
    Settings,
    Other,
}

/// `pins/<p>`: the operator's chosen owner of a partition. Without a shard, the node's shard
/// that already holds it (or its rendezvous shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub node: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
}

/// `drains/<node>`: the node is excluded from placement while its registration is the one it
/// had when drained (`registered_revision`), so a drained node that is stopped and started
/// again (a new registration) gets its share back without anyone deleting the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub registered_revision: u64,
}

/// `settings`: the operator's settings for live moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    /// Moves in flight at once (1 to `MOVES_INFLIGHT_MAX`).
    pub moves_max: u32,
}

impl Default for SettingsRecord {
    fn default() -> Self {
        SettingsRecord {
            moves_max: MOVES_INFLIGHT_DEFAULT,
        }
    }
}

impl SettingsRecord {
    /// Checks what `--moves-max` asks for.
    pub fn new(moves_max: u32) -> Result<SettingsRecord, String> {
        if !(1..=MOVES_INFLIGHT_MAX).contains(&moves_max) {
            return Err(format!(
                "--moves-max {moves_max}: give 1 to {MOVES_INFLIGHT_MAX} moves in flight at once"
            ));
        }
        Ok(SettingsRecord { moves_max })
    }
}

/// `moves/<p>`: how the move of a partition at partition epoch `part_epoch` (the epoch of its
/// `Migrating` entry) stands. Written by the source node's control thread (ready, refused,
/// released) and by the controller (flipped, abandoned); each keeps what the other wrote
/// before it for the same move when it saw it (the reason of an abandon, the numbers of a
/// release).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub part_epoch: u32,
    pub from: (u32, u16),
    pub to: (u32, u16),
    pub state: MoveState,
    /// Why the move was abandoned, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<String>,
    /// What the source held at the flip or abandon, once it let go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Released>,
}

/// How a move stands, latest step first written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    /// The source: the target has everything, flip now.
    Ready {
        snapshot_bytes: u64,
        events_streamed: u64,
    },
    /// The source: the move cannot go on.
    Refused { reason: String },
    /// The controller: ownership flipped to the target.
    Flipped,
    /// The controller: the source stays owner (see `MoveRecord::abandoned`).
    Abandoned,
    /// The source let go of what it held (see `MoveRecord::released`).
    Released,
}

/// What a source held at a move's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub flipped: bool,
    pub events_held: u64,
    pub pause_ns: u64,
}

impl MoveRecord {
    /// Whether this record is about the move at `part_epoch`.
    pub fn is_move(&self, part_epoch: Epoch) -> bool {
        self.part_epoch == part_epoch.get()
    }

    pub fn from(&self) -> (NodeId, ShardId) {
        (NodeId(self.from.0), ShardId(self.from.1))
    }

    pub fn to(&self) -> (NodeId, ShardId) {
        (NodeId(self.to.0), ShardId(self.to.1))
    }
}

/// `reason`, cut to `MOVE_REASON_BYTES_MAX` bytes on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(MOVE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// A record of the operator's keys, from its JSON.
pub fn decode_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("not a {what} record: {error}"))
}

/// A record as JSON.
pub fn encode_json<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("a record of plain values serializes")
}

/// How a node describes itself in its registration (`nodes/<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The host clients and other nodes reach it at (`--advertise`).
    pub address: String,
    /// The port every shard accepts on.
    pub port: u16,
    /// Shard i also listens on `shard_ports[i]`.
    pub shard_ports: Vec<u16>,
    /// trove's version on that node.
    pub version: String,
    /// Where the node serves `/metrics` (`HOST:PORT`), for `trove top --cluster`; absent when
    /// it serves none (and in records of nodes from before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl NodeInfo {
    /// How many shards the node runs.
    pub fn shards(&self) -> u16 {
        self.shard_ports.len() as u16
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a node record serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeInfo, String> {
        let info: NodeInfo =
            serde_json::from_slice(bytes).map_err(|error| format!("not a node record: {error}"))?;
        if info.shard_ports.is_empty() || info.shard_ports.len() > usize::from(u16::MAX) {
            return Err(format!(
                "a node record lists {} shard ports; a node has at least one",
                info.shard_ports.len()
            ));
        }
        Ok(info)
    }
}

/// The controller key's value: which node holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub node: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_prefix_are_refused() {
        assert!(ClusterKeys::new("hunts-eu_1").is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "a b",
            &"x".repeat(CLUSTER_NAME_BYTES_MAX + 1),
        ] {
            let error = ClusterKeys::new(bad).unwrap_err();
            assert!(error.contains("letters, digits"), "{error}");
        }
    }

    #[test]
    fn keys_are_classified_within_their_cluster_only() {
        let keys = ClusterKeys::new("a").unwrap();
        assert_eq!(
            keys.classify(&keys.node(NodeId(7))),
            KeyKind::Node(NodeId(7))
        );
        assert_eq!(keys.classify(&keys.controller()), KeyKind::Controller);
        assert_eq!(keys.classify(&keys.assignment()), KeyKind::Assignment);
        assert_eq!(keys.classify("/trove/a/nodes/x"), KeyKind::Other);
        assert_eq!(keys.classify(&keys.pin(12)), KeyKind::Pin(12));
        assert_eq!(
            keys.classify(&keys.drain(NodeId(3))),
            KeyKind::Drain(NodeId(3))
        );
        assert_eq!(keys.classify(&keys.moves(5)), KeyKind::Move(5));
        assert_eq!(keys.classify(&keys.settings()), KeyKind::Settings);
        assert_eq!(keys.classify("/trove/a/pins/-1"), KeyKind::Other);
        assert_eq!(keys.classify("/trove/a/moves"), KeyKind::Other);
        assert_eq!(keys.classify("/trove/ab/controller"), KeyKind::Other);
    }

    #[test]
    fn move_records_round_trip_and_settings_are_checked() {
        let record = MoveRecord {
            part_epoch: 40,
            from: (1, 0),
            to: (2, 1),
            state: MoveState::Refused {
                reason: "link down".into(),
            },
            abandoned: Some("the source refused it: link down".into()),
            released: Some(Released {
                flipped: false,
                events_held: 3,
                pause_ns: 1_500,
            }),
        };
        let back: MoveRecord = decode_json("move", &encode_json(&record)).unwrap();
        assert_eq!(back, record);
        assert!(back.is_move(Epoch(40)) && !back.is_move(Epoch(41)));
        assert_eq!(back.to(), (NodeId(2), ShardId(1)));
        let error = decode_json::<PinRecord>("pin", b"{}").unwrap_err();
        assert!(error.starts_with("not a pin record"), "{error}");
        assert!(SettingsRecord::new(0).unwrap_err().contains("give 1 to"));
        assert!(SettingsRecord::new(MOVES_INFLIGHT_MAX + 1).is_err());
        assert_eq!(SettingsRecord::new(2).unwrap().moves_max, 2);
        let long = "é".repeat(MOVE_REASON_BYTES_MAX);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MOVE_REASON_BYTES_MAX && cut.len() >= MOVE_REASON_BYTES_MAX - 1);
    }

    #[test]
    fn node_records_round_trip_and_refuse_an_empty_shard_list() {
        let info = NodeInfo {
            address: "10.0.0.1".into(),
            port: 7700,
            shard_ports: vec![7701, 7702],
            version: "0.1.0".into(),
            metrics: None,
        };
        assert_eq!(NodeInfo::decode(&info.encode()).unwrap(), info);
        let with_metrics = NodeInfo {
            metrics: Some("10.0.0.1:9700".into()),
            ..info.clone()
        };
        assert_eq!(
            NodeInfo::decode(&with_metrics.encode()).unwrap(),
            with_metrics
        );
        assert_eq!(info.shards(), 2);
        let empty = br#"{"address":"h","port":1,"shard_ports":[],"version":"v"}"#;
        assert!(
            NodeInfo::decode(empty)
                .unwrap_err()
                .contains("at least one")
        );
        assert!(
            NodeInfo::decode(b"[]")
                .unwrap_err()
                .contains("not a node record")
        );
    }
}
