//! The partitioner and the placement: which node and shard owns each partition.
//!
//! A cluster has a fixed, power-of-two number of partitions `P`, chosen when it is created and
//! never changed: `partition = xxh3(hunt) & (P - 1)` ([`Partitioner`]). Which node and shard
//! owns a partition is an explicit, versioned table ([`Placement`]), not arithmetic, so
//! partitions can move without keys being re-hashed. Each shard holds its own copy of the
//! table (a shard view); clients get one from any shard. Plain values, valid on any core.

use std::collections::BTreeMap;
use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use crate::constants::{
    CLUSTER_NODES_MAX, NODE_HOST_BYTES_MAX, PARTITIONS_MAX, PLACEMENT_OWNER_BYTES_MAX, SHARDS_MAX,
};
use crate::core::ids::{Epoch, HuntId, NodeId, PartitionId, ShardId};
use crate::core::message::{ArchivedPartitionMapMessage, MapNode, MapOwner, PartitionMapMessage};

/// Why a partition map could not be built or accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The partition count is not a power of two between 1 and `PARTITIONS_MAX`.
    BadPartitionCount(u64),
    /// The shard count is not between 1 and `SHARDS_MAX`.
    BadShardCount(u64),
    /// A partition is owned by a shard the map does not list.
    UnknownOwner { partition: u32, owner: u16 },
    /// A partition past the map's partition count.
    UnknownPartition(u32),
    /// A node's address is unusable: a host longer than `NODE_HOST_BYTES_MAX`, too many shard
    /// ports, the same node listed twice, or more than `CLUSTER_NODES_MAX` nodes.
    BadNodeAddress { node: u32, reason: &'static str },
    /// A map lists no node, or more than `CLUSTER_NODES_MAX`.
    BadNodeCount(u64),
    /// A partition's owner names a node index past the map's node list.
    UnknownNode { partition: u32, index: u16 },
    /// A partition is owned by a shard its node does not have.
    ShardOutOfRange {
        partition: u32,
        node: u32,
        shard: u16,
    },
    /// A partition is served by a node the map gives no address for.
    UnreachableOwner { partition: u32, node: u32 },
    /// The node that sent the map is not in its node list.
    UnknownAnsweringNode(u32),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::BadPartitionCount(count) => write!(
                f,
                "{count} partitions: the count must be a power of two from 1 to {PARTITIONS_MAX}"
            ),
            MapError::BadShardCount(count) => {
                write!(
                    f,
                    "{count} shards: the count must be from 1 to {SHARDS_MAX}"
                )
            }
            MapError::UnknownOwner { partition, owner } => {
                write!(
                    f,
                    "partition {partition} is owned by shard {owner}, which the map does not list"
                )
            }
            MapError::UnknownPartition(partition) => {
                write!(f, "partition {partition} is past the map's partition count")
            }
            MapError::BadNodeAddress { node, reason } => {
                write!(f, "the address of node {node} is unusable: {reason}")
            }
            MapError::BadNodeCount(count) => write!(
                f,
                "the map lists {count} nodes: it must list from 1 to {CLUSTER_NODES_MAX}"
            ),
            MapError::UnknownNode { partition, index } => write!(
                f,
                "partition {partition} is owned by node number {index} of the map, which lists fewer nodes"
            ),
            MapError::ShardOutOfRange {
                partition,
                node,
                shard,
            } => write!(
                f,
                "partition {partition} is owned by shard {shard} of node {node}, which has no such shard"
            ),
            MapError::UnreachableOwner { partition, node } => write!(
                f,
                "partition {partition} is served by node {node}, for which the map gives no address"
            ),
            MapError::UnknownAnsweringNode(node) => write!(
                f,
                "the map was sent by node {node}, which its node list does not name"
            ),
        }
    }
}

impl std::error::Error for MapError {}

/// Maps a hunt to its partition. Stable: the same hunt always lands in the same partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitioner {
    mask: u32,
}

impl Partitioner {
    pub fn new(partitions: u32) -> Result<Partitioner, MapError> {
        if partitions == 0 || partitions > PARTITIONS_MAX || !partitions.is_power_of_two() {
            return Err(MapError::BadPartitionCount(u64::from(partitions)));
        }
        Ok(Partitioner {
            mask: partitions - 1,
        })
    }

