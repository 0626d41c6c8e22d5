//! The clients of a moves run: hunts, the events each client session sends, and the ledger of
//! what each event's client was told.
//!
//! Every session plays one hunt (so all its events go to one partition) as one player, with
//! its own `client_session`, so the partition's session table (part of every snapshot a move
//! streams) remembers which of its events it applied, in which order and how they went: the
//! ground truth the oracles compare what clients were told with. A session sends at most
//! `SESSION_WINDOW_EVENTS_MAX` events that change state, so that table forgets none of them.
//!
//! Waypoints lie a degree of latitude apart, so a check-in scores exactly the waypoint it
//! names; every session of a hunt claims every treasure with the right code, so treasures are
//! contended. Plain values owned by the run (`sim::moves::world`).

use crate::constants::SESSION_WINDOW_EVENTS_MAX;
use crate::core::ids::{HuntId, PlayerId, TreasureId};
use crate::core::message::{
    Event, EventKind, HuntSpec, Outcome, Position, TreasureSpec, WaypointSpec, claim_code_hash,
};
use crate::core::rng::Rng;

/// Waypoints of every hunt.
pub const WAYPOINTS: usize = 12;
/// Treasures of every hunt.
pub const TREASURES: usize = 2;
/// Leaderboard reads each session makes.
const BOARDS: usize = 6;

/// What an event does, as the model rebuilding a partition's state needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Create,
    Join,
    CheckIn(usize),
    Claim(usize),
    Board,
}

impl Kind {
    /// Whether the partition applies it and remembers it (a leaderboard is read-only).
    pub fn changes_state(self) -> bool {
        self != Kind::Board
    }
}

/// Points of waypoint `w`.
pub fn waypoint_points(w: usize) -> u32 {
    10 * (w as u32 + 1)
}

/// Points of treasure `t`.
pub fn treasure_points(t: usize) -> u32 {
    100 * (t as u32 + 1)
}

fn code(t: usize) -> String {
    format!("code-{t}")
}

fn waypoint_position(w: usize) -> Position {
    Position {
        lat_e7: w as i32 * 10_000_000,
        lon_e7: 0,
    }
}

/// The spec every hunt is created with.
fn hunt_spec() -> HuntSpec {
    HuntSpec {
        waypoints: (0..WAYPOINTS)
            .map(|w| WaypointSpec {
                position: waypoint_position(w),
                radius_m: 50,
                points: waypoint_points(w),
            })
            .collect(),
        treasures: (0..TREASURES)
            .map(|t| TreasureSpec {
                code_hash: claim_code_hash(code(t).as_bytes()),
                points: treasure_points(t),
            })
            .collect(),
    }
}

/// The hunt of hunt index `h`.
pub fn hunt_id(h: usize) -> HuntId {
    HuntId(1_000 + h as u64)
}

/// One session's plan: its hunt and player, and its events in the order it sends them
/// (`client_seq` is the index plus one).
pub struct Session {
    pub id: u64,
    pub hunt: usize,
    pub player: PlayerId,
    pub organiser: bool,
    pub events: Vec<(Event, Kind)>,
}

/// The sessions of a run: `sessions_per_hunt` for each of `hunts` hunts; the first of each
/// hunt creates it.
pub fn sessions(hunts: usize, sessions_per_hunt: usize, rng: &mut Rng) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(hunts * sessions_per_hunt);
    for h in 0..hunts {
        for s in 0..sessions_per_hunt {
            let index = sessions.len();
            let organiser = s == 0;
            let mut kinds = Vec::new();
            if organiser {
                kinds.push(Kind::Create);
            }
            kinds.push(Kind::Join);
            let mut rest: Vec<Kind> = (0..WAYPOINTS)
                .map(Kind::CheckIn)
                .chain((0..TREASURES).map(Kind::Claim))
                .chain((0..BOARDS).map(|_| Kind::Board))
                .collect();
            for i in (1..rest.len()).rev() {
                rest.swap(i, rng.below(i as u64 + 1) as usize);
            }
            kinds.extend(rest);
            let id = index as u64 + 1;
            let player = PlayerId(id);
            let events = kinds
                .into_iter()
                .enumerate()
                .map(|(i, kind)| (event(h, player, id, i as u64 + 1, kind), kind))
                .collect();
            sessions.push(Session {
                id,
                hunt: h,
                player,
                organiser,
                events,
            });
        }
    }
    sessions
}

// Every session's state-changing events fit the window its partition remembers.
const _: () = assert!(2 + WAYPOINTS + TREASURES <= SESSION_WINDOW_EVENTS_MAX);

fn event(hunt: usize, player: PlayerId, session: u64, seq: u64, kind: Kind) -> Event {
    let kind = match kind {
        Kind::Create => EventKind::CreateHunt(hunt_spec()),
        Kind::Join => EventKind::Join,
        Kind::CheckIn(w) => EventKind::CheckIn {
            position: waypoint_position(w),
        },
        Kind::Claim(t) => EventKind::Claim {
            treasure: TreasureId(t as u32),
            code: code(t),
        },
        Kind::Board => EventKind::Leaderboard { top_k: 5 },
    };
    Event {
        hunt: hunt_id(hunt),
        player,
        client_session: session,
        client_seq: seq,
        client_ts: 0,
        kind,
    }
}

/// What an event's client was told, in the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Not sent yet.
    Unsent,
    /// Sent, no final answer yet.
    Pending,
    /// Its final reply.
    Answered(Outcome),
    /// Its connection died with the node before the reply came: applied or not, unknown.
    Lost,
    /// Its owner's node could not be reached: not sent.
    Refused,
}

/// Every event's fate, by session and `client_seq - 1`, and the replies that came for events
/// already answered.
pub struct Ledger {
    pub fates: Vec<Vec<Fate>>,
    pub extra_replies: Vec<(usize, u64, Outcome)>,
}

impl Ledger {
    pub fn new(sessions: &[Session]) -> Ledger {
        Ledger {
            fates: sessions
                .iter()
                .map(|s| vec![Fate::Unsent; s.events.len()])
                .collect(),
            extra_replies: Vec::new(),
        }
    }

    pub fn set(&mut self, session: usize, seq: u64, fate: Fate) {
        self.fates[session][seq as usize - 1] = fate;
    }

    pub fn get(&self, session: usize, seq: u64) -> &Fate {
        &self.fates[session][seq as usize - 1]
    }
}

/// Whether `outcome` says the event was applied (whatever the state machine made of it).
pub fn applied(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Accepted { .. }
            | Outcome::Rejected { .. }
            | Outcome::Claimed { .. }
            | Outcome::AlreadyClaimed { .. }
            | Outcome::Leaderboard { .. }
    )
}
