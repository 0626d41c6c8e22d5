//! The trove client: pipelined, batching and shard-aware, for plain threads.
//!
//! [`connect`] asks the node for its partition map, then (when shard-aware) opens one
//! connection to each shard's own port, so every event goes straight to the shard that owns
//! its partition and crosses no core inside the node. It returns two halves:
//! - an [`EventSender`], which archives each event once into the frame of its connection and
//!   writes a frame when it is full or on [`EventSender::flush`]; writes block when the node
//!   stops reading, which is how back-pressure reaches the caller;
//! - a [`ReplyReceiver`], fed by one reader thread per connection, each validating the reply
//!   frames it receives once and passing them on through a bounded channel.
//!
//! No glommio: a caller needs only threads. The halves may live on different threads.
//! A node started with a secret is reached with [`ClientConfig::auth`] set: every connection
//! then passes the handshake of [`auth`] before its first frame.

pub mod auth;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rkyv::util::AlignedVec;
use socket2::{Domain, Protocol, Socket, Type};

use crate::constants::{CLIENT_REPLY_FRAMES_QUEUED_MAX, FRAME_RECORDS_MAX};
use crate::core::auth::{AuthError, AuthSecret};
use crate::core::codec::{
    Decoded, EncodeError, FrameBuilder, FrameError, FrameKind, ReceiveBuffer, Records,
    access_record, access_validated, check_stream_end, decode_frame,
};
use crate::core::message::{
    ArchivedErrorMessage, ArchivedPartitionMapMessage, ArchivedReply, Event,
};
use crate::core::partition::{MapError, PartitionMap};

/// How to reach a node and how to talk to it.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Any shard's address: the node's shared port.
    pub addr: SocketAddr,
    /// Send each event to the port of the shard that owns it (otherwise one connection, and
    /// the node forwards between its cores).
    pub shard_aware: bool,
    /// Events per frame: a frame is written when it holds this many.
    pub events_per_frame: usize,
    pub connect_timeout: Duration,
    /// The node's shared secret, when it requires authentication.
    pub auth: Option<Arc<AuthSecret>>,
    /// Give up a write that the node has not taken after this long, instead of blocking
    /// until the node reads again. `None`: block (back-pressure reaches the caller).
    pub stall_timeout: Option<Duration>,
}

impl ClientConfig {
    pub fn new(addr: SocketAddr) -> ClientConfig {
        ClientConfig {
            addr,
            shard_aware: true,
            events_per_frame: 64,
            connect_timeout: Duration::from_secs(5),
            auth: None,
            stall_timeout: None,
        }
    }
}

