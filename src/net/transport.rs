//! What a connection's bytes travel over on a shard: the plain socket, or TLS over it
//! (`net::tls`), and what a new connection must pass before it is read ([`Access`]). Client
//! connections and links between nodes (`net::link`, both directions) use the same
//! [`Transport`], so TLS records are pumped in one place.
//!
//! [`Transport`] is an enum, matched on each call: with TLS off, a read is the socket's read
//! behind one branch, with no allocation and no dynamic dispatch. A connection refused in a
//! handshake (TLS, or the shared secret) is reported in one line on the node's output, at
//! most `REFUSAL_LINES_PER_MINUTE_MAX` a minute per shard. Everything here lives on one
//! shard's executor.

use std::cell::Cell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ServerConfig;

use crate::constants::{AUTH_HANDSHAKE_MS_MAX, REFUSAL_LINES_PER_MINUTE_MAX, TLS_HANDSHAKE_MS_MAX};
use crate::core::auth::{AuthError, AuthSecret};
use crate::core::codec::FrameKind;
use crate::core::shard::CloseReason;
use crate::net::auth::Refused;
use crate::net::tls::{TlsStream, describe_refusal, tls_error_of};
use crate::runtime::shard::{ConnectionSignals, Shard};

/// A connection's byte stream on a shard (a client's, or a link's).
pub(crate) enum Transport {
    Plain(TcpStream),
    /// Boxed once per connection: the session and its buffers are large, the socket is not.
    Tls(Box<TlsStream>),
}

/// A second descriptor for the socket of `stream`, owned by the stream returned.
pub(crate) fn dup_stream(stream: &TcpStream) -> io::Result<TcpStream> {
    // SAFETY: dup(2) of a descriptor `stream` owns; the copy is owned by the stream returned.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor for the same socket, owned by nobody else.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

impl Transport {
    /// Reads (decrypted) bytes into `buf`; `Ok(0)` when the peer has closed. A TLS failure
    /// is an `InvalidData` error holding the rustls error (`net::tls::tls_error_of`).
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf).await,
            Transport::Tls(stream) => stream.read(buf).await,
        }
    }

    /// Fills `buf` exactly, or fails (`UnexpectedEof` when the client closes first).
    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.read_exact(buf).await,
            Transport::Tls(stream) => {
                let mut filled = 0;
                while filled < buf.len() {
                    match stream.read(&mut buf[filled..]).await? {
                        0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                        len => filled += len,
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes (encrypts and writes) all of `bytes`.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.write_all(bytes).await,
            Transport::Tls(stream) => stream.write_all(bytes).await,
        }
    }

    /// Ends the sending side: FIN (after a `close_notify` with TLS). Reading goes on.
    pub(crate) async fn close(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.close().await,
            Transport::Tls(stream) => stream.close().await,
        }
    }

    /// Reads raw bytes from the socket to drop them (a closing connection's leftover input).
    pub(crate) async fn discard_input(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(scratch).await,
            Transport::Tls(stream) => stream.discard_input(scratch).await,
        }
    }

    /// The socket's descriptor, for asking the kernel how much input waits unread
    /// (`net::sojourn`; with TLS that counts ciphertext, close enough for an estimate of time).
    pub(crate) fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Transport::Plain(stream) => stream.as_raw_fd(),
            Transport::Tls(stream) => stream.as_raw_fd(),
        }
    }

    /// A reader and a writer over the same connection, for its two tasks.
    pub(crate) fn split(self) -> io::Result<(Transport, Transport)> {
        match self {
            Transport::Plain(stream) => {
                let writer = dup_stream(&stream)?;
                Ok((Transport::Plain(stream), Transport::Plain(writer)))
            }
            Transport::Tls(stream) => {
                let (reader, writer) = stream.split()?;
                Ok((
                    Transport::Tls(Box::new(reader)),
                    Transport::Tls(Box::new(writer)),
                ))
            }
        }
    }
}

/// What a new connection must pass before the shard reads it: the TLS handshake, then the
/// shared secret's challenge inside it; either, both or neither. One per shard.
pub(crate) struct Access {
    pub secret: Option<AuthSecret>,
    pub tls: Option<Arc<ServerConfig>>,
    pub refusals: RefusalLines,
}

impl Access {
    pub(crate) fn new(secret: Option<AuthSecret>, tls: Option<Arc<ServerConfig>>) -> Access {
        Access {
            secret,
            tls,
            refusals: RefusalLines::default(),
        }
    }

    /// Nothing to pass: the connection is read at once.
    pub(crate) fn is_open(&self) -> bool {
        self.secret.is_none() && self.tls.is_none()
    }

    /// Runs the handshakes on a new connection `stream`; on success, the transport its
    /// frames travel over. On failure the socket is closed and the reason says why (the
    /// core's own reason, an idle timeout or an eviction, takes precedence when it has one).
    pub(crate) async fn admit(
        &self,
        shard: &Shard,
        signals: &ConnectionSignals,
        stream: TcpStream,
    ) -> Result<Transport, CloseReason> {
        let peer = stream.peer_addr().ok();
        let mut transport = match &self.tls {
            None => Transport::Plain(stream),
            Some(config) => {
                let say = |why: &str| self.refusals.say(shard, peer, why);
                Transport::Tls(Box::new(
                    tls_handshake(shard, signals, stream, config, say).await?,
                ))
            }
        };
        if let Some(secret) = &self.secret {
            if let Err(refused) = crate::net::auth::authenticate(&mut transport, secret).await {
                if let Some(why) = describe_auth_refusal(&refused) {
                    self.refusals.say(shard, peer, &why);
                }
                let _ = transport.close().await;
                return Err(CloseReason::Unauthenticated);
            }
        }
        Ok(transport)
    }
}