    /// The partition that owns `hunt`.
    #[inline]
    pub fn partition_of(&self, hunt: HuntId) -> PartitionId {
        PartitionId(xxh3_64(&hunt.0.to_le_bytes()) as u32 & self.mask)
    }

    /// How many partitions there are.
    pub fn partitions(&self) -> u32 {
        self.mask + 1
    }
}

/// Whether a partition's owner serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner applies the partition's events (while its node's lease is known valid).
    Serving,
    /// Nobody serves the partition now (its node's lease ended): its events are answered
    /// `Unavailable { partition }` at once instead of waiting. The owner keeps its state and
    /// gets the partition back, at a new partition epoch, when it returns (no replicas yet).
    Offline,
    /// The owner still applies the partition's events, and streams its state and the events
    /// it applies to shard `to_shard` of node `to`, which takes the partition over when the
    /// controller flips ownership (at a new partition epoch), or drops what it got when the
    /// controller abandons the move (the owner then goes back to `Serving`).
    Migrating { to: NodeId, to_shard: ShardId },
}

impl OwnerState {
    /// Whether the owner applies the partition's events in this state: `Serving`, and
    /// `Migrating` (a source keeps serving until the flip).
    #[inline]
    pub fn applies(self) -> bool {
        !matches!(self, OwnerState::Offline)
    }

    /// The node and shard a `Migrating` partition moves to.
    pub fn migrating_to(self) -> Option<(NodeId, ShardId)> {
        match self {
            OwnerState::Migrating { to, to_shard } => Some((to, to_shard)),
            _ => None,
        }
    }
}

/// Who owns one partition, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: NodeId,
    pub shard: ShardId,
    /// Grows only when this partition moves (the placement's epoch grows with any change).
    pub part_epoch: Epoch,
    pub state: OwnerState,
}

// The memory sum in `constants` counts an owner as this much, on every shard.
const _: () = assert!(size_of::<Owner>() <= PLACEMENT_OWNER_BYTES_MAX);
// ... and a node's address as its struct (within the 64 bytes of `PLACEMENT_NODE_BYTES_MAX`)
// plus its host and ports, which `NodeAddress::check` bounds.
const _: () = assert!(size_of::<NodeAddress>() <= 64);

/// Where one node of a cluster is reached: the host it advertises (`--advertise`) and the port
/// each of its shards listens on. In a placement, the nodes come from their registrations, so
/// a shard can open links to the owners it forwards to and a client can reach every owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub node: NodeId,
    /// A host name or IP literal; empty for "the host this map was fetched from" (a single
    /// node, which does not know the address its clients reach it at).
    pub host: String,
    /// Shard `s` of the node accepts connections (and node links) on `shard_ports[s]`.
    pub shard_ports: Vec<u16>,
}

impl NodeAddress {
    /// Checks the limits the memory sum counts on: the host's length and the shard count.
    pub fn check(&self) -> Result<(), MapError> {
        let bad = |reason| {
            Err(MapError::BadNodeAddress {
                node: self.node.0,
                reason,
            })
        };
        if self.host.len() > NODE_HOST_BYTES_MAX {
            return bad("its host is longer than NODE_HOST_BYTES_MAX");
        }
        if self.shard_ports.is_empty() || self.shard_ports.len() > SHARDS_MAX {
            return bad("it lists no shard ports, or more than SHARDS_MAX");
        }
        Ok(())
    }
}

/// Which node and shard owns each partition, versioned by an [`Epoch`] that grows with every
/// change. The [`Partitioner`] beside it is fixed; ownership moves, keys are never re-hashed.
/// One value for the whole cluster (in a cluster, the epoch is the etcd revision of the
/// assignment record, `cluster::placement`); each shard and each client holds its own copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    epoch: Epoch,
    partitioner: Partitioner,
    owners: Vec<Owner>,
    /// The shards the owners name: one more than the highest shard number.
    shards: u16,
    /// Where the nodes are reached, sorted by node id (empty when nobody said: a single node,
    /// or a placement read without the nodes' registrations).
    nodes: Vec<NodeAddress>,
}

