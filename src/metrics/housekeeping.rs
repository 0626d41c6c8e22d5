//! The node's housekeeping thread: it keeps the latest snapshot of each shard and serves
//! `/metrics` over HTTP/1.1.
//!
//! A plain std thread owned by the node, never a shard: it may block, allocate and take its
//! time without delaying an event. One `poll(2)` loop over non-blocking sockets serves every
//! scrape, so a slow client holds one of `METRICS_CONNECTIONS_MAX` slots for at most
//! `METRICS_CONNECTION_MS_MAX` and never the others. Snapshots arrive on a bounded channel
//! that the loop drains between polls; the loop wakes at least every `METRICS_POLL_MS_MAX`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::constants::{
    METRICS_CONNECTION_MS_MAX, METRICS_CONNECTIONS_MAX, METRICS_POLL_MS_MAX, METRICS_PORT_DEFAULT,
    METRICS_REQUEST_BYTES_MAX,
};
pub use crate::metrics::exposition::NodeInfo;
use crate::metrics::exposition::{ClusterGauges, ShardSeries, render};
use crate::metrics::http::{Pages, Progress, Response, respond};
use crate::metrics::snapshot::ShardReport;

/// Where a node serves `/metrics`, or not at all (`--metrics-listen off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    On(SocketAddr),
}

impl Default for MetricsListen {
    /// Loopback only: exposing the metrics further is the operator's choice.
    fn default() -> MetricsListen {
        MetricsListen::On(SocketAddr::from(([127, 0, 0, 1], METRICS_PORT_DEFAULT)))
    }
}

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<MetricsListen, String> {
        if text == "off" {
            return Ok(MetricsListen::Off);
        }
        text.parse().map(MetricsListen::On).map_err(|_| {
            format!(
                "`{text}` is neither an address with a port (127.0.0.1:{METRICS_PORT_DEFAULT}) nor `off`"
            )
        })
    }
}

/// Reads the node's standing in its cluster; called on the housekeeping thread at each
/// rendering, so it must only copy what the control thread published, never wait on etcd.
pub type ClusterSource = Box<dyn Fn() -> ClusterGauges + Send + Sync>;

/// The running housekeeping thread. Dropping it stops the thread.
pub struct Housekeeping {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Set once, when the node joins a cluster (after it started: the control thread needs
    /// the node's addresses).
    cluster: Arc<OnceLock<ClusterSource>>,
}

impl Housekeeping {
    /// Binds the endpoint's socket, so that a node can refuse to start when the address is
    /// taken before it starts any shard.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Starts the thread: it serves `listener` and reads `snapshots` until [`Self::stop`].
    pub fn start(
        listener: TcpListener,
        info: NodeInfo,
        snapshots: flume::Receiver<ShardReport>,
    ) -> io::Result<Housekeeping> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let cluster = Arc::new(OnceLock::new());
        let thread = std::thread::Builder::new()
            .name("trove-housekeeping".into())
            .spawn({
                let stop = stop.clone();
                let cluster = cluster.clone();
                move || {
                    let mut endpoint = Endpoint::new(listener, info, snapshots, cluster);
                    while !stop.load(Ordering::Relaxed) {
                        endpoint.turn();
                    }
                }
            })?;
        Ok(Housekeeping {
            addr,
            stop,
            thread: Some(thread),
            cluster,
        })
    }

    /// Serves the cluster families from `source` from now on. Once only: `false` (and
    /// `source` unused) when a source was given before.
    pub fn watch_cluster(&self, source: ClusterSource) -> bool {
        self.cluster.set(source).is_ok()
    }

