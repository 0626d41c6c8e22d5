//! The load generator speaking trove's own protocol: events archived once into frames, one
//! connection per shard when shard-aware, replies matched by the timestamp they echo.

use crate::bench::generator::{Parsed, Protocol, ReplyClass};
use crate::core::codec::{Decoded, FrameBuilder, FrameKind, Records, access_record, decode_frame};
use crate::core::message::{ArchivedErrorMessage, ArchivedOutcome, ArchivedReply, Event};
use crate::core::partition::PartitionMap;

/// Frames being filled, one per connection.
pub struct TroveProtocol {
    map: PartitionMap,
    shard_aware: bool,
    events_per_frame: usize,
    links: Vec<LinkFrames>,
}

struct LinkFrames {
    frames: FrameBuilder,
    /// Bytes of `frames` already written.
    written: usize,
}

impl TroveProtocol {
    /// `links` connections: one per shard of `map` when shard-aware, else one.
    pub fn new(map: PartitionMap, shard_aware: bool, events_per_frame: usize) -> TroveProtocol {
        let links = if shard_aware { map.shards() } else { 1 };
        TroveProtocol {
            map,
            shard_aware,
            events_per_frame,
            links: (0..links)
                .map(|_| LinkFrames {
                    frames: FrameBuilder::new(),
                    written: 0,
                })
                .collect(),
        }
    }
}

fn classify(reply: &ArchivedReply) -> ReplyClass {
    match reply.outcome {
        ArchivedOutcome::Rejected { .. } => ReplyClass::Rejected,
        ArchivedOutcome::Busy => ReplyClass::Busy,
        ArchivedOutcome::Error { .. } | ArchivedOutcome::Moved { .. } => ReplyClass::Error,
        _ => ReplyClass::Ok,
    }
}

impl Protocol for TroveProtocol {
    fn links(&self) -> usize {
        self.links.len()
    }

    fn link_for(&self, event: &Event) -> usize {
        if self.shard_aware {
            self.map.route(event.hunt).1.index()
        } else {
            0
        }
    }

    fn encode(&mut self, link: usize, event: &Event, _ts: u64) -> Result<(), String> {
        let epoch = self.map.epoch().get();
        let frames = &mut self.links[link].frames;
        if !frames.is_open() {
            frames.begin(FrameKind::Events);
        }
        if frames.push(event).is_err() {
            frames.finish(epoch);
            frames.begin(FrameKind::Events);
            frames
                .push(event)
                .map_err(|error| format!("cannot encode an event: {error}"))?;
        }
        if frames.open_records() >= self.events_per_frame {
            frames.finish(epoch);
        }
        Ok(())
    }

    fn backlog_bytes(&self, link: usize) -> usize {
        let link = &self.links[link];
        link.frames.len() - link.written
    }

    fn pending_output(&mut self, link: usize) -> &[u8] {
        let epoch = self.map.epoch().get();
        let link = &mut self.links[link];
        if link.frames.is_open() {
            link.frames.finish(epoch);
        }
        &link.frames.bytes()[link.written..]
    }

    fn consumed_output(&mut self, link: usize, len: usize) {
        let link = &mut self.links[link];
        link.written += len;
        if link.written == link.frames.len() {
            link.frames
                .clear(crate::constants::WRITE_BUFFER_RETAINED_BYTES_MAX);
            link.written = 0;
        }
    }

    fn parse(
        &mut self,
        _link: usize,
        input: &[u8],
        on_reply: &mut dyn FnMut(u64, ReplyClass),
    ) -> Result<Parsed, String> {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            let (header, body, frame_len) = match decode_frame(rest)
                .map_err(|error| format!("the node sent an invalid frame: {error}"))?
            {
                Decoded::NeedMore { frame_len } => {
                    return Ok(Parsed {
                        consumed,
                        message_len: frame_len,
                    });
                }
                Decoded::Frame {
                    header,
                    body,
                    frame_len,
                } => (header, body, frame_len),
            };
            match header.kind {
                FrameKind::Replies => {
                    let records =
                        Records::parse(header.kind, body).map_err(|error| error.to_string())?;
                    for (index, record) in records.iter().enumerate() {
                        let reply = access_record::<ArchivedReply>(index as u32, record)
                            .map_err(|error| error.to_string())?;
                        on_reply(reply.client_ts.to_native(), classify(reply));
                    }
                }
                FrameKind::Error => {
                    let records =
                        Records::parse(header.kind, body).map_err(|error| error.to_string())?;
                    let message = records
                        .iter()
                        .next()
                        .and_then(|record| access_record::<ArchivedErrorMessage>(0, record).ok())
                        .map_or_else(
                            || "an unreadable error".to_owned(),
                            |message| message.message.to_string(),
                        );
                    return Err(format!("the node refused the connection: {message}"));
                }
                FrameKind::MapReply => {}
                kind => return Err(format!("the node sent an unexpected {kind:?} frame")),
            }
            consumed += frame_len;
        }
    }
}
