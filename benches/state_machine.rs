//! The treasure-hunt state machine alone (`core::hunt::PartitionState::apply`), without
//! sockets, codec or runtime: events per second one core applies to a warmed set of
//! partitions, the yardstick of the state machine's memory layout.
//!
//! Two sets, each set up by the load generator's own set-up events, then warmed by applying
//! the measured stream until a pass lets no new player join (so the stream's joins are in,
//! its waypoints visited and its treasures won, as a few seconds of a run leave them):
//! - `default`: `trove bench`'s default workload (1000 hunts of 100 players, 1024 partitions);
//! - `large`: players enough that the state is ten times the CPU's last-level cache (read
//!   from sysfs), over `PARTITIONS_MAX` partitions, so nearly every event misses the cache.
//!
//! The measured stream is `STREAM_EVENTS` events of the default mix, framed and validated as a
//! connection does, so that a pass touches far more state than the cache holds; each bench
//! iteration applies one frame (`FRAME_EVENTS` events). The bytes of live state are measured
//! with a counting allocator and printed with the cache size they are compared to.
//!
//! Run: `cargo bench --bench state_machine`; `STATE_MACHINE_SETS=default` sets up only one set
//! (under `valgrind --tool=callgrind`, say, with `-- --profile-time 1`).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use trove::bench::workload::Workload;
use trove::constants::{PARTITIONS_DEFAULT, PARTITIONS_MAX};
use trove::core::codec::ValidatedArchive;
use trove::core::hunt::PartitionState;
use trove::core::ids::PartitionId;
use trove::core::message::{ArchivedEvent, ArchivedEventKind, Event, Outcome};
use trove::core::partition::Partitioner;

/// Counts the bytes the bench holds on the heap, to size the state it measures.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the same arguments; the counter
// is only arithmetic on the sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Events per frame: the client's default.
const FRAME_EVENTS: usize = 64;
/// Events in the measured stream: a pass touches far more cache lines than any cache holds.
const STREAM_EVENTS: usize = 1 << 19;
/// Last-level cache assumed when sysfs does not say (the size on this project's machine).
const LLC_BYTES_FALLBACK: usize = 32 << 20;
/// Most passes over the stream that warm a set up.
const WARM_PASSES_MAX: usize = 64;
/// Players per hunt of the large set.
const LARGE_PLAYERS_PER_HUNT: u32 = 1000;

/// The last-level cache of CPU 0, from sysfs.
fn llc_bytes() -> usize {
    let read = |index: u32| {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let size = std::fs::read_to_string(format!("{dir}/size")).ok()?;
        let size = size.trim();
        let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
        let scale = match unit {
            "K" => 1 << 10,
            "M" => 1 << 20,
            _ => return None,
        };
        Some(digits.parse::<usize>().ok()? * scale)
    };
    (0..8).filter_map(read).max().unwrap_or_else(|| {
        eprintln!("state_machine: no cache size in sysfs; assuming 32 MiB");
        LLC_BYTES_FALLBACK
    })
}

/// A shard's partitions, as `ShardCore` keeps them, without the routing.
struct Partitions {
    partitioner: Partitioner,
    states: Vec<PartitionState>,
}

impl Partitions {
    fn new(partitions: u32) -> Partitions {
        Partitions {
            partitioner: Partitioner::new(partitions).expect("a power of two"),
            states: (0..partitions)
                .map(|p| PartitionState::new(PartitionId(p)))
                .collect(),
        }
    }

    #[inline]
    fn apply(&mut self, event: &ArchivedEvent) -> Outcome {
        let partition = self.partitioner.partition_of(event.hunt.get());
        self.states[partition.index()].apply(event)
    }

    #[inline]
    fn prefetch(&self, event: &ArchivedEvent) {
        let partition = self.partitioner.partition_of(event.hunt.get());
        self.states[partition.index()].prefetch(event);
    }
}

/// Applies every event of `frames` (validated frames of archived events); returns how many
/// were applied and how many of them were refused.
fn apply_frames(state: &mut Partitions, frames: &[AlignedVec]) -> (usize, usize) {
    let events = frames.iter().flat_map(|frame| {
        support::validated_records(frame)
            .into_iter()
            .map(ValidatedArchive::get)
    });
    apply_all(state, events)
}

fn apply_all<'a>(
    state: &mut Partitions,
    events: impl IntoIterator<Item = &'a ArchivedEvent>,
) -> (usize, usize) {
    let (mut applied, mut refused) = (0, 0);
    for event in events {
        applied += 1;
        refused += matches!(state.apply(event), Outcome::Rejected { .. }) as usize;
    }
    (applied, refused)
}

