//! Starting and stopping shards: one pinned glommio executor per shard, a full mesh of
//! bounded channels between them, and a stop signal that does not depend on a timer.
//!
//! [`spawn_shards`] runs on the thread that starts a node. It builds the mesh, then starts one
//! executor per configured CPU; inside each, it creates the [`Shard`], hands it to the caller's
//! `serve` function (the network layer starts its listeners there) and runs the shard until
//! the [`Shards`] handle stops it. The stop signal is one end of a socket pair per shard:
//! closing it wakes the shard's executor through io_uring, the same way any socket would.
//!
//! Shards fail-stop: a shard thread that panics takes the whole process down at once, with one
//! line that names the shard and the reason ([`install_fail_stop`]). A node with a dead shard
//! would otherwise stay half alive: its share of the shared port accepting connections nobody
//! serves, its partitions unanswered, its lease (in a cluster) still renewed.

use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncReadExt;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::constants::{SHARD_IO_MEMORY_BYTES, SHARDS_STOP_MS_MAX, SHUTDOWN_GRACE_MS_MAX};
use crate::core::ids::ShardId;
use crate::core::partition::PartitionMap;
use crate::core::shard::ShardStats;
use crate::host::preflight::{PreflightError, preflight};
use crate::runtime::config::{ConfigError, RuntimeConfig};
use crate::runtime::mesh::{build_mesh, connect_mesh};
use crate::runtime::shard::Shard;
use crate::runtime::stall::{Timed, set_threshold_on_this_thread, stalls_on_this_thread};

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
    /// period; a log that cannot be made durable is given up after `LOG_STOP_WAIT_MS_MAX`),
    /// and exits. Returns each shard's counters, in shard order.
    ///
    /// Bounded: a shard that has not exited `SHARDS_STOP_MS_MAX` after the signal (I/O stuck
    /// in the kernel, a bug) ends the process with one line naming it and exit status
    /// [`EXIT_STOP_HUNG`], as a dead shard does: a node that cannot stop must not hang its
    /// supervisor.
    pub fn stop(mut self) -> Vec<ShardStats> {
        self.stop_signals.clear();
        let joins = std::mem::take(&mut self.joins);
        let mut stats: Vec<Option<ShardStats>> = joins.iter().map(|_| None).collect();
        let (done_in, done) = std::sync::mpsc::channel();
        for (index, join) in joins.into_iter().enumerate() {
            let done_in = done_in.clone();
            // A thread per shard, so that the wait below can have a deadline (a join has none).
            let joiner = std::thread::Builder::new()
                .name(format!("trove-join-{index}"))
                .spawn(move || {
                    let _ = done_in.send((index, join.join()));
                });
            if let Err(error) = joiner {
                panic!("cannot start a thread to wait for shard {index}: {error}");
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(SHARDS_STOP_MS_MAX);
        while let Some(waiting) = stats.iter().position(Option::is_none) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match done.recv_timeout(left) {
                Ok((index, joined)) => {
                    stats[index] = Some(joined.expect("a shard executor panicked"));
                }
                Err(_) => {
                    eprintln!(
                        "trove: shard {waiting} did not stop within {SHARDS_STOP_MS_MAX} ms of the stop signal; the node exits now (status {EXIT_STOP_HUNG}) without its report"
                    );
                    std::process::exit(EXIT_STOP_HUNG);
                }
            }
        }
        stats.into_iter().flatten().collect()
    }
}

/// The exit code of a node whose shards did not stop within `SHARDS_STOP_MS_MAX`
/// (EX_OSERR, as sysexits.h names it).
pub const EXIT_STOP_HUNG: i32 = 71;

/// The exit code of a process whose shard thread died (EX_SOFTWARE, as sysexits.h names it).
pub const EXIT_SHARD_DIED: i32 = 70;

/// The name of shard `index`'s executor; glommio names its thread after it (adding `-` and
/// a number), and [`install_fail_stop`] recognises shard threads by it.
fn shard_thread_name(index: usize) -> String {
    format!("{SHARD_THREAD_PREFIX}{index}")
}

const SHARD_THREAD_PREFIX: &str = "trove-shard-";

/// Names shard `index`'s thread of glommio's blocking-thread pool (where the store's renames,
/// removals and directory syncs run) `trove-files-N`. It would otherwise carry the name it
/// inherits from the shard's thread, and `top` or `perf` would show two threads of that name.
async fn name_blocking_thread(index: usize) {
    let name =
        std::ffi::CString::new(format!("trove-files-{index}")).expect("a thread name without NUL");
    glommio::executor()
        .spawn_blocking(move || {
            // SAFETY: PR_SET_NAME reads a NUL-terminated string we own (the kernel keeps its
            // first 15 bytes).
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        })
        .await;
}

/// Makes a panic on any shard thread end the process at once, with exit code
/// [`EXIT_SHARD_DIED`] and one line on stderr naming the shard and the reason, so that a
/// supervisor restarts the node. Panics on other threads keep the hook they had. Installed
/// once per process, by the first [`spawn_shards`].
fn install_fail_stop() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let Some(shard) = thread
                .name()
                .and_then(|name| name.strip_prefix(SHARD_THREAD_PREFIX))
                .and_then(|rest| rest.split('-').next())
            else {
                return previous(info);
            };
            if std::env::var_os("RUST_BACKTRACE").is_some() {
                previous(info);
            }
            let reason = info
                .payload()
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".into());
            let place = info
                .location()
                .map(|at| format!(" at {}:{}", at.file(), at.line()))
                .unwrap_or_default();
            eprintln!(
                "trove: shard {shard} died: {reason}{place}; the node stops (fail-stop, exit \
                 {EXIT_SHARD_DIED}) so that its supervisor can restart it"
            );
            std::process::exit(EXIT_SHARD_DIED);
        }));
    });
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
    install_fail_stop();
    let mesh = build_mesh(config.shards());
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS_MAX);
    let mut shards = Shards {
        stop_signals: Vec::new(),
        joins: Vec::new(),
    };
    for (index, (ends, payload)) in mesh.into_iter().zip(payloads).enumerate() {
        let cpu = config.cpus[index];
        let (ours, theirs) = StdUnixStream::pair().map_err(|error| StartError::Io {
            what: "cannot create a stop signal".into(),
            error,
        })?;
        let theirs = theirs.into_raw_fd();
        let (map, config, serve) = (map.clone(), config.clone(), serve.clone());
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&shard_thread_name(index))
            .io_memory(SHARD_IO_MEMORY_BYTES);
        if let Some(spin) = config.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let join = builder
            .spawn(move || {
                // Every task this shard spawns is timed (`runtime::stall`), and so is this one.
                set_threshold_on_this_thread(config.stall_threshold);
                Timed::with_this_threads_threshold(async move {
                    name_blocking_thread(index).await;
                    let mut stop = Box::pin(stop_signal(theirs));
                    // A node that fails to start a later shard stops the earlier ones, which may
                    // still be waiting for peers that will never connect.
                    let connected =
                        futures_lite::future::or(async { Some(connect_mesh(ends).await) }, async {
                            (&mut stop).await;
                            None
                        })
                        .await;
                    let Some(mesh) = connected else {
                        return ShardStats::default();
                    };
                    let shard = Rc::new(Shard::new(ShardId(index as u16), cpu, map, &config));
                    serve(shard.clone(), payload);
                    if config.panic_shard == Some(ShardId(index as u16)) {
                        panic!("an injected fault (RuntimeConfig::panic_shard, for tests only)");
                    }
                    let mut stats = shard.run(mesh, stop, grace).await;
                    stats.stalls = stalls_on_this_thread();
                    stats
                })
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
