//! The correctness oracles every run is checked against, whatever the strategy and the load.
//! They watch what trove's real `ShardCore`s hand out (the replies their connections write)
//! and what the cores say of themselves (their credit pools, counters and stop protocol);
//! they never decide an outcome.
//!
//! - **order**: a session's applied events are answered in the order the session sent them
//!   (a session plays one hunt, so one partition, and every path back is FIFO);
//! - **no event lost or duplicated**: every event sent is answered exactly once, applied or
//!   refused with `Busy`, and the cores' own counters applied exactly the events whose clients
//!   were told so;
//! - **credits conserved**: once the run has drained, every core holds no socket or mesh
//!   credit and its pools agree with its connections (`ShardCore::check_credit`), and every
//!   modelled receive queue gave back exactly what it took;
//! - **one winner**: each treasure is won at most once, everybody told it was won already is
//!   told that winner, and the winner the state machine holds at the end is that one;
//! - **drained**: the run came to rest within `SIM_DRAIN_MS_MAX` of its clients stopping, and
//!   every core, once stopped, drained.
//!
//! The live-moves simulation (`sim::moves`) checks four more:
//! - **double-served**: at no sampled instant do cores of two running nodes both apply events
//!   of one partition;
//! - **final-state**: at the end, each partition's owner holds it, serving, and its state
//!   (scores, winners, the sessions it remembers) equals the one rebuilt from what clients
//!   were told;
//! - **liveness**: a move whose source and target stay up flips within a bound;
//! - **protocol**: no core refused a link or move frame of another as malformed.

use std::fmt;

use serde::Serialize;

use crate::constants::SIM_VIOLATION_EXAMPLES_MAX;
use crate::core::ids::{PlayerId, TreasureId};

/// The properties a run must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Oracle {
    Order,
    LostOrDuplicated,
    Credits,
    OneWinner,
    Drained,
    DoubleServed,
    FinalState,
    Liveness,
    Protocol,
}

