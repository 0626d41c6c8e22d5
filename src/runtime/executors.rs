//! Starting and stopping shards: one pinned glommio executor per shard, a full mesh of
//! bounded channels between them, and a stop signal that does not depend on a timer.
//!
//! [`spawn_shards`] runs on the thread that starts a node. It builds the mesh, then starts one
//! executor per configured CPU; inside each, it creates the [`Shard`], hands it to the caller's
//! `serve` function (the network layer starts its listeners there) and runs the shard until
//! the [`Shards`] handle stops it. The stop signal is one end of a socket pair per shard:
//! closing it wakes the shard's executor through io_uring, the same way any socket would.

use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncReadExt;
use glommio::channels::shared_channel;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::constants::{MESH_CHANNEL_BATCHES_MAX, SHARD_IO_MEMORY_BYTES, SHUTDOWN_GRACE_MS_MAX};
use crate::core::ids::ShardId;
use crate::core::partition::PartitionMap;
use crate::host::preflight::{PreflightError, preflight};
use crate::runtime::config::{ConfigError, RuntimeConfig};
use crate::runtime::mesh::MeshBatch;
use crate::runtime::shard::{Shard, ShardMesh, ShardStats};
use crate::runtime::stall::{StallCounter, stalls_after_this_run};

/// Why shards could not start.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Preflight(PreflightError),
    /// The operating system refused a resource (a socket, a thread, an executor).
    Io {
        what: String,
        error: io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(error) => write!(f, "{error}"),
            StartError::Preflight(error) => write!(f, "{error}"),
            StartError::Io { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(error: ConfigError) -> StartError {
        StartError::Config(error)
    }
}

/// Running shards. Dropping it stops them without waiting; [`Shards::stop`] waits and reports.
pub struct Shards {
    stop_signals: Vec<StdUnixStream>,
    joins: Vec<ExecutorJoinHandle<ShardStats>>,
}

impl Shards {
    /// Stops every shard: each stops reading, lets work in flight drain (up to the grace
    /// period), and exits. Returns each shard's counters, in shard order.
    pub fn stop(mut self) -> Vec<ShardStats> {
        self.stop_signals.clear();
        std::mem::take(&mut self.joins)
            .into_iter()
            .map(|join| join.join().expect("a shard executor panicked"))
            .collect()
    }
}

/// The mesh's channel ends, sorted by the shard they belong to.
struct MeshEnds {
    senders: Vec<Vec<(ShardId, shared_channel::SharedSender<MeshBatch>)>>,
    receivers: Vec<Vec<(ShardId, shared_channel::SharedReceiver<MeshBatch>)>>,
}

fn build_mesh(shards: usize) -> MeshEnds {
    let mut ends = MeshEnds {
        senders: (0..shards).map(|_| Vec::new()).collect(),
        receivers: (0..shards).map(|_| Vec::new()).collect(),
    };
    for from in 0..shards {
        for to in (0..shards).filter(|&to| to != from) {
            let (sender, receiver) = shared_channel::new_bounded(MESH_CHANNEL_BATCHES_MAX);
            ends.senders[from].push((ShardId(to as u16), sender));
            ends.receivers[to].push((ShardId(from as u16), receiver));
        }
    }
    ends
}

/// Connects this shard's channel ends. Every end waits for its peer, so all connect at once.
async fn connect_mesh(
    senders: Vec<(ShardId, shared_channel::SharedSender<MeshBatch>)>,
    receivers: Vec<(ShardId, shared_channel::SharedReceiver<MeshBatch>)>,
) -> ShardMesh {
    let senders: Vec<_> = senders
        .into_iter()
        .map(|(peer, end)| glommio::spawn_local(async move { (peer, end.connect().await) }))
        .collect();
    let receivers: Vec<_> = receivers
        .into_iter()
        .map(|(peer, end)| glommio::spawn_local(async move { (peer, end.connect().await) }))
        .collect();
    let mut mesh = ShardMesh {
        senders: Vec::new(),
        receivers: Vec::new(),
    };
    for task in senders {
        mesh.senders.push(task.await);
    }
    for task in receivers {
        mesh.receivers.push(task.await);
    }
    mesh
}

/// Resolves when the other end of the shard's stop socket closes.
async fn stop_signal(fd: std::os::fd::RawFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is one end of a socket pair created for this shard alone and handed over
    // with `into_raw_fd`, so this is its only owner.
    let mut socket = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
    let mut byte = [0u8; 1];
    // Any outcome (end of stream, a byte, an error) means stop.
    let _ = socket.read(&mut byte).await;
}

/// Starts one shard per CPU of `config`, owning partitions as `map` says. `payloads[i]` goes
/// to shard `i`'s `serve` call, which runs on that shard's executor before the shard loop.
pub fn spawn_shards<P, F>(
    config: &RuntimeConfig,
    map: &PartitionMap,
    payloads: Vec<P>,
    serve: F,
) -> Result<Shards, StartError>
where
    P: Send + 'static,
    F: Fn(Rc<Shard>, P) + Send + Clone + 'static,
{
    config.check()?;
    preflight(config.shards()).map_err(StartError::Preflight)?;
    assert_eq!(payloads.len(), config.shards(), "one payload per shard");
    assert_eq!(
        map.shards(),
        config.shards(),
        "the map spreads partitions over these shards"
    );
    let mesh = build_mesh(config.shards());
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS_MAX);
    let mut shards = Shards {
        stop_signals: Vec::new(),
        joins: Vec::new(),
    };
    let ends = mesh.senders.into_iter().zip(mesh.receivers).zip(payloads);
    for (index, ((senders, receivers), payload)) in ends.enumerate() {
        let cpu = config.cpus[index];
        let (ours, theirs) = StdUnixStream::pair().map_err(|error| StartError::Io {
            what: "cannot create a stop signal".into(),
            error,
        })?;
        let theirs = theirs.into_raw_fd();
        let (map, config, serve) = (map.clone(), config.clone(), serve.clone());
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("trove-shard-{index}"))
            .io_memory(SHARD_IO_MEMORY_BYTES);
        if let Some(spin) = config.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        if let Some(threshold) = config.stall_threshold {
            builder = builder.detect_stalls(Some(Box::new(StallCounter::new(threshold))));
        }
        let join = builder
            .spawn(move || async move {
                let mut stop = Box::pin(stop_signal(theirs));
                // A node that fails to start a later shard stops the earlier ones, which may
                // still be waiting for peers that will never connect.
                let connected = futures_lite::future::or(
                    async { Some(connect_mesh(senders, receivers).await) },
                    async {
                        (&mut stop).await;
                        None
                    },
                )
                .await;
                let Some(mesh) = connected else {
                    return ShardStats::default();
                };
                let shard = Rc::new(Shard::new(ShardId(index as u16), cpu, map, &config));
                serve(shard.clone(), payload);
                let mut stats = shard.run(mesh, stop, grace).await;
                stats.stalls = stalls_after_this_run().await;
                stats
            })
            .map_err(|error| StartError::Io {
                what: format!("cannot start the executor of shard {index} on CPU {cpu}"),
                error: io::Error::other(error.to_string()),
            })?;
        shards.stop_signals.push(ours);
        shards.joins.push(join);
    }
    Ok(shards)
}
