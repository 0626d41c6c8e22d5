//! The cluster-aware client's bookkeeping of unanswered events, sans-IO: which events are in
//! flight, which were answered `Moved` and must go out again, and in which order, so that
//! events of one partition are applied in the order the caller sent them even while the
//! partition moves.
//!
//! The rule: once an event of a partition is answered `Moved`, that partition's later events
//! wait (are *held*) until every event of it still in flight has been answered; then the
//! moved ones go out again, oldest first, followed by the held ones, routed by the newest map.
//! An event is sent again at most `CLUSTER_CLIENT_RESENDS_MAX` times; after that its `Moved`
//! reply is the caller's. Everything is bounded by `CLUSTER_CLIENT_INFLIGHT_MAX` events.
//!
//! An [`Inflight`] lives on the thread of its `ClusterClient` (`client::cluster`).

use std::collections::{BTreeMap, HashMap};

use crate::constants::{CLUSTER_CLIENT_INFLIGHT_MAX, CLUSTER_CLIENT_RESENDS_MAX};
use crate::core::ids::{HuntId, PartitionId};
use crate::core::message::Event;

/// Why an event was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// `CLUSTER_CLIENT_INFLIGHT_MAX` events are unanswered: take replies first.
    Full,
    /// An unanswered event has the same `client_seq`, which replies are matched by.
    DuplicateSeq(u64),
}

/// What to do with an event just taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Send it now.
    Send,
    /// Its partition waits for answers to moved events: it goes out with them later.
    Held,
}

/// What a reply means for its event.
#[derive(Debug, PartialEq)]
pub enum Answered {
    /// The reply is final: hand it to the caller (the event is forgotten).
    Final,
    /// The event was moved and will go out again once its partition is released.
    WillResend,
    /// No unanswered event has this `client_seq` (a reply to an event given up on): drop it.
    Unknown,
}

#[derive(Debug)]
struct Pending {
    event: Event,
    partition: PartitionId,
    /// When the caller sent it, among all events: the order moved events go out again in.
    order: u64,
    resends: u32,
    /// Sent and not yet answered.
    sent: bool,
    /// Answered `Moved`, not yet sent again.
    moved: bool,
}

/// One partition's events that are not simply in flight.
#[derive(Debug, Default)]
struct Flow {
    /// Its events sent and not yet answered.
    sent: u32,
    /// Moved and held events, by `order`, waiting for `sent` to reach 0.
    waiting: BTreeMap<u64, u64>,
    /// The newest epoch a `Moved` reply for it named.
    moved_epoch: u32,
    /// The link its sent events went out on: an event routed elsewhere (the map changed) waits
    /// until they are answered, or it could overtake them.
    link: Option<usize>,
}

/// The cluster-aware client's unanswered events. See the module documentation.
#[derive(Debug, Default)]
pub struct Inflight {
    events: HashMap<u64, Pending>,
    flows: HashMap<PartitionId, Flow>,
    next_order: u64,
    /// Moved events sent again so far.
    resent: u64,
}

impl Inflight {
    pub fn new() -> Inflight {
        Inflight::default()
    }

    /// Unanswered events (held ones included).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Moved events sent again so far.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// Whether any event sent on `link` is unanswered.
    pub fn sent_on(&self, link: usize) -> bool {
        self.flows
            .values()
            .any(|flow| flow.sent > 0 && flow.link == Some(link))
    }

    /// Takes `event` of `partition`, routed to `link`: send it now, or hold it behind its
    /// partition's moved events, or behind its events in flight on another link.
    pub fn admit(
        &mut self,
        event: Event,
        partition: PartitionId,
        link: usize,
    ) -> Result<Admitted, AdmitError> {
        if self.events.len() >= CLUSTER_CLIENT_INFLIGHT_MAX {
            return Err(AdmitError::Full);
        }
        let seq = event.client_seq;
        if self.events.contains_key(&seq) {
            return Err(AdmitError::DuplicateSeq(seq));
        }
        let order = self.next_order;
        self.next_order += 1;
        let flow = self.flows.entry(partition).or_default();
        let elsewhere = flow.sent > 0 && flow.link != Some(link);
        let admitted = if flow.waiting.is_empty() && !elsewhere {
            flow.sent += 1;
            flow.link = Some(link);
            Admitted::Send
        } else {
            flow.waiting.insert(order, seq);
            Admitted::Held
        };
        self.events.insert(
            seq,
            Pending {
                event,
                partition,
                order,
                resends: 0,
                sent: admitted == Admitted::Send,
                moved: false,
            },
        );
        Ok(admitted)
    }

