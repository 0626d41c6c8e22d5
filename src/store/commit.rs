//! Group commit, sans-IO: which bytes of the log to write next, when to sync, and what is
//! durable.
//!
//! Inputs are records to append ([`GroupCommit::append`]) and the completions of the I/O the
//! machine asked for ([`GroupCommit::handle_written`], [`GroupCommit::handle_synced`]); outputs
//! are the next write ([`GroupCommit::poll_write`]), the next sync ([`GroupCommit::poll_sync`])
//! and the durable sequence number. One write and one sync are in flight at most: records
//! appended while they run join the next write, and everything written by the time a sync
//! completes is covered by the next one, so a slow disk turns into bigger batches, not more
//! syncs. A sync only vouches for writes that completed before it was issued.
//!
//! The machine keeps the unwritten tail of the log in memory from the start of its last
//! partial block: with direct I/O every write covers whole blocks, so the partial block is
//! written again (with more records) by the next write. Segments are fixed-size; a record that
//! does not fit the current one starts the next, with its header block. Lives on its shard's
//! core, inside the shard's log task.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use crate::constants::{EVENT_BYTES_MAX, WAL_BLOCK_BYTES_MAX, WAL_SEGMENT_HEADER_BYTES};
use crate::store::format::{SegmentHeader, encode_record, record_bytes};

/// Whose log this is: what every segment header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogIdentity {
    pub node: u32,
    pub shard: u32,
    pub partitions: u32,
}

/// Where the log continues: the next sequence number, and the segment and offset of the next
/// record (after recovery, the end of what it read; for a new log, segment 0 before its
/// header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPosition {
    pub next_lsn: u64,
    pub segment: u64,
    /// Offset of the next record in `segment`; 0 means the segment is new (its header is
    /// written first).
    pub offset: u64,
}

impl LogPosition {
    /// An empty log.
    pub const START: LogPosition = LogPosition {
        next_lsn: 1,
        segment: 0,
        offset: 0,
    };
}

/// A write to issue: `bytes` (from [`GroupCommit::write_bytes`]) at `offset` of segment
/// `segment`, padded with zeros to `len`, a multiple of the block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteIo {
    pub segment: u64,
    pub offset: u64,
    pub len: usize,
    /// Records up to this sequence number are in the write.
    pub lsn: u64,
}

/// A sync to issue: `fdatasync` every segment in `segments`; once all are done, records up to
/// `lsn` are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncIo {
    pub segments: RangeInclusive<u64>,
    pub lsn: u64,
}

/// The bytes of one segment from a block boundary on that are not all written yet.
struct Tail {
    segment: u64,
    /// File offset of `bytes[0]`; a multiple of the block size.
    start: u64,
    bytes: Vec<u8>,
    /// The highest sequence number in `bytes`, 0 when none.
    last_lsn: u64,
    /// No more records go to this segment.
    sealed: bool,
}

/// The group-commit state of one shard's log. See the module documentation.
pub struct GroupCommit {
    identity: LogIdentity,
    segment_bytes: u64,
    block: usize,
    /// The front tail is the one being written; only the back one takes records.
    tails: VecDeque<Tail>,
    next_lsn: u64,
    /// The write in flight: its length in bytes of the front tail, and its last sequence number.
    writing: Option<(usize, u64)>,
    syncing: Option<SyncIo>,
    written_lsn: u64,
    /// The segment the last completed write went to.
    written_segment: u64,
    /// The first segment a sync must still cover.
    unsynced_from: u64,
    durable_lsn: u64,
}

