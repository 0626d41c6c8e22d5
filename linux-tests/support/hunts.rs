//! A treasure-hunt world for oracle tests: hunts with waypoints and treasures, players joined
//! to each, random check-ins and claims, and the model that says what every answer must be.
//!
//! The model is the engine's own state machine (`PartitionState`), one per hunt (hunts share
//! nothing, so each can be modelled on its own), fed the same events in the same per-hunt
//! order as the node under test. A test that checks every answer against it, and each hunt's
//! leaderboard at the end, shows that every acknowledged event was applied exactly once and
//! in its hunt's order.

use std::collections::HashMap;

use trove::core::hunt::PartitionState;
use trove::core::ids::{HuntId, PartitionId, PlayerId, TreasureId};
use trove::core::message::{
    ArchivedEvent, Event, EventKind, HuntSpec, Outcome, Position, TreasureSpec, WaypointSpec,
    claim_code_hash,
};

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed from the environment variable `name` when set (to rerun a failure), else from the
/// clock; printed either way with how to rerun it.
pub fn seed_from_env(name: &str) -> u64 {
    let seed = std::env::var(name)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (rerun with {name}={seed})");
    seed
}

/// The shape of the world: hunts `first_hunt..first_hunt + hunts`, players `1..=players` in
/// each. A world that shares a node with other load (`trove bench`, whose hunts are numbered
/// from 1) starts its hunts far from theirs.
#[derive(Clone, Copy, Debug)]
pub struct World {
    pub first_hunt: u64,
    pub hunts: u64,
    pub players: u64,
    pub waypoints: u32,
    pub treasures: u32,
}

pub fn waypoint_position(w: u32) -> Position {
    Position {
        lat_e7: 400_000_000 + w as i32 * 1_000_000,
        lon_e7: 20_000_000,
    }
}

pub fn code(hunt: u64, treasure: u32) -> String {
    format!("hunt-{hunt}-treasure-{treasure}")
}

/// Event `seq` of `player` in `hunt`: sessions are the client's to stamp.
pub fn event(hunt: u64, player: u64, seq: u64, kind: EventKind) -> Event {
    Event {
        hunt: HuntId(hunt),
        player: PlayerId(player),
        client_session: 0,
        client_seq: seq,
        client_ts: 0,
        kind,
    }
}

/// A query of `hunt`'s top 16.
pub fn leaderboard(hunt: u64, seq: u64) -> Event {
    event(hunt, 0, seq, EventKind::Leaderboard { top_k: 16 })
}

impl World {
    pub fn spec(&self, hunt: u64) -> HuntSpec {
        HuntSpec {
            waypoints: (0..self.waypoints)
                .map(|w| WaypointSpec {
                    position: waypoint_position(w),
                    radius_m: 50,
                    points: 1 + w,
                })
                .collect(),
            treasures: (0..self.treasures)
                .map(|t| TreasureSpec {
                    code_hash: claim_code_hash(code(hunt, t).as_bytes()),
                    points: 100 * (t + 1),
                })
                .collect(),
        }
    }

    /// The world's hunt ids, in order.
    pub fn hunt_ids(&self) -> std::ops::Range<u64> {
        self.first_hunt..self.first_hunt + self.hunts
    }

    /// Every hunt created and every player joined, numbered on from `seq`.
    pub fn set_up_events(&self, seq: &mut u64) -> Vec<Event> {
        let mut events = Vec::new();
        for hunt in self.hunt_ids() {
            let mut push = |player, kind| {
                *seq += 1;
                events.push(event(hunt, player, *seq, kind));
            };
            push(0, EventKind::CreateHunt(self.spec(hunt)));
            for player in 1..=self.players {
                push(player, EventKind::Join);
            }
        }
        events
    }

    /// `count` check-ins at waypoints and claims with the right code (one in four), by random
    /// players of random hunts, numbered on from `seq`.
    pub fn load(&self, rng: &mut Rng, seq: &mut u64, count: usize) -> Vec<Event> {
        (0..count)
            .map(|_| {
                *seq += 1;
                let hunt = self.first_hunt + rng.below(self.hunts);
                let kind = if rng.below(4) == 0 {
                    let treasure = rng.below(u64::from(self.treasures)) as u32;
                    EventKind::Claim {
                        treasure: TreasureId(treasure),
                        code: code(hunt, treasure),
                    }
                } else {
                    EventKind::CheckIn {
                        position: waypoint_position(rng.below(u64::from(self.waypoints)) as u32),
                    }
                };
                event(hunt, 1 + rng.below(self.players), *seq, kind)
            })
            .collect()
    }

    /// Every hunt's leaderboard query, numbered on from `seq`.
    pub fn leaderboard_queries(&self, seq: &mut u64) -> Vec<Event> {
        self.hunt_ids()
            .map(|hunt| {
                *seq += 1;
                leaderboard(hunt, *seq)
            })
            .collect()
    }
}

/// The model: each hunt's state as the engine's own state machine computes it.
#[derive(Clone)]
pub struct Model {
    states: HashMap<u64, PartitionState>,
}

impl Model {
    pub fn new(world: &World) -> Model {
        let states = world
            .hunt_ids()
            .map(|hunt| (hunt, PartitionState::new(PartitionId(0))))
            .collect();
        Model { states }
    }

    /// Applies `event` to its hunt's state: the answer the engine must have given.
    pub fn apply(&mut self, event: &Event) -> Outcome {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        self.states.get_mut(&event.hunt.0).unwrap().apply(archived)
    }

    /// Takes `hunt`'s state from `other` (a candidate the test found the node agrees with).
    pub fn adopt_hunt(&mut self, hunt: u64, other: &Model) {
        self.states.insert(hunt, other.states[&hunt].clone());
    }
}
