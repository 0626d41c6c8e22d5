//! The simulated clients: hunts, the player sessions that play them, and the events each
//! session sends.
//!
//! The workload depends only on the seed and the model, never on the strategy: every strategy
//! is given the same hunts, the same sessions and the same events at the same virtual times.
//! Each session draws from its own random stream, so how a strategy delays one session cannot
//! change what another one sends.
//!
//! A session belongs to one hunt. The first session of each hunt organises it (its first
//! event creates the hunt); every session joins, then checks in near waypoints (50%), claims
//! treasures with the right code or a wrong one (30%) and asks for the leaderboard (20%).
//! Sessions of a hunt race for its treasures, which is what the winner oracle checks.
//! Sessions are open-loop: the `k`-th event leaves at a uniformly random moment of the
//! session's `k`-th period, whatever became of the earlier ones.

use crate::constants::HUNTS_PER_PARTITION_MAX;
use crate::core::ids::{HuntId, PartitionId, PlayerId, TreasureId};
use crate::core::message::{
    Event, EventKind, HuntSpec, NO_SESSION, Position, TreasureSpec, WaypointSpec, claim_code_hash,
};
use crate::core::partition::Partitioner;
use crate::core::rng::Rng;
use crate::sim::config::Model;

/// Waypoints in every simulated hunt.
const WAYPOINTS_PER_HUNT: usize = 6;
/// Treasures in every simulated hunt.
const TREASURES_PER_HUNT: u32 = 3;
/// Random streams of one seed, so that no two parts of the model share one.
pub const STREAM_WORKLOAD: u64 = 1;
pub const STREAM_NETWORK: u64 = 2;
pub const STREAM_HEARTBEAT: u64 = 3;
const STREAM_SESSION_BASE: u64 = 1 << 32;

/// One hunt: its id, partition and content.
#[derive(Clone, Debug)]
pub struct Hunt {
    pub id: HuntId,
    pub partition: PartitionId,
    pub spec: HuntSpec,
}

/// One player session: which hunt it plays, which node it connects to and when it sends.
#[derive(Clone, Debug)]
pub struct Session {
    /// Index into [`Workload::hunts`].
    pub hunt: u32,
    pub player: PlayerId,
    /// True for the session that creates its hunt.
    pub organiser: bool,
    /// The node a client of the broadcast and forward strategies connects to.
    pub entry_node: u32,
    /// Start of the session's first period.
    pub start_ns: u64,
    /// The session's own random stream: its events and their timing.
    rng: Rng,
    /// Events sent so far; the next one's `client_seq`.
    sent: u64,
}

/// What a session sends next, and when.
pub struct NextEvent {
    pub event: Event,
    pub send_ns: u64,
}

/// All hunts and sessions of one run.
pub struct Workload {
    pub hunts: Vec<Hunt>,
    pub sessions: Vec<Session>,
    period_ns: u64,
}

impl Workload {
    /// The workload of an `nodes`-node cluster: `hunts_per_node` and `sessions_per_node` for
    /// each node. The model must have been validated for this cluster size.
    pub fn new(model: &Model, nodes: usize, seed: u64) -> Workload {
        let partitioner =
            Partitioner::new(model.partitions).expect("the model's partition count is valid");
        let mut rng = Rng::stream(seed, STREAM_WORKLOAD);
        let hunt_count = nodes * model.hunts_per_node;
        let hunts = draw_hunts(&mut rng, &partitioner, hunt_count);
        let period_ns = model.session_period_ns();
        let sessions = (0..nodes * model.sessions_per_node)
            .map(|index| {
                let organiser = index < hunt_count;
                Session {
                    hunt: (index % hunt_count) as u32,
                    player: PlayerId(index as u64 + 1),
                    organiser,
                    entry_node: rng.below(nodes as u64) as u32,
                    // Players start two periods late, so their hunt exists when they join.
                    start_ns: if organiser { 0 } else { 2 * period_ns },
                    rng: Rng::stream(seed, STREAM_SESSION_BASE + index as u64),
                    sent: 0,
                }
            })
            .collect();
        Workload {
            hunts,
            sessions,
            period_ns,
        }
    }

    /// The next event of `session` and its send time.
    pub fn next_event(&mut self, session: u32) -> NextEvent {
        let period_ns = self.period_ns;
        let state = &mut self.sessions[session as usize];
        let hunt = &self.hunts[state.hunt as usize];
        let seq = state.sent;
        state.sent += 1;
        let send_ns = state.start_ns + seq * period_ns + state.rng.below(period_ns);
        let script_step = if state.organiser { seq } else { seq + 1 };
        let kind = match script_step {
            0 => EventKind::CreateHunt(hunt.spec.clone()),
            1 => EventKind::Join,
            _ => play(&mut state.rng, hunt),
        };
        NextEvent {
            event: Event {
                hunt: hunt.id,
                player: state.player,
                // The engine numbers events its own way (`client_seq` is an index into its
                // log of sends), not per session: no de-duplication.
                client_session: NO_SESSION,
                client_seq: seq,
                client_ts: send_ns,
                kind,
            },
            send_ns,
        }
    }
}

/// Draws `count` distinct hunt ids, none in a partition that already holds half its table.
fn draw_hunts(rng: &mut Rng, partitioner: &Partitioner, count: usize) -> Vec<Hunt> {
    let mut per_partition = vec![0usize; partitioner.partitions() as usize];
    let mut hunts: Vec<Hunt> = Vec::with_capacity(count);
    while hunts.len() < count {
        let id = HuntId(rng.next_u64());
        let partition = partitioner.partition_of(id);
        let held = &mut per_partition[partition.index()];
        if *held >= HUNTS_PER_PARTITION_MAX / 2 || hunts.iter().any(|h| h.id == id) {
            continue;
        }
        *held += 1;
        hunts.push(Hunt {
            id,
            partition,
            spec: hunt_spec(rng, id),
        });
    }
    hunts
}

