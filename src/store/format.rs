//! The log's bytes on disk, sans-IO: the segment header, the records, and reading a segment
//! back (with torn-tail and corruption detection).
//!
//! ```text
//! segment: header (WAL_SEGMENT_HEADER_BYTES, one block) | record | record | ... | zeros
//! header:  magic [8] | version u32 | node u32 | shard u32 | partitions u32
//!          | segment index u64 | first lsn u64 | xxh3_64(header[0..40]) u64 | zeros
//! record:  payload len u32 | partition u32 | lsn u64 | checksum u64 | marker u32 | 0 u32
//!          | payload (the event's archive, as received) | zeros to a multiple of 16
//! ```
//!
//! All integers are little-endian. A record's checksum is xxh3 of its payload seeded with its
//! length, partition and sequence number, so a flipped bit anywhere in a record is caught.
//! Records start 16-byte aligned (relative to the segment), so a payload read into an aligned
//! buffer can be read in place by rkyv. Segments are pre-allocated and read back as zeros past
//! the last record: an all-zero record header is the end of the written log. Pure functions;
//! used on any thread.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::constants::{
    ARCHIVE_ALIGN, EVENT_BYTES_MAX, WAL_FORMAT_VERSION, WAL_MAGIC, WAL_RECORD_HEADER_BYTES,
    WAL_SEGMENT_HEADER_BYTES,
};
use crate::core::codec::align_up;

/// Marks the fourth word of a record header: an all-zero area is never a record.
const RECORD_MARKER: u32 = u32::from_le_bytes(*b"TRVR");
/// Bytes of the segment header covered by its checksum.
const HEADER_HASHED_BYTES: usize = 40;

/// What a segment header says: whose log this is and where the segment sits in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub node: u32,
    pub shard: u32,
    pub partitions: u32,
    /// The segment's place in the log, from 0.
    pub index: u64,
    /// The sequence number of the segment's first record.
    pub first_lsn: u64,
}

/// Why a segment header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    Magic,
    Version(u32),
    Checksum,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => write!(f, "the file is shorter than a segment header"),
            HeaderError::Magic => write!(f, "it is not a trove log segment (wrong magic)"),
            HeaderError::Version(version) => write!(
                f,
                "it has log format version {version}; this build reads version {WAL_FORMAT_VERSION}"
            ),
            HeaderError::Checksum => write!(f, "its header checksum does not match"),
        }
    }
}

impl SegmentHeader {
    /// The header's block: `WAL_SEGMENT_HEADER_BYTES` bytes, zero past the hashed fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; WAL_SEGMENT_HEADER_BYTES];
        block[0..8].copy_from_slice(&WAL_MAGIC);
        block[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&self.node.to_le_bytes());
        block[16..20].copy_from_slice(&self.shard.to_le_bytes());
        block[20..24].copy_from_slice(&self.partitions.to_le_bytes());
        block[24..32].copy_from_slice(&self.index.to_le_bytes());
        block[32..40].copy_from_slice(&self.first_lsn.to_le_bytes());
        let hash = xxh3_64(&block[..HEADER_HASHED_BYTES]);
        block[40..48].copy_from_slice(&hash.to_le_bytes());
        block
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < WAL_SEGMENT_HEADER_BYTES {
            return Err(HeaderError::Short);
        }
        if bytes[0..8] != WAL_MAGIC {
            return Err(HeaderError::Magic);
        }
        let version = read_u32(bytes, 8);
        if version != WAL_FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if xxh3_64(&bytes[..HEADER_HASHED_BYTES]) != read_u64(bytes, 40) {
            return Err(HeaderError::Checksum);
        }
        Ok(SegmentHeader {
            node: read_u32(bytes, 12),
            shard: read_u32(bytes, 16),
            partitions: read_u32(bytes, 20),
            index: read_u64(bytes, 24),
            first_lsn: read_u64(bytes, 32),
        })
    }
}

/// Bytes a record of `payload_len` payload bytes takes in a segment.
pub const fn record_bytes(payload_len: usize) -> usize {
    align_up(WAL_RECORD_HEADER_BYTES + payload_len)
}

/// Appends one record to `out`, whose length must be a multiple of 16 (records stay aligned).
pub fn encode_record(out: &mut Vec<u8>, lsn: u64, partition: u32, payload: &[u8]) {
    debug_assert_eq!(out.len() % ARCHIVE_ALIGN, 0);
    debug_assert!(!payload.is_empty() && payload.len() <= EVENT_BYTES_MAX);
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&checksum(lsn, partition, payload).to_le_bytes());
    out.extend_from_slice(&RECORD_MARKER.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(align_up(out.len()), 0);
}

fn checksum(lsn: u64, partition: u32, payload: &[u8]) -> u64 {
    let seed = lsn ^ (u64::from(partition) << 32 | payload.len() as u64).rotate_left(17);
    xxh3_64_with_seed(payload, seed)
}

