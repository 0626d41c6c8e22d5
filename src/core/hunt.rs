//! The treasure-hunt state machine: one [`PartitionState`] per partition, pure and
//! deterministic.
//!
//! Events arrive already validated and are read in place (`&ArchivedEvent`); the outcome is a
//! plain value. The rules:
//! - the first valid claim of a treasure wins it; later claims with the right code get
//!   `AlreadyClaimed` with the winner; a wrong code is rejected, and after
//!   `CLAIM_WRONG_CODES_MAX` wrong codes for one treasure a player's claims of it are refused
//!   with `TooManyAttempts`, right code or not, so codes cannot be guessed by brute force;
//! - a check-in scores the first waypoint whose radius holds the position and that the player
//!   has not visited yet: once per player and waypoint;
//! - scores only grow, so a top-k leaderboard per hunt can be kept exactly and incrementally;
//! - only a hunt's organiser may end it (`EndHunt`), which frees its slot in the partition;
//! - events for unknown hunts or players are rejected with a reason, and a full table (hunts
//!   per partition, players per hunt) is a rejection too, never growth;
//! - a retry of an event of a client session that the partition applied before is answered
//!   `Duplicate` with its original outcome class and not applied twice
//!   (`core::partition_sessions`).
//!
//! The layout is built for a shard that applies millions of events a second to more state
//! than its caches hold, where the cost of an event is the cache lines it misses:
//! - a partition keeps its hunts in `HUNTS_PER_PARTITION_MAX` inline slots, each id beside its
//!   pointer, found by a scan of the occupied slots (no hash table, one cache line for the
//!   hunts of a typical partition);
//! - a hunt keeps its players in one flat open-addressing table of [`PlayerEntry`] (id, score,
//!   visited waypoints: everything a check-in or a claim touches), so finding a player costs
//!   one probe sequence in one array, usually one cache line; what only a wrong claim needs
//!   (its attempt counters) lives apart, by the slot each player was given at `Join`, and is
//!   read only for a player whose entry says it has presented a wrong code;
//! - a hunt's waypoint bands are sorted by latitude, so a check-in reads only the bands near
//!   its latitude (a binary search) instead of every waypoint's;
//! - each waypoint carries bounds of the cosine its distance needs, so a check-in decides
//!   without calling `cos` except within a hair of the radius, with the same answer;
//! - the score that enters a hunt's full leaderboard sits in the hunt's first line, so most
//!   score changes never read the leaderboard.
//!
//! A `PartitionState` lives on the shard that owns its partition and nowhere else.

#[cfg(test)]
use std::collections::HashMap;
use std::hash::Hasher;

use crate::constants::{
    CLAIM_CODE_BYTES_MAX, CLAIM_WRONG_CODES_MAX, HUNT_BYTES_MAX, HUNT_SLOT_BYTES,
    HUNTS_PER_PARTITION_MAX, LATITUDE_BAND_BYTES, LEADERBOARD_ENTRY_BYTES, LEADERBOARD_TOP_K_MAX,
    PARTITION_SLOT_BYTES_MAX, PLAYER_ENTRY_BYTES, PLAYER_TABLE_ENTRIES_MAX,
    PLAYER_TABLE_ENTRIES_MIN, PLAYERS_PER_HUNT_MAX, TREASURE_BYTES, TREASURES_PER_HUNT_MAX,
    WAYPOINT_BYTES, WAYPOINT_RADIUS_M_MAX, WAYPOINTS_PER_HUNT_MAX, WRONG_CODES_REF_BYTES,
};
use crate::core::ids::{HuntId, PartitionId, PlayerId, TreasureId};
use crate::core::message::{
    ArchivedEvent, ArchivedEventKind, ArchivedHuntSpec, ArchivedPosition, LeaderboardEntry,
    NO_SESSION, Outcome, Position, RejectReason, claim_code_hash,
};
use crate::core::partition_sessions::SessionTable;
use crate::core::snapshot::{
    HuntSnapshot, PartitionSnapshot, PlayerSnapshot, RankSnapshot, SnapshotError, TreasureSnapshot,
    WaypointSnapshot,
};

/// A hasher for ids chosen by clients: a folded 128-bit multiply mixes every input bit into
/// every output bit, so ids that differ only in high bits still spread over the table.
#[derive(Default)]
pub struct IdHasher(u64);