/// Applies the stream until a pass lets no new player join (every hunt is full, as in any
/// run longer than a few seconds) or `WARM_PASSES_MAX` passes; returns the last pass's share
/// of refused events.
fn warm(state: &mut Partitions, frames: &[Vec<&ArchivedEvent>]) -> f64 {
    let mut refused_share = 0.0;
    for _ in 0..WARM_PASSES_MAX {
        let (mut refused, mut joined) = (0usize, 0usize);
        for event in frames.iter().flatten() {
            let outcome = state.apply(event);
            refused += matches!(outcome, Outcome::Rejected { .. }) as usize;
            joined += (matches!(event.kind, ArchivedEventKind::Join)
                && matches!(outcome, Outcome::Accepted { .. })) as usize;
        }
        refused_share = refused as f64 / (frames.len() * FRAME_EVENTS) as f64;
        if joined == 0 {
            break;
        }
    }
    refused_share
}

/// The workload's hunts created and players joined; returns the state and its heap bytes.
fn set_up(workload: &Workload, partitions: u32) -> (Partitions, usize) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut state = Partitions::new(partitions);
    let setup: Vec<Event> = workload.setup_events().collect();
    for chunk in setup.chunks(64 * FRAME_EVENTS) {
        let frames = support::frames(chunk, FRAME_EVENTS);
        let (applied, refused) = apply_frames(&mut state, &frames);
        assert_eq!(refused, 0, "{refused} of {applied} set-up events refused");
    }
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    (state, bytes)
}

/// The large set's workload: ten times the last-level cache of hunt state, sized from the
/// measured bytes of a probe of 16 hunts.
fn large_workload(llc: usize) -> Workload {
    let probe = Workload {
        hunts: 16,
        players_per_hunt: LARGE_PLAYERS_PER_HUNT,
        ..Workload::default()
    };
    let (_, probe_bytes) = set_up(&probe, 16);
    let hunt_bytes = probe_bytes / 16;
    Workload {
        hunts: (10 * llc).div_ceil(hunt_bytes) as u32,
        ..probe
    }
}

/// The measured stream: frames of validated events, read in place.
fn stream(workload: &Workload) -> Vec<Vec<&'static ArchivedEvent>> {
    let events = support::events(workload, STREAM_EVENTS);
    // The frames are leaked so that the events read from them can be `'static`: the bench
    // process holds them to its end either way.
    let frames: &'static [AlignedVec] = Vec::leak(support::frames(&events, FRAME_EVENTS));
    frames
        .iter()
        .map(|frame| {
            support::validated_records(frame)
                .into_iter()
                .map(ValidatedArchive::get)
                .collect()
        })
        .collect()
}

fn bench_set(c: &mut Criterion, name: &str, workload: &Workload, partitions: u32, llc: usize) {
    let (mut state, bytes) = set_up(workload, partitions);
    let frames = stream(workload);
    let before_warming = LIVE_BYTES.load(Ordering::Relaxed);
    let refused_share = warm(&mut state, &frames);
    let bytes = bytes + LIVE_BYTES.load(Ordering::Relaxed) - before_warming;
    eprintln!(
        "state_machine/{name}: {} hunts of {} players set up over {partitions} partitions, \
         after the stream's joins: {:.1} MiB of state, {:.1}x the {} MiB last-level cache; \
         {:.0}% of the mix is refused",
        workload.hunts,
        workload.players_per_hunt,
        bytes as f64 / f64::from(1 << 20),
        bytes as f64 / llc as f64,
        llc >> 20,
        100.0 * refused_share,
    );
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(FRAME_EVENTS as u64));
    let mut next = 0;
    group.bench_function(format!("{name}/PartitionState::apply"), |b| {
        b.iter(|| {
            let frame = &frames[next];
            next = (next + 1) % frames.len();
            for event in frame {
                black_box(state.apply(black_box(event)));
            }
        })
    });
    // Two passes per frame: prefetch every event's state, then apply them all.
    group.bench_function(format!("{name}/prefetch+apply"), |b| {
        b.iter(|| {
            let frame = &frames[next];
            next = (next + 1) % frames.len();
            for event in frame {
                state.prefetch(black_box(event));
            }
            for event in frame {
                black_box(state.apply(black_box(event)));
            }
        })
    });
    group.finish();
}

fn bench_state_machine(c: &mut Criterion) {
    let llc = llc_bytes();
    let sets = std::env::var("STATE_MACHINE_SETS").unwrap_or_else(|_| "default,large".into());
    for set in sets.split(',').map(str::trim) {
        match set {
            "default" => bench_set(c, set, &Workload::default(), PARTITIONS_DEFAULT, llc),
            "large" => bench_set(c, set, &large_workload(llc), PARTITIONS_MAX, llc),
            other => panic!("STATE_MACHINE_SETS names `{other}`; the sets are default and large"),
        }
    }
}

criterion_group! {
    name = benches;
    config = support::criterion(30, Duration::from_secs(2), Duration::from_secs(5));
    targets = bench_state_machine
}
criterion_main!(benches);