/// One record read back: where its payload is in the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef {
    pub lsn: u64,
    pub partition: u32,
    /// Offset of the payload in the segment; a multiple of 16.
    pub payload_offset: usize,
    pub payload_len: usize,
}

/// What sits at one offset of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Record(RecordRef),
    /// An all-zero record header: nothing was written here.
    Empty,
    /// Something that is not a whole, intact record.
    Bad(BadRecord),
}

/// Why the bytes at an offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRecord {
    /// The record runs past the end of the segment (or of what was read).
    Truncated,
    /// The header's marker, length or padding is wrong.
    Header,
    /// The payload does not match its checksum.
    Checksum,
    /// An intact record whose sequence number is not the next one.
    Sequence { expected: u64, found: u64 },
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::Truncated => write!(f, "a record runs past the end of the segment"),
            BadRecord::Header => write!(f, "a record header is malformed"),
            BadRecord::Checksum => write!(f, "a record does not match its checksum"),
            BadRecord::Sequence { expected, found } => write!(
                f,
                "a record has sequence number {found} where {expected} was expected"
            ),
        }
    }
}

fn read_slot(segment: &[u8], offset: usize) -> Slot {
    let Some(header) = segment.get(offset..offset + WAL_RECORD_HEADER_BYTES) else {
        // Fewer bytes than a header left: the segment is full here.
        return Slot::Empty;
    };
    if header.iter().all(|&byte| byte == 0) {
        return Slot::Empty;
    }
    let len = read_u32(header, 0) as usize;
    if read_u32(header, 24) != RECORD_MARKER
        || read_u32(header, 28) != 0
        || len == 0
        || len > EVENT_BYTES_MAX
    {
        return Slot::Bad(BadRecord::Header);
    }
    let payload_offset = offset + WAL_RECORD_HEADER_BYTES;
    let Some(payload) = segment.get(payload_offset..payload_offset + len) else {
        return Slot::Bad(BadRecord::Truncated);
    };
    let (partition, lsn) = (read_u32(header, 4), read_u64(header, 8));
    if checksum(lsn, partition, payload) != read_u64(header, 16) {
        return Slot::Bad(BadRecord::Checksum);
    }
    Slot::Record(RecordRef {
        lsn,
        partition,
        payload_offset,
        payload_len: len,
    })
}

/// How a segment's records end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Zeros from `offset` on: the log ends (or continues in the next segment) cleanly.
    Clean { offset: usize },
    /// A bad record at `offset` with no intact later record after it in the segment: the
    /// crash interrupted a write. Cutting the log at `offset` loses nothing that was durable.
    Torn { offset: usize, why: BadRecord },
    /// A bad record at `offset` followed by intact later records: the log was damaged.
    Corrupt { offset: usize, why: BadRecord },
}

impl SegmentEnd {
    /// Where the segment's good records end.
    pub fn offset(&self) -> usize {
        match *self {
            SegmentEnd::Clean { offset }
            | SegmentEnd::Torn { offset, .. }
            | SegmentEnd::Corrupt { offset, .. } => offset,
        }
    }
}

/// A segment's records, read back and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: Vec<RecordRef>,
    pub end: SegmentEnd,
}

/// Reads the records of one segment (`segment` holds the whole file, header included), whose
/// first record must carry `first_lsn`. Every checksum is checked; the records are in order.
pub fn scan_segment(segment: &[u8], first_lsn: u64) -> SegmentScan {
    let mut records = Vec::new();
    let mut offset = WAL_SEGMENT_HEADER_BYTES;
    let mut expected = first_lsn;
    loop {
        let why = match read_slot(segment, offset) {
            Slot::Empty => {
                return SegmentScan {
                    records,
                    end: SegmentEnd::Clean { offset },
                };
            }
            Slot::Record(record) if record.lsn == expected => {
                records.push(record);
                offset = align_up(record.payload_offset + record.payload_len);
                expected += 1;
                continue;
            }
            Slot::Record(record) => BadRecord::Sequence {
                expected,
                found: record.lsn,
            },
            Slot::Bad(why) => why,
        };
        // An intact record out of sequence was never written by a crash cut short.
        let damaged = matches!(why, BadRecord::Sequence { .. })
            || intact_record_after(segment, offset, expected);
        let end = if damaged {
            SegmentEnd::Corrupt { offset, why }
        } else {
            SegmentEnd::Torn { offset, why }
        };
        return SegmentScan { records, end };
    }
}

