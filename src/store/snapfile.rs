//! A snapshot file's bytes, sans-IO: a header naming whose partition it is and which log
//! record it covers, then the partition's state as an rkyv archive (`core::snapshot`).
//!
//! ```text
//! file:   header (SNAPSHOT_HEADER_BYTES, one block) | archive | zeros to a whole block
//! header: magic [8] | version u32 | node u32 | shard u32 | partition u32 | lsn u64
//!         | archive len u64 | xxh3_64(archive) u64 | xxh3_64(header[0..48]) u64 | zeros
//! ```
//!
//! All integers are little-endian. `lsn` is the last log record applied to the state: recovery
//! loads the snapshot and replays the partition's records after it. The archive starts one
//! block in, so read into an aligned buffer it can be validated in place. Pure functions; used
//! on any thread.

use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::xxh3_64;

use crate::constants::{
    SNAPSHOT_ARCHIVE_BYTES_MAX, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC,
};
use crate::core::snapshot::PartitionSnapshot;
use crate::store::commit::LogIdentity;

/// Bytes of the header covered by its own checksum.
const HEADER_HASHED_BYTES: usize = 48;

/// Why a snapshot file cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotFileError {
    Short,
    Magic,
    Version(u32),
    HeaderChecksum,
    /// The header names another node, shard or partition.
    Foreign {
        node: u32,
        shard: u32,
        partition: u32,
    },
    /// The header says the archive is longer than the file or than any partition's.
    Length(u64),
    ArchiveChecksum,
    /// The archive does not validate, or breaks a limit of the state machine.
    Archive(String),
}

impl std::fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFileError::Short => write!(f, "the file is shorter than a snapshot header"),
            SnapshotFileError::Magic => write!(f, "it is not a trove snapshot (wrong magic)"),
            SnapshotFileError::Version(version) if *version < SNAPSHOT_FORMAT_VERSION => write!(
                f,
                "it has snapshot format version {version}, written by an older trove; this build reads version {SNAPSHOT_FORMAT_VERSION} only (version 2 added the client sessions that make retries safe) and does not convert data dirs: keep the data dir with the trove that wrote it, or start this one on an empty --data-dir"
            ),
            SnapshotFileError::Version(version) => write!(
                f,
                "it has snapshot format version {version}; this build reads version {SNAPSHOT_FORMAT_VERSION}: a newer trove wrote it"
            ),
            SnapshotFileError::HeaderChecksum => write!(f, "its header checksum does not match"),
            SnapshotFileError::Foreign {
                node,
                shard,
                partition,
            } => write!(
                f,
                "it belongs to node {node} shard {shard} partition {partition}"
            ),
            SnapshotFileError::Length(len) => write!(
                f,
                "its header gives an archive of {len} bytes, past the file's end or SNAPSHOT_ARCHIVE_BYTES_MAX ({SNAPSHOT_ARCHIVE_BYTES_MAX})"
            ),
            SnapshotFileError::ArchiveChecksum => write!(f, "its archive checksum does not match"),
            SnapshotFileError::Archive(why) => write!(f, "its archive is not a partition: {why}"),
        }
    }
}

