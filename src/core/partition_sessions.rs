//! A partition's memory of client sessions, for idempotent retries: which events of each
//! session it applied and how they went, so that an event a client sends again (after a lost
//! connection or a node restart) is answered instead of applied twice.
//!
//! An event names itself by its client's session (`Event::client_session`, picked at random by
//! the client, [`NO_SESSION`] for none) and its `client_seq`, which grows within a session.
//! For each session the partition keeps:
//! - the highest `client_seq` it applied;
//! - a window of the session's `SESSION_WINDOW_EVENTS_MAX` most recent events it applied, each
//!   with its [`OutcomeClass`]: a retry of one is answered `Duplicate { original }`;
//! - the highest `client_seq` that fell out of the window (`forgotten_up_to`): a retry at or
//!   below it that the window does not hold is answered `DuplicateUnknown`.
//!
//! A `client_seq` the window does not hold and above `forgotten_up_to` was never applied here
//! (an event of the session that went to another partition, or was answered `Busy` or `Moved`
//! before reaching this one and is now re-sent): it is applied like a new one. That test is
//! exact whatever the order events arrive in. Order is what makes the window enough: the
//! engine applies a session's events in each partition in the order the client sent them (one
//! connection is read in order, forwarding keeps per-partition order, replay applies the log in
//! order), so the events a client still waits for at a crash are the session's most recent in
//! that partition, the ones the window holds, and "at or below `forgotten_up_to`" means
//! "applied before" unless the client itself re-sent an event late.
//!
//! What counts as applied: every event [`PartitionState::apply`] runs that may change state —
//! `CreateHunt`, `Join`, `CheckIn`, `Claim` and `EndHunt` — whatever its outcome, rejections
//! included (a wrong code counts towards `TooManyAttempts`, and a retry of a rejected `Join`
//! must be told `Rejected` again, not `Accepted`). A `Leaderboard` is read-only and answered
//! afresh every time; events answered before reaching the partition (`Busy`, `Moved`,
//! `Error`) were not applied and are not remembered.
//!
//! The table is bounded: `SESSIONS_PER_PARTITION_MAX` sessions; a new one past that evicts the
//! session whose last applied event is oldest, age measured in the partition's own count of
//! applied events (never a clock), so replaying the log rebuilds exactly the same table. A
//! retry of an evicted session's event is applied again: the bound is the price of a table that
//! cannot grow. The table is part of the partition's snapshot (`core::snapshot`).
//!
//! Plain data inside a [`PartitionState`], on the shard that owns the partition.
//!
//! [`PartitionState`]: crate::core::hunt::PartitionState
//! [`PartitionState::apply`]: crate::core::hunt::PartitionState::apply
//! [`NO_SESSION`]: crate::core::message::NO_SESSION

use crate::constants::{
    SESSION_ENTRY_BYTES, SESSION_WINDOW_EVENTS_MAX, SESSIONS_PER_PARTITION_MAX,
};
use crate::core::message::{Outcome, OutcomeClass};
use crate::core::snapshot::{SessionSnapshot, SessionsSnapshot, SnapshotError};

/// What a partition knows of an event of a session, before applying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never applied here: apply it, then [`SessionTable::record`] it.
    New,
    /// Applied before, with this class.
    Duplicate(OutcomeClass),
    /// At or below a `client_seq` the window forgot: applied before, outcome unknown.
    Unknown,
}

/// The client sessions of one partition. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    /// Events the partition applied since the table was made: the clock sessions age by.
    applied_events: u64,
    /// `ids[i]` is the session of `entries[i]`; apart, so a lookup reads 8 bytes a session.
    ids: Vec<u64>,
    entries: Vec<SessionEntry>,
}

/// One session's recent events in a partition. Laid out in order, a cache line aligned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct SessionEntry {
    /// The partition's `applied_events` when this session's last event was recorded.
    last_used: u64,
    /// The highest `client_seq` applied.
    highest: u64,
    /// Every `client_seq` at or below this that the window does not hold is forgotten
    /// (`None`: nothing has left the window yet).
    forgotten_up_to: Option<u64>,
    /// How many slots of `recent` are in use, and the slot overwritten next (the oldest, once
    /// all are).
    len: u8,
    next: u8,
    /// A ring of the most recent events, `recent[..len]`, each seq beside its class: with the
    /// fields above in the entry's first cache line, a new event touches two lines.
    recent: [Recent; SESSION_WINDOW_EVENTS_MAX],
}

