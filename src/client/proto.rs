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
//! - **Epoch tracking.** Every frame carries the epoch of the map its events were routed by. A
//!   node that sees a client behind its epoch pushes its newer map along with the replies; the
//!   client hands it to [`ClientProto::apply_map`], which closes the frames routed by the old
//!   map and routes every later event by the new one. An older or equal map changes nothing.
//!
//! A `ClientProto` lives on the one thread that sends (a client thread, a bench connection
//! thread, the simulator's loop); [`next_frame`] is a plain function any reader thread calls.
//!
//! [`EventSender`]: crate::client::EventSender

use crate::client::ClientError;
use crate::constants::{FRAME_RECORDS_MAX, WRITE_BUFFER_RETAINED_BYTES_MAX};
use crate::core::codec::{
    Decoded, EncodeError, FrameBuilder, FrameError, FrameKind, ValidatedFrame, decode_frame,
};
use crate::core::ids::{Epoch, HuntId};
use crate::core::message::{
    ArchivedErrorMessage, ArchivedPartitionMapMessage, ArchivedReply, Event,
};
use crate::core::partition::PartitionMap;

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

/// What the node pushed or answered with a map: the map and each shard's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapPush {
    pub map: PartitionMap,
    /// Shard `s` accepts connections on `shard_ports[s]`.
    pub shard_ports: Vec<u16>,
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

/// The sending side of a trove client, sans-IO. See the module documentation.
pub struct ClientProto {
    map: PartitionMap,
    shard_aware: bool,
    events_per_frame: usize,
    outboxes: Vec<Outbox>,
}

impl ClientProto {
    /// A client of the node whose map is `map`: one connection per shard when `shard_aware`,
    /// else one connection; a frame is closed once it holds `events_per_frame` events.
    pub fn new(
        map: PartitionMap,
        shard_aware: bool,
        events_per_frame: usize,
    ) -> Result<ClientProto, ClientError> {
        if events_per_frame == 0 || events_per_frame > FRAME_RECORDS_MAX {
            return Err(ClientError::Config(format!(
                "{events_per_frame} events per frame: it must be from 1 to {FRAME_RECORDS_MAX}"
            )));
        }
        let links = if shard_aware { map.shards() } else { 1 };
        Ok(ClientProto {
            map,
            shard_aware,
            events_per_frame,
            outboxes: (0..links).map(|_| Outbox::new()).collect(),
        })
    }

    /// The partition map events are routed by.
    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// The epoch of that map, which every frame carries.
    pub fn epoch(&self) -> Epoch {
        self.map.epoch()
    }

    /// How many connections the client uses.
    pub fn links(&self) -> usize {
        self.outboxes.len()
    }

    /// The connection that reaches the owner of `hunt`'s partition (0 when not shard-aware).
    pub fn link_for(&self, hunt: HuntId) -> usize {
        if self.shard_aware {
            self.map.route(hunt).1.index()
        } else {
            0
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

    /// Takes a map the node sent. A newer one replaces the map held: frames already filled
    /// are closed under the old epoch (their events were routed by it) and later events are
    /// routed by the new one. A shard-aware client cannot follow a node whose shard count
    /// changed (it holds one connection per shard): that is an error, and the caller
    /// reconnects.
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
        if self.shard_aware && push.map.shards() != self.outboxes.len() {
            return Err(ClientError::MapChanged(format!(
                "the node's map of epoch {epoch} has {} shards where this client holds {} connections: reconnect",
                push.map.shards(),
                self.outboxes.len()
            )));
        }
        let old_epoch = self.map.epoch().get();
        for outbox in &mut self.outboxes {
            outbox.close_open_frame(old_epoch);
        }
        self.map = push.map.clone();
        Ok(MapUpdate::Applied { epoch })
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
        shard_ports: message
            .shard_ports
            .iter()
            .map(|port| port.to_native())
            .collect(),
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
    use crate::core::ids::{PlayerId, ShardId, TreasureId};
    use crate::core::message::{EventKind, Outcome, PartitionMapMessage, Reply};
    use rkyv::util::AlignedVec;

    const PARTITIONS: u32 = 64;

    fn event(hunt: u64, seq: u64) -> Event {
        Event {
            hunt: HuntId(hunt),
            player: PlayerId(1),
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

    /// A map of `shards` shards at `epoch` with every partition's owner moved one shard on.
    fn moved_map(epoch: u32, shards: usize) -> MapPush {
        let owners = (0..PARTITIONS)
            .map(|partition| ((partition as usize + 1) % shards) as u16)
            .collect();
        let message = PartitionMapMessage {
            epoch,
            owners,
            shard_ports: (0..shards as u16).map(|shard| 7701 + shard).collect(),
        };
        let mut frame = FrameBuilder::new();
        frame
            .single(FrameKind::MapReply, epoch, Some(&message))
            .unwrap();
        match next_frame(frame.bytes()).unwrap() {
            Next::Frame {
                received: Received::Map(push),
                ..
            } => push,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    fn proto(shards: usize, shard_aware: bool, events_per_frame: usize) -> ClientProto {
        let map = PartitionMap::round_robin(PARTITIONS, shards).unwrap();
        ClientProto::new(map, shard_aware, events_per_frame).unwrap()
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
            assert_eq!(ShardId(link as u16), map.route(HuntId(hunt)).1);
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
                Some(&push.map.to_message(&push.shard_ports)),
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
    fn a_map_with_another_shard_count_asks_a_shard_aware_client_to_reconnect() {
        let mut client = proto(2, true, 64);
        let error = client.apply_map(&moved_map(5, 3)).unwrap_err();
        assert!(error.to_string().contains("reconnect"), "{error}");
        assert_eq!(client.epoch(), Epoch(1), "the old map stays");
        let mut single = proto(2, false, 64);
        assert_eq!(
            single.apply_map(&moved_map(5, 3)).unwrap(),
            MapUpdate::Applied { epoch: Epoch(5) }
        );
    }

    #[test]
    fn events_per_frame_out_of_range_is_a_config_error() {
        let map = PartitionMap::round_robin(PARTITIONS, 1).unwrap();
        for bad in [0, FRAME_RECORDS_MAX + 1] {
            let result = ClientProto::new(map.clone(), true, bad);
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
