//! One client connection on one shard: a reader task and a writer task over the same socket.
//!
//! The reader takes credit before it reads (so a busy shard stops reading and TCP pushes back
//! on the client), cuts whole frames out of an aligned receive buffer, validates each frame's
//! events once, and hands them one by one to the shard. The writer sends the replies the
//! shard queues in the connection's [`Connection`] sink, a batch of frames per write, and gives
//! the credit back once they are written.
//!
//! Malformed input ends the connection: replies to every event accepted before it go out
//! first, then an error frame that says what was wrong, then the socket closes. Other
//! connections are not affected. Both tasks and their state live on the shard's executor.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::constants::{
    CONNECTION_BACKLOG_BYTES_MAX, CONNECTION_LINGER_MS_MAX, WRITE_BUFFER_RETAINED_BYTES_MAX,
};
use crate::core::auth::AuthSecret;
use crate::core::codec::{
    Decoded, ERROR_CODE_CONNECTION_LIMIT, EncodeError, FrameBuilder, FrameError, FrameKind,
    ReceiveBuffer, Records, access_record, access_validated, check_stream_end, decode_frame,
};
use crate::core::credit::Credit;
use crate::core::message::{ArchivedEvent, Outcome, Reply};
use crate::runtime::shard::{Admission, Dispatched, ReplySink, Shard, SinkId};
use crate::runtime::wait::WaitQueue;

/// Replies waiting for the socket, and the credit to give back once they are written.
struct Outgoing {
    frames: FrameBuilder,
    credit: Credit,
}

/// The shard-side state of one connection, shared by its reader and writer tasks.
pub(crate) struct Connection {
    epoch: u32,
    out: RefCell<Outgoing>,
    /// Woken when replies are queued, when the writer drains them and when the reader ends.
    out_changed: WaitQueue,
    /// Events forwarded to other shards whose replies have not come back.
    remote_inflight: Cell<u32>,
    reader_done: Cell<bool>,
}

impl Connection {
    fn new(epoch: u32) -> Connection {
        Connection {
            epoch,
            out: RefCell::new(Outgoing {
                frames: FrameBuilder::new(),
                credit: Credit::ZERO,
            }),
            out_changed: WaitQueue::new(),
            remote_inflight: Cell::new(0),
            reader_done: Cell::new(false),
        }
    }

    /// Adds one reply record, opening a new replies frame when the current one is full.
    fn push_record(
        &self,
        credit: Credit,
        push: impl Fn(&mut FrameBuilder) -> Result<(), EncodeError>,
    ) {
        let mut out = self.out.borrow_mut();
        if !out.frames.is_open() {
            out.frames.begin(FrameKind::Replies);
        }
        if push(&mut out.frames).is_err() {
            // Replies are bounded below the frame limit, so this frame is merely full.
            out.frames.finish(self.epoch);
            out.frames.begin(FrameKind::Replies);
            push(&mut out.frames).expect("a reply fits an empty frame");
        }
        out.credit = Credit::new(
            out.credit.events + credit.events,
            out.credit.bytes + credit.bytes,
        );
        drop(out);
        self.out_changed.wake_all();
    }

    /// Adds whole frames of another kind after the replies queued so far.
    fn push_frames(&self, append: impl FnOnce(&mut FrameBuilder)) {
        let mut out = self.out.borrow_mut();
        if out.frames.is_open() {
            out.frames.finish(self.epoch);
        }
        append(&mut out.frames);
        drop(out);
        self.out_changed.wake_all();
    }

    fn push_busy(&self, event: &ArchivedEvent) {
        let reply = Reply {
            client_seq: event.client_seq.to_native(),
            client_ts: event.client_ts.to_native(),
            outcome: Outcome::Busy,
        };
        self.push_record(Credit::ZERO, |frames| frames.push(&reply));
    }

    fn backlog_bytes(&self) -> usize {
        self.out.borrow().frames.len()
    }

    fn has_output(&self) -> bool {
        !self.out.borrow().frames.is_empty()
    }

    /// Everything this connection will ever write is queued.
    fn finished(&self) -> bool {
        self.reader_done.get() && self.remote_inflight.get() == 0 && !self.has_output()
    }
}

