//! The sockets of links between nodes: the outgoing side (connect, hello, the writer of
//! `LinkEvents` frames and the reader of `LinkReplies`) and the inbound side (a connection
//! on a shard's port whose first frame is a `LinkHello`: the reader of `LinkEvents` and the
//! writer of `LinkReplies`). Both sides travel over `net::transport::Transport`, the client
//! connections' transport: with TLS (`--tls-cert` and `--tls-client-ca`) an outgoing link is
//! a TLS client that checks the peer's certificate against the CA for the host the peer
//! advertises and presents this node's certificate as a client certificate, which the peer's
//! listener requires; so links are encrypted and mutually authenticated. A node with a shared
//! secret then authenticates its outgoing links as a client (`net::auth::authenticate_link`,
//! inside TLS when there is TLS) before the hello; its inbound links pass the listener's
//! handshakes like any connection. Link frames are cut from the same aligned receive buffers
//! with or without TLS. Bytes only: what goes in the frames and what a failure answers is the
//! core's (`core::shard::links`), the outgoing link's lifecycle is the runtime's
//! (`runtime::link`). Everything here runs on the shard's executor.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use glommio::net::TcpStream;
use rustls::ClientConfig;

use crate::constants::{AUTH_HANDSHAKE_MS_MAX, LINK_CONNECT_MS_MAX, TLS_HANDSHAKE_MS_MAX};
use crate::core::auth::AuthSecret;
use crate::core::codec::{
    Decoded, FrameBuilder, FrameKind, ReceiveBuffer, ValidatedFrame, decode_frame, decode_header,
};
use crate::core::ids::{ConnectionId, NodeId};
use crate::core::message::{ArchivedErrorMessage, ArchivedLinkAccepted};
use crate::core::shard::LinkDest;
use crate::net::auth::{authenticate_link, peer_speaks_tls, starts_like_tls};
use crate::net::tls::{TlsStream, describe_link_failure, link_server_name, tls_error_of};
use crate::net::transport::Transport;
use crate::runtime::link::{LinkConnector, LinkEnd};
use crate::runtime::shard::{LinkSignals, Shard};
use crate::runtime::stall::spawn_timed;
use crate::runtime::wait::{Latch, WaitQueue};

/// Whether the bytes a new connection sent first are a link's hello.
pub(crate) fn starts_with_link_hello(bytes: &[u8]) -> bool {
    matches!(decode_header(bytes), Ok(Some(header)) if header.kind == FrameKind::LinkHello)
}

/// What an outgoing link proves and checks: TLS (the CA to check peers by, this node's
/// certificate to present), the shared secret; either, both or neither, as the node's
/// listeners ask of every connection.
#[derive(Clone)]
pub(crate) struct LinkCredentials {
    pub secret: Option<Rc<AuthSecret>>,
    pub tls: Option<Arc<ClientConfig>>,
}

/// The connector of outgoing links (see [`crate::runtime::link::LinkConnector`]). With TLS,
/// each link speaks TLS to the peer's shard; with a `secret`, it proves it (inside TLS) to
/// the peer's shard, whose listener asks every connection for it, before its hello.
pub(crate) fn connector(
    secret: Option<AuthSecret>,
    tls: Option<Arc<ClientConfig>>,
) -> LinkConnector {
    let credentials = LinkCredentials {
        secret: secret.map(Rc::new),
        tls,
    };
    Rc::new(move |shard, dest, signals| {
        Box::pin(run_connection(shard, dest, signals, credentials.clone()))
    })
}

fn failed(connected: bool, reason: impl Into<String>) -> LinkEnd {
    LinkEnd::Failed {
        connected,
        reason: reason.into(),
    }
}