impl GroupCommit {
    /// The machine for a log continuing at `position`, with segments of `segment_bytes` and
    /// direct-I/O blocks of `block` bytes (a power of two, at most `WAL_BLOCK_BYTES_MAX`).
    /// `partial_block` holds the bytes of the block the position falls in, before the
    /// position (they are written again with the next records); empty for a new segment.
    pub fn new(
        identity: LogIdentity,
        segment_bytes: u64,
        block: usize,
        position: LogPosition,
        partial_block: &[u8],
    ) -> GroupCommit {
        assert!(block.is_power_of_two() && block <= WAL_BLOCK_BYTES_MAX);
        assert!(
            segment_bytes % block as u64 == 0
                && segment_bytes as usize
                    >= WAL_SEGMENT_HEADER_BYTES + record_bytes(EVENT_BYTES_MAX)
        );
        let durable = position.next_lsn - 1;
        let mut machine = GroupCommit {
            identity,
            segment_bytes,
            block,
            tails: VecDeque::new(),
            next_lsn: position.next_lsn,
            writing: None,
            syncing: None,
            written_lsn: durable,
            written_segment: position.segment,
            unsynced_from: position.segment,
            durable_lsn: durable,
        };
        if position.offset == 0 {
            machine.open_segment(position.segment);
        } else {
            let start = position.offset - position.offset % block as u64;
            assert_eq!(partial_block.len() as u64, position.offset - start);
            machine.tails.push_back(Tail {
                segment: position.segment,
                start,
                bytes: partial_block.to_vec(),
                last_lsn: 0,
                sealed: false,
            });
        }
        machine
    }

    /// Starts segment `index` with its header; its first record is the next one appended.
    fn open_segment(&mut self, index: u64) {
        let header = SegmentHeader {
            node: self.identity.node,
            shard: self.identity.shard,
            partitions: self.identity.partitions,
            index,
            first_lsn: self.next_lsn,
        };
        self.tails.push_back(Tail {
            segment: index,
            start: 0,
            bytes: header.encode(),
            last_lsn: 0,
            sealed: false,
        });
    }

    /// Appends a record and returns its sequence number. `payload` is an event's archive as
    /// received, at most `EVENT_BYTES_MAX` bytes and not empty.
    pub fn append(&mut self, partition: u32, payload: &[u8]) -> u64 {
        assert!(!payload.is_empty() && payload.len() <= EVENT_BYTES_MAX);
        let tail = self.tails.back().expect("a log always has a tail");
        let end = tail.start + tail.bytes.len() as u64;
        if end + record_bytes(payload.len()) as u64 > self.segment_bytes {
            let next = tail.segment + 1;
            self.tails.back_mut().expect("checked").sealed = true;
            self.open_segment(next);
        }
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let tail = self.tails.back_mut().expect("a log always has a tail");
        encode_record(&mut tail.bytes, lsn, partition, payload);
        tail.last_lsn = lsn;
        lsn
    }

    /// The segment records are appended to now.
    pub fn append_segment(&self) -> u64 {
        self.tails.back().expect("a log always has a tail").segment
    }

    /// Where the next record goes in [`Self::append_segment`] (if it fits).
    pub fn append_offset(&self) -> u64 {
        let tail = self.tails.back().expect("a log always has a tail");
        tail.start + tail.bytes.len() as u64
    }

    /// The sequence number the next record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Records up to this sequence number are on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// Appended records are not all durable yet.
    pub fn pending(&self) -> bool {
        self.durable_lsn + 1 < self.next_lsn
    }

    /// The next write, when none is in flight and there is something to write.
    pub fn poll_write(&mut self) -> Option<WriteIo> {
        if self.writing.is_some() {
            return None;
        }
        let tail = self.tails.front()?;
        if tail.last_lsn == 0 && !tail.sealed {
            // Nothing but already-written bytes (or a header alone): wait for records.
            return None;
        }
        let len = tail.bytes.len().next_multiple_of(self.block);
        let lsn = tail.last_lsn;
        self.writing = Some((tail.bytes.len(), lsn));
        Some(WriteIo {
            segment: tail.segment,
            offset: tail.start,
            len,
            lsn,
        })
    }

    /// The bytes of `write`, to copy into an aligned buffer and pad with zeros to its length.
    pub fn write_bytes(&self, write: &WriteIo) -> &[u8] {
        let tail = self.tails.front().expect("a write in flight has its tail");
        debug_assert_eq!((tail.segment, tail.start), (write.segment, write.offset));
        let (len, _) = self.writing.expect("a write in flight");
        &tail.bytes[..len]
    }

