//! From a node's control thread to each of its shards: the latest placement and what is known
//! of the node's lease, handed over without a lock on the data path and woken without a timer.
//!
//! One [`feed`] per shard: a bounded channel of [`ShardUpdate`]s and one end of a socket pair.
//! The control thread (a plain thread) queues an update and writes a byte to its end; the
//! shard's feed task ([`spawn_feed_task`], on the shard's executor) waits on the other end
//! through io_uring, as for any socket, so the wake never waits for glommio's preempt timer.
//! The task installs the newest update in the shard's core between events, never during one.
//!
//! The task also fences the shard by itself when the lease's known-valid end passes without a
//! newer update (the control thread may be blocked in an etcd request then): a glommio timer,
//! local to the shard, which may overshoot by tens of milliseconds, well inside the lease
//! margin. The sender lives on the control thread; the receiver moves to its shard's executor.

use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::AsyncReadExt;

use crate::constants::SHARD_PLACEMENT_UPDATES_QUEUED_MAX;
use crate::core::ids::Epoch;
use crate::core::partition::Placement;
use crate::core::shard::NodeLease;
use crate::runtime::shard::Shard;
use crate::runtime::stall::spawn_timed;

/// What a shard is told: the placement, and whether and until when the node may serve.
#[derive(Clone, Debug)]
pub struct ShardUpdate {
    pub placement: Arc<Placement>,
    /// The revision at which the node registered, while its lease is known valid; `None`
    /// when it is not (fenced).
    pub registered: Option<Epoch>,
    /// When the lease stops being known valid, if nothing newer comes.
    pub lease_valid_until: Instant,
}

impl ShardUpdate {
    /// The lease as a shard applies it at `now`.
    fn lease_at(&self, now: Instant) -> NodeLease {
        NodeLease::of(self.registered, now < self.lease_valid_until)
    }
}

/// The control thread's end of one shard's feed.
pub struct FeedSender {
    updates: flume::Sender<ShardUpdate>,
    /// The same queue, read here only to drop the oldest update when the shard is behind.
    oldest: flume::Receiver<ShardUpdate>,
    wake: StdUnixStream,
}

impl FeedSender {
    /// Queues `update` (dropping the oldest one when the queue is full) and wakes the shard.
    /// Never waits. `Err` when the shard is gone.
    pub fn send(&self, mut update: ShardUpdate) -> io::Result<()> {
        loop {
            match self.updates.try_send(update) {
                Ok(()) => break,
                Err(flume::TrySendError::Full(back)) => {
                    let _ = self.oldest.try_recv();
                    update = back;
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                }
            }
        }
        match (&self.wake).write(&[1]) {
            // A full socket buffer holds wakes the shard has not read yet: it will look.
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// A shard's end of its feed, to hand to [`spawn_feed_task`] on the shard's executor.
pub struct FeedReceiver {
    updates: flume::Receiver<ShardUpdate>,
    wake: RawFd,
}

impl Drop for FeedReceiver {
    fn drop(&mut self) {
        if self.wake >= 0 {
            // SAFETY: `wake` came from `into_raw_fd` in `feed` and was not handed on (the
            // task sets it to -1 when it takes it), so this is its only owner.
            drop(unsafe { StdUnixStream::from_raw_fd(self.wake) });
        }
    }
}

/// A new feed for one shard.
pub fn feed() -> io::Result<(FeedSender, FeedReceiver)> {
    let (ours, theirs) = StdUnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let (updates, receiver) = flume::bounded(SHARD_PLACEMENT_UPDATES_QUEUED_MAX);
    Ok((
        FeedSender {
            updates,
            oldest: receiver.clone(),
            wake: ours,
        },
        FeedReceiver {
            updates: receiver,
            wake: theirs.into_raw_fd(),
        },
    ))
}

/// Starts the task that installs `feed`'s updates in `shard`. Runs on the shard's executor.
/// When the control thread goes away (the node leaves its cluster), the shard fences itself.
pub fn spawn_feed_task(shard: Rc<Shard>, mut feed: FeedReceiver) {
    let fd = std::mem::replace(&mut feed.wake, -1);
    spawn_timed(async move {
        // SAFETY: `fd` is this feed's own end of its socket pair, taken out of `feed` above,
        // so this is its only owner.
        let mut socket = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
        let mut latest: Option<ShardUpdate> = None;
        let mut bytes = [0u8; 64];
        loop {
            let lease_end = latest
                .as_ref()
                .filter(|update| update.lease_at(Instant::now()) != NodeLease::Fenced)
                .map(|update| update.lease_valid_until);
            let woken = match lease_end {
                None => Some(socket.read(&mut bytes).await),
                Some(end) => {
                    futures_lite::future::or(async { Some(socket.read(&mut bytes).await) }, async {
                        glommio::timer::sleep(end.saturating_duration_since(Instant::now())).await;
                        None
                    })
                    .await
                }
            };
            if matches!(woken, Some(Ok(0)) | Some(Err(_))) {
                shard.install_lease(NodeLease::Fenced);
                return;
            }
            while let Ok(update) = feed.updates.try_recv() {
                latest = Some(update);
            }
            if let Some(update) = &latest {
                if let Err(error) = shard.install_placement(&update.placement) {
                    eprintln!(
                        "trove node: shard {} refused placement {}: {error}",
                        shard.id().0,
                        update.placement.epoch()
                    );
                }
                shard.install_lease(update.lease_at(Instant::now()));
            }
        }
    })
    .detach();
}
