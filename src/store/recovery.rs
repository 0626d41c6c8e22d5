//! Recovery decisions, sans-IO: whether a segment belongs to this log, and what to do where
//! its records end.
//!
//! The shell (`runtime::store`) reads a shard's segments in index order and asks
//! [`check_segment`] about each one: its header must name this node, shard and partition count,
//! the expected index and the next sequence number. Where a segment's records stop short of a
//! clean end, [`decide_end`] says whether the log is cut there (a torn tail: a write the crash
//! interrupted, or damage the operator chose to cut with `--recover-truncate`) or the node
//! refuses to start. Pure functions; used on any thread.

use crate::store::commit::LogIdentity;
use crate::store::format::{
    BadRecord, HeaderError, SegmentEnd, SegmentHeader, SegmentScan, scan_segment,
};

/// Why a segment cannot be part of this log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// The header does not decode.
    Header(HeaderError),
    /// The header names another node, shard or partition count.
    Foreign { found: LogIdentity },
    /// The header's index or first sequence number is not the one that follows.
    OutOfOrder {
        index: u64,
        first_lsn: u64,
        expected_index: u64,
        expected_lsn: u64,
    },
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Header(error) => write!(f, "{error}"),
            SegmentError::Foreign { found } => write!(
                f,
                "it belongs to node {} shard {} with {} partitions",
                found.node, found.shard, found.partitions
            ),
            SegmentError::OutOfOrder {
                index,
                first_lsn,
                expected_index,
                expected_lsn,
            } => write!(
                f,
                "it says it is segment {index} starting at record {first_lsn}, where segment \
                 {expected_index} starting at record {expected_lsn} was expected"
            ),
        }
    }
}

/// Checks segment `bytes` (the whole file) against the log it should continue and reads its
/// records, every checksum checked.
pub fn check_segment(
    identity: LogIdentity,
    expected_index: u64,
    expected_lsn: u64,
    bytes: &[u8],
) -> Result<(SegmentHeader, SegmentScan), SegmentError> {
    let header = SegmentHeader::decode(bytes).map_err(SegmentError::Header)?;
    let found = LogIdentity {
        node: header.node,
        shard: header.shard,
        partitions: header.partitions,
    };
    if found != identity {
        return Err(SegmentError::Foreign { found });
    }
    if header.index != expected_index || header.first_lsn != expected_lsn {
        return Err(SegmentError::OutOfOrder {
            index: header.index,
            first_lsn: header.first_lsn,
            expected_index,
            expected_lsn,
        });
    }
    Ok((header, scan_segment(bytes, expected_lsn)))
}

/// Whether a later segment holds at least one intact record: then a bad record before it is
/// damage, not a torn tail.
pub fn holds_records(bytes: &[u8]) -> bool {
    SegmentHeader::decode(bytes)
        .is_ok_and(|header| !scan_segment(bytes, header.first_lsn).records.is_empty())
}

/// What to do where a segment's records end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndDecision {
    /// A clean end: go on with the next segment, if any.
    Continue,
    /// Cut the log at `offset` of this segment (zero what follows, discard later segments)
    /// and continue writing there.
    Cut {
        offset: usize,
        why: BadRecord,
        /// Damage the operator chose to cut, rather than a torn tail.
        damage: bool,
    },
    /// Damage before the tail: stop, naming the segment and offset.
    Refuse { offset: usize, why: BadRecord },
}

/// The decision for a segment's `end`, given whether any later segment holds records and
/// whether the operator asked to cut damage (`--recover-truncate`).
pub fn decide_end(end: SegmentEnd, later_records: bool, recover_truncate: bool) -> EndDecision {
    match end {
        SegmentEnd::Clean { .. } => EndDecision::Continue,
        SegmentEnd::Torn { offset, why } if !later_records => EndDecision::Cut {
            offset,
            why,
            damage: false,
        },
        SegmentEnd::Torn { offset, why } | SegmentEnd::Corrupt { offset, why } => {
            if recover_truncate {
                EndDecision::Cut {
                    offset,
                    why,
                    damage: true,
                }
            } else {
                EndDecision::Refuse { offset, why }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::WAL_SEGMENT_HEADER_BYTES;
    use crate::store::format::encode_record;

    fn identity() -> LogIdentity {
        LogIdentity {
            node: 0,
            shard: 1,
            partitions: 64,
        }
    }

    fn segment(identity: LogIdentity, index: u64, first_lsn: u64, records: u64) -> Vec<u8> {
        let mut bytes = SegmentHeader {
            node: identity.node,
            shard: identity.shard,
            partitions: identity.partitions,
            index,
            first_lsn,
        }
        .encode();
        for lsn in first_lsn..first_lsn + records {
            encode_record(&mut bytes, lsn, 3, &[lsn as u8; 40]);
        }
        bytes.resize(8192, 0);
        bytes
    }

    #[test]
    fn a_segment_of_another_node_shard_or_partition_count_is_refused() {
        for other in [
            LogIdentity {
                node: 9,
                ..identity()
            },
            LogIdentity {
                shard: 0,
                ..identity()
            },
            LogIdentity {
                partitions: 128,
                ..identity()
            },
        ] {
            let bytes = segment(other, 0, 1, 2);
            assert_eq!(
                check_segment(identity(), 0, 1, &bytes).unwrap_err(),
                SegmentError::Foreign { found: other }
            );
        }
        let ours = segment(identity(), 0, 1, 2);
        let (_, scan) = check_segment(identity(), 0, 1, &ours).unwrap();
        assert_eq!(scan.records.len(), 2);
    }

    #[test]
    fn a_segment_out_of_order_is_refused() {
        let bytes = segment(identity(), 2, 5, 1);
        assert!(matches!(
            check_segment(identity(), 1, 5, &bytes),
            Err(SegmentError::OutOfOrder { .. })
        ));
        assert!(matches!(
            check_segment(identity(), 2, 4, &bytes),
            Err(SegmentError::OutOfOrder { .. })
        ));
        let mut garbage = bytes.clone();
        garbage[..WAL_SEGMENT_HEADER_BYTES].fill(0);
        assert!(matches!(
            check_segment(identity(), 2, 5, &garbage),
            Err(SegmentError::Header(HeaderError::Magic))
        ));
    }

    #[test]
    fn a_torn_tail_is_cut_unless_records_follow_and_damage_needs_the_operator() {
        let why = BadRecord::Checksum;
        let torn = SegmentEnd::Torn { offset: 4096, why };
        let corrupt = SegmentEnd::Corrupt { offset: 4096, why };
        let cut = |damage| EndDecision::Cut {
            offset: 4096,
            why,
            damage,
        };
        let refuse = EndDecision::Refuse { offset: 4096, why };
        assert_eq!(decide_end(torn, false, false), cut(false));
        assert_eq!(decide_end(torn, true, false), refuse);
        assert_eq!(decide_end(torn, true, true), cut(true));
        assert_eq!(decide_end(corrupt, false, false), refuse);
        assert_eq!(decide_end(corrupt, false, true), cut(true));
        assert_eq!(
            decide_end(SegmentEnd::Clean { offset: 4096 }, true, false),
            EndDecision::Continue
        );
        assert!(holds_records(&segment(identity(), 1, 3, 1)));
        assert!(!holds_records(&segment(identity(), 1, 3, 0)));
    }
}
