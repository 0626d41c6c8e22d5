//! The correctness oracles every run is checked against, whatever the strategy and the load:
//!
//! - **order**: each partition applies a session's events in the order the session sent them
//!   (a session plays one hunt, so one partition);
//! - **no event lost or duplicated**: every event sent ends exactly once, either applied once
//!   or refused once with `Busy`, and its client gets exactly one reply;
//! - **credits conserved**: once the run has drained, every shard's pool holds nothing and
//!   gave back exactly what it took, never more;
//! - **one winner**: each treasure is won at most once, everybody who later presents its code
//!   is told that winner, and the winner the state machine holds at the end is that one;
//! - **drained**: the run came to rest within `SIM_DRAIN_MS_MAX` of its clients stopping.
//!
//! The oracles watch the outcomes the real state machine returns; they never decide them.

use std::fmt;

use serde::Serialize;

use crate::constants::SIM_VIOLATION_EXAMPLES_MAX;
use crate::core::ids::{PlayerId, TreasureId};
use crate::core::message::Outcome;

/// The properties a run must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Oracle {
    Order,
    LostOrDuplicated,
    Credits,
    OneWinner,
    Drained,
}

impl Oracle {
    pub const ALL: [Oracle; 5] = [
        Oracle::Order,
        Oracle::LostOrDuplicated,
        Oracle::Credits,
        Oracle::OneWinner,
        Oracle::Drained,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Oracle::Order => "order",
            Oracle::LostOrDuplicated => "lost-or-duplicated",
            Oracle::Credits => "credits",
            Oracle::OneWinner => "one-winner",
            Oracle::Drained => "drained",
        }
    }
}

impl fmt::Display for Oracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one oracle found wrong in a run: how often, and the first few cases in words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    pub count: u64,
    pub examples: Vec<String>,
}

/// What every oracle found in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    pub order: Violations,
    pub lost_or_duplicated: Violations,
    pub credits: Violations,
    pub one_winner: Violations,
    pub drained: Violations,
}

impl Findings {
    /// What `oracle` found.
    pub fn of(&self, oracle: Oracle) -> &Violations {
        match oracle {
            Oracle::Order => &self.order,
            Oracle::LostOrDuplicated => &self.lost_or_duplicated,
            Oracle::Credits => &self.credits,
            Oracle::OneWinner => &self.one_winner,
            Oracle::Drained => &self.drained,
        }
    }

    fn of_mut(&mut self, oracle: Oracle) -> &mut Violations {
        match oracle {
            Oracle::Order => &mut self.order,
            Oracle::LostOrDuplicated => &mut self.lost_or_duplicated,
            Oracle::Credits => &mut self.credits,
            Oracle::OneWinner => &mut self.one_winner,
            Oracle::Drained => &mut self.drained,
        }
    }

    /// Records a violation; `detail` is only written out for the first few.
    pub fn report(&mut self, oracle: Oracle, detail: impl FnOnce() -> String) {
        let violations = self.of_mut(oracle);
        violations.count += 1;
        if violations.examples.len() < SIM_VIOLATION_EXAMPLES_MAX {
            violations.examples.push(detail());
        }
    }

    /// The oracles that found something.
    pub fn failed(&self) -> Vec<Oracle> {
        Oracle::ALL
            .into_iter()
            .filter(|&oracle| self.of(oracle).count > 0)
            .collect()
    }

    pub fn is_clean(&self) -> bool {
        self.failed().is_empty()
    }
}

/// The order oracle: the last `client_seq` applied for each session.
pub struct OrderOracle {
    last_applied: Vec<Option<u64>>,
}

impl OrderOracle {
    pub fn new(sessions: usize) -> OrderOracle {
        OrderOracle {
            last_applied: vec![None; sessions],
        }
    }

    /// Called when an event of `session` is applied, in the order the partition applies them.
    pub fn on_apply(&mut self, findings: &mut Findings, session: u32, seq: u64, partition: u32) {
        let last = &mut self.last_applied[session as usize];
        if let Some(before) = *last {
            if seq <= before {
                findings.report(Oracle::Order, || {
                    format!(
                        "partition {partition} applied event #{seq} of session {session} after \
                         its event #{before}"
                    )
                });
            }
        }
        *last = Some(last.map_or(seq, |before| before.max(seq)));
    }
}

/// How one event ended, as the ledger saw it.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFate {
    pub applied: u8,
    pub refused: u8,
    pub replies_received: u8,
}

impl EventFate {
    /// Checks that the event ended exactly once and its client heard of it exactly once.
    pub fn check(&self, findings: &mut Findings, event: usize, session: u32, seq: u64) {
        let ends = u32::from(self.applied) + u32::from(self.refused);
        if ends == 1 && self.replies_received == 1 {
            return;
        }
        findings.report(Oracle::LostOrDuplicated, || {
            let what = if ends == 0 || self.replies_received == 0 {
                "lost"
            } else {
                "duplicated"
            };
            format!(
                "event {event} (session {session}, #{seq}) {what}: applied {} times, refused {} \
                 times, {} replies reached its client",
                self.applied, self.refused, self.replies_received
            )
        });
    }
}

/// The winner oracle: who won each treasure of each hunt, as the replies said.
pub struct WinnerOracle {
    /// Indexed by hunt, then treasure.
    winners: Vec<Vec<Option<PlayerId>>>,
}