/// One remembered event of a session: its seq and how it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recent {
    seq: u64,
    class: OutcomeClass,
}

impl Recent {
    /// A slot not in use yet (past `len`).
    const EMPTY: Recent = Recent {
        seq: 0,
        class: OutcomeClass::Accepted,
    };
}

const _: () = assert!(size_of::<SessionEntry>() <= SESSION_ENTRY_BYTES);
const _: () = assert!(SESSION_WINDOW_EVENTS_MAX <= u8::MAX as usize);

impl SessionEntry {
    fn new(last_used: u64, seq: u64, class: OutcomeClass) -> SessionEntry {
        let mut entry = SessionEntry {
            last_used,
            highest: seq,
            forgotten_up_to: None,
            recent: [Recent::EMPTY; SESSION_WINDOW_EVENTS_MAX],
            len: 0,
            next: 0,
        };
        entry.remember(seq, class);
        entry
    }

    fn seen(&self, seq: u64) -> Seen {
        if seq > self.highest {
            return Seen::New;
        }
        let len = usize::from(self.len);
        if let Some(held) = self.recent[..len].iter().find(|held| held.seq == seq) {
            return Seen::Duplicate(held.class);
        }
        match self.forgotten_up_to {
            Some(forgotten) if seq <= forgotten => Seen::Unknown,
            _ => Seen::New,
        }
    }

    /// Puts `seq` in the window, pushing the oldest out when it is full.
    fn remember(&mut self, seq: u64, class: OutcomeClass) {
        let at = usize::from(self.next);
        if usize::from(self.len) == SESSION_WINDOW_EVENTS_MAX {
            let evicted = self.recent[at].seq;
            self.forgotten_up_to = Some(self.forgotten_up_to.map_or(evicted, |f| f.max(evicted)));
        } else {
            self.len += 1;
        }
        self.recent[at] = Recent { seq, class };
        self.next = ((at + 1) % SESSION_WINDOW_EVENTS_MAX) as u8;
        self.highest = self.highest.max(seq);
    }
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new()
    }
}

