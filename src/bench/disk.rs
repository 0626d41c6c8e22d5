//! What a durability benchmark keeps on disk: the embedded node's data dir and a redis-server
//! of the bench's own with an append-only file, each in a fresh directory on a real disk
//! (removed after the run) unless the user named one.
//!
//! A sync on tmpfs reaches no disk (and O_DIRECT is off there), so a fresh directory goes
//! under `$TMPDIR` unless that is tmpfs, then under `/var/tmp`; when both are tmpfs, or the
//! user's own directory is, the bench says so. Everything here lives on the thread that runs
//! the benchmark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::args::RedisAofArg;
use crate::bench::redis::connect_blocking;
use crate::constants::REDIS_CALL_WAIT_S_MAX;
use crate::runtime::store::on_tmpfs;

/// The directory a fresh one is made under when `$TMPDIR` is tmpfs.
const DISK_TMP: &str = "/var/tmp";

/// A directory for the run: a fresh one, removed when dropped, or the user's, kept.
pub struct RunDir {
    path: PathBuf,
    remove: bool,
}

impl RunDir {
    /// A fresh directory named after `purpose`, on a real disk where one is found.
    pub fn fresh(purpose: &str) -> Result<RunDir, String> {
        let system = std::env::temp_dir();
        let base = if on_tmpfs(&system) && Path::new(DISK_TMP).is_dir() {
            PathBuf::from(DISK_TMP)
        } else {
            system
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let path = base.join(format!(
            "trove-bench-{purpose}-{}-{stamp}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(|error| {
            format!(
                "cannot create {}: {error}; set TMPDIR to a writable directory on a disk",
                path.display()
            )
        })?;
        Ok(RunDir { path, remove: true })
    }

    /// The user's directory, kept after the run.
    pub fn kept(path: &Path) -> RunDir {
        RunDir {
            path: path.to_path_buf(),
            remove: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A warning when the directory is on tmpfs, where a sync costs nothing.
    pub fn tmpfs_warning(&self, what: &str) -> Option<String> {
        on_tmpfs(&self.path).then(|| {
            format!(
                "{what} {} is on tmpfs: O_DIRECT and fsync mean nothing there, so the figures are not a disk's; set TMPDIR (or --data-dir) to a directory on a disk",
                self.path.display()
            )
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A redis-server started by the bench with `appendonly yes` and an `appendfsync` policy, on
/// a free loopback port, its files in a fresh directory; killed and removed when dropped.
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    /// Removed after `drop` has killed the server.
    dir: RunDir,
}

impl RedisServer {
    /// Starts the server and waits (at most `REDIS_CALL_WAIT_S_MAX`) until it answers.
    pub fn start(policy: RedisAofArg) -> Result<RedisServer, String> {
        let dir = RunDir::fresh(&format!("redis-aof-{}", policy.name()))?;
        let port = free_loopback_port()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", policy.name()])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => "--redis-aof starts a redis-server of its own, and none is installed (or on PATH): install one (apt-get install redis-server), or drop --redis-aof and point --redis-addr at a running Redis".to_string(),
                _ => format!("cannot start redis-server: {error}"),
            })?;
        let mut server = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        server.wait_until_answering()?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    fn wait_until_answering(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(REDIS_CALL_WAIT_S_MAX);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the redis-server started for --redis-aof exited at once ({status}); is it older than 7.0, or is port {} taken?",
                    self.addr.port()
                ));
            }
            let answered = connect_blocking(self.addr).and_then(|mut redis| {
                redis::cmd("PING")
                    .query::<String>(&mut redis)
                    .map_err(|error| error.to_string())
            });
            match answered {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(format!(
                        "the redis-server started for --redis-aof on {} did not answer within {REDIS_CALL_WAIT_S_MAX} s: {error}",
                        self.addr
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A killed process is reaped at once, so this wait is bounded.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free a moment ago (the kernel's pick for port 0).
fn free_loopback_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| format!("cannot find a free loopback port for redis-server: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_dir_is_removed_when_dropped_and_a_kept_one_is_not() {
        let fresh = RunDir::fresh("unit").unwrap();
        let path = fresh.path().to_path_buf();
        std::fs::write(path.join("file"), b"x").unwrap();
        drop(fresh);
        assert!(!path.exists(), "{} is still there", path.display());
        let kept_path =
            std::env::temp_dir().join(format!("trove-rundir-kept-{}", std::process::id()));
        std::fs::create_dir_all(&kept_path).unwrap();
        drop(RunDir::kept(&kept_path));
        assert!(kept_path.is_dir());
        std::fs::remove_dir_all(&kept_path).unwrap();
    }

    #[test]
    fn a_dir_on_tmpfs_is_called_out_and_one_on_a_disk_is_not() {
        let source = RunDir::kept(Path::new(env!("CARGO_MANIFEST_DIR")));
        if !on_tmpfs(source.path()) {
            assert_eq!(source.tmpfs_warning("the dir"), None);
        }
        let shm = RunDir::kept(Path::new("/dev/shm"));
        if on_tmpfs(shm.path()) {
            let warning = shm.tmpfs_warning("the dir").unwrap();
            assert!(warning.contains("/dev/shm is on tmpfs"), "{warning}");
        }
    }
}