impl Oracle {
    pub const ALL: [Oracle; 9] = [
        Oracle::Order,
        Oracle::LostOrDuplicated,
        Oracle::Credits,
        Oracle::OneWinner,
        Oracle::Drained,
        Oracle::DoubleServed,
        Oracle::FinalState,
        Oracle::Liveness,
        Oracle::Protocol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Oracle::Order => "order",
            Oracle::LostOrDuplicated => "lost-or-duplicated",
            Oracle::Credits => "credits",
            Oracle::OneWinner => "one-winner",
            Oracle::Drained => "drained",
            Oracle::DoubleServed => "double-served",
            Oracle::FinalState => "final-state",
            Oracle::Liveness => "liveness",
            Oracle::Protocol => "protocol",
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
    pub double_served: Violations,
    pub final_state: Violations,
    pub liveness: Violations,
    pub protocol: Violations,
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
            Oracle::DoubleServed => &self.double_served,
            Oracle::FinalState => &self.final_state,
            Oracle::Liveness => &self.liveness,
            Oracle::Protocol => &self.protocol,
        }
    }

    fn of_mut(&mut self, oracle: Oracle) -> &mut Violations {
        match oracle {
            Oracle::Order => &mut self.order,
            Oracle::LostOrDuplicated => &mut self.lost_or_duplicated,
            Oracle::Credits => &mut self.credits,
            Oracle::OneWinner => &mut self.one_winner,
            Oracle::Drained => &mut self.drained,
            Oracle::DoubleServed => &mut self.double_served,
            Oracle::FinalState => &mut self.final_state,
            Oracle::Liveness => &mut self.liveness,
            Oracle::Protocol => &mut self.protocol,
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

/// What a reply told its client, as far as the oracles care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Applied (any outcome of the state machine but those below).
    Applied,
    /// Applied: the claimant won the treasure.
    Won,
    /// Applied: the treasure was won before, by this player.
    AlreadyWon(PlayerId),
    /// Not applied: the shard was out of credit (fail-fast mode).
    Busy,
    /// A reply no run should see (`Moved`, an error).
    Unexpected(&'static str),
}

impl Answer {
    pub fn applied(self) -> bool {
        matches!(self, Answer::Applied | Answer::Won | Answer::AlreadyWon(_))
    }
}

/// How one event ended, as its client heard.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFate {
    pub applied: u8,
    pub refused: u8,
    pub replies_received: u8,
    /// The first reply that was neither applied nor `Busy`.
    pub unexpected: Option<&'static str>,
}

impl EventFate {
    pub fn on_answer(&mut self, answer: Answer) {
        self.replies_received = self.replies_received.saturating_add(1);
        match answer {
            Answer::Busy => self.refused = self.refused.saturating_add(1),
            Answer::Unexpected(what) => {
                self.unexpected.get_or_insert(what);
            }
            _ => self.applied = self.applied.saturating_add(1),
        }
    }

    /// Checks that the event ended exactly once and its client heard of it exactly once.
    pub fn check(&self, findings: &mut Findings, event: usize, session: u32, seq: u64) {
        let ends = u32::from(self.applied) + u32::from(self.refused);
        if ends == 1 && self.replies_received == 1 && self.unexpected.is_none() {
            return;
        }
        findings.report(Oracle::LostOrDuplicated, || {
            if let Some(what) = self.unexpected {
                return format!("event {event} (session {session}, #{seq}) was answered {what}");
            }
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

/// The winner oracle: who was told what about each treasure of each hunt. Replies reach
/// their clients in no particular order across sessions, so it only collects them, and
/// judges at the end.
pub struct WinnerOracle {
    /// Indexed by hunt, then treasure.
    treasures: Vec<Vec<TreasureAnswers>>,
}

/// What the replies said of one treasure.
#[derive(Clone, Debug, Default)]
struct TreasureAnswers {
    /// Players told they won it, in the order their replies arrived.
    won_by: Vec<PlayerId>,
    /// Players told it was already won, and the winner they were told of.
    told: Vec<(PlayerId, PlayerId)>,
}

impl WinnerOracle {
    pub fn new(hunts: usize, treasures_per_hunt: usize) -> WinnerOracle {
        WinnerOracle {
            treasures: vec![vec![TreasureAnswers::default(); treasures_per_hunt]; hunts],
        }
    }

    /// Called with the answer to every applied claim of `player` for `treasure`.
    pub fn on_claim(
        &mut self,
        hunt: usize,
        treasure: TreasureId,
        player: PlayerId,
        answer: Answer,
    ) {
        let Some(answers) = self.treasures[hunt].get_mut(treasure.0 as usize) else {
            return;
        };
        match answer {
            Answer::Won => answers.won_by.push(player),
            Answer::AlreadyWon(winner) => answers.told.push((player, winner)),
            _ => {}
        }
    }

    /// Checks the replies against each other and against the winners the state machines
    /// hold at the end.
    pub fn check_final(
        &self,
        findings: &mut Findings,
        winner_in_state: impl Fn(usize, TreasureId) -> Option<PlayerId>,
    ) {
        for (hunt, treasures) in self.treasures.iter().enumerate() {
            for (index, answers) in treasures.iter().enumerate() {
                let winner = answers.won_by.first().copied();
                if let [first, second, ..] = answers.won_by[..] {
                    findings.report(Oracle::OneWinner, || {
                        format!(
                            "treasure {index} of hunt {hunt} won by player {second} after player \
                             {first} had won it"
                        )
                    });
                }
                for &(player, told) in &answers.told {
                    if Some(told) != winner {
                        findings.report(Oracle::OneWinner, || {
                            format!(
                                "player {player} told treasure {index} of hunt {hunt} was won by \
                                 {told}, but the replies named {winner:?}"
                            )
                        });
                    }
                }
                let held = winner_in_state(hunt, TreasureId(index as u32));
                if held != winner {
                    findings.report(Oracle::OneWinner, || {
                        format!(
                            "treasure {index} of hunt {hunt}: the state machine holds winner \
                             {held:?}, the replies named {winner:?}"
                        )
                    });
                }
            }
        }
    }

    /// Treasures somebody won.
    pub fn claimed(&self) -> u64 {
        self.treasures
            .iter()
            .flatten()
            .filter(|answers| !answers.won_by.is_empty())
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
    fn the_ledger_tells_lost_from_duplicated_and_unexpected() {
        let mut findings = Findings::default();
        let fate = |answers: &[Answer]| {
            let mut fate = EventFate::default();
            answers.iter().for_each(|&answer| fate.on_answer(answer));
            fate
        };
        fate(&[Answer::Applied]).check(&mut findings, 0, 0, 0);
        fate(&[Answer::Busy]).check(&mut findings, 1, 0, 1);
        assert!(findings.is_clean());
        fate(&[]).check(&mut findings, 2, 0, 2);
        fate(&[Answer::Won, Answer::Applied]).check(&mut findings, 3, 0, 3);
        fate(&[Answer::Unexpected("moved")]).check(&mut findings, 4, 0, 4);
        let examples = &findings.lost_or_duplicated.examples;
        assert!(examples[0].contains("lost") && examples[1].contains("duplicated"));
        assert!(examples[2].contains("answered moved"), "{examples:?}");
    }

    #[test]
    fn a_second_winner_and_a_wrong_winner_name_are_caught_in_any_order() {
        let mut findings = Findings::default();
        let mut oracle = WinnerOracle::new(1, 2);
        // The loser's reply may reach its client before the winner's.
        oracle.on_claim(
            0,
            TreasureId(0),
            PlayerId(2),
            Answer::AlreadyWon(PlayerId(1)),
        );
        oracle.on_claim(0, TreasureId(0), PlayerId(1), Answer::Won);
        oracle.check_final(&mut findings, |_, t| (t.0 == 0).then_some(PlayerId(1)));
        assert!(findings.is_clean(), "{findings:?}");
        assert_eq!(oracle.claimed(), 1);
        oracle.on_claim(0, TreasureId(0), PlayerId(3), Answer::Won);
        oracle.on_claim(
            0,
            TreasureId(1),
            PlayerId(3),
            Answer::AlreadyWon(PlayerId(9)),
        );
        oracle.check_final(&mut findings, |_, t| (t.0 == 0).then_some(PlayerId(1)));
        assert_eq!(findings.one_winner.count, 2, "{findings:?}");
        let mut forgotten = Findings::default();
        oracle.check_final(&mut forgotten, |_, _| None);
        assert_eq!(forgotten.one_winner.count, 3, "{forgotten:?}");
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