/// The name clients and tools knew the placement by: the partition map they ask a node for.
pub type PartitionMap = Placement;

impl Placement {
    /// Deals `partitions` out to the `shards` of node 0 in turn: partition `p` goes to shard
    /// `p % shards`. Epoch 1.
    pub fn round_robin(partitions: u32, shards: usize) -> Result<Placement, MapError> {
        let partitioner = Partitioner::new(partitions)?;
        if shards == 0 || shards > SHARDS_MAX {
            return Err(MapError::BadShardCount(shards as u64));
        }
        let epoch = Epoch(1);
        let owners = (0..partitions)
            .map(|p| Owner {
                node: NodeId(0),
                shard: ShardId((p as usize % shards) as u16),
                part_epoch: epoch,
                state: OwnerState::Serving,
            })
            .collect();
        Ok(Placement {
            epoch,
            partitioner,
            owners,
            shards: shards as u16,
            nodes: Vec::new(),
        })
    }

    /// A placement of the given owners, one per partition, at `epoch`.
    pub fn from_owners(epoch: Epoch, owners: Vec<Owner>) -> Result<Placement, MapError> {
        let partitioner = Partitioner::new(owners.len() as u32)?;
        let shards = owners
            .iter()
            .map(|owner| usize::from(owner.shard.0) + 1)
            .max()
            .unwrap_or(1);
        if shards > SHARDS_MAX {
            return Err(MapError::BadShardCount(shards as u64));
        }
        Ok(Placement {
            epoch,
            partitioner,
            owners,
            shards: shards as u16,
            nodes: Vec::new(),
        })
    }

    /// Accepts a map a node sent, checking every entry: the node list (bounded, no node twice,
    /// hosts and shard ports within their limits, the answering node listed), then every
    /// owner (a listed node, a shard that node has, reachable if it serves). Partition epochs
    /// are not on the wire: each is taken as the map's epoch (no later than the truth).
    pub fn from_message(message: &ArchivedPartitionMapMessage) -> Result<Placement, MapError> {
        let nodes = check_message_nodes(message)?;
        let partitioner = Partitioner::new(message.owners.len() as u32)?;
        let epoch = Epoch(message.epoch.to_native());
        let mut owners = Vec::with_capacity(message.owners.len());
        for (partition, owner) in message.owners.iter().enumerate() {
            let partition = partition as u32;
            let index = owner.node.to_native();
            let (node, ports) = nodes
                .get(usize::from(index))
                .ok_or(MapError::UnknownNode { partition, index })?;
            let shard = owner.shard.to_native();
            let shards = if ports.is_empty() {
                SHARDS_MAX
            } else {
                ports.len()
            };
            if usize::from(shard) >= shards {
                return Err(MapError::ShardOutOfRange {
                    partition,
                    node: node.0,
                    shard,
                });
            }
            let serving = owner.serving;
            if serving && ports.is_empty() {
                return Err(MapError::UnreachableOwner {
                    partition,
                    node: node.0,
                });
            }
            owners.push(Owner {
                node: *node,
                shard: ShardId(shard),
                part_epoch: epoch,
                state: if serving {
                    OwnerState::Serving
                } else {
                    OwnerState::Offline
                },
            });
        }
        debug_assert_eq!(owners.len() as u32, partitioner.partitions());
        let reachable = message
            .nodes
            .iter()
            .filter(|node| !node.shard_ports.is_empty())
            .map(|node| NodeAddress {
                node: NodeId(node.node.to_native()),
                host: node.host.to_string(),
                shard_ports: node
                    .shard_ports
                    .iter()
                    .map(|port| port.to_native())
                    .collect(),
            });
        Placement::from_owners(epoch, owners)?.with_nodes(reachable)
    }