/// The secret code of a treasure; a session that plays fair presents this one.
pub fn treasure_code(hunt: HuntId, treasure: TreasureId) -> String {
    format!("{}-{}", hunt.0, treasure.0)
}

/// Waypoints scattered around a random city-sized centre, and a few treasures.
fn hunt_spec(rng: &mut Rng, id: HuntId) -> HuntSpec {
    let centre = Position {
        lat_e7: (rng.below(1_200_000_000) as i64 - 600_000_000) as i32,
        // In i64: the draw itself may pass i32::MAX (a debug build's overflow check caught it).
        lon_e7: (rng.below(3_400_000_000) as i64 - 1_700_000_000) as i32,
    };
    let waypoints = (0..WAYPOINTS_PER_HUNT)
        .map(|_| WaypointSpec {
            position: Position {
                lat_e7: centre.lat_e7 + rng.below(200_000) as i32 - 100_000,
                lon_e7: centre.lon_e7 + rng.below(200_000) as i32 - 100_000,
            },
            radius_m: 30 + rng.below(170) as u32,
            points: 10,
        })
        .collect();
    let treasures = (0..TREASURES_PER_HUNT)
        .map(|t| TreasureSpec {
            code_hash: claim_code_hash(treasure_code(id, TreasureId(t)).as_bytes()),
            points: 100,
        })
        .collect();
    HuntSpec {
        waypoints,
        treasures,
    }
}

/// One move of a player who has joined: a check-in, a claim or a leaderboard query.
fn play(rng: &mut Rng, hunt: &Hunt) -> EventKind {
    let roll = rng.below(100);
    if roll < 50 {
        let waypoint = &hunt.spec.waypoints[rng.below(WAYPOINTS_PER_HUNT as u64) as usize];
        // Up to one and a half radii north of the centre: most check-ins count, some miss.
        let metres = rng.below(u64::from(waypoint.radius_m) * 3 / 2 + 1) as f64;
        // A 1e-7 degree step of latitude is about 1.11 cm.
        let lat_e7 = waypoint.position.lat_e7 + (metres / 0.011_119_5) as i32;
        EventKind::CheckIn {
            position: Position {
                lat_e7,
                lon_e7: waypoint.position.lon_e7,
            },
        }
    } else if roll < 80 {
        let treasure = TreasureId(rng.below(u64::from(TREASURES_PER_HUNT)) as u32);
        let code = if rng.percent(50) {
            treasure_code(hunt.id, treasure)
        } else {
            "a wrong guess".to_owned()
        };
        EventKind::Claim { treasure, code }
    } else {
        EventKind::Leaderboard { top_k: 5 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(workload: &mut Workload, session: u32, count: usize) -> Vec<(Event, u64)> {
        (0..count)
            .map(|_| {
                let next = workload.next_event(session);
                (next.event, next.send_ns)
            })
            .collect()
    }

    #[test]
    fn the_workload_is_a_function_of_the_seed() {
        let model = Model::default();
        let mut a = Workload::new(&model, 4, 9);
        let mut b = Workload::new(&model, 4, 9);
        let mut c = Workload::new(&model, 4, 10);
        assert_eq!(events(&mut a, 5, 20), events(&mut b, 5, 20));
        assert_ne!(events(&mut a, 5, 20), events(&mut c, 5, 20));
    }

    #[test]
    fn organisers_create_then_join_and_players_join_first() {
        let model = Model::default();
        let mut workload = Workload::new(&model, 2, 1);
        let hunts = workload.hunts.len() as u32;
        let organiser = events(&mut workload, 0, 3);
        assert!(matches!(organiser[0].0.kind, EventKind::CreateHunt(_)));
        assert_eq!(organiser[1].0.kind, EventKind::Join);
        let player = events(&mut workload, hunts, 2);
        assert_eq!(player[0].0.kind, EventKind::Join);
        assert_eq!(player[0].0.hunt, organiser[0].0.hunt);
        // Players start after their organiser's first two events have left.
        assert!(player[0].1 > organiser[1].1);
    }

    #[test]
    fn sends_are_in_order_one_per_period() {
        let model = Model::default();
        let mut workload = Workload::new(&model, 1, 3);
        let period = model.session_period_ns();
        let sent = events(&mut workload, 7, 50);
        for (k, pair) in sent.windows(2).enumerate() {
            assert!(pair[0].1 < pair[1].1, "send {k} after send {}", k + 1);
            assert_eq!(pair[0].0.client_seq + 1, pair[1].0.client_seq);
        }
        let first = sent[0].1;
        let last = sent[49].1;
        assert!(last - first > 48 * period && last - first < 50 * period);
    }

    #[test]
    fn no_partition_gets_more_than_half_its_hunt_table() {
        let model = Model {
            partitions: 16,
            hunts_per_node: 32,
            ..Model::default()
        };
        let workload = Workload::new(&model, 4, 5);
        let mut counts = [0usize; 16];
        for hunt in &workload.hunts {
            counts[hunt.partition.index()] += 1;
        }
        assert_eq!(workload.hunts.len(), 128);
        assert!(counts.iter().all(|&c| c <= HUNTS_PER_PARTITION_MAX / 2));
    }
}
