//! The cross-shard hop, as the runtime performs it, in events per second.
//!
//! Two glommio executors pinned to the first two CPUs of the affinity mask (both to the one
//! CPU of a one-CPU machine, which the bench then says), joined by the runtime's channel: a
//! bounded `shared_channel` of `MeshBatch`es that holds `MESH_CHANNEL_BATCHES_MAX` of them.
//! Events are the load generator's (`trove bench`'s default workload and mix), validated once
//! with `access_record` before any measurement, as a connection validates them.
//!
//! - `one_way`, the transport: one executor fills batches of `MESH_BATCH_EVENTS_MAX` event
//!   archives with `MeshBatch::push_event`, a new batch each time as a shard's outbox does,
//!   and sends them; the other receives them and reads every event in place with
//!   `ValidatedArchive::get`, then drops the batch, as `ShardCore::handle_mesh` does. Timed from
//!   the first push to the last event read.
//! - `round_trip`, the runtime itself: `spawn_shards` starts two real shards, mesh included.
//!   A driver on shard 0 hands frames to the shard the way a connection's reader does
//!   (`Shard::handle_frame`), all of their events owned by shard 1, so each is admitted and
//!   forwarded by shard 0's core, flushed by its flusher task, applied by shard 1's core (the
//!   state machine included) and answered by a reply that returns in shard 1's next batch and
//!   is queued for the driver's connection, whose "writer" then reports it written as a
//!   connection's writer does. Timed from the first frame handed in to the last reply
//!   written.
//!
//! One iteration is `MESH_BATCH_EVENTS_MAX` events (a batch; for the round trip, a frame of
//! that many that the driver dispatches before it yields, as a connection yields to read
//! again), and throughput is in events. The time is taken on the executors, so criterion's
//! thread only waits; `iter_custom` reports it. Criterion writes each bench's median to
//! `target/criterion/mesh_hop/NAME/new/estimates.json`.
//!
//! Wall-clock figures on a shared machine fall whenever another process takes one of the two
//! CPUs, so each bench also reports the CPU time each executor's thread spent per event over
//! the whole bench (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`): what the hop costs each core,
//! whatever else runs, and so the most events per second the busier side could carry.
//!
//! Run: `cargo bench --bench mesh_hop`.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glommio::ExecutorJoinHandle;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use rkyv::util::AlignedVec;
use trove::bench::workload::Workload;
use trove::constants::{MESH_BATCH_EVENTS_MAX, MESH_CHANNEL_BATCHES_MAX};
use trove::core::codec::ValidatedArchive;
use trove::core::credit::Credit;
use trove::core::ids::{ConnectionId, ShardId};
use trove::core::message::{ArchivedEvent, Event};
use trove::core::partition::PartitionMap;
use trove::core::shard::{MeshBatch, ShardStats};
use trove::host::preflight::preflight;
use trove::runtime::config::RuntimeConfig;
use trove::runtime::executors::{Shards, spawn_shards};

use support::cpu::{CpuMeter, CpuMeterTask, HopCpu, executor, hop_cpus};
use support::driver::{DriverPayload, drive};

/// Events drawn from the workload for the measured traffic.
const EVENTS_DRAWN: usize = 16_384;
/// The shard that owns every event the round trip's driver (on shard 0) dispatches.
const OWNER: ShardId = ShardId(1);

/// Ends the bench with a sentence when this host cannot run it.
fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("mesh_hop: {what}: {error}");
    std::process::exit(1);
}

/// The records of the frames, validated, one list a frame.
fn validated_frames(frames: &[AlignedVec]) -> Vec<Vec<ValidatedArchive<'_, ArchivedEvent>>> {
    frames
        .iter()
        .map(|frame| support::validated_records(frame))
        .collect()
}

// ---- one way: the transport ---------------------------------------------------------------

/// Two pinned executors and the channel between them, waiting for batches to move.
struct OneWay {
    send_commands: flume::Sender<u64>,
    send_started: flume::Receiver<Instant>,
    receive_commands: flume::Sender<u64>,
    receive_armed: flume::Receiver<()>,
    receive_finished: flume::Receiver<Instant>,
    executors: Vec<ExecutorJoinHandle<()>>,
    cpu: HopCpu,
}

