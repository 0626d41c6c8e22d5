//! The client's half of the trove protocol, sans-IO: what to write and what was received,
//! never how. It serves every trove client there is: the blocking [`EventSender`] and its
//! reader threads, the load generator's trove protocol (`bench::trove_protocol`) and the
//! simulator; none of them builds or parses frames on its own.
//!
//! - **Frame filling with spill.** [`ClientProto::push_event`] archives an event once into the
//!   open frame of the connection that reaches its owner; a frame full in bytes is closed and
//!   the event spills into the next one; a frame is closed when it holds `events_per_frame`.
//!   The caller writes [`ClientProto::ready_output`] (closed frames) or
//!   [`ClientProto::flush_output`] (closing the open one too) and reports what it wrote.
//! - **Parsing.** [`next_frame`] takes whole frames off the front of received bytes and says
//!   what each one is: validated replies, a partition map, or the node's error.
//! - **Links to owners.** A shard-aware client has one link per (node, shard) that owns
//!   partitions, at the address the map gives for that node ([`LinkTarget`]); links are
//!   numbered as maps name them and never renumbered, so a map naming a new node adds links
//!   (at most `CLIENT_LINKS_MAX`). A partition whose owner the map gives no address for goes
//!   to the node that sent the map, which answers it. A client that is not shard-aware has one
//!   link: the connection the map came on.
//! - **Epoch tracking.** Every frame carries the epoch of the map its events were routed by. A
//!   node that sees a client behind its epoch pushes its newer map along with the replies; the
//!   client hands it to [`ClientProto::apply_map`], which closes the frames routed by the old
//!   map and routes every later event by the new one. An older or equal map changes nothing.
//!
//! A `ClientProto` lives on the one thread that sends (a client thread, a bench connection
//! thread, the simulator's loop); [`next_frame`] is a plain function any reader thread calls.
//!
//! [`EventSender`]: crate::client::EventSender

use std::collections::BTreeMap;

use crate::client::ClientError;
use crate::constants::{CLIENT_LINKS_MAX, FRAME_RECORDS_MAX, WRITE_BUFFER_RETAINED_BYTES_MAX};
use crate::core::codec::{
    Decoded, EncodeError, FrameBuilder, FrameError, FrameKind, ValidatedFrame, decode_frame,
};
use crate::core::ids::{Epoch, HuntId, NodeId, ShardId};
use crate::core::message::{
    ArchivedErrorMessage, ArchivedPartitionMapMessage, ArchivedReply, Event,
};
use crate::core::partition::{MapError, PartitionMap};

/// One connection's outgoing frames: closed ones waiting to be written, then at most one open.
struct Outbox {
    frames: FrameBuilder,
    /// Bytes of `frames` already written.
    written: usize,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            frames: FrameBuilder::new(),
            written: 0,
        }
    }

    /// Archives `event` into the open frame, opening one first if needed, and spilling into a
    /// new frame when the open one is full in bytes.
    fn push(&mut self, event: &Event, epoch: u32) -> Result<(), EncodeError> {
        if !self.frames.is_open() {
            self.frames.begin(FrameKind::Events);
        }
        match self.frames.push(event) {
            Ok(()) => Ok(()),
            // Too large even for an empty frame: the event itself is the problem.
            Err(error) if self.frames.open_records() == 0 => Err(error),
            Err(_) => {
                self.frames.finish(epoch);
                self.frames.begin(FrameKind::Events);
                self.frames.push(event)
            }
        }
    }

    fn close_open_frame(&mut self, epoch: u32) {
        if self.frames.is_open() {
            if self.frames.open_records() == 0 {
                self.frames.abandon_open();
            } else {
                self.frames.finish(epoch);
            }
        }
    }

    /// The closed frames not yet written.
    fn ready(&self) -> &[u8] {
        &self.frames.bytes()[self.written..self.frames.closed_len()]
    }

    fn consumed(&mut self, len: usize) {
        assert!(
            self.written + len <= self.frames.closed_len(),
            "wrote more than was ready"
        );
        self.written += len;
        if self.written == self.frames.len() {
            self.frames.clear(WRITE_BUFFER_RETAINED_BYTES_MAX);
            self.written = 0;
        }
    }
}

/// What the node pushed or answered with a map: the map (with where its nodes are reached)
/// and the node that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapPush {
    pub map: PartitionMap,
    /// The node that sent the map; a host it lists as empty is the host that node was reached at.
    pub answering: NodeId,
}