    /// The map as `answering` sends it: every owner with its node and shard, and every node an
    /// owner names with where it is reached. The answering node is always listed; when the
    /// placement does not know its address (a single node) it is listed with an empty host
    /// ("the host you reached me at") and `answering_ports`. An owner whose node's address is
    /// unknown is sent as not serving: no client could reach it.
    pub fn to_message(&self, answering: NodeId, answering_ports: &[u16]) -> PartitionMapMessage {
        let mut nodes: BTreeMap<NodeId, MapNode> = self
            .nodes
            .iter()
            .map(|address| {
                let node = MapNode {
                    node: address.node.0,
                    host: address.host.clone(),
                    shard_ports: address.shard_ports.clone(),
                };
                (address.node, node)
            })
            .collect();
        nodes.entry(answering).or_insert_with(|| MapNode {
            node: answering.0,
            host: String::new(),
            shard_ports: answering_ports.to_vec(),
        });
        for owner in &self.owners {
            nodes.entry(owner.node).or_insert_with(|| MapNode {
                node: owner.node.0,
                host: String::new(),
                shard_ports: Vec::new(),
            });
        }
        let index: BTreeMap<NodeId, (u16, bool)> = nodes
            .values()
            .enumerate()
            .map(|(index, node)| {
                (
                    NodeId(node.node),
                    (index as u16, !node.shard_ports.is_empty()),
                )
            })
            .collect();
        let owners = self
            .owners
            .iter()
            .map(|owner| {
                let (node, reachable) = index[&owner.node];
                MapOwner {
                    node,
                    shard: owner.shard.0,
                    serving: reachable && owner.state.applies(),
                }
            })
            .collect();
        PartitionMapMessage {
            epoch: self.epoch.get(),
            answering_node: answering.0,
            owners,
            nodes: nodes.into_values().collect(),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn partitioner(&self) -> Partitioner {
        self.partitioner
    }

    pub fn partitions(&self) -> u32 {
        self.partitioner.partitions()
    }

    /// How many shards the map spreads partitions over (on the node with the most of them).
    pub fn shards(&self) -> usize {
        usize::from(self.shards)
    }

    /// Every partition's owner, indexed by partition.
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// This placement, with where its nodes are reached. Each address is checked; nodes that
    /// neither own a partition nor are a move's target are left out, so the list is bounded
    /// by the owners as well as by `CLUSTER_NODES_MAX`.
    pub fn with_nodes(
        mut self,
        nodes: impl IntoIterator<Item = NodeAddress>,
    ) -> Result<Placement, MapError> {
        // Owners, and the targets of moves: a source links to its target before it owns.
        let named: std::collections::BTreeSet<NodeId> = self
            .owners
            .iter()
            .flat_map(|owner| {
                let target = owner.state.migrating_to().map(|(to, _)| to);
                std::iter::once(owner.node).chain(target)
            })
            .collect();
        let mut kept: Vec<NodeAddress> = Vec::new();
        for address in nodes.into_iter().filter(|a| named.contains(&a.node)) {
            address.check()?;
            kept.push(address);
        }
        kept.sort_by_key(|address| address.node);
        if let Some(pair) = kept.windows(2).find(|pair| pair[0].node == pair[1].node) {
            return Err(MapError::BadNodeAddress {
                node: pair[0].node.0,
                reason: "it is listed twice",
            });
        }
        if kept.len() > CLUSTER_NODES_MAX {
            return Err(MapError::BadNodeAddress {
                node: kept[CLUSTER_NODES_MAX].node.0,
                reason: "the map lists more than CLUSTER_NODES_MAX nodes",
            });
        }
        self.nodes = kept;
        Ok(self)
    }

    /// Where the placement's nodes are reached, sorted by node id.
    pub fn nodes(&self) -> &[NodeAddress] {
        &self.nodes
    }

    /// Where `node` is reached, if the placement knows.
    pub fn node_address(&self, node: NodeId) -> Option<&NodeAddress> {
        self.nodes
            .binary_search_by_key(&node, |address| address.node)
            .ok()
            .map(|index| &self.nodes[index])
    }

    /// The partitions nobody serves.
    pub fn offline(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, owner)| owner.state == OwnerState::Offline)
            .map(|(partition, _)| PartitionId(partition as u32))
    }

