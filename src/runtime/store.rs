//! The store's shell: each shard's log directory, recovery at start, and the two tasks that
//! write and sync the log with glommio's `DmaFile`.
//!
//! Layout: `DATA_DIR/trove.id` names the node, shard count and partition count the data
//! belongs to (a data dir of another layout is refused, never mixed); `DATA_DIR/shard-N/`
//! holds shard N's segments, `00000000000000000000.wal` and on, each pre-allocated to
//! `WAL_SEGMENT_BYTES`.
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
//! A write or sync that fails stops the node (fail-stop, as a dead shard does): nothing that
//! was not logged is ever answered as durable. Everything here lives on its shard's core.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{DmaFile, OpenOptions};
use rkyv::util::AlignedVec;

use crate::constants::{WAL_BLOCK_BYTES_MAX, WAL_FORMAT_VERSION, WAL_SEGMENT_BYTES};
use crate::core::ids::PartitionId;
use crate::core::shard::{Durability, LogSync};
use crate::runtime::shard::Shard;
use crate::runtime::stall::spawn_timed;
use crate::runtime::wait::WaitQueue;
use crate::store::commit::{GroupCommit, LogIdentity, LogPosition, WriteIo};
use crate::store::format::SegmentEnd;
use crate::store::recovery::{EndDecision, SegmentError, check_segment, decide_end, holds_records};

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

/// The shard's segment files, by index.
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
    /// Events replayed into the shard's partitions.
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
}

/// Replays shard `shard`'s log into it, cutting a torn tail; refuses a log of another layout
/// or damaged before its tail (unless `store.recover_truncate`). Runs on the shard's executor
/// before it serves, with blocking reads: nothing else runs on the shard yet.
pub fn recover(
    shard: &Shard,
    store: &StoreConfig,
    partitions: u32,
) -> Result<(Recovered, LogStart), String> {
    let index = shard.id().index();
    let dir = shard_dir(store, index);
    std::fs::create_dir_all(&dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let identity = LogIdentity {
        node: store.node,
        shard: index as u32,
        partitions,
    };
    let files = list_segments(&dir)?;
    let mut recovered = Recovered {
        shard: index,
        segments: files.len(),
        ..Recovered::default()
    };
    let mut touched = vec![false; partitions as usize];
    let mut position = LogPosition::START;
    let mut tail = Vec::new();
    let mut payload = AlignedVec::<16>::new();
    for (at, (number, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if *number != at as u64 {
            return Err(format!(
                "{} is out of place: segment {at} was expected (a segment is missing); restore the data dir from a backup",
                path.display()
            ));
        }
        let (end, records) = match check_segment(identity, at as u64, position.next_lsn, &bytes) {
            Ok((_, scan)) => (scan.end, scan.records),
            // A header never completely written: the crash came as the segment was started
            // (unless later segments hold records: then it is damage).
            Err(SegmentError::Header(why))
                if store.recover_truncate || !later_holds_records(&files[at + 1..])? =>
            {
                recovered.notes.push(format!(
                    "{}: the segment header is not intact ({why}); the log is cut there and the segment started again",
                    path.display()
                ));
                cut(path, &bytes, 0)?;
                discard_after(&files[at + 1..], &mut recovered)?;
                position = LogPosition {
                    segment: at as u64,
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
        for record in &records {
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
        recovered.events += records.len() as u64;
        let offset = end.offset();
        tail = bytes[offset - offset % WAL_BLOCK_BYTES_MAX..offset].to_vec();
        position = LogPosition {
            next_lsn: position.next_lsn + records.len() as u64,
            segment: at as u64,
            offset: offset as u64,
        };
        let later_records =
            !matches!(end, SegmentEnd::Clean { .. }) && later_holds_records(&files[at + 1..])?;
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
                discard_after(&files[at + 1..], &mut recovered)?;
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
}

/// Completed writes not yet covered by a sync, for the log-sync stage and counters.
#[derive(Clone, Copy, Default)]
struct UnsyncedWrites {
    first_issued: Option<Instant>,
    bytes: u64,
}

type GroupCommitCell = RefCell<GroupCommit>;

/// A log failure: the node stops, so that nothing unlogged is answered as durable.
fn fail_stop(shard: &Shard, what: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "shard {} cannot {what}: {error}; stopping so that nothing is answered that is not logged",
        shard.id().index()
    )
}

/// Opens (creating and pre-allocating when new) segment `index` of the log in `dir`.
async fn open_segment(dir: &Path, index: u64) -> std::io::Result<DmaFile> {
    let path = segment_path(dir, index);
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await?;
    if file.file_size().await? < WAL_SEGMENT_BYTES {
        file.pre_allocate(WAL_SEGMENT_BYTES, false).await?;
    }
    if !existed {
        // The new name must survive a crash too.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

/// Starts the shard's log writer and syncer where recovery left the log. Records the core
/// queued meanwhile wait in the core.
pub fn start_log_tasks(shard: Rc<Shard>, start: LogStart) {
    spawn_timed(async move {
        let first = open_segment(&start.dir, start.position.segment)
            .await
            .unwrap_or_else(|error| fail_stop(&shard, "open its log", error));
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
        });
        spawn_timed(tasks.clone().sync_loop()).detach();
        tasks.write_loop().await;
    })
    .detach();
}

impl LogTasks {
    async fn file(&self, segment: u64) -> Rc<DmaFile> {
        if let Some(file) = self.files.borrow().get(&segment) {
            return file.clone();
        }
        let file = open_segment(&self.dir, segment)
            .await
            .unwrap_or_else(|error| fail_stop(&self.shard, "open a log segment", error));
        let file = Rc::new(file);
        self.files.borrow_mut().insert(segment, file.clone());
        file
    }

    /// Feeds the core's records to the machine and issues its writes, one at a time.
    async fn write_loop(self: Rc<Self>) {
        loop {
            let io = self
                .shard
                .log_queued()
                .until(|| {
                    let mut machine = self.machine.borrow_mut();
                    self.shard.take_log(|lsn, partition, payload| {
                        let given = machine.append(partition.0, payload);
                        debug_assert_eq!(given, lsn, "the core and the log number records alike");
                    });
                    machine.poll_write()
                })
                .await;
            let file = self.file(io.segment).await;
            let issued = Instant::now();
            if let Err(error) = self.write_fully(&file, io).await {
                fail_stop(&self.shard, "write its log", error);
            }
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
                let file = self.file(segment).await;
                if let Err(error) = file.fdatasync().await {
                    fail_stop(&self.shard, "sync its log", error);
                }
            }
            let durable = self.machine.borrow_mut().handle_synced();
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
        }
    }
}
