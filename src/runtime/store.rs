//! The store's shell: each shard's log directory, recovery at start, and the two tasks that
//! write and sync the log with glommio's `DmaFile`.
//!
//! Layout: `DATA_DIR/trove.id` names the node, shard count and partition count the data
//! belongs to (a data dir of another layout is refused, never mixed); `DATA_DIR/shard-N/`
//! holds shard N's segments, `00000000000000000000.wal` and on, each pre-allocated to
//! `WAL_SEGMENT_BYTES` and zero-filled before the log writes to it: a fifth task, the
//! preparer, makes the next segment so (as `.wal.ready`, renamed when the log reaches it)
//! once the current one is half written, when the disk bound has room for it and the
//! filesystem room for one more segment per shard besides.
//!
//! Snapshot files are written under a scratch name (`.snap.tmp`, deleted by recovery) and
//! renamed. A replaced snapshot is kept, emptied, as the next one's scratch file (up to
//! `SNAPSHOT_SPARE_FILES_MAX`): a shard replaces hundreds a second, and creating a file is
//! the dear part.
//!
//! [`prepare_data_dir`] runs on the thread that starts the node. [`recover`] runs on each
//! shard's executor before the shard serves anything: it reads the shard's segments in order
//! (every checksum checked, with `std::fs`: nothing else runs on the shard yet), replays their
//! events into the shard's partitions, cuts a torn tail, and refuses damage before the tail
//! unless `--recover-truncate` says to cut it. [`start_log_tasks`] then starts the writer and
//! the syncer on the shard's executor: the writer takes the records the core queued, feeds
//! them to the group-commit machine (`store::commit`) and issues its writes, one at a time,
//! from buffers aligned for the file (short writes are retried from the last whole block); the
//! syncer issues one `fdatasync` at a time and reports what is durable to the core, which then
//! lets the waiting replies go. Files are opened read+write (write-only would disable polled
//! I/O for the whole device). On tmpfs, glommio silently turns O_DIRECT off: recovery notes it.
//!
//! Snapshots: `DATA_DIR/shard-N/snapshots/pPPPPPP-LLLLLLLLLLLLLLLLLLLL.snap` holds partition P's
//! state covering the shard's log up to record L (`store::snapfile`). A third task, the
//! snapshotter, asks `store::retention` which partition is due, copies its state on the shard
//! (the only pause, measured as the `snapshot_pause` stage), waits for the log to be durable up
//! to L, writes the file (`.tmp`, `fdatasync`, rename, directory sync), deletes the snapshot
//! it replaces and the segments no snapshot needs, then takes the next. Recovery loads each
//! partition's newest valid snapshot (falling back to the one before it, or to the whole log,
//! with a note) and replays only the records after it.
//!
//! Moves: a fourth task, the installer, writes each partition moved to the shard
//! (`core::shard::moves`) as an ordinary snapshot file of it before the hand-off is
//! acknowledged, taking turns with the snapshotter (one snapshot file in flight per shard); a
//! failed write refuses the move instead of being retried. A partition the placement takes
//! away is forgotten: its snapshot files are deleted and retention stops keeping segments for
//! its records.
//!
//! When the segments and snapshots leave no room for the next segment within the shard's
//! share of `--log-disk-max-mb`, the shard answers new events `LogFull` until truncation
//! makes room, and says so once on stderr.
//!
//! Disk faults: when opening or pre-allocating a segment, a write, a sync or a snapshot fails
//! (ENOSPC, EIO), the shell tells the core which operation failed and how (no space, or an
//! I/O error); the core refuses new events (`DiskFull`, `DiskFailed`) and says when to retry.
//! The shell prints one line when the refusal starts and one when it ends, and retries the
//! same operation, with the same records, on that back-off until it succeeds: replies waiting
//! for those records leave only then, so nothing is answered that is not on disk, and the
//! shard takes events again by itself once space returns. A sync is retried as it is: the
//! writes it covers completed with direct I/O, so no page cache holds (and could drop) their
//! data; on tmpfs (no direct I/O) a sync does not fail. An I/O error that lasts
//! `LOG_FAULT_HOLD_MS_MAX` has the core answer the waiting replies `OutcomeUnknown` (a failed
//! disk rarely comes back; the line printed at the start says so); a stopping shard gives up
//! on a log that is still not durable after `LOG_STOP_WAIT_MS_MAX` (`runtime::shard`), and
//! the node then exits [`EXIT_LOG_NOT_CLOSED`]. Deleting old segments and snapshots
//! still stops the node when it fails (fail-stop, as a dead shard does). Everything here lives
//! on its shard's core.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{DmaFile, OpenOptions};
use glommio::sync::Semaphore;
use rkyv::util::AlignedVec;

use crate::constants::{
    LOG_DISK_MB_DEFAULT, LOG_FAULT_HOLD_MS_MAX, LOG_FAULT_RETRY_MS_MAX,
    SNAPSHOT_CHECK_INTERVAL_MS_MAX, SNAPSHOT_EVERY_MB_DEFAULT, SNAPSHOT_EVERY_S_DEFAULT,
    SNAPSHOT_GENERATIONS_MAX, SNAPSHOT_SPARE_FILES_MAX, SNAPSHOT_WRITES_INFLIGHT_MAX,
    WAL_BLOCK_BYTES_MAX, WAL_FORMAT_VERSION, WAL_PREPARE_AFTER_BYTES, WAL_SEGMENT_BYTES,
    WAL_ZERO_FILL_WRITE_BYTES_MAX,
};
use crate::core::ids::PartitionId;
use crate::core::shard::{Durability, LogFaultKind, LogOp, LogSync, MoveInstall};
use crate::runtime::shard::Shard;
use crate::runtime::stall::spawn_timed;
use crate::runtime::wait::WaitQueue;
use crate::store::commit::{GroupCommit, LogIdentity, LogPosition, WriteIo};
use crate::store::format::{SegmentEnd, SegmentHeader, record_bytes};
use crate::store::recovery::{EndDecision, SegmentError, check_segment, decide_end, holds_records};
use crate::store::retention::{Retention, RetentionConfig};
use crate::store::snapfile::{decode_snapshot, encode_snapshot};

/// Where and how a node logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// `Sync` or `Async` (a data dir with `Memory` would log nothing).
    pub durability: Durability,
    /// Cut the log at damage found before its tail instead of refusing to start.
    pub recover_truncate: bool,
    /// The node id the data belongs to (0 for a node outside a cluster).
    pub node: u32,
    /// When to snapshot, and how much disk each shard's log may use.
    pub limits: StoreLimits,
}

/// Snapshot thresholds and the disk bound of each shard (`trove node --snapshot-every-mb,
/// --snapshot-every-s, --log-disk-max-mb`, the last divided among the shards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    pub snapshot_every_bytes: u64,
    pub snapshot_every: std::time::Duration,
    pub disk_bytes_per_shard: u64,
}

