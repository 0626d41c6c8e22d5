//! The treasure-hunt workload a benchmark drives: hunts, players, the event mix and the skew
//! over hunts, all reproducible from a seed.
//!
//! A [`Workload`] is plain configuration (from flags or a TOML file). An [`EventMaker`] turns it
//! into events: one per load-generator thread, each with its own random stream, so threads
//! never share state and a seed always produces the same stream of events.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::constants::{
    LEADERBOARD_TOP_K_MAX, PLAYERS_PER_HUNT_MAX, TREASURES_PER_HUNT_MAX, WAYPOINTS_PER_HUNT_MAX,
    WORKLOAD_HUNTS_MAX,
};
use crate::core::ids::{HuntId, PlayerId, TreasureId};
use crate::core::message::{
    Event, EventKind, HuntSpec, NO_SESSION, Position, TreasureSpec, WaypointSpec, claim_code_hash,
};
use crate::core::rng::Rng;

/// The share of each kind of event, in percent; they add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub join: u32,
    pub checkin: u32,
    pub claim: u32,
    pub leaderboard: u32,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            join: 5,
            checkin: 60,
            claim: 30,
            leaderboard: 5,
        }
    }
}

impl Mix {
    /// Parses `join=5,checkin=60,claim=30,leaderboard=5`; kinds left out are 0.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            join: 0,
            checkin: 0,
            claim: 0,
            leaderboard: 0,
        };
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry `{part}` is not NAME=PERCENT"))?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("mix entry `{part}`: `{value}` is not a whole percentage"))?;
            let slot = match name.trim() {
                "join" => &mut mix.join,
                "checkin" | "check-in" => &mut mix.checkin,
                "claim" => &mut mix.claim,
                "leaderboard" => &mut mix.leaderboard,
                other => {
                    return Err(format!(
                        "unknown event kind `{other}` in the mix; use join, checkin, claim and leaderboard"
                    ));
                }
            };
            *slot = value;
        }
        mix.check()?;
        Ok(mix)
    }

    pub fn check(&self) -> Result<(), String> {
        let total = self.join + self.checkin + self.claim + self.leaderboard;
        if total != 100 {
            return Err(format!(
                "the mix adds up to {total}%; it must add up to 100%"
            ));
        }
        Ok(())
    }
}

/// What the benchmark's players do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Hunts created before the run.
    pub hunts: u32,
    /// Zipf exponent of the popularity of hunts: 0 is uniform, 1 is classic Zipf.
    pub zipf: f64,
    /// Players who join each hunt before the run.
    pub players_per_hunt: u32,
    pub waypoints_per_hunt: u32,
    pub treasures_per_hunt: u32,
    pub mix: Mix,
    /// Share of claims that present a wrong code, in percent.
    pub wrong_code_percent: u32,
    /// Share of check-ins inside a waypoint's radius, in percent.
    pub checkin_inside_percent: u32,
    /// Entries a leaderboard query asks for.
    pub leaderboard_top_k: u16,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            hunts: 1000,
            zipf: 0.0,
            players_per_hunt: 100,
            waypoints_per_hunt: 8,
            treasures_per_hunt: 8,
            mix: Mix::default(),
            wrong_code_percent: 10,
            checkin_inside_percent: 70,
            leaderboard_top_k: 10,
            seed: 1,
        }
    }
}

/// The named workloads (`trove bench --preset NAME`), default first.
pub const PRESETS: [&str; 2] = ["default", "accept-heavy"];

impl Workload {
    /// The preset called `name`, or a sentence that lists the presets.
    pub fn preset(name: &str) -> Result<Workload, String> {
        match name {
            "default" => Ok(Workload::default()),
            "accept-heavy" => Ok(Workload::accept_heavy()),
            other => Err(format!(
                "unknown workload preset `{other}`; the presets are {}",
                PRESETS.join(" and ")
            )),
        }
    }