    /// How many partitions each (node, shard) owns: (serving, offline).
    pub fn counts(&self) -> BTreeMap<(NodeId, ShardId), (u32, u32)> {
        let mut counts = BTreeMap::new();
        for owner in &self.owners {
            let entry: &mut (u32, u32) = counts.entry((owner.node, owner.shard)).or_default();
            if owner.state.applies() {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        counts
    }

    /// Who owns `partition`.
    #[inline]
    pub fn owner(&self, partition: PartitionId) -> &Owner {
        &self.owners[partition.index()]
    }

    /// The shard that owns `partition`.
    #[inline]
    pub fn owner_of_partition(&self, partition: PartitionId) -> ShardId {
        self.owners[partition.index()].shard
    }

    /// The partition of `hunt` and the shard that owns it.
    #[inline]
    pub fn route(&self, hunt: HuntId) -> (PartitionId, ShardId) {
        let partition = self.partitioner.partition_of(hunt);
        (partition, self.owner_of_partition(partition))
    }

    /// The partitions `shard` of `node` owns and serves, in order.
    pub fn partitions_served_by(
        &self,
        node: NodeId,
        shard: ShardId,
    ) -> impl Iterator<Item = PartitionId> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(move |(_, owner)| {
                owner.node == node && owner.shard == shard && owner.state.applies()
            })
            .map(|(partition, _)| PartitionId(partition as u32))
    }

    /// The partitions `shard` (of node 0) owns, in order.
    pub fn partitions_of(&self, shard: ShardId) -> impl Iterator<Item = PartitionId> + '_ {
        self.partitions_served_by(NodeId(0), shard)
    }

    /// The next placement: `partition` now belongs to `shard` of `node`. The placement's
    /// epoch and the partition's own epoch both grow.
    pub fn with_owner(
        &self,
        partition: PartitionId,
        node: NodeId,
        shard: ShardId,
    ) -> Result<Placement, MapError> {
        if partition.0 >= self.partitions() {
            return Err(MapError::UnknownPartition(partition.0));
        }
        if shard.index() >= self.shards() {
            return Err(MapError::UnknownOwner {
                partition: partition.0,
                owner: shard.0,
            });
        }
        let mut next = self.clone();
        next.epoch = self.epoch.next();
        next.owners[partition.index()] = Owner {
            node,
            shard,
            part_epoch: next.epoch,
            state: OwnerState::Serving,
        };
        Ok(next)
    }
}