/// What one frame from a node says.
#[derive(Debug)]
pub enum Received<'a> {
    /// Replies, every one validated.
    Replies(ValidatedFrame<'a, ArchivedReply>),
    /// The node's partition map (asked for, or pushed because this client is behind).
    Map(MapPush),
    /// The node refused this connection's input and closes it next.
    NodeError { code: u16, message: String },
}

/// What [`ClientProto::apply_map`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapUpdate {
    /// The map was newer: later events are routed by it and frames carry its epoch.
    Applied { epoch: Epoch },
    /// The map was not newer than the one held: nothing changed.
    Stale { epoch: Epoch },
}

/// Where a shard-aware link goes: shard `shard` of `node`, at `host` (empty: the host the map
/// was fetched from) and `port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkTarget {
    pub node: NodeId,
    pub shard: ShardId,
    pub host: String,
    pub port: u16,
}

/// The sending side of a trove client, sans-IO. See the module documentation.
pub struct ClientProto {
    map: PartitionMap,
    answering: NodeId,
    shard_aware: bool,
    events_per_frame: usize,
    /// Where each link goes (shard-aware); empty when the one link is the seed connection.
    targets: Vec<LinkTarget>,
    /// The link of each target, for finding a link again when the map changes.
    links_by_target: BTreeMap<LinkTarget, usize>,
    /// The link each partition's events go out on (shard-aware).
    routes: Vec<u32>,
    outboxes: Vec<Outbox>,
}

impl ClientProto {
    /// A client of the node that sent `push`: when `shard_aware`, one link per (node, shard)
    /// that owns partitions, opened as the map names them; else one link, to the node the map
    /// came from, which forwards. A frame is closed once it holds `events_per_frame` events.
    pub fn new(
        push: MapPush,
        shard_aware: bool,
        events_per_frame: usize,
    ) -> Result<ClientProto, ClientError> {
        if events_per_frame == 0 || events_per_frame > FRAME_RECORDS_MAX {
            return Err(ClientError::Config(format!(
                "{events_per_frame} events per frame: it must be from 1 to {FRAME_RECORDS_MAX}"
            )));
        }
        if shard_aware && push.map.nodes().is_empty() {
            return Err(ClientError::Map(MapError::BadNodeCount(0)));
        }
        let mut proto = ClientProto {
            map: push.map,
            answering: push.answering,
            shard_aware,
            events_per_frame,
            targets: Vec::new(),
            links_by_target: BTreeMap::new(),
            routes: Vec::new(),
            outboxes: Vec::new(),
        };
        if shard_aware {
            proto.route_all()?;
        } else {
            proto.outboxes.push(Outbox::new());
        }
        Ok(proto)
    }

    /// The partition map events are routed by.
    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// The epoch of that map, which every frame carries.
    pub fn epoch(&self) -> Epoch {
        self.map.epoch()
    }

    /// How many links the client uses so far (a shard-aware client gains links as maps name
    /// new owners; links are never renumbered).
    pub fn links(&self) -> usize {
        self.outboxes.len()
    }