impl Default for StoreLimits {
    /// The defaults for one shard.
    fn default() -> StoreLimits {
        StoreLimits {
            snapshot_every_bytes: SNAPSHOT_EVERY_MB_DEFAULT << 20,
            snapshot_every: std::time::Duration::from_secs(SNAPSHOT_EVERY_S_DEFAULT),
            disk_bytes_per_shard: LOG_DISK_MB_DEFAULT << 20,
        }
    }
}

const ID_FILE: &str = "trove.id";

fn id_line(node: u32, shards: usize, partitions: u32) -> String {
    format!(
        "trove data dir: format {WAL_FORMAT_VERSION} node {node} shards {shards} partitions {partitions}\n"
    )
}

/// Creates the data dir for this node, or checks that an existing one is this node's: same
/// node id, shard count and partition count. Runs on the thread that starts the node.
pub fn prepare_data_dir(store: &StoreConfig, shards: usize, partitions: u32) -> Result<(), String> {
    let dir = &store.dir;
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create the data dir {}: {error}", dir.display()))?;
    let expected = id_line(store.node, shards, partitions);
    let id_path = dir.join(ID_FILE);
    match std::fs::read_to_string(&id_path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => Err(format!(
            "the data dir {} belongs to another layout ({}), not to this one ({}); start with the same --node-id, shard count and --partitions, or give another --data-dir",
            dir.display(),
            found.trim().trim_start_matches("trove data dir: "),
            expected.trim().trim_start_matches("trove data dir: "),
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
                return Err(format!(
                    "the data dir {} is not empty and has no {ID_FILE}: it is not a trove data dir; give an empty or new directory",
                    dir.display()
                ));
            }
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&id_path)?;
                file.write_all(expected.as_bytes())?;
                file.sync_all()?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|error| format!("cannot write {}: {error}", id_path.display()))
        }
        Err(error) => Err(format!("cannot read {}: {error}", id_path.display())),
    }
}

fn shard_dir(store: &StoreConfig, shard: usize) -> PathBuf {
    store.dir.join(format!("shard-{shard}"))
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.wal"))
}

/// Where segment `index` is prepared, zero-filled, before the log reaches it.
fn prepared_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.wal.ready"))
}

/// The shard's segment files, by index. Segments prepared ahead and not yet used
/// (`.wal.ready`) are deleted: they hold nothing, and the disk bound did not count them.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot list {}: {error}", dir.display())),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".wal.ready") {
            std::fs::remove_file(entry.path())
                .map_err(|error| format!("cannot delete {}: {error}", entry.path().display()))?;
            continue;
        }
        let Some(index) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((index, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// What a shard found in its log at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub shard: usize,
    /// Partition snapshots loaded.
    pub snapshots: usize,
    /// Events replayed into the shard's partitions (after their snapshots).
    pub events: u64,
    /// Partitions that received at least one event.
    pub partitions: usize,
    pub segments: usize,
    /// What was cut or noted (a torn tail, damage cut on request, tmpfs), one sentence each.
    pub notes: Vec<String>,
}

/// Where the log continues after recovery, for [`start_log_tasks`].
pub struct LogStart {
    dir: PathBuf,
    identity: LogIdentity,
    position: LogPosition,
    /// The bytes before `position` from the `WAL_BLOCK_BYTES_MAX` boundary below it (whatever
    /// the file's block size, the partial block is their end).
    tail: Vec<u8>,
    snapshot_dir: PathBuf,
    retention: Retention,
    /// The retention's clock: time since recovery began.
    clock: Instant,
}

fn snapshot_path(dir: &Path, partition: u32, lsn: u64) -> PathBuf {
    dir.join(format!("p{partition:06}-{lsn:020}.snap"))
}

/// The shard's snapshot files by partition, oldest first; unfinished `.tmp` files (a crash
/// came while one was written) are deleted.
fn list_snapshots(dir: &Path) -> Result<BTreeMap<u32, Vec<(u64, PathBuf)>>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
    let mut found: BTreeMap<u32, Vec<(u64, PathBuf)>> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".snap.tmp") {
            std::fs::remove_file(&path)
                .map_err(|error| format!("cannot delete {}: {error}", path.display()))?;
            continue;
        }
        let parsed = name
            .strip_suffix(".snap")
            .and_then(|stem| stem.strip_prefix('p'))
            .and_then(|stem| stem.split_once('-'))
            .and_then(|(partition, lsn)| Some((partition.parse().ok()?, lsn.parse().ok()?)));
        if let Some((partition, lsn)) = parsed {
            found.entry(partition).or_default().push((lsn, path));
        }
    }
    for files in found.values_mut() {
        files.sort();
    }
    Ok(found)
}