/// Why the secret's handshake refused a connection, for the node's line about it; `None`
/// when the peer just went away (nothing to tell an operator).
fn describe_auth_refusal(refused: &Refused) -> Option<String> {
    match refused {
        Refused::Auth(AuthError::UnexpectedFrame {
            found: FrameKind::LinkHello,
            ..
        }) => Some(
            "a node's link that did not authenticate: give every node of the cluster the same --auth-secret-file".into(),
        ),
        Refused::Auth(error) => Some(error.to_string()),
        Refused::TimedOut => Some(format!(
            "it did not answer the secret's challenge within {AUTH_HANDSHAKE_MS_MAX} ms"
        )),
        Refused::Io | Refused::PeerSpeaksTls | Refused::Tls(_) => None,
    }
}

/// A shard's lines about connections it refused in a handshake: one each, at most
/// `REFUSAL_LINES_PER_MINUTE_MAX` a minute, so that a flood of bad connections cannot flood
/// the node's output; the first line after a quiet spell counts those left unsaid.
#[derive(Default)]
pub(crate) struct RefusalLines {
    minute_started: Cell<Option<Instant>>,
    said_this_minute: Cell<u32>,
    unsaid: Cell<u64>,
}

impl RefusalLines {
    fn say(&self, shard: &Shard, peer: Option<SocketAddr>, why: &str) {
        let now = Instant::now();
        let new_minute = self
            .minute_started
            .get()
            .is_none_or(|started| now.duration_since(started) >= Duration::from_secs(60));
        if new_minute {
            self.minute_started.set(Some(now));
            self.said_this_minute.set(0);
        }
        if self.said_this_minute.get() >= REFUSAL_LINES_PER_MINUTE_MAX {
            self.unsaid.set(self.unsaid.get() + 1);
            return;
        }
        self.said_this_minute.set(self.said_this_minute.get() + 1);
        let unsaid = match self.unsaid.replace(0) {
            0 => String::new(),
            count => format!(
                " ({count} more refused before this, unsaid: at most {REFUSAL_LINES_PER_MINUTE_MAX} lines a minute)"
            ),
        };
        let peer = peer.map_or_else(|| "an unknown address".into(), |addr| addr.to_string());
        // The node runs on if its output is closed.
        let _ = writeln!(
            io::stdout(),
            "trove node: shard {}: refused a connection from {peer}: {why}{unsaid}",
            shard.id().0
        );
    }
}

/// The TLS handshake, bounded by `TLS_HANDSHAKE_MS_MAX` and by the core: a connection in
/// its handshake is idle, so the idle timeout or an eviction to make room ends it, and so
/// does the shard's stop. Every wait here is one-shot (a timer, a latch): the socket's
/// pending read is woken only for its own reason.
///
/// A refusal (the client failed TLS, or took too long) is told to `say` first.
async fn tls_handshake(
    shard: &Shard,
    signals: &ConnectionSignals,
    stream: TcpStream,
    config: &Arc<ServerConfig>,
    say: impl Fn(&str),
) -> Result<TlsStream, CloseReason> {
    let mut tls = TlsStream::server(stream, config).map_err(|_| CloseReason::TlsFailed)?;
    let handshake = async { tls.handshake().await.map_err(Failure::Refused) };
    let ended_by_shard = async {
        or(signals.close.wait(), shard.stopping()).await;
        Err(Failure::Ended(CloseReason::Broken))
    };
    let timed_out = async {
        glommio::timer::sleep(Duration::from_millis(TLS_HANDSHAKE_MS_MAX)).await;
        Err(Failure::TimedOut)
    };
    match or(handshake, or(ended_by_shard, timed_out)).await {
        Ok(()) => Ok(tls),
        // Told why outside the race: a stop that begins meanwhile changes nothing.
        Err(Failure::Refused(error)) => {
            // A peer that only connected and left (a health check) failed no TLS.
            if let Some(refused) = tls_error_of(&error) {
                say(&describe_refusal(refused));
            }
            tls.refuse().await;
            Err(CloseReason::TlsFailed)
        }
        Err(Failure::TimedOut) => {
            say(&format!(
                "it did not finish the TLS handshake within {TLS_HANDSHAKE_MS_MAX} ms"
            ));
            Err(CloseReason::TlsFailed)
        }
        // Cut short: nothing to tell; dropping the stream closes the socket.
        Err(Failure::Ended(reason)) => Err(reason),
    }
}

/// Why a TLS handshake did not finish.
enum Failure {
    /// The client failed it (or the socket did); the session queued an alert saying why.
    Refused(io::Error),
    /// It took longer than `TLS_HANDSHAKE_MS_MAX`.
    TimedOut,
    /// The core (idle timeout, eviction) or the shard's stop ended it.
    Ended(CloseReason),
}
