//! The codec as a shard runs it on bytes that arrive, per event: the whole of it (`ingest`:
//! check the frame's header and checksum, parse its records, validate every event with
//! bytecheck, then route each one, as `net::connection::handle_events` does) and each stage on
//! its own, so the cost of every stage shows. Encoding (`FrameBuilder::push`, a client's side)
//! and applying (`ShardCore::apply`, the state machine) are here too, for scale.
//!
//! Events are the load generator's (`trove bench`'s default workload and mix); frames hold
//! `FRAME_EVENTS` of them unless a bench says otherwise. Throughput is in events; criterion
//! writes each bench's median to `target/criterion/GROUP/NAME/new/estimates.json`.
//!
//! Run: `cargo bench --bench codec`.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use trove::bench::workload::Workload;
use trove::constants::PARTITIONS_DEFAULT;
use trove::core::codec::{
    Decoded, FrameBuilder, FrameKind, Records, ValidatedArchive, ValidatedFrame, access_record,
    decode_frame,
};
use trove::core::ids::ShardId;
use trove::core::message::{ArchivedEvent, Event, Outcome};
use trove::core::partition::PartitionMap;
use trove::core::shard::{Route, ShardCore};

/// Events per frame: the client's default (`ClientConfig::new`).
const FRAME_EVENTS: usize = 64;
/// Events drawn for a bench: enough frames that the branch predictors cannot learn the
/// sequence, few enough that they stay in cache as a just-received frame does.
const EVENTS_DRAWN: usize = 4096;

/// The shard every routing bench routes from: shard 0 of two, so about half of the events
/// stay and half would be forwarded.
fn routing_core() -> ShardCore {
    let map = PartitionMap::round_robin(PARTITIONS_DEFAULT, 2).expect("a valid map");
    ShardCore::new(ShardId(0), map)
}

/// A node's only shard, with the workload's hunts created and its players joined, so that
/// applying the mix does the work it does in a run rather than rejecting unknown hunts.
fn core_with_hunts(workload: &Workload) -> ShardCore {
    let map = PartitionMap::round_robin(PARTITIONS_DEFAULT, 1).expect("a valid map");
    let mut core = ShardCore::new(ShardId(0), map);
    let setup: Vec<Event> = workload.setup_events().collect();
    for frame in support::frames(&setup, FRAME_EVENTS) {
        for record in support::validated_records(&frame) {
            let event = record.get();
            let Route::Local(local) = core.route(event) else {
                panic!("a node's only shard owns every partition");
            };
            let reply = core.apply(local, event);
            assert!(
                matches!(reply.outcome, Outcome::Accepted { .. }),
                "set-up event refused: {:?}",
                reply.outcome
            );
        }
    }
    core
}

/// What a shard does with a frame of events that arrived: the frame is checked whole before
/// any of it is used, then each event is routed. Returns how many stay on this shard.
fn ingest(core: &ShardCore, frame: &[u8]) -> usize {
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
        panic!("a bench frame is one whole, valid frame");
    };
    let records = ValidatedFrame::<ArchivedEvent>::validate(header.kind, body)
        .expect("a bench frame's events validate");
    records
        .iter()
        .filter(|record| matches!(core.route(record.get()), Route::Local(_)))
        .count()
}

/// Cycles through `items`, one per call: each iteration of a bench takes the next frame.
fn cycle<'a, T>(items: &'a [T]) -> impl FnMut() -> &'a T {
    let mut next = 0;
    move || {
        let item = &items[next];
        next = (next + 1) % items.len();
        item
    }
}

fn bench_ingest(c: &mut Criterion) {
    let events = support::events(&Workload::default(), EVENTS_DRAWN);
    let core = routing_core();
    let mut group = c.benchmark_group("ingest");
    for per_frame in [1, FRAME_EVENTS, 256] {
        let frames = support::frames(&events, per_frame);
        group.throughput(Throughput::Elements(per_frame as u64));
        group.bench_function(BenchmarkId::new("events_per_frame", per_frame), |b| {
            let mut next = cycle(&frames);
            b.iter(|| ingest(&core, black_box(next())))
        });
    }
    group.finish();
}

/// Frames and their validated records, for the benches of single stages.
struct Framed {
    frames: Vec<AlignedVec>,
}

impl Framed {
    fn new(events: &[Event]) -> Framed {
        Framed {
            frames: support::frames(events, FRAME_EVENTS),
        }
    }