/// Loads the newest valid snapshot of each partition into the shard; returns the LSN each
/// loaded one covers. A damaged snapshot is moved aside (`.snap.damaged`) with a note and the
/// one before it tried; snapshots older than the kept generations (a crash came before they
/// were deleted) are deleted. The snapshots kept are given to `retention`, oldest first.
fn load_snapshots(
    shard: &Shard,
    identity: LogIdentity,
    dir: &Path,
    retention: &mut Retention,
    recovered: &mut Recovered,
) -> Result<(Vec<Option<u64>>, Vec<u32>), String> {
    let mut loaded = vec![None; identity.partitions as usize];
    let mut all_damaged = Vec::new();
    for (partition, mut files) in list_snapshots(dir)? {
        if partition >= identity.partitions {
            return Err(format!(
                "{} holds a snapshot of partition {partition}, past this node's {} partitions; give the data dir of this layout",
                dir.display(),
                identity.partitions
            ));
        }
        while files.len() > SNAPSHOT_GENERATIONS_MAX {
            let (_, path) = files.remove(0);
            std::fs::remove_file(&path)
                .map_err(|error| format!("cannot delete {}: {error}", path.display()))?;
        }
        let mut kept = Vec::new();
        while let Some((lsn, path)) = files.pop() {
            let bytes = std::fs::read(&path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            let checked = decode_snapshot(identity, partition, &bytes)
                .map_err(|error| error.to_string())
                .and_then(|(covered, snapshot)| {
                    if covered != lsn {
                        return Err(format!("its header says it covers record {covered}"));
                    }
                    shard.restore_partition(&snapshot)
                });
            match checked {
                Ok(()) => {
                    loaded[partition as usize] = Some(lsn);
                    recovered.snapshots += 1;
                    // The older ones are kept unread, as fallbacks for the next start.
                    kept.extend(files.iter().map(|(lsn, path)| {
                        (*lsn, std::fs::metadata(path).map_or(0, |meta| meta.len()))
                    }));
                    kept.push((lsn, bytes.len() as u64));
                    break;
                }
                Err(why) => {
                    let aside = path.with_extension("snap.damaged");
                    std::fs::rename(&path, &aside).map_err(|error| {
                        format!("cannot move {} aside: {error}", path.display())
                    })?;
                    let fallback = if files.is_empty() {
                        "the partition's whole log"
                    } else {
                        "the snapshot before it"
                    };
                    recovery_note(
                        recovered,
                        format!(
                            "{} is damaged ({why}); moved aside to {}, recovering partition {partition} from {fallback}",
                            path.display(),
                            aside.display()
                        ),
                    );
                }
            }
        }
        if loaded[partition as usize].is_none() {
            all_damaged.push(partition);
        }
        for (lsn, bytes) in kept {
            retention.add_snapshot(partition, lsn, bytes);
        }
    }
    Ok((loaded, all_damaged))
}

fn recovery_note(recovered: &mut Recovered, note: String) {
    recovered.notes.push(note);
}

/// The first sequence number of the log's first segment: 1 for segment 0, else what its
/// header says (the segments before it were truncated after snapshots).
fn first_lsn_of(files: &[(u64, PathBuf)]) -> Result<u64, String> {
    let Some((index, path)) = files.first() else {
        return Ok(1);
    };
    if *index == 0 {
        return Ok(1);
    }
    let mut header = vec![0u8; crate::constants::WAL_SEGMENT_HEADER_BYTES];
    let read = std::fs::File::open(path).and_then(|file| file.read_exact_at(&mut header, 0));
    read.map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    SegmentHeader::decode(&header)
        .map(|header| header.first_lsn)
        .map_err(|why| {
            format!(
                "{} is the log's first segment and its header is damaged ({why}); the segments before it were deleted after snapshots, so the log cannot be read: restore the data dir from a backup",
                path.display()
            )
        })
}

/// Replays shard `shard`'s log into it, cutting a torn tail; refuses a log of another layout
/// or damaged before its tail (unless `store.recover_truncate`). Runs on the shard's executor
/// before it serves, with blocking reads: nothing else runs on the shard yet.
pub fn recover(
    shard: &Shard,
    store: &StoreConfig,
    partitions: u32,
) -> Result<(Recovered, LogStart), String> {
    let clock = Instant::now();
    let index = shard.id().index();
    let dir = shard_dir(store, index);
    let snapshot_dir = dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir)
        .map_err(|error| format!("cannot create {}: {error}", snapshot_dir.display()))?;
    let identity = LogIdentity {
        node: store.node,
        shard: index as u32,
        partitions,
    };
    let limits = store.limits;
    let mut retention = Retention::new(
        RetentionConfig {
            snapshot_every_bytes: limits.snapshot_every_bytes,
            snapshot_every_ns: limits.snapshot_every.as_nanos() as u64,
            disk_bytes_max: limits.disk_bytes_per_shard,
            segment_bytes: WAL_SEGMENT_BYTES,
        },
        partitions,
        0,
    );
    let files = list_segments(&dir)?;
    let mut recovered = Recovered {
        shard: index,
        segments: files.len(),
        ..Recovered::default()
    };
    let (loaded, all_damaged) = load_snapshots(
        shard,
        identity,
        &snapshot_dir,
        &mut retention,
        &mut recovered,
    )?;
    let mut touched: Vec<bool> = loaded.iter().map(Option::is_some).collect();
    let first_index = files.first().map_or(0, |(index, _)| *index);
    let log_first_lsn = first_lsn_of(&files)?;
    if log_first_lsn > 1 {
        if let Some(partition) = all_damaged.first() {
            return Err(format!(
                "every snapshot of partition {partition} in {} is damaged and the log before record {log_first_lsn} was deleted after them, so its state cannot be rebuilt; restore the data dir from a backup",
                snapshot_dir.display()
            ));
        }
    }
    let mut position = LogPosition {
        next_lsn: log_first_lsn,
        segment: first_index,
        offset: 0,
    };
    let mut tail = Vec::new();
    let mut payload = AlignedVec::<16>::new();
    for (at, (number, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let expected = first_index + at as u64;
        if *number != expected {
            return Err(format!(
                "{} is out of place: segment {expected} was expected (a segment is missing); restore the data dir from a backup",
                path.display()
            ));
        }
        let at = expected;
        let (end, records) = match check_segment(identity, at, position.next_lsn, &bytes) {
            Ok((_, scan)) => (scan.end, scan.records),
            // A header never completely written: the crash came as the segment was started
            // (unless later segments hold records: then it is damage).
            Err(SegmentError::Header(why))
                if store.recover_truncate
                    || !later_holds_records(&files[(at - first_index) as usize + 1..])? =>
            {
                recovered.notes.push(format!(
                    "{}: the segment header is not intact ({why}); the log is cut there and the segment started again",
                    path.display()
                ));
                cut(path, &bytes, 0)?;
                discard_after(&files[(at - first_index) as usize + 1..], &mut recovered)?;
                position = LogPosition {
                    segment: at,
                    offset: 0,
                    ..position
                };
                tail.clear();
                break;
            }
            Err(SegmentError::Header(why)) => {
                return Err(format!(
                    "{} is damaged at byte 0: {why}, and later segments hold records; restore the data dir from a backup, or start with --recover-truncate to keep the {} records before it (everything after is lost)",
                    path.display(),
                    position.next_lsn - 1,
                ));
            }
            Err(error) => {
                return Err(format!(
                    "{} cannot be part of this log: {error}; restore the data dir from a backup or give another --data-dir",
                    path.display()
                ));
            }
        };
        retention.add_segment(at, position.next_lsn);
        for record in &records {
            retention.observe(
                record.lsn,
                record.partition,
                record_bytes(record.payload_len) as u64,
                at,
            );
            let covered = loaded.get(record.partition as usize).copied().flatten();
            if covered.is_some_and(|lsn| record.lsn <= lsn) {
                continue;
            }
            recovered.events += 1;
            payload.clear();
            payload.extend_from_slice(&bytes[record.payload_offset..][..record.payload_len]);
            shard
                .replay(PartitionId(record.partition), &payload)
                .map_err(|error| {
                    format!(
                        "{} at byte {}: {error}; restore the data dir from a backup",
                        path.display(),
                        record.payload_offset
                    )
                })?;
            if let Some(seen) = touched.get_mut(record.partition as usize) {
                *seen = true;
            }
        }
        let offset = end.offset();
        tail = bytes[offset - offset % WAL_BLOCK_BYTES_MAX..offset].to_vec();
        position = LogPosition {
            next_lsn: position.next_lsn + records.len() as u64,
            segment: at,
            offset: offset as u64,
        };
        let later = &files[(at - first_index) as usize + 1..];
        let later_records = !matches!(end, SegmentEnd::Clean { .. }) && later_holds_records(later)?;
        match decide_end(end, later_records, store.recover_truncate) {
            EndDecision::Continue => {}
            EndDecision::Cut {
                offset,
                why,
                damage,
            } => {
                recovered.notes.push(if damage {
                    format!(
                        "{} was damaged at byte {offset} ({why}); cut there as --recover-truncate asks: records after it are gone",
                        path.display()
                    )
                } else {
                    format!(
                        "{}: a torn record at byte {offset} (a write the crash interrupted: {why}) was cut off",
                        path.display()
                    )
                });
                cut(path, &bytes, offset)?;
                discard_after(later, &mut recovered)?;
                break;
            }
            EndDecision::Refuse { offset, why } => {
                return Err(format!(
                    "{} is damaged at byte {offset}: {why}, and intact records follow; restore the data dir from a backup, or start with --recover-truncate to keep the {} records before it (everything after is lost)",
                    path.display(),
                    position.next_lsn - 1,
                ));
            }
        }
    }
    recovered.partitions = touched.iter().filter(|&&seen| seen).count();
    // A snapshot is written only once the log is durable up to it: one past the log's end
    // means the log lost records it had synced.
    let beyond = loaded.iter().enumerate().find_map(|(partition, lsn)| {
        lsn.filter(|&lsn| lsn >= position.next_lsn)
            .map(|lsn| (partition, lsn))
    });
    if let Some((partition, lsn)) = beyond {
        return Err(format!(
            "the snapshot of partition {partition} covers record {lsn} but the log in {} ends at record {}: the log lost records it had synced; restore the data dir from a backup",
            dir.display(),
            position.next_lsn - 1
        ));
    }
    retention.observe_durable(position.next_lsn - 1);
    if on_tmpfs(&dir) {
        recovered.notes.push(format!(
            "{} is on tmpfs: O_DIRECT is off there and the log lives in memory, so a host crash loses it",
            dir.display()
        ));
    }
    shard.resume_log(position.next_lsn);
    Ok((
        recovered,
        LogStart {
            dir,
            identity,
            position,
            tail,
            snapshot_dir,
            retention,
            clock,
        },
    ))
}

fn later_holds_records(files: &[(u64, PathBuf)]) -> Result<bool, String> {
    for (_, path) in files {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if holds_records(&bytes) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Zeros segment `path` from `offset` to the end of what was written in it, and syncs it.
fn cut(path: &Path, bytes: &[u8], offset: usize) -> Result<(), String> {
    let dirty_end = bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    if dirty_end <= offset {
        return Ok(());
    }
    let zero = || -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all_at(&vec![0u8; dirty_end - offset], offset as u64)?;
        file.sync_data()
    };
    zero().map_err(|error| format!("cannot cut {} at byte {offset}: {error}", path.display()))
}

/// Renames the segments after a cut aside (`.wal.discarded`), so that an operator can still
/// look at them and recovery never reads them again.
fn discard_after(files: &[(u64, PathBuf)], recovered: &mut Recovered) -> Result<(), String> {
    for (_, path) in files {
        let aside = path.with_extension("wal.discarded");
        std::fs::rename(path, &aside)
            .map_err(|error| format!("cannot move {} aside: {error}", path.display()))?;
        recovered.notes.push(format!(
            "{} came after the cut and was moved aside to {}",
            path.display(),
            aside.display()
        ));
    }
    if let Some(dir) = files.first().and_then(|(_, path)| path.parent()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| format!("cannot sync {}: {error}", dir.display()))?;
    }
    Ok(())
}

/// Whether the filesystem of `dir` has room for a segment prepared ahead and still one more
/// for every shard of the node: a segment taken ahead of need must never take the space
/// another shard's log needs now (a nearly full disk gets no segment prepared ahead, and the
/// writer makes each when it needs it, as it reports a full disk).
fn headroom_to_prepare(dir: &Path, shards: usize) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path.
    let free = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return false;
        }
        stat.f_bavail as u64 * stat.f_frsize as u64
    };
    free >= (shards as u64 + 1) * WAL_SEGMENT_BYTES
}

