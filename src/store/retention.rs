//! What a shard keeps on disk, sans-IO: when to snapshot which partition, which log segments
//! no snapshot needs any more, and whether the log must stop taking events to stay within its
//! disk bound.
//!
//! Inputs: every record appended to the log ([`Retention::observe`]), the durable sequence
//! number, snapshots begun and written, and the time (passed in). Outputs: the next partition
//! to snapshot ([`Retention::poll_snapshot`]), the segments to delete
//! ([`Retention::poll_truncate`]), the snapshot files to delete, and whether the log is full
//! ([`Retention::log_blocked`]).
//!
//! - **Rounds.** After `snapshot_every_bytes` of log, or `snapshot_every_ns` after the last
//!   round when anything changed (or at once when the log is full), a round snapshots every
//!   partition changed since its last snapshot, and every partition whose older snapshot keeps
//!   the first segment alive though nothing changed since its newest (taking it again makes
//!   the newest the older one), one at a time, those that hold the log back the longest first.
//! - **Generations.** Each partition keeps its newest snapshot and the one before it
//!   (`SNAPSHOT_GENERATIONS_MAX`); before its second snapshot, the one before is the log
//!   itself from its start. Recovery falls back to the older one when the newest is damaged,
//!   so the log is kept from the first record the *older* one needs: a segment is deleted once
//!   every partition's older generation covers all its records, and the next segment's start
//!   is durable (a log always keeps a segment with a durable header).
//! - **The bound.** Disk use is the segments (each pre-allocated whole), the retained
//!   snapshot files, and the next segment when it is prepared ahead (zero-filled before the
//!   log reaches it, [`Self::may_prepare`]: only when it fits). The log is *blocked* when the
//!   next segment is not prepared, would not fit in `disk_bytes_max`, and the current one may
//!   fill up with the records that can still arrive (`WAL_UNWRITTEN_BYTES_MAX`): blocking
//!   then, not at the segment's end, means every event the core already applied still has
//!   room.
//!
//! Lives on its shard's core, in the shard's log tasks.

use std::collections::VecDeque;

use crate::constants::{
    RETENTION_PARTITION_BYTES, SNAPSHOT_GENERATIONS_MAX, WAL_UNWRITTEN_BYTES_MAX,
};

const _: () = assert!(
    SNAPSHOT_GENERATIONS_MAX == 2,
    "a partition keeps `newest` and `older`"
);

/// The thresholds of one shard's retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Start a round after this many bytes of log records.
    pub snapshot_every_bytes: u64,
    /// Start a round this long after the last one when anything changed.
    pub snapshot_every_ns: u64,
    /// This shard's share of the node's disk bound: segments and snapshot files.
    pub disk_bytes_max: u64,
    pub segment_bytes: u64,
}

/// A state of a partition recovery could start from: a snapshot covering the log up to `lsn`
/// (a file of `file_bytes`), or with `lsn` 0 and no file, the empty state before the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Generation {
    lsn: u64,
    file_bytes: u64,
    /// The first record of the partition after `lsn`: the log is needed from there.
    first_after: Option<u64>,
}

const BEFORE_THE_LOG: Generation = Generation {
    lsn: 0,
    file_bytes: 0,
    first_after: None,
};

