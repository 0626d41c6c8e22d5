//! What one simulated run is: the model's parameters, the distribution strategy, the cluster
//! size and the seed, plus the faults that only tests inject.
//!
//! Every parameter has a default here (the one `trove sim` uses unless told otherwise) and a
//! flag (see `args`). Units are in the names. `src/sim/README.md` explains which parameters
//! produce the broadcast strategy's wall and why.

use std::fmt;

use serde::Serialize;

use crate::constants::{
    CONNECTIONS_PER_SHARD_MAX, HUNTS_PER_PARTITION_MAX, PARTITIONS_MAX, PLAYERS_PER_HUNT_MAX,
    SHARDS_MAX, SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX, SIM_EVENTS_PER_RUN_MAX, SIM_LOAD_MS_MAX,
    SIM_MESSAGES_PER_RUN_MAX, SIM_NODES_MAX, SIM_QUEUE_EVENTS_MAX, SIM_SESSIONS_PER_NODE_MAX,
};

/// How events travel from clients to the shard that owns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Every event goes to every node; each node looks at it and drops what it does not own.
    /// A model of the general event framework that hit the wall.
    Broadcast,
    /// Clients send everything to node 0, which forwards each event to its owner and relays
    /// the reply.
    Router,
    /// Clients send to any node; that node forwards each event to its owner and relays the
    /// reply.
    Forward,
    /// Clients know the partition map and send each event straight to its owning shard.
    ShardAware,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::Broadcast,
        Strategy::Router,
        Strategy::Forward,
        Strategy::ShardAware,
    ];

    /// The name used on the command line, in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Broadcast => "broadcast",
            Strategy::Router => "router",
            Strategy::Forward => "forward",
            Strategy::ShardAware => "shard-aware",
        }
    }

    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CPU time a shard spends on each piece of work, in virtual nanoseconds. The same for every
/// strategy: they differ only in how much of each piece they cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Costs {
    /// Receiving one network message and decoding it (system call, framing, deserializing).
    pub recv_ns: u64,
    /// Encoding and sending one network message.
    pub send_ns: u64,
    /// Looking at a received event's key and deciding it belongs elsewhere (broadcast only).
    pub filter_ns: u64,
    /// Applying one event to the treasure-hunt state machine.
    pub apply_ns: u64,
    /// Handing an event or a reply to another shard of the same node.
    pub hop_ns: u64,
}

/// The network between nodes and clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkModel {
    /// One-way propagation latency of every link.
    pub latency_us: u64,
    /// Extra one-way delay drawn uniformly from `0..=jitter_us` per message; links stay FIFO.
    pub jitter_us: u64,
    /// Each node's network interface, in each direction, in gigabits per second.
    pub bandwidth_gbps: u64,
}

/// Every parameter of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Model {
    /// Shards (cores) per node.
    pub shards: usize,
    /// Partitions of the cluster (a power of two).
    pub partitions: u32,
    /// Events per second the clients offer per node (open loop: they do not wait for replies).
    pub rate_per_node: u64,
    /// Client sessions (players) per node; each sends to one hunt at a steady pace.
    pub sessions_per_node: usize,
    /// Hunts per node; sessions are dealt out to them in turn.
    pub hunts_per_node: usize,
    /// Load before the measured window starts (queues fill, hunts are created).
    pub warmup_ms: u64,
    /// The measured window.
    pub duration_ms: u64,
    pub costs: Costs,
    pub network: NetworkModel,
    /// Events a shard's queue holds: its credit budget. One more is refused (an overflow).
    pub queue_events: u32,
    /// How often each node asks the next node on the ring whether it is alive.
    pub heartbeat_interval_us: u64,
    /// A node whose answer has not been processed for this long is declared unresponsive.
    pub heartbeat_timeout_us: u64,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            shards: 4,
            partitions: 1024,
            rate_per_node: 8_000,
            sessions_per_node: 32,
            hunts_per_node: 16,
            warmup_ms: 20,
            duration_ms: 80,
            costs: Costs {
                recv_ns: 20_000,
                send_ns: 5_000,
                filter_ns: 2_000,
                apply_ns: 40_000,
                hop_ns: 1_000,
            },
            network: NetworkModel {
                latency_us: 50,
                jitter_us: 20,
                bandwidth_gbps: 10,
            },
            queue_events: 256,
            heartbeat_interval_us: 1_000,
            heartbeat_timeout_us: 5_000,
        }
    }
}

impl Model {
    /// Nanoseconds between two events of one session.
    pub fn session_period_ns(&self) -> u64 {
        (self.sessions_per_node as u64 * 1_000_000_000 / self.rate_per_node).max(1)
    }

    pub fn warmup_ns(&self) -> u64 {
        self.warmup_ms * 1_000_000
    }