/// Whether `dir` is on tmpfs, where O_DIRECT is off and a sync reaches no disk.
pub fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we own from a NUL-terminated path.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type == libc::TMPFS_MAGIC
    }
}

/// The shard's log writer and syncer, sharing the group-commit machine.
struct LogTasks {
    shard: Rc<Shard>,
    dir: PathBuf,
    machine: GroupCommitCell,
    files: RefCell<BTreeMap<u64, Rc<DmaFile>>>,
    /// Woken when a write completes: the syncer looks.
    written: WaitQueue,
    /// The completed writes the next sync covers: when the first was issued, and their bytes.
    unsynced: Cell<UnsyncedWrites>,
    /// Woken when a sync completes: the snapshotter waits for its LSN to be durable.
    synced: WaitQueue,
    identity: LogIdentity,
    snapshot_dir: PathBuf,
    retention: RefCell<Retention>,
    clock: Instant,
    /// The log is at its disk bound and the core refuses events.
    blocked: Cell<bool>,
    /// Held while a snapshot file is written (a partition's own, or one moved here): one at
    /// a time, as `SNAPSHOT_IN_FLIGHT_BYTES_MAX` counts.
    snapshot_slot: Semaphore,
    /// Replaced snapshot files, emptied, to write the next snapshots into
    /// (`SNAPSHOT_SPARE_FILES_MAX`).
    spares: RefCell<Vec<PathBuf>>,
    /// The number in the next spare file's name.
    scratch_names: Cell<u64>,
    /// The segment after the log's current one, as the preparer has it.
    next_segment: RefCell<NextSegment>,
    /// The last segment the filesystem had no headroom to prepare: not asked again (a
    /// `statvfs` on every completed write), the writer makes it when it needs it.
    no_headroom_for: Cell<Option<u64>>,
    /// Woken when the preparer finishes (or gives up) a segment: the writer may be waiting.
    next_segment_changed: WaitQueue,
}

/// The preparer's segment, zero-filled ahead of the log (see [`create_segment`]).
enum NextSegment {
    None,
    Preparing(u64),
    Ready(u64, DmaFile),
}

/// Completed writes not yet covered by a sync, for the log-sync stage and counters.
#[derive(Clone, Copy, Default)]
struct UnsyncedWrites {
    first_issued: Option<Instant>,
    bytes: u64,
}

type GroupCommitCell = RefCell<GroupCommit>;

/// The exit status of a node that stopped without its log closed cleanly: a stopping shard
/// gave up waiting for records to reach a failed or hung disk (`LOG_STOP_WAIT_MS_MAX`).
/// EX_IOERR, as sysexits.h names it.
pub const EXIT_LOG_NOT_CLOSED: i32 = 74;

/// A log failure: the node stops, so that nothing unlogged is answered as durable.
fn fail_stop(shard: &Shard, what: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "shard {} cannot {what}: {error}; stopping so that nothing is answered that is not logged",
        shard.id().index()
    )
}