    /// How many nodes the links reach: the owners' nodes when shard-aware, else the one node
    /// the client talks to.
    pub fn nodes(&self) -> usize {
        let mut nodes: Vec<NodeId> = self.targets.iter().map(|target| target.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len().max(1)
    }

    /// Where `link` goes; `None` for the one link of a client that is not shard-aware (the
    /// connection the map was fetched on).
    pub fn link_target(&self, link: usize) -> Option<&LinkTarget> {
        self.targets.get(link)
    }

    /// The link that reaches the owner of `hunt`'s partition (0 when not shard-aware).
    pub fn link_for(&self, hunt: HuntId) -> usize {
        if self.shard_aware {
            let partition = self.map.partitioner().partition_of(hunt);
            self.routes[partition.index()] as usize
        } else {
            0
        }
    }

    /// The link to shard `shard` of `node` (an owner hint), opened if the map says where the
    /// node is reached; `None` when it does not, or when the client is not shard-aware.
    pub fn link_to(&mut self, node: NodeId, shard: ShardId) -> Result<Option<usize>, ClientError> {
        if !self.shard_aware {
            return Ok(None);
        }
        match self.target_of(node, shard) {
            Some(target) => self.link_of(target).map(Some),
            None => Ok(None),
        }
    }

    /// Archives `event` into the frame of `link` (see [`Self::link_for`]). On error nothing
    /// was added.
    pub fn push_event(&mut self, link: usize, event: &Event) -> Result<(), EncodeError> {
        let epoch = self.map.epoch().get();
        let outbox = &mut self.outboxes[link];
        outbox.push(event, epoch)?;
        if outbox.frames.open_records() >= self.events_per_frame {
            outbox.frames.finish(epoch);
        }
        Ok(())
    }

    /// Closed frames of `link` not yet written. The open frame stays open.
    pub fn ready_output(&self, link: usize) -> &[u8] {
        self.outboxes[link].ready()
    }

    /// Everything of `link` not yet written, the open frame closed first.
    pub fn flush_output(&mut self, link: usize) -> &[u8] {
        let epoch = self.map.epoch().get();
        let outbox = &mut self.outboxes[link];
        outbox.close_open_frame(epoch);
        outbox.ready()
    }

    /// `len` bytes from the front of [`Self::ready_output`] were written.
    pub fn consumed_output(&mut self, link: usize, len: usize) {
        self.outboxes[link].consumed(len);
    }

    /// Bytes of `link` not yet written, the open frame included. Closes nothing.
    pub fn backlog_bytes(&self, link: usize) -> usize {
        let outbox = &self.outboxes[link];
        outbox.frames.len() - outbox.written
    }

    /// Takes a map a node sent. A newer one replaces the map held: frames already filled are
    /// closed under the old epoch (their events were routed by it) and later events are routed
    /// by the new one, over new links where it names new owners or addresses. A map of
    /// another partition count is another cluster: an error, and the caller reconnects.
    pub fn apply_map(&mut self, push: &MapPush) -> Result<MapUpdate, ClientError> {
        let epoch = push.map.epoch();
        if epoch <= self.map.epoch() {
            return Ok(MapUpdate::Stale {
                epoch: self.map.epoch(),
            });
        }
        if push.map.partitions() != self.map.partitions() {
            return Err(ClientError::MapChanged(format!(
                "the node's map of epoch {epoch} has {} partitions where this client's has {}; the partition count never changes, so this is not the same cluster: reconnect",
                push.map.partitions(),
                self.map.partitions()
            )));
        }
        if self.shard_aware && push.map.nodes().is_empty() {
            return Err(ClientError::Map(MapError::BadNodeCount(0)));
        }
        let old_epoch = self.map.epoch().get();
        for outbox in &mut self.outboxes {
            outbox.close_open_frame(old_epoch);
        }
        let (old_map, old_answering) = (self.map.clone(), self.answering);
        self.map = push.map.clone();
        self.answering = push.answering;
        if self.shard_aware {
            if let Err(error) = self.route_all() {
                // Keep routing by the map that worked.
                self.map = old_map;
                self.answering = old_answering;
                self.route_all()?;
                return Err(error);
            }
        }
        Ok(MapUpdate::Applied { epoch })
    }

    /// Routes every partition whose owner has no link below `links` by `previous` instead
    /// (a route table taken before [`Self::apply_map`]): for a caller whose connections are
    /// fixed, which sends those partitions on to their old owner, which forwards them.
    pub fn keep_routes_below(&mut self, links: usize, previous: &[u32]) {
        for (route, &old) in self.routes.iter_mut().zip(previous) {
            if *route as usize >= links {
                *route = old;
            }
        }
    }

    /// The link each partition's events go on now, indexed by partition (empty when the
    /// client is not shard-aware).
    pub fn routes(&self) -> &[u32] {
        &self.routes
    }

    /// Where shard `shard` of `node` is reached, if the map says.
    fn target_of(&self, node: NodeId, shard: ShardId) -> Option<LinkTarget> {
        let address = self.map.node_address(node)?;
        let port = *address.shard_ports.get(shard.index())?;
        Some(LinkTarget {
            node,
            shard,
            host: address.host.clone(),
            port,
        })
    }

    /// The link of `target`, opened (numbered) if it is new.
    fn link_of(&mut self, target: LinkTarget) -> Result<usize, ClientError> {
        if let Some(&link) = self.links_by_target.get(&target) {
            return Ok(link);
        }
        if self.targets.len() >= CLIENT_LINKS_MAX {
            return Err(ClientError::MapChanged(format!(
                "the map needs more than {CLIENT_LINKS_MAX} connections (CLIENT_LINKS_MAX) to reach every owner; reconnect, or use a client that is not shard-aware"
            )));
        }
        let link = self.targets.len();
        self.targets.push(target.clone());
        self.links_by_target.insert(target, link);
        self.outboxes.push(Outbox::new());
        Ok(link)
    }

    /// Routes every partition by the map: to its owner's shard where the map says where that
    /// node is reached, else to the node that sent the map (or the first node it lists), which
    /// answers `Unavailable` for an owner nobody can reach.
    fn route_all(&mut self) -> Result<(), ClientError> {
        let fallback = self
            .target_of(self.answering, ShardId(0))
            .or_else(|| {
                let first = self.map.nodes().first()?.node;
                self.target_of(first, ShardId(0))
            })
            .ok_or(ClientError::Map(MapError::BadNodeCount(0)))?;
        let mut routes = Vec::with_capacity(self.map.owners().len());
        for index in 0..self.map.owners().len() {
            let owner = self.map.owners()[index];
            let target = self
                .target_of(owner.node, owner.shard)
                .unwrap_or_else(|| fallback.clone());
            routes.push(self.link_of(target)? as u32);
        }
        self.routes = routes;
        Ok(())
    }
}

/// A frame asking the node for its partition map.
pub fn map_request() -> FrameBuilder {
    let mut request = FrameBuilder::new();
    request
        .single::<Event>(FrameKind::MapRequest, 0, None)
        .expect("a map request has no record to encode");
    request
}

/// What [`next_frame`] found at the front of the received bytes.
#[derive(Debug)]
pub enum Next<'a> {
    /// Not a whole frame yet; `frame_len` is its size once its header is in.
    NeedMore { frame_len: Option<usize> },
    /// One whole frame, `frame_len` bytes long, and what it says.
    Frame {
        received: Received<'a>,
        frame_len: usize,
    },
}

