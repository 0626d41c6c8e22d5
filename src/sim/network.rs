//! The simulated network: when a message sent now arrives, and what the links carried.
//!
//! A message leaves its node's interface after every byte queued before it (egress bandwidth),
//! travels for the link's latency plus a random jitter, and enters the receiving node's
//! interface after every byte that entered before it (ingress bandwidth). Links are FIFO, as
//! TCP connections are: a message never arrives before one sent earlier on the same link.
//! Clients are load generators outside the cluster with interfaces of their own, so only the
//! nodes' side of a client link is limited.
//!
//! Ingress time is booked when a message is sent, in the order messages are sent, rather
//! than when it reaches the far interface: a simplification that keeps one heap entry per
//! message. Interfaces queue without a bound in the model; in a real cluster a full socket
//! buffer would block the sender instead. At the default load the CPUs saturate long before
//! the links do (see `README.md`).

use crate::core::rng::Rng;
use crate::sim::config::NetworkModel;

/// Which link a message travels on, for its FIFO order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    NodeToNode { from: u32, to: u32 },
    ClientToNode { session: u32, to: u32 },
    NodeToClient { from: u32, session: u32 },
}

/// Messages and bytes a run put on the wire, by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Events, forwarded events, broadcast copies and replies.
    pub event_messages: u64,
    pub event_bytes: u64,
    /// Heartbeat pings and their answers.
    pub heartbeat_messages: u64,
}

/// The links of one simulated cluster and its clients.
pub struct Network {
    latency_ns: u64,
    jitter_ns: u64,
    bandwidth_gbps: u64,
    egress_free_ns: Vec<u64>,
    ingress_free_ns: Vec<u64>,
    nodes: usize,
    /// Latest arrival on each node-to-node link, indexed `from * nodes + to`.
    node_link_last_ns: Vec<u64>,
    /// Latest arrival on each session's link to its node and back. A session talks to one
    /// node only, in every strategy.
    client_up_last_ns: Vec<u64>,
    client_down_last_ns: Vec<u64>,
    /// Test-only fault: client links are not FIFO and may add this much more delay.
    reorder_client_links_ns: u64,
    rng: Rng,
    pub traffic: Traffic,
}

impl Network {
    pub fn new(
        model: &NetworkModel,
        nodes: usize,
        sessions: usize,
        rng: Rng,
        reorder_client_links_ns: u64,
    ) -> Network {
        Network {
            latency_ns: model.latency_us * 1_000,
            jitter_ns: model.jitter_us * 1_000,
            bandwidth_gbps: model.bandwidth_gbps,
            egress_free_ns: vec![0; nodes],
            ingress_free_ns: vec![0; nodes],
            nodes,
            node_link_last_ns: vec![0; nodes * nodes],
            client_up_last_ns: vec![0; sessions],
            client_down_last_ns: vec![0; sessions],
            reorder_client_links_ns,
            rng,
            traffic: Traffic::default(),
        }
    }

    /// Time to put `bytes` on a wire: one gigabit per second is one bit per nanosecond.
    fn wire_ns(&self, bytes: u64) -> u64 {
        (bytes * 8).div_ceil(self.bandwidth_gbps)
    }

    /// Sends `bytes` on `link` at `now` and returns when they have arrived whole.
    pub fn send(&mut self, now: u64, link: Link, bytes: u64) -> u64 {
        let wire_ns = self.wire_ns(bytes);
        let departed = match link {
            Link::NodeToNode { from, .. } | Link::NodeToClient { from, .. } => {
                let free = &mut self.egress_free_ns[from as usize];
                *free = now.max(*free) + wire_ns;
                *free
            }
            Link::ClientToNode { .. } => now + wire_ns,
        };
        let jitter = self.rng.below(self.jitter_ns + 1);
        let reaches = departed + self.latency_ns + jitter;
        let entered = match link {
            Link::NodeToNode { to, .. } | Link::ClientToNode { to, .. } => {
                let free = &mut self.ingress_free_ns[to as usize];
                *free = reaches.max(*free) + wire_ns;
                *free
            }
            Link::NodeToClient { .. } => reaches,
        };
        self.keep_fifo(link, entered)
    }

    /// Delays an arrival until after the previous one on the same link.
    fn keep_fifo(&mut self, link: Link, arrival: u64) -> u64 {
        let last = match link {
            Link::NodeToNode { from, to } => {
                &mut self.node_link_last_ns[from as usize * self.nodes + to as usize]
            }
            Link::ClientToNode { session, .. } => {
                if self.reorder_client_links_ns > 0 {
                    return arrival + self.rng.below(self.reorder_client_links_ns);
                }
                &mut self.client_up_last_ns[session as usize]
            }
            Link::NodeToClient { session, .. } => &mut self.client_down_last_ns[session as usize],
        };
        *last = arrival.max(*last);
        *last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(jitter_us: u64) -> Network {
        let model = NetworkModel {
            latency_us: 50,
            jitter_us,
            bandwidth_gbps: 10,
        };
        Network::new(&model, 3, 2, Rng::stream(1, 1), 0)
    }

    #[test]
    fn an_idle_link_costs_latency_plus_wire_time_each_side() {
        let mut net = network(0);
        // 1250 bytes at 10 Gbit/s take 1 µs to put on a wire, once leaving, once entering.
        let arrival = net.send(1_000, Link::NodeToNode { from: 0, to: 1 }, 1_250);
        assert_eq!(arrival, 1_000 + 1_000 + 50_000 + 1_000);
    }

    #[test]
    fn bytes_queue_behind_bytes_on_the_same_interface() {
        let mut net = network(0);
        let first = net.send(0, Link::NodeToNode { from: 0, to: 1 }, 125_000);
        let second = net.send(0, Link::NodeToNode { from: 0, to: 2 }, 125_000);
        // 100 µs of wire each: the second leaves when the first has left.
        assert_eq!(second - first, 100_000);
        let into_same = net.send(0, Link::ClientToNode { session: 0, to: 1 }, 125_000);
        assert!(into_same >= first + 100_000);
    }

    #[test]
    fn links_are_fifo_even_with_jitter() {
        let mut net = network(40);
        let mut last = 0;
        for k in 0..1_000 {
            let arrival = net.send(k * 10, Link::NodeToNode { from: 2, to: 0 }, 100);
            assert!(arrival >= last);
            last = arrival;
        }
    }

    #[test]
    fn the_reorder_fault_breaks_client_fifo() {
        let model = NetworkModel {
            latency_us: 50,
            jitter_us: 0,
            bandwidth_gbps: 10,
        };
        let mut net = Network::new(&model, 1, 1, Rng::stream(1, 1), 1_000);
        let arrivals: Vec<u64> = (0..100)
            .map(|k| net.send(k * 10, Link::ClientToNode { session: 0, to: 0 }, 100))
            .collect();
        assert!(arrivals.windows(2).any(|pair| pair[1] < pair[0]));
    }
}
