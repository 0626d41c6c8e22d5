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
//! affected. Both tasks live on the shard's executor.

use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::constants::{CONNECTION_LINGER_MS_MAX, WRITE_BUFFER_RETAINED_BYTES_MAX};
use crate::core::auth::AuthSecret;
use crate::core::codec::{
    Decoded, ERROR_CODE_CONNECTION_LIMIT, FrameBuilder, FrameError, ReceiveBuffer,
    check_stream_end, decode_frame,
};
use crate::core::ids::ConnectionId;
use crate::core::shard::{CloseReason, FrameProgress, Readable};
use crate::runtime::shard::{ConnectionSignals, Shard, WriteStep};
use crate::runtime::stall::spawn_timed;
use crate::runtime::wait::Latch;

/// Serves a newly accepted socket on `shard`; with a secret, only once the client has passed
/// the authentication handshake (`net::auth`), which holds the connection's slot meanwhile.
pub(crate) fn serve(shard: Rc<Shard>, mut stream: TcpStream, secret: Option<Rc<AuthSecret>>) {
    let _ = stream.set_nodelay(true);
    let Some((id, signals)) = shard.connect() else {
        spawn_timed(refuse(shard, stream)).detach();
        return;
    };
    let Some(secret) = secret else {
        return start_loops(shard, id, signals, stream);
    };
    spawn_timed(async move {
        if crate::net::auth::authenticate(&mut stream, &secret)
            .await
            .is_ok()
        {
            return start_loops(shard, id, signals, stream);
        }
        let _ = stream.close().await;
        shard.handle_read_closed(id, Ok(()));
        shard.handle_closed(id, CloseReason::Unauthenticated);
    })
    .detach();
}

/// Starts the reader and the writer of an accepted (and, with a secret, authenticated)
/// connection.
fn start_loops(shard: Rc<Shard>, id: ConnectionId, signals: ConnectionSignals, stream: TcpStream) {
    // SAFETY: dup(2) of a descriptor this task owns; the copy is owned by the writer alone.
    let write_fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if write_fd < 0 {
        shard.handle_read_closed(id, Ok(()));
        shard.handle_closed(id, CloseReason::Broken);
        return;
    }
    // SAFETY: `write_fd` is a fresh descriptor for the same socket, owned by nobody else.
    let write_half = unsafe { TcpStream::from_raw_fd(write_fd) };
    spawn_timed(read_loop(shard.clone(), id, signals.close.clone(), stream)).detach();
    spawn_timed(write_loop(shard, id, signals, write_half)).detach();
}

/// Tells a client the shard is full, and closes.
async fn refuse(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut frames = FrameBuilder::new();
    frames.error_message(
        shard.epoch(),
        ERROR_CODE_CONNECTION_LIMIT,
        format!(
            "{} serves as many connections as it may; retry later or connect to another shard",
            shard.id()
        ),
    );
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

async fn read_loop(shard: Rc<Shard>, id: ConnectionId, close: Rc<Latch>, mut stream: TcpStream) {
    let mut input = ReceiveBuffer::new();
    let mut pending = Pending::default();
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
                Some(Ok(len)) => input.filled(len),
            }
        }
        match process_frames(&shard, id, &mut input) {
            Ok(next) => pending = next,
            Err(error) => break Err(error),
        }
        glommio::yield_if_needed().await;
    };
    shard.handle_read_closed(id, outcome);
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
    mut stream: TcpStream,
) {
    let mut out = FrameBuilder::new();
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
            Err(reason) => break reason,
        }
        out.clear(WRITE_BUFFER_RETAINED_BYTES_MAX);
    };
    // The core's decision (a timeout, an eviction) names the close even when the reader,
    // told first, let the writer finish normally; such a connection does not linger.
    let reason = shard.close_reason(id).unwrap_or(reason);
    // FIN after the last reply; then the lingering close.
    let _ = stream.close().await;
    if reason == CloseReason::Finished {
        linger(&shard, &mut stream).await;
    }
    shard.handle_closed(id, reason);
}

/// Reads and drops whatever the client still sends, until it closes its side or
/// `CONNECTION_LINGER_MS_MAX` passes. Closing a socket with unread input makes the kernel
/// reset the connection, and a reset can destroy replies the client has not read yet; so,
/// like HTTP servers' lingering close, the socket closes only once its input is drained.
async fn linger(shard: &Shard, stream: &mut TcpStream) {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(CONNECTION_LINGER_MS_MAX);
    let mut scratch = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let read = or(async { Some(stream.read(&mut scratch).await) }, async {
            glommio::timer::sleep(left).await;
            None
        });
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
