//! Partition snapshots, sans-IO: a partition's state as plain values that an rkyv archive
//! holds, independent of how [`PartitionState`](crate::core::hunt::PartitionState) lays its
//! tables out in memory.
//!
//! [`PartitionState::export`](crate::core::hunt::PartitionState::export) turns a partition into
//! a [`PartitionSnapshot`]; [`PartitionState::import`](crate::core::hunt::PartitionState::import)
//! checks one ([`PartitionSnapshot::check`]) and rebuilds the state, such that the rebuilt
//! partition answers every later event exactly as the exported one would. The store writes
//! the archive in a snapshot file (`store::snapfile`) and truncates the log before it. A
//! snapshot is built on the shard that owns the partition; the value may then go anywhere.

use rkyv::{Archive, Deserialize, Serialize};

use crate::constants::{
    HUNTS_PER_PARTITION_MAX, LEADERBOARD_TOP_K_MAX, PLAYERS_PER_HUNT_MAX,
    SESSION_WINDOW_EVENTS_MAX, SESSIONS_PER_PARTITION_MAX, TREASURES_PER_HUNT_MAX,
    WAYPOINT_RADIUS_M_MAX, WAYPOINTS_PER_HUNT_MAX,
};
use crate::core::message::{NO_SESSION, OutcomeClass};

/// A partition's hunts and the client sessions it remembers.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub partition: u32,
    pub hunts: Vec<HuntSnapshot>,
    /// `None` until the partition applied an event of a session.
    pub sessions: Option<SessionsSnapshot>,
}

/// A partition's table of client sessions (`core::partition_sessions`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionsSnapshot {
    /// Events the partition applied since the table was made: what sessions age by.
    pub applied_events: u64,
    /// In the table's order.
    pub sessions: Vec<SessionSnapshot>,
}

/// One client session's recent events in a partition.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub id: u64,
    /// The partition's applied-event count when this session's last event was recorded.
    pub last_used: u64,
    /// The highest `client_seq` applied.
    pub highest: u64,
    /// Seqs at or below this that `seqs` does not hold are forgotten.
    pub forgotten_up_to: Option<u64>,
    /// The window as a ring, slot by slot: `seqs[i]` went as `classes[i]`; slot `next` is
    /// overwritten next.
    pub seqs: Vec<u64>,
    pub classes: Vec<OutcomeClass>,
    pub next: u32,
}

