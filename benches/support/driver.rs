//! A client connection without a socket, for the benches that time the runtime itself
//! (`mesh_hop`'s round trip, `link_hop`'s link): a driver on a shard's executor hands frames
//! to the shard the way a connection's reader does (`Shard::handle_frame`, offering a frame
//! again when it was admitted only in part), and its "writer" takes the replies the core
//! queues and reports them written at once, as a connection's writer does after its socket
//! took them. Everything here runs on the executor of the shard it drives.
//!
//! The driver answers criterion's thread: on its first command it dispatches the set-up
//! frames (creating the hunts the measured events touch) and reports `Duration::ZERO`; on
//! each later command `n` it dispatches the next `n` measured frames (cycling), waits for
//! all their replies to be written, and reports how long that took.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use trove::core::codec::{Decoded, FrameBuilder, FrameKind, Records, decode_frame};
use trove::core::ids::ConnectionId;
use trove::core::shard::{CloseReason, FrameProgress, Readable};
use trove::runtime::shard::{Shard, WriteStep};
use trove::runtime::wait::WaitQueue;

/// What a driver gets: the frames it hands in and its line to criterion's thread.
pub struct DriverPayload {
    pub setup: Vec<AlignedVec>,
    pub measured: Vec<AlignedVec>,
    pub commands: flume::Receiver<u64>,
    pub results: flume::Sender<Duration>,
}

/// The driver's connection, as its writer sees it: replies written so far.
#[derive(Default)]
struct DriverConnection {
    replies: Cell<u64>,
    /// Woken when replies are written.
    written: WaitQueue,
}

/// Takes the replies the core queues for the driver's connection and reports them written at
/// once, as a connection's writer does after its socket took them; counts them.
async fn write_replies(
    shard: Rc<Shard>,
    id: ConnectionId,
    queue: Rc<WaitQueue>,
    connection: Rc<DriverConnection>,
) {
    let mut out = FrameBuilder::new();
    while let WriteStep::Write = shard.until_writable(id, &queue, &mut out).await {
        connection
            .replies
            .set(connection.replies.get() + reply_count(out.bytes()));
        shard.handle_written(id, out.len());
        out.clear(64 * 1024);
        connection.written.wake_all();
    }
    shard.handle_closed(id, CloseReason::Finished);
}

/// Replies in a buffer of whole reply frames (a partition map pushed with them is no reply).
fn reply_count(mut frames: &[u8]) -> u64 {
    let mut count = 0;
    while let Ok(Decoded::Frame {
        header,
        body,
        frame_len,
    }) = decode_frame(frames)
    {
        if header.kind == FrameKind::Replies {
            count += u64::from(Records::parse(header.kind, body).expect("replies").count());
        }
        frames = &frames[frame_len..];
    }
    count
}

/// Hands every frame to the shard as a connection's reader does (offering a frame again when
/// it was admitted only in part, once the shard says so), yielding after each frame as a
/// reader yields to read again, then waits for all their replies to be written.
async fn dispatch_frames<'a>(
    shard: &Shard,
    connection: &DriverConnection,
    id: ConnectionId,
    frames: impl Iterator<Item = &'a AlignedVec>,
) {
    let mut replies_expected = connection.replies.get();
    for frame in frames {
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
            panic!("a bench frame is one whole, valid frame");
        };
        replies_expected += u64::from(Records::parse(header.kind, body).expect("records").count());
        while shard
            .handle_frame(id, &header, body)
            .expect("a valid frame")
            == FrameProgress::Blocked
        {
            assert_eq!(
                shard.until_readable(id).await,
                Readable::Yes,
                "the shard runs"
            );
        }
        futures_lite::future::yield_now().await;
    }
    connection
        .written
        .until(|| (connection.replies.get() >= replies_expected).then_some(()))
        .await;
}

/// Runs on the driven shard: on the first command sets the hunts up, then hands frames in on
/// each command and reports how long it took, until criterion's thread hangs up.
pub async fn drive(shard: Rc<Shard>, payload: DriverPayload) {
    let connection = Rc::new(DriverConnection::default());
    let (id, signals) = shard
        .connect(None)
        .expect("a new shard has room for a connection");
    glommio::spawn_local(write_replies(
        shard.clone(),
        id,
        signals.writer,
        connection.clone(),
    ))
    .detach();
    if payload.commands.recv_async().await.is_ok() {
        dispatch_frames(&shard, &connection, id, payload.setup.iter()).await;
        let mut frames = payload.measured.iter().cycle();
        if payload.results.send(Duration::ZERO).is_ok() {
            while let Ok(count) = payload.commands.recv_async().await {
                let started = Instant::now();
                dispatch_frames(
                    &shard,
                    &connection,
                    id,
                    frames.by_ref().take(count as usize),
                )
                .await;
                if payload.results.send(started.elapsed()).is_err() {
                    break;
                }
            }
        }
    }
    shard.handle_read_closed(id, Ok(()));
}