/// How a failed log operation failed, for the core: no space (which an operator can fix by
/// freeing some) or any other I/O error.
fn fault_kind(error: &std::io::Error) -> LogFaultKind {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => LogFaultKind::NoSpace,
        _ => LogFaultKind::Io,
    }
}

/// Runs `attempt` until it succeeds. Each failure is reported to the core, which refuses
/// events meanwhile and says how long to wait before the next try; the first failure of a
/// refusal, and its end, are said once on stderr.
async fn retry_log_io<T, F>(shard: &Shard, op: LogOp, mut attempt: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    let mut failures = 0u64;
    loop {
        match attempt().await {
            Ok(value) => {
                if shard.handle_log_recovered(op) {
                    eprintln!(
                        "trove node: shard {}: the log's disk works again ({} succeeded after {failures} failed tries); taking events",
                        shard.id().index(),
                        op.describe(),
                    );
                }
                return value;
            }
            Err(error) => {
                failures += 1;
                let kind = fault_kind(&error);
                let step = shard.handle_log_fault(op, kind);
                if step.announce {
                    let (why, answer, waiting) = match kind {
                        LogFaultKind::NoSpace => (
                            "the disk is full",
                            "DiskFull",
                            "those waiting for this write are answered once it succeeds"
                                .to_string(),
                        ),
                        LogFaultKind::Io => (
                            "the disk failed",
                            "DiskFailed",
                            format!(
                                "those waiting for this write are answered once it succeeds, or OutcomeUnknown if it still fails after {LOG_FAULT_HOLD_MS_MAX} ms"
                            ),
                        ),
                    };
                    let answered = match shard.durability() {
                        Durability::Async => {
                            "events answered before their sync are on disk only once it succeeds"
                        }
                        _ => "events already answered are on disk",
                    };
                    eprintln!(
                        "trove node: shard {}: cannot {} ({error}): {why}; new events are answered Unavailable ({answer}) until it can, retried every {LOG_FAULT_RETRY_MS_MAX} ms at most; {answered}, and {waiting}",
                        shard.id().index(),
                        op.describe(),
                    );
                }
                glommio::timer::sleep(std::time::Duration::from_millis(step.retry_after_ms)).await;
            }
        }
    }
}

/// Opens segment `index` of the log in `dir`: the one recovery found on disk, or a new one,
/// prepared now ([`create_segment`]).
async fn open_segment(shard: &Shard, dir: &Path, index: u64) -> std::io::Result<DmaFile> {
    if segment_path(dir, index).exists() {
        open_existing_segment(dir, index).await
    } else {
        create_segment(shard, dir, index, None).await
    }
}

/// Opens segment `index`, which recovery found on disk, pre-allocating it again if a crash
/// cut its allocation short.
async fn open_existing_segment(dir: &Path, index: u64) -> std::io::Result<DmaFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(segment_path(dir, index))
        .await?;
    let allocated = async {
        if file.file_size().await? < WAL_SEGMENT_BYTES {
            file.pre_allocate(WAL_SEGMENT_BYTES, false).await?;
        }
        std::io::Result::Ok(())
    };
    if let Err(error) = allocated.await {
        let _ = file.close().await;
        return Err(error);
    }
    Ok(file)
}

/// Makes segment `index` from `prepared` (the preparer's file for it), or from a file
/// prepared now: renamed to the segment's name, its directory synced. A segment that cannot
/// be made is deleted under either name, so that no segment without its space is left for
/// recovery to read, and a retry starts over.
async fn create_segment(
    shard: &Shard,
    dir: &Path,
    index: u64,
    prepared: Option<DmaFile>,
) -> std::io::Result<DmaFile> {
    let file = match prepared {
        Some(file) => file,
        None => prepare_segment(shard, dir, index).await?,
    };
    let (ready, path) = (prepared_path(dir, index), segment_path(dir, index));
    let installed = async {
        rename_file(shard, &ready, &path).await?;
        // The new name must survive a crash too.
        sync_dir(shard, dir).await
    };
    if let Err(error) = installed.await {
        let _ = file.close().await;
        let _ = remove_file(shard, &path).await;
        let _ = remove_file(shard, &ready).await;
        return Err(error);
    }
    Ok(file)
}

/// Creates segment `index` under its prepared name (`.wal.ready`, which recovery deletes),
/// pre-allocated and zero-filled, synced: the log's writes to it then change no file
/// metadata. (An `fdatasync` after a write into pre-allocated space that was never written
/// must also make the extent's conversion to written blocks durable.) Deleted if it cannot be
/// made whole.
async fn prepare_segment(shard: &Shard, dir: &Path, index: u64) -> std::io::Result<DmaFile> {
    let path = prepared_path(dir, index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await?;
    if let Err(error) = shard.file_ops().track(zero_fill(&file)).await {
        let _ = file.close().await;
        let _ = remove_file(shard, &path).await;
        return Err(error);
    }
    Ok(file)
}

/// Pre-allocates `file` to a whole segment and writes zeros over it, one
/// `WAL_ZERO_FILL_WRITE_BYTES_MAX` write at a time, then syncs it.
async fn zero_fill(file: &DmaFile) -> std::io::Result<()> {
    file.pre_allocate(WAL_SEGMENT_BYTES, false).await?;
    let chunk = WAL_ZERO_FILL_WRITE_BYTES_MAX as u64;
    write_blocks(file, WAL_SEGMENT_BYTES, chunk, |_, buffer| buffer.fill(0)).await?;
    file.fdatasync().await?;
    Ok(())
}

/// Writes the first `len` bytes of `file` (a multiple of its alignment), at most `chunk` at
/// a time, each buffer filled by `fill(offset, buffer)`; a short write goes on from its last
/// whole block.
async fn write_blocks(
    file: &DmaFile,
    len: u64,
    chunk: u64,
    fill: impl Fn(u64, &mut [u8]),
) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut buffer = file.alloc_dma_buffer((len - done).min(chunk) as usize);
        fill(done, buffer.as_bytes_mut());
        let written = file.write_at(buffer, done).await?;
        let whole = file.align_down(written as u64);
        if whole == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("a write at byte {done} of {} made no progress", len),
            ));
        }
        done += whole;
    }
    Ok(())
}