    /// A mix the rules mostly accept, so that cheap rejections are not mistaken for speed: the
    /// default refuses many of its events (a fifth in a few seconds, more as hunts fill:
    /// repeated check-ins, wrong codes, joins of full hunts),
    /// and a refusal costs less than an accepted event. Here every claim carries the right
    /// code (the first wins, later ones learn the winner), every check-in is inside a
    /// waypoint's radius, and there are enough players, waypoints and free places that
    /// repeated check-ins and full hunts stay rare for a run of some seconds at a few million
    /// events a second.
    pub fn accept_heavy() -> Workload {
        Workload {
            hunts: 2000,
            players_per_hunt: 250,
            waypoints_per_hunt: WAYPOINTS_PER_HUNT_MAX as u32,
            treasures_per_hunt: TREASURES_PER_HUNT_MAX as u32,
            mix: Mix {
                join: 5,
                checkin: 55,
                claim: 35,
                leaderboard: 5,
            },
            wrong_code_percent: 0,
            checkin_inside_percent: 100,
            ..Workload::default()
        }
    }

    /// Checks every field against trove's limits, naming the first one that is off.
    pub fn check(&self) -> Result<(), String> {
        let ranges: [(&str, u64, u64, u64); 5] = [
            ("hunts", u64::from(self.hunts), 1, WORKLOAD_HUNTS_MAX),
            (
                "players per hunt",
                u64::from(self.players_per_hunt),
                1,
                PLAYERS_PER_HUNT_MAX as u64,
            ),
            (
                "waypoints per hunt",
                u64::from(self.waypoints_per_hunt),
                1,
                WAYPOINTS_PER_HUNT_MAX as u64,
            ),
            (
                "treasures per hunt",
                u64::from(self.treasures_per_hunt),
                1,
                TREASURES_PER_HUNT_MAX as u64,
            ),
            (
                "leaderboard top k",
                u64::from(self.leaderboard_top_k),
                1,
                LEADERBOARD_TOP_K_MAX as u64,
            ),
        ];
        for (name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "{name} = {value} is out of range: it must be from {min} to {max}"
                ));
            }
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return Err(format!(
                "zipf = {} is out of range: it must be 0 (uniform) or more",
                self.zipf
            ));
        }
        if self.wrong_code_percent > 100 || self.checkin_inside_percent > 100 {
            return Err(
                "wrong_code_percent and checkin_inside_percent are percentages, 0 to 100".into(),
            );
        }
        self.mix.check()
    }

    /// The id of the hunt of rank `rank` (0 is the most popular).
    pub fn hunt_id(rank: u32) -> HuntId {
        HuntId(u64::from(rank) + 1)
    }

    fn centre(hunt: HuntId) -> Position {
        // Hunts are spread over a grid of city blocks around Paris, one every ~1 km.
        let cell = (hunt.0 % 400) as i32;
        Position {
            lat_e7: 488_000_000 + (cell / 20) * 90_000,
            lon_e7: 23_000_000 + (cell % 20) * 130_000,
        }
    }

    fn waypoint(hunt: HuntId, index: u32) -> Position {
        let centre = Workload::centre(hunt);
        // Waypoints sit on a ring ~500 m around the centre.
        let angle =
            f64::from(index) * std::f64::consts::TAU / f64::from(WAYPOINTS_PER_HUNT_MAX as u32);
        Position {
            lat_e7: centre.lat_e7 + (angle.sin() * 45_000.0) as i32,
            lon_e7: centre.lon_e7 + (angle.cos() * 65_000.0) as i32,
        }
    }

    fn claim_code(code: &mut String, hunt: HuntId, treasure: u32) {
        code.clear();
        let _ = write!(code, "T{}-{}", hunt.0, treasure);
    }

    /// The spec of a hunt.
    pub fn hunt_spec(&self, hunt: HuntId) -> HuntSpec {
        let mut code = String::new();
        HuntSpec {
            waypoints: (0..self.waypoints_per_hunt)
                .map(|index| WaypointSpec {
                    position: Workload::waypoint(hunt, index),
                    radius_m: 50,
                    points: 10,
                })
                .collect(),
            treasures: (0..self.treasures_per_hunt)
                .map(|treasure| {
                    Workload::claim_code(&mut code, hunt, treasure);
                    TreasureSpec {
                        code_hash: claim_code_hash(code.as_bytes()),
                        points: 100,
                    }
                })
                .collect(),
        }
    }

    /// The events that set the hunts up before a run: every hunt, then every player joining.
    pub fn setup_events(&self) -> impl Iterator<Item = Event> + '_ {
        let creates = (0..self.hunts).map(move |rank| {
            let hunt = Workload::hunt_id(rank);
            Event {
                hunt,
                player: PlayerId(0),
                client_session: NO_SESSION,
                client_seq: 0,
                client_ts: 0,
                kind: EventKind::CreateHunt(self.hunt_spec(hunt)),
            }
        });
        let joins = (0..self.hunts).flat_map(move |rank| {
            (1..=u64::from(self.players_per_hunt)).map(move |player| Event {
                hunt: Workload::hunt_id(rank),
                player: PlayerId(player),
                client_session: NO_SESSION,
                client_seq: 0,
                client_ts: 0,
                kind: EventKind::Join,
            })
        });
        creates.chain(joins)
    }
}