/// Takes the next whole frame off the front of `input` (16-byte aligned, as a
/// `ReceiveBuffer` keeps it) and reads it. Malformed input is an error, as is a frame a node
/// never sends a client.
pub fn next_frame(input: &[u8]) -> Result<Next<'_>, ClientError> {
    match decode_frame(input).map_err(ClientError::Protocol)? {
        Decoded::NeedMore { frame_len } => Ok(Next::NeedMore { frame_len }),
        Decoded::Frame {
            header,
            body,
            frame_len,
        } => Ok(Next::Frame {
            received: parse_frame(header.kind, body)?,
            frame_len,
        }),
    }
}

/// Reads the body of a frame of `kind` a node sent (16-byte aligned).
pub fn parse_frame(kind: FrameKind, body: &[u8]) -> Result<Received<'_>, ClientError> {
    if kind == FrameKind::Replies {
        let replies = ValidatedFrame::validate(kind, body).map_err(ClientError::Protocol)?;
        return Ok(Received::Replies(replies));
    }
    parse_control_frame(kind, body)
}

/// Reads a frame a node sends besides replies: a map or an error. Any other kind is an
/// error (a reader that keeps reply bodies whole validates those itself).
pub fn parse_control_frame(kind: FrameKind, body: &[u8]) -> Result<Received<'static>, ClientError> {
    match kind {
        FrameKind::MapReply => parse_map(body).map(Received::Map),
        FrameKind::Error => {
            let (code, message) = parse_error(body).map_err(ClientError::Protocol)?;
            Ok(Received::NodeError { code, message })
        }
        kind => Err(ClientError::Protocol(FrameError::UnexpectedKind { kind })),
    }
}

fn parse_map(body: &[u8]) -> Result<MapPush, ClientError> {
    let frame = ValidatedFrame::<ArchivedPartitionMapMessage>::validate(FrameKind::MapReply, body)
        .map_err(ClientError::Protocol)?;
    let message = frame
        .first()
        .ok_or(ClientError::Protocol(FrameError::BadTrailer))?
        .get();
    let map = PartitionMap::from_message(message).map_err(ClientError::Map)?;
    Ok(MapPush {
        map,
        answering: NodeId(message.answering_node.to_native()),
    })
}

