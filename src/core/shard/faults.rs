//! Bugs put into the shard protocol on purpose, so that a test can show that the simulator's
//! oracles catch a bug in trove's own `ShardCore` and not only in a model of it.
//!
//! Off unless a test turns one on through [`ShardConfig::faults`](crate::core::shard::ShardConfig);
//! a node never does. Each fault costs the data path one branch on a field when it is off.
//! Shard-local, like the core.

use crate::core::credit::Credit;

/// The faults a test may inject. All zero (off) by default.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every k-th write that completes, the shard's socket budget is not given back one event
    /// of the credit its replies held (0: never). The connection's own share is returned, so
    /// the two pools disagree, as a forgotten release in the write path would leave them.
    pub leak_credit_every_writes: u64,
}

/// The faults of one shard and what they have counted so far.
#[derive(Debug, Default)]
pub(super) struct FaultState {
    faults: Faults,
    writes_completed: u64,
}

impl FaultState {
    pub fn new(faults: Faults) -> FaultState {
        FaultState {
            faults,
            writes_completed: 0,
        }
    }

    /// The credit to give back to the shard's pool for a completed write whose replies held
    /// `credit`: all of it, unless the leak fault keeps one event's worth this time.
    #[inline]
    pub fn credit_to_return(&mut self, credit: Credit) -> Credit {
        let every = self.faults.leak_credit_every_writes;
        if every == 0 || credit.events == 0 {
            return credit;
        }
        self.writes_completed += 1;
        if self.writes_completed % every != 0 {
            return credit;
        }
        credit.minus(Credit::new(1, credit.bytes / credit.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_keeps_one_event_of_every_kth_write_and_nothing_when_off() {
        let write = Credit::new(4, 400);
        let mut off = FaultState::default();
        assert!((0..10).all(|_| off.credit_to_return(write) == write));
        let mut leaky = FaultState::new(Faults {
            leak_credit_every_writes: 3,
        });
        let returned: Vec<Credit> = (0..6).map(|_| leaky.credit_to_return(write)).collect();
        let kept = Credit::new(3, 300);
        assert_eq!(returned, vec![write, write, kept, write, write, kept]);
    }
}
