//! One client connection on one shard: a reader task and a writer task over the same socket,
//! each a loop of I/O around calls to the shard's core.
//!
//! The reader waits until the core says the connection may read (it has credit and a short
//! backlog), reads into an aligned receive buffer, cuts whole frames out and hands each to the
//! core. A frame the core could only admit part of stays in the buffer and is offered again
//! once credit returns; meanwhile nothing is read, so TCP pushes back on the client. The
//! writer takes the replies the core queued for the connection, writes them, and reports them
//! written, which returns their credit.
//!
//! Malformed input ends the reader; the core sends the replies to everything admitted before
//! it, then an error frame, and the writer closes the socket. Other connections are not
//! affected. When the core closes a connection (idle, evicted, a frame too slow), the writer
//! first tells the client why, if the socket takes it within `CLOSE_NOTICE_MS_MAX`. When the
//! shard stops, the reader counts the events still unread in the socket (bounded), and the
//! core names them in the connection's last frame. In fail-fast mode the reader measures how
//! long what it reads waited in the socket (`net::sojourn`) for the core's load shedding.
//! Both tasks live on the shard's executor.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use futures_lite::future::or;
use glommio::net::TcpStream;

use crate::constants::{
    CLOSE_NOTICE_MS_MAX, CONNECTION_LINGER_MS_MAX, STOP_DRAIN_BYTES_MAX, STOP_DRAIN_WAIT_MS_MAX,
    WRITE_BUFFER_RETAINED_BYTES_MAX,
};
use crate::core::codec::{
    Decoded, ERROR_CODE_CONNECTION_LIMIT, FrameBuilder, FrameError, FrameKind, ReceiveBuffer,
    Records, check_stream_end, decode_frame,
};
use crate::core::ids::ConnectionId;
use crate::core::shard::{
    CloseReason, ConnectRefusal, ERROR_CODE_CONNECTION_CLOSED, ERROR_CODE_SHUTTING_DOWN,
    FrameProgress, Readable, SourceAddr,
};
use crate::net::sojourn::{SojournMeter, unread_bytes};
use crate::net::transport::{Access, Transport};
use crate::runtime::shard::{ConnectionSignals, Shard, WriteStep};
use crate::runtime::stall::spawn_timed;
use crate::runtime::wait::Latch;

/// Serves a newly accepted socket on `shard`; with TLS or a secret, only once the client has
/// passed the handshakes (`Access::admit`), which hold the connection's slot meanwhile.
pub(crate) fn serve(shard: Rc<Shard>, stream: TcpStream, access: Rc<Access>) {
    let _ = stream.set_nodelay(true);
    let source = stream.peer_addr().ok().map(|addr| source_addr(addr.ip()));
    let (id, signals) = match shard.connect(source) {
        Ok(connected) => connected,
        Err(refusal) => {
            spawn_timed(refuse(shard, stream, access, refusal)).detach();
            return;
        }
    };
    if access.is_open() {
        // A node link may arrive here too: its first frame says which it is.
        spawn_timed(first_read(shard, id, signals, Transport::Plain(stream))).detach();
        return;
    }
    spawn_timed(async move {
        match access.admit(&shard, &signals, stream).await {
            // A node link passes the TLS handshake and proves the secret like any client,
            // then says what it is.
            Ok(transport) => first_read(shard, id, signals, transport).await,
            Err(reason) => {
                shard.handle_read_closed(id, Ok(()));
                shard.handle_closed(id, shard.close_reason(id).unwrap_or(reason));
            }
        }
    })
    .detach();
}

/// Reads what a new (admitted) connection sends first: a link's hello turns it into an
/// inbound link (`net::link`); anything else is a client's, read on by the connection's loops.
async fn first_read(
    shard: Rc<Shard>,
    id: ConnectionId,
    signals: ConnectionSignals,
    mut stream: Transport,
) {
    let mut input = ReceiveBuffer::new();
    let read = or(
        async { Some(stream.read(input.spare(None)).await) },
        async {
            or(shard.stopping(), signals.close.wait()).await;
            None
        },
    )
    .await;
    if let Some(Ok(len)) = read {
        input.filled(len);
    }
    if crate::net::link::starts_with_link_hello(input.pending()) {
        // Not a client: the connection's slot is given back before the link is served.
        shard.handle_read_closed(id, Ok(()));
        shard.handle_closed(id, CloseReason::Finished);
        crate::net::link::serve_inbound(shard, stream, input).await;
        return;
    }
    start_loops_with(shard, id, signals, stream, input);
}