    /// Where `/metrics` is served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread (at most one poll interval).
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The latest of each shard, and the exposition rendered from them.
struct NodeView {
    info: NodeInfo,
    /// Indexed by shard; the snapshot as series, and when it arrived.
    shards: Vec<Option<(ShardSeries, Instant)>>,
    /// The last rendering and when it was made: a burst of scrapes renders once.
    rendered: Option<(String, Instant)>,
    cluster: Arc<OnceLock<ClusterSource>>,
}

impl NodeView {
    fn update(&mut self, report: ShardReport) {
        let index = usize::from(report.snapshot.shard);
        if index >= self.shards.len() {
            return;
        }
        self.shards[index] = Some((ShardSeries::from_report(report), Instant::now()));
        self.rendered = None;
    }
}

impl Pages for NodeView {
    fn metrics(&mut self) -> &str {
        let fresh = |at: &Instant| at.elapsed() < Duration::from_millis(METRICS_POLL_MS_MAX);
        if !self.rendered.as_ref().is_some_and(|(_, at)| fresh(at)) {
            let now = Instant::now();
            let shards: Vec<ShardSeries> = self
                .shards
                .iter()
                .flatten()
                .map(|(series, arrived)| ShardSeries {
                    snapshot_age: now.saturating_duration_since(*arrived),
                    ..series.clone()
                })
                .collect();
            let cluster = self.cluster.get().map(|read| read());
            self.rendered = Some((render(&self.info, &shards, cluster), now));
        }
        &self.rendered.as_ref().expect("just rendered").0
    }
}

/// One scrape connection: reading its request, then writing the answer.
struct Connection {
    stream: TcpStream,
    received: Vec<u8>,
    /// The answer and how much of it is written; `None` while the request is being read.
    answer: Option<(Vec<u8>, usize)>,
    /// When the connection is cut (or, while reading, answered 408).
    deadline: Instant,
}

impl Connection {
    fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            received: Vec::new(),
            answer: None,
            deadline: Instant::now() + Duration::from_millis(METRICS_CONNECTION_MS_MAX),
        }
    }

    fn answer_with(&mut self, response: Response) {
        self.answer = Some((response.to_bytes(), 0));
        self.deadline = Instant::now() + Duration::from_millis(METRICS_CONNECTION_MS_MAX);
    }

    /// Reads what arrived; `false` when the connection is over.
    fn read(&mut self, pages: &mut impl Pages) -> bool {
        let mut chunk = [0u8; 2048];
        loop {
            let room = METRICS_REQUEST_BYTES_MAX - self.received.len();
            let want = room.min(chunk.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.received.extend_from_slice(&chunk[..n]);
                    if let Progress::Answer(response) = respond(&self.received, pages) {
                        self.answer_with(response);
                        return self.write();
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Writes what the socket takes; `false` when the connection is over.
    fn write(&mut self) -> bool {
        let Some((bytes, written)) = self.answer.as_mut() else {
            return true;
        };
        while *written < bytes.len() {
            match self.stream.write(&bytes[*written..]) {
                Ok(0) => return false,
                Ok(n) => *written += n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        // All written: close. Whatever else the client sent is not read.
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        false
    }

    fn events(&self) -> libc::c_short {
        if self.answer.is_some() {
            libc::POLLOUT
        } else {
            libc::POLLIN
        }
    }
}

struct Endpoint {
    listener: TcpListener,
    snapshots: flume::Receiver<ShardReport>,
    connections: Vec<Connection>,
    view: NodeView,
}

impl Endpoint {
    fn new(
        listener: TcpListener,
        info: NodeInfo,
        snapshots: flume::Receiver<ShardReport>,
        cluster: Arc<OnceLock<ClusterSource>>,
    ) -> Endpoint {
        let shards = info.shard_cpus.len();
        Endpoint {
            listener,
            snapshots,
            connections: Vec::new(),
            view: NodeView {
                info,
                shards: (0..shards).map(|_| None).collect(),
                rendered: None,
                cluster,
            },
        }
    }

    /// One pass: take new snapshots, wait for sockets (up to a poll interval), serve them,
    /// and answer or cut connections past their deadline.
    fn turn(&mut self) {
        while let Ok(snapshot) = self.snapshots.try_recv() {
            self.view.update(snapshot);
        }
        let mut fds = Vec::with_capacity(self.connections.len() + 1);
        fds.push(libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for connection in &self.connections {
            fds.push(libc::pollfd {
                fd: connection.stream.as_raw_fd(),
                events: connection.events(),
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that outlives the call,
        // and every descriptor in it belongs to a socket this thread owns.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                METRICS_POLL_MS_MAX as libc::c_int,
            )
        };
        if ready > 0 {
            self.serve_ready(&fds);
        }
        self.enforce_deadlines();
    }

    fn serve_ready(&mut self, fds: &[libc::pollfd]) {
        let mut keep = Vec::with_capacity(self.connections.len());
        let connections = std::mem::take(&mut self.connections);
        for (mut connection, fd) in connections.into_iter().zip(&fds[1..]) {
            let open = if fd.revents == 0 {
                true
            } else if connection.answer.is_some() {
                connection.write()
            } else {
                connection.read(&mut self.view)
            };
            if open {
                keep.push(connection);
            }
        }
        self.connections = keep;
        if fds[0].revents != 0 {
            self.accept_all();
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut connection = Connection::new(stream);
                    if self.connections.len() >= METRICS_CONNECTIONS_MAX {
                        // Best effort, without waiting: a full socket buffer just closes.
                        connection.answer_with(Response::too_many_connections());
                        connection.write();
                        continue;
                    }
                    self.connections.push(connection);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                // WouldBlock: none left. Anything else (out of descriptors): the kernel keeps
                // the connection queued; the next pass retries.
                Err(_) => return,
            }
        }
    }

    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        self.connections.retain_mut(|connection| {
            if connection.deadline > now {
                return true;
            }
            if connection.answer.is_some() {
                return false; // too slow to read its answer: cut.
            }
            connection.answer_with(Response::too_slow());
            connection.write()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_parses_an_address_or_off() {
        assert_eq!("off".parse::<MetricsListen>(), Ok(MetricsListen::Off));
        assert_eq!(
            "127.0.0.1:9701".parse::<MetricsListen>(),
            Ok(MetricsListen::On(SocketAddr::from(([127, 0, 0, 1], 9701))))
        );
        let error = "127.0.0.1".parse::<MetricsListen>().unwrap_err();
        assert!(
            error.contains("with a port") && error.contains("off"),
            "{error}"
        );
    }
}
