//! The trove client: pipelined, batching and shard-aware, for plain threads. For a cluster,
//! [`connect_cluster`] (in [`cluster`]) adds re-sending of moved events on top of it.
//!
//! [`connect`] asks the node for its partition map, then (when shard-aware) opens one
//! connection to each owner's shard port, on whichever node the map says it runs, so every
//! event goes straight to the shard that owns its partition and crosses no core or node.
//! Links a newer map names are opened when an event first needs them. It returns two halves:
//! - an [`EventSender`], which archives each event once into the frame of its connection and
//!   writes a frame when it is full or on [`EventSender::flush`]; writes block when the node
//!   stops reading, which is how back-pressure reaches the caller;
//! - a [`ReplyReceiver`], fed by one reader thread per connection, each validating the reply
//!   frames it receives once and passing them on through a bounded channel.
//!
//! The protocol itself (frame filling, reply and map parsing, epoch tracking) is the sans-IO
//! [`proto`]; this module adds sockets and threads. A node that finds the client behind its
//! map's epoch pushes its newer map with the replies: the reader that receives it leaves it in
//! a [`MapMailbox`], and the sender applies it before its next event.
//!
//! Every client has a session ([`ClientConfig::session`], random per config and kept by its
//! clones) that goes out in each event it sends, so that retrying an unanswered event after a
//! reconnect, with the same config and the same `client_seq`, cannot apply it twice: the
//! partition answers `Duplicate` with how it went the first time.
//!
//! No glommio: a caller needs only threads. The halves may live on different threads.
//! A node started with a secret is reached with [`ClientConfig::auth`] set: every connection
//! then passes the handshake of [`auth`] before its first frame. A node started with TLS is
//! reached with [`ClientConfig::tls`] set: every connection is a [`Connection::Tls`] (see
//! [`tls`]), and the secret's handshake, if any, runs inside it.

pub mod auth;

pub mod cluster;
pub mod proto;
pub mod redirect;
pub mod tls;

pub use cluster::{ClusterClient, ClusterRecvError, connect_cluster, connect_cluster_with_map};

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rkyv::util::AlignedVec;
use socket2::{Domain, Protocol, Socket, Type};

use crate::client::proto::{ClientProto, LinkTarget, MapPush, Received};
use crate::client::tls::{TlsClient, TlsStream};
use crate::constants::CLIENT_REPLY_FRAMES_QUEUED_MAX;
use crate::core::auth::{AuthError, AuthSecret};
use crate::core::codec::{
    Decoded, EncodeError, FrameError, FrameKind, ReceiveBuffer, ValidatedFrameBuf,
    check_stream_end, decode_frame,
};
use crate::core::ids::{Epoch, HuntId, NodeId, ShardId};
use crate::core::message::{ArchivedReply, Event, NO_SESSION};
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
    /// TLS to the node, when it speaks TLS.
    pub tls: Option<Arc<TlsClient>>,
    /// Give up a write that the node has not taken after this long, instead of blocking
    /// until the node reads again. `None`: block (back-pressure reaches the caller).
    pub stall_timeout: Option<Duration>,
    /// The client's session, written into every event sent without one
    /// (`Event::client_session`): random for each new config ([`new_session`]) and kept by
    /// its clones, so a client that connects again with the same config (after a lost
    /// connection or a node restart) and re-sends an unanswered event with its `client_seq`
    /// has it answered `Duplicate` rather than applied twice. [`NO_SESSION`]: none.
    pub session: u64,
}

impl ClientConfig {
    pub fn new(addr: SocketAddr) -> ClientConfig {
        ClientConfig {
            addr,
            shard_aware: true,
            events_per_frame: 64,
            connect_timeout: Duration::from_secs(5),
            auth: None,
            tls: None,
            stall_timeout: None,
            session: new_session(),
        }
    }
}

