//! The cluster-aware client: [`connect_cluster`] asks any seed node for the placement, then
//! sends each event straight to the shard of the node that owns its partition, opening a
//! connection to each owner's shard as events first need it (at most `CLIENT_LINKS_MAX`).
//!
//! When the placement moves on, a node answers an event it does not own `Moved` (naming the
//! owner and its map's epoch); the client adopts that node's newer map (pushed, or asked for
//! on the same connection) and sends
//! the moved events again to their new owner, keeping each partition's order (the rules are
//! [`redirect`](crate::client::redirect)'s, sans-IO). `Unavailable { partition }` is a reply
//! like any other: the caller's, which names the partition nobody serves now. The client
//! never talks to etcd: nodes are its only source of placements.
//!
//! A [`ClusterClient`] is used from one thread; its connections' reader threads only pass
//! frames and maps on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::proto::MapPush;
use crate::client::redirect::{AdmitError, Admitted, Answered, Inflight};
use crate::client::{
    ClientConfig, ClientError, EventSender, Incoming, RecvError, ReplyReceiver, connect,
    connect_with_map,
};
use crate::constants::CLUSTER_CLIENT_MAP_WAIT_MS_MAX;
use crate::core::message::{ArchivedOutcome, Event, Reply};
use crate::core::partition::PartitionMap;

/// How often a client waiting for a newer map looks for it.
const MAP_POLL: Duration = Duration::from_millis(5);

/// Connects to a cluster through the first of `seeds` that answers with its map; `config`
/// gives everything else (its `addr` and `shard_aware` are replaced: each seed in turn, and
/// shard-aware).
pub fn connect_cluster(
    seeds: &[SocketAddr],
    config: &ClientConfig,
) -> Result<ClusterClient, ClientError> {
    let mut failures = Vec::new();
    for &seed in seeds {
        let seed_config = ClientConfig {
            addr: seed,
            shard_aware: true,
            ..config.clone()
        };
        match connect(&seed_config) {
            Ok((sender, receiver)) => return Ok(ClusterClient::of(sender, receiver)),
            Err(error) => failures.push(format!("{seed}: {error}")),
        }
    }
    Err(ClientError::Config(if seeds.is_empty() {
        "no seed address given: name at least one node of the cluster".into()
    } else {
        format!(
            "no seed node gave its partition map ({})",
            failures.join("; ")
        )
    }))
}

/// A cluster client that starts from a map the caller holds (kept from an earlier connection,
/// say): events are routed by it, and moved ones follow the nodes' newer maps. `seed` is the
/// node `push` came from.
pub fn connect_cluster_with_map(
    seed: SocketAddr,
    config: &ClientConfig,
    push: MapPush,
) -> Result<ClusterClient, ClientError> {
    let seed_config = ClientConfig {
        addr: seed,
        shard_aware: true,
        ..config.clone()
    };
    let (sender, receiver) = connect_with_map(&seed_config, push)?;
    Ok(ClusterClient::of(sender, receiver))
}

/// A client of a whole cluster. See the module documentation.
pub struct ClusterClient {
    sender: EventSender,
    receiver: ReplyReceiver,
    inflight: Inflight,
    /// Final replies not yet taken by the caller (at most one per unanswered event).
    ready: VecDeque<Reply>,
    /// The newest epoch a map was asked for, so that one `Moved` burst asks once.
    map_requested_epoch: u32,
}

impl ClusterClient {
    fn of(sender: EventSender, receiver: ReplyReceiver) -> ClusterClient {
        ClusterClient {
            sender,
            receiver,
            inflight: Inflight::new(),
            ready: VecDeque::new(),
            map_requested_epoch: 0,
        }
    }

    /// The map events are routed by.
    pub fn map(&self) -> &PartitionMap {
        self.sender.map()
    }

    /// Connections open now.
    pub fn links(&self) -> usize {
        self.sender.links()
    }

    /// Events answered `Moved` and sent again, so far.
    pub fn resent(&self) -> u64 {
        self.inflight.resent()
    }

    /// Events sent (or held) and not yet answered to the caller.
    pub fn unanswered(&self) -> usize {
        self.inflight.len() + self.ready.len()
    }

    /// Sends `event` to its owner (or holds it behind its partition's moved events). Its
    /// `client_seq` must differ from every unanswered event's. With
    /// `CLUSTER_CLIENT_INFLIGHT_MAX` events unanswered, waits for replies first (keeping them
    /// for [`Self::recv_timeout`]).
    pub fn send(&mut self, event: Event) -> Result<(), ClientError> {
        let link = self.sender.route(event.hunt)?;
        let partition = self.map().partitioner().partition_of(event.hunt);
        let event = loop {
            match self.inflight.admit(event.clone(), partition, link) {
                Ok(Admitted::Send) => break event,
                Ok(Admitted::Held) => return Ok(()),
                Err(AdmitError::DuplicateSeq(seq)) => {
                    return Err(ClientError::Config(format!(
                        "client_seq {seq} is already unanswered: replies are matched by it, so give every event in flight its own"
                    )));
                }
                Err(AdmitError::Full) => {
                    self.sender.flush()?;
                    self.pump(Instant::now() + Duration::from_secs(1))?;
                }
            }
        };
        self.sender.send_on(link, &event)
    }

    /// What is unanswered, for a human (in flight, moved, held).
    pub fn describe(&self) -> String {
        format!(
            "{}; {} replies not yet taken; map epoch {}",
            self.inflight.describe(),
            self.ready.len(),
            self.sender.epoch().get()
        )
    }