/// The nodes of a map message, checked, in the message's order: each node's id and its shard
/// ports (empty: not reachable).
fn check_message_nodes(
    message: &ArchivedPartitionMapMessage,
) -> Result<Vec<(NodeId, Vec<u16>)>, MapError> {
    let count = message.nodes.len();
    if count == 0 || count > CLUSTER_NODES_MAX {
        return Err(MapError::BadNodeCount(count as u64));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut nodes = Vec::with_capacity(count);
    for node in message.nodes.iter() {
        let id = node.node.to_native();
        let bad = |reason| Err(MapError::BadNodeAddress { node: id, reason });
        if !seen.insert(id) {
            return bad("it is listed twice");
        }
        if node.host.len() > NODE_HOST_BYTES_MAX {
            return bad("its host is longer than NODE_HOST_BYTES_MAX");
        }
        if node.shard_ports.len() > SHARDS_MAX {
            return bad("it lists more than SHARDS_MAX shard ports");
        }
        let ports = node
            .shard_ports
            .iter()
            .map(|port| port.to_native())
            .collect();
        nodes.push((NodeId(id), ports));
    }
    let answering = message.answering_node.to_native();
    if !seen.contains(&answering) {
        return Err(MapError::UnknownAnsweringNode(answering));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_placement_keeps_the_addresses_of_the_nodes_its_owners_name() {
        let owner = |node| Owner {
            node: NodeId(node),
            shard: ShardId(0),
            part_epoch: Epoch(3),
            state: OwnerState::Serving,
        };
        let address = |node, host: &str| NodeAddress {
            node: NodeId(node),
            host: host.into(),
            shard_ports: vec![7001],
        };
        let placement =
            Placement::from_owners(Epoch(3), vec![owner(2), owner(1)]).expect("a placement");
        let with = placement
            .clone()
            .with_nodes([address(2, "b"), address(9, "stranger"), address(1, "a")])
            .expect("valid addresses");
        assert_eq!(with.nodes(), &[address(1, "a"), address(2, "b")][..]);
        assert_eq!(
            with.node_address(NodeId(2)).map(|a| a.host.as_str()),
            Some("b")
        );
        assert_eq!(with.node_address(NodeId(9)), None, "not an owner: left out");
        let too_long = address(1, &"h".repeat(NODE_HOST_BYTES_MAX + 1));
        assert!(matches!(
            placement.clone().with_nodes([too_long]),
            Err(MapError::BadNodeAddress { node: 1, .. })
        ));
        assert!(matches!(
            placement.with_nodes([address(1, "a"), address(1, "again")]),
            Err(MapError::BadNodeAddress { node: 1, .. })
        ));
    }

    #[test]
    fn partition_counts_must_be_powers_of_two() {
        assert!(Partitioner::new(1024).is_ok());
        assert!(Partitioner::new(1).is_ok());
        assert_eq!(Partitioner::new(0), Err(MapError::BadPartitionCount(0)));
        assert_eq!(
            Partitioner::new(1000),
            Err(MapError::BadPartitionCount(1000))
        );
        assert!(Partitioner::new(PARTITIONS_MAX * 2).is_err());
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        // The partition of a hunt is part of the wire contract: clients compute it too.
        let partitioner = Partitioner::new(1024).unwrap();
        let hunt = HuntId(42);
        let expected = xxh3_64(&42u64.to_le_bytes()) as u32 & 1023;
        assert_eq!(partitioner.partition_of(hunt), PartitionId(expected));
    }

    fn archived(message: &PartitionMapMessage) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(message).unwrap()
    }

    fn read(message: &PartitionMapMessage) -> Result<Placement, MapError> {
        let bytes = archived(message);
        let archived =
            rkyv::access::<ArchivedPartitionMapMessage, rkyv::rancor::Error>(&bytes).unwrap();
        Placement::from_message(archived)
    }

    fn map_node(node: u32, host: &str, shard_ports: &[u16]) -> MapNode {
        MapNode {
            node,
            host: host.into(),
            shard_ports: shard_ports.to_vec(),
        }
    }

    #[test]
    fn round_robin_spreads_evenly_and_round_trips_as_a_message() {
        let map = PartitionMap::round_robin(1024, 3).unwrap();
        let counts: Vec<usize> = (0..3)
            .map(|s| map.partitions_of(ShardId(s)).count())
            .collect();
        assert_eq!(counts, vec![342, 341, 341]);
        let message = map.to_message(NodeId(0), &[7001, 7002, 7003]);
        // A single node lists itself, node 0, at "the host you reached me at".
        assert_eq!(message.nodes, [map_node(0, "", &[7001, 7002, 7003])]);
        assert_eq!(message.answering_node, 0);
        let read = read(&message).unwrap();
        assert_eq!(read.owners(), map.owners());
        assert_eq!(read.epoch(), map.epoch());
        assert_eq!(
            read.node_address(NodeId(0)).map(|a| a.shard_ports.clone()),
            Some(vec![7001, 7002, 7003])
        );
    }

    #[test]
    fn a_cluster_map_names_each_owner_node_and_marks_unreachable_owners_not_serving() {
        let owner = |node, shard, state| Owner {
            node: NodeId(node),
            shard: ShardId(shard),
            part_epoch: Epoch(7),
            state,
        };
        let placement = Placement::from_owners(
            Epoch(7),
            vec![
                owner(3, 1, OwnerState::Serving),
                owner(1, 0, OwnerState::Serving),
                owner(9, 0, OwnerState::Serving),
                owner(1, 0, OwnerState::Offline),
            ],
        )
        .unwrap()
        .with_nodes([
            NodeAddress {
                node: NodeId(1),
                host: "10.0.0.1".into(),
                shard_ports: vec![7001],
            },
            NodeAddress {
                node: NodeId(3),
                host: "10.0.0.3".into(),
                shard_ports: vec![7001, 7002],
            },
        ])
        .unwrap();
        // Node 5 answers: it owns nothing, so it lists itself with the ports it was given.
        let message = placement.to_message(NodeId(5), &[7100]);
        let ids: Vec<u32> = message.nodes.iter().map(|node| node.node).collect();
        assert_eq!(ids, [1, 3, 5, 9]);
        assert_eq!(message.nodes[3], map_node(9, "", &[]), "no address known");
        let owners: Vec<(u16, u16, bool)> = message
            .owners
            .iter()
            .map(|owner| (owner.node, owner.shard, owner.serving))
            .collect();
        assert_eq!(
            owners,
            [(1, 1, true), (0, 0, true), (3, 0, false), (0, 0, false)],
            "node 9 cannot be reached: not serving"
        );
        let read = read(&message).unwrap();
        assert_eq!(read.owner(PartitionId(0)).node, NodeId(3));
        assert_eq!(read.owner(PartitionId(2)).state, OwnerState::Offline);
        assert_eq!(read.owner(PartitionId(3)).state, OwnerState::Offline);
        assert_eq!(
            read.node_address(NodeId(3)).map(|a| a.host.as_str()),
            Some("10.0.0.3")
        );
        assert_eq!(read.node_address(NodeId(9)), None);
    }

    #[test]
    fn maps_with_bad_nodes_or_owners_are_refused_with_what_is_wrong() {
        let good = PartitionMapMessage {
            epoch: 4,
            answering_node: 2,
            owners: vec![
                MapOwner {
                    node: 0,
                    shard: 1,
                    serving: true,
                },
                MapOwner {
                    node: 1,
                    shard: 0,
                    serving: false,
                },
            ],
            nodes: vec![map_node(2, "h", &[1, 2]), map_node(4, "", &[])],
        };
        assert!(read(&good).is_ok());
        let bad = |change: &dyn Fn(&mut PartitionMapMessage)| {
            let mut message = good.clone();
            change(&mut message);
            read(&message).unwrap_err()
        };
        assert_eq!(
            bad(&|m| m.owners[0].node = 2),
            MapError::UnknownNode {
                partition: 0,
                index: 2
            }
        );
        assert_eq!(
            bad(&|m| m.owners[0].shard = 2),
            MapError::ShardOutOfRange {
                partition: 0,
                node: 2,
                shard: 2
            }
        );
        assert_eq!(
            bad(&|m| m.owners[1].serving = true),
            MapError::UnreachableOwner {
                partition: 1,
                node: 4
            }
        );
        assert_eq!(
            bad(&|m| m.answering_node = 3),
            MapError::UnknownAnsweringNode(3)
        );
        assert_eq!(bad(&|m| m.nodes.clear()), MapError::BadNodeCount(0));
        assert!(matches!(
            bad(&|m| m.nodes[1].node = 2),
            MapError::BadNodeAddress { node: 2, .. }
        ));
        let long = "h".repeat(NODE_HOST_BYTES_MAX + 1);
        let error = bad(&|m| m.nodes[0].host = long.clone());
        assert!(matches!(error, MapError::BadNodeAddress { node: 2, .. }));
        assert!(error.to_string().contains("longer"), "{error}");
        assert!(matches!(
            bad(&|m| m.nodes[0].shard_ports = vec![1; SHARDS_MAX + 1]),
            MapError::BadNodeAddress { node: 2, .. }
        ));
        assert_eq!(
            bad(&|m| m.owners.push(m.owners[0])),
            MapError::BadPartitionCount(3)
        );
    }

    #[test]
    fn the_largest_single_node_map_fits_one_frame() {
        use crate::core::codec::{FrameBuilder, FrameKind};
        let map = Placement::round_robin(PARTITIONS_MAX, SHARDS_MAX).unwrap();
        let ports: Vec<u16> = (0..SHARDS_MAX as u16).collect();
        let message = map.to_message(NodeId(0), &ports);
        let mut frame = FrameBuilder::new();
        frame
            .single(FrameKind::MapReply, 1, Some(&message))
            .expect("PARTITIONS_MAX owners of 6 bytes and one node fit");
    }

    /// A canonical map of `partitions` over 1 to 8 nodes, every node named by an owner, each
    /// with 1 to 8 shards, as the node it names answering would send it.
    fn arbitrary_map() -> impl Strategy<Value = PartitionMapMessage> {
        (0u32..=8, 1usize..=8).prop_flat_map(|(log2, nodes)| {
            let partitions = 1usize << log2;
            let nodes = nodes.min(partitions);
            (
                1u32..1000,
                prop::collection::btree_set(any::<u32>(), nodes),
                prop::collection::vec((1usize..=8, "[a-z0-9.]{0,12}"), nodes),
                prop::collection::vec(
                    (any::<prop::sample::Index>(), any::<u16>(), any::<bool>()),
                    partitions,
                ),
                any::<prop::sample::Index>(),
            )
                .prop_map(move |(epoch, ids, shapes, picks, answering)| {
                    let nodes: Vec<MapNode> = ids
                        .into_iter()
                        .zip(shapes)
                        .map(|(node, (shards, host))| MapNode {
                            node,
                            host,
                            shard_ports: (0..shards as u16).map(|s| 7000 + s).collect(),
                        })
                        .collect();
                    let owners = picks
                        .into_iter()
                        .enumerate()
                        .map(|(partition, (pick, shard, serving))| {
                            // The first partitions name every node once, so none is left out.
                            let node = if partition < nodes.len() {
                                partition
                            } else {
                                pick.index(nodes.len())
                            };
                            MapOwner {
                                node: node as u16,
                                shard: shard % nodes[node].shard_ports.len() as u16,
                                serving,
                            }
                        })
                        .collect();
                    let answering = nodes[answering.index(nodes.len())].node;
                    PartitionMapMessage {
                        epoch,
                        answering_node: answering,
                        owners,
                        nodes,
                    }
                })
        })
    }

    proptest! {
        #[test]
        fn partitions_are_in_range_and_fold_onto_their_low_bits(hunt in any::<u64>(), log2 in 0u32..=14) {
            let partitions = 1u32 << log2;
            let partition = Partitioner::new(partitions).unwrap().partition_of(HuntId(hunt));
            prop_assert!(partition.0 < partitions);
            // Halving the count folds partitions onto their low bits: the hash never changes.
            if partitions > 1 {
                let half = Partitioner::new(partitions / 2).unwrap().partition_of(HuntId(hunt));
                prop_assert_eq!(half.0, partition.0 & (partitions / 2 - 1));
            }
        }

        #[test]
        fn round_robin_is_balanced_and_routes_to_the_listed_owner(
            log2 in 0u32..=12,
            shards in 1usize..=64,
            hunt in any::<u64>(),
        ) {
            let map = Placement::round_robin(1 << log2, shards).unwrap();
            let counts: Vec<usize> = (0..shards).map(|s| map.partitions_of(ShardId(s as u16)).count()).collect();
            let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(most - least <= 1, "unbalanced: {:?}", counts);
            let (partition, shard) = map.route(HuntId(hunt));
            prop_assert!(map.partitions_of(shard).any(|owned| owned == partition));
        }

        #[test]
        fn any_valid_map_round_trips_as_a_message(message in arbitrary_map()) {
            let map = read(&message).unwrap();
            prop_assert_eq!(map.epoch(), Epoch(message.epoch));
            let answering = message.nodes.iter().find(|node| node.node == message.answering_node).unwrap();
            prop_assert_eq!(map.to_message(NodeId(answering.node), &answering.shard_ports), message.clone());
            for (partition, owner) in message.owners.iter().enumerate() {
                let listed = &message.nodes[usize::from(owner.node)];
                prop_assert_eq!(map.owner(PartitionId(partition as u32)).node, NodeId(listed.node));
                prop_assert_eq!(map.owner_of_partition(PartitionId(partition as u32)), ShardId(owner.shard));
            }
        }

        #[test]
        fn moving_a_partition_changes_only_it_and_bumps_both_epochs(
            message in arbitrary_map(),
            pick in any::<prop::sample::Index>(),
            to in any::<prop::sample::Index>(),
        ) {
            let before = read(&message).unwrap();
            let partition = PartitionId(pick.index(message.owners.len()) as u32);
            let shard = ShardId(to.index(before.shards()) as u16);
            let node = before.owner(partition).node;
            let after = before.with_owner(partition, node, shard).unwrap();
            prop_assert_eq!(after.epoch(), before.epoch().next());
            prop_assert_eq!(after.owner(partition).shard, shard);
            prop_assert_eq!(after.owner(partition).part_epoch, after.epoch());
            for other in (0..before.partitions()).map(PartitionId).filter(|p| *p != partition) {
                prop_assert_eq!(after.owner(other), before.owner(other));
            }
        }
    }
}