/// A new client session: 64 random bits from the OS, never [`NO_SESSION`]. Two clients picking
/// the same one by chance would have each other's events taken for retries; at 64 bits that
/// takes billions of sessions on one partition.
pub fn new_session() -> u64 {
    let mut bytes = [0u8; 8];
    let session = match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // No OS randomness (a sandbox without getrandom(2)): std's per-process random keys,
        // which also differ between calls.
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        }
    };
    session.max(1)
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
    /// TLS failed (the message says why and what to do).
    Tls(String),
    /// The node's new map cannot be followed by this client (the message says why).
    MapChanged(String),
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
            ClientError::Config(message)
            | ClientError::MapChanged(message)
            | ClientError::Tls(message) => {
                write!(f, "{message}")
            }
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

/// One connection to a node: a TCP socket, or TLS over one.
#[derive(Debug)]
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl From<TcpStream> for Connection {
    fn from(stream: TcpStream) -> Connection {
        Connection::Plain(stream)
    }
}

impl Connection {
    /// The socket (for timeouts, polling and blocking mode).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Connection::Plain(stream) => stream,
            Connection::Tls(stream) => stream.socket(),
        }
    }

    /// A second handle on the same connection, for a reader thread: only one of the two may
    /// write.
    pub fn try_clone(&self) -> io::Result<Connection> {
        Ok(match self {
            Connection::Plain(stream) => Connection::Plain(stream.try_clone()?),
            Connection::Tls(stream) => Connection::Tls(Box::new(stream.try_clone()?)),
        })
    }

    /// Closes the sending side (after a `close_notify` with TLS); replies still arrive.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Connection::Plain(stream) => stream.shutdown(std::net::Shutdown::Write),
            Connection::Tls(stream) => stream.close_write(),
        }
    }

    /// Bytes written that still wait for the socket (TLS on a non-blocking socket): wait for
    /// it to be writable, then [`Write::flush`].
    pub fn has_unsent(&self) -> bool {
        match self {
            Connection::Plain(_) => false,
            Connection::Tls(stream) => stream.has_unsent(),
        }
    }

    /// Input a read returns without waiting for the socket (TLS keeps decrypted records).
    pub fn has_buffered_input(&self) -> bool {
        match self {
            Connection::Plain(_) => false,
            Connection::Tls(stream) => stream.has_buffered_input(),
        }
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.socket().set_nonblocking(nonblocking)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.read(buf),
            Connection::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.write(bytes),
            Connection::Tls(stream) => stream.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Plain(stream) => stream.flush(),
            Connection::Tls(stream) => stream.flush(),
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.socket().as_raw_fd()
    }
}

/// What [`fetch_map`] needs of a connection: bytes both ways, and a read timeout.
pub trait NodeStream: Read + Write {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl NodeStream for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl NodeStream for Connection {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }
}

/// [`connect_stream`], then the TLS handshake when `tls` is given, then the authentication
/// handshake (inside TLS) when `secret` is.
pub fn connect_authenticated(
    addr: SocketAddr,
    timeout: Duration,
    secret: Option<&AuthSecret>,
    tls: Option<&Arc<TlsClient>>,
) -> Result<Connection, ClientError> {
    let socket = connect_stream(addr, timeout)?;
    let mut connection = match tls {
        None => Connection::Plain(socket),
        Some(tls) => Connection::Tls(Box::new(TlsStream::connect(
            socket,
            tls.clone(),
            addr,
            timeout,
        )?)),
    };
    if let Some(secret) = secret {
        auth::authenticate(&mut connection, secret, timeout)?;
    }
    Ok(connection)
}

/// A TLS record header of an alert (content type 21, version 3.x): what a TLS node answers
/// a client that spoke plain trove frames to it.
fn is_tls_alert(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x15 && bytes[1] == 0x03
}

fn tls_node_error() -> ClientError {
    ClientError::Tls(
        "the node answered with a TLS alert: it speaks TLS; connect with --tls-ca (the CA of its certificate)".into(),
    )
}