/// One hunt, in the slot of the partition it occupies.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HuntSnapshot {
    pub slot: u32,
    pub id: u64,
    pub organiser: u64,
    pub waypoints: Vec<WaypointSnapshot>,
    pub treasures: Vec<TreasureSnapshot>,
    /// In the order they joined.
    pub players: Vec<PlayerSnapshot>,
    /// Best first, exactly as the hunt keeps it (a player with a score of 0 may be listed).
    pub leaderboard: Vec<RankSnapshot>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaypointSnapshot {
    pub lat_e7: i32,
    pub lon_e7: i32,
    pub radius_m: u32,
    pub points: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreasureSnapshot {
    pub code_hash: u64,
    pub points: u32,
    pub winner: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PlayerSnapshot {
    pub id: u64,
    pub score: u32,
    /// Bit `i`: checked in at waypoint `i`.
    pub visited: u64,
    /// Wrong codes presented, per treasure; `None` until the first one.
    pub wrong_codes: Option<Vec<u8>>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankSnapshot {
    pub player: u64,
    pub score: u32,
}

/// Why a snapshot cannot be a partition's state: it breaks a limit or an invariant the state
/// machine relies on (a snapshot from a damaged or foreign file that passed its checksum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(what: String) -> Result<(), SnapshotError> {
    Err(SnapshotError(what))
}

impl PartitionSnapshot {
    /// Checks every limit and invariant [`PartitionState::import`] relies on, so that import
    /// never panics and the rebuilt state never exceeds what the engine allows.
    ///
    /// [`PartitionState::import`]: crate::core::hunt::PartitionState::import
    pub fn check(&self) -> Result<(), SnapshotError> {
        if self.hunts.len() > HUNTS_PER_PARTITION_MAX {
            return invalid(format!(
                "it holds {} hunts; a partition holds at most {HUNTS_PER_PARTITION_MAX}",
                self.hunts.len()
            ));
        }
        let mut slots = 0u64;
        let mut ids = Vec::with_capacity(self.hunts.len());
        for hunt in &self.hunts {
            if hunt.slot as usize >= HUNTS_PER_PARTITION_MAX || slots & (1 << hunt.slot) != 0 {
                return invalid(format!("hunt {} has a bad or shared slot", hunt.id));
            }
            slots |= 1 << hunt.slot;
            if ids.contains(&hunt.id) {
                return invalid(format!("hunt {} appears twice", hunt.id));
            }
            ids.push(hunt.id);
            hunt.check()?;
        }
        match &self.sessions {
            Some(sessions) => sessions.check(),
            None => Ok(()),
        }
    }
}

impl SessionsSnapshot {
    /// Checks the limits and invariants `SessionTable::import` relies on.
    pub fn check(&self) -> Result<(), SnapshotError> {
        if self.sessions.len() > SESSIONS_PER_PARTITION_MAX {
            return invalid(format!(
                "it holds {} client sessions; a partition holds at most {SESSIONS_PER_PARTITION_MAX}",
                self.sessions.len()
            ));
        }
        let mut ids = std::collections::HashSet::with_capacity(self.sessions.len());
        for session in &self.sessions {
            let id = session.id;
            if id == NO_SESSION || !ids.insert(id) {
                return invalid(format!("client session {id} is 0 or appears twice"));
            }
            let len = session.seqs.len();
            let window_fits = len > 0
                && len <= SESSION_WINDOW_EVENTS_MAX
                && session.classes.len() == len
                && (session.next as usize) < SESSION_WINDOW_EVENTS_MAX
                && (len == SESSION_WINDOW_EVENTS_MAX || session.next as usize == len);
            if !window_fits {
                return invalid(format!(
                    "client session {id} has a window that is empty, too long or out of shape"
                ));
            }
            // The highest is in the window, or left it (gaps filled after it pushed it out).
            let highest = session.highest;
            let highest_known = session.seqs.iter().all(|&seq| seq <= highest)
                && (session.seqs.contains(&highest)
                    || session.forgotten_up_to.is_some_and(|f| f >= highest));
            if !highest_known || session.last_used > self.applied_events {
                return invalid(format!(
                    "client session {id} has lost its highest seq, or was used in the future"
                ));
            }
        }
        Ok(())
    }
}

impl HuntSnapshot {
    fn check(&self) -> Result<(), SnapshotError> {
        let id = self.id;
        if self.waypoints.len() > WAYPOINTS_PER_HUNT_MAX
            || self.treasures.len() > TREASURES_PER_HUNT_MAX
            || self.players.len() > PLAYERS_PER_HUNT_MAX
            || self.leaderboard.len() > LEADERBOARD_TOP_K_MAX
        {
            return invalid(format!("hunt {id} exceeds a table limit"));
        }
        let positions_valid = self.waypoints.iter().all(|w| {
            (-900_000_000..=900_000_000).contains(&w.lat_e7)
                && (-1_800_000_000..=1_800_000_000).contains(&w.lon_e7)
                && w.radius_m <= WAYPOINT_RADIUS_M_MAX
        });
        if !positions_valid {
            return invalid(format!("hunt {id} has an invalid waypoint"));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.players.len());
        for player in &self.players {
            if !seen.insert(player.id) {
                return invalid(format!("hunt {id} lists player {} twice", player.id));
            }
            let counters_fit = player
                .wrong_codes
                .as_ref()
                .is_none_or(|codes| codes.len() == self.treasures.len());
            if !counters_fit {
                return invalid(format!(
                    "hunt {id}: player {} has wrong-code counters for another number of treasures",
                    player.id
                ));
            }
        }
        let ranked_known = self
            .leaderboard
            .iter()
            .all(|rank| seen.contains(&rank.player));
        if !ranked_known {
            return invalid(format!("hunt {id} ranks a player who did not join"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::hunt::PartitionState;
    use crate::core::ids::{HuntId, PartitionId, PlayerId, TreasureId};
    use crate::core::message::{
        ArchivedEvent, Event, EventKind, HuntSpec, Outcome, Position, TreasureSpec, WaypointSpec,
        claim_code_hash,
    };

    const PARIS: Position = Position {
        lat_e7: 488_566_000,
        lon_e7: 23_522_000,
    };

    fn spec(treasures: usize) -> HuntSpec {
        let waypoint = |radius_m, points| WaypointSpec {
            position: PARIS,
            radius_m,
            points,
        };
        HuntSpec {
            // A 0-point waypoint lists a player at score 0 on the leaderboard.
            waypoints: vec![waypoint(50, 10), waypoint(500, 0), waypoint(5_000, 3)],
            treasures: (0..treasures)
                .map(|i| TreasureSpec {
                    code_hash: claim_code_hash(format!("code-{i}").as_bytes()),
                    points: 7,
                })
                .collect(),
        }
    }

    /// An event from four small numbers: kind, hunt, player and a parameter.
    fn event((kind, hunt, player, param): (u8, u8, u8, u8)) -> Event {
        let kind = match kind % 8 {
            0 => EventKind::CreateHunt(spec(usize::from(param % 4))),
            1 | 2 => EventKind::Join,
            3 | 4 => EventKind::CheckIn {
                position: Position {
                    // 0 to ~4.4 km north of the waypoints: inside one, two, three or none.
                    lat_e7: PARIS.lat_e7 + i32::from(param) * 1_600,
                    lon_e7: PARIS.lon_e7,
                },
            },
            5 => EventKind::Claim {
                treasure: TreasureId(u32::from(param % 4)),
                code: if param % 3 == 0 {
                    "wrong".into()
                } else {
                    format!("code-{}", param % 4)
                },
            },
            6 => EventKind::Leaderboard {
                top_k: u16::from(param % 18),
            },
            _ => EventKind::EndHunt,
        };
        Event {
            hunt: HuntId(u64::from(hunt % 3)),
            player: PlayerId(u64::from(player % 24)),
            client_session: 0,
            client_seq: 0,
            client_ts: 0,
            kind,
        }
    }

    /// Events of client sessions, as `event` makes them with growing seqs: half of them of
    /// session 1 (its window fills and forgets), the rest spread over 256 sessions (the table
    /// fills and evicts), a few with none; one in six re-sends an earlier event unchanged.
    fn with_sessions(raw: Vec<(u8, u8, u8, u8)>) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::with_capacity(raw.len());
        for (at, raw) in raw.into_iter().enumerate() {
            if raw.3 % 6 == 0 && at > 0 {
                let again = events[usize::from(raw.2) % at].clone();
                events.push(again);
                continue;
            }
            let mut event = event(raw);
            event.client_session = if raw.0 & 0x80 != 0 {
                1
            } else {
                u64::from(raw.2)
            };
            event.client_seq = at as u64;
            events.push(event);
        }
        events
    }

    fn apply(state: &mut PartitionState, event: &Event) -> Outcome {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        state.apply(archived)
    }

    /// Through the archive, as a snapshot file carries it.
    fn round_trip(snapshot: &PartitionSnapshot) -> PartitionSnapshot {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(snapshot).unwrap();
        rkyv::from_bytes::<PartitionSnapshot, rkyv::rancor::Error>(&bytes).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Replaying the rest of a log onto a snapshot taken after any prefix of it gives the
        /// same outcomes and the same state as applying the whole log to a fresh partition,
        /// client sessions included: a retry is answered the same way on both sides.
        #[test]
        fn replaying_after_a_snapshot_equals_applying_from_scratch(
            raw in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 0..400),
            cut in any::<prop::sample::Index>(),
        ) {
            let events = with_sessions(raw);
            let cut = cut.index(events.len() + 1);
            let mut whole = PartitionState::new(PartitionId(5));
            let expected: Vec<Outcome> = events.iter().map(|e| apply(&mut whole, e)).collect();

            let mut before = PartitionState::new(PartitionId(5));
            for event in &events[..cut] {
                apply(&mut before, event);
            }
            let snapshot = round_trip(&before.export());
            prop_assert_eq!(snapshot.partition, 5);
            let mut resumed = PartitionState::import(&snapshot).unwrap();
            prop_assert_eq!(format!("{resumed:?}"), format!("{before:?}"));
            for (event, outcome) in events[cut..].iter().zip(&expected[cut..]) {
                prop_assert_eq!(&apply(&mut resumed, event), outcome);
            }
            prop_assert_eq!(format!("{resumed:?}"), format!("{whole:?}"));
            prop_assert_eq!(resumed.export(), whole.export());
        }
    }

    fn busy_partition() -> PartitionState {
        let mut state = PartitionState::new(PartitionId(1));
        let mut seed = 7u32;
        for n in 0..3000u32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let raw = (
                (seed >> 8) as u8,
                (seed >> 16) as u8,
                (seed >> 24) as u8,
                n as u8,
            );
            apply(&mut state, &event(raw));
        }
        state
    }

    #[test]
    fn a_snapshot_that_breaks_a_limit_is_refused_not_imported() {
        let good = busy_partition().export();
        assert!(good.hunts.iter().any(|h| h.players.len() > 10));
        good.check().unwrap();
        let hunt_with_players = good.hunts.iter().position(|h| h.players.len() > 1).unwrap();

        let mut shared_slot = good.clone();
        if shared_slot.hunts.len() < 2 {
            shared_slot.hunts.push(shared_slot.hunts[0].clone());
            shared_slot.hunts[1].id += 100;
        }
        shared_slot.hunts[1].slot = shared_slot.hunts[0].slot;
        let mut twice = good.clone();
        let first = twice.hunts[hunt_with_players].players[0].clone();
        twice.hunts[hunt_with_players].players.push(first);
        let mut counters = good.clone();
        counters.hunts[hunt_with_players].players[0].wrong_codes = Some(vec![1; 65]);
        let mut stranger = good.clone();
        stranger.hunts[hunt_with_players]
            .leaderboard
            .push(RankSnapshot {
                player: 999,
                score: 1,
            });
        let mut off_earth = good.clone();
        off_earth.hunts[0].waypoints[0].lat_e7 = 900_000_001;
        let mut too_many = good;
        let template = too_many.hunts[0].clone();
        too_many.hunts = (0..=HUNTS_PER_PARTITION_MAX as u32)
            .map(|slot| HuntSnapshot {
                slot,
                id: u64::from(slot),
                ..template.clone()
            })
            .collect();
        for (name, bad) in [
            ("shared slot", shared_slot),
            ("player twice", twice),
            ("counters", counters),
            ("unknown ranked player", stranger),
            ("waypoint off the earth", off_earth),
            ("too many hunts", too_many),
        ] {
            assert!(PartitionState::import(&bad).is_err(), "{name}");
        }
    }

    #[test]
    fn a_retry_after_a_restart_from_a_snapshot_is_still_a_duplicate() {
        let of_session = |mut event: Event, seq| {
            event.client_session = 9;
            event.client_seq = seq;
            event
        };
        let create = of_session(event((0, 0, 1, 0)), 1);
        let join = of_session(event((1, 0, 2, 0)), 2);
        let mut state = PartitionState::new(PartitionId(1));
        assert_eq!(apply(&mut state, &create), Outcome::Accepted { score: 0 });
        assert_eq!(apply(&mut state, &join), Outcome::Accepted { score: 0 });
        let snapshot = round_trip(&state.export());
        assert!(snapshot.sessions.is_some());
        let mut resumed = PartitionState::import(&snapshot).unwrap();
        assert_eq!(resumed.export(), state.export());
        let duplicate = Outcome::Duplicate {
            original: OutcomeClass::Accepted,
        };
        assert_eq!(apply(&mut resumed, &join), duplicate);
        assert_eq!(apply(&mut resumed, &create), duplicate);
    }

    #[test]
    fn the_largest_partition_fits_the_snapshot_archive_limit() {
        use crate::constants::SNAPSHOT_ARCHIVE_BYTES_MAX;
        let mut state = PartitionState::new(PartitionId(0));
        let full = HuntSpec {
            waypoints: (0..WAYPOINTS_PER_HUNT_MAX)
                .map(|_| WaypointSpec {
                    position: PARIS,
                    radius_m: 10,
                    points: 1,
                })
                .collect(),
            treasures: (0..TREASURES_PER_HUNT_MAX)
                .map(|_| TreasureSpec {
                    code_hash: 1,
                    points: 1,
                })
                .collect(),
        };
        let at = |hunt: u64, player: u64, kind: EventKind| Event {
            hunt: HuntId(hunt),
            player: PlayerId(player),
            client_session: 0,
            client_seq: 0,
            client_ts: 0,
            kind,
        };
        for hunt in 0..HUNTS_PER_PARTITION_MAX as u64 {
            let created = apply(
                &mut state,
                &at(hunt, 0, EventKind::CreateHunt(full.clone())),
            );
            assert_eq!(created, Outcome::Accepted { score: 0 });
            for player in 0..PLAYERS_PER_HUNT_MAX as u64 {
                let id = u64::MAX - player;
                apply(&mut state, &at(hunt, id, EventKind::Join));
                let claim = EventKind::Claim {
                    treasure: TreasureId(0),
                    code: "x".into(),
                };
                apply(&mut state, &at(hunt, id, claim));
                let check_in = EventKind::CheckIn { position: PARIS };
                apply(&mut state, &at(hunt, id, check_in));
            }
        }
        // Every session the table holds, each with a full window (of rejected joins).
        for session in 1..=SESSIONS_PER_PARTITION_MAX as u64 {
            for seq in 0..SESSION_WINDOW_EVENTS_MAX as u64 {
                let join = Event {
                    client_session: session,
                    client_seq: u64::MAX - seq,
                    ..at(0, u64::MAX, EventKind::Join)
                };
                apply(&mut state, &join);
            }
        }
        let snapshot = state.export();
        let sessions = snapshot.sessions.as_ref().expect("sessions wrote");
        assert_eq!(sessions.sessions.len(), SESSIONS_PER_PARTITION_MAX);
        assert_eq!(snapshot.hunts.len(), HUNTS_PER_PARTITION_MAX);
        assert!(snapshot.hunts.iter().all(|h| {
            h.players.len() == PLAYERS_PER_HUNT_MAX
                && h.players.iter().all(|p| p.wrong_codes.is_some())
                && h.leaderboard.len() == LEADERBOARD_TOP_K_MAX
        }));
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snapshot).unwrap();
        assert!(
            bytes.len() <= SNAPSHOT_ARCHIVE_BYTES_MAX,
            "{} bytes, SNAPSHOT_ARCHIVE_BYTES_MAX is {SNAPSHOT_ARCHIVE_BYTES_MAX}",
            bytes.len()
        );
    }
}