/// Starts the shard's log writer and syncer where recovery left the log. Records the core
/// queued meanwhile wait in the core.
pub fn start_log_tasks(shard: Rc<Shard>, start: LogStart) {
    spawn_timed(async move {
        let first = retry_log_io(&shard, LogOp::Open, || {
            open_segment(&shard, &start.dir, start.position.segment)
        })
        .await;
        let block = first.alignment() as usize;
        if block > WAL_BLOCK_BYTES_MAX {
            fail_stop(
                &shard,
                "use its log device",
                format!("it needs {block}-byte aligned I/O; the log supports up to {WAL_BLOCK_BYTES_MAX}"),
            );
        }
        let offset = start.position.offset as usize;
        let partial = &start.tail[start.tail.len() - offset % block..];
        let machine = GroupCommit::new(
            start.identity,
            WAL_SEGMENT_BYTES,
            block,
            start.position,
            partial,
        );
        let tasks = Rc::new(LogTasks {
            shard,
            dir: start.dir,
            machine: RefCell::new(machine),
            files: RefCell::new(BTreeMap::from([(start.position.segment, Rc::new(first))])),
            written: WaitQueue::new(),
            unsynced: Cell::new(UnsyncedWrites::default()),
            synced: WaitQueue::new(),
            identity: start.identity,
            snapshot_dir: start.snapshot_dir,
            retention: RefCell::new(start.retention),
            clock: start.clock,
            blocked: Cell::new(false),
            snapshot_slot: Semaphore::new(SNAPSHOT_WRITES_INFLIGHT_MAX),
            spares: RefCell::new(Vec::new()),
            scratch_names: Cell::new(0),
            next_segment: RefCell::new(NextSegment::None),
            no_headroom_for: Cell::new(None),
            next_segment_changed: WaitQueue::new(),
        });
        tasks.update_blocked();
        spawn_timed(tasks.clone().sync_loop()).detach();
        spawn_timed(tasks.clone().snapshot_loop()).detach();
        spawn_timed(tasks.clone().install_loop()).detach();
        spawn_timed(tasks.clone().prepare_loop()).detach();
        tasks.write_loop().await;
    })
    .detach();
}

impl LogTasks {
    /// Segment `segment`'s file, opened if it is not open, made (from the preparer's file
    /// when it has one) if it is new.
    async fn file(&self, segment: u64) -> std::io::Result<Rc<DmaFile>> {
        if let Some(file) = self.files.borrow().get(&segment) {
            return Ok(file.clone());
        }
        let file = if segment_path(&self.dir, segment).exists() {
            open_existing_segment(&self.dir, segment).await?
        } else {
            let prepared = self.take_prepared(segment).await;
            create_segment(&self.shard, &self.dir, segment, prepared).await?
        };
        let file = Rc::new(file);
        self.files.borrow_mut().insert(segment, file.clone());
        Ok(file)
    }

    /// The preparer's file for segment `segment`, waited for while it is being made. One made
    /// for a segment the log has passed is deleted; one for a later segment is kept.
    async fn take_prepared(&self, segment: u64) -> Option<DmaFile> {
        self.next_segment_changed
            .until(|| {
                let next = self.next_segment.borrow();
                (!matches!(*next, NextSegment::Preparing(index) if index == segment)).then_some(())
            })
            .await;
        let next = std::mem::replace(&mut *self.next_segment.borrow_mut(), NextSegment::None);
        match next {
            NextSegment::Ready(index, file) if index == segment => Some(file),
            NextSegment::Ready(index, file) if index < segment => {
                let _ = file.close().await;
                let _ = remove_file(&self.shard, &prepared_path(&self.dir, index)).await;
                None
            }
            later => {
                *self.next_segment.borrow_mut() = later;
                None
            }
        }
    }

    /// Prepares the segment after the log's current one ahead of the log, when the disk bound
    /// has room for it, so that the writer rarely waits for a new segment's zero-fill.
    async fn prepare_loop(self: Rc<Self>) {
        loop {
            let index = self.written.until(|| self.segment_to_prepare()).await;
            self.retention.borrow_mut().set_prepared(Some(index));
            *self.next_segment.borrow_mut() = NextSegment::Preparing(index);
            let prepared = prepare_segment(&self.shard, &self.dir, index).await;
            let failed = prepared.is_err();
            *self.next_segment.borrow_mut() = match prepared {
                Ok(file) => NextSegment::Ready(index, file),
                Err(_) => {
                    self.retention.borrow_mut().set_prepared(None);
                    NextSegment::None
                }
            };
            self.next_segment_changed.wake_all();
            self.update_blocked();
            if failed {
                // The writer makes the segment itself when it needs it, and reports a disk
                // that fails it then; until that, try again later.
                glommio::timer::sleep(std::time::Duration::from_millis(LOG_FAULT_RETRY_MS_MAX))
                    .await;
            }
        }
    }

    /// The segment to prepare now: the one after the log's current segment, once that holds
    /// `WAL_PREPARE_AFTER_BYTES`, when none is prepared, the bound has room, the filesystem has
    /// headroom (asked once per segment), and the shard is not stopping.
    fn segment_to_prepare(&self) -> Option<u64> {
        let idle = matches!(*self.next_segment.borrow(), NextSegment::None);
        if !idle || self.shard.is_stopping() {
            return None;
        }
        let machine = self.machine.borrow();
        if machine.append_offset() < WAL_PREPARE_AFTER_BYTES {
            return None;
        }
        let index = machine.append_segment() + 1;
        if self.no_headroom_for.get() == Some(index) || !self.retention.borrow().may_prepare(index)
        {
            return None;
        }
        if !headroom_to_prepare(&self.dir, self.shard.shard_count()) {
            self.no_headroom_for.set(Some(index));
            return None;
        }
        Some(index)
    }

    /// Feeds the core's records to the machine and issues its writes, one at a time.
    async fn write_loop(self: Rc<Self>) {
        loop {
            let io = self
                .shard
                .log_queued()
                .until(|| {
                    let mut machine = self.machine.borrow_mut();
                    let mut retention = self.retention.borrow_mut();
                    let took = self.shard.take_log(|lsn, partition, payload| {
                        let given = machine.append(partition.0, payload);
                        debug_assert_eq!(given, lsn, "the core and the log number records alike");
                        let bytes = record_bytes(payload.len()) as u64;
                        retention.observe(lsn, partition.0, bytes, machine.append_segment());
                    });
                    drop(retention);
                    let io = machine.poll_write();
                    drop(machine);
                    if took {
                        // Before the core applies anything more: it must stop in time.
                        self.update_blocked();
                    }
                    io
                })
                .await;
            let file = retry_log_io(&self.shard, LogOp::Open, || self.file(io.segment)).await;
            let issued = Instant::now();
            // A failed write is tried again whole, with the same records: the core refuses
            // new events meanwhile and the replies waiting for these stay held.
            retry_log_io(&self.shard, LogOp::Write, || self.write_fully(&file, io)).await;
            self.machine.borrow_mut().handle_written();
            let mut unsynced = self.unsynced.get();
            unsynced.first_issued.get_or_insert(issued);
            unsynced.bytes += io.len as u64;
            self.unsynced.set(unsynced);
            self.written.wake_all();
        }
    }

