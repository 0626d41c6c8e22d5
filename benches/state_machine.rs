//! The treasure-hunt state machine alone (`core::hunt::PartitionState::apply`), without
//! sockets, codec or runtime: events per second one core applies to a warmed set of
//! partitions, the yardstick of the state machine's memory layout.
//!
//! Four sets, two sizes of each of `trove bench`'s two workload presets, each set up by the
//! load generator's own set-up events:
//! - `default`: the default workload (1000 hunts of 100 players, 1024 partitions) and mix;
//! - `large`: the default mix over players enough that the state is ten times the CPU's
//!   last-level cache (read from sysfs), over `PARTITIONS_MAX` partitions, so nearly every
//!   event misses the cache;
//! - `accept-heavy`: `--preset accept-heavy` (2000 hunts of 250 players, 64 waypoints and 64
//!   treasures each, right codes only, check-ins inside a radius), whose events mostly succeed;
//! - `accept-heavy-large`: that mix over ten times the last-level cache.
//!
//! The measured stream is `STREAM_EVENTS` events of the set's mix, framed and validated as a
//! connection does, so that a pass touches far more state than the cache holds; each bench
//! iteration applies one frame (`FRAME_EVENTS` events). The default mix is warmed by applying
//! the measured stream until a pass lets no new player join (its joins are in, its waypoints
//! visited and its treasures won, as a few seconds of a run leave them: most of its events are
//! then refused, cheaply). An accepted event succeeds once (a check-in scores once per
//! waypoint), so a replayed accept-heavy stream would be refused too: that mix is warmed with
//! a stream of another seed, and its state is restored from a copy, outside the timing,
//! whenever the measured stream starts over. The bytes of live state are measured with a
//! counting allocator and printed with the cache size they are compared to.
//!
//! Run: `cargo bench --bench state_machine`; `STATE_MACHINE_SETS=default,accept-heavy` sets up
//! only those sets. `-- --count` runs no criterion: it applies each set's measured stream once
//! in `measured_pass`, for instruction and cache-miss counts that do not depend on the
//! machine's load:
//! `valgrind --tool=callgrind --cache-sim=yes --toggle-collect='state_machine::measured_pass*'
//! <the bench binary> --count`, then divide the collected `Ir`, `D1mr + D1mw` and
//! `DLmr + DLmw` by the events it prints (`STATE_MACHINE_SETS` picks one set per run).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
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
#[derive(Clone)]
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

/// How many events `frames` hold.
fn events_in(frames: &[Vec<&ArchivedEvent>]) -> usize {
    frames.iter().map(Vec::len).sum()
}

