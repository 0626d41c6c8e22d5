//! The node's side of connection authentication: drives `core::auth::ServerHandshake` over a
//! freshly accepted connection (inside TLS when the node has it) before the connection's read
//! and write loops start.
//!
//! The handshake reads exactly the bytes of its frames (a header, then the rest of the frame
//! the header announces), so nothing the client sends after it is consumed here, and it must
//! finish within `AUTH_HANDSHAKE_MS_MAX`: a connection that stalls holds one of the shard's
//! connection slots for no longer than that. Runs on the shard's executor, one task per
//! connection.
//!
//! An outgoing link between nodes is a client of its peer's shard: [`authenticate_link`]
//! drives `core::auth::ClientHandshake` over the link's transport (inside TLS when the node
//! has it) before its hello, under the same time limit.

use std::time::Duration;

use futures_lite::future::or;
use rkyv::util::AlignedVec;

use crate::constants::{
    AUTH_HANDSHAKE_MS_MAX, CONNECTION_LINGER_MS_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_HEADER_BYTES,
};
use crate::core::auth::{
    AUTH_FRAME_BYTES_MAX, AuthError, AuthSecret, ClientHandshake, NONCE_BYTES, ServerHandshake,
    Step, describe_link_auth_failure,
};
use crate::core::codec::FrameBuilder;
use crate::core::ids::NodeId;
use crate::net::tls::{describe_link_failure, tls_error_of};
use crate::net::transport::Transport;

/// Why a connection was not let in.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The client failed the handshake; it has been told why.
    Auth(AuthError),
    /// The handshake did not finish in time.
    TimedOut,
    /// The socket failed, or the client closed it.
    Io,
    /// The peer answered an outgoing link's handshake with a TLS record: it speaks TLS and
    /// this node does not.
    PeerSpeaksTls,
    /// TLS failed under an outgoing link's handshake (the peer refused this node's
    /// certificate: TLS 1.3 says so only after the client's side of the handshake is over).
    Tls(rustls::Error),
}

/// Whether `bytes` start like a TLS record (an alert or a handshake, version 3.x): what a TLS
/// node answers plaintext with.
pub(crate) fn starts_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

/// A fresh nonce from the operating system's random source.
fn fresh_nonce() -> Result<[u8; NONCE_BYTES], Refused> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut nonce).map_err(|_| Refused::Io)?;
    Ok(nonce)
}

/// Runs the handshake on `stream`; on success the stream carries authenticated frames next.
/// On failure the client has been sent an error frame (when the socket still takes one).
pub(crate) async fn authenticate(
    stream: &mut Transport,
    secret: &AuthSecret,
) -> Result<(), Refused> {
    let deadline = Duration::from_millis(AUTH_HANDSHAKE_MS_MAX);
    // A one-shot timer, not a wait queue: the pending reads below are woken only by their own
    // socket or by this deadline.
    let outcome = or(handshake(stream, secret), async {
        glommio::timer::sleep(deadline).await;
        Err(Refused::TimedOut)
    })
    .await;
    if let Err(Refused::Auth(error)) = &outcome {
        let mut out = FrameBuilder::new();
        ServerHandshake::refuse(error, &mut out);
        let linger = Duration::from_millis(CONNECTION_LINGER_MS_MAX);
        let refusal = or(tell_and_drain(stream, out.bytes()), async {
            glommio::timer::sleep(linger).await;
        });
        refusal.await;
    }
    outcome
}

/// Writes the refusal, closes the sending side, and reads and drops what the client still
/// sends until it closes too: closing a socket with unread input (the rest of a frame the
/// handshake refused from its header) would reset the connection and could destroy the
/// refusal before the client reads it. The caller bounds the time this takes.
async fn tell_and_drain(stream: &mut Transport, refusal: &[u8]) {
    if stream.write_all(refusal).await.is_err() {
        return;
    }
    let _ = stream.close().await;
    let mut scratch = [0u8; 4096];
    while let Ok(len) = stream.discard_input(&mut scratch).await {
        if len == 0 {
            return;
        }
    }
}