/// Whether an intact record with a sequence number of at least `lsn_min` sits anywhere after
/// `offset`: what tells damage in the middle of the log from a write cut short at its end.
fn intact_record_after(segment: &[u8], offset: usize, lsn_min: u64) -> bool {
    let mut at = offset + ARCHIVE_ALIGN;
    while at + WAL_RECORD_HEADER_BYTES <= segment.len() {
        if let Slot::Record(record) = read_slot(segment, at) {
            if record.lsn >= lsn_min {
                return true;
            }
        }
        at += ARCHIVE_ALIGN;
    }
    false
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u64, first_lsn: u64) -> SegmentHeader {
        SegmentHeader {
            node: 3,
            shard: 1,
            partitions: 64,
            index,
            first_lsn,
        }
    }

    /// A segment of `size` bytes holding records `first..first + payloads.len()`.
    fn segment(size: usize, first: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = header(0, first).encode();
        for (index, payload) in payloads.iter().enumerate() {
            encode_record(&mut bytes, first + index as u64, index as u32 % 7, payload);
        }
        assert!(bytes.len() <= size);
        bytes.resize(size, 0);
        bytes
    }

    fn payloads(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|index| {
                (0..(1 + index * 37 % 300))
                    .map(|b| (b + index) as u8)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let block = header(7, 12345).encode();
        assert_eq!(block.len(), WAL_SEGMENT_HEADER_BYTES);
        assert_eq!(SegmentHeader::decode(&block), Ok(header(7, 12345)));
        let mut flipped = block.clone();
        flipped[17] ^= 1;
        assert_eq!(SegmentHeader::decode(&flipped), Err(HeaderError::Checksum));
        let mut other = block.clone();
        other[0] = b'X';
        assert_eq!(SegmentHeader::decode(&other), Err(HeaderError::Magic));
        let mut newer = block;
        newer[8] = 9;
        assert_eq!(SegmentHeader::decode(&newer), Err(HeaderError::Version(9)));
        assert_eq!(SegmentHeader::decode(&[0; 16]), Err(HeaderError::Short));
    }

    #[test]
    fn records_round_trip_byte_for_byte_and_aligned() {
        let payloads = payloads(50);
        let bytes = segment(64 * 1024, 100, &payloads);
        let scan = scan_segment(&bytes, 100);
        assert_eq!(scan.records.len(), payloads.len());
        for (index, record) in scan.records.iter().enumerate() {
            assert_eq!(record.lsn, 100 + index as u64);
            assert_eq!(record.partition, index as u32 % 7);
            assert_eq!(record.payload_offset % ARCHIVE_ALIGN, 0);
            let payload = &bytes[record.payload_offset..][..record.payload_len];
            assert_eq!(payload, &payloads[index][..]);
        }
        let last = scan.records.last().unwrap();
        assert_eq!(
            scan.end,
            SegmentEnd::Clean {
                offset: align_up(last.payload_offset + last.payload_len)
            }
        );
    }

    #[test]
    fn a_record_cut_short_at_the_tail_is_torn_not_corrupt() {
        let payloads = payloads(20);
        let whole = segment(16 * 1024, 1, &payloads);
        let scan = scan_segment(&whole, 1);
        let last = scan.records[19];
        let last_start = last.payload_offset - WAL_RECORD_HEADER_BYTES;
        // Every prefix of the last record's bytes: the write stopped part-way.
        for cut in (last_start + 1..last.payload_offset + last.payload_len).step_by(5) {
            let mut torn = whole.clone();
            torn[cut..].fill(0);
            let scan = scan_segment(&torn, 1);
            assert_eq!(scan.records.len(), 19, "cut at {cut}");
            assert!(
                matches!(scan.end, SegmentEnd::Torn { offset, .. } if offset == last_start),
                "cut at {cut}: {:?}",
                scan.end
            );
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_corruption_at_its_record() {
        let payloads = payloads(20);
        let whole = segment(16 * 1024, 1, &payloads);
        let records = scan_segment(&whole, 1).records;
        for victim in [0usize, 5, 18] {
            let record = records[victim];
            let start = record.payload_offset - WAL_RECORD_HEADER_BYTES;
            for at in [
                start + 3,
                start + 9,
                record.payload_offset + record.payload_len / 2,
            ] {
                let mut damaged = whole.clone();
                damaged[at] ^= 0x40;
                let scan = scan_segment(&damaged, 1);
                assert_eq!(scan.records.len(), victim, "byte {at}");
                assert!(
                    matches!(scan.end, SegmentEnd::Corrupt { offset, .. } if offset == start),
                    "byte {at}: {:?}",
                    scan.end
                );
            }
        }
    }

    #[test]
    fn a_record_out_of_sequence_is_refused() {
        let whole = segment(8 * 1024, 1, &payloads(3));
        let scan = scan_segment(&whole, 2);
        assert!(scan.records.is_empty());
        assert!(matches!(
            scan.end,
            SegmentEnd::Corrupt {
                why: BadRecord::Sequence {
                    expected: 2,
                    found: 1
                },
                ..
            }
        ));
    }

    #[test]
    fn a_full_segment_ends_cleanly_at_its_last_record() {
        let payload = vec![7u8; 100];
        let size = WAL_SEGMENT_HEADER_BYTES + 3 * record_bytes(payload.len());
        let bytes = segment(size, 1, &[payload.clone(), payload.clone(), payload]);
        let scan = scan_segment(&bytes, 1);
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.end, SegmentEnd::Clean { offset: size });
    }
}