    /// Writes `io` whole: a short write is retried from its last whole block.
    async fn write_fully(&self, file: &DmaFile, io: WriteIo) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < io.len {
            let mut buffer = file.alloc_dma_buffer(io.len - done);
            {
                let machine = self.machine.borrow();
                let bytes = machine.write_bytes(&io);
                let target = buffer.as_bytes_mut();
                target.fill(0);
                if done < bytes.len() {
                    target[..bytes.len() - done].copy_from_slice(&bytes[done..]);
                }
            }
            let written = file.write_at(buffer, io.offset + done as u64).await?;
            let whole = file.align_down(written as u64) as usize;
            if whole == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!(
                        "a write at byte {} made no progress",
                        io.offset + done as u64
                    ),
                ));
            }
            done += whole;
        }
        Ok(())
    }

    /// Issues one sync at a time for what was written, and tells the core what is durable.
    async fn sync_loop(self: Rc<Self>) {
        loop {
            let sync = self
                .written
                .until(|| self.machine.borrow_mut().poll_sync())
                .await;
            // The sync covers exactly the writes completed so far (no await since poll_sync).
            let covered = self.unsynced.take();
            for segment in sync.segments.clone() {
                let this = &self;
                retry_log_io(&self.shard, LogOp::Sync, || async move {
                    let file = this.file(segment).await?;
                    file.fdatasync().await?;
                    std::io::Result::Ok(())
                })
                .await;
            }
            let durable = self.machine.borrow_mut().handle_synced();
            self.retention.borrow_mut().observe_durable(durable);
            let write_to_sync = covered
                .first_issued
                .map_or(0, |issued| issued.elapsed().as_nanos() as u64);
            self.shard.handle_log_synced(LogSync {
                lsn: durable,
                write_to_sync_ns: write_to_sync,
                bytes_written: covered.bytes,
            });
            // Segments before the last one synced are complete: close them.
            let done: Vec<Rc<DmaFile>> = {
                let mut files = self.files.borrow_mut();
                let keep = files.split_off(sync.segments.end());
                std::mem::replace(&mut *files, keep).into_values().collect()
            };
            for file in done {
                let _ = file.close_rc().await;
            }
            self.synced.wake_all();
        }
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Tells the core whether the log is at its disk bound, and says so once on stderr when
    /// that changes. Runs after every batch of records taken and every truncation.
    fn update_blocked(&self) {
        let offset = self.machine.borrow().append_offset();
        let retention = self.retention.borrow();
        let blocked = retention.log_blocked(offset);
        if blocked == self.blocked.get() {
            return;
        }
        self.blocked.set(blocked);
        self.shard.set_log_full(blocked);
        let (used_mib, max_mib) = (
            retention.disk_bytes() >> 20,
            retention.disk_bytes_max() >> 20,
        );
        let shard = self.shard.id().index();
        if blocked {
            eprintln!(
                "trove node: shard {shard}: the log reached its disk bound ({used_mib} MiB of segments and snapshots, {max_mib} MiB allowed, --log-disk-max-mb divided among the shards) before a snapshot could free space; new events are answered Unavailable (LogFull) until one does; nothing answered is lost"
            );
        } else {
            eprintln!(
                "trove node: shard {shard}: the log has room again ({used_mib} of {max_mib} MiB); taking events"
            );
        }
    }

    /// Takes the snapshots retention asks for, one partition at a time, and deletes what they
    /// make unnecessary; looks again every `SNAPSHOT_CHECK_INTERVAL_MS_MAX` when none is due.
    async fn snapshot_loop(self: Rc<Self>) {
        loop {
            if self.shard.is_stopping() {
                // The shard waits for file operations in flight as it stops: start none.
                return;
            }
            self.forget_departed().await;
            let due = {
                let urgent = self.blocked.get();
                self.retention
                    .borrow_mut()
                    .poll_snapshot(self.now_ns(), urgent)
            };
            let Some(partition) = due else {
                glommio::timer::sleep(std::time::Duration::from_millis(
                    SNAPSHOT_CHECK_INTERVAL_MS_MAX,
                ))
                .await;
                continue;
            };
            let Some(pause_ns) = self.snapshot(partition).await else {
                continue;
            };
            let deleted = self.truncate().await;
            self.shard.count_snapshot(pause_ns, deleted);
            self.update_blocked();
        }
    }

    /// Forgets the partitions the shard dropped for another owner that are still gone: their
    /// snapshot files are deleted and their records no longer hold the log back.
    async fn forget_departed(&self) {
        while let Some(partition) = self.shard.poll_departed() {
            let _slot = self.take_snapshot_slot().await;
            if self.shard.partition_gone(partition) {
                self.forget(partition.0).await;
            }
        }
    }

    async fn forget(&self, partition: u32) {
        let files = self.retention.borrow_mut().forget(partition);
        for lsn in files {
            self.delete_snapshot(partition, lsn).await;
        }
    }

    /// Snapshots one partition: copies its state on the shard (the pause, returned), waits for
    /// the log to be durable up to the LSN it covers, and writes its file. `None` when the
    /// shard holds no state for the partition: when it moved away for good, its snapshot files
    /// are deleted and its records no longer hold the log back.
    async fn snapshot(&self, partition: u32) -> Option<u64> {
        let _slot = self.take_snapshot_slot().await;
        let started = Instant::now();
        let Some((lsn, state)) = self.shard.export_partition(PartitionId(partition)) else {
            if self.shard.partition_gone(PartitionId(partition)) {
                self.forget(partition).await;
            }
            return None;
        };
        let bytes = encode_snapshot(self.identity, lsn, &state);
        drop(state);
        let pause_ns = started.elapsed().as_nanos() as u64;
        self.retention.borrow_mut().begin(partition, lsn);
        // Never a snapshot ahead of the log: recovery replays after it what the log holds.
        self.synced
            .until(|| (self.shard.durable_lsn() >= lsn).then_some(()))
            .await;
        let path = snapshot_path(&self.snapshot_dir, partition, lsn);
        let file_bytes = retry_log_io(&self.shard, LogOp::Snapshot, || {
            self.write_snapshot(&path, &bytes)
        })
        .await;
        let dropped = self.retention.borrow_mut().snapshot_written(file_bytes);
        if let Some((partition, old)) = dropped {
            self.delete_snapshot(partition, old).await;
        }
        Some(pause_ns)
    }

    async fn take_snapshot_slot(&self) -> glommio::sync::Permit<'_> {
        self.snapshot_slot
            .acquire_permit(1)
            .await
            .expect("the snapshot slot is never closed")
    }

    /// Makes the partitions moved here durable before their hand-off is acknowledged (see
    /// `core::shard::moves`): each is written as an ordinary snapshot file of the partition,
    /// covering the log up to the LSN the core gave, once the log is durable up to it. A
    /// failed write is not retried: the core refuses the move with the error, the controller
    /// abandons it, and the source keeps the partition.
    async fn install_loop(self: Rc<Self>) {
        loop {
            self.shard
                .move_installs()
                .until(|| self.shard.move_install_queued().then_some(()))
                .await;
            if self.shard.is_stopping() {
                // The shard waits for file operations in flight as it stops: start none. A
                // move not acknowledged is abandoned, and its source keeps the partition.
                return;
            }
            let _slot = self.take_snapshot_slot().await;
            let Some(install) = self.shard.poll_move_install() else {
                continue;
            };
            let MoveInstall {
                partition,
                part_epoch,
                lsn,
                snapshot,
            } = install;
            let bytes = encode_snapshot(self.identity, lsn, &snapshot);
            drop(snapshot);
            // Never a snapshot ahead of the log: recovery would refuse it.
            self.synced
                .until(|| (self.shard.durable_lsn() >= lsn).then_some(()))
                .await;
            let path = snapshot_path(&self.snapshot_dir, partition.0, lsn);
            match self.write_snapshot(&path, &bytes).await {
                Ok(file_bytes) => {
                    let dropped =
                        self.retention
                            .borrow_mut()
                            .installed(partition.0, lsn, file_bytes);
                    if let Some(old) = dropped {
                        self.delete_snapshot(partition.0, old).await;
                    }
                    self.shard.handle_move_installed(partition, part_epoch, lsn);
                    self.update_blocked();
                }
                Err(error) => {
                    eprintln!(
                        "trove node: shard {}: cannot write partition {}, moved here, to {} ({error}); the move is refused and its source keeps the partition",
                        self.shard.id().index(),
                        partition.0,
                        path.display()
                    );
                    let why = format!("writing its snapshot failed: {error}");
                    self.shard
                        .handle_move_install_failed(partition, part_epoch, lsn, why);
                }
            }
        }
    }

    /// Deletes partition `partition`'s snapshot covering `lsn`, which retention keeps no more:
    /// renamed to a spare and emptied while the shard keeps fewer than
    /// `SNAPSHOT_SPARE_FILES_MAX`, removed otherwise.
    async fn delete_snapshot(&self, partition: u32, lsn: u64) {
        let old = snapshot_path(&self.snapshot_dir, partition, lsn);
        let keep = self.spares.borrow().len() < SNAPSHOT_SPARE_FILES_MAX;
        let spare = keep.then(|| self.new_scratch_path());
        let removed = async {
            match &spare {
                Some(spare) => empty_into(&self.shard, &old, spare).await?,
                None => remove_file(&self.shard, &old).await?,
            }
            sync_dir(&self.shard, &self.snapshot_dir).await
        };
        if let Err(error) = removed.await {
            fail_stop(&self.shard, "delete an old snapshot", error);
        }
        self.spares.borrow_mut().extend(spare);
    }

    /// A name for a snapshot file being written that recovery deletes as unfinished.
    fn new_scratch_path(&self) -> PathBuf {
        let number = self.scratch_names.get();
        self.scratch_names.set(number + 1);
        self.snapshot_dir
            .join(format!("spare-{number:020}.snap.tmp"))
    }

    /// Writes a snapshot file whole and durably: into a spare file (or a new one), synced,
    /// renamed to `path`, and the directory synced. Returns the file's size (whole blocks).
    /// A file that could not be written is deleted, its space back for the log: the next try
    /// writes it anew.
    async fn write_snapshot(&self, path: &Path, bytes: &[u8]) -> std::io::Result<u64> {
        let scratch = self.spares.borrow_mut().pop();
        let scratch = scratch.unwrap_or_else(|| self.new_scratch_path());
        let written = async {
            let len = write_whole_file(&scratch, bytes).await?;
            rename_file(&self.shard, &scratch, path).await?;
            sync_dir(&self.shard, &self.snapshot_dir).await?;
            std::io::Result::Ok(len)
        };
        let written = written.await;
        if written.is_err() {
            let _ = remove_file(&self.shard, &scratch).await;
        }
        written
    }

    /// Deletes the segments no snapshot needs any more; returns how many.
    async fn truncate(&self) -> u64 {
        let doomed = self.retention.borrow_mut().poll_truncate();
        for index in &doomed {
            let open = self.files.borrow_mut().remove(index);
            if let Some(file) = open {
                let _ = file.close_rc().await;
            }
            let path = segment_path(&self.dir, *index);
            if let Err(error) = remove_file(&self.shard, &path).await {
                fail_stop(&self.shard, "delete an old log segment", error);
            }
        }
        if !doomed.is_empty() {
            if let Err(error) = sync_dir(&self.shard, &self.dir).await {
                fail_stop(&self.shard, "sync its log directory", error);
            }
        }
        doomed.len() as u64
    }
}

