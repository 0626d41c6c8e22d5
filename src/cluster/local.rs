//! A local cluster on loopback, for trying trove and for tests: an etcd of its own (found on
//! PATH, its data in a temporary folder, fast and unsafe: no fsync, short elections) and `trove
//! node` processes joined to it. `trove cluster up` is built on it, and so are the cluster's
//! integration tests.
//!
//! Every process started here is a child of the caller, dies with it (`PR_SET_PDEATHSIG`), and
//! is stopped (SIGTERM, then SIGKILL after a bound) when its owner is stopped or dropped.
//! Used from one thread: `trove cluster up`'s main thread, or a test.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::coordinator::Request;
use crate::cluster::etcd::EtcdClient;
use crate::constants::{CLUSTER_UP_START_MS_MAX, CLUSTER_UP_STOP_MS_MAX};
use crate::host::affinity::allowed_cpus;

/// The one sentence said when etcd is missing.
pub const ETCD_MISSING: &str =
    "etcd is not on PATH: install it (apt-get install etcd-server) or give --cluster URL";

/// Where `name` is on PATH, if it is.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `path` as a command-line argument for a child: it must be valid UTF-8.
pub fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{}: give a path that is valid UTF-8", path.display()))
}

/// A free TCP port on loopback (free when asked; another process could take it after).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| format!("cannot find a free port on 127.0.0.1: {error}"))
}

/// Makes a child die with its parent and receive SIGINT/SIGTERM normally, whatever signals
/// the parent blocks.
fn as_child(command: &mut Command) -> &mut Command {
    // SAFETY: runs in the child between fork and exec; prctl and sigprocmask are
    // async-signal-safe and touch only the child's own state.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        })
    }
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the pid of a child we own and have not yet reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// SIGSTOPs `child` and waits until every one of its threads has stopped. kill(2) returns
/// before that: a thread that is running keeps running until the thread the signal was given
/// to is scheduled and stops the group, which on a busy machine takes milliseconds, time
/// enough for a node to answer what it was sent "after" it was paused. `Err` if some thread
/// is still running after `CLUSTER_UP_STOP_MS_MAX`.
pub fn pause(child: &Child) -> Result<(), String> {
    signal(child, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_millis(CLUSTER_UP_STOP_MS_MAX);
    let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
    loop {
        match running_threads(&tasks) {
            Ok(0) => return Ok(()),
            Ok(running) if Instant::now() >= deadline => {
                return Err(format!(
                    "process {} still has {running} threads running \
                     {CLUSTER_UP_STOP_MS_MAX} ms after SIGSTOP",
                    child.id()
                ));
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(error) => return Err(format!("cannot read {}: {error}", tasks.display())),
        }
    }
}

/// How many threads under `/proc/PID/task` are in any state but stopped (`T`).
fn running_threads(tasks: &Path) -> std::io::Result<usize> {
    let mut running = 0;
    for task in std::fs::read_dir(tasks)? {
        // A thread that exits between the listing and the read has stopped running too.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue;
        };
        // "TID (COMM) STATE ...": COMM may hold spaces and parentheses, so read after the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state != Some("T") {
            running += 1;
        }
    }
    Ok(running)
}