    /// The write from [`Self::poll_write`] is complete (all of it: the shell retries short
    /// writes).
    pub fn handle_written(&mut self) {
        let (len, lsn) = self.writing.take().expect("a write was in flight");
        let tail = self
            .tails
            .front_mut()
            .expect("a write in flight has its tail");
        if lsn > 0 {
            self.written_lsn = lsn;
            self.written_segment = tail.segment;
        }
        if tail.last_lsn == lsn {
            tail.last_lsn = 0;
        }
        if tail.sealed && len == tail.bytes.len() {
            self.tails.pop_front();
            return;
        }
        // Whole blocks written are done with; the partial last block is written again.
        let done = len - len % self.block;
        tail.bytes.drain(..done);
        tail.start += done as u64;
    }

    /// The next sync, when none is in flight and completed writes are not all durable.
    pub fn poll_sync(&mut self) -> Option<SyncIo> {
        if self.syncing.is_some() || self.written_lsn <= self.durable_lsn {
            return None;
        }
        let sync = SyncIo {
            segments: self.unsynced_from..=self.written_segment,
            lsn: self.written_lsn,
        };
        self.syncing = Some(sync.clone());
        Some(sync)
    }

    /// The sync from [`Self::poll_sync`] is complete; returns the durable sequence number.
    pub fn handle_synced(&mut self) -> u64 {
        let sync = self.syncing.take().expect("a sync was in flight");
        self.durable_lsn = sync.lsn;
        self.unsynced_from = *sync.segments.end();
        self.durable_lsn
    }