/// Why the client could not do what was asked.
#[derive(Debug)]
pub enum ClientError {
    /// A socket operation failed.
    Io { what: String, error: io::Error },
    /// The node sent bytes that are not valid frames.
    Protocol(FrameError),
    /// The node answered with an error frame.
    Node { code: u16, message: String },
    /// The node's partition map is unusable.
    Map(MapError),
    /// An event could not be encoded (too large, say).
    Encode(EncodeError),
    /// The configuration is unusable.
    Config(String),
    /// The authentication handshake failed.
    Auth(AuthError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io { what, error } => write!(f, "{what}: {error}"),
            ClientError::Protocol(error) => write!(f, "the node sent an invalid frame: {error}"),
            ClientError::Node { code, message } => {
                write!(f, "the node reported error {code}: {message}")
            }
            ClientError::Map(error) => write!(f, "the node's partition map is unusable: {error}"),
            ClientError::Encode(error) => write!(f, "cannot encode the event: {error}"),
            ClientError::Config(message) => write!(f, "{message}"),
            ClientError::Auth(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClientError {
    let what = what.into();
    move |error| ClientError::Io { what, error }
}

/// Opens a TCP connection with TCP_NODELAY set.
pub fn connect_stream(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io_error("cannot create a socket"))?;
    socket
        .connect_timeout(&addr.into(), timeout)
        .map_err(io_error(format!(
            "cannot connect to {addr} (is a trove node listening there?)"
        )))?;
    socket
        .set_nodelay(true)
        .map_err(io_error("cannot set TCP_NODELAY"))?;
    Ok(socket.into())
}

/// [`connect_stream`], then the authentication handshake when `secret` is given.
pub fn connect_authenticated(
    addr: SocketAddr,
    timeout: Duration,
    secret: Option<&AuthSecret>,
) -> Result<TcpStream, ClientError> {
    let mut stream = connect_stream(addr, timeout)?;
    if let Some(secret) = secret {
        auth::authenticate(&mut stream, secret, timeout)?;
    }
    Ok(stream)
}

/// Reads one whole frame from a blocking stream.
fn read_frame(
    stream: &mut TcpStream,
    input: &mut ReceiveBuffer,
) -> Result<(FrameKind, AlignedVec), ClientError> {
    let mut frame_len = None;
    loop {
        let decoded = match decode_frame(input.pending()).map_err(ClientError::Protocol)? {
            Decoded::Frame {
                header,
                body,
                frame_len,
            } => {
                let mut owned = AlignedVec::new();
                owned.extend_from_slice(body);
                Some((header.kind, owned, frame_len))
            }
            Decoded::NeedMore { frame_len: len } => {
                frame_len = len;
                None
            }
        };
        if let Some((kind, body, len)) = decoded {
            input.consume(len);
            return Ok((kind, body));
        }
        let read = match stream.read(input.spare(frame_len)) {
            // A signal landed on this thread mid-read (glommio's executors use signals): retry.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            read => read.map_err(io_error("cannot read from the node"))?,
        };
        if read == 0 {
            check_stream_end(input.pending()).map_err(ClientError::Protocol)?;
            return Err(ClientError::Io {
                what: "the node closed the connection".into(),
                error: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        input.filled(read);
    }
}

/// The error a node sent in an error frame body.
fn node_error(body: &[u8]) -> ClientError {
    let parsed = Records::parse(FrameKind::Error, body).and_then(|records| {
        let record = records.iter().next().ok_or(FrameError::BadTrailer)?;
        let message = access_record::<ArchivedErrorMessage>(0, record)?;
        Ok(ClientError::Node {
            code: message.code.to_native(),
            message: message.message.to_string(),
        })
    });
    parsed.unwrap_or_else(ClientError::Protocol)
}

/// Asks the node for its partition map and the port of each shard.
pub fn fetch_map(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(PartitionMap, Vec<u16>), ClientError> {
    let mut request = FrameBuilder::new();
    request
        .single::<Event>(FrameKind::MapRequest, 0, None)
        .map_err(ClientError::Encode)?;
    stream
        .write_all(request.bytes())
        .map_err(io_error("cannot ask the node for its partition map"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_error("cannot set a read timeout"))?;
    let mut input = ReceiveBuffer::new();
    let (kind, body) = read_frame(stream, &mut input).map_err(|error| match error {
        ClientError::Io { ref error, .. }
            if matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ClientError::Io {
                what: format!(
                    "the node did not send its partition map within {} ms (is it stopped, overloaded, or not reading?)",
                    timeout.as_millis()
                ),
                // Not the OS's "Resource temporarily unavailable": what happened is a timeout.
                error: io::ErrorKind::TimedOut.into(),
            }
        }
        other => other,
    })?;
    stream
        .set_read_timeout(None)
        .map_err(io_error("cannot clear the read timeout"))?;
    match kind {
        FrameKind::MapReply => {
            let records = Records::parse(kind, &body).map_err(ClientError::Protocol)?;
            let record = records
                .iter()
                .next()
                .ok_or(ClientError::Protocol(FrameError::BadTrailer))?;
            let message = access_record::<ArchivedPartitionMapMessage>(0, record)
                .map_err(ClientError::Protocol)?;
            let map = PartitionMap::from_message(message).map_err(ClientError::Map)?;
            Ok((
                map,
                message
                    .shard_ports
                    .iter()
                    .map(|port| port.to_native())
                    .collect(),
            ))
        }
        FrameKind::Error => Err(node_error(&body)),
        FrameKind::AuthChallenge => Err(ClientError::Config(
            "the node requires authentication: give the client the node's secret (--auth-secret-file)"
                .into(),
        )),
        kind => Err(ClientError::Protocol(FrameError::UnexpectedKind { kind })),
    }
}

/// Connects to a node. See the module documentation.
pub fn connect(config: &ClientConfig) -> Result<(EventSender, ReplyReceiver), ClientError> {
    if config.events_per_frame == 0 || config.events_per_frame > FRAME_RECORDS_MAX {
        return Err(ClientError::Config(format!(
            "{} events per frame: it must be from 1 to {FRAME_RECORDS_MAX}",
            config.events_per_frame
        )));
    }
    let secret = config.auth.as_deref();
    let mut first = connect_authenticated(config.addr, config.connect_timeout, secret)?;
    let (map, ports) = fetch_map(&mut first, config.connect_timeout)?;
    let streams = if config.shard_aware {
        ports
            .into_iter()
            .map(|port| {
                let addr = SocketAddr::new(config.addr.ip(), port);
                connect_authenticated(addr, config.connect_timeout, secret)
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![first]
    };
    let (incoming, receiver) = flume::bounded(CLIENT_REPLY_FRAMES_QUEUED_MAX);
    let mut links = Vec::with_capacity(streams.len());
    let mut readers = Vec::with_capacity(streams.len());
    for (link, stream) in streams.into_iter().enumerate() {
        stream
            .set_write_timeout(config.stall_timeout)
            .map_err(io_error("cannot set a write timeout"))?;
        let read_half = stream
            .try_clone()
            .map_err(io_error("cannot clone a socket"))?;
        let incoming = incoming.clone();
        let reader = std::thread::Builder::new()
            .name(format!("trove-client-rx-{link}"))
            .spawn(move || read_replies(link, read_half, incoming))
            .map_err(io_error("cannot start a reader thread"))?;
        readers.push(reader);
        links.push(Link {
            stream,
            frames: FrameBuilder::new(),
        });
    }
    let sender = EventSender {
        map,
        links,
        shard_aware: config.shard_aware,
        events_per_frame: config.events_per_frame,
    };
    Ok((
        sender,
        ReplyReceiver {
            incoming: receiver,
            readers,
        },
    ))
}

/// One connection's write side and the frame being filled for it.
struct Link {
    stream: TcpStream,
    frames: FrameBuilder,
}

impl Link {
    fn flush(&mut self, epoch: u32) -> Result<usize, ClientError> {
        if self.frames.is_open() {
            self.frames.finish(epoch);
        }
        if self.frames.is_empty() {
            return Ok(0);
        }
        self.stream
            .write_all(self.frames.bytes())
            .map_err(|error| match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Io {
                    what: "the node has stopped taking data (a shard that is stopped or not reading); gave up".into(),
                    error: io::ErrorKind::TimedOut.into(),
                },
                _ => ClientError::Io {
                    what: "cannot send to the node".into(),
                    error,
                },
            })?;
        let written = self.frames.len();
        self.frames.clear(written);
        Ok(written)
    }
}

/// The sending half of a client. Lives on one thread at a time.
pub struct EventSender {
    map: PartitionMap,
    links: Vec<Link>,
    shard_aware: bool,
    events_per_frame: usize,
}

impl EventSender {
    /// The node's partition map.
    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// How many connections the client holds (one per shard when shard-aware).
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Queues an event in the frame of the connection that reaches its owner, writing the
    /// frame once it is full.
    pub fn send(&mut self, event: &Event) -> Result<(), ClientError> {
        let link = if self.shard_aware {
            self.map.route(event.hunt).1.index()
        } else {
            0
        };
        let epoch = self.map.epoch().get();
        let frames = &mut self.links[link].frames;
        if !frames.is_open() {
            frames.begin(FrameKind::Events);
        }
        if let Err(error) = frames.push(event) {
            if frames.open_records() == 0 {
                return Err(ClientError::Encode(error));
            }
            // The frame is full in bytes: send it and start the next one.
            self.links[link].flush(epoch)?;
            let frames = &mut self.links[link].frames;
            frames.begin(FrameKind::Events);
            frames.push(event).map_err(ClientError::Encode)?;
        }
        if self.links[link].frames.open_records() >= self.events_per_frame {
            self.links[link].flush(epoch)?;
        }
        Ok(())
    }

    /// Writes every partly filled frame.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        let epoch = self.map.epoch().get();
        for link in &mut self.links {
            link.flush(epoch)?;
        }
        Ok(())
    }

    /// Closes the sending side of every connection; replies still arrive.
    pub fn finish(mut self) -> Result<(), ClientError> {
        self.flush()?;
        for link in &self.links {
            link.stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(io_error("cannot close the connection"))?;
        }
        Ok(())
    }
}

/// A frame of replies, validated once on arrival.
pub struct ReplyFrame {
    body: AlignedVec,
}

impl ReplyFrame {
    /// The replies, in the order the node sent them.
    pub fn replies(&self) -> impl Iterator<Item = &ArchivedReply> {
        let records = Records::parse(FrameKind::Replies, &self.body).expect("validated on arrival");
        // SAFETY: every record of this body passed `access_record::<ArchivedReply>` when the
        // frame arrived, and the body sits in its own aligned buffer.
        records
            .iter()
            .map(|record| unsafe { access_validated::<ArchivedReply>(record) })
    }
}

/// What a connection's reader passes on.
pub enum Incoming {
    Replies(ReplyFrame),
    /// The node sent an error frame; it closes the connection next.
    NodeError {
        link: usize,
        code: u16,
        message: String,
    },
    /// The connection ended; `error` says why if it was not a clean close.
    Closed {
        link: usize,
        error: Option<String>,
    },
}

/// Why [`ReplyReceiver::recv_timeout`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing arrived in time.
    Timeout,
    /// Every connection has ended.
    Ended,
}

/// The receiving half of a client.
pub struct ReplyReceiver {
    incoming: flume::Receiver<Incoming>,
    readers: Vec<JoinHandle<()>>,
}

impl ReplyReceiver {
    /// The next frame of replies or connection event; `None` once every connection has ended.
    pub fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().ok()
    }

    /// Like [`Self::recv`], giving up after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Incoming, RecvError> {
        self.incoming
            .recv_timeout(timeout)
            .map_err(|error| match error {
                flume::RecvTimeoutError::Timeout => RecvError::Timeout,
                flume::RecvTimeoutError::Disconnected => RecvError::Ended,
            })
    }

    /// Waits for every reader thread to end (after the node closed every connection).
    pub fn join(self) {
        drop(self.incoming);
        for reader in self.readers {
            let _ = reader.join();
        }
    }
}

/// A connection's reader thread: frames in, validated reply frames out.
fn read_replies(link: usize, mut stream: TcpStream, incoming: flume::Sender<Incoming>) {
    let mut input = ReceiveBuffer::new();
    let error = loop {
        let (kind, body) = match read_frame(&mut stream, &mut input) {
            Ok(frame) => frame,
            Err(ClientError::Io { error, .. }) if error.kind() == io::ErrorKind::UnexpectedEof => {
                break None;
            }
            Err(error) => break Some(error.to_string()),
        };
        let forwarded = match kind {
            FrameKind::Replies => match validate_replies(&body) {
                Ok(()) => incoming.send(Incoming::Replies(ReplyFrame { body })),
                Err(error) => break Some(ClientError::Protocol(error).to_string()),
            },
            FrameKind::Error => match node_error(&body) {
                ClientError::Node { code, message } => incoming.send(Incoming::NodeError {
                    link,
                    code,
                    message,
                }),
                other => break Some(other.to_string()),
            },
            // A newer map: this client keeps routing by the one it has; the node forwards.
            FrameKind::MapReply => Ok(()),
            kind => {
                break Some(ClientError::Protocol(FrameError::UnexpectedKind { kind }).to_string());
            }
        };
        if forwarded.is_err() {
            // The receiving half is gone: nobody wants the replies any more.
            return;
        }
    };
    let _ = incoming.send(Incoming::Closed { link, error });
}

fn validate_replies(body: &[u8]) -> Result<(), FrameError> {
    let records = Records::parse(FrameKind::Replies, body)?;
    for (index, record) in records.iter().enumerate() {
        access_record::<ArchivedReply>(index as u32, record)?;
    }
    Ok(())
}
