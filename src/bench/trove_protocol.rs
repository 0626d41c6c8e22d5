//! The load generator speaking trove's own protocol: events archived once into frames, one
//! connection per shard when shard-aware, replies matched by the timestamp they echo. The
//! protocol itself is the client's ([`ClientProto`]); this adapts it to the generator's
//! [`Protocol`], on the generator's connection thread.

use crate::bench::generator::{Parsed, Protocol, ReplyClass};
use crate::client::proto::{ClientProto, LinkTarget, MapPush, Next, Received, next_frame};
use crate::core::message::{ArchivedOutcome, ArchivedReply, Event};

/// The generator's side of trove's protocol: the client protocol's frames, one per connection.
pub struct TroveProtocol {
    proto: ClientProto,
    /// The links opened at the start: the generator's connections are fixed for a run.
    links: usize,
}

impl TroveProtocol {
    /// One link per owner's shard (on whichever node) of the map `push` carries when
    /// shard-aware, else one.
    pub fn new(
        push: MapPush,
        shard_aware: bool,
        events_per_frame: usize,
    ) -> Result<TroveProtocol, String> {
        let proto = ClientProto::new(push, shard_aware, events_per_frame)
            .map_err(|error| error.to_string())?;
        let links = proto.links();
        Ok(TroveProtocol { proto, links })
    }

    /// Where `link` goes (`None`: the one connection of a client that is not shard-aware).
    pub fn link_target(&self, link: usize) -> Option<&LinkTarget> {
        self.proto.link_target(link)
    }
}

/// The generator's class of a reply. Every outcome is named, so that a new one is classed
/// here on purpose rather than counted as applied by a wildcard.
fn classify(reply: &ArchivedReply) -> ReplyClass {
    match reply.outcome {
        ArchivedOutcome::Accepted { .. }
        | ArchivedOutcome::Claimed { .. }
        | ArchivedOutcome::AlreadyClaimed { .. }
        | ArchivedOutcome::Leaderboard { .. }
        // A retry of an event applied before: the generator never retries, but a duplicate
        // is an answer the target gave after applying.
        | ArchivedOutcome::Duplicate { .. }
        | ArchivedOutcome::DuplicateUnknown => ReplyClass::Ok,
        ArchivedOutcome::Rejected { .. } => ReplyClass::Rejected,
        ArchivedOutcome::Busy => ReplyClass::Busy,
        ArchivedOutcome::Error { .. }
        | ArchivedOutcome::Moved { .. }
        | ArchivedOutcome::Unavailable { .. } => ReplyClass::Error,
    }
}

impl Protocol for TroveProtocol {
    fn links(&self) -> usize {
        self.links
    }

    fn nodes(&self) -> usize {
        self.proto.nodes()
    }

    fn link_for(&self, event: &Event) -> usize {
        self.proto.link_for(event.hunt)
    }

    fn encode(&mut self, link: usize, event: &Event, _ts: u64) -> Result<(), String> {
        self.proto
            .push_event(link, event)
            .map_err(|error| format!("cannot encode an event: {error}"))
    }

    fn backlog_bytes(&self, link: usize) -> usize {
        self.proto.backlog_bytes(link)
    }

    fn pending_output(&mut self, link: usize) -> &[u8] {
        self.proto.flush_output(link)
    }

    fn consumed_output(&mut self, link: usize, len: usize) {
        self.proto.consumed_output(link, len);
    }

    fn parse(
        &mut self,
        _link: usize,
        input: &[u8],
        on_reply: &mut dyn FnMut(u64, ReplyClass),
    ) -> Result<Parsed, String> {
        let mut consumed = 0;
        loop {
            let next = next_frame(&input[consumed..]).map_err(|error| error.to_string())?;
            let (received, frame_len) = match next {
                Next::NeedMore { frame_len } => {
                    return Ok(Parsed {
                        consumed,
                        message_len: frame_len,
                    });
                }
                Next::Frame {
                    received,
                    frame_len,
                } => (received, frame_len),
            };
            match received {
                Received::Replies(frame) => {
                    for record in frame.iter() {
                        let reply = record.get();
                        on_reply(reply.client_ts.to_native(), classify(reply));
                    }
                }
                // The node pushed a newer map: route the next events by it. A run's
                // connections are fixed, so partitions that moved to an owner it has no
                // connection to (a node that joined) keep going where they went: that node
                // forwards them.
                Received::Map(push) => {
                    let previous = self.proto.routes().to_vec();
                    self.proto
                        .apply_map(&push)
                        .map_err(|error| error.to_string())?;
                    if self.proto.links() > self.links {
                        self.proto.keep_routes_below(self.links, &previous);
                    }
                }
                Received::NodeError { message, .. } => {
                    return Err(format!("the node refused the connection: {message}"));
                }
            }
            consumed += frame_len;
        }
    }
}
