//! A simulated shard's CPU: one FIFO queue of work, served one item at a time, and its
//! receive queue, a [`CreditPool`] in front of the shard's real core.
//!
//! A message that reaches the shard (a client's event, an event or a copy from another node,
//! a heartbeat) waits for the CPU holding credit taken from this pool (one message and its
//! bytes); when the pool has none left, the message is refused and counted as an overflow.
//! Mesh batches between the shards of a node take none: the sending core's mesh credit bounds
//! them. Each item's CPU cost is
//! known when it is queued, so its finish time is too: the queue keeps only finish times, and
//! an item whose only effect is to give its credit back (a broadcast copy that another node
//! owns) needs no simulation step of its own; it is retired the next time anybody looks at the
//! queue. Credit is given back through [`ShardQueue::release`], which keeps the ledger the
//! credit oracle checks.

use std::collections::VecDeque;

use crate::core::credit::{Acquire, Credit, CreditPool};

/// An admitted item, until it is seen finished.
#[derive(Clone, Copy, Debug)]
struct Pending {
    finish_ns: u64,
    /// Credit to give back when the item finishes, for items with no other effect.
    release_when_retired: Credit,
}

/// What a shard's credit went through, for the credit oracle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreditLedger {
    pub acquired_events: u64,
    pub released_events: u64,
    /// Releases of more than the pool held: refused, and a bug in the caller.
    pub over_releases: u64,
}

/// One shard's queue, CPU and credit budget (a shard view; it lives on its shard).
#[derive(Clone, Debug)]
pub struct ShardQueue {
    pool: CreditPool,
    pending: VecDeque<Pending>,
    free_at_ns: u64,
    ledger: CreditLedger,
    /// The longest the queue has been, in items.
    pub depth_max: usize,
    /// Items refused for want of credit.
    pub overflows: u64,
}

impl ShardQueue {
    pub fn new(capacity: Credit) -> ShardQueue {
        ShardQueue {
            pool: CreditPool::new(capacity),
            pending: VecDeque::new(),
            free_at_ns: 0,
            ledger: CreditLedger::default(),
            depth_max: 0,
            overflows: 0,
        }
    }

    /// Forgets the items finished by `now`, giving back the credit of those that asked.
    fn retire(&mut self, now: u64) {
        while let Some(front) = self.pending.front().copied() {
            if front.finish_ns > now {
                break;
            }
            self.pending.pop_front();
            if front.release_when_retired != Credit::ZERO {
                self.release(front.release_when_retired);
            }
        }
    }

    /// Takes `credit` if the pool has it; otherwise counts an overflow.
    pub fn try_admit(&mut self, now: u64, credit: Credit) -> bool {
        self.retire(now);
        match self.pool.try_acquire(credit) {
            Acquire::Granted => {
                self.ledger.acquired_events += u64::from(credit.events);
                true
            }
            Acquire::Wait | Acquire::Never => {
                self.overflows += 1;
                false
            }
        }
    }

    /// Queues `cost_ns` of work and returns when it will be done. `release_when_retired` is
    /// given back then without any other step: use it for work that has no other effect.
    pub fn enqueue(&mut self, now: u64, cost_ns: u64, release_when_retired: Credit) -> u64 {
        self.retire(now);
        let finish_ns = now.max(self.free_at_ns) + cost_ns;
        self.free_at_ns = finish_ns;
        self.pending.push_back(Pending {
            finish_ns,
            release_when_retired,
        });
        self.depth_max = self.depth_max.max(self.pending.len());
        finish_ns
    }

    /// Gives back credit taken by [`Self::try_admit`].
    pub fn release(&mut self, credit: Credit) {
        if !self.pool.held().covers(credit) {
            self.ledger.over_releases += 1;
            return;
        }
        self.pool.release(credit);
        self.ledger.released_events += u64::from(credit.events);
    }

    /// Retires everything: call once the simulation has drained.
    pub fn retire_all(&mut self) {
        self.retire(u64::MAX);
    }

    /// Credit held now (after [`Self::retire_all`], what was never given back).
    pub fn held(&self) -> Credit {
        self.pool.held()
    }

    pub fn ledger(&self) -> CreditLedger {
        self.ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Credit = Credit::new(1, 100);

    #[test]
    fn work_is_served_in_order_one_item_at_a_time() {
        let mut queue = ShardQueue::new(Credit::new(8, 8_000));
        assert!(queue.try_admit(0, ONE));
        assert_eq!(queue.enqueue(0, 10, Credit::ZERO), 10);
        assert!(queue.try_admit(5, ONE));
        assert_eq!(queue.enqueue(5, 10, Credit::ZERO), 20);
        assert!(queue.try_admit(50, ONE));
        assert_eq!(queue.enqueue(50, 10, Credit::ZERO), 60);
        assert_eq!(queue.depth_max, 2);
    }

    #[test]
    fn a_full_pool_refuses_until_retired_work_gives_credit_back() {
        let mut queue = ShardQueue::new(Credit::new(2, 8_000));
        for _ in 0..2 {
            assert!(queue.try_admit(0, ONE));
            queue.enqueue(0, 100, ONE);
        }
        assert!(!queue.try_admit(50, ONE), "both items hold their credit");
        assert_eq!(queue.overflows, 1);
        assert!(queue.try_admit(100, ONE), "the first item is done at 100");
        assert_eq!(queue.enqueue(100, 100, ONE), 300);
        queue.retire_all();
        assert_eq!(queue.held(), Credit::ZERO);
        let ledger = queue.ledger();
        assert_eq!((ledger.acquired_events, ledger.released_events), (3, 3));
    }

    #[test]
    fn over_releases_are_recorded_not_obeyed() {
        let mut queue = ShardQueue::new(Credit::new(2, 8_000));
        queue.release(ONE);
        assert_eq!(queue.ledger().over_releases, 1);
        assert_eq!(queue.held(), Credit::ZERO);
    }
}