impl OneWay {
    fn start(cpus: [usize; 2], frames: Vec<AlignedVec>) -> OneWay {
        let (sender, receiver) = shared_channel::new_bounded(MESH_CHANNEL_BATCHES_MAX);
        let (send_commands, send_commands_rx) = flume::unbounded::<u64>();
        let (send_started_tx, send_started) = flume::unbounded();
        let (receive_commands, receive_commands_rx) = flume::unbounded::<u64>();
        let (receive_armed_tx, receive_armed) = flume::unbounded();
        let (receive_finished_tx, receive_finished) = flume::unbounded();
        let (send_meter, send_meter_task) = CpuMeter::new();
        let (receive_meter, receive_meter_task) = CpuMeter::new();
        let sending = executor(cpus[0], "hop-send")
            .spawn(move || {
                send_batches(
                    sender,
                    frames,
                    send_commands_rx,
                    send_started_tx,
                    send_meter_task,
                )
            })
            .unwrap_or_else(|error| fail("cannot start the sending executor", error));
        let receiving = executor(cpus[1], "hop-receive")
            .spawn(move || {
                receive_batches(
                    receiver,
                    receive_commands_rx,
                    receive_armed_tx,
                    receive_finished_tx,
                    receive_meter_task,
                )
            })
            .unwrap_or_else(|error| fail("cannot start the receiving executor", error));
        OneWay {
            send_commands,
            send_started,
            receive_commands,
            receive_armed,
            receive_finished,
            executors: vec![sending, receiving],
            cpu: HopCpu::start(
                "mesh_hop",
                [("sender", send_meter), ("receiver", receive_meter)],
            ),
        }
    }

    /// Moves `batches` full batches across; the time from the first push to the last read.
    fn run(&self, batches: u64) -> Duration {
        // The receiver waits on the channel before the sender starts, so a slow wake of the
        // receiver's executor from this thread is never timed.
        self.receive_commands.send(batches).expect("receiver alive");
        self.receive_armed.recv().expect("receiver alive");
        self.send_commands.send(batches).expect("sender alive");
        let started = self.send_started.recv().expect("sender alive");
        let finished = self.receive_finished.recv().expect("receiver alive");
        self.cpu.add_events(batches * MESH_BATCH_EVENTS_MAX as u64);
        finished.duration_since(started)
    }

    fn stop(self) {
        self.cpu.report("one_way");
        drop(self.send_commands);
        drop(self.receive_commands);
        for executor in self.executors {
            executor.join().expect("a hop executor panicked");
        }
    }
}

/// The sending executor: on each command, fills that many batches with the frames' events
/// (a new batch each time, as a shard's outbox does) and sends them; reports when it began.
async fn send_batches(
    sender: SharedSender<MeshBatch>,
    frames: Vec<AlignedVec>,
    commands: flume::Receiver<u64>,
    started: flume::Sender<Instant>,
    meter: CpuMeterTask,
) {
    meter.spawn();
    let sender = sender.connect().await;
    let records: Vec<ValidatedArchive<'_, ArchivedEvent>> = validated_frames(&frames).concat();
    let mut archives = records.iter().cycle();
    let connection = ConnectionId::new(0, 0);
    let clock = Instant::now();
    while let Ok(batches) = commands.recv_async().await {
        let began = Instant::now();
        for _ in 0..batches {
            let mut batch = MeshBatch::new(clock.elapsed().as_nanos() as u64);
            for &archive in archives.by_ref().take(MESH_BATCH_EVENTS_MAX) {
                let credit = Credit::new(1, archive.bytes().len() as u32);
                batch.push_event(archive, connection, credit);
            }
            if sender.send(batch).await.is_err() {
                return;
            }
        }
        let _ = started.send(began);
    }
}

/// The receiving executor: on each command, says it is waiting, receives that many batches,
/// reads every event in place and drops each batch, as a shard does; reports when it ended.
async fn receive_batches(
    receiver: SharedReceiver<MeshBatch>,
    commands: flume::Receiver<u64>,
    armed: flume::Sender<()>,
    finished: flume::Sender<Instant>,
    meter: CpuMeterTask,
) {
    meter.spawn();
    let receiver = receiver.connect().await;
    while let Ok(batches) = commands.recv_async().await {
        let _ = armed.send(());
        let mut read = 0u64;
        for _ in 0..batches {
            let Some(batch) = receiver.recv().await else {
                return;
            };
            for (archive, _entry) in batch.events().iter() {
                let event = archive.get();
                read = read.wrapping_add(event.hunt.get().0 ^ event.client_seq.to_native());
            }
        }
        black_box(read);
        let _ = finished.send(Instant::now());
    }
}

// ---- round trip: the runtime --------------------------------------------------------------

/// What each shard gets: a CPU meter, and on shard 0 the driver's payload.
struct ShardPayload {
    meter: CpuMeterTask,
    driver: Option<DriverPayload>,
}