    /// The reply to `seq` arrived; `moved_epoch` is the epoch it named if it was `Moved`.
    pub fn answered(&mut self, seq: u64, moved_epoch: Option<u32>) -> Answered {
        let Some(pending) = self.events.get_mut(&seq) else {
            return Answered::Unknown;
        };
        if !pending.sent {
            // A held event has not gone out: this reply is to an older event of the same seq.
            return Answered::Unknown;
        }
        let flow = self
            .flows
            .get_mut(&pending.partition)
            .expect("a sent event's partition has a flow");
        flow.sent -= 1;
        match moved_epoch {
            Some(epoch) if pending.resends < CLUSTER_CLIENT_RESENDS_MAX => {
                pending.sent = false;
                pending.moved = true;
                flow.waiting.insert(pending.order, seq);
                flow.moved_epoch = flow.moved_epoch.max(epoch);
                Answered::WillResend
            }
            _ => {
                let partition = pending.partition;
                self.events.remove(&seq);
                self.forget_idle_flow(partition);
                Answered::Final
            }
        }
    }

    /// The event `seq` will never be answered (its connection closed): forget it. Returns it.
    pub fn abandon(&mut self, seq: u64) -> Option<Event> {
        let pending = self.events.remove(&seq)?;
        if let Some(flow) = self.flows.get_mut(&pending.partition) {
            if pending.sent {
                flow.sent -= 1;
            } else {
                flow.waiting.remove(&pending.order);
            }
        }
        self.forget_idle_flow(pending.partition);
        Some(pending.event)
    }

    /// Partitions whose moved events can go out again: none of theirs is in flight.
    pub fn releasable(&self) -> Vec<PartitionId> {
        let mut ready: Vec<PartitionId> = self
            .flows
            .iter()
            .filter(|(_, flow)| flow.sent == 0 && !flow.waiting.is_empty())
            .map(|(partition, _)| *partition)
            .collect();
        ready.sort();
        ready
    }

    /// The newest epoch a `Moved` reply for `partition` named (0 if none): the map to wait for
    /// before sending its events again.
    pub fn moved_epoch(&self, partition: PartitionId) -> u32 {
        self.flows
            .get(&partition)
            .map_or(0, |flow| flow.moved_epoch)
    }

    /// Sends `partition`'s waiting events again, on `link`: returns them oldest first, now in
    /// flight.
    pub fn release(&mut self, partition: PartitionId, link: usize) -> Vec<Event> {
        let Some(flow) = self.flows.get_mut(&partition) else {
            return Vec::new();
        };
        let waiting = std::mem::take(&mut flow.waiting);
        flow.sent += waiting.len() as u32;
        flow.moved_epoch = 0;
        flow.link = Some(link);
        let mut events = Vec::with_capacity(waiting.len());
        for seq in waiting.into_values() {
            let pending = self
                .events
                .get_mut(&seq)
                .expect("a waiting event is pending");
            // Held ones go out for the first time; moved ones once more.
            if pending.moved {
                pending.resends += 1;
                pending.moved = false;
                self.resent += 1;
            }
            pending.sent = true;
            events.push(pending.event.clone());
        }
        events
    }

    /// The hunt of one of `partition`'s waiting events (they all route the same way).
    pub fn hunt_of(&self, partition: PartitionId) -> Option<HuntId> {
        let flow = self.flows.get(&partition)?;
        let seq = flow.waiting.values().next()?;
        Some(self.events.get(seq)?.event.hunt)
    }

    /// What is unanswered, for a human: in flight, moved and held, and in how many partitions.
    pub fn describe(&self) -> String {
        let in_flight = self.events.values().filter(|p| p.sent).count();
        let moved = self.events.values().filter(|p| p.moved).count();
        let held = self.events.len() - in_flight - moved;
        let waiting = self
            .flows
            .values()
            .filter(|f| !f.waiting.is_empty())
            .count();
        let blocked = self
            .flows
            .values()
            .filter(|f| !f.waiting.is_empty() && f.sent > 0)
            .count();
        format!(
            "{} unanswered: {in_flight} in flight, {moved} moved and {held} held, waiting in {waiting} partitions ({blocked} of them behind events still in flight)",
            self.events.len()
        )
    }