fn parse_error(body: &[u8]) -> Result<(u16, String), FrameError> {
    let frame = ValidatedFrame::<ArchivedErrorMessage>::validate(FrameKind::Error, body)?;
    let message = frame.first().ok_or(FrameError::BadTrailer)?.get();
    Ok((message.code.to_native(), message.message.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::{FrameHeader, Records, decode_header};
    use crate::core::ids::{PlayerId, TreasureId};
    use crate::core::message::{EventKind, MapNode, MapOwner, Outcome, PartitionMapMessage, Reply};
    use crate::core::partition::{NodeAddress, Owner, OwnerState, Placement};
    use rkyv::util::AlignedVec;

    const PARTITIONS: u32 = 64;

    fn event(hunt: u64, seq: u64) -> Event {
        Event {
            hunt: HuntId(hunt),
            player: PlayerId(1),
            client_session: 0,
            client_seq: seq,
            client_ts: seq,
            kind: EventKind::Claim {
                treasure: TreasureId(0),
                code: "x".into(),
            },
        }
    }

    fn big_event(hunt: u64, seq: u64) -> Event {
        Event {
            kind: EventKind::Claim {
                treasure: TreasureId(0),
                code: "y".repeat(3000),
            },
            ..event(hunt, seq)
        }
    }

    /// The frames in `bytes`: each header and its events' sequence numbers.
    fn frames_in(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u64>)> {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while at < aligned.len() {
            let Decoded::Frame {
                header,
                body,
                frame_len,
            } = decode_frame(&aligned[at..]).unwrap()
            else {
                panic!("a partial frame in the output");
            };
            let events =
                ValidatedFrame::<crate::core::message::ArchivedEvent>::validate(header.kind, body)
                    .unwrap();
            let seqs = events
                .iter()
                .map(|record| record.get().client_seq.to_native())
                .collect();
            frames.push((header, seqs));
            at += frame_len;
        }
        frames
    }

    /// What a client reads from a map frame carrying `message`.
    fn read_push(message: &PartitionMapMessage) -> MapPush {
        let mut frame = FrameBuilder::new();
        frame
            .single(FrameKind::MapReply, message.epoch, Some(message))
            .unwrap();
        match next_frame(frame.bytes()).unwrap() {
            Next::Frame {
                received: Received::Map(push),
                ..
            } => push,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    /// A single node's map of `shards` shards at `epoch` with every partition's owner moved one
    /// shard on.
    fn moved_map(epoch: u32, shards: usize) -> MapPush {
        let message = PartitionMapMessage {
            epoch,
            answering_node: 0,
            owners: (0..PARTITIONS)
                .map(|partition| MapOwner {
                    node: 0,
                    shard: ((partition as usize + 1) % shards) as u16,
                    serving: true,
                })
                .collect(),
            nodes: vec![MapNode {
                node: 0,
                host: String::new(),
                shard_ports: (0..shards as u16).map(|shard| 7701 + shard).collect(),
            }],
        };
        read_push(&message)
    }

    /// A cluster's map at `epoch`: partition `p` owned by shard 0 of node `owners[p % len]`,
    /// nodes `reachable` listed at host "n<id>", port 7000 + id; node `answering` sent it.
    fn cluster_map(epoch: u32, owners: &[u32], reachable: &[u32], answering: u32) -> MapPush {
        let placement = Placement::from_owners(
            Epoch(epoch),
            (0..PARTITIONS as usize)
                .map(|p| Owner {
                    node: NodeId(owners[p % owners.len()]),
                    shard: ShardId(0),
                    part_epoch: Epoch(epoch),
                    state: OwnerState::Serving,
                })
                .collect(),
        )
        .unwrap()
        .with_nodes(reachable.iter().map(|&node| NodeAddress {
            node: NodeId(node),
            host: format!("n{node}"),
            shard_ports: vec![7000 + node as u16],
        }))
        .unwrap();
        read_push(&placement.to_message(NodeId(answering), &[7000 + answering as u16]))
    }

    fn proto(shards: usize, shard_aware: bool, events_per_frame: usize) -> ClientProto {
        let map = PartitionMap::round_robin(PARTITIONS, shards).unwrap();
        let ports: Vec<u16> = (0..shards as u16).map(|shard| 7701 + shard).collect();
        let push = read_push(&map.to_message(NodeId(0), &ports));
        ClientProto::new(push, shard_aware, events_per_frame).unwrap()
    }

    #[test]
    fn a_cluster_aware_client_opens_a_link_per_owner_and_routes_each_partition_to_it() {
        let push = cluster_map(5, &[1, 2, 3], &[1, 2, 3], 2);
        let map = push.map.clone();
        let mut client = ClientProto::new(push, true, 8).unwrap();
        assert_eq!(client.links(), 3);
        for hunt in 0..300 {
            let partition = map.partitioner().partition_of(HuntId(hunt));
            let owner = map.owner(partition);
            let target = client.link_target(client.link_for(HuntId(hunt))).unwrap();
            assert_eq!((target.node, target.shard), (owner.node, owner.shard));
            assert_eq!(target.host, format!("n{}", owner.node.0));
            assert_eq!(target.port, 7000 + owner.node.0 as u16);
        }
        // An owner hint names a link; a node the map gives no address for names none.
        let to_three =
            (0..client.links()).find(|&link| client.link_target(link).unwrap().node == NodeId(3));
        assert_eq!(client.link_to(NodeId(3), ShardId(0)).unwrap(), to_three);
        assert_eq!(client.link_to(NodeId(9), ShardId(0)).unwrap(), None);
        assert_eq!(client.link_to(NodeId(3), ShardId(5)).unwrap(), None);
    }

    #[test]
    fn a_client_counts_the_nodes_its_links_reach() {
        let cluster = ClientProto::new(cluster_map(5, &[1, 2, 3], &[1, 2, 3], 2), true, 8);
        assert_eq!(cluster.unwrap().nodes(), 3);
        assert_eq!(proto(4, true, 8).nodes(), 1, "one node, four shards");
        let forwarding = ClientProto::new(cluster_map(5, &[1, 2, 3], &[1, 2, 3], 2), false, 8);
        assert_eq!(forwarding.unwrap().nodes(), 1, "not shard-aware: one node");
    }

    #[test]
    fn a_node_that_joins_gets_a_new_link_and_old_links_keep_their_numbers() {
        let mut client = ClientProto::new(cluster_map(5, &[1, 2], &[1, 2], 1), true, 8).unwrap();
        let before: Vec<LinkTarget> = (0..client.links())
            .map(|link| client.link_target(link).unwrap().clone())
            .collect();
        let update = client
            .apply_map(&cluster_map(9, &[1, 2, 3], &[1, 2, 3], 1))
            .unwrap();
        assert_eq!(update, MapUpdate::Applied { epoch: Epoch(9) });
        assert_eq!(client.links(), 3);
        for (link, target) in before.iter().enumerate() {
            assert_eq!(client.link_target(link), Some(target), "never renumbered");
        }
        assert_eq!(client.link_target(2).unwrap().node, NodeId(3));
        let to_three = (0..400)
            .filter(|&hunt| client.link_for(HuntId(hunt)) == 2)
            .count();
        assert!(to_three > 0, "node 3's partitions go to its link");
    }

    #[test]
    fn an_owner_nobody_can_reach_is_routed_to_the_node_that_sent_the_map() {
        // Node 3 owns a third of the partitions but its registration is gone.
        let push = cluster_map(5, &[1, 2, 3], &[1, 2], 2);
        assert_eq!(
            push.map.offline().count(),
            (PARTITIONS as usize).div_ceil(3) - 1
        );
        let map = push.map.clone();
        let client = ClientProto::new(push, true, 8).unwrap();
        assert_eq!(client.links(), 2);
        for hunt in 0..300 {
            let partition = map.partitioner().partition_of(HuntId(hunt));
            let target = client.link_target(client.link_for(HuntId(hunt))).unwrap();
            let expected = match map.owner(partition).node {
                NodeId(3) => NodeId(2),
                owner => owner,
            };
            assert_eq!(target.node, expected);
        }
    }

    #[test]
    fn a_map_of_another_partition_count_is_another_cluster() {
        let mut client = ClientProto::new(cluster_map(5, &[1, 2], &[1, 2], 1), true, 8).unwrap();
        let owners = Placement::round_robin(PARTITIONS * 2, 1)
            .unwrap()
            .owners()
            .to_vec();
        let other = Placement::from_owners(Epoch(6), owners).unwrap();
        let push = read_push(&other.to_message(NodeId(1), &[7001]));
        let error = client.apply_map(&push).unwrap_err();
        assert!(
            error.to_string().contains("not the same cluster"),
            "{error}"
        );
        assert_eq!(client.epoch(), Epoch(5), "the old map stays");
    }

    #[test]
    fn a_frame_closes_at_its_event_count_and_not_before() {
        let mut client = proto(1, true, 3);
        for seq in 0..2 {
            client.push_event(0, &event(1, seq)).unwrap();
        }
        assert!(
            client.ready_output(0).is_empty(),
            "two of three: still open"
        );
        assert!(client.backlog_bytes(0) > 0);
        client.push_event(0, &event(1, 2)).unwrap();
        let ready = client.ready_output(0).to_vec();
        assert_eq!(frames_in(&ready)[0].1, [0, 1, 2]);
        client.consumed_output(0, ready.len());
        assert_eq!(client.backlog_bytes(0), 0);
    }

    #[test]
    fn an_event_that_does_not_fit_spills_into_the_next_frame() {
        let mut client = proto(1, true, FRAME_RECORDS_MAX);
        // 3 KB events: a frame body of FRAME_BODY_BYTES_MAX (128 KiB) holds about forty.
        let total = 100;
        for seq in 0..total {
            client.push_event(0, &big_event(1, seq)).unwrap();
        }
        let output = client.flush_output(0).to_vec();
        let frames = frames_in(&output);
        assert!(frames.len() >= 3, "{} frames", frames.len());
        assert!(frames.iter().all(|(_, seqs)| seqs.len() < total as usize));
        let seqs: Vec<u64> = frames.iter().flat_map(|(_, seqs)| seqs.clone()).collect();
        assert_eq!(
            seqs,
            (0..total).collect::<Vec<_>>(),
            "none lost, none reordered"
        );
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut client = proto(1, true, 2);
        for seq in 0..6 {
            client.push_event(0, &event(1, seq)).unwrap();
        }
        let mut written = Vec::new();
        while !client.ready_output(0).is_empty() {
            let ready = client.ready_output(0);
            let take = ready.len().min(37);
            written.extend_from_slice(&ready[..take]);
            client.consumed_output(0, take);
        }
        let seqs: Vec<u64> = frames_in(&written)
            .into_iter()
            .flat_map(|(_, seqs)| seqs)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_shard_aware_client_sends_each_event_to_its_owner() {
        let mut client = proto(4, true, 64);
        let map = client.map().clone();
        for hunt in 0..200 {
            let link = client.link_for(HuntId(hunt));
            let target = client.link_target(link).unwrap();
            assert_eq!(
                (target.node, target.shard),
                (NodeId(0), map.route(HuntId(hunt)).1)
            );
            assert_eq!(target.port, 7701 + target.shard.0);
            assert_eq!(target.host, "", "the host the map was fetched from");
            client.push_event(link, &event(hunt, hunt)).unwrap();
        }
        let mut not_aware = proto(4, false, 64);
        assert_eq!(not_aware.links(), 1);
        assert_eq!(not_aware.link_for(HuntId(3)), 0);
        not_aware.push_event(0, &event(3, 3)).unwrap();
    }

    #[test]
    fn an_event_too_large_for_any_frame_is_refused_and_leaves_nothing() {
        let mut client = proto(1, true, 8);
        client.push_event(0, &event(1, 1)).unwrap();
        let huge = Event {
            kind: EventKind::Claim {
                treasure: TreasureId(0),
                code: "z".repeat(70_000),
            },
            ..event(1, 2)
        };
        assert!(client.push_event(0, &huge).is_err());
        let output = client.flush_output(0).to_vec();
        assert_eq!(frames_in(&output)[0].1, [1]);
    }

    #[test]
    fn a_client_behind_applies_the_pushed_map_and_routes_by_it() {
        let mut client = proto(2, true, 64);
        let hunt = HuntId(42);
        let old_link = client.link_for(hunt);
        client.push_event(old_link, &event(42, 1)).unwrap();

        // The node answers with replies and, the client being behind, its newer map.
        let mut stream = FrameBuilder::new();
        stream.begin(FrameKind::Replies);
        stream
            .push(&Reply {
                client_seq: 1,
                client_ts: 1,
                outcome: Outcome::Accepted { score: 0 },
            })
            .unwrap();
        stream.finish(2);
        let push = moved_map(2, 2);
        let mut map_frame = FrameBuilder::new();
        map_frame
            .single(
                FrameKind::MapReply,
                2,
                Some(&push.map.to_message(push.answering, &[7701, 7702])),
            )
            .unwrap();
        stream.append_frames(map_frame.bytes());

        let mut input = stream.bytes();
        let mut replies = 0;
        let mut updates = Vec::new();
        while !input.is_empty() {
            let Next::Frame {
                received,
                frame_len,
            } = next_frame(input).unwrap()
            else {
                panic!("whole frames were given");
            };
            match received {
                Received::Replies(frame) => replies += frame.len(),
                Received::Map(push) => updates.push(client.apply_map(&push).unwrap()),
                Received::NodeError { message, .. } => panic!("{message}"),
            }
            input = &input[frame_len..];
        }
        assert_eq!(replies, 1);
        assert_eq!(updates, [MapUpdate::Applied { epoch: Epoch(2) }]);
        assert_eq!(client.epoch(), Epoch(2));

        let new_link = client.link_for(hunt);
        assert_ne!(new_link, old_link, "every partition moved one shard on");
        client.push_event(new_link, &event(42, 2)).unwrap();
        // The event routed by the old map went out under the old epoch, the next under the new.
        let old = frames_in(client.flush_output(old_link));
        assert_eq!((old[0].0.epoch, old[0].1.clone()), (1, vec![1]));
        let new = frames_in(client.flush_output(new_link));
        assert_eq!((new[0].0.epoch, new[0].1.clone()), (2, vec![2]));

        // The same map again, or an older one, changes nothing.
        assert_eq!(
            client.apply_map(&moved_map(2, 2)).unwrap(),
            MapUpdate::Stale { epoch: Epoch(2) }
        );
        assert_eq!(
            client.apply_map(&moved_map(1, 2)).unwrap(),
            MapUpdate::Stale { epoch: Epoch(2) }
        );
        assert_eq!(client.link_for(hunt), new_link);
    }

    #[test]
    fn a_node_with_more_shards_gives_a_shard_aware_client_more_links() {
        let mut client = proto(2, true, 64);
        assert_eq!(client.links(), 2);
        assert_eq!(
            client.apply_map(&moved_map(5, 3)).unwrap(),
            MapUpdate::Applied { epoch: Epoch(5) }
        );
        assert_eq!(client.links(), 3);
        assert_eq!(client.link_target(2).unwrap().port, 7703);
        let mut single = proto(2, false, 64);
        assert_eq!(
            single.apply_map(&moved_map(5, 3)).unwrap(),
            MapUpdate::Applied { epoch: Epoch(5) }
        );
        assert_eq!(single.links(), 1);
        assert_eq!(single.link_target(0), None, "the seed connection");
    }

    #[test]
    fn events_per_frame_out_of_range_is_a_config_error() {
        let push = moved_map(1, 1);
        for bad in [0, FRAME_RECORDS_MAX + 1] {
            let result = ClientProto::new(push.clone(), true, bad);
            assert!(matches!(result, Err(ClientError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn node_errors_and_bad_frames_are_named() {
        let mut frames = FrameBuilder::new();
        frames.error(1, &FrameError::BodyChecksum);
        match next_frame(frames.bytes()).unwrap() {
            Next::Frame {
                received: Received::NodeError { code, message },
                ..
            } => {
                assert_eq!(code, FrameError::BodyChecksum.code());
                assert!(message.contains("checksum"), "{message}");
            }
            other => panic!("expected a node error, got {other:?}"),
        }
        // A node never sends events to a client.
        let mut events = FrameBuilder::new();
        events.begin(FrameKind::Events);
        events.push(&event(1, 1)).unwrap();
        events.finish(1);
        assert!(matches!(
            next_frame(events.bytes()),
            Err(ClientError::Protocol(FrameError::UnexpectedKind { .. }))
        ));
        // Half a frame is not a frame yet, and says how long the whole one is.
        let cut = &events.bytes()[..40];
        let header = decode_header(cut).unwrap().unwrap();
        assert!(matches!(
            next_frame(cut).unwrap(),
            Next::NeedMore { frame_len: Some(len) } if len == 32 + header.body_len as usize
        ));
        assert!(matches!(
            next_frame(b"HTTP/1.1 200 OK\r\n"),
            Err(ClientError::Protocol(FrameError::BadMagic { .. }))
        ));
    }

    #[test]
    fn a_map_request_is_one_empty_frame() {
        let request = map_request();
        let Decoded::Frame {
            header,
            body,
            frame_len,
        } = decode_frame(request.bytes()).unwrap()
        else {
            panic!("expected a frame");
        };
        assert_eq!(header.kind, FrameKind::MapRequest);
        assert_eq!(frame_len, request.len());
        assert_eq!(Records::parse(header.kind, body).unwrap().count(), 0);
    }
}