/// Reads one whole frame from a blocking stream.
fn read_frame(
    stream: &mut impl Read,
    input: &mut ReceiveBuffer,
) -> Result<(FrameKind, AlignedVec), ClientError> {
    let mut frame_len = None;
    loop {
        let decoded = match decode_frame(input.pending()) {
            Err(_) if is_tls_alert(input.pending()) => return Err(tls_node_error()),
            Err(error) => return Err(ClientError::Protocol(error)),
            Ok(Decoded::Frame {
                header,
                body,
                frame_len,
            }) => {
                let mut owned = AlignedVec::new();
                owned.extend_from_slice(body);
                Some((header.kind, owned, frame_len))
            }
            Ok(Decoded::NeedMore { frame_len: len }) => {
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
            if is_tls_alert(input.pending()) {
                return Err(tls_node_error());
            }
            check_stream_end(input.pending()).map_err(ClientError::Protocol)?;
            return Err(ClientError::Io {
                what: "the node closed the connection".into(),
                error: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        input.filled(read);
    }
}

/// Asks the node for its partition map (with where each owner is reached, and which node
/// answered).
pub fn fetch_map(stream: &mut impl NodeStream, timeout: Duration) -> Result<MapPush, ClientError> {
    stream
        .write_all(proto::map_request().bytes())
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
    if kind == FrameKind::AuthChallenge {
        return Err(ClientError::Config(
            "the node requires authentication: give the client the node's secret (--auth-secret-file)"
                .into(),
        ));
    }
    match proto::parse_frame(kind, &body)? {
        Received::Map(push) => Ok(push),
        Received::NodeError { code, message } => Err(ClientError::Node { code, message }),
        Received::Replies(_) => Err(ClientError::Protocol(FrameError::UnexpectedKind { kind })),
    }
}

/// Connects to a node. See the module documentation.
pub fn connect(config: &ClientConfig) -> Result<(EventSender, ReplyReceiver), ClientError> {
    let (secret, tls) = (config.auth.as_deref(), config.tls.as_ref());
    let mut first = connect_authenticated(config.addr, config.connect_timeout, secret, tls)?;
    let push = fetch_map(&mut first, config.connect_timeout)?;
    start(config, push, first)
}

/// Like [`connect`], starting from a map the caller holds (kept from an earlier connection,
/// say) instead of asking the node for one: events are routed by it until a node pushes a
/// newer one. `config.addr` is the node `push` came from (its empty host means that one).
pub fn connect_with_map(
    config: &ClientConfig,
    push: MapPush,
) -> Result<(EventSender, ReplyReceiver), ClientError> {
    let (secret, tls) = (config.auth.as_deref(), config.tls.as_ref());
    let first = connect_authenticated(config.addr, config.connect_timeout, secret, tls)?;
    start(config, push, first)
}

/// The client's halves, routing by `push`; `first` is a connection to `config.addr`.
fn start(
    config: &ClientConfig,
    push: MapPush,
    first: Connection,
) -> Result<(EventSender, ReplyReceiver), ClientError> {
    let proto = ClientProto::new(push, config.shard_aware, config.events_per_frame)?;
    let (incoming, receiver) = flume::bounded(CLIENT_REPLY_FRAMES_QUEUED_MAX);
    let readers = Arc::new(Mutex::new(Vec::new()));
    let mut sender = EventSender {
        maps: Arc::new(MapMailbox::new(proto.epoch().get())),
        streams: Vec::new(),
        proto,
        config: config.clone(),
        incoming: incoming.downgrade(),
        reader_handle: None,
        readers: readers.clone(),
    };
    // The readers hold the only strong handles, so the receiver ends when they all have.
    sender.reader_handle = Some(incoming);
    if config.shard_aware {
        // Every owner's shard now, so that an unreachable one is an error here, not later.
        sender.open_links()?;
    } else {
        sender.start_link(0, first)?;
    }
    sender.reader_handle = None;
    Ok((
        sender,
        ReplyReceiver {
            incoming: receiver,
            readers,
        },
    ))
}

/// Where a link's target is: its host ("" is the host of `seed`, the address the map came
/// from) and port.
pub fn resolve_target(target: &LinkTarget, seed: SocketAddr) -> Result<SocketAddr, ClientError> {
    if target.host.is_empty() {
        return Ok(SocketAddr::new(seed.ip(), target.port));
    }
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, target.port));
    }
    use std::net::ToSocketAddrs;
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(io_error(format!(
            "cannot resolve {}, the host of node {}",
            target.host, target.node
        )))?
        .next()
        .ok_or_else(|| ClientError::Io {
            what: format!(
                "{}, the host of node {}, resolves to no address",
                target.host, target.node
            ),
            error: io::ErrorKind::NotFound.into(),
        })
}

/// Where reader threads leave the newest map a node pushed, for the sender to apply. Only
/// the newest matters: a map replaces every older one. Shared by one client's threads only.
pub struct MapMailbox {
    /// The epoch of the newest map seen, read without the lock on every send.
    newest_epoch: AtomicU32,
    newest: Mutex<Option<MapPush>>,
}

impl MapMailbox {
    fn new(epoch: u32) -> MapMailbox {
        MapMailbox {
            newest_epoch: AtomicU32::new(epoch),
            newest: Mutex::new(None),
        }
    }

    /// Leaves `push` if it is newer than every map seen so far.
    fn offer(&self, push: MapPush) {
        let mut newest = self
            .newest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let epoch = push.map.epoch().get();
        if epoch > self.newest_epoch.load(Ordering::Relaxed) {
            *newest = Some(push);
            self.newest_epoch.store(epoch, Ordering::Release);
        }
    }

    /// The newest map, if it is newer than `epoch`.
    fn take_newer_than(&self, epoch: u32) -> Option<MapPush> {
        if self.newest_epoch.load(Ordering::Acquire) <= epoch {
            return None;
        }
        self.newest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }
}

/// The sending half of a client. Lives on one thread at a time.
pub struct EventSender {
    proto: ClientProto,
    /// One per link of `proto`; `None` until the link is first used (a link a newer map
    /// names is opened when an event first goes out on it).
    streams: Vec<Option<Connection>>,
    maps: Arc<MapMailbox>,
    config: ClientConfig,
    /// Where new links' reader threads pass replies on: weak, so that [`ReplyReceiver`] sees
    /// the end once every reader has ended, as it did before links could be added.
    incoming: flume::WeakSender<Incoming>,
    /// A strong handle held only while the first links start.
    reader_handle: Option<flume::Sender<Incoming>>,
    /// The reader threads, one per opened link, joined by [`ReplyReceiver::join`].
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl EventSender {
    /// The partition map events are routed by (the newest the node has pushed, once applied).
    pub fn map(&self) -> &PartitionMap {
        self.proto.map()
    }

    /// How many connections the client holds (one per owner's shard when shard-aware).
    pub fn links(&self) -> usize {
        self.streams.iter().flatten().count()
    }

    /// Where `link` goes (`None`: the one connection of a client that is not shard-aware).
    pub fn link_target(&self, link: usize) -> Option<&LinkTarget> {
        self.proto.link_target(link)
    }

    /// Queues an event in the frame of the connection that reaches its owner, writing the
    /// frame once it is full.
    pub fn send(&mut self, event: &Event) -> Result<(), ClientError> {
        let link = self.route(event.hunt)?;
        self.send_on(link, event)
    }

    /// The link an event of `hunt` goes out on, by the newest map a node pushed.
    pub fn route(&mut self, hunt: HuntId) -> Result<usize, ClientError> {
        self.apply_pushed_map()?;
        Ok(self.proto.link_for(hunt))
    }

    /// Queues an event for `link` (see [`Self::send`]; an owner hint's link, say). An event
    /// without a session goes out with the client's ([`ClientConfig::session`]; a copy of it
    /// is archived); one that carries a session keeps it.
    pub fn send_on(&mut self, link: usize, event: &Event) -> Result<(), ClientError> {
        let stamped;
        let event = if event.client_session == NO_SESSION && self.config.session != NO_SESSION {
            stamped = Event {
                client_session: self.config.session,
                ..event.clone()
            };
            &stamped
        } else {
            event
        };
        self.proto
            .push_event(link, event)
            .map_err(ClientError::Encode)?;
        if !self.proto.ready_output(link).is_empty() {
            self.write(link, false)?;
        }
        Ok(())
    }

    /// The link to shard `shard` of `node`, if the map says where it is reached.
    pub fn link_to(&mut self, node: NodeId, shard: ShardId) -> Result<Option<usize>, ClientError> {
        self.proto.link_to(node, shard)
    }

    /// The epoch of the map events are routed by.
    pub fn epoch(&self) -> Epoch {
        self.proto.epoch()
    }

    /// Asks the node behind `link` for its map; it arrives, like a pushed one, through the
    /// readers (see [`Self::apply_pushed_map`]).
    pub fn request_map(&mut self, link: usize) -> Result<(), ClientError> {
        self.write(link, true)?;
        let stream = self.stream(link)?;
        stream
            .write_all(proto::map_request().bytes())
            .and_then(|()| stream.flush())
            .map_err(io_error("cannot ask the node for its partition map"))
    }

    /// Writes every partly filled frame.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.apply_pushed_map()?;
        for link in 0..self.proto.links() {
            self.write(link, true)?;
        }
        Ok(())
    }

    /// Closes the sending side of every connection; replies still arrive.
    pub fn finish(mut self) -> Result<(), ClientError> {
        self.flush()?;
        for stream in self.streams.iter_mut().flatten() {
            stream
                .shutdown_write()
                .map_err(io_error("cannot close the connection"))?;
        }
        Ok(())
    }

    /// Routes by the newest map a reader received, if it is newer than the one in use.
    /// Returns whether it changed.
    pub fn apply_pushed_map(&mut self) -> Result<bool, ClientError> {
        match self.maps.take_newer_than(self.proto.epoch().get()) {
            Some(push) => Ok(matches!(
                self.proto.apply_map(&push)?,
                proto::MapUpdate::Applied { .. }
            )),
            None => Ok(false),
        }
    }

    /// Forgets `link`'s connection (its node closed it): the next event for it opens a new one.
    pub fn forget_link(&mut self, link: usize) {
        if let Some(stream) = self.streams.get_mut(link) {
            *stream = None;
        }
    }

    /// Opens every link the map names that is not open yet.
    fn open_links(&mut self) -> Result<(), ClientError> {
        for link in 0..self.proto.links() {
            self.stream(link)?;
        }
        Ok(())
    }

    /// The connection of `link`, opened (with its reader thread) if it is not yet.
    fn stream(&mut self, link: usize) -> Result<&mut Connection, ClientError> {
        if self.streams.get(link).is_none_or(Option::is_none) {
            let target = self.proto.link_target(link).ok_or_else(|| {
                ClientError::Config("the seed connection is gone; reconnect".into())
            })?;
            let addr = resolve_target(target, self.config.addr)?;
            let (secret, tls) = (self.config.auth.as_deref(), self.config.tls.as_ref());
            let connection = connect_authenticated(addr, self.config.connect_timeout, secret, tls)?;
            self.start_link(link, connection)?;
        }
        Ok(self.streams[link].as_mut().expect("opened above"))
    }

    /// Takes `connection` as `link`'s and starts its reader thread.
    fn start_link(&mut self, link: usize, connection: Connection) -> Result<(), ClientError> {
        connection
            .set_write_timeout(self.config.stall_timeout)
            .map_err(io_error("cannot set a write timeout"))?;
        let read_half = connection
            .try_clone()
            .map_err(io_error("cannot clone a socket"))?;
        let incoming = self.incoming.upgrade().ok_or_else(|| {
            ClientError::Config(
                "every connection of this client has ended, so no new one can pass replies on: reconnect".into(),
            )
        })?;
        let maps = self.maps.clone();
        let reader = std::thread::Builder::new()
            .name(format!("trove-client-rx-{link}"))
            .spawn(move || read_replies(link, read_half, incoming, &maps))
            .map_err(io_error("cannot start a reader thread"))?;
        self.readers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(reader);
        if self.streams.len() <= link {
            self.streams.resize_with(link + 1, || None);
        }
        self.streams[link] = Some(connection);
        Ok(())
    }

    /// Writes the closed frames of `link` (all of its frames when `flush`).
    fn write(&mut self, link: usize, flush: bool) -> Result<(), ClientError> {
        let pending = if flush {
            self.proto.flush_output(link).len()
        } else {
            self.proto.ready_output(link).len()
        };
        if pending == 0 {
            return Ok(());
        }
        self.stream(link)?;
        let output = self.proto.ready_output(link);
        let stream = self.streams[link].as_mut().expect("opened above");
        // `flush` sends what TLS still holds; a plain socket holds nothing.
        stream
            .write_all(output)
            .and_then(|()| stream.flush())
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
        let written = output.len();
        self.proto.consumed_output(link, written);
        Ok(())
    }
}

/// A frame of replies, validated once on arrival.
pub struct ReplyFrame {
    frame: ValidatedFrameBuf<ArchivedReply>,
    link: usize,
}

impl ReplyFrame {
    /// The link (connection) it arrived on.
    pub fn link(&self) -> usize {
        self.link
    }

    /// The replies, in the order the node sent them.
    pub fn replies(&self) -> impl Iterator<Item = &ArchivedReply> {
        self.frame.frame().iter().map(|record| record.get())
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
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
        let readers = std::mem::take(
            &mut *self
                .readers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for reader in readers {
            let _ = reader.join();
        }
    }
}

/// A connection's reader thread: frames in, validated reply frames out, pushed maps to the
/// mailbox.
fn read_replies(
    link: usize,
    mut stream: Connection,
    incoming: flume::Sender<Incoming>,
    maps: &MapMailbox,
) {
    let mut input = ReceiveBuffer::new();
    let error = loop {
        let (kind, body) = match read_frame(&mut stream, &mut input) {
            Ok(frame) => frame,
            Err(ClientError::Io { error, .. }) if error.kind() == io::ErrorKind::UnexpectedEof => {
                break None;
            }
            Err(error) => break Some(error.to_string()),
        };
        let forwarded = if kind == FrameKind::Replies {
            // Validated in place, then kept whole: the caller reads it without copying.
            match ValidatedFrameBuf::validate(kind, body) {
                Ok(frame) => incoming.send(Incoming::Replies(ReplyFrame { frame, link })),
                Err(error) => break Some(ClientError::Protocol(error).to_string()),
            }
        } else {
            match proto::parse_control_frame(kind, &body) {
                Ok(Received::NodeError { code, message }) => incoming.send(Incoming::NodeError {
                    link,
                    code,
                    message,
                }),
                Ok(Received::Map(push)) => {
                    maps.offer(push);
                    Ok(())
                }
                Ok(Received::Replies(_)) => {
                    break Some(
                        ClientError::Protocol(FrameError::UnexpectedKind { kind }).to_string(),
                    );
                }
                Err(error) => break Some(error.to_string()),
            }
        };
        if forwarded.is_err() {
            // The receiving half is gone: nobody wants the replies any more.
            return;
        }
    };
    let _ = incoming.send(Incoming::Closed { link, error });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(epoch: u32) -> MapPush {
        let owners = PartitionMap::round_robin(4, 2).unwrap().owners().to_vec();
        MapPush {
            map: PartitionMap::from_owners(Epoch(epoch), owners).unwrap(),
            answering: NodeId(0),
        }
    }

    #[test]
    fn the_mailbox_keeps_only_the_newest_map_and_hands_it_over_once() {
        let mailbox = MapMailbox::new(1);
        mailbox.offer(push(1));
        assert!(
            mailbox.take_newer_than(1).is_none(),
            "not newer than the start"
        );
        mailbox.offer(push(3));
        mailbox.offer(push(2));
        assert!(
            mailbox.take_newer_than(3).is_none(),
            "the sender has it already"
        );
        let newest = mailbox.take_newer_than(1).expect("a newer map waits");
        assert_eq!(
            newest.map.epoch().get(),
            3,
            "an older map never replaces a newer one"
        );
        assert!(mailbox.take_newer_than(1).is_none(), "handed over once");
    }
}