/// The file for `snapshot`, which covers the log up to `lsn`: header and archive, not padded
/// (the writer pads to its block).
pub fn encode_snapshot(identity: LogIdentity, lsn: u64, snapshot: &PartitionSnapshot) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(snapshot)
        .expect("a partition snapshot always serializes");
    let mut bytes = vec![0u8; SNAPSHOT_HEADER_BYTES];
    bytes[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    bytes[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    bytes[12..16].copy_from_slice(&identity.node.to_le_bytes());
    bytes[16..20].copy_from_slice(&identity.shard.to_le_bytes());
    bytes[20..24].copy_from_slice(&snapshot.partition.to_le_bytes());
    bytes[24..32].copy_from_slice(&lsn.to_le_bytes());
    bytes[32..40].copy_from_slice(&(archive.len() as u64).to_le_bytes());
    bytes[40..48].copy_from_slice(&xxh3_64(&archive).to_le_bytes());
    let hash = xxh3_64(&bytes[..HEADER_HASHED_BYTES]);
    bytes[48..56].copy_from_slice(&hash.to_le_bytes());
    bytes.extend_from_slice(&archive);
    bytes
}

/// Reads a snapshot file of partition `partition` of the log `identity`: returns the LSN it
/// covers and the partition's state values, every checksum and limit checked.
pub fn decode_snapshot(
    identity: LogIdentity,
    partition: u32,
    bytes: &[u8],
) -> Result<(u64, PartitionSnapshot), SnapshotFileError> {
    let header = bytes
        .get(..SNAPSHOT_HEADER_BYTES)
        .ok_or(SnapshotFileError::Short)?;
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotFileError::Magic);
    }
    let version = read_u32(header, 8);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotFileError::Version(version));
    }
    if xxh3_64(&header[..HEADER_HASHED_BYTES]) != read_u64(header, 48) {
        return Err(SnapshotFileError::HeaderChecksum);
    }
    let (node, shard, found) = (
        read_u32(header, 12),
        read_u32(header, 16),
        read_u32(header, 20),
    );
    if (node, shard, found) != (identity.node, identity.shard, partition) {
        return Err(SnapshotFileError::Foreign {
            node,
            shard,
            partition: found,
        });
    }
    let len = read_u64(header, 32);
    let archive = usize::try_from(len)
        .ok()
        .filter(|&len| len <= SNAPSHOT_ARCHIVE_BYTES_MAX)
        .and_then(|len| bytes.get(SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + len))
        .ok_or(SnapshotFileError::Length(len))?;
    if xxh3_64(archive) != read_u64(header, 40) {
        return Err(SnapshotFileError::ArchiveChecksum);
    }
    let mut aligned = AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    // rkyv's error hides its reason in release builds: say what was being read instead.
    let snapshot = rkyv::from_bytes::<PartitionSnapshot, rkyv::rancor::Error>(&aligned)
        .map_err(|_| SnapshotFileError::Archive("the archive does not validate".into()))?;
    if snapshot.partition != partition {
        return Err(SnapshotFileError::Archive(format!(
            "it holds partition {}",
            snapshot.partition
        )));
    }
    snapshot
        .check()
        .map_err(|error| SnapshotFileError::Archive(error.0))?;
    Ok((read_u64(header, 24), snapshot))
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
    use crate::core::message::{OutcomeClass, RejectReason};
    use crate::core::snapshot::{
        HuntSnapshot, PlayerSnapshot, RankSnapshot, SessionSnapshot, SessionsSnapshot,
        TreasureSnapshot,
    };

    fn identity() -> LogIdentity {
        LogIdentity {
            node: 2,
            shard: 1,
            partitions: 64,
        }
    }

    fn snapshot() -> PartitionSnapshot {
        PartitionSnapshot {
            partition: 9,
            hunts: vec![HuntSnapshot {
                slot: 3,
                id: 77,
                organiser: 1,
                waypoints: Vec::new(),
                treasures: vec![TreasureSnapshot {
                    code_hash: 5,
                    points: 10,
                    winner: Some(4),
                }],
                players: vec![PlayerSnapshot {
                    id: 4,
                    score: 10,
                    visited: 0,
                    wrong_codes: Some(vec![2]),
                }],
                leaderboard: vec![RankSnapshot {
                    player: 4,
                    score: 10,
                }],
            }],
            sessions: Some(SessionsSnapshot {
                applied_events: 12,
                sessions: vec![SessionSnapshot {
                    id: 0xfeed,
                    last_used: 11,
                    highest: 40,
                    forgotten_up_to: None,
                    seqs: vec![39, 40],
                    classes: vec![
                        OutcomeClass::Accepted,
                        OutcomeClass::Rejected {
                            reason: RejectReason::WrongCode,
                        },
                    ],
                    next: 2,
                }],
            }),
        }
    }

    #[test]
    fn a_snapshot_of_an_older_format_is_refused_with_what_to_do() {
        let mut bytes = encode_snapshot(identity(), 1234, &snapshot());
        bytes[8..12].copy_from_slice(&(SNAPSHOT_FORMAT_VERSION - 1).to_le_bytes());
        let hash = xxh3_64(&bytes[..HEADER_HASHED_BYTES]);
        bytes[48..56].copy_from_slice(&hash.to_le_bytes());
        let error = decode_snapshot(identity(), 9, &bytes).unwrap_err();
        assert_eq!(
            error,
            SnapshotFileError::Version(SNAPSHOT_FORMAT_VERSION - 1)
        );
        let message = error.to_string();
        assert!(
            message.contains("older trove") && message.contains("empty --data-dir"),
            "{message}"
        );
    }

    #[test]
    fn a_snapshot_file_round_trips_and_padding_is_ignored() {
        let mut bytes = encode_snapshot(identity(), 1234, &snapshot());
        bytes.resize(bytes.len().next_multiple_of(4096), 0);
        assert_eq!(
            decode_snapshot(identity(), 9, &bytes),
            Ok((1234, snapshot()))
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_or_another_owner_is_refused() {
        let bytes = encode_snapshot(identity(), 1234, &snapshot());
        for at in [
            0,
            9,
            13,
            21,
            25,
            33,
            41,
            49,
            SNAPSHOT_HEADER_BYTES + 3,
            bytes.len() - 1,
        ] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                decode_snapshot(identity(), 9, &damaged).is_err(),
                "byte {at} flipped"
            );
        }
        assert!(matches!(
            decode_snapshot(identity(), 8, &bytes),
            Err(SnapshotFileError::Foreign { partition: 9, .. })
        ));
        let other_node = LogIdentity {
            node: 3,
            ..identity()
        };
        assert!(matches!(
            decode_snapshot(other_node, 9, &bytes),
            Err(SnapshotFileError::Foreign { node: 2, .. })
        ));
        assert_eq!(
            decode_snapshot(identity(), 9, &bytes[..bytes.len() - 1]),
            Err(SnapshotFileError::Length(
                (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64
            ))
        );
        assert_eq!(
            decode_snapshot(identity(), 9, &bytes[..100]),
            Err(SnapshotFileError::Short)
        );
    }

    #[test]
    fn an_intact_archive_that_breaks_a_limit_is_refused() {
        let mut bad = snapshot();
        bad.hunts[0].slot = 99;
        let mut bad_session = snapshot();
        bad_session.sessions.as_mut().unwrap().sessions[0].highest = 41;
        for bad in [bad, bad_session] {
            let bytes = encode_snapshot(identity(), 1, &bad);
            assert!(matches!(
                decode_snapshot(identity(), 9, &bytes),
                Err(SnapshotFileError::Archive(_))
            ));
        }
    }
}