async fn run_connection(
    shard: Rc<Shard>,
    dest: LinkDest,
    signals: Rc<LinkSignals>,
    credentials: LinkCredentials,
) -> LinkEnd {
    let broken = signals.broken.borrow().clone();
    // TLS and the authentication have limits of their own inside this one, and say why they
    // failed.
    let limit_ms = LINK_CONNECT_MS_MAX
        + credentials.tls.as_ref().map_or(0, |_| TLS_HANDSHAKE_MS_MAX)
        + credentials
            .secret
            .as_ref()
            .map_or(0, |_| AUTH_HANDSHAKE_MS_MAX);
    let handshake = or(
        async { handshake(&shard, dest, &credentials).await },
        async {
            or(
                glommio::timer::sleep(Duration::from_millis(limit_ms)),
                broken.wait(),
            )
            .await;
            Err(format!("no answer to the link hello within {limit_ms} ms"))
        },
    );
    let (stream, input) = match handshake.await {
        Ok(connected) => connected,
        Err(reason) => return failed(false, reason),
    };
    // The reader keeps what the handshake read past the acceptance (TLS ciphertext).
    let (reader, mut stream) = match stream.split() {
        Ok(halves) => halves,
        Err(error) => return failed(true, error.to_string()),
    };
    let reading = spawn_timed(read_replies(
        shard.clone(),
        dest,
        reader,
        input,
        broken.clone(),
    ));
    let end = write_events(&shard, dest, &signals, &mut stream, &broken).await;
    broken.set();
    let _ = stream.close().await;
    reading.await;
    end
}

/// Where `dest` is reached: its advertised host (an IP literal, or a name, resolved here,
/// on the shard: links are opened rarely, and a node's advertised host is normally an
/// address) and the address it resolves to.
fn address_of(shard: &Shard, dest: LinkDest) -> Result<(String, SocketAddr), String> {
    let (host, port) = shard.link_address(dest).ok_or_else(|| {
        format!(
            "the placement has no address for node {} shard {}",
            dest.node.0, dest.shard.0
        )
    })?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    Ok((host, addr))
}

/// Connects to `dest`, speaks TLS and proves the secret when the node has them, sends the
/// hello and waits for the acceptance, which the core checks.
async fn handshake(
    shard: &Shard,
    dest: LinkDest,
    credentials: &LinkCredentials,
) -> Result<(Transport, ReceiveBuffer), String> {
    let (host, addr) = address_of(shard, dest)?;
    let socket = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    let _ = socket.set_nodelay(true);
    let mut stream = match &credentials.tls {
        None => Transport::Plain(socket),
        Some(config) => Transport::Tls(Box::new(
            tls_connect(socket, config, dest.node, &host).await?,
        )),
    };
    if let Some(secret) = &credentials.secret {
        authenticate_link(&mut stream, secret, dest.node, &host).await?;
    }
    stream
        .write_all(&shard.link_hello_frame())
        .await
        .map_err(|error| error.to_string())?;
    let mut input = ReceiveBuffer::new();
    loop {
        let decoded = decode_frame(input.pending()).map_err(|error| {
            if starts_like_tls(input.pending()) {
                peer_speaks_tls(dest.node)
            } else {
                error.to_string()
            }
        })?;
        let frame_len = match decoded {
            Decoded::Frame { header, body, .. } => {
                return match header.kind {
                    FrameKind::LinkAccepted => {
                        let accepted =
                            ValidatedFrame::<ArchivedLinkAccepted>::validate(header.kind, body)
                                .map_err(|error| error.to_string())?
                                .first()
                                .ok_or("an empty link acceptance")?
                                .get();
                        shard
                            .link_connected(dest, accepted)
                            .map_err(|error| error.to_string())?;
                        let len = crate::constants::FRAME_HEADER_BYTES + body.len();
                        input.consume(len);
                        Ok((stream, input))
                    }
                    FrameKind::Error => Err(error_text(body)),
                    // The peer's listener asks every connection for the secret first.
                    FrameKind::AuthChallenge => Err(format!(
                        "node {} requires authentication: give this node the cluster's --auth-secret-file",
                        dest.node.0
                    )),
                    kind => Err(format!("a {kind:?} frame instead of the link acceptance")),
                };
            }
            Decoded::NeedMore { frame_len } => frame_len,
        };
        match stream.read(input.spare(frame_len)).await {
            Ok(0) => return Err("the peer closed the link during its handshake".into()),
            Ok(len) => input.filled(len),
            // With TLS 1.3 a peer that refuses this node's certificate says so here.
            Err(error) => {
                return Err(match tls_error_of(&error) {
                    Some(tls) => describe_link_failure(dest.node, &host, tls),
                    None => error.to_string(),
                });
            }
        }
    }
}