/// SIGTERM, then SIGKILL if `child` has not exited within `CLUSTER_UP_STOP_MS_MAX`.
pub fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_millis(CLUSTER_UP_STOP_MS_MAX);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An etcd of our own on loopback. See the module doc.
pub struct EtcdProcess {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdProcess {
    /// Starts an etcd found on PATH, its data in a fresh temporary folder, on free ports, and
    /// waits until it answers.
    pub fn start() -> Result<EtcdProcess, String> {
        let binary = find_on_path("etcd").ok_or(ETCD_MISSING)?;
        let unique = format!(
            "trove-etcd-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        let mut etcd = EtcdProcess {
            binary,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            child: None,
        };
        etcd.start_again()?;
        Ok(etcd)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The folder holding its data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it (an outage), keeping its data for [`EtcdProcess::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same ports and data, and waits until it answers.
    pub fn start_again(&mut self) -> Result<(), String> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| format!("cannot write {}: {error}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|error| format!("cannot write {}: {error}", log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--name=trove-local")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=trove-local={peer}"))
            // Short elections, so leases of 2 s are allowed; no fsync: a throwaway etcd.
            .args(["--heartbeat-interval=20", "--election-timeout=200"])
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = as_child(&mut command)
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(&log_path)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<(), String> {
        let mut client = EtcdClient::new(vec![self.endpoint()], Duration::from_millis(500));
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_UP_START_MS_MAX);
        let probe = Request::RangePrefix {
            prefix: "/trove/".into(),
        };
        loop {
            if client.execute(&probe).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                self.kill();
                return Err(format!(
                    "etcd did not start on {}; the end of its log ({}):\n{}",
                    self.endpoint(),
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it and removes its folder.
    pub fn stop(mut self) {
        self.stop_and_clean();
    }

    fn stop_and_clean(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop_and_clean();
    }
}

/// How to start one `trove node` of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalNodeConfig {
    pub trove: PathBuf,
    pub etcd: String,
    pub cluster_name: String,
    pub node_id: u32,
    pub shards: usize,
    pub partitions: u32,
    pub lease_ttl_s: u64,
}

/// The flags that place the shards of node `node_id` (numbered from 1) of a cluster on this
/// machine: `--cpus` with the CPUs of `allowed` taken in turn from where the node before it
/// stopped, so that the nodes spread over the machine (with `--shards` alone, every node puts
/// its first shard on the first CPU, and three one-shard nodes share one CPU while the others
/// idle); `--shards` when a node has more shards than there are CPUs, which cycles over them.
fn shard_placement_flags(node_id: u32, shards: usize, allowed: &[usize]) -> [String; 2] {
    if shards == 0 || shards > allowed.len() {
        return ["--shards".into(), shards.to_string()];
    }
    let first = node_id.saturating_sub(1) as usize * shards;
    let mut cpus: Vec<usize> = (first..first + shards)
        .map(|turn| allowed[turn % allowed.len()])
        .collect();
    cpus.sort_unstable();
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    ["--cpus".into(), list.join(",")]
}

/// A `trove node` child joined to a cluster, its stdout read by a thread of its own that
/// forwards each line (prefixed with the node id) to a channel.
pub struct NodeProcess {
    pub node_id: u32,
    pub child: Child,
    /// The address every shard accepts on, as the node printed it.
    pub addr: String,
    /// The node's lines after its banner, as they come.
    pub lines: flume::Receiver<String>,
}

impl NodeProcess {
    /// Starts the node and waits for the line that gives its address.
    pub fn start(config: &LocalNodeConfig) -> Result<NodeProcess, String> {
        NodeProcess::start_with(config, &[])
    }

    /// Starts the node with `extra` flags after the cluster's (`--data-dir DIR`, …) and waits
    /// for the line that gives its address. It advertises 127.0.0.1 unless `extra` gives an
    /// `--advertise` of its own (a test's relay on another loopback address).
    pub fn start_with(config: &LocalNodeConfig, extra: &[&str]) -> Result<NodeProcess, String> {
        let mut command = Command::new(&config.trove);
        command.arg("node");
        if !extra.contains(&"--advertise") {
            command.args(["--advertise", "127.0.0.1"]);
        }
        command
            .args([
                "--listen",
                "127.0.0.1",
                "--port",
                "0",
                // Every node on this machine serves /metrics, each on a port of its own.
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(shard_placement_flags(
                config.node_id,
                config.shards,
                &allowed_cpus(),
            ))
            .args(["--partitions", &config.partitions.to_string()])
            .args(["--cluster", &config.etcd])
            .args(["--cluster-name", &config.cluster_name])
            .args(["--node-id", &config.node_id.to_string()])
            .args(["--lease-ttl-s", &config.lease_ttl_s.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = as_child(&mut command)
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", config.trove.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // Bounded: the owner must keep reading `lines`, or the node blocks on its stdout once
        // this and the pipe's buffer are full.
        let (lines_tx, lines) = flume::bounded(crate::constants::CLUSTER_EVENTS_QUEUED_MAX);
        std::thread::Builder::new()
            .name(format!("trove-node-{}-stdout", config.node_id))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|error| format!("cannot start a thread: {error}"))?;
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_UP_START_MS_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    stop_child(&mut child);
                    return Err(format!(
                        "node {} did not print its address within {CLUSTER_UP_START_MS_MAX} ms",
                        config.node_id
                    ));
                }
            };
            if let Some(addr) = banner_addr(&line) {
                return Ok(NodeProcess {
                    node_id: config.node_id,
                    child,
                    addr,
                    lines,
                });
            }
        }
    }

    /// Stops the node (SIGTERM, SIGKILL after a bound).
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address in `trove node`'s first line: "trove node listening on ADDR with …".
fn banner_addr(line: &str) -> Option<String> {
    let rest = line.strip_prefix("trove node listening on ")?;
    rest.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_gives_the_address() {
        let line = "trove node listening on 127.0.0.1:4100 with 2 shards on CPUs 0-1 (shard ports 1,2); stop with Ctrl-C";
        assert_eq!(banner_addr(line).as_deref(), Some("127.0.0.1:4100"));
        assert_eq!(banner_addr("trove node: registered"), None);
    }

    #[test]
    fn a_missing_program_is_not_found() {
        assert_eq!(find_on_path("trove-no-such-program-anywhere"), None);
        assert!(ETCD_MISSING.contains("apt-get install etcd-server"));
    }

    fn placement(node_id: u32, shards: usize, allowed: &[usize]) -> Vec<String> {
        shard_placement_flags(node_id, shards, allowed).to_vec()
    }

    #[test]
    fn the_nodes_of_a_local_cluster_spread_over_the_cpus() {
        let two = [0, 1];
        assert_eq!(placement(1, 1, &two), ["--cpus", "0"]);
        assert_eq!(placement(2, 1, &two), ["--cpus", "1"]);
        assert_eq!(placement(3, 1, &two), ["--cpus", "0"]);
        assert_eq!(placement(2, 2, &two), ["--cpus", "0,1"]);
        let four = [2, 3, 6, 7];
        assert_eq!(placement(1, 2, &four), ["--cpus", "2,3"]);
        assert_eq!(placement(2, 2, &four), ["--cpus", "6,7"]);
        assert_eq!(placement(2, 3, &four), ["--cpus", "2,3,7"]);
        // More shards than CPUs: `--shards` cycles over them, as for one node.
        assert_eq!(placement(1, 3, &two), ["--shards", "3"]);
    }
}