impl Generation {
    fn saw(&mut self, lsn: u64) {
        if lsn > self.lsn && self.first_after.is_none() {
            self.first_after = Some(lsn);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PartitionLog {
    newest: Generation,
    older: Option<Generation>,
    /// The partition's last record seen, 0 for none.
    last_lsn: u64,
}

impl PartitionLog {
    /// The first record recovery may need, if any: the older generation's.
    fn floor(&self) -> Option<u64> {
        self.older.unwrap_or(self.newest).first_after
    }
}

// The memory sum (`constants::wal_partition_bytes_max`) counts it at this size.
const _: () = assert!(size_of::<PartitionLog>() <= RETENTION_PARTITION_BYTES);

/// A snapshot taken from the core and being written.
#[derive(Clone, Copy, Debug)]
struct Pending {
    partition: u32,
    lsn: u64,
    first_after: Option<u64>,
}

/// One shard's retention state. See the module documentation.
pub struct Retention {
    config: RetentionConfig,
    partitions: Vec<PartitionLog>,
    /// The segments on disk: (index, first sequence number), oldest first.
    segments: VecDeque<(u64, u64)>,
    snapshot_bytes: u64,
    pending: Option<Pending>,
    /// Partitions left in the current round.
    round: VecDeque<u32>,
    bytes_since_round: u64,
    round_started_ns: u64,
    durable_lsn: u64,
    /// The last record seen, of any partition.
    last_lsn: u64,
    /// The segment prepared ahead of the log, on disk but not yet written to.
    prepared: Option<u64>,
}

impl Retention {
    pub fn new(config: RetentionConfig, partitions: u32, now_ns: u64) -> Retention {
        let log = PartitionLog {
            newest: BEFORE_THE_LOG,
            older: None,
            last_lsn: 0,
        };
        Retention {
            config,
            partitions: vec![log; partitions as usize],
            segments: VecDeque::new(),
            snapshot_bytes: 0,
            pending: None,
            round: VecDeque::new(),
            bytes_since_round: 0,
            round_started_ns: now_ns,
            durable_lsn: 0,
            last_lsn: 0,
            prepared: None,
        }
    }

    /// A segment on disk, starting at record `first_lsn` (recovery lists them in order; the
    /// log's new segments arrive through [`Self::observe`]).
    pub fn add_segment(&mut self, index: u64, first_lsn: u64) {
        if self.segments.back().is_none_or(|&(last, _)| last < index) {
            self.segments.push_back((index, first_lsn));
        }
    }

    /// A snapshot file found at recovery, oldest first per partition. Returns the LSN of a
    /// snapshot of the partition no longer kept, whose file is to be deleted.
    pub fn add_snapshot(&mut self, partition: u32, lsn: u64, file_bytes: u64) -> Option<u64> {
        self.snapshot_bytes += file_bytes;
        let generation = Generation {
            lsn,
            file_bytes,
            first_after: None,
        };
        self.push_generation(partition, generation)
    }

    fn push_generation(&mut self, partition: u32, generation: Generation) -> Option<u64> {
        let log = &mut self.partitions[partition as usize];
        let dropped = log.older.replace(log.newest);
        log.newest = generation;
        let dropped = dropped.filter(|old| old.file_bytes > 0)?;
        self.snapshot_bytes -= dropped.file_bytes;
        Some(dropped.lsn)
    }

    /// A record appended to the log, in sequence order: `bytes` of it, in segment `segment`.
    pub fn observe(&mut self, lsn: u64, partition: u32, bytes: u64, segment: u64) {
        if self.segments.back().is_none_or(|&(last, _)| last < segment) {
            self.segments.push_back((segment, lsn));
            if self.prepared.is_some_and(|prepared| prepared <= segment) {
                // The prepared segment is now the log's.
                self.prepared = None;
            }
        }
        self.bytes_since_round += bytes;
        self.last_lsn = self.last_lsn.max(lsn);
        let Some(log) = self.partitions.get_mut(partition as usize) else {
            return;
        };
        log.last_lsn = lsn;
        log.newest.saw(lsn);
        if let Some(older) = &mut log.older {
            older.saw(lsn);
        }
        if let Some(pending) = &mut self.pending {
            if pending.partition == partition && lsn > pending.lsn {
                pending.first_after.get_or_insert(lsn);
            }
        }
    }

    /// Records up to `lsn` are durable.
    pub fn observe_durable(&mut self, lsn: u64) {
        self.durable_lsn = self.durable_lsn.max(lsn);
    }

    /// Whether the partition has records its newest snapshot (or the one being written) does
    /// not cover.
    fn changed(&self, partition: u32) -> bool {
        let log = &self.partitions[partition as usize];
        let covered = match self.pending {
            Some(pending) if pending.partition == partition => pending.lsn,
            _ => log.newest.lsn,
        };
        log.last_lsn > covered
    }

    /// Whether a snapshot of the partition taken now would help: it changed, or its older
    /// snapshot alone keeps the first segment on disk and a new one would cover more.
    fn wanted(&self, partition: u32) -> bool {
        if self.changed(partition) {
            return true;
        }
        let log = &self.partitions[partition as usize];
        let second_segment = self.segments.get(1).map(|&(_, first_lsn)| first_lsn);
        let holds_back =
            matches!((log.floor(), second_segment), (Some(floor), Some(next)) if floor < next);
        holds_back && self.last_lsn > log.newest.lsn
    }

    /// The next partition to snapshot, when none is being written: the next of the current
    /// round, or the first of a new round when one is due. `urgent` (the log is blocked)
    /// starts a round at once when anything changed.
    pub fn poll_snapshot(&mut self, now_ns: u64, urgent: bool) -> Option<u32> {
        if self.pending.is_some() {
            return None;
        }
        if self.round.is_empty() {
            let due = urgent
                || self.bytes_since_round >= self.config.snapshot_every_bytes
                || now_ns.saturating_sub(self.round_started_ns) >= self.config.snapshot_every_ns;
            if !due {
                return None;
            }
            self.start_round(now_ns);
        }
        while let Some(partition) = self.round.pop_front() {
            if self.wanted(partition) {
                return Some(partition);
            }
        }
        None
    }

    fn start_round(&mut self, now_ns: u64) {
        let mut changed: Vec<u32> = (0..self.partitions.len() as u32)
            .filter(|&partition| self.wanted(partition))
            .collect();
        if changed.is_empty() {
            return;
        }
        // Those that hold the log back the longest first.
        changed.sort_by_key(|&partition| self.partitions[partition as usize].floor());
        self.round = changed.into();
        self.bytes_since_round = 0;
        self.round_started_ns = now_ns;
    }

    /// A snapshot of `partition` was taken from the core, covering its records up to `lsn`:
    /// the last the core numbered, so every record of the partition seen from now on with a
    /// higher number is one the snapshot lacks.
    pub fn begin(&mut self, partition: u32, lsn: u64) {
        debug_assert!(self.pending.is_none());
        self.pending = Some(Pending {
            partition,
            lsn,
            first_after: None,
        });
    }

    /// The snapshot begun is durable in a file of `file_bytes`. Returns the LSN of the
    /// partition's snapshot no longer kept, whose file is to be deleted.
    pub fn snapshot_written(&mut self, file_bytes: u64) -> Option<(u32, u64)> {
        let pending = self.pending.take().expect("a snapshot was begun");
        self.snapshot_bytes += file_bytes;
        let generation = Generation {
            lsn: pending.lsn,
            file_bytes,
            first_after: pending.first_after,
        };
        let dropped = self.push_generation(pending.partition, generation)?;
        Some((pending.partition, dropped))
    }

    /// A partition moved here was written as a snapshot file covering the log up to `lsn`
    /// (none of the log's records up to it is the partition's state: it came from another
    /// node). It becomes the partition's newest generation, like a snapshot taken here.
    /// Returns the LSN of the partition's snapshot no longer kept, whose file is to be
    /// deleted; none when the file replaced one of the same name (the partition left at
    /// `lsn` and came back with no record logged between).
    pub fn installed(&mut self, partition: u32, lsn: u64, file_bytes: u64) -> Option<u64> {
        let log = self.partitions.get_mut(partition as usize)?;
        let generation = Generation {
            lsn,
            file_bytes,
            first_after: None,
        };
        if log.newest.lsn == lsn && log.newest.file_bytes > 0 {
            self.snapshot_bytes -= log.newest.file_bytes;
            self.snapshot_bytes += file_bytes;
            log.newest = generation;
            return None;
        }
        self.snapshot_bytes += file_bytes;
        self.push_generation(partition, generation)
    }

    /// The partition left this shard for good (another node owns it, and nothing of it is
    /// staged here): its snapshots are no longer kept and its records no longer hold the log
    /// back. Returns the LSNs of its snapshot files, to be deleted. Should it come back, it
    /// comes by a move, whose installed snapshot covers every record of it before.
    pub fn forget(&mut self, partition: u32) -> Vec<u64> {
        let last_lsn = self.last_lsn;
        let Some(log) = self.partitions.get_mut(partition as usize) else {
            return Vec::new();
        };
        let kept = [Some(log.newest), log.older];
        log.newest = Generation {
            lsn: last_lsn,
            file_bytes: 0,
            first_after: None,
        };
        log.older = None;
        let files: Vec<Generation> = kept
            .into_iter()
            .flatten()
            .filter(|generation| generation.file_bytes > 0)
            .collect();
        for generation in &files {
            self.snapshot_bytes -= generation.file_bytes;
        }
        files.iter().map(|generation| generation.lsn).collect()
    }

    /// The snapshot begun will not be written (the partition is not this shard's any more):
    /// its records stay in the log.
    pub fn abandon(&mut self) {
        self.pending = None;
    }

    /// The segments no snapshot needs any more, oldest first; they are forgotten here, to be
    /// deleted by the caller.
    pub fn poll_truncate(&mut self) -> Vec<u64> {
        let needed = (self.partitions.iter())
            .filter_map(PartitionLog::floor)
            .min()
            .unwrap_or(u64::MAX);
        let keep_from = needed.min(self.durable_lsn);
        let mut doomed = Vec::new();
        while self.segments.len() >= 2 && self.segments[1].1 <= keep_from {
            let (index, _) = self.segments.pop_front().expect("two segments");
            doomed.push(index);
        }
        doomed
    }

    /// Bytes on disk: the segments, whole, the snapshot files kept, and the segment prepared
    /// ahead.
    pub fn disk_bytes(&self) -> u64 {
        self.segment_files() * self.config.segment_bytes + self.snapshot_bytes
    }

    /// The segment files on disk, the one being written counted even before its first record,
    /// and the prepared one.
    fn segment_files(&self) -> u64 {
        self.segments.len().max(1) as u64 + u64::from(self.prepared.is_some())
    }

    /// Whether the log must stop taking events: the next segment is not prepared and would
    /// break the bound, and the current one, filled to `append_offset`, may fill up with what
    /// can still arrive.
    pub fn log_blocked(&self, append_offset: u64) -> bool {
        self.prepared.is_none()
            && !self.next_segment_fits()
            && append_offset + WAL_UNWRITTEN_BYTES_MAX as u64 > self.config.segment_bytes
    }

    fn next_segment_fits(&self) -> bool {
        self.disk_bytes() + self.config.segment_bytes <= self.config.disk_bytes_max
    }

    /// Whether segment `index`, the one after the log's current segment, may be prepared
    /// ahead: none is, and it fits within the bound. Call [`Self::set_prepared`] once it is on
    /// disk.
    pub fn may_prepare(&self, index: u64) -> bool {
        self.prepared.is_none()
            && self.segments.back().is_none_or(|&(last, _)| last < index)
            && self.next_segment_fits()
    }

    /// Segment `index` is being prepared ahead, its space taken (`Some`; ignored once the log
    /// has reached it), or its preparation was given up and its file deleted (`None`).
    pub fn set_prepared(&mut self, index: Option<u64>) {
        let ahead = |index: &u64| self.segments.back().is_none_or(|&(last, _)| last < *index);
        self.prepared = index.filter(ahead);
    }

    /// The shard's disk bound.
    pub fn disk_bytes_max(&self) -> u64 {
        self.config.disk_bytes_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 64 << 20;

    fn config() -> RetentionConfig {
        RetentionConfig {
            snapshot_every_bytes: 1000,
            snapshot_every_ns: 5_000,
            disk_bytes_max: 4 * SEGMENT,
            segment_bytes: SEGMENT,
        }
    }

    /// Takes and writes one snapshot of `partition` covering everything seen so far.
    fn snapshot(retention: &mut Retention, partition: u32, lsn: u64) -> Option<(u32, u64)> {
        retention.begin(partition, lsn);
        retention.snapshot_written(100)
    }

    #[test]
    fn a_partition_moved_here_becomes_its_newest_generation_and_a_same_named_file_is_replaced() {
        let mut retention = Retention::new(config(), 4, 0);
        retention.add_segment(0, 1);
        retention.observe(1, 2, 10, 0);
        retention.observe_durable(1);
        assert_eq!(snapshot(&mut retention, 2, 1), None);
        // The partition left at record 1 and came back with nothing logged between: its file
        // is the same name, replaced, and counted once.
        let before = retention.disk_bytes();
        assert_eq!(retention.installed(2, 1, 300), None);
        assert_eq!(retention.disk_bytes(), before + 200);
        assert!(!retention.changed(2), "the installed state covers the log");
        retention.observe(2, 2, 10, 0);
        assert!(retention.changed(2), "a record after it, once served here");
        assert_eq!(
            snapshot(&mut retention, 2, 2),
            None,
            "the installed one is kept as the older generation"
        );
        retention.observe(3, 2, 10, 0);
        assert_eq!(snapshot(&mut retention, 2, 3), Some((2, 1)), "deleted once");
        // Moved again later: a new generation, dropping the oldest kept.
        retention.observe(4, 1, 10, 0);
        assert_eq!(retention.installed(2, 4, 100), Some(2));
        assert!(!retention.changed(2));
    }

    #[test]
    fn a_partition_gone_for_good_frees_its_snapshots_and_holds_no_segment_back() {
        let mut retention = Retention::new(config(), 4, 0);
        // Segment 0: records 1-4, alternating partitions 0 and 1; segment 1: 5-8.
        for lsn in 1..=8 {
            retention.observe(lsn, (lsn % 2) as u32, 10, (lsn - 1) / 4);
        }
        retention.observe_durable(8);
        snapshot(&mut retention, 1, 8);
        for _ in 0..2 {
            snapshot(&mut retention, 0, 8);
        }
        assert!(
            retention.poll_truncate().is_empty(),
            "partition 1's only generation before its snapshot is the whole log"
        );
        let before = retention.disk_bytes();
        assert_eq!(retention.forget(1), [8], "its one snapshot file");
        assert_eq!(retention.disk_bytes(), before - 100);
        assert!(!retention.wanted(1), "nothing to snapshot of it any more");
        assert_eq!(
            retention.poll_truncate(),
            [0],
            "it holds segment 0 back no more"
        );
        assert!(retention.forget(1).is_empty(), "forgotten once");
    }

    #[test]
    fn a_round_starts_by_size_or_age_and_takes_each_changed_partition_once() {
        let mut retention = Retention::new(config(), 8, 0);
        retention.add_segment(0, 1);
        for lsn in 1..=9 {
            retention.observe(lsn, (lsn % 3) as u32, 100, 0);
        }
        assert_eq!(retention.poll_snapshot(10, false), None, "900 bytes, 10 ns");
        retention.observe(10, 5, 100, 0);
        let mut taken = Vec::new();
        while let Some(partition) = retention.poll_snapshot(20, false) {
            retention.begin(partition, 10);
            assert_eq!(retention.poll_snapshot(20, false), None, "one at a time");
            retention.snapshot_written(100);
            taken.push(partition);
        }
        taken.sort();
        assert_eq!(taken, [0, 1, 2, 5], "every changed partition, once");
        retention.observe(11, 1, 10, 0);
        assert_eq!(retention.poll_snapshot(4_000, false), None, "too young");
        assert_eq!(retention.poll_snapshot(5_020, false), Some(1), "by age");
        snapshot(&mut retention, 1, 11);
        assert_eq!(
            retention.poll_snapshot(20_000, false),
            None,
            "nothing changed"
        );
        retention.observe(12, 4, 10, 0);
        assert_eq!(retention.poll_snapshot(20_001, true), Some(4), "urgent");
    }

    #[test]
    fn a_segment_is_deleted_once_every_partitions_older_snapshot_covers_it() {
        let mut retention = Retention::new(config(), 4, 0);
        // Segment 0: records 1-4 of partitions 0 and 1; segment 1: 5-8; segment 2: 9-.
        for lsn in 1..=12 {
            retention.observe(lsn, (lsn % 2) as u32, 10, (lsn - 1) / 4);
        }
        retention.observe_durable(12);
        assert!(retention.poll_truncate().is_empty(), "no snapshots");
        snapshot(&mut retention, 0, 12);
        snapshot(&mut retention, 1, 12);
        assert!(
            retention.poll_truncate().is_empty(),
            "the fallback to the full log still needs segment 0"
        );
        retention.observe(13, 0, 10, 3);
        snapshot(&mut retention, 0, 13);
        assert!(
            retention.poll_truncate().is_empty(),
            "partition 1 has one snapshot"
        );
        retention.observe(14, 1, 10, 3);
        retention.observe_durable(14);
        assert_eq!(
            snapshot(&mut retention, 1, 14),
            None,
            "no file before the log"
        );
        assert_eq!(
            retention.poll_truncate(),
            [0, 1, 2],
            "the older snapshots cover 1-12; segment 3 starts at 13"
        );
        assert_eq!(retention.disk_bytes(), SEGMENT + 4 * 100);
        // A third snapshot drops the first file of its partition.
        retention.observe(15, 0, 10, 3);
        assert_eq!(snapshot(&mut retention, 0, 15), Some((0, 12)));
        assert_eq!(retention.disk_bytes(), SEGMENT + 4 * 100);
    }

    #[test]
    fn a_segment_whose_successor_is_not_durable_is_kept() {
        let mut retention = Retention::new(config(), 1, 0);
        retention.observe(1, 0, 10, 0);
        retention.observe(2, 0, 10, 1);
        snapshot(&mut retention, 0, 2);
        snapshot(&mut retention, 0, 2);
        retention.observe_durable(1);
        assert!(
            retention.poll_truncate().is_empty(),
            "segment 1's start is not durable"
        );
        retention.observe_durable(2);
        assert_eq!(retention.poll_truncate(), [0]);
    }

    #[test]
    fn records_arriving_while_a_snapshot_is_written_keep_their_log() {
        let mut retention = Retention::new(config(), 1, 0);
        retention.observe(1, 0, 10, 0);
        retention.begin(0, 1);
        retention.observe(2, 0, 10, 1);
        retention.snapshot_written(100);
        retention.observe(3, 0, 10, 2);
        // Records the core applied before the snapshot but the log task saw after it.
        retention.begin(0, 5);
        retention.observe(4, 0, 10, 2);
        retention.observe(5, 0, 10, 2);
        retention.snapshot_written(100);
        retention.observe_durable(5);
        assert_eq!(
            retention.poll_truncate(),
            [0],
            "the older snapshot (lsn 1) needs record 2 on, in segment 1"
        );
        assert!(!retention.changed(0));
        retention.observe(6, 0, 10, 2);
        assert!(retention.changed(0));
    }

    #[test]
    fn the_log_blocks_when_the_next_segment_would_break_the_bound_before_the_current_fills() {
        let mut retention = Retention::new(config(), 1, 0);
        let early = 1 << 20;
        let late = SEGMENT - WAL_UNWRITTEN_BYTES_MAX as u64;
        for segment in 0..3 {
            retention.observe(segment + 1, 0, 10, segment);
        }
        assert!(!retention.log_blocked(late), "three segments of four");
        retention.begin(0, 3);
        retention.snapshot_written(4096);
        assert!(
            !retention.log_blocked(early),
            "room left in the current segment"
        );
        assert!(
            retention.log_blocked(late + 1),
            "no room for a fourth segment"
        );
        retention.begin(0, 3);
        retention.snapshot_written(4096);
        retention.observe_durable(3);
        assert_eq!(retention.poll_truncate(), [0, 1]);
        assert!(!retention.log_blocked(late + 1), "truncation made room");
    }

    #[test]
    fn a_segment_is_prepared_ahead_only_within_the_bound_and_counts_until_the_log_reaches_it() {
        let mut retention = Retention::new(config(), 1, 0);
        let late = SEGMENT - WAL_UNWRITTEN_BYTES_MAX as u64;
        retention.observe(1, 0, 10, 0);
        retention.observe(2, 0, 10, 1);
        assert!(!retention.may_prepare(1), "segment 1 is the log's already");
        assert!(retention.may_prepare(2), "two segments of four on disk");
        retention.set_prepared(Some(2));
        assert_eq!(retention.disk_bytes(), 3 * SEGMENT);
        assert!(!retention.may_prepare(3), "one prepared at a time");
        retention.observe(3, 0, 10, 2);
        assert_eq!(
            retention.disk_bytes(),
            3 * SEGMENT,
            "the prepared segment became the log's, counted once"
        );
        assert!(retention.may_prepare(3), "three of four");
        retention.set_prepared(Some(3));
        assert!(
            !retention.log_blocked(late + 1),
            "the next segment is on disk: the current may fill"
        );
        retention.observe(4, 0, 10, 3);
        assert!(!retention.may_prepare(4), "four segments of four: no room");
        assert!(
            retention.log_blocked(late + 1),
            "nor for the log's next one"
        );
        retention.set_prepared(Some(3));
        assert_eq!(
            retention.disk_bytes(),
            4 * SEGMENT,
            "a preparation the log overtook is not counted"
        );
    }

    #[test]
    fn a_partition_that_stopped_changing_is_taken_again_to_let_the_first_segment_go() {
        let mut retention = Retention::new(config(), 2, 0);
        // Partition 0 writes segment 0 and falls quiet; partition 1 goes on in segment 1.
        retention.observe(1, 0, 10, 0);
        snapshot(&mut retention, 0, 1);
        retention.observe(2, 1, 10, 1);
        snapshot(&mut retention, 1, 2);
        retention.observe(3, 1, 10, 1);
        snapshot(&mut retention, 1, 3);
        retention.observe_durable(3);
        assert!(
            retention.poll_truncate().is_empty(),
            "partition 0's fallback is the log from record 1"
        );
        assert_eq!(
            retention.poll_snapshot(0, true),
            Some(0),
            "quiet but holding the log"
        );
        snapshot(&mut retention, 0, 3);
        assert_eq!(retention.poll_truncate(), [0]);
        assert_eq!(
            retention.poll_snapshot(0, true),
            None,
            "nothing left to gain"
        );
    }
}