/// Writes `bytes` to the file at `path` (created, or an emptied spare) with direct I/O,
/// padded with zeros to whole blocks, and syncs it. Returns the file's size.
async fn write_whole_file(path: &Path, bytes: &[u8]) -> std::io::Result<u64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await?;
    let len = bytes.len().next_multiple_of(file.alignment() as usize) as u64;
    write_blocks(&file, len, len, |done, target| {
        target.fill(0);
        let rest = &bytes[(done as usize).min(bytes.len())..];
        let copied = rest.len().min(target.len());
        target[..copied].copy_from_slice(&rest[..copied]);
    })
    .await?;
    file.fdatasync().await?;
    file.close().await?;
    Ok(len)
}

/// Renames file `from` to `to` and empties it, in one trip to glommio's blocking-thread pool
/// (counted for the shard's stop): a replaced snapshot kept to be written again.
async fn empty_into(shard: &Shard, from: &Path, to: &Path) -> std::io::Result<()> {
    let (from, to) = (from.to_owned(), to.to_owned());
    let emptied = glommio::executor().spawn_blocking(move || {
        std::fs::rename(&from, &to)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&to)?
            .set_len(0)
    });
    shard.file_ops().track(emptied).await
}

/// Syncs directory `dir`, so that a name created, renamed or removed in it survives a crash.
/// A full `fsync` (glommio's `Directory::sync` is an `fdatasync`, which a filesystem may take
/// as leaving a directory's entries unsynced), on glommio's blocking-thread pool as its renames
/// and removals run: a directory sync waits for the filesystem's journal to commit
/// (milliseconds on a busy disk), and a shard blocked that long applies nothing and reaps no
/// completion, its log's syncs included.
async fn sync_dir(shard: &Shard, dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    let sync = glommio::executor().spawn_blocking(move || std::fs::File::open(dir)?.sync_all());
    shard.file_ops().track(sync).await
}

/// Removes file `path` (on glommio's blocking-thread pool, counted for the shard's stop).
async fn remove_file(shard: &Shard, path: &Path) -> std::io::Result<()> {
    let removed = shard.file_ops().track(glommio::io::remove(path)).await;
    Ok(removed?)
}

/// Renames file `from` to `to` (on glommio's blocking-thread pool, counted for the shard's
/// stop).
async fn rename_file(shard: &Shard, from: &Path, to: &Path) -> std::io::Result<()> {
    let renamed = shard.file_ops().track(glommio::io::rename(from, to)).await;
    Ok(renamed?)
}