/// The TLS handshake of an outgoing link to node `peer`, which must prove `host` (the host
/// it advertises; see `net::tls::link_server_name`), within `TLS_HANDSHAKE_MS_MAX`. A
/// certificate refused here is told to the peer (the session's alert) before the link gives
/// up, so that the peer can say why too.
async fn tls_connect(
    socket: TcpStream,
    config: &Arc<ClientConfig>,
    peer: NodeId,
    host: &str,
) -> Result<TlsStream, String> {
    let name = link_server_name(host)
        .map_err(|error| format!("node {}'s advertised host {error}", peer.0))?;
    let mut tls = TlsStream::client(socket, config, name).map_err(|error| error.to_string())?;
    let timed_out = async {
        glommio::timer::sleep(Duration::from_millis(TLS_HANDSHAKE_MS_MAX)).await;
        Err(None)
    };
    let outcome = or(async { tls.handshake().await.map_err(Some) }, timed_out).await;
    let error = match outcome {
        Ok(()) => return Ok(tls),
        Err(None) => {
            return Err(format!(
                "node {} did not finish the TLS handshake within {TLS_HANDSHAKE_MS_MAX} ms; does it run with --tls-cert?",
                peer.0
            ));
        }
        Err(Some(error)) => error,
    };
    match tls_error_of(&error) {
        Some(refused) => {
            let why = describe_link_failure(peer, host, refused);
            tls.refuse().await;
            Err(why)
        }
        None => Err(format!(
            "node {} closed the link during its TLS handshake ({error}); does it run with --tls-cert?",
            peer.0
        )),
    }
}

fn error_text(body: &[u8]) -> String {
    ValidatedFrame::<ArchivedErrorMessage>::validate(FrameKind::Error, body)
        .ok()
        .and_then(|frame| frame.first())
        .map_or_else(
            || "the peer refused the link".to_string(),
            |message| format!("refused: {}", message.get().message.as_str()),
        )
}

/// Writes what the core has for the link until it closes or breaks.
async fn write_events(
    shard: &Shard,
    dest: LinkDest,
    signals: &LinkSignals,
    stream: &mut Transport,
    broken: &Latch,
) -> LinkEnd {
    let mut out = Vec::new();
    loop {
        let next = or(
            async {
                Some(
                    signals
                        .queue
                        .until(|| shard.poll_link(dest, &mut out))
                        .await,
                )
            },
            async {
                broken.wait().await;
                None
            },
        )
        .await;
        match next {
            Some(crate::core::shard::LinkPoll::Write(_)) => {
                let written = or(async { stream.write_all(&out).await.is_ok() }, async {
                    broken.wait().await;
                    false
                })
                .await;
                out.clear();
                if !written {
                    return failed(true, "the link's socket failed while writing");
                }
            }
            Some(crate::core::shard::LinkPoll::Close) => return LinkEnd::Closed,
            Some(crate::core::shard::LinkPoll::Connect) | None => {
                return failed(true, "the link broke");
            }
        }
    }
}

/// Hands the replies on the link to the core until the link breaks.
async fn read_replies(
    shard: Rc<Shard>,
    dest: LinkDest,
    mut stream: Transport,
    mut input: ReceiveBuffer,
    broken: Rc<Latch>,
) {
    let kinds = [FrameKind::LinkReplies, FrameKind::MoveAck];
    read_frames(&mut stream, &mut input, &kinds, &broken, |kind, body| {
        if kind == FrameKind::MoveAck {
            shard.move_ack(dest, body).is_ok()
        } else {
            shard.link_replies(dest, body).is_ok()
        }
    })
    .await;
    broken.set();
}

