//! The treasure-hunt state machine: one [`PartitionState`] per partition, pure and
//! deterministic.
//!
//! Events arrive already validated and are read in place (`&ArchivedEvent`); the outcome is a
//! plain value. The rules:
//! - the first valid claim of a treasure wins it; later claims with the right code get
//!   `AlreadyClaimed` with the winner; a wrong code is rejected;
//! - a check-in scores the first waypoint whose radius holds the position and that the player
//!   has not visited yet: once per player and waypoint;
//! - scores only grow, so a top-k leaderboard per hunt can be kept exactly and incrementally;
//! - events for unknown hunts or players are rejected with a reason, and a full table (hunts
//!   per partition, players per hunt) is a rejection too, never growth.
//!
//! A `PartitionState` lives on the shard that owns its partition and nowhere else.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::constants::{
    CLAIM_CODE_BYTES_MAX, HUNTS_PER_PARTITION_MAX, LEADERBOARD_TOP_K_MAX, PLAYERS_PER_HUNT_MAX,
    TREASURES_PER_HUNT_MAX, WAYPOINT_RADIUS_M_MAX, WAYPOINTS_PER_HUNT_MAX,
};
use crate::core::ids::{HuntId, PartitionId, PlayerId, TreasureId};
use crate::core::message::{
    ArchivedEvent, ArchivedEventKind, ArchivedHuntSpec, ArchivedPosition, LeaderboardEntry,
    Outcome, Position, RejectReason, claim_code_hash,
};