impl SessionTable {
    pub fn new() -> SessionTable {
        SessionTable {
            applied_events: 0,
            ids: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// The partition applied one more event (any event, of any session or none).
    #[inline]
    pub fn tick(&mut self) {
        self.applied_events += 1;
    }

    /// What the partition knows of event `seq` of `session` (not [`NO_SESSION`]).
    ///
    /// [`NO_SESSION`]: crate::core::message::NO_SESSION
    #[inline]
    pub fn seen(&self, session: u64, seq: u64) -> Seen {
        match self.find(session) {
            Some(at) => self.entries[at].seen(seq),
            None => Seen::New,
        }
    }

    /// Event `seq` of `session` (not [`NO_SESSION`]), exactly once: `apply` runs it unless the
    /// table knows it was applied before, and its outcome is remembered; a retry is answered
    /// `Duplicate` or `DuplicateUnknown` without running it. One lookup of the session.
    ///
    /// [`NO_SESSION`]: crate::core::message::NO_SESSION
    #[inline]
    pub fn once(&mut self, session: u64, seq: u64, apply: impl FnOnce() -> Outcome) -> Outcome {
        let at = self.find(session);
        if let Some(at) = at {
            match self.entries[at].seen(seq) {
                Seen::New => {}
                Seen::Duplicate(original) => return Outcome::Duplicate { original },
                Seen::Unknown => return Outcome::DuplicateUnknown,
            }
        }
        let outcome = apply();
        // Every outcome of a state-changing event has a class; were one not to, the event
        // would only be applied again on a retry, as without a session.
        if let Some(class) = OutcomeClass::of(&outcome) {
            match at {
                Some(at) => self.remember_at(at, seq, class),
                None => self.admit(session, seq, class),
            }
        }
        outcome
    }

    /// Remembers that event `seq` of `session`, [`Seen::New`] a moment ago, was applied and
    /// went as `class`. A session new to a full table takes the place of the one whose last
    /// event is oldest.
    pub fn record(&mut self, session: u64, seq: u64, class: OutcomeClass) {
        match self.find(session) {
            Some(at) => self.remember_at(at, seq, class),
            None => self.admit(session, seq, class),
        }
    }

    fn remember_at(&mut self, at: usize, seq: u64, class: OutcomeClass) {
        let entry = &mut self.entries[at];
        entry.last_used = self.applied_events;
        entry.remember(seq, class);
    }

    /// Adds `session`, whose first event here is `seq`.
    fn admit(&mut self, session: u64, seq: u64, class: OutcomeClass) {
        let entry = SessionEntry::new(self.applied_events, seq, class);
        if self.ids.len() < SESSIONS_PER_PARTITION_MAX {
            self.ids.push(session);
            self.entries.push(entry);
            return;
        }
        let oldest = (self.entries.iter().enumerate())
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(at, _)| at)
            .expect("a full table has entries");
        self.ids[oldest] = session;
        self.entries[oldest] = entry;
    }

    /// How many sessions the table holds.
    pub fn sessions(&self) -> usize {
        self.ids.len()
    }

    /// Whether the table holds `session`.
    pub fn holds(&self, session: u64) -> bool {
        self.find(session).is_some()
    }

    /// The highest `client_seq` of `session` applied here, if the table holds it.
    pub fn highest(&self, session: u64) -> Option<u64> {
        self.find(session).map(|at| self.entries[at].highest)
    }

    #[inline]
    fn find(&self, session: u64) -> Option<usize> {
        self.ids.iter().position(|&id| id == session)
    }

    /// The table as plain values, for a snapshot; [`Self::import`] rebuilds it exactly.
    pub fn export(&self) -> SessionsSnapshot {
        let sessions = (self.ids.iter().zip(&self.entries))
            .map(|(&id, entry)| {
                let len = usize::from(entry.len);
                SessionSnapshot {
                    id,
                    last_used: entry.last_used,
                    highest: entry.highest,
                    forgotten_up_to: entry.forgotten_up_to,
                    next: u32::from(entry.next),
                    seqs: entry.recent[..len].iter().map(|held| held.seq).collect(),
                    classes: entry.recent[..len].iter().map(|held| held.class).collect(),
                }
            })
            .collect();
        SessionsSnapshot {
            applied_events: self.applied_events,
            sessions,
        }
    }

    /// Rebuilds a table from a snapshot that [`SessionsSnapshot::check`] accepted.
    pub fn import(snapshot: &SessionsSnapshot) -> Result<SessionTable, SnapshotError> {
        snapshot.check()?;
        let mut table = SessionTable {
            applied_events: snapshot.applied_events,
            ids: Vec::with_capacity(snapshot.sessions.len()),
            entries: Vec::with_capacity(snapshot.sessions.len()),
        };
        for session in &snapshot.sessions {
            let len = session.seqs.len();
            let mut recent = [Recent::EMPTY; SESSION_WINDOW_EVENTS_MAX];
            for (slot, (&seq, &class)) in recent
                .iter_mut()
                .zip(session.seqs.iter().zip(&session.classes))
            {
                *slot = Recent { seq, class };
            }
            table.ids.push(session.id);
            table.entries.push(SessionEntry {
                last_used: session.last_used,
                highest: session.highest,
                forgotten_up_to: session.forgotten_up_to,
                recent,
                len: len as u8,
                next: session.next as u8,
            });
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::RejectReason;

    const ACCEPTED: OutcomeClass = OutcomeClass::Accepted;
    const WRONG_CODE: OutcomeClass = OutcomeClass::Rejected {
        reason: RejectReason::WrongCode,
    };

    /// Applies `seq` of `session` as the partition does: counted, then recorded if new.
    fn apply(table: &mut SessionTable, session: u64, seq: u64, class: OutcomeClass) -> Seen {
        table.tick();
        let seen = table.seen(session, seq);
        if seen == Seen::New {
            table.record(session, seq, class);
        }
        seen
    }

    #[test]
    fn a_retry_in_the_window_gets_its_class_and_an_older_one_is_unknown() {
        let mut table = SessionTable::new();
        let window = SESSION_WINDOW_EVENTS_MAX as u64;
        for seq in 1..=window + 3 {
            let class = if seq % 2 == 0 { WRONG_CODE } else { ACCEPTED };
            assert_eq!(apply(&mut table, 7, seq, class), Seen::New);
        }
        assert_eq!(table.highest(7), Some(window + 3));
        assert_eq!(table.seen(7, window + 2), Seen::Duplicate(WRONG_CODE));
        assert_eq!(table.seen(7, 4), Seen::Duplicate(WRONG_CODE));
        assert_eq!(table.seen(7, 5), Seen::Duplicate(ACCEPTED));
        for old in 1..=3 {
            assert_eq!(
                table.seen(7, old),
                Seen::Unknown,
                "seq {old} left the window"
            );
        }
        assert_eq!(table.seen(7, window + 4), Seen::New);
        assert_eq!(table.seen(8, 1), Seen::New, "another session");
    }

    #[test]
    fn a_gap_in_the_window_was_never_applied_and_is_applied_once() {
        let mut table = SessionTable::new();
        // Seq 2 went to another partition, seq 4 was answered Busy and is re-sent late.
        for seq in [1, 3, 5, 6] {
            apply(&mut table, 7, seq, ACCEPTED);
        }
        assert_eq!(table.seen(7, 2), Seen::New);
        assert_eq!(apply(&mut table, 7, 4, WRONG_CODE), Seen::New);
        assert_eq!(table.seen(7, 4), Seen::Duplicate(WRONG_CODE));
        assert_eq!(table.highest(7), Some(6));
    }

    #[test]
    fn seq_zero_is_an_event_like_any_other() {
        let mut table = SessionTable::new();
        assert_eq!(apply(&mut table, 7, 0, ACCEPTED), Seen::New);
        assert_eq!(table.seen(7, 0), Seen::Duplicate(ACCEPTED));
    }

    #[test]
    fn a_full_table_evicts_the_session_idle_longest_in_applied_events() {
        let mut table = SessionTable::new();
        for session in 1..=SESSIONS_PER_PARTITION_MAX as u64 {
            apply(&mut table, session, 1, ACCEPTED);
        }
        // Session 1 is the oldest by insertion but just applied again; 2 is now the oldest.
        apply(&mut table, 1, 2, ACCEPTED);
        for _ in 0..1000 {
            table.tick(); // events without a session age every session alike
        }
        apply(&mut table, 999, 1, ACCEPTED);
        assert_eq!(table.sessions(), SESSIONS_PER_PARTITION_MAX);
        assert!(table.holds(1) && table.holds(999) && table.holds(3));
        assert!(!table.holds(2), "the least recently applied session goes");
        assert_eq!(table.seen(2, 1), Seen::New, "its events are forgotten");
    }

    #[test]
    fn the_bound_holds_however_many_sessions_come() {
        let mut table = SessionTable::new();
        for session in 1..=10 * SESSIONS_PER_PARTITION_MAX as u64 {
            for seq in 0..3 * SESSION_WINDOW_EVENTS_MAX as u64 {
                apply(&mut table, session, seq, ACCEPTED);
            }
            assert!(table.sessions() <= SESSIONS_PER_PARTITION_MAX);
            assert!(table.ids.capacity() <= SESSIONS_PER_PARTITION_MAX);
        }
        let newest = 10 * SESSIONS_PER_PARTITION_MAX as u64;
        assert_eq!(table.seen(newest, 1), Seen::Unknown);
    }

    #[test]
    fn export_and_import_give_the_same_table() {
        let mut table = SessionTable::new();
        for n in 0..500u64 {
            let session = 1 + n % 5;
            let seq = n / 5 + if n % 7 == 0 { 40 } else { 0 };
            apply(
                &mut table,
                session,
                seq,
                if n % 3 == 0 { WRONG_CODE } else { ACCEPTED },
            );
        }
        let snapshot = table.export();
        let back = SessionTable::import(&snapshot).unwrap();
        assert_eq!(back, table);
        let mut bad = snapshot.clone();
        bad.sessions[1].id = bad.sessions[0].id;
        assert!(SessionTable::import(&bad).is_err(), "a session twice");
        let mut bad = snapshot.clone();
        bad.sessions[0].seqs.pop();
        assert!(SessionTable::import(&bad).is_err(), "seqs without classes");
        let mut bad = snapshot;
        bad.sessions[0].next = SESSION_WINDOW_EVENTS_MAX as u32;
        assert!(
            SessionTable::import(&bad).is_err(),
            "a cursor off the window"
        );
    }
}