    /// When clients stop sending: the end of the measured window.
    pub fn load_end_ns(&self) -> u64 {
        (self.warmup_ms + self.duration_ms) * 1_000_000
    }

    /// Events all clients of an `nodes`-node run send, about.
    pub fn events_per_run(&self, nodes: usize) -> u64 {
        let per_session = self.load_end_ns() / self.session_period_ns() + 1;
        per_session * (nodes * self.sessions_per_node) as u64
    }

    /// Checks the model on its own, whatever the cluster size; says what is wrong and how to
    /// mend it.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--shards", self.shards as u64),
            ("--rate-per-node", self.rate_per_node),
            ("--sessions-per-node", self.sessions_per_node as u64),
            ("--hunts-per-node", self.hunts_per_node as u64),
            ("--duration-ms", self.duration_ms),
            ("--queue-events", u64::from(self.queue_events)),
            ("--bandwidth-gbps", self.network.bandwidth_gbps),
            ("--heartbeat-interval-us", self.heartbeat_interval_us),
            ("--heartbeat-timeout-us", self.heartbeat_timeout_us),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{flag} must be at least 1"));
        }
        if self.shards > SHARDS_MAX {
            return Err(format!("--shards {}: at most {SHARDS_MAX}", self.shards));
        }
        if !self.partitions.is_power_of_two() || self.partitions > PARTITIONS_MAX {
            return Err(format!(
                "--partitions {}: must be a power of two from 1 to {PARTITIONS_MAX}",
                self.partitions
            ));
        }
        if self.sessions_per_node > SIM_SESSIONS_PER_NODE_MAX {
            return Err(format!(
                "--sessions-per-node {}: at most {SIM_SESSIONS_PER_NODE_MAX}",
                self.sessions_per_node
            ));
        }
        if self.hunts_per_node > self.sessions_per_node {
            return Err(format!(
                "--hunts-per-node {} is more than --sessions-per-node {}: every hunt needs a \
                 session to organise it",
                self.hunts_per_node, self.sessions_per_node
            ));
        }
        if self.sessions_per_node.div_ceil(self.hunts_per_node) > PLAYERS_PER_HUNT_MAX {
            return Err(format!(
                "{} sessions per hunt: a hunt holds at most {PLAYERS_PER_HUNT_MAX} players; \
                 raise --hunts-per-node",
                self.sessions_per_node.div_ceil(self.hunts_per_node)
            ));
        }
        if self.queue_events > SIM_QUEUE_EVENTS_MAX {
            return Err(format!(
                "--queue-events {}: at most {SIM_QUEUE_EVENTS_MAX}",
                self.queue_events
            ));
        }
        if self.warmup_ms + self.duration_ms > SIM_LOAD_MS_MAX {
            return Err(format!(
                "--warmup-ms plus --duration-ms is {} ms: at most {SIM_LOAD_MS_MAX}",
                self.warmup_ms + self.duration_ms
            ));
        }
        Ok(())
    }

    /// Checks that an `nodes`-node cluster of this model fits the simulator's limits.
    pub fn validate_cluster(&self, nodes: usize, strategy: Strategy) -> Result<(), String> {
        if nodes == 0 || nodes > SIM_NODES_MAX {
            return Err(format!(
                "{nodes} nodes: a cluster has 1 to {SIM_NODES_MAX} nodes"
            ));
        }
        let links = match strategy {
            Strategy::Broadcast | Strategy::Forward => (nodes - 1).div_ceil(self.shards.max(1)),
            Strategy::Router => 1,
            Strategy::ShardAware => 0,
        };
        if links + SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX > CONNECTIONS_PER_SHARD_MAX {
            return Err(format!(
                "{strategy} on {nodes} nodes opens {links} node links on a shard, more than the \
                 {} a shard takes beside its clients; raise --shards",
                CONNECTIONS_PER_SHARD_MAX - SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX
            ));
        }
        let hunts = (nodes * self.hunts_per_node) as u64;
        // Hunt ids are drawn until each partition holds at most half its table, so that the
        // draw always ends quickly and the state machine never refuses a hunt as "table full".
        let hunts_max = u64::from(self.partitions) * HUNTS_PER_PARTITION_MAX as u64 / 2;
        if hunts > hunts_max {
            return Err(format!(
                "{hunts} hunts on {nodes} nodes do not fit {} partitions (at most {hunts_max}); \
                 raise --partitions or lower --hunts-per-node",
                self.partitions
            ));
        }
        let events = self.events_per_run(nodes);
        if events > SIM_EVENTS_PER_RUN_MAX {
            return Err(format!(
                "{nodes} nodes would send about {events} events, more than the \
                 {SIM_EVENTS_PER_RUN_MAX} one run may hold; lower --rate-per-node or \
                 --duration-ms"
            ));
        }
        let fan_out = if strategy == Strategy::Broadcast {
            nodes as u64 + 2
        } else {
            4
        };
        if events * fan_out > SIM_MESSAGES_PER_RUN_MAX {
            return Err(format!(
                "{strategy} on {nodes} nodes would send about {} messages, more than the \
                 {SIM_MESSAGES_PER_RUN_MAX} one run may; lower --rate-per-node or --duration-ms",
                events * fan_out
            ));
        }
        Ok(())
    }

    /// The flags that set every parameter to its value here: with `--nodes`, `--strategy`
    /// and `--seed`, the exact command that reproduces a run.
    pub fn flags(&self) -> String {
        let c = &self.costs;
        let n = &self.network;
        format!(
            "--shards {} --partitions {} --rate-per-node {} --sessions-per-node {} \
             --hunts-per-node {} --warmup-ms {} --duration-ms {} --recv-ns {} --send-ns {} \
             --filter-ns {} --apply-ns {} --hop-ns {} --latency-us {} --jitter-us {} \
             --bandwidth-gbps {} --queue-events {} --heartbeat-interval-us {} \
             --heartbeat-timeout-us {}",
            self.shards,
            self.partitions,
            self.rate_per_node,
            self.sessions_per_node,
            self.hunts_per_node,
            self.warmup_ms,
            self.duration_ms,
            c.recv_ns,
            c.send_ns,
            c.filter_ns,
            c.apply_ns,
            c.hop_ns,
            n.latency_us,
            n.jitter_us,
            n.bandwidth_gbps,
            self.queue_events,
            self.heartbeat_interval_us,
            self.heartbeat_timeout_us,
        )
    }
}