impl ReplySink for Connection {
    fn push_reply(&self, reply: &Reply, credit: Credit) {
        self.push_record(credit, |frames| frames.push(reply));
    }

    fn push_archived_reply(&self, archive: &[u8], credit: Credit) {
        self.remote_inflight.set(self.remote_inflight.get() - 1);
        self.push_record(credit, |frames| frames.push_archived(archive));
    }
}

/// Serves a newly accepted socket on `shard`; with a secret, only once the client has passed
/// the authentication handshake (`net::auth`), which holds the connection's slot meanwhile.
pub(crate) fn serve(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    map_reply: Rc<[u8]>,
    secret: Option<Rc<AuthSecret>>,
) {
    let _ = stream.set_nodelay(true);
    let connection = Rc::new(Connection::new(shard.epoch()));
    let Some(sink) = shard.register_sink(connection.clone()) else {
        glommio::spawn_local(refuse(shard, stream)).detach();
        return;
    };
    let Some(secret) = secret else {
        return start_loops(shard, connection, sink, stream, map_reply);
    };
    glommio::spawn_local(async move {
        if crate::net::auth::authenticate(&mut stream, &secret)
            .await
            .is_ok()
        {
            return start_loops(shard, connection, sink, stream, map_reply);
        }
        shard.stats().connections_unauthenticated += 1;
        let _ = stream.close().await;
        shard.close_sink(sink);
    })
    .detach();
}

