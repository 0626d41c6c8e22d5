//! `ClusterStatus`: what `trove cluster status` shows (nodes with their lease time left, the
//! controller, the epoch, partitions per node and shard, the offline ones, moves in flight and
//! drained nodes), read from etcd by
//! one blocking call and rendered as text. Runs on the command's own thread.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::cluster::coordinator::{ClusterView, Response};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::placement::OwnerState;
use crate::constants::CLUSTER_STATUS_OFFLINE_LISTED_MAX;
use crate::core::ids::NodeId;

/// The cluster as read at one revision, with each node's lease time left.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    pub name: String,
    pub view: ClusterView,
    /// Seconds left on each node's lease, as etcd reported it.
    pub lease_left_s: BTreeMap<NodeId, i64>,
}

impl ClusterStatus {
    /// Reads cluster `name` through `client`.
    pub fn read(client: &mut EtcdClient, name: &str) -> Result<ClusterStatus, String> {
        let keys = ClusterKeys::new(name)?;
        let request = crate::cluster::coordinator::Request::RangePrefix {
            prefix: keys.prefix().to_owned(),
        };
        let Response::Range { revision, kvs } = client.execute(&request)? else {
            return Err("etcd answered a range with something else".into());
        };
        let view = ClusterView::from_range(&keys, revision, &kvs);
        let mut lease_left_s = BTreeMap::new();
        for (&node, entry) in &view.nodes {
            lease_left_s.insert(node, client.lease_time_to_live(entry.lease)?);
        }
        Ok(ClusterStatus {
            name: name.to_owned(),
            view,
            lease_left_s,
        })
    }