/// Draws hunt ranks with a Zipf distribution (or uniformly when the exponent is 0).
#[derive(Clone)]
pub struct HuntPicker {
    /// Cumulative probabilities of ranks 0.. (empty for uniform).
    cdf: Arc<[f64]>,
    hunts: u32,
}

impl HuntPicker {
    pub fn new(hunts: u32, zipf: f64) -> HuntPicker {
        if zipf == 0.0 {
            return HuntPicker {
                cdf: Arc::new([]),
                hunts,
            };
        }
        let weights: Vec<f64> = (1..=hunts)
            .map(|rank| 1.0 / f64::from(rank).powf(zipf))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cdf = weights
            .iter()
            .map(|weight| {
                running += weight / total;
                running
            })
            .collect();
        HuntPicker { cdf, hunts }
    }

    pub fn pick(&self, rng: &mut Rng) -> u32 {
        if self.cdf.is_empty() {
            return rng.below(u64::from(self.hunts)) as u32;
        }
        let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf
            .partition_point(|&cumulative| cumulative < draw)
            .min(self.hunts as usize - 1) as u32
    }
}

/// Makes the events of one load-generator thread. Reuses one `Event` value, so making an
/// event allocates nothing.
pub struct EventMaker {
    workload: Workload,
    picker: HuntPicker,
    rng: Rng,
    event: Event,
    code: String,
    /// Ids of players this thread makes join, apart from other threads' and the setup's.
    next_new_player: u64,
}

impl EventMaker {
    /// The maker of thread `thread`: its own random stream of the workload's seed.
    pub fn new(workload: &Workload, picker: HuntPicker, thread: u32) -> EventMaker {
        EventMaker {
            workload: workload.clone(),
            picker,
            rng: Rng::stream(workload.seed, u64::from(thread) + 1),
            event: Event {
                hunt: HuntId(0),
                player: PlayerId(0),
                client_session: NO_SESSION,
                client_seq: 0,
                client_ts: 0,
                kind: EventKind::Join,
            },
            code: String::new(),
            next_new_player: (u64::from(thread) + 1) << 32,
        }
    }

    /// Every event from now on carries `session` (`Event::client_session`); set once, so the
    /// per-event path does not pay for it.
    pub fn set_session(&mut self, session: u64) {
        self.event.client_session = session;
    }