    fn forget_idle_flow(&mut self, partition: PartitionId) {
        if let Some(flow) = self.flows.get(&partition) {
            if flow.sent == 0 && flow.waiting.is_empty() {
                self.flows.remove(&partition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::PlayerId;
    use crate::core::message::EventKind;

    fn event(seq: u64) -> Event {
        Event {
            hunt: HuntId(1),
            player: PlayerId(1),
            client_session: 0,
            client_seq: seq,
            client_ts: 0,
            kind: EventKind::Join,
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|event| event.client_seq).collect()
    }

    const P: PartitionId = PartitionId(3);
    const Q: PartitionId = PartitionId(4);

    #[test]
    fn moved_events_go_out_again_in_order_before_the_ones_held_behind_them() {
        let mut inflight = Inflight::new();
        for seq in 1..=3 {
            assert_eq!(inflight.admit(event(seq), P, 0), Ok(Admitted::Send));
        }
        assert_eq!(inflight.admit(event(10), Q, 0), Ok(Admitted::Send));
        // 1 was applied; 2 was moved: 3 is still out, so nothing is released yet.
        assert_eq!(inflight.answered(1, None), Answered::Final);
        assert_eq!(inflight.answered(2, Some(9)), Answered::WillResend);
        assert_eq!(inflight.moved_epoch(P), 9);
        assert!(inflight.releasable().is_empty(), "3 is in flight");
        // Later events of P wait; Q is not affected.
        assert_eq!(inflight.admit(event(4), P, 0), Ok(Admitted::Held));
        assert_eq!(inflight.admit(event(11), Q, 0), Ok(Admitted::Send));
        assert_eq!(inflight.answered(3, Some(9)), Answered::WillResend);
        assert_eq!(inflight.releasable(), [P]);
        assert_eq!(seqs(&inflight.release(P, 1)), [2, 3, 4]);
        assert_eq!(inflight.resent(), 2, "4 was held, not moved");
        assert!(inflight.releasable().is_empty());
        assert_eq!(inflight.moved_epoch(P), 0);
        for seq in [2, 3, 4, 10, 11] {
            assert_eq!(inflight.answered(seq, None), Answered::Final, "{seq}");
        }
        assert!(inflight.is_empty());
        assert!(inflight.flows.is_empty(), "no partition state left behind");
    }

    #[test]
    fn an_event_routed_to_a_new_owner_waits_for_its_partition_in_flight_to_the_old_one() {
        let mut inflight = Inflight::new();
        assert_eq!(inflight.admit(event(1), P, 0), Ok(Admitted::Send));
        assert_eq!(inflight.admit(event(2), P, 0), Ok(Admitted::Send));
        // A newer map routes P to link 1 while 1 and 2 are out on link 0: 3 must not overtake.
        assert_eq!(inflight.admit(event(3), P, 1), Ok(Admitted::Held));
        assert_eq!(inflight.answered(1, None), Answered::Final);
        assert!(inflight.releasable().is_empty(), "2 is still out on link 0");
        assert_eq!(inflight.answered(2, None), Answered::Final);
        assert_eq!(inflight.releasable(), [P]);
        assert_eq!(seqs(&inflight.release(P, 1)), [3]);
        assert_eq!(inflight.resent(), 0, "held, not moved");
        assert_eq!(
            inflight.admit(event(4), P, 1),
            Ok(Admitted::Send),
            "same link now"
        );
        assert!(
            inflight.describe().starts_with("2 unanswered: 2 in flight"),
            "{}",
            inflight.describe()
        );
    }

    #[test]
    fn an_event_moved_too_often_hands_its_moved_reply_to_the_caller() {
        let mut inflight = Inflight::new();
        inflight.admit(event(1), P, 0).unwrap();
        for _ in 0..CLUSTER_CLIENT_RESENDS_MAX {
            assert_eq!(inflight.answered(1, Some(5)), Answered::WillResend);
            assert_eq!(seqs(&inflight.release(P, 1)), [1]);
        }
        assert_eq!(inflight.answered(1, Some(5)), Answered::Final);
        assert!(inflight.is_empty());
    }

    #[test]
    fn limits_and_strays_are_refused_or_ignored() {
        let mut inflight = Inflight::new();
        inflight.admit(event(1), P, 0).unwrap();
        assert_eq!(
            inflight.admit(event(1), Q, 0),
            Err(AdmitError::DuplicateSeq(1))
        );
        assert_eq!(inflight.answered(99, None), Answered::Unknown);
        // A held event's seq answered (a stray from before) does not count as its answer.
        inflight.answered(1, Some(2));
        inflight.admit(event(2), P, 0).unwrap();
        assert_eq!(inflight.answered(2, None), Answered::Unknown);
        assert_eq!(inflight.abandon(1).map(|e| e.client_seq), Some(1));
        assert_eq!(inflight.releasable(), [P], "2 waits for nothing now");
        assert_eq!(seqs(&inflight.release(P, 1)), [2]);
        for seq in 3..CLUSTER_CLIENT_INFLIGHT_MAX as u64 + 2 {
            inflight.admit(event(seq), Q, 0).unwrap();
        }
        assert_eq!(inflight.len(), CLUSTER_CLIENT_INFLIGHT_MAX);
        assert_eq!(inflight.admit(event(0), Q, 0), Err(AdmitError::Full));
    }
}