/// Two real shards with a driver on shard 0, set up and waiting for commands.
struct RoundTrip {
    shards: Shards,
    commands: flume::Sender<u64>,
    results: flume::Receiver<Duration>,
    cpu: HopCpu,
}

impl RoundTrip {
    fn start(cpus: [usize; 2]) -> RoundTrip {
        let config = RuntimeConfig::on_cpus(cpus.to_vec());
        let map = PartitionMap::round_robin(config.partitions, cpus.len())
            .unwrap_or_else(|error| fail("cannot build the partition map", error));
        let owned = |event: &&Event| map.route(event.hunt).1 == OWNER;
        let workload = Workload::default();
        let setup: Vec<Event> = workload.setup_events().filter(|e| owned(&e)).collect();
        let drawn = support::events(&workload, EVENTS_DRAWN);
        let mut measured: Vec<&Event> = drawn.iter().filter(owned).collect();
        // Whole frames only: every iteration is exactly one frame's worth of events.
        measured.truncate(measured.len() / MESH_BATCH_EVENTS_MAX * MESH_BATCH_EVENTS_MAX);
        let (commands, commands_rx) = flume::unbounded();
        let (results_tx, results) = flume::unbounded();
        let driver = DriverPayload {
            setup: support::frames(&setup, MESH_BATCH_EVENTS_MAX),
            measured: support::frames(measured, MESH_BATCH_EVENTS_MAX),
            commands: commands_rx,
            results: results_tx,
        };
        let (origin_meter, origin_meter_task) = CpuMeter::new();
        let (owner_meter, owner_meter_task) = CpuMeter::new();
        let payloads = vec![
            ShardPayload {
                meter: origin_meter_task,
                driver: Some(driver),
            },
            ShardPayload {
                meter: owner_meter_task,
                driver: None,
            },
        ];
        let shards = spawn_shards(&config, &map, payloads, |shard, payload| {
            payload.meter.spawn();
            if let Some(driver) = payload.driver {
                glommio::spawn_local(drive(shard, driver)).detach();
            }
        })
        .unwrap_or_else(|error| fail("cannot start the shards", error));
        commands
            .send(0)
            .expect("the driver waits for its first command");
        results.recv().expect("the driver sets the hunts up");
        RoundTrip {
            shards,
            commands,
            results,
            cpu: HopCpu::start(
                "mesh_hop",
                [("shard 0", origin_meter), ("shard 1", owner_meter)],
            ),
        }
    }

    /// Sends `frames` frames of events across and waits for every reply; the time it took.
    fn run(&self, frames: u64) -> Duration {
        self.commands.send(frames).expect("driver alive");
        let took = self.results.recv().expect("driver alive");
        self.cpu.add_events(frames * MESH_BATCH_EVENTS_MAX as u64);
        took
    }

    /// Stops both shards and says what crossed the mesh, if the bench ran.
    fn stop(self) {
        let measured = self.cpu.events() > 0;
        self.cpu.report("round_trip");
        drop(self.commands);
        let stats = self.shards.stop();
        if measured {
            report_traffic(&stats[0], &stats[OWNER.index()]);
        }
    }
}

/// How full the batches were each way, and the most events in flight at the owner.
fn report_traffic(origin: &ShardStats, owner: &ShardStats) {
    eprintln!(
        "mesh_hop/round_trip: {} events crossed in {} batches ({:.1} a batch), {} replies \
         came back in {} batches; at most {} events were in flight at the owner",
        origin.events_forwarded,
        origin.mesh_batches_sent,
        origin.events_forwarded as f64 / origin.mesh_batches_sent.max(1) as f64,
        owner.events_applied_for_peers,
        owner.mesh_batches_sent,
        origin.mesh_inflight_peak.events,
    );
}

fn bench_hop(c: &mut Criterion) {
    if let Err(error) = preflight(2) {
        fail("cannot run two executors", error);
    }
    let cpus = hop_cpus("mesh_hop");
    let mut group = c.benchmark_group("mesh_hop");
    group.throughput(Throughput::Elements(MESH_BATCH_EVENTS_MAX as u64));

    let events = support::events(&Workload::default(), EVENTS_DRAWN);
    let one_way = OneWay::start(cpus, support::frames(&events, MESH_BATCH_EVENTS_MAX));
    group.bench_function("one_way", |b| b.iter_custom(|batches| one_way.run(batches)));
    one_way.stop();

    let round_trip = RoundTrip::start(cpus);
    group.bench_function("round_trip", |b| {
        b.iter_custom(|frames| round_trip.run(frames))
    });
    round_trip.stop();
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion(30, Duration::from_secs(2), Duration::from_secs(6));
    targets = bench_hop
}
criterion_main!(benches);