    /// The next event, stamped with `seq` and `ts`.
    pub fn next(&mut self, seq: u64, ts: u64) -> &Event {
        let hunt = Workload::hunt_id(self.picker.pick(&mut self.rng));
        let player = PlayerId(1 + self.rng.below(u64::from(self.workload.players_per_hunt)));
        let mix = self.workload.mix;
        let roll = self.rng.below(100) as u32;
        let kind = if roll < mix.join {
            self.next_new_player += 1;
            self.event.player = PlayerId(self.next_new_player);
            EventKind::Join
        } else if roll < mix.join + mix.checkin {
            self.event.player = player;
            EventKind::CheckIn {
                position: self.checkin_position(hunt),
            }
        } else if roll < mix.join + mix.checkin + mix.claim {
            self.event.player = player;
            return self.claim(hunt, seq, ts);
        } else {
            self.event.player = player;
            EventKind::Leaderboard {
                top_k: self.workload.leaderboard_top_k,
            }
        };
        self.event.hunt = hunt;
        self.event.client_seq = seq;
        self.event.client_ts = ts;
        self.set_kind(kind);
        &self.event
    }

    /// Replaces the event's kind, keeping a claim's code string for the next claim.
    fn set_kind(&mut self, kind: EventKind) {
        if let EventKind::Claim { code, .. } = std::mem::replace(&mut self.event.kind, kind) {
            self.code = code;
        }
    }

    fn checkin_position(&mut self, hunt: HuntId) -> Position {
        let waypoint = Workload::waypoint(
            hunt,
            self.rng.below(u64::from(self.workload.waypoints_per_hunt)) as u32,
        );
        // Inside: within ~30 m of the centre; outside: ~300 m off.
        let reach = if self
            .rng
            .percent(u64::from(self.workload.checkin_inside_percent))
        {
            2_000
        } else {
            27_000
        };
        let offset = |rng: &mut Rng| reach - rng.below(2 * reach as u64) as i32;
        Position {
            lat_e7: waypoint.lat_e7 + offset(&mut self.rng),
            lon_e7: waypoint.lon_e7 + offset(&mut self.rng),
        }
    }

