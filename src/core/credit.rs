//! Credit accounting for back-pressure, as a pure type.
//!
//! A [`CreditPool`] is a budget of work in flight, counted in events and in bytes. Work takes
//! credit before it is accepted and gives it back when it is done; with no credit left,
//! whoever wants to add work waits (or, in fail-fast mode, answers `Busy`). Credits are never
//! created or lost: at every moment `held + available == capacity`, which the pool asserts
//! on both sides of every change.
//!
//! A pool belongs to one shard (its socket budget, a connection's share of it, or the share of
//! a peer shard's mesh budget that this shard may use) and is never shared between cores.

/// An amount of work: events and the bytes they occupy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credit {
    pub events: u32,
    pub bytes: u32,
}

impl Credit {
    pub const ZERO: Credit = Credit {
        events: 0,
        bytes: 0,
    };

    pub const fn new(events: u32, bytes: u32) -> Credit {
        Credit { events, bytes }
    }

    /// True if `self` is at least `other` in both dimensions.
    pub fn covers(self, other: Credit) -> bool {
        self.events >= other.events && self.bytes >= other.bytes
    }

    /// `self + other`.
    pub fn plus(self, other: Credit) -> Credit {
        Credit {
            events: self.events + other.events,
            bytes: self.bytes + other.bytes,
        }
    }

    /// `self - other`; `other` must not exceed `self` in either dimension.
    pub fn minus(self, other: Credit) -> Credit {
        Credit {
            events: self.events - other.events,
            bytes: self.bytes - other.bytes,
        }
    }
}

/// What [`CreditPool::try_acquire`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The credit is now held by the caller.
    Granted,
    /// Not enough is available now; it will be once enough is released.
    Wait,
    /// More than the whole capacity: it can never be granted.
    Never,
}

/// A budget of work in flight. All-or-nothing: a request is granted whole or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditPool {
    capacity: Credit,
    held: Credit,
    /// The most ever held at once: the high-water mark a test or a metric can check.
    held_peak: Credit,
}

impl CreditPool {
    pub fn new(capacity: Credit) -> CreditPool {
        CreditPool {
            capacity,
            held: Credit::ZERO,
            held_peak: Credit::ZERO,
        }
    }

    pub fn capacity(&self) -> Credit {
        self.capacity
    }

    pub fn held(&self) -> Credit {
        self.held
    }

    pub fn available(&self) -> Credit {
        self.capacity.minus(self.held)
    }

    pub fn held_peak(&self) -> Credit {
        self.held_peak
    }

    /// True if nothing is held.
    pub fn is_idle(&self) -> bool {
        self.held == Credit::ZERO
    }

    /// Takes `want` if all of it is available.
    pub fn try_acquire(&mut self, want: Credit) -> Acquire {
        if !self.capacity.covers(want) {
            return Acquire::Never;
        }
        if !self.available().covers(want) {
            return Acquire::Wait;
        }
        self.held = self.held.plus(want);
        self.held_peak.events = self.held_peak.events.max(self.held.events);
        self.held_peak.bytes = self.held_peak.bytes.max(self.held.bytes);
        assert!(
            self.capacity.covers(self.held),
            "credit held beyond capacity"
        );
        Acquire::Granted
    }

    /// Gives back credit taken before. Giving back more than is held is a bug in the caller.
    pub fn release(&mut self, credit: Credit) {
        assert!(
            self.held.covers(credit),
            "released {credit:?} but only {:?} is held",
            self.held
        );
        self.held = self.held.minus(credit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grants_wait_and_never() {
        let mut pool = CreditPool::new(Credit::new(10, 100));
        assert_eq!(pool.try_acquire(Credit::new(6, 50)), Acquire::Granted);
        assert_eq!(pool.try_acquire(Credit::new(6, 10)), Acquire::Wait);
        assert_eq!(pool.try_acquire(Credit::new(1, 60)), Acquire::Wait);
        assert_eq!(pool.try_acquire(Credit::new(11, 0)), Acquire::Never);
        pool.release(Credit::new(6, 50));
        assert!(pool.is_idle());
        assert_eq!(pool.try_acquire(Credit::new(10, 100)), Acquire::Granted);
        assert_eq!(pool.held_peak(), Credit::new(10, 100));
    }

    #[test]
    #[should_panic(expected = "released")]
    fn releasing_more_than_held_is_a_bug() {
        let mut pool = CreditPool::new(Credit::new(10, 100));
        pool.try_acquire(Credit::new(1, 1));
        pool.release(Credit::new(2, 1));
    }

    #[derive(Clone, Debug)]
    enum Step {
        Acquire(Credit),
        ReleaseOldest,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u32..20, 0u32..200).prop_map(|(e, b)| Step::Acquire(Credit::new(e, b))),
            Just(Step::ReleaseOldest),
        ]
    }

    proptest! {
        /// The pool against a reference model: a list of the grants still outstanding. Every
        /// decision is checked against what the model says was available, and the held amount
        /// and its high-water mark against the model's sums.
        #[test]
        fn the_pool_agrees_with_a_model_of_outstanding_grants(steps in prop::collection::vec(step(), 0..300)) {
            let capacity = Credit::new(50, 500);
            let mut pool = CreditPool::new(capacity);
            let mut outstanding: std::collections::VecDeque<Credit> = Default::default();
            let mut model_peak = Credit::ZERO;
            for step in steps {
                let model_held = outstanding.iter().fold(Credit::ZERO, |sum, c| sum.plus(*c));
                match step {
                    Step::Acquire(want) => {
                        let model_available = capacity.minus(model_held);
                        match pool.try_acquire(want) {
                            Acquire::Granted => {
                                prop_assert!(model_available.covers(want), "granted {:?} with {:?} free", want, model_available);
                                outstanding.push_back(want);
                            }
                            Acquire::Wait => {
                                prop_assert!(capacity.covers(want));
                                prop_assert!(!model_available.covers(want), "refused {:?} with {:?} free", want, model_available);
                            }
                            Acquire::Never => prop_assert!(!capacity.covers(want)),
                        }
                    }
                    Step::ReleaseOldest => {
                        if let Some(credit) = outstanding.pop_front() {
                            pool.release(credit);
                        }
                    }
                }
                let held = outstanding.iter().fold(Credit::ZERO, |sum, c| sum.plus(*c));
                model_peak.events = model_peak.events.max(held.events);
                model_peak.bytes = model_peak.bytes.max(held.bytes);
                prop_assert_eq!(pool.held(), held);
                prop_assert_eq!(pool.held_peak(), model_peak);
                prop_assert_eq!(pool.is_idle(), outstanding.is_empty() || held == Credit::ZERO);
            }
        }
    }
}