    /// Bytes held for writing, for the shell's accounting.
    pub fn buffered_bytes(&self) -> usize {
        self.tails.iter().map(|tail| tail.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::{SegmentEnd, scan_segment};

    /// Fills a machine with a write in flight (so nothing leaves) from near the end of a
    /// real-size segment with `count` records of `payload` bytes each; returns what it buffers.
    fn buffered_when_filled(count: usize, payload: usize) -> usize {
        use crate::constants::WAL_SEGMENT_BYTES;
        // A few blocks before the segment's end: the batch crosses into the next segment.
        let offset = WAL_SEGMENT_BYTES - 4 * WAL_BLOCK_BYTES_MAX as u64 - 100;
        let partial = vec![0u8; (offset % WAL_BLOCK_BYTES_MAX as u64) as usize];
        let position = LogPosition {
            next_lsn: 1,
            segment: 0,
            offset,
        };
        let mut machine = GroupCommit::new(
            identity(),
            WAL_SEGMENT_BYTES,
            WAL_BLOCK_BYTES_MAX,
            position,
            &partial,
        );
        machine.append(0, &[1; 16]);
        assert!(machine.poll_write().is_some());
        let bytes = vec![7u8; payload];
        for _ in 0..count {
            machine.append(1, &bytes);
        }
        machine.buffered_bytes()
    }

    #[test]
    fn the_memory_sum_covers_the_unwritten_tail_at_the_unsynced_limits() {
        use crate::constants::{
            WAL_RECORD_HEADER_BYTES, WAL_UNSYNCED_EVENTS_MAX, WAL_UNSYNCED_PAYLOAD_BYTES_MAX,
            WAL_UNWRITTEN_BYTES_MAX,
        };
        // As many records as may be unsynced, sharing the byte budget; then the byte budget in
        // the largest events.
        let cases = [
            (
                WAL_UNSYNCED_EVENTS_MAX,
                WAL_UNSYNCED_PAYLOAD_BYTES_MAX / WAL_UNSYNCED_EVENTS_MAX,
            ),
            (
                WAL_UNSYNCED_PAYLOAD_BYTES_MAX / EVENT_BYTES_MAX,
                EVENT_BYTES_MAX,
            ),
            (WAL_UNSYNCED_EVENTS_MAX, 1),
        ];
        for (count, payload) in cases {
            let buffered = buffered_when_filled(count, payload);
            assert!(
                buffered <= WAL_UNWRITTEN_BYTES_MAX,
                "{count} records of {payload} bytes buffer {buffered} bytes, WAL_UNWRITTEN_BYTES_MAX is {WAL_UNWRITTEN_BYTES_MAX}"
            );
            assert!(
                buffered >= count * (payload + WAL_RECORD_HEADER_BYTES),
                "every record is buffered: {buffered}"
            );
        }
    }

    const BLOCK: usize = 512;
    const SEGMENT: u64 = 16 * 1024;

    fn identity() -> LogIdentity {
        LogIdentity {
            node: 1,
            shard: 2,
            partitions: 16,
        }
    }

    /// A disk of segments the tests write into, checking the machine's I/O as they go.
    #[derive(Default)]
    struct Disk {
        segments: Vec<Vec<u8>>,
        writes: usize,
        syncs: usize,
    }

    impl Disk {
        fn write(&mut self, machine: &mut GroupCommit, io: WriteIo) {
            assert_eq!(io.offset % BLOCK as u64, 0);
            assert_eq!(io.len % BLOCK, 0);
            assert!(io.offset + io.len as u64 <= SEGMENT);
            let bytes = machine.write_bytes(&io).to_vec();
            assert!(bytes.len() <= io.len);
            let index = io.segment as usize;
            if self.segments.len() <= index {
                self.segments.resize(index + 1, vec![0; SEGMENT as usize]);
            }
            let target = &mut self.segments[index][io.offset as usize..][..io.len];
            target.fill(0);
            target[..bytes.len()].copy_from_slice(&bytes);
            self.writes += 1;
            machine.handle_written();
        }

        /// Runs writes and syncs until everything appended is durable.
        fn settle(&mut self, machine: &mut GroupCommit) {
            loop {
                if let Some(io) = machine.poll_write() {
                    self.write(machine, io);
                } else if machine.poll_sync().is_some() {
                    self.syncs += 1;
                    machine.handle_synced();
                } else {
                    break;
                }
            }
        }

        /// Every record on the disk, in order, checked.
        fn records(&self) -> Vec<(u64, u32, Vec<u8>)> {
            let mut out = Vec::new();
            let mut next = 1;
            for segment in &self.segments {
                let header = SegmentHeader::decode(segment).expect("a header");
                assert_eq!(header.first_lsn, next);
                let scan = scan_segment(segment, next);
                assert!(
                    matches!(scan.end, SegmentEnd::Clean { .. }),
                    "{:?}",
                    scan.end
                );
                for record in scan.records {
                    let payload = segment[record.payload_offset..][..record.payload_len].to_vec();
                    out.push((record.lsn, record.partition, payload));
                    next = record.lsn + 1;
                }
            }
            out
        }
    }

    fn payload(lsn: u64) -> Vec<u8> {
        vec![lsn as u8; 1 + (lsn as usize * 53) % 700]
    }

    #[test]
    fn records_appended_while_a_write_runs_join_the_next_write() {
        let mut machine = GroupCommit::new(identity(), SEGMENT, BLOCK, LogPosition::START, &[]);
        let mut disk = Disk::default();
        assert_eq!(
            machine.poll_write(),
            None,
            "nothing to write before a record"
        );
        assert_eq!(machine.append(0, &payload(1)), 1);
        let first = machine.poll_write().expect("the first record's write");
        assert_eq!(first.lsn, 1);
        for lsn in 2..=5 {
            assert_eq!(machine.append(lsn as u32, &payload(lsn)), lsn);
            assert_eq!(machine.poll_write(), None, "one write in flight");
        }
        disk.write(&mut machine, first);
        let second = machine.poll_write().expect("the batch of the four others");
        assert_eq!(second.lsn, 5);
        assert_eq!(machine.durable_lsn(), 0, "written is not durable");
        disk.write(&mut machine, second);
        disk.settle(&mut machine);
        assert_eq!(disk.writes, 2);
        assert_eq!(machine.durable_lsn(), 5);
        let records = disk.records();
        assert_eq!(records.len(), 5);
        for (lsn, partition, bytes) in records {
            assert_eq!(partition as u64, if lsn == 1 { 0 } else { lsn });
            assert_eq!(bytes, payload(lsn));
        }
    }

    #[test]
    fn one_sync_in_flight_covers_only_writes_completed_before_it() {
        let mut machine = GroupCommit::new(identity(), SEGMENT, BLOCK, LogPosition::START, &[]);
        let mut disk = Disk::default();
        machine.append(0, &payload(1));
        let write = machine.poll_write().unwrap();
        disk.write(&mut machine, write);
        let sync = machine.poll_sync().expect("a sync for record 1");
        assert_eq!(sync.lsn, 1);
        // Records arriving while the sync runs are written, but wait for the next sync.
        machine.append(0, &payload(2));
        machine.append(0, &payload(3));
        let write = machine.poll_write().expect("writes go on during a sync");
        disk.write(&mut machine, write);
        assert_eq!(machine.poll_sync(), None, "one sync in flight");
        assert_eq!(
            machine.handle_synced(),
            1,
            "the sync vouches for record 1 only"
        );
        let next = machine.poll_sync().expect("the batch's sync");
        assert_eq!(next.lsn, 3);
        assert_eq!(machine.handle_synced(), 3);
        assert!(!machine.pending());
        assert_eq!(machine.poll_sync(), None);
    }

    #[test]
    fn a_slow_sync_makes_bigger_batches_not_more_syncs() {
        let mut machine =
            GroupCommit::new(identity(), SEGMENT * 64, BLOCK, LogPosition::START, &[]);
        let mut disk = Disk::default();
        let (mut syncs, mut lsn) = (0, 0u64);
        // Each round: 10 appends arrive while one sync runs.
        for _ in 0..20 {
            for _ in 0..10 {
                lsn += 1;
                machine.append(1, &payload(lsn));
            }
            if let Some(io) = machine.poll_write() {
                // One segment only here: the disk's segment size is not the machine's.
                let bytes = machine.write_bytes(&io).len();
                assert!(bytes <= io.len);
                machine.handle_written();
                disk.writes += 1;
            }
            if machine.poll_sync().is_some() {
                syncs += 1;
                machine.handle_synced();
            }
        }
        assert_eq!(machine.durable_lsn(), lsn);
        assert_eq!(syncs, 20, "one sync per batch of ten, not per record");
    }

    #[test]
    fn records_roll_over_to_the_next_segment_and_the_sync_covers_both() {
        let mut machine = GroupCommit::new(identity(), SEGMENT, BLOCK, LogPosition::START, &[]);
        let mut disk = Disk::default();
        let mut lsn = 0;
        while disk.segments.len() < 3 {
            lsn += 1;
            machine.append(lsn as u32 % 16, &payload(lsn));
            if let Some(io) = machine.poll_write() {
                disk.write(&mut machine, io);
            }
            if let Some(sync) = machine.poll_sync() {
                assert!(sync.segments.end() - sync.segments.start() <= 1);
                machine.handle_synced();
            }
        }
        disk.settle(&mut machine);
        assert_eq!(machine.durable_lsn(), lsn);
        let records = disk.records();
        assert_eq!(records.len() as u64, lsn);
        for (index, (record_lsn, _, bytes)) in records.into_iter().enumerate() {
            assert_eq!(record_lsn, index as u64 + 1);
            assert_eq!(bytes, payload(record_lsn));
        }
    }

    #[test]
    fn a_log_continues_after_recovery_where_it_ended() {
        let mut machine = GroupCommit::new(identity(), SEGMENT, BLOCK, LogPosition::START, &[]);
        let mut disk = Disk::default();
        for lsn in 1..=7 {
            machine.append(3, &payload(lsn));
        }
        disk.settle(&mut machine);
        let scan = scan_segment(&disk.segments[0], 1);
        let end = scan.end.offset() as u64;
        let block_start = (end - end % BLOCK as u64) as usize;
        let partial = disk.segments[0][block_start..end as usize].to_vec();
        let position = LogPosition {
            next_lsn: 8,
            segment: 0,
            offset: end,
        };
        let mut machine = GroupCommit::new(identity(), SEGMENT, BLOCK, position, &partial);
        assert_eq!(machine.durable_lsn(), 7);
        for lsn in 8..=12 {
            assert_eq!(machine.append(3, &payload(lsn)), lsn);
        }
        disk.settle(&mut machine);
        let records = disk.records();
        assert_eq!(records.len(), 12);
        assert_eq!(records[11].2, payload(12));
    }
}