    /// A claim reuses the event's code string instead of allocating a new one.
    fn claim(&mut self, hunt: HuntId, seq: u64, ts: u64) -> &Event {
        let treasure = self.rng.below(u64::from(self.workload.treasures_per_hunt)) as u32;
        let wrong = self
            .rng
            .percent(u64::from(self.workload.wrong_code_percent));
        self.set_kind(EventKind::Join);
        let mut code = std::mem::take(&mut self.code);
        Workload::claim_code(&mut code, hunt, treasure);
        if wrong {
            code.push('x');
        }
        self.event.hunt = hunt;
        self.event.client_seq = seq;
        self.event.client_ts = ts;
        self.event.kind = EventKind::Claim {
            treasure: TreasureId(treasure),
            code,
        };
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_refuse_unknown_kinds() {
        assert_eq!(
            Mix::parse("join=10,checkin=50,claim=30,leaderboard=10")
                .unwrap()
                .checkin,
            50
        );
        assert_eq!(
            Mix::parse("claim=100").unwrap(),
            Mix {
                join: 0,
                checkin: 0,
                claim: 100,
                leaderboard: 0
            }
        );
        let unknown = Mix::parse("dance=100").unwrap_err();
        assert!(unknown.contains("unknown event kind `dance`"), "{unknown}");
        assert!(
            Mix::parse("claim=50")
                .unwrap_err()
                .contains("adds up to 50%")
        );
        assert!(Mix::parse("claim=lots").is_err());
    }

    #[test]
    fn workloads_outside_the_limits_are_refused_by_name() {
        assert_eq!(Workload::default().check(), Ok(()));
        let negative = Workload {
            zipf: -0.5,
            ..Workload::default()
        };
        assert!(negative.check().unwrap_err().contains("zipf"));
        let crowded = Workload {
            players_per_hunt: PLAYERS_PER_HUNT_MAX as u32 + 1,
            ..Workload::default()
        };
        assert!(crowded.check().unwrap_err().contains("players per hunt"));
    }

    #[test]
    fn a_seed_makes_the_same_events() {
        let workload = Workload::default();
        let picker = HuntPicker::new(workload.hunts, workload.zipf);
        let draw = |thread| {
            let mut maker = EventMaker::new(&workload, picker.clone(), thread);
            (0..200)
                .map(|seq| maker.next(seq, 0).clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
    }

    #[test]
    fn the_mix_and_the_skew_show_in_the_events() {
        let workload = Workload {
            zipf: 1.2,
            ..Workload::default()
        };
        let mut maker =
            EventMaker::new(&workload, HuntPicker::new(workload.hunts, workload.zipf), 0);
        let (mut claims, mut top_hunt) = (0, 0);
        for seq in 0..20_000 {
            let event = maker.next(seq, 0);
            claims += matches!(event.kind, EventKind::Claim { .. }) as u32;
            top_hunt += (event.hunt == Workload::hunt_id(0)) as u32;
        }
        // 30% claims, give or take; under Zipf 1.2 over 1000 hunts the top hunt draws ~20%.
        assert!((5_400..6_600).contains(&claims), "{claims} claims");
        assert!(
            top_hunt > 2_000,
            "the most popular hunt drew only {top_hunt}"
        );
    }

    /// The share of `events` events of `workload` the state machine refuses, after the
    /// workload's set-up.
    fn refused_share(workload: &Workload, events: u64) -> f64 {
        use crate::core::hunt::PartitionState;
        use crate::core::message::{ArchivedEvent, Outcome};
        use crate::core::partition::Partitioner;

        let partitioner = Partitioner::new(1024).unwrap();
        let mut states: Vec<PartitionState> = (0..1024)
            .map(|p| PartitionState::new(crate::core::ids::PartitionId(p)))
            .collect();
        let mut apply = |event: &Event| {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
            let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
            states[partitioner.partition_of(event.hunt).index()].apply(archived)
        };
        for event in workload.setup_events() {
            assert!(matches!(apply(&event), Outcome::Accepted { .. }));
        }
        let mut maker = EventMaker::new(workload, HuntPicker::new(workload.hunts, 0.0), 0);
        let refused = (0..events)
            .filter(|&seq| matches!(apply(maker.next(seq, 0)), Outcome::Rejected { .. }))
            .count();
        refused as f64 / events as f64
    }

    #[test]
    fn the_accept_heavy_preset_is_mostly_accepted_and_the_default_is_not() {
        assert_eq!(Workload::preset("default"), Ok(Workload::default()));
        let unknown = Workload::preset("fast").unwrap_err();
        assert!(unknown.contains("default and accept-heavy"), "{unknown}");
        let accept_heavy = Workload::preset("accept-heavy").unwrap();
        assert_eq!(accept_heavy.check(), Ok(()));
        // Fewer hunts than the preset, each the same, so the test sets up quickly.
        let few = |workload: Workload| Workload {
            hunts: 50,
            ..workload
        };
        let accepting = refused_share(&few(accept_heavy), 20_000);
        let default = refused_share(&few(Workload::default()), 20_000);
        assert!(accepting < 0.05, "accept-heavy refused {accepting:.3}");
        assert!(
            default > 0.1 && default > 3.0 * accepting,
            "the default mix refused {default:.3}, accept-heavy {accepting:.3}"
        );
    }

    #[test]
    fn every_preset_the_flag_offers_is_a_workload() {
        use clap::ValueEnum;
        let offered = crate::bench::args::PresetArg::value_variants();
        assert_eq!(offered.len(), PRESETS.len());
        for preset in offered {
            let flag_name = preset.to_possible_value().unwrap();
            assert_eq!(flag_name.get_name(), preset.name());
            assert!(Workload::preset(preset.name()).is_ok(), "{}", preset.name());
        }
    }

    #[test]
    fn correct_codes_open_their_treasures() {
        let workload = Workload {
            wrong_code_percent: 0,
            ..Workload::default()
        };
        let mut maker = EventMaker::new(&workload, HuntPicker::new(workload.hunts, 0.0), 0);
        for seq in 0..2_000 {
            let event = maker.next(seq, 0).clone();
            if let EventKind::Claim { treasure, code } = &event.kind {
                let spec = workload.hunt_spec(event.hunt);
                assert_eq!(
                    spec.treasures[treasure.0 as usize].code_hash,
                    claim_code_hash(code.as_bytes())
                );
            }
        }
    }
}