fn start_loops(
    shard: Rc<Shard>,
    connection: Rc<Connection>,
    sink: SinkId,
    stream: TcpStream,
    map_reply: Rc<[u8]>,
) {
    // SAFETY: dup(2) of a descriptor this task owns; the copy is owned by the writer alone.
    let write_fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if write_fd < 0 {
        shard.close_sink(sink);
        return;
    }
    // SAFETY: `write_fd` is a fresh descriptor for the same socket, owned by nobody else.
    let write_half = unsafe { TcpStream::from_raw_fd(write_fd) };
    glommio::spawn_local(read_loop(
        shard.clone(),
        connection.clone(),
        sink,
        stream,
        map_reply,
    ))
    .detach();
    glommio::spawn_local(write_loop(shard, connection, sink, write_half)).detach();
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

/// Waits until reading more makes sense: the backlog of replies is short and the shard has
/// credit for at least one more event (fail-fast shards read anyway and answer `Busy`).
async fn wait_until_readable(shard: &Shard, connection: &Connection, sink: SinkId) {
    connection
        .out_changed
        .until(|| (connection.backlog_bytes() <= CONNECTION_BACKLOG_BYTES_MAX).then_some(()))
        .await;
    shard.wait_for_credit(sink).await;
}

async fn read_loop(
    shard: Rc<Shard>,
    connection: Rc<Connection>,
    sink: SinkId,
    mut stream: TcpStream,
    map_reply: Rc<[u8]>,
) {
    let mut input = ReceiveBuffer::new();
    let mut frame_len = None;
    let outcome = loop {
        let readable = or(
            async {
                wait_until_readable(&shard, &connection, sink).await;
                true
            },
            async {
                shard.stopping().await;
                false
            },
        );
        if !readable.await {
            break Ok(());
        }
        let read = or(
            async { Some(stream.read(input.spare(frame_len)).await) },
            async {
                shard.stopping().await;
                None
            },
        );
        match read.await {
            None | Some(Err(_)) => break Ok(()),
            Some(Ok(0)) => break check_stream_end(input.pending()),
            Some(Ok(len)) => input.filled(len),
        }
        match process_frames(&shard, &connection, sink, &mut input, &map_reply).await {
            Ok(partial_frame_len) => frame_len = partial_frame_len,
            Err(error) => break Err(error),
        }
    };
    if let Err(error) = outcome {
        shard.stats().frames_rejected += 1;
        // Replies to everything accepted before the bad input go out first; the error frame
        // is the last thing this connection writes.
        connection
            .out_changed
            .until(|| (connection.remote_inflight.get() == 0).then_some(()))
            .await;
        connection.push_frames(|frames| frames.error(connection.epoch, &error));
    }
    connection.reader_done.set(true);
    connection.out_changed.wake_all();
}

/// Handles every whole frame in the buffer; leaves a partial one for the next read and
/// returns its length when its header is in.
async fn process_frames(
    shard: &Shard,
    connection: &Connection,
    sink: SinkId,
    input: &mut ReceiveBuffer,
    map_reply: &[u8],
) -> Result<Option<usize>, FrameError> {
    loop {
        let frame_len = match decode_frame(input.pending())? {
            Decoded::NeedMore { frame_len } => return Ok(frame_len),
            Decoded::Frame {
                header,
                body,
                frame_len,
            } => {
                shard.stats().frames_received += 1;
                match header.kind {
                    FrameKind::Events => handle_events(shard, connection, sink, body).await?,
                    FrameKind::MapRequest => {
                        Records::parse(header.kind, body)?;
                        connection.push_frames(|frames| frames.append_frames(map_reply));
                    }
                    kind => return Err(FrameError::UnexpectedKind { kind }),
                }
                frame_len
            }
        };
        input.consume(frame_len);
        glommio::yield_if_needed().await;
    }
}

/// Validates a whole frame of events (so a bad one is refused before any of it is applied),
/// then admits and dispatches its events in order.
async fn handle_events(
    shard: &Shard,
    connection: &Connection,
    sink: SinkId,
    body: &[u8],
) -> Result<(), FrameError> {
    let arrived = std::time::Instant::now();
    let records = Records::parse(FrameKind::Events, body)?;
    for (index, record) in records.iter().enumerate() {
        access_record::<ArchivedEvent>(index as u32, record)?;
    }
    for record in records.iter() {
        // SAFETY: every record of this frame passed `access_record` just above.
        let event = unsafe { access_validated::<ArchivedEvent>(record) };
        let credit = Credit::new(1, record.len() as u32);
        let busy = match shard.admit(sink, credit).await {
            Admission::Busy => true,
            Admission::Granted => match shard.dispatch(sink, record, event, credit).await {
                Dispatched::Applied => false,
                Dispatched::Forwarded => {
                    // Counted before this task yields again, so before the reply can arrive.
                    connection
                        .remote_inflight
                        .set(connection.remote_inflight.get() + 1);
                    false
                }
                Dispatched::Busy => true,
            },
        };
        if busy {
            connection.push_busy(event);
        }
    }
    shard.record_frame_dispatch(arrived.elapsed());
    Ok(())
}

/// What the writer does next.
enum WriteStep {
    Write,
    Finish,
}

async fn write_loop(
    shard: Rc<Shard>,
    connection: Rc<Connection>,
    sink: SinkId,
    mut stream: TcpStream,
) {
    let mut spare = FrameBuilder::new();
    let mut broken = false;
    loop {
        let step = connection
            .out_changed
            .until(|| {
                if connection.has_output() {
                    Some(WriteStep::Write)
                } else if connection.finished() || (broken && connection.reader_done.get()) {
                    Some(WriteStep::Finish)
                } else {
                    None
                }
            })
            .await;
        if let WriteStep::Finish = step {
            break;
        }
        let credit = {
            let mut out = connection.out.borrow_mut();
            if out.frames.is_open() {
                out.frames.finish(connection.epoch);
            }
            std::mem::swap(&mut out.frames, &mut spare);
            std::mem::take(&mut out.credit)
        };
        connection.out_changed.wake_all();
        if !broken {
            let written = or(
                async { Some(stream.write_all(spare.bytes()).await.is_ok()) },
                async {
                    shard.force_closing().await;
                    None
                },
            );
            match written.await {
                Some(true) => {}
                Some(false) => broken = true,
                None => {
                    // The client did not read its replies within the shutdown grace period.
                    shard.stats().connections_force_closed += 1;
                    broken = true;
                }
            }
        }
        // Written, or never will be: either way the work is done and its credit returns.
        shard.release(sink, credit);
        spare.clear(WRITE_BUFFER_RETAINED_BYTES_MAX);
    }
    // FIN after the last reply; then the lingering close.
    let _ = stream.close().await;
    if !broken {
        linger(&shard, &mut stream).await;
    }
    shard.close_sink(sink);
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