impl IdHasher {
    /// The hash of one id, as `write_u64` then `finish` on a new hasher give it.
    #[inline]
    pub fn hash_id(id: u64) -> u64 {
        let mut hasher = IdHasher::default();
        hasher.write_u64(id);
        hasher.finish()
    }
}

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

    #[inline]
    fn write_u64(&mut self, value: u64) {
        const MULTIPLIER: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
        let product = u128::from(value ^ self.0.rotate_left(23)).wrapping_mul(MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

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

/// East-west difference from `a` to `b` in radians of longitude, the short way round.
fn longitude_gap_radians(a: Position, b: Position) -> f64 {
    let mut dlon_e7 = i64::from(b.lon_e7) - i64::from(a.lon_e7);
    if dlon_e7 > 1_800_000_000 {
        dlon_e7 -= 3_600_000_000;
    } else if dlon_e7 < -1_800_000_000 {
        dlon_e7 += 3_600_000_000;
    }
    dlon_e7 as f64 * 1e-7_f64.to_radians()
}

/// Squared distance in square metres between two points, by the equirectangular
/// approximation: exact enough within a city, and cheap.
fn distance_m_squared(a: Position, b: Position) -> f64 {
    let mean_lat = (lat_radians(a) + lat_radians(b)) / 2.0;
    let x = longitude_gap_radians(a, b) * mean_lat.cos();
    let y = lat_radians(b) - lat_radians(a);
    (x * x + y * y) * EARTH_RADIUS_M * EARTH_RADIUS_M
}

/// True if `b` lies within `radius_m` of `a`. The latitude gap alone rules most waypoints out,
/// without a cosine; it never rules out one the full distance would accept, because
/// `x² + y² >= y²` survives rounding. The reference [`Waypoint::holds`] is tested against.
#[cfg(test)]
fn within(a: Position, b: Position, radius_m: u32) -> bool {
    let radius_squared = f64::from(radius_m) * f64::from(radius_m);
    latitude_gap_m_squared(a, b) <= radius_squared && distance_m_squared(a, b) <= radius_squared
}

/// The band of a waypoint, in the units positions come in: a check-in farther north or south
/// than [`Self::gap_e7`] from `lat_e7`, or farther east or west than `lon_gap_e7` from
/// `lon_e7`, is outside the radius for sure. Sixteen bytes; a hunt keeps its bands sorted by
/// latitude ([`sorted_bands`]), so a check-in reads only the bands near its own latitude, and
/// of their waypoints only those its longitude is near.
#[derive(Clone, Copy, Debug)]
struct LatitudeBand {
    lat_e7: i32,
    lon_e7: i32,
    /// Longitude either way within which the radius may hold a position, from the waypoint's
    /// smallest cosine bound (`u32::MAX`, no limit, where that bound is 0, at a pole).
    lon_gap_e7: u32,
    /// The half-width in units of `BAND_GAP_UNIT_E7`, rounded up: coarser than the radius
    /// needs, which only lets a few more positions through to the exact test.
    gap_units: u16,
    /// The waypoint's index in the hunt's spec: its bit in a player's visits.
    waypoint: u8,
}

/// The unit of a band's half-width, in 1e-7 degree (about 2.8 m): the widest radius fits 16
/// bits of it.
const BAND_GAP_UNIT_E7: i64 = 256;
const _: () = assert!(
    (WAYPOINT_RADIUS_M_MAX as i64 * 10_000_000 / 111_000 + 2) / BAND_GAP_UNIT_E7 < u16::MAX as i64,
    "the widest band's half-width fits its field"
);

impl LatitudeBand {
    fn new(waypoint: &Waypoint) -> LatitudeBand {
        // One unit of 1e-7 degree more than the radius: the float test in `Waypoint::holds`
        // decides the positions this lets through, so the band only has to be wide enough.
        let radius_e7 = f64::from(waypoint.radius_m) / EARTH_RADIUS_M / 1e-7_f64.to_radians();
        let gap_e7 = radius_e7.ceil() as i64 + 1;
        // `Waypoint::holds` accepts only if |Δlon|·cos_min <= radius (in radians of the
        // earth): the longitude gap is that bound, widened by far more than rounding can move
        // it. A bound of 0 (at a pole) leaves longitude unlimited; a larger gap than a u32
        // holds saturates to the same.
        let lon_gap_e7 = if waypoint.cos_mean_lat_min > 0.0 {
            (radius_e7 / waypoint.cos_mean_lat_min * (1.0 + 1e-9) + 2.0).ceil() as u32
        } else {
            u32::MAX
        };
        LatitudeBand {
            lat_e7: waypoint.position.lat_e7,
            lon_e7: waypoint.position.lon_e7,
            lon_gap_e7,
            gap_units: (gap_e7 as u64).div_ceil(BAND_GAP_UNIT_E7 as u64) as u16,
            waypoint: 0,
        }
    }

    fn gap_e7(&self) -> i64 {
        i64::from(self.gap_units) * BAND_GAP_UNIT_E7
    }

    #[inline]
    fn may_hold(&self, at: Position) -> bool {
        // The short way round is the smaller of the two ways: `longitude_gap_e7`'s wrap
        // without its branches.
        let dlon_e7 = (i64::from(at.lon_e7) - i64::from(self.lon_e7)).abs();
        (i64::from(at.lat_e7) - i64::from(self.lat_e7)).abs() <= self.gap_e7()
            && dlon_e7.min(3_600_000_000 - dlon_e7) <= i64::from(self.lon_gap_e7)
    }
}

/// A hunt's waypoint bands sorted by latitude, each naming its waypoint, and the widest
/// band's half-width: a check-in finds the few bands that may hold it by a binary search
/// instead of scanning every waypoint's (64 of them are eight cache lines).
fn sorted_bands(waypoints: &[Waypoint]) -> (Box<[LatitudeBand]>, i32) {
    let mut bands: Vec<LatitudeBand> = waypoints
        .iter()
        .enumerate()
        .map(|(index, waypoint)| LatitudeBand {
            waypoint: index as u8,
            ..LatitudeBand::new(waypoint)
        })
        .collect();
    bands.sort_by_key(|band| band.lat_e7);
    let widest_gap_e7 = bands.iter().map(LatitudeBand::gap_e7).max().unwrap_or(0);
    (bands.into(), widest_gap_e7 as i32)
}

/// The waypoints whose radius holds `at`, as a bit set of their indices, from the bands
/// `sorted_bands` made of `waypoints`: no band that may hold `at` lies farther than the
/// widest half-width from it.
#[inline]
fn waypoints_holding(
    bands: &[LatitudeBand],
    waypoints: &[Waypoint],
    widest_gap_e7: i32,
    at: Position,
) -> u64 {
    let lat = i64::from(at.lat_e7);
    let widest = i64::from(widest_gap_e7);
    let first = bands.partition_point(|band| i64::from(band.lat_e7) < lat - widest);
    let mut holding = 0u64;
    for band in &bands[first..] {
        if i64::from(band.lat_e7) > lat + widest {
            break;
        }
        let index = usize::from(band.waypoint);
        if band.may_hold(at) && waypoints[index].holds(at) {
            holding |= 1 << index;
        }
    }
    holding
}

/// A waypoint, with bounds of the cosine a check-in near it needs. Aligned to its size, so
/// that reading one never spans two cache lines.
#[derive(Clone, Copy, Debug)]
#[repr(align(32))]
struct Waypoint {
    position: Position,
    radius_m: u32,
    points: u32,
    /// Bounds of `cos` of the mean latitude of the centre and any position that passes the
    /// latitude test (within the radius north or south), widened so that rounding in either
    /// cosine cannot cross them.
    cos_mean_lat_min: f64,
    cos_mean_lat_max: f64,
}

impl Waypoint {
    fn new(position: Position, radius_m: u32, points: u32) -> Waypoint {
        // The mean latitude of the centre and a point at most `radius_m` north or south of it
        // lies within half the radius of the centre, on the earth (|lat| <= 90°).
        const SLACK_RADIANS: f64 = 1e-9;
        const COS_SLACK: f64 = 1e-9;
        let centre = lat_radians(position);
        let half_radius = f64::from(radius_m) / EARTH_RADIUS_M / 2.0 + SLACK_RADIANS;
        let quarter_turn = std::f64::consts::FRAC_PI_2;
        let low = (centre - half_radius).max(-quarter_turn);
        let high = (centre + half_radius).min(quarter_turn);
        // cos is even and falls with |lat| on [0, π/2].
        let farthest = low.abs().max(high.abs());
        let nearest = if low <= 0.0 && 0.0 <= high {
            0.0
        } else {
            low.abs().min(high.abs())
        };
        Waypoint {
            position,
            radius_m,
            points,
            cos_mean_lat_min: (farthest.cos() - COS_SLACK).max(0.0),
            cos_mean_lat_max: nearest.cos() + COS_SLACK,
        }
    }

    /// Exactly `within(self.position, at, self.radius_m)`, mostly without a cosine: the
    /// distance computed with each cosine bound brackets the one `distance_m_squared` computes
    /// (the same operations on a smaller or larger factor), so only a position whose bracket
    /// straddles the radius needs the exact distance.
    #[inline]
    fn holds(&self, at: Position) -> bool {
        let radius_squared = f64::from(self.radius_m) * f64::from(self.radius_m);
        if latitude_gap_m_squared(self.position, at) > radius_squared {
            return false;
        }
        let x = longitude_gap_radians(self.position, at);
        let y = lat_radians(at) - lat_radians(self.position);
        let scaled = |cos: f64| {
            let x = x * cos;
            (x * x + y * y) * EARTH_RADIUS_M * EARTH_RADIUS_M
        };
        if scaled(self.cos_mean_lat_min) > radius_squared {
            return false;
        }
        if scaled(self.cos_mean_lat_max) <= radius_squared {
            return true;
        }
        distance_m_squared(self.position, at) <= radius_squared
    }
}

#[derive(Clone, Copy, Debug)]
struct Treasure {
    code_hash: u64,
    /// The player who won it, once `won` is set (a bool beside it keeps the entry at 24
    /// bytes; an `Option<PlayerId>` would take 16).
    winner: PlayerId,
    points: u32,
    won: bool,
}

impl Treasure {
    fn winner(&self) -> Option<PlayerId> {
        self.won.then_some(self.winner)
    }
}

/// What a check-in or a claim reads and writes of a player, in one entry of the hunt's player
/// table (24 bytes: a probe usually stays in one cache line).
#[derive(Clone, Copy, Debug)]
struct PlayerEntry {
    id: PlayerId,
    /// Bit `i` is set once the player has checked in at waypoint `i`.
    visited: u64,
    score: u32,
    /// Order of joining, from 0; indexes the hunt's cold per-player data. `EMPTY_SLOT` marks an
    /// unused entry.
    slot: u16,
    /// Set at the player's first wrong code: a claim reads the player's cold attempt counters
    /// only then, so the claims of players who never guessed touch no cold line.
    has_wrong_codes: bool,
}

const EMPTY_SLOT: u16 = u16::MAX;
const _: () = assert!(
    PLAYERS_PER_HUNT_MAX < EMPTY_SLOT as usize,
    "slots fit beside the marker"
);

// The memory sum in `constants` counts these sizes.
const _: () = assert!(size_of::<PlayerEntry>() <= PLAYER_ENTRY_BYTES);
const _: () = assert!(size_of::<Waypoint>() <= WAYPOINT_BYTES);
const _: () = assert!(size_of::<Treasure>() <= TREASURE_BYTES);
const _: () = assert!(size_of::<LatitudeBand>() <= LATITUDE_BAND_BYTES);
const _: () = assert!(size_of::<LeaderboardEntry>() <= LEADERBOARD_ENTRY_BYTES);
const _: () = assert!(size_of::<WrongCodes>() <= WRONG_CODES_REF_BYTES);
const _: () = assert!(
    std::mem::offset_of!(Hunt, leaderboard_floor) + size_of::<u32>() <= 64,
    "the hot fields share a line"
);
// A boxed hunt may lose up to its alignment to reach it.
const _: () = assert!(size_of::<Hunt>() + align_of::<Hunt>() <= HUNT_BYTES_MAX);
const _: () = assert!(size_of::<HuntSlot>() <= HUNT_SLOT_BYTES);
const _: () = assert!(size_of::<Option<PartitionState>>() <= PARTITION_SLOT_BYTES_MAX);

const EMPTY_ENTRY: PlayerEntry = PlayerEntry {
    id: PlayerId(0),
    visited: 0,
    score: 0,
    slot: EMPTY_SLOT,
    has_wrong_codes: false,
};

/// A hunt's players: open addressing with linear probing in a power-of-two array that is at
/// most half full, doubling as players join, up to `PLAYER_TABLE_ENTRIES_MAX` entries. Players
/// never leave a hunt, so there are no tombstones.
#[derive(Clone, Debug)]
struct PlayerTable {
    entries: Box<[PlayerEntry]>,
    players: u32,
}

impl PlayerTable {
    fn new() -> PlayerTable {
        PlayerTable {
            entries: vec![EMPTY_ENTRY; PLAYER_TABLE_ENTRIES_MIN].into_boxed_slice(),
            players: 0,
        }
    }

    fn len(&self) -> usize {
        self.players as usize
    }

    /// The entry `id` has or would take.
    #[inline]
    fn probe(entries: &[PlayerEntry], id: PlayerId) -> usize {
        let mask = entries.len() - 1;
        let mut at = IdHasher::hash_id(id.0) as usize & mask;
        // The table is at most half full, so the probe ends at an empty entry.
        while entries[at].slot != EMPTY_SLOT && entries[at].id != id {
            at = (at + 1) & mask;
        }
        at
    }

    #[inline]
    fn get(&self, id: PlayerId) -> Option<&PlayerEntry> {
        let entry = &self.entries[Self::probe(&self.entries, id)];
        (entry.slot != EMPTY_SLOT).then_some(entry)
    }

    #[inline]
    fn get_mut(&mut self, id: PlayerId) -> Option<&mut PlayerEntry> {
        let entry = &mut self.entries[Self::probe(&self.entries, id)];
        (entry.slot != EMPTY_SLOT).then_some(entry)
    }

    /// Adds a player who is not in the table and gives it the next slot. The caller keeps the
    /// count under `PLAYERS_PER_HUNT_MAX`.
    fn insert(&mut self, id: PlayerId) -> u16 {
        debug_assert!(self.len() < PLAYERS_PER_HUNT_MAX && self.get(id).is_none());
        if 2 * (self.len() + 1) > self.entries.len() {
            self.grow();
        }
        let slot = self.players as u16;
        let at = Self::probe(&self.entries, id);
        self.entries[at] = PlayerEntry {
            id,
            slot,
            ..EMPTY_ENTRY
        };
        self.players += 1;
        slot
    }

    fn grow(&mut self) {
        let capacity = 2 * self.entries.len();
        assert!(
            capacity <= PLAYER_TABLE_ENTRIES_MAX,
            "a player table grows past its limit"
        );
        let mut entries = vec![EMPTY_ENTRY; capacity].into_boxed_slice();
        for entry in self.entries.iter().filter(|e| e.slot != EMPTY_SLOT) {
            let at = Self::probe(&entries, entry.id);
            entries[at] = *entry;
        }
        self.entries = entries;
    }
}

/// The best players of a hunt, best first: higher score first, then lower player id.
///
/// Exact because scores never decrease: a player outside the list ranks below its last
/// entry and can only enter it through its own score growing, which calls [`Self::raise`].
#[derive(Clone, Debug, Default)]
struct Leaderboard {
    entries: Vec<LeaderboardEntry>,
    /// The last entry once the list is full: a copy kept beside the hunt's other fields, so
    /// that a score too low to enter (most of them, in a hunt of many players) is turned away
    /// without reading the list.
    cutoff: Option<LeaderboardEntry>,
}

fn ranks_above(a: &LeaderboardEntry, b: &LeaderboardEntry) -> bool {
    (a.score, std::cmp::Reverse(a.player)) > (b.score, std::cmp::Reverse(b.player))
}

impl Leaderboard {
    /// Records that `player`'s score rose to `score`.
    fn raise(&mut self, player: PlayerId, score: u32) {
        let entry = LeaderboardEntry { player, score };
        // A listed player's old score ranks at or above the cutoff and the new one is higher,
        // so an entry that does not rank above the cutoff is not listed and cannot enter.
        if let Some(cutoff) = &self.cutoff {
            if !ranks_above(&entry, cutoff) {
                return;
            }
        }
        self.enter(entry);
        if self.entries.len() == LEADERBOARD_TOP_K_MAX {
            self.cutoff = self.entries.last().copied();
        }
    }

    fn enter(&mut self, entry: LeaderboardEntry) {
        let player = entry.player;
        let score = entry.score;
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

/// Wrong codes a player presented, per treasure of the hunt; allocated at a player's first
/// wrong code, since most players never present one.
type WrongCodes = Option<Box<[u8]>>;

/// The wrong-code counters of a hunt's players, indexed by slot: one reference per player who
/// joined, read only for a player whose entry says it has presented a wrong code.
#[derive(Clone, Debug, Default)]
struct WrongCodeTable {
    by_slot: Vec<WrongCodes>,
}

impl WrongCodeTable {
    /// Makes room for the player who just joined, in the next slot.
    fn joined(&mut self) {
        self.by_slot.push(None);
    }

    /// How many wrong codes the player of `slot` presented for treasure `treasure`.
    fn count(&self, slot: u16, treasure: usize) -> u8 {
        self.by_slot[usize::from(slot)]
            .as_ref()
            .map_or(0, |counts| counts[treasure])
    }

    /// Counts one more wrong code of `slot`'s player for `treasure`, of `treasures`.
    fn add(&mut self, slot: u16, treasure: usize, treasures: usize) {
        let counts =
            self.by_slot[usize::from(slot)].get_or_insert_with(|| vec![0; treasures].into());
        counts[treasure] += 1;
    }
}

/// One hunt. What every event touches comes first, in the first cache line of a hunt aligned
/// to one: the player table (24 bytes), the waypoints and their bands (36), and the score a
/// player must reach to enter the leaderboard (4).
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Hunt {
    players: PlayerTable,
    /// The waypoints' latitude bands, sorted by latitude (`sorted_bands`).
    bands: Box<[LatitudeBand]>,
    /// In the spec's order.
    waypoints: Box<[Waypoint]>,
    /// The widest band's half-width, in 1e-7 degree.
    widest_gap_e7: i32,
    /// The score of the leaderboard's last entry once the list is full (0 before): a lower
    /// score cannot enter, and is turned away without reading the leaderboard's lines.
    leaderboard_floor: u32,
    treasures: Box<[Treasure]>,
    leaderboard: Leaderboard,
    organiser: PlayerId,
    wrong_codes: WrongCodeTable,
}

impl Hunt {
    fn from_spec(organiser: PlayerId, spec: &ArchivedHuntSpec) -> Result<Hunt, RejectReason> {
        if spec.waypoints.len() > WAYPOINTS_PER_HUNT_MAX
            || spec.treasures.len() > TREASURES_PER_HUNT_MAX
        {
            return Err(RejectReason::InvalidHuntSpec);
        }
        let spec_is_valid = spec.waypoints.iter().all(|w| {
            position_is_valid(native_position(&w.position))
                && w.radius_m.to_native() <= WAYPOINT_RADIUS_M_MAX
        });
        if !spec_is_valid {
            return Err(RejectReason::InvalidHuntSpec);
        }
        let waypoints: Box<[Waypoint]> = spec
            .waypoints
            .iter()
            .map(|w| {
                Waypoint::new(
                    native_position(&w.position),
                    w.radius_m.to_native(),
                    w.points.to_native(),
                )
            })
            .collect();
        let (bands, widest_gap_e7) = sorted_bands(&waypoints);
        let treasures = spec
            .treasures
            .iter()
            .map(|t| Treasure {
                code_hash: t.code_hash.to_native(),
                winner: PlayerId(0),
                points: t.points.to_native(),
                won: false,
            })
            .collect();
        Ok(Hunt {
            players: PlayerTable::new(),
            bands,
            waypoints,
            widest_gap_e7,
            leaderboard_floor: 0,
            treasures,
            leaderboard: Leaderboard::default(),
            organiser,
            wrong_codes: WrongCodeTable::default(),
        })
    }

    fn join(&mut self, player: PlayerId) -> Outcome {
        if self.players.get(player).is_some() {
            return rejected(RejectReason::AlreadyJoined);
        }
        if self.players.len() >= PLAYERS_PER_HUNT_MAX {
            return rejected(RejectReason::PlayerTableFull);
        }
        let slot = self.players.insert(player);
        self.wrong_codes.joined();
        debug_assert_eq!(usize::from(slot) + 1, self.wrong_codes.by_slot.len());
        Outcome::Accepted { score: 0 }
    }

    fn check_in(&mut self, player_id: PlayerId, position: Position) -> Outcome {
        if !position_is_valid(position) {
            return rejected(RejectReason::InvalidPosition);
        }
        let Some(player) = self.players.get_mut(player_id) else {
            return rejected(RejectReason::UnknownPlayer);
        };
        // The first waypoint, in the spec's order, that holds the position and that the
        // player has not visited scores.
        let holding = waypoints_holding(&self.bands, &self.waypoints, self.widest_gap_e7, position);
        if holding == 0 {
            return rejected(RejectReason::OutsideRadius);
        }
        let fresh = holding & !player.visited;
        if fresh == 0 {
            return rejected(RejectReason::AlreadyCheckedIn);
        }
        let index = fresh.trailing_zeros();
        player.visited |= 1 << index;
        player.score = player
            .score
            .saturating_add(self.waypoints[index as usize].points);
        let score = player.score;
        self.raise(player_id, score);
        Outcome::Accepted { score }
    }

    /// Records that `player`'s score rose to `score`, reading the leaderboard only for a score
    /// that may enter it.
    fn raise(&mut self, player: PlayerId, score: u32) {
        if score < self.leaderboard_floor {
            return;
        }
        self.leaderboard.raise(player, score);
        self.leaderboard_floor = self.leaderboard.cutoff.map_or(0, |cutoff| cutoff.score);
    }

    fn claim(&mut self, player_id: PlayerId, treasure_id: TreasureId, code: &[u8]) -> Outcome {
        let Some(player) = self.players.get_mut(player_id) else {
            return rejected(RejectReason::UnknownPlayer);
        };
        let treasure_index = treasure_id.0 as usize;
        let treasure_count = self.treasures.len();
        let Some(treasure) = self.treasures.get_mut(treasure_index) else {
            return rejected(RejectReason::UnknownTreasure);
        };
        if code.len() > CLAIM_CODE_BYTES_MAX {
            return rejected(RejectReason::CodeTooLong);
        }
        if player.has_wrong_codes {
            let wrong_so_far = self.wrong_codes.count(player.slot, treasure_index);
            if usize::from(wrong_so_far) >= CLAIM_WRONG_CODES_MAX {
                return rejected(RejectReason::TooManyAttempts);
            }
        }
        if claim_code_hash(code) != treasure.code_hash {
            player.has_wrong_codes = true;
            self.wrong_codes
                .add(player.slot, treasure_index, treasure_count);
            return rejected(RejectReason::WrongCode);
        }
        if let Some(winner) = treasure.winner() {
            return Outcome::AlreadyClaimed { winner };
        }
        treasure.winner = player_id;
        treasure.won = true;
        player.score = player.score.saturating_add(treasure.points);
        let score = player.score;
        let points = treasure.points;
        self.raise(player_id, score);
        Outcome::Claimed { points, score }
    }
}

fn rejected(reason: RejectReason) -> Outcome {
    Outcome::Rejected { reason }
}

/// A place for one hunt in a partition: its id beside its state, so a scan of the slots reads
/// each id and the pointer it leads to from the same cache line.
#[derive(Clone, Debug, Default)]
struct HuntSlot {
    id: HuntId,
    hunt: Option<Box<Hunt>>,
}

/// The hunts of one partition, and the client sessions whose retries it recognises. Owned by
/// one shard; never shared.
#[derive(Clone)]
pub struct PartitionState {
    partition: PartitionId,
    /// Bit `i` is set when `slots[i]` holds a hunt.
    occupied: u32,
    slots: [HuntSlot; HUNTS_PER_PARTITION_MAX],
    /// Made at the first event of a session (boxed: a partition no session wrote to pays a
    /// pointer in every shard's table).
    sessions: Option<Box<SessionTable>>,
    /// Events the owning shard applied to this state as the partition's owner, counted by
    /// [`Self::count_applied`]: the partition's own load, which `trove cluster rebalance --by
    /// load` evens out. Not in snapshots: a state rebuilt elsewhere (a move's target, a
    /// recovery) counts from 0 again, like any restarted Prometheus counter.
    applied: u64,
}

const _: () = assert!(HUNTS_PER_PARTITION_MAX <= u32::BITS as usize);

/// The state, without the applied-events counter: that says how busy the partition was on
/// this shard, not what it holds (a replayed or moved copy of the same state counts from 0),
/// and tests compare states by this text.
impl std::fmt::Debug for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionState")
            .field("partition", &self.partition)
            .field("occupied", &self.occupied)
            .field("slots", &self.slots)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl PartitionState {
    pub fn new(partition: PartitionId) -> PartitionState {
        PartitionState {
            partition,
            occupied: 0,
            slots: std::array::from_fn(|_| HuntSlot::default()),
            sessions: None,
            applied: 0,
        }
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Counts one event its owning shard applies here (whatever its outcome, as the shard's
    /// `events_applied` does): one add on the state the apply has in hand.
    #[inline]
    pub fn count_applied(&mut self) {
        self.applied += 1;
    }

    /// Events counted by [`Self::count_applied`] since this state was made.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The index of the slot that holds `hunt`.
    #[inline]
    fn slot_of(&self, hunt: HuntId) -> Option<usize> {
        let mut occupied = self.occupied;
        while occupied != 0 {
            let at = occupied.trailing_zeros() as usize;
            if self.slots[at].id == hunt {
                return Some(at);
            }
            occupied &= occupied - 1;
        }
        None
    }

    fn hunt(&self, hunt: HuntId) -> Option<&Hunt> {
        self.slots[self.slot_of(hunt)?].hunt.as_deref()
    }

    /// Starts loading the memory [`Self::apply`] will need for `event` (the hunt's player
    /// entry and latitude bands) without waiting for it, and changes nothing. A shard that
    /// calls this for every event of a frame before applying any of them has the frame's
    /// cache misses in flight together instead of one after the other (as MICA and FASTER
    /// batch their lookups).
    #[inline]
    pub fn prefetch(&self, event: &ArchivedEvent) {
        let Some(at) = self.slot_of(event.hunt.get()) else {
            return;
        };
        let Some(hunt) = self.slots[at].hunt.as_deref() else {
            return;
        };
        let entries = &hunt.players.entries;
        let index = IdHasher::hash_id(event.player.get().0) as usize & (entries.len() - 1);
        prefetch_line(&entries[index]);
        prefetch_line(hunt.bands.as_ptr());
    }

    /// Applies one event and says what happened; a retry of an event of a client session this
    /// partition applied before is answered `Duplicate` (or `DuplicateUnknown`) and not applied
    /// again (`core::partition_sessions` says which events count and why the answer is sound).
    #[inline]
    pub fn apply(&mut self, event: &ArchivedEvent) -> Outcome {
        let session = event.client_session.to_native();
        if session == NO_SESSION || matches!(event.kind, ArchivedEventKind::Leaderboard { .. }) {
            if let Some(sessions) = self.sessions.as_deref_mut() {
                sessions.tick();
            }
            return self.apply_once(event);
        }
        // Out of `self` while the event runs, so the state and the table are borrowed apart.
        let mut sessions = self.sessions.take().unwrap_or_default();
        sessions.tick();
        let seq = event.client_seq.to_native();
        let outcome = sessions.once(session, seq, || self.apply_once(event));
        self.sessions = Some(sessions);
        outcome
    }

    /// The client sessions this partition remembers, if any event of one was applied.
    pub fn sessions(&self) -> Option<&SessionTable> {
        self.sessions.as_deref()
    }

    /// Applies one event, retry or not.
    fn apply_once(&mut self, event: &ArchivedEvent) -> Outcome {
        let hunt_id = event.hunt.get();
        let player = event.player.get();
        if let ArchivedEventKind::CreateHunt(spec) = &event.kind {
            return self.create_hunt(hunt_id, player, spec);
        }
        let Some(at) = self.slot_of(hunt_id) else {
            return rejected(RejectReason::UnknownHunt);
        };
        let hunt = self.slots[at]
            .hunt
            .as_deref_mut()
            .expect("an occupied slot holds a hunt");
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
            ArchivedEventKind::EndHunt => {
                if hunt.organiser != player {
                    return rejected(RejectReason::NotOrganiser);
                }
                self.slots[at] = HuntSlot::default();
                self.occupied &= !(1 << at);
                Outcome::Accepted { score: 0 }
            }
        }
    }

    fn create_hunt(
        &mut self,
        hunt_id: HuntId,
        organiser: PlayerId,
        spec: &ArchivedHuntSpec,
    ) -> Outcome {
        if self.slot_of(hunt_id).is_some() {
            return rejected(RejectReason::HuntExists);
        }
        let free = !self.occupied & slots_mask();
        if free == 0 {
            return rejected(RejectReason::HuntTableFull);
        }
        match Hunt::from_spec(organiser, spec) {
            Ok(hunt) => {
                let at = free.trailing_zeros() as usize;
                self.slots[at] = HuntSlot {
                    id: hunt_id,
                    hunt: Some(Box::new(hunt)),
                };
                self.occupied |= 1 << at;
                Outcome::Accepted { score: 0 }
            }
            Err(reason) => rejected(reason),
        }
    }

    /// How many hunts the partition holds.
    pub fn hunts(&self) -> usize {
        self.occupied.count_ones() as usize
    }

    /// The organiser of `hunt`, if it exists.
    pub fn organiser_of(&self, hunt: HuntId) -> Option<PlayerId> {
        self.hunt(hunt).map(|h| h.organiser)
    }

    /// A player's score in a hunt, if both exist.
    pub fn score_of(&self, hunt: HuntId, player: PlayerId) -> Option<u32> {
        self.hunt(hunt)?.players.get(player).map(|p| p.score)
    }

    /// Who won a treasure, if anyone has.
    pub fn winner_of(&self, hunt: HuntId, treasure: TreasureId) -> Option<PlayerId> {
        self.hunt(hunt)?
            .treasures
            .get(treasure.0 as usize)?
            .winner()
    }
}

// ---- snapshots (`core::snapshot`): the state as plain values and back ------------------------

impl PartitionState {
    /// The partition's state as plain values, for a snapshot. [`Self::import`] rebuilds a
    /// state that answers every later event as this one does.
    pub fn export(&self) -> PartitionSnapshot {
        let mut hunts = Vec::with_capacity(self.hunts());
        let mut occupied = self.occupied;
        while occupied != 0 {
            let at = occupied.trailing_zeros() as usize;
            occupied &= occupied - 1;
            let slot = &self.slots[at];
            let hunt = slot.hunt.as_deref().expect("an occupied slot holds a hunt");
            hunts.push(hunt.export(at as u32, slot.id));
        }
        PartitionSnapshot {
            partition: self.partition.0,
            hunts,
            sessions: self.sessions.as_deref().map(SessionTable::export),
        }
    }

    /// Rebuilds a partition from a snapshot, after checking it breaks no limit.
    pub fn import(snapshot: &PartitionSnapshot) -> Result<PartitionState, SnapshotError> {
        snapshot.check()?;
        let mut state = PartitionState::new(PartitionId(snapshot.partition));
        for hunt in &snapshot.hunts {
            let at = hunt.slot as usize;
            state.slots[at] = HuntSlot {
                id: HuntId(hunt.id),
                hunt: Some(Box::new(Hunt::import(hunt))),
            };
            state.occupied |= 1 << at;
        }
        if let Some(sessions) = &snapshot.sessions {
            state.sessions = Some(Box::new(SessionTable::import(sessions)?));
        }
        Ok(state)
    }
}

impl Hunt {
    fn export(&self, slot: u32, id: HuntId) -> HuntSnapshot {
        let mut joined: Vec<&PlayerEntry> = (self.players.entries.iter())
            .filter(|entry| entry.slot != EMPTY_SLOT)
            .collect();
        joined.sort_unstable_by_key(|entry| entry.slot);
        let players = joined
            .into_iter()
            .map(|entry| PlayerSnapshot {
                id: entry.id.0,
                score: entry.score,
                visited: entry.visited,
                wrong_codes: self.wrong_codes.by_slot[usize::from(entry.slot)]
                    .as_ref()
                    .map(|codes| codes.to_vec()),
            })
            .collect();
        HuntSnapshot {
            slot,
            id: id.0,
            organiser: self.organiser.0,
            waypoints: (self.waypoints.iter())
                .map(|w| WaypointSnapshot {
                    lat_e7: w.position.lat_e7,
                    lon_e7: w.position.lon_e7,
                    radius_m: w.radius_m,
                    points: w.points,
                })
                .collect(),
            treasures: (self.treasures.iter())
                .map(|t| TreasureSnapshot {
                    code_hash: t.code_hash,
                    points: t.points,
                    winner: t.winner().map(|winner| winner.0),
                })
                .collect(),
            players,
            leaderboard: (self.leaderboard.entries.iter())
                .map(|e| RankSnapshot {
                    player: e.player.0,
                    score: e.score,
                })
                .collect(),
        }
    }

    /// The hunt a checked snapshot describes. Players join again in their original order, so
    /// the player table comes out laid out as it was.
    fn import(snapshot: &HuntSnapshot) -> Hunt {
        let waypoints: Box<[Waypoint]> = (snapshot.waypoints.iter())
            .map(|w| {
                let position = Position {
                    lat_e7: w.lat_e7,
                    lon_e7: w.lon_e7,
                };
                Waypoint::new(position, w.radius_m, w.points)
            })
            .collect();
        let treasures = (snapshot.treasures.iter())
            .map(|t| Treasure {
                code_hash: t.code_hash,
                winner: PlayerId(t.winner.unwrap_or(0)),
                points: t.points,
                won: t.winner.is_some(),
            })
            .collect();
        let mut players = PlayerTable::new();
        let mut wrong_codes = Vec::with_capacity(snapshot.players.len());
        for player in &snapshot.players {
            players.insert(PlayerId(player.id));
            let entry = players.get_mut(PlayerId(player.id)).expect("just joined");
            entry.score = player.score;
            entry.visited = player.visited;
            // The flag says the counters exist, as a wrong code in the live state sets both.
            entry.has_wrong_codes = player.wrong_codes.is_some();
            wrong_codes.push(player.wrong_codes.as_ref().map(|c| c.clone().into()));
        }
        let entries: Vec<LeaderboardEntry> = (snapshot.leaderboard.iter())
            .map(|rank| LeaderboardEntry {
                player: PlayerId(rank.player),
                score: rank.score,
            })
            .collect();
        let cutoff = (entries.len() == LEADERBOARD_TOP_K_MAX)
            .then(|| entries.last().copied())
            .flatten();
        let (bands, widest_gap_e7) = sorted_bands(&waypoints);
        Hunt {
            players,
            bands,
            waypoints,
            widest_gap_e7,
            leaderboard_floor: cutoff.map_or(0, |cutoff| cutoff.score),
            treasures,
            leaderboard: Leaderboard { entries, cutoff },
            organiser: PlayerId(snapshot.organiser),
            wrong_codes: WrongCodeTable {
                by_slot: wrong_codes,
            },
        }
    }
}

/// Asks the CPU to bring the cache line at `address` in, and goes on without waiting.
#[inline]
fn prefetch_line<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads no value, cannot fault, and needs only SSE, which
    // every x86_64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// A mask with one bit per hunt slot of a partition.
const fn slots_mask() -> u32 {
    if HUNTS_PER_PARTITION_MAX == u32::BITS as usize {
        u32::MAX
    } else {
        (1 << HUNTS_PER_PARTITION_MAX) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{
        Event, EventKind, HuntSpec, OutcomeClass, TreasureSpec, WaypointSpec,
    };
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
            client_session: 0,
            client_seq: 0,
            client_ts: 0,
            kind,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        state.apply(archived)
    }

    /// Applies `kind` by `player` as event `seq` of client session `session`.
    fn apply_as(
        state: &mut PartitionState,
        (session, seq): (u64, u64),
        player: u64,
        kind: EventKind,
    ) -> Outcome {
        let event = Event {
            hunt: HUNT,
            player: PlayerId(player),
            client_session: session,
            client_seq: seq,
            client_ts: 0,
            kind,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        state.apply(archived)
    }

    #[test]
    fn a_retry_is_answered_with_its_original_class_and_not_applied_again() {
        let mut state = PartitionState::new(PartitionId(0));
        let created = apply_as(&mut state, (7, 1), 1, EventKind::CreateHunt(spec(1)));
        assert_eq!(created, Outcome::Accepted { score: 0 });
        apply_as(&mut state, (7, 2), 2, EventKind::Join);
        let check_in = || EventKind::CheckIn { position: PARIS };
        assert_eq!(
            apply_as(&mut state, (7, 3), 2, check_in()),
            Outcome::Accepted { score: 10 }
        );
        // Without its session the same check-in is applied again (and finds it done).
        assert!(matches!(
            apply_as(&mut state, (0, 3), 2, check_in()),
            Outcome::Accepted { score: 15 }
        ));
        let duplicate = |original| Outcome::Duplicate { original };
        for (seq, class) in [
            (1, OutcomeClass::Accepted),
            (2, OutcomeClass::Accepted),
            (3, OutcomeClass::Accepted),
        ] {
            assert_eq!(
                apply_as(&mut state, (7, seq), 2, check_in()),
                duplicate(class)
            );
        }
        assert_eq!(state.score_of(HUNT, PlayerId(2)), Some(15));
        // Another session's seq 3 is another event.
        assert_eq!(
            apply_as(&mut state, (8, 3), 2, check_in()),
            Outcome::Rejected {
                reason: RejectReason::AlreadyCheckedIn
            }
        );
        assert_eq!(
            apply_as(&mut state, (8, 3), 2, EventKind::Join),
            duplicate(OutcomeClass::Rejected {
                reason: RejectReason::AlreadyCheckedIn
            }),
            "a rejection is remembered too"
        );
    }

    #[test]
    fn a_retried_wrong_code_counts_once() {
        let mut state = hunt_with_players(1, 1);
        let wrong = || EventKind::Claim {
            treasure: TreasureId(0),
            code: "nope".into(),
        };
        for seq in 0..CLAIM_WRONG_CODES_MAX as u64 - 1 {
            apply_as(&mut state, (7, seq), 1, wrong());
            // Each one re-sent after a lost connection.
            let again = apply_as(&mut state, (7, seq), 1, wrong());
            assert!(matches!(again, Outcome::Duplicate { .. }), "{again:?}");
        }
        let right = EventKind::Claim {
            treasure: TreasureId(0),
            code: "code-0".into(),
        };
        assert!(matches!(
            apply_as(&mut state, (7, 100), 1, right),
            Outcome::Claimed { .. }
        ));
    }

    #[test]
    fn a_leaderboard_is_read_afresh_and_an_old_retry_is_unknown() {
        let mut state = hunt_with_players(2, 0);
        let board = || EventKind::Leaderboard { top_k: 2 };
        let first = apply_as(&mut state, (7, 1), 1, board());
        assert!(matches!(first, Outcome::Leaderboard { .. }));
        assert_eq!(apply_as(&mut state, (7, 1), 1, board()), first);
        let join = || EventKind::Join;
        let window = crate::constants::SESSION_WINDOW_EVENTS_MAX as u64;
        for seq in 2..=window + 2 {
            apply_as(&mut state, (7, seq), 1, join());
        }
        assert_eq!(
            apply_as(&mut state, (7, 2), 1, join()),
            Outcome::DuplicateUnknown
        );
        assert!(matches!(
            apply_as(&mut state, (7, 3), 1, join()),
            Outcome::Duplicate { .. }
        ));
        let table = state.sessions().expect("a session wrote");
        assert_eq!(table.highest(7), Some(window + 2));
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
                client_session: 0,
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
            client_session: 0,
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

    fn event_of(hunt: u64, player: u64, kind: EventKind) -> Event {
        Event {
            hunt: HuntId(hunt),
            player: PlayerId(player),
            client_session: 0,
            client_seq: 0,
            client_ts: 0,
            kind,
        }
    }

    fn apply_event(state: &mut PartitionState, event: &Event) -> Outcome {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        state.apply(archived)
    }

    #[test]
    fn a_brute_force_of_claim_codes_is_stopped_after_the_limit() {
        let mut state = hunt_with_players(2, 2);
        for guess in 0..CLAIM_WRONG_CODES_MAX {
            assert_eq!(
                apply(&mut state, 1, claim(0, &format!("guess-{guess}"))),
                rejected(RejectReason::WrongCode)
            );
        }
        // The right code no longer helps the player who guessed, for that treasure.
        assert_eq!(
            apply(&mut state, 1, claim(0, "code-0")),
            rejected(RejectReason::TooManyAttempts)
        );
        assert_eq!(
            apply(&mut state, 1, claim(0, "guess")),
            rejected(RejectReason::TooManyAttempts)
        );
        assert_eq!(state.winner_of(HUNT, TreasureId(0)), None);
        // Other treasures, and other players, are not affected.
        assert_eq!(
            apply(&mut state, 1, claim(1, "code-1")),
            Outcome::Claimed {
                points: 100,
                score: 100
            }
        );
        assert_eq!(
            apply(&mut state, 2, claim(0, "code-0")),
            Outcome::Claimed {
                points: 100,
                score: 100
            }
        );
    }

    #[test]
    fn a_wrong_code_short_of_the_limit_does_not_stop_a_win() {
        let mut state = hunt_with_players(1, 1);
        for _ in 1..CLAIM_WRONG_CODES_MAX {
            apply(&mut state, 1, claim(0, "typo"));
        }
        assert!(matches!(
            apply(&mut state, 1, claim(0, "code-0")),
            Outcome::Claimed { .. }
        ));
    }

    #[test]
    fn only_the_organiser_ends_a_hunt_and_its_slot_is_freed() {
        let mut state = hunt_with_players(2, 1);
        assert_eq!(
            apply(&mut state, 1, EventKind::EndHunt),
            rejected(RejectReason::NotOrganiser)
        );
        assert_eq!(state.hunts(), 1);
        assert_eq!(
            apply(&mut state, 0, EventKind::EndHunt),
            Outcome::Accepted { score: 0 }
        );
        assert_eq!(state.hunts(), 0);
        assert_eq!(state.organiser_of(HUNT), None);
        assert_eq!(
            apply(&mut state, 1, check_in(0)),
            rejected(RejectReason::UnknownHunt)
        );
        assert_eq!(
            apply(&mut state, 0, EventKind::EndHunt),
            rejected(RejectReason::UnknownHunt)
        );
        // The id can be used again, by another organiser, and starts empty.
        assert_eq!(
            apply(&mut state, 7, EventKind::CreateHunt(spec(1))),
            Outcome::Accepted { score: 0 }
        );
        assert_eq!(state.organiser_of(HUNT), Some(PlayerId(7)));
        assert_eq!(state.score_of(HUNT, PlayerId(1)), None);
    }

    #[test]
    fn an_ended_hunt_makes_room_in_a_full_partition() {
        let mut state = PartitionState::new(PartitionId(0));
        let create = |hunt| event_of(hunt, 0, EventKind::CreateHunt(spec(0)));
        for hunt in 0..HUNTS_PER_PARTITION_MAX as u64 {
            assert_eq!(
                apply_event(&mut state, &create(hunt)),
                Outcome::Accepted { score: 0 }
            );
        }
        assert_eq!(
            apply_event(&mut state, &create(100)),
            rejected(RejectReason::HuntTableFull)
        );
        assert_eq!(
            apply_event(&mut state, &event_of(3, 0, EventKind::EndHunt)),
            Outcome::Accepted { score: 0 }
        );
        assert_eq!(
            apply_event(&mut state, &create(100)),
            Outcome::Accepted { score: 0 }
        );
        assert_eq!(state.hunts(), HUNTS_PER_PARTITION_MAX);
        for hunt in (0..HUNTS_PER_PARTITION_MAX as u64).filter(|&h| h != 3) {
            assert_eq!(state.organiser_of(HuntId(hunt)), Some(PlayerId(0)));
        }
        assert_eq!(state.organiser_of(HuntId(3)), None);
    }

    #[test]
    fn prefetching_changes_no_outcome() {
        let events = [
            event_of(1, 1, check_in(0)),
            event_of(1, 99, check_in(0)),
            event_of(42, 1, EventKind::Join),
            event_of(1, 2, claim(0, "code-0")),
            event_of(1, 1, check_in(0)),
        ];
        let mut plain = hunt_with_players(3, 1);
        let mut prefetched = plain.clone();
        let outcomes: Vec<Outcome> = events.iter().map(|e| apply_event(&mut plain, e)).collect();
        let prefetch = |state: &PartitionState, event: &Event| {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
            state.prefetch(rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap());
        };
        for event in &events {
            prefetch(&prefetched, event);
        }
        let after: Vec<Outcome> = events
            .iter()
            .map(|e| apply_event(&mut prefetched, e))
            .collect();
        assert_eq!(after, outcomes);
        prefetch(&PartitionState::new(PartitionId(0)), &events[0]);
    }

    #[test]
    fn the_player_table_keeps_every_player_as_it_grows() {
        // Ids that differ only in high bits, and ids that are consecutive, mixed.
        let ids: Vec<u64> = (0..PLAYERS_PER_HUNT_MAX as u64)
            .map(|i| if i % 2 == 0 { i << 52 } else { i })
            .collect();
        let mut table = PlayerTable::new();
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(usize::from(table.insert(PlayerId(id))), n);
            table.get_mut(PlayerId(id)).unwrap().score = n as u32;
        }
        assert_eq!(table.len(), PLAYERS_PER_HUNT_MAX);
        assert_eq!(table.entries.len(), PLAYER_TABLE_ENTRIES_MAX);
        for (n, &id) in ids.iter().enumerate() {
            let entry = table.get(PlayerId(id)).unwrap();
            assert_eq!((entry.score, usize::from(entry.slot)), (n as u32, n));
        }
        assert!(table.get(PlayerId(3 << 52)).is_none());
    }

    proptest! {
        #[test]
        fn a_waypoint_decides_a_check_in_as_the_full_distance_does(
            lat in -900_000_000i32..=900_000_000, lon in -1_800_000_000i32..=1_800_000_000,
            radius in 0u32..=WAYPOINT_RADIUS_M_MAX, bearing in 0.0f64..std::f64::consts::TAU,
            share in 0.9f64..1.1, far in any::<bool>(),
        ) {
            // A point at `share` of the radius (or anywhere within ten radii), on a bearing:
            // most cases sit near the edge, where a loose bound would show.
            let centre = Position { lat_e7: lat, lon_e7: lon };
            let metres = f64::from(radius) * if far { share * 5.0 } else { share };
            let degrees_e7 = metres / 0.011_119_5;
            let cos_lat = lat_radians(centre).cos().max(1e-3);
            let at = Position {
                lat_e7: (f64::from(lat) + degrees_e7 * bearing.sin())
                    .clamp(-900_000_000.0, 900_000_000.0) as i32,
                lon_e7: (f64::from(lon) + degrees_e7 * bearing.cos() / cos_lat)
                    .clamp(-1_800_000_000.0, 1_800_000_000.0) as i32,
            };
            let waypoint = Waypoint::new(centre, radius, 1);
            prop_assert_eq!(waypoint.holds(at), within(centre, at, radius));
            if waypoint.holds(at) {
                prop_assert!(LatitudeBand::new(&waypoint).may_hold(at));
            }
        }

        #[test]
        fn joins_find_every_player_once(
            ids in prop::collection::vec(prop_oneof![0u64..64, any::<u64>(), (0u64..64).prop_map(|i| i << 56)], 1..300),
        ) {
            let mut state = PartitionState::new(PartitionId(0));
            apply(&mut state, 0, EventKind::CreateHunt(spec(0)));
            let mut joined = std::collections::HashSet::new();
            for id in ids {
                let expected = if joined.insert(id) {
                    Outcome::Accepted { score: 0 }
                } else {
                    rejected(RejectReason::AlreadyJoined)
                };
                prop_assert_eq!(apply(&mut state, id, EventKind::Join), expected);
            }
            for &id in &joined {
                prop_assert_eq!(state.score_of(HUNT, PlayerId(id)), Some(0));
            }
        }

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