    fn records(&self) -> Vec<Vec<ValidatedArchive<'_, ArchivedEvent>>> {
        self.frames
            .iter()
            .map(|frame| support::validated_records(frame))
            .collect()
    }

    fn events(&self) -> Vec<Vec<&ArchivedEvent>> {
        self.records()
            .into_iter()
            .map(|records| records.into_iter().map(ValidatedArchive::get).collect())
            .collect()
    }
}

/// Benches one stage in a group of its own: each call of `routine` handles one frame's worth
/// (`FRAME_EVENTS`) of events.
fn bench_stage<R>(c: &mut Criterion, group: &str, name: &str, mut routine: impl FnMut() -> R) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(FRAME_EVENTS as u64));
    group.bench_function(name, |b| b.iter(&mut routine));
    group.finish();
}

/// The checks of bytes that arrive, one stage at a time, and validation with routing: the
/// figure the target of well under 100 ns an event is about.
fn bench_checks(c: &mut Criterion) {
    let events = support::events(&Workload::default(), EVENTS_DRAWN);
    let framed = Framed::new(&events);
    let records = framed.records();
    let archived = framed.events();
    let bodies: Vec<&[u8]> = framed
        .frames
        .iter()
        .map(|frame| match decode_frame(frame) {
            Ok(Decoded::Frame { body, .. }) => body,
            _ => panic!("a bench frame is one whole, valid frame"),
        })
        .collect();
    let core = routing_core();

    let mut next = cycle(&records);
    bench_stage(c, "validate_route", "access_record+route", || {
        let local = next().iter().enumerate().filter(|(index, record)| {
            let event = access_record::<ArchivedEvent>(*index as u32, black_box(record.bytes()))
                .expect("a bench event validates");
            matches!(core.route(event), Route::Local(_))
        });
        local.count()
    });
    let mut next = cycle(&framed.frames);
    bench_stage(c, "decode_frame", "header+xxh3", || {
        decode_frame(black_box(next())).expect("a valid frame")
    });
    let mut next = cycle(&bodies);
    bench_stage(c, "parse_records", "trailer+lengths", || {
        Records::parse(FrameKind::Events, black_box(next())).expect("records parse")
    });
    let mut next = cycle(&records);
    bench_stage(c, "validate", "access_record", || {
        for (index, record) in next().iter().enumerate() {
            let event = access_record::<ArchivedEvent>(index as u32, black_box(record.bytes()));
            black_box(event.expect("a bench event validates"));
        }
    });
    let mut next = cycle(&archived);
    bench_stage(c, "route", "ShardCore::route", || {
        for event in next() {
            black_box(core.route(black_box(event)));
        }
    });
}

/// For scale: a client's side of the codec, and the state machine a shard feeds.
fn bench_encode_apply(c: &mut Criterion) {
    let workload = Workload::default();
    let events = support::events(&workload, EVENTS_DRAWN);
    let chunks: Vec<&[Event]> = events.chunks(FRAME_EVENTS).collect();
    let mut next = cycle(&chunks);
    let mut builder = FrameBuilder::new();
    bench_stage(c, "encode", "FrameBuilder::push", || {
        builder.clear(usize::MAX);
        builder.begin(FrameKind::Events);
        for event in next().iter() {
            builder.push(black_box(event)).expect("a bench event fits");
        }
        builder.finish(1);
        black_box(builder.bytes().len())
    });
    let framed = Framed::new(&events);
    let archived = framed.events();
    let mut core = core_with_hunts(&workload);
    // Routed once, before the timing: this stage is the state machine alone.
    let routed: Vec<Vec<_>> = archived
        .iter()
        .map(|frame| {
            frame
                .iter()
                .map(|event| match core.route(event) {
                    Route::Local(local) => (local, *event),
                    route => panic!("a node's only shard owns every partition, not {route:?}"),
                })
                .collect()
        })
        .collect();
    let mut next = cycle(&routed);
    bench_stage(c, "apply", "ShardCore::apply", || {
        for (local, event) in next().iter() {
            black_box(core.apply(*local, black_box(event)));
        }
    });
}

criterion_group! {
    name = benches;
    config = support::criterion(50, Duration::from_secs(1), Duration::from_secs(3));
    targets = bench_ingest, bench_checks, bench_encode_apply
}
criterion_main!(benches);