    /// The status as text, one fact a line.
    pub fn render(&self) -> String {
        let view = &self.view;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster {} (etcd revision {})",
            self.name, view.revision
        );
        if view.nodes.is_empty() && view.assignment.is_none() {
            let _ = writeln!(out, "no node has registered in this cluster");
            return out;
        }
        match view.controller {
            Some(controller) => {
                let _ = writeln!(out, "controller: {}", controller.node);
            }
            None => {
                let _ = writeln!(
                    out,
                    "controller: none (the next node to see it will take over)"
                );
            }
        }
        match &view.assignment {
            Some(placement) => {
                let _ = writeln!(
                    out,
                    "placement: epoch {}, {} partitions, {} offline",
                    placement.epoch().get(),
                    placement.partitions(),
                    placement.offline().count()
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "placement: none yet (the controller writes one once the nodes settle)"
                );
            }
        }
        self.render_moves(&mut out);
        let counts = view
            .assignment
            .as_ref()
            .map(|placement| placement.counts())
            .unwrap_or_default();
        let placed_nodes = counts.keys().map(|(node, _)| *node);
        let mut nodes: Vec<NodeId> = view.nodes.keys().copied().chain(placed_nodes).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            self.render_node(&mut out, node, &counts);
        }
        for (key, reason) in &view.rejected {
            let _ = writeln!(out, "unreadable {key}: {reason}");
        }
        out
    }

    /// The moves in flight (partition, from, to, since which epoch) and the drained nodes.
    fn render_moves(&self, out: &mut String) {
        let view = &self.view;
        if let Some(placement) = &view.assignment {
            let moving: Vec<(usize, &crate::cluster::placement::Owner)> = placement
                .owners()
                .iter()
                .enumerate()
                .filter(|(_, owner)| owner.state.migrating_to().is_some())
                .collect();
            if !moving.is_empty() {
                let _ = writeln!(
                    out,
                    "moves in flight: {} (at most {} at once)",
                    moving.len(),
                    view.moves_max()
                );
            }
            for (partition, owner) in moving.iter().take(CLUSTER_STATUS_OFFLINE_LISTED_MAX) {
                let (to, to_shard) = owner.state.migrating_to().expect("moving");
                let _ = writeln!(
                    out,
                    "  partition {partition}: {} {} -> {to} {to_shard}, since epoch {}",
                    owner.node,
                    owner.shard,
                    owner.part_epoch.get()
                );
            }
            if moving.len() > CLUSTER_STATUS_OFFLINE_LISTED_MAX {
                let _ = writeln!(out, "  …");
            }
        }
        for node in view.drained() {
            let _ = writeln!(
                out,
                "drained: {node} (it gets its share back once restarted: a new registration)"
            );
        }
    }

    fn render_node(
        &self,
        out: &mut String,
        node: NodeId,
        counts: &BTreeMap<(NodeId, crate::core::ids::ShardId), (u32, u32)>,
    ) {
        match self.view.nodes.get(&node) {
            Some(entry) => {
                let ports: Vec<String> =
                    entry.info.shard_ports.iter().map(u16::to_string).collect();
                let lease = match self.lease_left_s.get(&node) {
                    Some(&left) if left > 0 => format!("lease {left} s left"),
                    _ => "lease ended".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{node}: {}:{} shards {} (ports {}), {lease}, version {}",
                    entry.info.address,
                    entry.info.port,
                    entry.info.shards(),
                    ports.join(","),
                    entry.info.version
                );
            }
            None => {
                let _ = writeln!(out, "{node}: not registered (its lease ended)");
            }
        }
        for ((_, shard), (serving, offline)) in counts
            .range((node, crate::core::ids::ShardId(0))..)
            .take_while(|((owner, _), _)| *owner == node)
        {
            let _ = write!(out, "  {shard}: {serving} partitions serving");
            if *offline > 0 {
                let _ = write!(out, ", {offline} offline");
                if let Some(placement) = &self.view.assignment {
                    let listed: Vec<String> = placement
                        .owners()
                        .iter()
                        .enumerate()
                        .filter(|(_, owner)| {
                            owner.node == node
                                && owner.shard == *shard
                                && owner.state == OwnerState::Offline
                        })
                        .map(|(partition, _)| partition.to_string())
                        .take(CLUSTER_STATUS_OFFLINE_LISTED_MAX)
                        .collect();
                    let more = if *offline as usize > CLUSTER_STATUS_OFFLINE_LISTED_MAX {
                        ", …"
                    } else {
                        ""
                    };
                    let _ = write!(out, " ({}{more})", listed.join(","));
                }
            }
            let _ = writeln!(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::coordinator::KeyValue;
    use crate::cluster::keys::{ControllerRecord, NodeInfo};
    use crate::cluster::placement::{LiveNode, decode_record, encode_record, next_owners};

    fn kv(key: String, value: Vec<u8>, revision: u64, lease: i64) -> KeyValue {
        KeyValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
            lease,
        }
    }

    #[test]
    fn the_status_names_nodes_controller_epoch_and_offline_partitions() {
        let keys = ClusterKeys::new("demo").unwrap();
        let info = NodeInfo {
            address: "127.0.0.1".into(),
            port: 7700,
            shard_ports: vec![7701],
            version: "0.1.0".into(),
            metrics: None,
        };
        let live: BTreeMap<NodeId, LiveNode> = [1, 2]
            .map(|n| {
                (
                    NodeId(n),
                    LiveNode {
                        shards: 1,
                        registered_revision: 2,
                    },
                )
            })
            .into_iter()
            .collect();
        let first = next_owners(None, 16, &live).unwrap();
        let first = decode_record(&encode_record(&first), 5).unwrap();
        let only_1: BTreeMap<NodeId, LiveNode> = live.into_iter().take(1).collect();
        let second = next_owners(Some(first.owners()), 16, &only_1).unwrap();
        let controller = serde_json::to_vec(&ControllerRecord { node: 1 }).unwrap();
        let kvs = vec![
            kv(keys.node(NodeId(1)), info.encode(), 2, 11),
            kv(keys.controller(), controller, 3, 11),
            kv(keys.assignment(), encode_record(&second), 9, 0),
        ];
        let status = ClusterStatus {
            name: "demo".into(),
            view: ClusterView::from_range(&keys, 9, &kvs),
            lease_left_s: [(NodeId(1), 4)].into_iter().collect(),
        };
        let text = status.render();
        let offline = first
            .owners()
            .iter()
            .filter(|o| o.node == NodeId(2))
            .count();
        assert!(text.contains("controller: node 1"), "{text}");
        assert!(
            text.contains(&format!("epoch 9, 16 partitions, {offline} offline")),
            "{text}"
        );
        assert!(
            text.contains("node 1: 127.0.0.1:7700 shards 1 (ports 7701), lease 4 s left"),
            "{text}"
        );
        assert!(text.contains("node 2: not registered"), "{text}");
        assert!(
            text.contains(&format!(
                "shard 0: 0 partitions serving, {offline} offline ("
            )),
            "{text}"
        );
    }

    #[test]
    fn the_status_shows_moves_in_flight_and_drained_nodes() {
        use crate::cluster::keys::DrainRecord;
        use crate::cluster::placement::{Owner, OwnerState};
        use crate::core::ids::{Epoch, ShardId};
        let keys = ClusterKeys::new("demo").unwrap();
        let info = NodeInfo {
            address: "127.0.0.1".into(),
            port: 7700,
            shard_ports: vec![7701, 7702],
            version: "0.1.0".into(),
            metrics: None,
        };
        let owners = vec![
            Owner {
                node: NodeId(1),
                shard: ShardId(0),
                part_epoch: Epoch(8),
                state: OwnerState::Migrating {
                    to: NodeId(2),
                    to_shard: ShardId(1),
                },
            },
            Owner {
                node: NodeId(2),
                shard: ShardId(0),
                part_epoch: Epoch(4),
                state: OwnerState::Serving,
            },
        ];
        let drain = |revision| {
            serde_json::to_vec(&DrainRecord {
                registered_revision: revision,
            })
            .unwrap()
        };
        let kvs = vec![
            kv(keys.node(NodeId(1)), info.encode(), 2, 11),
            kv(keys.node(NodeId(2)), info.encode(), 3, 12),
            kv(keys.assignment(), encode_record(&owners), 9, 0),
            kv(keys.drain(NodeId(1)), drain(2), 7, 0),
            // Node 2 registered again since its drain: no longer drained.
            kv(keys.drain(NodeId(2)), drain(1), 7, 0),
        ];
        let status = ClusterStatus {
            name: "demo".into(),
            view: ClusterView::from_range(&keys, 9, &kvs),
            lease_left_s: BTreeMap::new(),
        };
        let text = status.render();
        let in_flight = format!(
            "moves in flight: 1 (at most {} at once)",
            crate::constants::MOVES_INFLIGHT_DEFAULT
        );
        assert!(text.contains(&in_flight), "{text}");
        assert!(
            text.contains("  partition 0: node 1 shard 0 -> node 2 shard 1, since epoch 8"),
            "{text}"
        );
        assert!(text.contains("drained: node 1 ("), "{text}");
        assert!(!text.contains("drained: node 2"), "{text}");
    }

    #[test]
    fn an_empty_cluster_says_so() {
        let status = ClusterStatus {
            name: "none".into(),
            view: ClusterView::default(),
            lease_left_s: BTreeMap::new(),
        };
        assert!(status.render().contains("no node has registered"));
    }
}
