//! The cluster's keys in etcd and the records stored under them, apart from the assignment
//! (see `placement`): where a node registers, the controller key, and how a node describes
//! itself. Plain values and functions, usable on any thread.

use serde::{Deserialize, Serialize};

use crate::constants::CLUSTER_NAME_BYTES_MAX;
use crate::core::ids::NodeId;

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

    /// What `key` is, within this cluster.
    pub fn classify(&self, key: &str) -> KeyKind {
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return KeyKind::Other;
        };
        match rest {
            "controller" => KeyKind::Controller,
            "assignment" => KeyKind::Assignment,
            _ => match rest.strip_prefix("nodes/").map(str::parse::<u32>) {
                Some(Ok(node)) => KeyKind::Node(NodeId(node)),
                _ => KeyKind::Other,
            },
        }
    }
}

/// What a key of the cluster holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Node(NodeId),
    Controller,
    Assignment,
    Other,
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
        assert_eq!(keys.classify("/trove/ab/controller"), KeyKind::Other);
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