/// Applies the stream until a pass lets no new player join (its joins are in, as in any run
/// longer than a few seconds) or `WARM_PASSES_MAX` passes.
fn warm(state: &mut Partitions, frames: &[Vec<&ArchivedEvent>]) {
    for _ in 0..WARM_PASSES_MAX {
        let joined = frames
            .iter()
            .flatten()
            .filter(|event| {
                let outcome = state.apply(event);
                matches!(event.kind, ArchivedEventKind::Join)
                    && matches!(outcome, Outcome::Accepted { .. })
            })
            .count();
        if joined == 0 {
            return;
        }
    }
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

/// The large variant of `base`: its mix over ten times the last-level cache of hunt state,
/// sized from the measured bytes of a probe of 16 hunts.
fn large_workload(base: Workload, llc: usize) -> Workload {
    let probe = Workload {
        hunts: 16,
        players_per_hunt: LARGE_PLAYERS_PER_HUNT,
        ..base
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

/// One of the measured sets: a workload, its partitions, and how its state is warmed.
struct Set {
    name: &'static str,
    workload: Workload,
    partitions: u32,
    /// Warm with a stream of another seed and restore the warmed state whenever the measured
    /// stream starts over (a mix whose events succeed once), instead of replaying the
    /// measured stream until it changes nothing more.
    restore: bool,
}

impl Set {
    fn named(name: &str, llc: usize) -> Set {
        let accept_heavy = Workload::accept_heavy();
        let (name, workload, partitions, restore) = match name {
            "default" => ("default", Workload::default(), PARTITIONS_DEFAULT, false),
            "large" => (
                "large",
                large_workload(Workload::default(), llc),
                PARTITIONS_MAX,
                false,
            ),
            "accept-heavy" => ("accept-heavy", accept_heavy, PARTITIONS_DEFAULT, true),
            "accept-heavy-large" => (
                "accept-heavy-large",
                large_workload(accept_heavy, llc),
                PARTITIONS_MAX,
                true,
            ),
            other => panic!(
                "STATE_MACHINE_SETS names `{other}`; the sets are {}",
                SETS.join(", ")
            ),
        };
        Set {
            name,
            workload,
            partitions,
            restore,
        }
    }
}

/// The sets, in the order they run.
const SETS: [&str; 4] = ["default", "large", "accept-heavy", "accept-heavy-large"];

/// A set's state, warmed, with the stream measured on it.
struct Prepared {
    state: Partitions,
    /// The warmed state, to restore when the stream starts over (sets with `restore`).
    warmed: Option<Partitions>,
    frames: Vec<Vec<&'static ArchivedEvent>>,
    /// The next frame of `frames` to apply.
    next: usize,
}

impl Prepared {
    fn new(set: &Set, llc: usize) -> Prepared {
        let (mut state, bytes) = set_up(&set.workload, set.partitions);
        let frames = stream(&set.workload);
        let warming = if set.restore {
            stream(&Workload {
                seed: set.workload.seed + 1,
                ..set.workload.clone()
            })
        } else {
            frames.clone()
        };
        let before_warming = LIVE_BYTES.load(Ordering::Relaxed);
        warm(&mut state, &warming);
        let bytes = bytes + LIVE_BYTES.load(Ordering::Relaxed) - before_warming;
        // What the first measured pass will refuse, on a copy.
        let refused = apply_all(&mut state.clone(), frames.iter().flatten().copied()).1;
        let refused_share = refused as f64 / events_in(&frames) as f64;
        eprintln!(
            "state_machine/{}: {} hunts of {} players set up over {} partitions, after \
             warming: {:.1} MiB of state, {:.1}x the {} MiB last-level cache; {:.1}% of a pass \
             over the measured stream is refused by the rules",
            set.name,
            set.workload.hunts,
            set.workload.players_per_hunt,
            set.partitions,
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / llc as f64,
            llc >> 20,
            100.0 * refused_share,
        );
        Prepared {
            warmed: set.restore.then(|| state.clone()),
            state,
            frames,
            next: 0,
        }
    }

    /// Restores the warmed state if the stream is over, so the next frame is the first.
    fn restart_if_over(&mut self) {
        if self.next == self.frames.len() {
            if let Some(warmed) = &self.warmed {
                self.state = warmed.clone();
            }
            self.next = 0;
        }
    }

    /// Applies `frames` frames, each after prefetching its events if `prefetch`; returns the
    /// time spent applying (restoring the state is left out).
    fn run(&mut self, frames: u64, prefetch: bool) -> Duration {
        let mut spent = Duration::ZERO;
        let mut left = frames as usize;
        while left > 0 {
            self.restart_if_over();
            let count = left.min(self.frames.len() - self.next);
            let start = Instant::now();
            for frame in &self.frames[self.next..self.next + count] {
                if prefetch {
                    for event in frame {
                        self.state.prefetch(black_box(event));
                    }
                }
                for event in frame {
                    black_box(self.state.apply(black_box(event)));
                }
            }
            spent += start.elapsed();
            self.next += count;
            left -= count;
        }
        spent
    }
}

fn bench_set(c: &mut Criterion, set: &Set, llc: usize) {
    let mut prepared = Prepared::new(set, llc);
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(FRAME_EVENTS as u64));
    group.bench_function(format!("{}/PartitionState::apply", set.name), |b| {
        b.iter_custom(|frames| prepared.run(frames, false))
    });
    // Two passes per frame: prefetch every event's state, then apply them all.
    group.bench_function(format!("{}/prefetch+apply", set.name), |b| {
        b.iter_custom(|frames| prepared.run(frames, true))
    });
    group.finish();
}

/// One pass of the measured stream, apply alone, kept out of line so that callgrind can
/// collect it alone; returns how many events were applied and refused.
#[inline(never)]
fn measured_pass(state: &mut Partitions, frames: &[Vec<&ArchivedEvent>]) -> (usize, usize) {
    apply_all(state, frames.iter().flatten().copied())
}

/// `--count`: each set's measured stream applied once, for instruction counts.
fn count(sets: &[Set], llc: usize) {
    for set in sets {
        let mut prepared = Prepared::new(set, llc);
        let (applied, refused) = measured_pass(&mut prepared.state, &prepared.frames);
        println!(
            "state_machine/{} --count: {applied} events in measured_pass, {refused} refused",
            set.name
        );
    }
}

fn chosen_sets(llc: usize) -> Vec<Set> {
    let names = std::env::var("STATE_MACHINE_SETS").unwrap_or_else(|_| SETS.join(","));
    names
        .split(',')
        .map(str::trim)
        .map(|name| Set::named(name, llc))
        .collect()
}

fn main() {
    let llc = llc_bytes();
    let sets = chosen_sets(llc);
    if std::env::args().any(|arg| arg == "--count") {
        count(&sets, llc);
        return;
    }
    let mut criterion = support::criterion(30, Duration::from_secs(2), Duration::from_secs(5));
    for set in &sets {
        bench_set(&mut criterion, set, llc);
    }
    criterion.final_summary();
}
