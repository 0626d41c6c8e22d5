//! What a client connection's bytes travel over on a shard: the plain socket, or TLS over it
//! (`net::tls`), and what a new connection must pass before it is read ([`Access`]).
//!
//! [`Transport`] is an enum, matched on each call: with TLS off, a read is the socket's read
//! behind one branch, with no allocation and no dynamic dispatch. Everything here lives on
//! one shard's executor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ServerConfig;

use crate::constants::TLS_HANDSHAKE_MS_MAX;
use crate::core::auth::AuthSecret;
use crate::core::shard::CloseReason;
use crate::net::tls::TlsStream;
use crate::runtime::shard::{ConnectionSignals, Shard};

/// A client connection's byte stream on a shard.
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
    /// Reads (decrypted) bytes into `buf`; `Ok(0)` when the client has closed.
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
}

impl Access {
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
        let mut transport = match &self.tls {
            None => Transport::Plain(stream),
            Some(config) => Transport::Tls(Box::new(
                tls_handshake(shard, signals, stream, config).await?,
            )),
        };
        if let Some(secret) = &self.secret {
            if crate::net::auth::authenticate(&mut transport, secret)
                .await
                .is_err()
            {
                let _ = transport.close().await;
                return Err(CloseReason::Unauthenticated);
            }
        }
        Ok(transport)
    }
}

/// The TLS handshake, bounded by `TLS_HANDSHAKE_MS_MAX` and by the core: a connection in
/// its handshake is idle, so the idle timeout or an eviction to make room ends it, and so
/// does the shard's stop. Every wait here is one-shot (a timer, a latch): the socket's
/// pending read is woken only for its own reason.
async fn tls_handshake(
    shard: &Shard,
    signals: &ConnectionSignals,
    stream: TcpStream,
    config: &Arc<ServerConfig>,
) -> Result<TlsStream, CloseReason> {
    let mut tls = TlsStream::server(stream, config).map_err(|_| CloseReason::TlsFailed)?;
    let handshake = async { tls.handshake().await.map_err(|_| Failure::Refused) };
    let ended_by_shard = async {
        or(signals.close.wait(), shard.stopping()).await;
        Err(Failure::Ended(CloseReason::Broken))
    };
    let timed_out = async {
        glommio::timer::sleep(Duration::from_millis(TLS_HANDSHAKE_MS_MAX)).await;
        Err(Failure::Ended(CloseReason::TlsFailed))
    };
    match or(handshake, or(ended_by_shard, timed_out)).await {
        Ok(()) => Ok(tls),
        // Told why outside the race: a stop that begins meanwhile changes nothing.
        Err(Failure::Refused) => {
            tls.refuse().await;
            Err(CloseReason::TlsFailed)
        }
        // Cut short: nothing to tell; dropping the stream closes the socket.
        Err(Failure::Ended(reason)) => Err(reason),
    }
}

/// Why a TLS handshake did not finish.
enum Failure {
    /// The client failed it; the session queued an alert saying why.
    Refused,
    /// The time limit, the core (idle timeout, eviction) or the shard's stop ended it.
    Ended(CloseReason),
}