impl WinnerOracle {
    pub fn new(hunts: usize, treasures_per_hunt: usize) -> WinnerOracle {
        WinnerOracle {
            winners: vec![vec![None; treasures_per_hunt]; hunts],
        }
    }

    /// Called with the outcome of every claim, in the order its partition applied them.
    pub fn on_claim(
        &mut self,
        findings: &mut Findings,
        hunt: usize,
        treasure: TreasureId,
        player: PlayerId,
        outcome: &Outcome,
    ) {
        let Some(slot) = self.winners[hunt].get_mut(treasure.0 as usize) else {
            return;
        };
        match (outcome, *slot) {
            (Outcome::Claimed { .. }, None) => *slot = Some(player),
            (Outcome::Claimed { .. }, Some(first)) => {
                findings.report(Oracle::OneWinner, || {
                    format!(
                        "treasure {} of hunt {hunt} won by player {player} after player {first} \
                         had won it",
                        treasure.0
                    )
                });
            }
            (Outcome::AlreadyClaimed { winner }, first) if Some(*winner) != first => {
                findings.report(Oracle::OneWinner, || {
                    format!(
                        "player {player} told treasure {} of hunt {hunt} was won by {winner}, \
                         but the replies named {first:?}",
                        treasure.0
                    )
                });
            }
            _ => {}
        }
    }

    /// Compares the replies' winners with the winners the state machines hold at the end.
    pub fn check_final(
        &self,
        findings: &mut Findings,
        winner_in_state: impl Fn(usize, TreasureId) -> Option<PlayerId>,
    ) {
        for (hunt, treasures) in self.winners.iter().enumerate() {
            for (index, replied) in treasures.iter().enumerate() {
                let treasure = TreasureId(index as u32);
                let held = winner_in_state(hunt, treasure);
                if held != *replied {
                    findings.report(Oracle::OneWinner, || {
                        format!(
                            "treasure {index} of hunt {hunt}: the state machine holds winner \
                             {held:?}, the replies named {replied:?}"
                        )
                    });
                }
            }
        }
    }

    /// Treasures somebody won.
    pub fn claimed(&self) -> u64 {
        self.winners
            .iter()
            .flatten()
            .filter(|w| w.is_some())
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_catches_a_session_going_backwards() {
        let mut findings = Findings::default();
        let mut oracle = OrderOracle::new(2);
        oracle.on_apply(&mut findings, 0, 0, 7);
        oracle.on_apply(&mut findings, 1, 5, 7);
        oracle.on_apply(&mut findings, 0, 2, 7);
        assert!(findings.is_clean());
        oracle.on_apply(&mut findings, 0, 1, 7);
        oracle.on_apply(&mut findings, 0, 2, 7);
        assert_eq!(findings.failed(), vec![Oracle::Order]);
        assert_eq!(findings.order.count, 2);
    }

    #[test]
    fn the_ledger_tells_lost_from_duplicated() {
        let mut findings = Findings::default();
        let fine = EventFate {
            applied: 1,
            refused: 0,
            replies_received: 1,
        };
        fine.check(&mut findings, 0, 0, 0);
        let busy = EventFate {
            applied: 0,
            refused: 1,
            replies_received: 1,
        };
        busy.check(&mut findings, 1, 0, 1);
        assert!(findings.is_clean());
        EventFate::default().check(&mut findings, 2, 0, 2);
        let twice = EventFate {
            applied: 2,
            refused: 0,
            replies_received: 2,
        };
        twice.check(&mut findings, 3, 0, 3);
        let examples = &findings.lost_or_duplicated.examples;
        assert!(examples[0].contains("lost") && examples[1].contains("duplicated"));
    }

    #[test]
    fn a_second_winner_and_a_wrong_winner_name_are_caught() {
        let mut findings = Findings::default();
        let mut oracle = WinnerOracle::new(1, 2);
        let won = Outcome::Claimed {
            points: 1,
            score: 1,
        };
        let told = |winner| Outcome::AlreadyClaimed {
            winner: PlayerId(winner),
        };
        oracle.on_claim(&mut findings, 0, TreasureId(0), PlayerId(1), &won);
        oracle.on_claim(&mut findings, 0, TreasureId(0), PlayerId(2), &told(1));
        assert!(findings.is_clean());
        oracle.on_claim(&mut findings, 0, TreasureId(0), PlayerId(3), &won);
        oracle.on_claim(&mut findings, 0, TreasureId(1), PlayerId(3), &told(9));
        assert_eq!(findings.one_winner.count, 2);
        oracle.check_final(&mut findings, |_, t| (t.0 == 0).then_some(PlayerId(1)));
        assert_eq!(findings.one_winner.count, 2, "the final state agrees");
        oracle.check_final(&mut findings, |_, _| None);
        assert_eq!(findings.one_winner.count, 3);
        assert_eq!(oracle.claimed(), 1);
    }

    #[test]
    fn findings_keep_a_bounded_number_of_examples() {
        let mut findings = Findings::default();
        for k in 0..100 {
            findings.report(Oracle::Credits, || format!("case {k}"));
        }
        assert_eq!(findings.credits.count, 100);
        assert_eq!(findings.credits.examples.len(), SIM_VIOLATION_EXAMPLES_MAX);
    }
}