    /// Writes every partly filled frame.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.sender.flush()
    }

    /// The next final reply, waiting at most `timeout`. Moved events are sent again on the way.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Reply, ClusterRecvError> {
        let deadline = Instant::now() + timeout;
        self.sender.flush().map_err(ClusterRecvError::Client)?;
        loop {
            if let Some(reply) = self.ready.pop_front() {
                return Ok(reply);
            }
            if Instant::now() >= deadline {
                return Err(ClusterRecvError::Timeout);
            }
            self.pump(deadline).map_err(ClusterRecvError::Client)?;
        }
    }

    /// Closes the sending side of every connection and waits for their readers.
    pub fn close(self) {
        let _ = self.sender.finish();
        self.receiver.join();
    }

    /// Takes what the connections received until `deadline` (one frame or event), and sends
    /// moved events again once their partitions are released.
    fn pump(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.receiver.recv_timeout(left) {
            Ok(Incoming::Replies(frame)) => {
                for reply in frame.replies() {
                    self.take_reply(frame.link(), reply)?;
                }
            }
            // A connection with nothing of ours in flight that a node closes (idle, say) is
            // not the caller's business: it is opened again when an event needs it.
            Ok(Incoming::NodeError { link, .. }) if !self.inflight.sent_on(link) => {}
            Ok(Incoming::NodeError { code, message, .. }) => {
                return Err(ClientError::Node { code, message });
            }
            Ok(Incoming::Closed { link, error }) => {
                self.sender.forget_link(link);
                if self.inflight.sent_on(link) {
                    let node = self
                        .sender
                        .link_target(link)
                        .map_or("the seed node".to_owned(), |target| {
                            format!("node {} (shard {})", target.node, target.shard)
                        });
                    return Err(ClientError::Io {
                        what: format!(
                            "{node} closed its connection ({}) with events unanswered; they may be lost",
                            error.unwrap_or_else(|| "cleanly".into())
                        ),
                        error: std::io::ErrorKind::ConnectionAborted.into(),
                    });
                }
            }
            Err(RecvError::Timeout) => {}
            Err(RecvError::Ended) => {
                return Err(ClientError::Io {
                    what: "every connection to the cluster has ended".into(),
                    error: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
        self.resend_released()
    }

    /// One reply that arrived on `link`.
    fn take_reply(
        &mut self,
        link: usize,
        reply: &crate::core::message::ArchivedReply,
    ) -> Result<(), ClientError> {
        let seq = reply.client_seq.to_native();
        let moved_epoch = match reply.outcome {
            ArchivedOutcome::Moved { epoch, .. } => Some(epoch.to_native()),
            _ => None,
        };
        match self.inflight.answered(seq, moved_epoch) {
            Answered::Final => {
                let owned = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply)
                    .expect("a validated reply deserializes");
                self.ready.push_back(owned);
            }
            Answered::WillResend => {
                let epoch = moved_epoch.expect("only a moved event is sent again");
                self.ask_for_map(epoch, link)?;
            }
            Answered::Unknown => {}
        }
        Ok(())
    }

    /// After `Moved` naming `epoch`, asks the node that answered on `link` for its map (it
    /// has that epoch), once per epoch, unless a map that new is held or waiting already. A
    /// node pushes its newer map only to connections it has seen behind, not to one opened
    /// after its placement changed, so the client asks.
    fn ask_for_map(&mut self, epoch: u32, link: usize) -> Result<(), ClientError> {
        self.sender.apply_pushed_map()?;
        if epoch <= self.sender.epoch().get() || epoch <= self.map_requested_epoch {
            return Ok(());
        }
        self.map_requested_epoch = epoch;
        self.sender.request_map(link)
    }

    /// Sends the waiting events of every released partition again, by the newest map (waiting
    /// a bounded time for the map their `Moved` replies announced).
    fn resend_released(&mut self) -> Result<(), ClientError> {
        let released = self.inflight.releasable();
        if released.is_empty() {
            return Ok(());
        }
        let needed = released
            .iter()
            .map(|&partition| self.inflight.moved_epoch(partition))
            .max()
            .unwrap_or(0);
        self.wait_for_map(needed)?;
        for partition in released {
            // Every event of a partition goes the same way: route one of its hunts.
            let Some(hunt) = self.inflight.hunt_of(partition) else {
                continue;
            };
            let link = self.sender.route(hunt)?;
            for event in self.inflight.release(partition, link) {
                self.sender.send_on(link, &event)?;
            }
        }
        self.sender.flush()
    }

    /// Waits at most `CLUSTER_CLIENT_MAP_WAIT_MS_MAX` for a map of `epoch` or newer.
    fn wait_for_map(&mut self, epoch: u32) -> Result<(), ClientError> {
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_CLIENT_MAP_WAIT_MS_MAX);
        loop {
            self.sender.apply_pushed_map()?;
            if self.sender.epoch().get() >= epoch || Instant::now() >= deadline {
                // Past the wait, the events go out by the map held; a node still not their
                // owner answers `Moved` again, and the re-sends are bounded.
                return Ok(());
            }
            std::thread::sleep(MAP_POLL);
        }
    }
}

/// Why [`ClusterClient::recv_timeout`] returned no reply.
#[derive(Debug)]
pub enum ClusterRecvError {
    /// Nothing final arrived in time.
    Timeout,
    /// A connection failed or a node refused the client (the error says which).
    Client(ClientError),
}

impl std::fmt::Display for ClusterRecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterRecvError::Timeout => write!(f, "no reply in time"),
            ClusterRecvError::Client(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ClusterRecvError {}