/// Starts the reader and the writer of an accepted (and, with TLS or a secret, admitted)
/// connection whose first bytes were read already (`input`).
fn start_loops_with(
    shard: Rc<Shard>,
    id: ConnectionId,
    signals: ConnectionSignals,
    stream: Transport,
    input: ReceiveBuffer,
) {
    let Ok((read_half, write_half)) = stream.split() else {
        shard.handle_read_closed(id, Ok(()));
        shard.handle_closed(id, CloseReason::Broken);
        return;
    };
    spawn_timed(read_loop(
        shard.clone(),
        id,
        signals.close.clone(),
        read_half,
        input,
    ))
    .detach();
    spawn_timed(write_loop(shard, id, signals, write_half)).detach();
}

/// The core's form of a peer's address: IPv6 octets, IPv4 mapped.
fn source_addr(ip: std::net::IpAddr) -> SourceAddr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Tells a client why it is refused (the shard is full, its address holds its share, the
/// shard is stopping), and closes. A TLS client is not told (it would take a handshake, work
/// a refusing shard should not do): it sees the connection close.
async fn refuse(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    access: Rc<Access>,
    refusal: ConnectRefusal,
) {
    if access.tls.is_some() {
        let _ = stream.close().await;
        return;
    }
    let shard_id = shard.id();
    let (code, message) = match refusal {
        ConnectRefusal::Full => (
            ERROR_CODE_CONNECTION_LIMIT,
            format!(
                "{shard_id} serves as many connections as it may; retry later or connect to another shard"
            ),
        ),
        ConnectRefusal::PerSource { max } => (
            ERROR_CODE_CONNECTION_LIMIT,
            format!(
                "this address already holds {max} connections to {shard_id}, the most one address may (the node's --connections-per-source-max); close one, or connect from another address"
            ),
        ),
        ConnectRefusal::Stopping => (
            ERROR_CODE_SHUTTING_DOWN,
            format!(
                "{shard_id} is stopping; connect again once the node is back, or to another node"
            ),
        ),
    };
    let mut frames = FrameBuilder::new();
    frames.error_message(shard.epoch(), code, message);
    let _ = stream.write_all(frames.bytes()).await;
    let _ = stream.close().await;
}

/// What the reader knows about the frames in its buffer.
#[derive(Clone, Copy, Default)]
struct Pending {
    /// The length of the partial frame at the front, once its header is in.
    frame_len: Option<usize>,
    /// The frame at the front was admitted only in part: offer it again before reading.
    blocked: bool,
}

async fn read_loop(
    shard: Rc<Shard>,
    id: ConnectionId,
    close: Rc<Latch>,
    mut stream: Transport,
    mut input: ReceiveBuffer,
) {
    let mut pending = Pending::default();
    let mut partial = false;
    if !input.pending().is_empty() {
        // What was read before the loops started (the first read) is dispatched first; the
        // start of a frame in it starts the frame-arrival time.
        match process_frames(&shard, id, &mut input) {
            Ok(next) => pending = next,
            Err(error) => {
                shard.handle_read_closed(id, Err(error));
                return;
            }
        }
        partial = !pending.blocked && !input.pending().is_empty();
        if partial {
            shard.handle_partial_frame(id, true);
        }
    }
    let mut sojourn = shard.sheds().then(SojournMeter::new);
    let outcome = loop {
        let readable = or(shard.until_readable(id), async {
            close.wait().await;
            Readable::Never
        });
        if readable.await == Readable::Never {
            // Whole frames already received are answered (`ShuttingDown`), not dropped.
            break process_frames(&shard, id, &mut input).map(|_| ());
        }
        if !pending.blocked {
            if let Some(meter) = &mut sojourn {
                meter.before_read(Instant::now(), unread_bytes(stream.as_raw_fd()));
            }
            let read = or(
                async { Some(stream.read(input.spare(pending.frame_len)).await) },
                async {
                    or(shard.stopping(), close.wait()).await;
                    None
                },
            );
            match read.await {
                None => break process_frames(&shard, id, &mut input).map(|_| ()),
                Some(Err(_)) => break Ok(()),
                Some(Ok(0)) => break check_stream_end(input.pending()),
                Some(Ok(len)) => {
                    input.filled(len);
                    if let Some(meter) = &mut sojourn {
                        let now = Instant::now();
                        let waited = meter.read(now, len);
                        meter.observe(now, unread_bytes(stream.as_raw_fd()));
                        shard.handle_sojourn(id, waited.as_nanos() as u64);
                    }
                }
            }
        }
        match process_frames(&shard, id, &mut input) {
            Ok(next) => pending = next,
            Err(error) => break Err(error),
        }
        // The start of a frame waits for its rest: the frame-arrival time runs.
        let partial_now = !pending.blocked && !input.pending().is_empty();
        if partial_now != partial {
            partial = partial_now;
            shard.handle_partial_frame(id, partial);
        }
        if sojourn.is_some() {
            // Fail-fast: glommio reads a socket that has data without yielding, so a reader
            // that never runs out of credit would hold its writer back (and the replies it
            // owes) until the preempt timer; let it write what this read produced.
            futures_lite::future::yield_now().await;
        } else {
            glommio::yield_if_needed().await;
        }
    };
    if outcome.is_ok() && shard.is_stopping() && !close.is_set() {
        let unread = count_unread_at_stop(&shard, &mut stream, &mut input).await;
        shard.handle_unread_at_stop(id, unread);
    }
    shard.handle_read_closed(id, outcome);
}

/// The shard is stopping and has answered the whole frames this reader held: reads on what
/// the client had already sent (until the socket stays quiet for `STOP_DRAIN_WAIT_MS_MAX`,
/// `STOP_DRAIN_BYTES_MAX` bytes, or the grace period's end) and counts the events in it, so
/// that none vanishes behind a clean end of stream. Nothing of it is kept.
async fn count_unread_at_stop(
    shard: &Shard,
    stream: &mut Transport,
    input: &mut ReceiveBuffer,
) -> u64 {
    let quiet = Duration::from_millis(STOP_DRAIN_WAIT_MS_MAX);
    let mut events = 0u64;
    let mut drained = 0u64;
    loop {
        let frame_len = loop {
            match decode_frame(input.pending()) {
                Ok(Decoded::Frame {
                    header,
                    body,
                    frame_len,
                }) => {
                    if header.kind == FrameKind::Events {
                        events += Records::parse(header.kind, body).map_or(0, |r| r.count()) as u64;
                    }
                    input.consume(frame_len);
                }
                Ok(Decoded::NeedMore { frame_len }) => break frame_len,
                // Not frames any more: nothing further can be counted.
                Err(_) => return events,
            }
        };
        if drained >= STOP_DRAIN_BYTES_MAX {
            return events;
        }
        let read = or(
            async { Some(stream.read(input.spare(frame_len)).await) },
            async {
                or(glommio::timer::sleep(quiet), shard.force_closing()).await;
                None
            },
        );
        match read.await {
            Some(Ok(len)) if len > 0 => {
                input.filled(len);
                drained += len as u64;
            }
            _ => return events,
        }
    }
}

/// Hands every whole frame in the buffer to the core, in order, until one is admitted only in
/// part; says what is left at the front.
fn process_frames(
    shard: &Shard,
    id: ConnectionId,
    input: &mut ReceiveBuffer,
) -> Result<Pending, FrameError> {
    loop {
        let frame_len = match decode_frame(input.pending())? {
            Decoded::NeedMore { frame_len } => {
                return Ok(Pending {
                    frame_len,
                    blocked: false,
                });
            }
            Decoded::Frame {
                header,
                body,
                frame_len,
            } => match shard.handle_frame(id, &header, body)? {
                FrameProgress::Done => frame_len,
                FrameProgress::Blocked => {
                    return Ok(Pending {
                        frame_len: Some(frame_len),
                        blocked: true,
                    });
                }
            },
        };
        input.consume(frame_len);
    }
}

async fn write_loop(
    shard: Rc<Shard>,
    id: ConnectionId,
    signals: ConnectionSignals,
    mut stream: Transport,
) {
    let mut out = FrameBuilder::new();
    // Whether the loop ended part-way through a batch: nothing more may be written then.
    let mut mid_batch = false;
    // Why the core closes the connection (a timeout, an eviction), once its latch is set.
    let closed_by_core = || async {
        signals.close.wait().await;
        shard.close_reason(id).unwrap_or(CloseReason::Broken)
    };
    let reason = loop {
        let step = or(
            async {
                match shard.until_writable(id, &signals.writer, &mut out).await {
                    WriteStep::Write => None,
                    WriteStep::Finish => Some(CloseReason::Finished),
                }
            },
            async { Some(closed_by_core().await) },
        );
        if let Some(reason) = step.await {
            break reason;
        }
        let written = or(
            async { Ok(stream.write_all(out.bytes()).await.is_ok()) },
            async {
                // The client did not read its replies within the shutdown grace period.
                or(
                    async {
                        shard.force_closing().await;
                        Err(CloseReason::ForceClosed)
                    },
                    async { Err(closed_by_core().await) },
                )
                .await
            },
        );
        match written.await {
            Ok(true) => shard.handle_written(id, out.len()),
            Ok(false) => break CloseReason::Broken,
            Err(reason) => {
                mid_batch = true;
                break reason;
            }
        }
        out.clear(WRITE_BUFFER_RETAINED_BYTES_MAX);
    };
    // The core's decision (a timeout, an eviction) names the close even when the reader,
    // told first, let the writer finish normally; such a connection does not linger.
    let reason = shard.close_reason(id).unwrap_or(reason);
    let notice = match shard.close_notice(reason) {
        Some(text) if !mid_batch => send_close_notice(&shard, &mut stream, text).await,
        _ => false,
    };
    // FIN after the last reply; then the lingering close.
    let _ = stream.close().await;
    if reason == CloseReason::Finished {
        linger(
            &shard,
            &mut stream,
            Duration::from_millis(CONNECTION_LINGER_MS_MAX),
        )
        .await;
    } else if notice {
        // Long enough for the client to read why, short enough that a flood of evictions
        // does not pile up sockets.
        linger(
            &shard,
            &mut stream,
            Duration::from_millis(CLOSE_NOTICE_MS_MAX),
        )
        .await;
    }
    shard.handle_closed(id, reason);
}

/// Writes the error frame that tells the client why the node closes its connection, if the
/// socket takes it within `CLOSE_NOTICE_MS_MAX`; says whether it did.
async fn send_close_notice(shard: &Shard, stream: &mut Transport, text: String) -> bool {
    let mut frames = FrameBuilder::new();
    frames.error_message(shard.epoch(), ERROR_CODE_CONNECTION_CLOSED, text);
    or(
        async { stream.write_all(frames.bytes()).await.is_ok() },
        async {
            glommio::timer::sleep(Duration::from_millis(CLOSE_NOTICE_MS_MAX)).await;
            false
        },
    )
    .await
}

/// Reads and drops whatever the client still sends, until it closes its side or `limit`
/// passes. Closing a socket with unread input makes the kernel reset the connection, and a
/// reset can destroy replies the client has not read yet; so, like HTTP servers' lingering
/// close, the socket closes only once its input is drained.
async fn linger(shard: &Shard, stream: &mut Transport, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut scratch = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = or(
            async { Some(stream.discard_input(&mut scratch).await) },
            async {
                glommio::timer::sleep(left).await;
                None
            },
        );
        let drained = or(read, async {
            shard.force_closing().await;
            None
        });
        match drained.await {
            Some(Ok(len)) if len > 0 => continue,
            _ => return,
        }
    }
}