/// A hasher for ids chosen by clients: a folded 128-bit multiply mixes every input bit into
/// every output bit, so ids that differ only in high bits still spread over the table.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        const MULTIPLIER: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
        let product = u128::from(value ^ self.0.rotate_left(23)).wrapping_mul(MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

const EARTH_RADIUS_M: f64 = 6_371_000.0;

fn position_is_valid(position: Position) -> bool {
    (-900_000_000..=900_000_000).contains(&position.lat_e7)
        && (-1_800_000_000..=1_800_000_000).contains(&position.lon_e7)
}

fn native_position(position: &ArchivedPosition) -> Position {
    Position {
        lat_e7: position.lat_e7.to_native(),
        lon_e7: position.lon_e7.to_native(),
    }
}

fn lat_radians(position: Position) -> f64 {
    f64::from(position.lat_e7) * 1e-7_f64.to_radians()
}

/// Squared north-south distance in square metres: a lower bound of [`distance_m_squared`]
/// that needs no cosine.
fn latitude_gap_m_squared(a: Position, b: Position) -> f64 {
    let y = lat_radians(b) - lat_radians(a);
    y * y * EARTH_RADIUS_M * EARTH_RADIUS_M
}

/// Squared distance in square metres between two points, by the equirectangular
/// approximation: exact enough within a city, and cheap.
fn distance_m_squared(a: Position, b: Position) -> f64 {
    let mut dlon_e7 = i64::from(b.lon_e7) - i64::from(a.lon_e7);
    if dlon_e7 > 1_800_000_000 {
        dlon_e7 -= 3_600_000_000;
    } else if dlon_e7 < -1_800_000_000 {
        dlon_e7 += 3_600_000_000;
    }
    let mean_lat = (lat_radians(a) + lat_radians(b)) / 2.0;
    let x = dlon_e7 as f64 * 1e-7_f64.to_radians() * mean_lat.cos();
    let y = lat_radians(b) - lat_radians(a);
    (x * x + y * y) * EARTH_RADIUS_M * EARTH_RADIUS_M
}

/// True if `b` lies within `radius_m` of `a`. The latitude gap alone rules most waypoints out,
/// without a cosine; it never rules out one the full distance would accept, because
/// `x² + y² >= y²` survives rounding.
fn within(a: Position, b: Position, radius_m: u32) -> bool {
    let radius_squared = f64::from(radius_m) * f64::from(radius_m);
    latitude_gap_m_squared(a, b) <= radius_squared && distance_m_squared(a, b) <= radius_squared
}

#[derive(Clone, Copy, Debug)]
struct Waypoint {
    position: Position,
    radius_m: u32,
    points: u32,
}

#[derive(Clone, Copy, Debug)]
struct Treasure {
    code_hash: u64,
    points: u32,
    winner: Option<PlayerId>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Player {
    score: u32,
    /// Bit `i` is set once the player has checked in at waypoint `i`.
    visited: u64,
}

/// The best players of a hunt, best first: higher score first, then lower player id.
///
/// Exact because scores never decrease: a player outside the list ranks below its last
/// entry and can only enter it through its own score growing, which calls [`Self::raise`].
#[derive(Clone, Debug, Default)]
struct Leaderboard {
    entries: Vec<LeaderboardEntry>,
}

fn ranks_above(a: &LeaderboardEntry, b: &LeaderboardEntry) -> bool {
    (a.score, std::cmp::Reverse(a.player)) > (b.score, std::cmp::Reverse(b.player))
}

impl Leaderboard {
    /// Records that `player`'s score rose to `score`.
    fn raise(&mut self, player: PlayerId, score: u32) {
        let entry = LeaderboardEntry { player, score };
        let mut at = match self.entries.iter().position(|e| e.player == player) {
            Some(at) => {
                self.entries[at].score = score;
                at
            }
            None if self.entries.len() < LEADERBOARD_TOP_K_MAX => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
            None => {
                let last = self.entries.len() - 1;
                if !ranks_above(&entry, &self.entries[last]) {
                    return;
                }
                self.entries[last] = entry;
                last
            }
        };
        while at > 0 && ranks_above(&self.entries[at], &self.entries[at - 1]) {
            self.entries.swap(at, at - 1);
            at -= 1;
        }
    }

    fn top(&self, k: usize) -> Vec<LeaderboardEntry> {
        self.entries[..k.min(self.entries.len())].to_vec()
    }
}

#[derive(Clone, Debug)]
struct Hunt {
    organiser: PlayerId,
    waypoints: Vec<Waypoint>,
    treasures: Vec<Treasure>,
    players: IdMap<PlayerId, Player>,
    leaderboard: Leaderboard,
}

impl Hunt {
    fn from_spec(organiser: PlayerId, spec: &ArchivedHuntSpec) -> Result<Hunt, RejectReason> {
        if spec.waypoints.len() > WAYPOINTS_PER_HUNT_MAX
            || spec.treasures.len() > TREASURES_PER_HUNT_MAX
        {
            return Err(RejectReason::InvalidHuntSpec);
        }
        let waypoints = spec
            .waypoints
            .iter()
            .map(|w| Waypoint {
                position: native_position(&w.position),
                radius_m: w.radius_m.to_native(),
                points: w.points.to_native(),
            })
            .collect::<Vec<_>>();
        let spec_is_valid = waypoints
            .iter()
            .all(|w| position_is_valid(w.position) && w.radius_m <= WAYPOINT_RADIUS_M_MAX);
        if !spec_is_valid {
            return Err(RejectReason::InvalidHuntSpec);
        }
        let treasures = spec
            .treasures
            .iter()
            .map(|t| Treasure {
                code_hash: t.code_hash.to_native(),
                points: t.points.to_native(),
                winner: None,
            })
            .collect();
        Ok(Hunt {
            organiser,
            waypoints,
            treasures,
            players: IdMap::default(),
            leaderboard: Leaderboard::default(),
        })
    }

    fn join(&mut self, player: PlayerId) -> Outcome {
        if self.players.contains_key(&player) {
            return rejected(RejectReason::AlreadyJoined);
        }
        if self.players.len() >= PLAYERS_PER_HUNT_MAX {
            return rejected(RejectReason::PlayerTableFull);
        }
        self.players.insert(player, Player::default());
        Outcome::Accepted { score: 0 }
    }

    fn check_in(&mut self, player_id: PlayerId, position: Position) -> Outcome {
        if !position_is_valid(position) {
            return rejected(RejectReason::InvalidPosition);
        }
        let Some(player) = self.players.get_mut(&player_id) else {
            return rejected(RejectReason::UnknownPlayer);
        };
        let mut inside_any = false;
        for (index, waypoint) in self.waypoints.iter().enumerate() {
            if !within(waypoint.position, position, waypoint.radius_m) {
                continue;
            }
            inside_any = true;
            let bit = 1u64 << index;
            if player.visited & bit == 0 {
                player.visited |= bit;
                player.score = player.score.saturating_add(waypoint.points);
                let score = player.score;
                self.leaderboard.raise(player_id, score);
                return Outcome::Accepted { score };
            }
        }
        rejected(if inside_any {
            RejectReason::AlreadyCheckedIn
        } else {
            RejectReason::OutsideRadius
        })
    }

    fn claim(&mut self, player_id: PlayerId, treasure: TreasureId, code: &[u8]) -> Outcome {
        let Some(player) = self.players.get_mut(&player_id) else {
            return rejected(RejectReason::UnknownPlayer);
        };
        let Some(treasure) = self.treasures.get_mut(treasure.0 as usize) else {
            return rejected(RejectReason::UnknownTreasure);
        };
        if code.len() > CLAIM_CODE_BYTES_MAX {
            return rejected(RejectReason::CodeTooLong);
        }
        if claim_code_hash(code) != treasure.code_hash {
            return rejected(RejectReason::WrongCode);
        }
        if let Some(winner) = treasure.winner {
            return Outcome::AlreadyClaimed { winner };
        }
        treasure.winner = Some(player_id);
        player.score = player.score.saturating_add(treasure.points);
        let score = player.score;
        self.leaderboard.raise(player_id, score);
        Outcome::Claimed {
            points: treasure.points,
            score,
        }
    }
}

fn rejected(reason: RejectReason) -> Outcome {
    Outcome::Rejected { reason }
}

/// The hunts of one partition. Owned by one shard; never shared.
#[derive(Clone, Debug)]
pub struct PartitionState {
    partition: PartitionId,
    hunts: IdMap<HuntId, Hunt>,
}

impl PartitionState {
    pub fn new(partition: PartitionId) -> PartitionState {
        PartitionState {
            partition,
            hunts: IdMap::default(),
        }
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Applies one event and says what happened.
    pub fn apply(&mut self, event: &ArchivedEvent) -> Outcome {
        let hunt_id = event.hunt.get();
        let player = event.player.get();
        if let ArchivedEventKind::CreateHunt(spec) = &event.kind {
            return self.create_hunt(hunt_id, player, spec);
        }
        let Some(hunt) = self.hunts.get_mut(&hunt_id) else {
            return rejected(RejectReason::UnknownHunt);
        };
        match &event.kind {
            ArchivedEventKind::CreateHunt(_) => unreachable!("handled above"),
            ArchivedEventKind::Join => hunt.join(player),
            ArchivedEventKind::CheckIn { position } => {
                hunt.check_in(player, native_position(position))
            }
            ArchivedEventKind::Claim { treasure, code } => {
                hunt.claim(player, treasure.get(), code.as_bytes())
            }
            ArchivedEventKind::Leaderboard { top_k } => {
                let top_k = usize::from(top_k.to_native());
                if top_k == 0 || top_k > LEADERBOARD_TOP_K_MAX {
                    return rejected(RejectReason::InvalidTopK);
                }
                Outcome::Leaderboard {
                    entries: hunt.leaderboard.top(top_k),
                }
            }
        }
    }

    fn create_hunt(
        &mut self,
        hunt_id: HuntId,
        organiser: PlayerId,
        spec: &ArchivedHuntSpec,
    ) -> Outcome {
        if self.hunts.contains_key(&hunt_id) {
            return rejected(RejectReason::HuntExists);
        }
        if self.hunts.len() >= HUNTS_PER_PARTITION_MAX {
            return rejected(RejectReason::HuntTableFull);
        }
        match Hunt::from_spec(organiser, spec) {
            Ok(hunt) => {
                self.hunts.insert(hunt_id, hunt);
                Outcome::Accepted { score: 0 }
            }
            Err(reason) => rejected(reason),
        }
    }

    /// How many hunts the partition holds.
    pub fn hunts(&self) -> usize {
        self.hunts.len()
    }

    /// The organiser of `hunt`, if it exists.
    pub fn organiser_of(&self, hunt: HuntId) -> Option<PlayerId> {
        self.hunts.get(&hunt).map(|h| h.organiser)
    }

    /// A player's score in a hunt, if both exist.
    pub fn score_of(&self, hunt: HuntId, player: PlayerId) -> Option<u32> {
        self.hunts.get(&hunt)?.players.get(&player).map(|p| p.score)
    }

    /// Who won a treasure, if anyone has.
    pub fn winner_of(&self, hunt: HuntId, treasure: TreasureId) -> Option<PlayerId> {
        self.hunts
            .get(&hunt)?
            .treasures
            .get(treasure.0 as usize)?
            .winner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{Event, EventKind, HuntSpec, TreasureSpec, WaypointSpec};
    use proptest::prelude::*;

    const HUNT: HuntId = HuntId(1);
    const PARIS: Position = Position {
        lat_e7: 488_566_000,
        lon_e7: 23_522_000,
    };

    fn apply(state: &mut PartitionState, player: u64, kind: EventKind) -> Outcome {
        let event = Event {
            hunt: HUNT,
            player: PlayerId(player),
            client_seq: 0,
            client_ts: 0,
            kind,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        state.apply(archived)
    }

    fn spec(treasures: usize) -> HuntSpec {
        HuntSpec {
            waypoints: vec![
                WaypointSpec {
                    position: PARIS,
                    radius_m: 50,
                    points: 10,
                },
                WaypointSpec {
                    position: PARIS,
                    radius_m: 500,
                    points: 5,
                },
            ],
            treasures: (0..treasures)
                .map(|i| TreasureSpec {
                    code_hash: claim_code_hash(format!("code-{i}").as_bytes()),
                    points: 100,
                })
                .collect(),
        }
    }

    fn hunt_with_players(players: u64, treasures: usize) -> PartitionState {
        let mut state = PartitionState::new(PartitionId(0));
        assert_eq!(
            apply(&mut state, 0, EventKind::CreateHunt(spec(treasures))),
            Outcome::Accepted { score: 0 }
        );
        for player in 1..=players {
            assert_eq!(
                apply(&mut state, player, EventKind::Join),
                Outcome::Accepted { score: 0 }
            );
        }
        state
    }

    fn claim(treasure: u32, code: &str) -> EventKind {
        EventKind::Claim {
            treasure: TreasureId(treasure),
            code: code.to_owned(),
        }
    }

    fn check_in(north_m: i32) -> EventKind {
        // 1e-7 degree of latitude is about 1.11 cm.
        let lat_e7 = PARIS.lat_e7 + (f64::from(north_m) / 0.011_119_5) as i32;
        EventKind::CheckIn {
            position: Position {
                lat_e7,
                lon_e7: PARIS.lon_e7,
            },
        }
    }

    #[test]
    fn the_first_valid_claim_wins_and_later_ones_learn_the_winner() {
        let mut state = hunt_with_players(3, 1);
        assert_eq!(
            apply(&mut state, 1, claim(0, "wrong")),
            rejected(RejectReason::WrongCode)
        );
        assert_eq!(
            apply(&mut state, 2, claim(0, "code-0")),
            Outcome::Claimed {
                points: 100,
                score: 100
            }
        );
        assert_eq!(
            apply(&mut state, 3, claim(0, "code-0")),
            Outcome::AlreadyClaimed {
                winner: PlayerId(2)
            }
        );
        assert_eq!(
            apply(&mut state, 2, claim(0, "code-0")),
            Outcome::AlreadyClaimed {
                winner: PlayerId(2)
            }
        );
        assert_eq!(state.winner_of(HUNT, TreasureId(0)), Some(PlayerId(2)));
        assert_eq!(state.score_of(HUNT, PlayerId(3)), Some(0));
    }

    #[test]
    fn unknown_hunts_players_and_treasures_are_rejected() {
        let mut state = PartitionState::new(PartitionId(0));
        assert_eq!(
            apply(&mut state, 1, EventKind::Join),
            rejected(RejectReason::UnknownHunt)
        );
        let mut state = hunt_with_players(1, 1);
        assert_eq!(
            apply(&mut state, 9, claim(0, "code-0")),
            rejected(RejectReason::UnknownPlayer)
        );
        assert_eq!(
            apply(&mut state, 9, check_in(0)),
            rejected(RejectReason::UnknownPlayer)
        );
        assert_eq!(
            apply(&mut state, 1, claim(5, "code-0")),
            rejected(RejectReason::UnknownTreasure)
        );
        assert_eq!(
            apply(&mut state, 1, EventKind::Join),
            rejected(RejectReason::AlreadyJoined)
        );
        assert_eq!(
            apply(&mut state, 0, EventKind::CreateHunt(spec(1))),
            rejected(RejectReason::HuntExists)
        );
        assert_eq!(
            apply(
                &mut state,
                1,
                claim(0, &"x".repeat(CLAIM_CODE_BYTES_MAX + 1))
            ),
            rejected(RejectReason::CodeTooLong)
        );
    }

    #[test]
    fn a_check_in_counts_inside_the_radius_once_per_waypoint() {
        let mut state = hunt_with_players(1, 0);
        assert_eq!(
            apply(&mut state, 1, check_in(2_000)),
            rejected(RejectReason::OutsideRadius)
        );
        // 200 m north: inside only the 500 m waypoint.
        assert_eq!(
            apply(&mut state, 1, check_in(200)),
            Outcome::Accepted { score: 5 }
        );
        assert_eq!(
            apply(&mut state, 1, check_in(200)),
            rejected(RejectReason::AlreadyCheckedIn)
        );
        // 10 m north: inside both; the 500 m one is visited, so the 50 m one scores.
        assert_eq!(
            apply(&mut state, 1, check_in(10)),
            Outcome::Accepted { score: 15 }
        );
        assert_eq!(
            apply(&mut state, 1, check_in(0)),
            rejected(RejectReason::AlreadyCheckedIn)
        );
        let off_the_earth = EventKind::CheckIn {
            position: Position {
                lat_e7: 950_000_000,
                lon_e7: 0,
            },
        };
        assert_eq!(
            apply(&mut state, 1, off_the_earth),
            rejected(RejectReason::InvalidPosition)
        );
    }

    #[test]
    fn distances_wrap_around_the_antimeridian() {
        let west = Position {
            lat_e7: 0,
            lon_e7: -1_799_999_000,
        };
        let east = Position {
            lat_e7: 0,
            lon_e7: 1_799_999_000,
        };
        let metres = distance_m_squared(west, east).sqrt();
        assert!(
            (metres - 22.2).abs() < 1.0,
            "{metres} m across the antimeridian"
        );
    }

    #[test]
    fn tables_have_limits_that_reject() {
        let mut state = PartitionState::new(PartitionId(0));
        for hunt in 0..HUNTS_PER_PARTITION_MAX as u64 {
            let event = Event {
                hunt: HuntId(hunt),
                player: PlayerId(0),
                client_seq: 0,
                client_ts: 0,
                kind: EventKind::CreateHunt(spec(0)),
            };
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
            let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(state.apply(archived), Outcome::Accepted { score: 0 });
        }
        let event = Event {
            hunt: HuntId(9_999),
            player: PlayerId(0),
            client_seq: 0,
            client_ts: 0,
            kind: EventKind::CreateHunt(spec(0)),
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(state.apply(archived), rejected(RejectReason::HuntTableFull));

        let mut state = hunt_with_players(PLAYERS_PER_HUNT_MAX as u64, 0);
        assert_eq!(
            apply(&mut state, 1 << 40, EventKind::Join),
            rejected(RejectReason::PlayerTableFull)
        );

        let mut too_big = spec(0);
        too_big.waypoints = vec![too_big.waypoints[0]; WAYPOINTS_PER_HUNT_MAX + 1];
        let mut state = PartitionState::new(PartitionId(0));
        assert_eq!(
            apply(&mut state, 0, EventKind::CreateHunt(too_big)),
            rejected(RejectReason::InvalidHuntSpec)
        );
        let mut wide = spec(0);
        wide.waypoints[0].radius_m = WAYPOINT_RADIUS_M_MAX + 1;
        assert_eq!(
            apply(&mut state, 0, EventKind::CreateHunt(wide)),
            rejected(RejectReason::InvalidHuntSpec)
        );
    }

    #[test]
    fn the_leaderboard_ranks_by_score_then_player() {
        let mut state = hunt_with_players(3, 3);
        apply(&mut state, 3, claim(0, "code-0"));
        apply(&mut state, 1, claim(1, "code-1"));
        apply(&mut state, 1, check_in(0));
        assert_eq!(
            apply(&mut state, 7, EventKind::Leaderboard { top_k: 5 }),
            Outcome::Leaderboard {
                entries: vec![
                    LeaderboardEntry {
                        player: PlayerId(1),
                        score: 110
                    },
                    LeaderboardEntry {
                        player: PlayerId(3),
                        score: 100
                    },
                ]
            }
        );
        assert_eq!(
            apply(&mut state, 7, EventKind::Leaderboard { top_k: 0 }),
            rejected(RejectReason::InvalidTopK)
        );
        assert_eq!(
            apply(
                &mut state,
                7,
                EventKind::Leaderboard {
                    top_k: LEADERBOARD_TOP_K_MAX as u16 + 1
                }
            ),
            rejected(RejectReason::InvalidTopK)
        );
    }

    #[test]
    fn the_id_hasher_spreads_ids_that_differ_only_in_high_bits() {
        let hashes: std::collections::HashSet<u64> = (0..1024u64)
            .map(|i| {
                let mut hasher = IdHasher::default();
                hasher.write_u64(i << 52);
                hasher.finish() & 1023
            })
            .collect();
        assert!(hashes.len() > 500, "only {} distinct buckets", hashes.len());
    }

    proptest! {
        #[test]
        fn exactly_one_player_wins_each_treasure(
            claims in prop::collection::vec((1u64..=8, 0u32..4, any::<bool>()), 1..200),
        ) {
            let mut state = hunt_with_players(8, 4);
            let mut first_winner: [Option<PlayerId>; 4] = [None; 4];
            for (player, treasure, right_code) in claims {
                let code = if right_code { format!("code-{treasure}") } else { "nope".to_owned() };
                let outcome = apply(&mut state, player, claim(treasure, &code));
                match outcome {
                    Outcome::Claimed { .. } => {
                        prop_assert!(right_code);
                        prop_assert!(first_winner[treasure as usize].is_none(), "a second winner");
                        first_winner[treasure as usize] = Some(PlayerId(player));
                    }
                    Outcome::AlreadyClaimed { winner } => {
                        prop_assert!(right_code);
                        prop_assert_eq!(Some(winner), first_winner[treasure as usize]);
                    }
                    Outcome::Rejected { reason: RejectReason::WrongCode } => prop_assert!(!right_code),
                    other => prop_assert!(false, "unexpected outcome {:?}", other),
                }
            }
            for treasure in 0..4u32 {
                prop_assert_eq!(state.winner_of(HUNT, TreasureId(treasure)), first_winner[treasure as usize]);
            }
        }

        #[test]
        fn the_latitude_shortcut_never_changes_a_check_in(
            lat in -900_000_000i32..=900_000_000, lon in -1_800_000_000i32..=1_800_000_000,
            dlat in -2_000_000i32..2_000_000, dlon in -2_000_000i32..2_000_000, radius in 0u32..=WAYPOINT_RADIUS_M_MAX,
        ) {
            let a = Position { lat_e7: lat, lon_e7: lon };
            let b = Position { lat_e7: (lat + dlat).clamp(-900_000_000, 900_000_000), lon_e7: (lon + dlon).clamp(-1_800_000_000, 1_800_000_000) };
            let full = distance_m_squared(a, b) <= f64::from(radius) * f64::from(radius);
            prop_assert_eq!(within(a, b, radius), full);
        }

        #[test]
        fn the_incremental_leaderboard_equals_a_full_sort(
            raises in prop::collection::vec((0u64..40, 1u32..50), 0..300),
        ) {
            let mut board = Leaderboard::default();
            let mut scores: HashMap<u64, u32> = HashMap::new();
            for (player, gain) in raises {
                let score = scores.entry(player).or_default();
                *score += gain;
                board.raise(PlayerId(player), *score);
            }
            let mut all: Vec<LeaderboardEntry> =
                scores.iter().map(|(p, s)| LeaderboardEntry { player: PlayerId(*p), score: *s }).collect();
            all.sort_by(|a, b| b.score.cmp(&a.score).then(a.player.cmp(&b.player)));
            all.truncate(LEADERBOARD_TOP_K_MAX);
            prop_assert_eq!(board.entries, all);
        }
    }
}