/// Bugs put in on purpose, so that tests can show that each oracle catches one. `trove sim`
/// never sets them; they are zero (off) by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Client links lose their FIFO order and delay each message by up to this much more:
    /// a session's events overtake each other (caught by the order oracle).
    pub reorder_client_links_us: u64,
    /// Every k-th event message between two nodes vanishes (caught as lost events).
    pub drop_node_event_every: u64,
    /// Every k-th event a client sends is delivered twice (caught as duplicated events).
    pub duplicate_client_event_every: u64,
    /// Injected into trove's real `ShardCore` (`core::shard::faults`), not into the model:
    /// every k-th write a core completes, it forgets to give one event of credit back to its
    /// shard's budget (caught by the credit oracle).
    pub leak_credit_every: u64,
    /// At this virtual time node 0's partitions move away and straight back (two newer
    /// placements handed to its cores), so its shards start them empty, as after a failover
    /// to replicas that missed every event, claims included (caught by the winner oracle).
    pub lose_node0_state_at_us: Option<u64>,
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub model: Model,
    pub strategy: Strategy,
    pub nodes: usize,
    pub seed: u64,
    pub faults: Faults,
}

impl RunConfig {
    /// The command that reproduces this run.
    pub fn command(&self) -> String {
        format!(
            "trove sim --nodes {} --strategy {} --seed {} {}",
            self.nodes,
            self.strategy,
            self.seed,
            self.model.flags()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_valid_up_to_128_nodes_for_every_strategy() {
        let model = Model::default();
        model.validate().unwrap();
        for strategy in Strategy::ALL {
            model.validate_cluster(128, strategy).unwrap();
        }
    }

    #[test]
    fn strategies_round_trip_through_their_names() {
        for strategy in Strategy::ALL {
            assert_eq!(Strategy::from_name(strategy.name()), Some(strategy));
        }
        assert_eq!(Strategy::from_name("gossip"), None);
    }

    #[test]
    fn bad_models_are_refused_with_the_flag_to_change() {
        let model = Model {
            hunts_per_node: 64,
            ..Model::default()
        };
        assert!(model.validate().unwrap_err().contains("--hunts-per-node"));
        let model = Model {
            partitions: 1000,
            ..Model::default()
        };
        assert!(model.validate().unwrap_err().contains("--partitions 1000"));
        let model = Model {
            queue_events: 0,
            ..Model::default()
        };
        assert!(model.validate().unwrap_err().contains("--queue-events"));
        let error = Model::default()
            .validate_cluster(SIM_NODES_MAX, Strategy::ShardAware)
            .unwrap_err();
        assert!(error.contains("raise --partitions"), "{error}");
        let error = Model::default()
            .validate_cluster(1000, Strategy::Forward)
            .unwrap_err();
        assert!(
            error.contains("node links") && error.contains("--shards"),
            "{error}"
        );
        let error = Model {
            partitions: PARTITIONS_MAX,
            shards: 16,
            ..Model::default()
        }
        .validate_cluster(SIM_NODES_MAX, Strategy::Broadcast)
        .unwrap_err();
        assert!(error.contains("messages"), "{error}");
        assert!(error.contains("lower --rate-per-node"), "{error}");
    }
}