/// Hands each whole frame in `input` to `handle`, reading more from `stream` as needed, until
/// the link ends: a frame of a kind not in `kinds`, one `handle` refuses (`false`), bytes
/// that are no frame, the socket closing or failing, or `stop` set. The two read sides of a
/// link (replies on an outgoing one, events on an inbound one) differ only in those.
async fn read_frames(
    stream: &mut Transport,
    input: &mut ReceiveBuffer,
    kinds: &[FrameKind],
    stop: &Latch,
    mut handle: impl FnMut(FrameKind, &[u8]) -> bool,
) {
    loop {
        let frame_len = loop {
            match decode_frame(input.pending()) {
                Ok(Decoded::Frame {
                    header,
                    body,
                    frame_len,
                }) => {
                    if !kinds.contains(&header.kind) || !handle(header.kind, body) {
                        return;
                    }
                    input.consume(frame_len);
                }
                Ok(Decoded::NeedMore { frame_len }) => break frame_len,
                Err(_) => return,
            }
        };
        let read = or(
            async { Some(stream.read(input.spare(frame_len)).await) },
            async {
                stop.wait().await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(len)) if len > 0 => input.filled(len),
            _ => return,
        }
        glommio::yield_if_needed().await;
    }
}

/// Serves a connection whose first bytes (in `input`) are a link's hello: answers it, then
/// applies the events the link carries and writes their replies, until either side ends.
pub(crate) async fn serve_inbound(
    shard: Rc<Shard>,
    mut stream: Transport,
    mut input: ReceiveBuffer,
) {
    let whole = or(
        async { read_whole_frame(&mut stream, &mut input).await },
        async {
            glommio::timer::sleep(Duration::from_millis(LINK_CONNECT_MS_MAX)).await;
            false
        },
    )
    .await;
    if !whole {
        let _ = stream.close().await;
        return;
    }
    let mut answer = FrameBuilder::new();
    let accepted = match decode_frame(input.pending()) {
        Ok(Decoded::Frame {
            header,
            body,
            frame_len,
        }) => Some((shard.link_hello(&header, body, &mut answer), frame_len)),
        _ => None,
    };
    let Some((accepted, frame_len)) = accepted else {
        let _ = stream.close().await;
        return;
    };
    input.consume(frame_len);
    let _ = stream.write_all(answer.bytes()).await;
    let Some((link, queue)) = accepted else {
        let _ = stream.close().await;
        return;
    };
    let (mut stream, writer) = match stream.split() {
        Ok(halves) => halves,
        Err(_) => {
            shard.link_closed(link);
            return;
        }
    };
    let done = Rc::new(Latch::new());
    let writing = spawn_timed(write_replies(
        shard.clone(),
        link,
        queue,
        writer,
        done.clone(),
    ));
    read_events(&shard, link, &mut stream, input, &done).await;
    done.set();
    writing.await;
    shard.link_closed(link);
    let _ = stream.close().await;
}

/// Reads until `input` holds a whole frame at its front; false if the stream ended first.
async fn read_whole_frame(stream: &mut Transport, input: &mut ReceiveBuffer) -> bool {
    loop {
        let frame_len = match decode_frame(input.pending()) {
            Ok(Decoded::Frame { .. }) => return true,
            Ok(Decoded::NeedMore { frame_len }) => frame_len,
            Err(_) => return false,
        };
        match stream.read(input.spare(frame_len)).await {
            Ok(len) if len > 0 => input.filled(len),
            _ => return false,
        }
    }
}

async fn read_events(
    shard: &Shard,
    link: ConnectionId,
    stream: &mut Transport,
    mut input: ReceiveBuffer,
    done: &Latch,
) {
    let kinds = [
        FrameKind::LinkEvents,
        FrameKind::MoveSnapshot,
        FrameKind::MoveEvents,
        FrameKind::MoveHandoff,
        FrameKind::MoveSeal,
    ];
    read_frames(stream, &mut input, &kinds, done, |kind, body| {
        if kind == FrameKind::LinkEvents {
            shard.link_events(link, body).is_ok()
        } else {
            shard.move_frame(link, kind, body).is_ok()
        }
    })
    .await;
}

async fn write_replies(
    shard: Rc<Shard>,
    link: ConnectionId,
    queue: Rc<WaitQueue>,
    mut stream: Transport,
    done: Rc<Latch>,
) {
    let mut out = Vec::new();
    loop {
        let ready = or(
            async {
                shard.until_link_replies(link, &queue, &mut out).await;
                true
            },
            async {
                done.wait().await;
                false
            },
        )
        .await;
        if !ready {
            return;
        }
        let written = or(async { stream.write_all(&out).await.is_ok() }, async {
            done.wait().await;
            false
        })
        .await;
        out.clear();
        if !written {
            done.set();
            return;
        }
    }
}