async fn handshake(stream: &mut Transport, secret: &AuthSecret) -> Result<(), Refused> {
    let mut out = FrameBuilder::new();
    let mut server = ServerHandshake::start(secret, fresh_nonce()?, &mut out);
    stream
        .write_all(out.bytes())
        .await
        .map_err(|_| Refused::Io)?;
    out.clear(AUTH_FRAME_BYTES_MAX);
    let mut input: AlignedVec = AlignedVec::with_capacity(AUTH_FRAME_BYTES_MAX);
    let mut want = FRAME_HEADER_BYTES;
    loop {
        let have = input.len();
        input.resize(want, 0);
        stream
            .read_exact(&mut input[have..want])
            .await
            .map_err(|_| Refused::Io)?;
        match server
            .handle_input(&input, &mut out)
            .map_err(Refused::Auth)?
        {
            // The core refuses any frame longer than AUTH_FRAME_BYTES_MAX from its header.
            Step::NeedMore { frame_len } => want = frame_len.unwrap_or(FRAME_HEADER_BYTES),
            Step::Done { .. } => break,
            // The node's side is one round; nothing else can come back.
            Step::Continue { .. } => return Err(Refused::Io),
        }
        if want <= input.len() || want > AUTH_FRAME_BYTES_MAX {
            return Err(Refused::Io);
        }
    }
    stream
        .write_all(out.bytes())
        .await
        .map_err(|_| Refused::Io)?;
    Ok(())
}

/// Proves to node `peer` (at `host`), at the other end of a new outgoing link, that this node
/// knows `secret`, and checks the peer's proof, before the link's hello. Bounded by
/// `AUTH_HANDSHAKE_MS_MAX`; the error is the line the node prints about the link.
pub(crate) async fn authenticate_link(
    stream: &mut Transport,
    secret: &AuthSecret,
    peer: NodeId,
    host: &str,
) -> Result<(), String> {
    let timed_out = async {
        glommio::timer::sleep(Duration::from_millis(AUTH_HANDSHAKE_MS_MAX)).await;
        Err(Refused::TimedOut)
    };
    match or(link_handshake(stream, secret), timed_out).await {
        Ok(()) => Ok(()),
        Err(Refused::Auth(error)) => Err(describe_link_auth_failure(peer, &error)),
        Err(Refused::TimedOut) => Err(format!(
            "node {} sent no authentication challenge within {AUTH_HANDSHAKE_MS_MAX} ms; does it run without --auth-secret-file? every node of the cluster needs the same secret",
            peer.0
        )),
        Err(Refused::Io) => Err(format!(
            "node {} closed the link during its authentication",
            peer.0
        )),
        Err(Refused::PeerSpeaksTls) => Err(peer_speaks_tls(peer)),
        Err(Refused::Tls(error)) => Err(describe_link_failure(peer, host, &error)),
    }
}

/// The line for a link whose peer speaks TLS when this node does not.
pub(crate) fn peer_speaks_tls(peer: NodeId) -> String {
    format!(
        "node {} speaks TLS and this node does not; give every node of the cluster --tls-cert, --tls-key and --tls-client-ca",
        peer.0
    )
}

/// The client's side over a link's transport: exact reads (a header, then the rest of the frame
/// it announces), so nothing past the peer's acceptance is consumed.
async fn link_handshake(stream: &mut Transport, secret: &AuthSecret) -> Result<(), Refused> {
    let mut client = ClientHandshake::new(secret, fresh_nonce()?);
    let mut input: AlignedVec = AlignedVec::with_capacity(AUTH_FRAME_BYTES_MAX);
    let mut want = FRAME_HEADER_BYTES;
    loop {
        let have = input.len();
        input.resize(want, 0);
        stream
            .read_exact(&mut input[have..want])
            .await
            .map_err(|error| match tls_error_of(&error) {
                Some(error) => Refused::Tls(error.clone()),
                None => Refused::Io,
            })?;
        if have == 0 && starts_like_tls(&input) {
            return Err(Refused::PeerSpeaksTls);
        }
        let mut out = FrameBuilder::new();
        let step = client
            .handle_input(&input, &mut out)
            .map_err(Refused::Auth)?;
        if !out.is_empty() {
            stream
                .write_all(out.bytes())
                .await
                .map_err(|_| Refused::Io)?;
        }
        want = match step {
            Step::NeedMore { frame_len } => frame_len.unwrap_or(FRAME_HEADER_BYTES),
            Step::Continue { .. } => {
                input.clear();
                FRAME_HEADER_BYTES
            }
            Step::Done { .. } => return Ok(()),
        };
        // An error frame may be longer than a handshake frame; its text is bounded too.
        if want <= input.len() || want > AUTH_FRAME_BYTES_MAX + ERROR_MESSAGE_BYTES_MAX {
            return Err(Refused::Auth(AuthError::Truncated));
        }
    }
}
