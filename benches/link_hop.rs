//! What one link between two nodes carries, as the runtime runs it, in events per second
//! (issue 14's goal: at least 2 M events/s between two nodes on loopback).
//!
//! Two cluster nodes of one shard each, in this process: `spawn_shards` starts each node's
//! shard on its own glommio executor, node A's pinned to the first CPU of the affinity mask
//! and node B's to the second, and each serves its own port on 127.0.0.1
//! (`net::listener::serve_listeners`, which also gives the shard the network layer's link
//! connector). This is what `node::Node::start` does for a node of one shard, without the
//! shared port, metrics or store, and with one more task on node A: the driver. Their
//! placement and lease come as a node's control thread hands them over
//! (`runtime::control_feed`: a `FeedSender` per shard, a feed task on it), fixed and with no
//! etcd: even partitions on node A, odd ones on node B, the nodes' addresses listed
//! (`Placement::with_nodes`), each node registered before the partitions' epoch and its lease
//! valid for the whole bench.
//!
//! - `link`: a driver on node A hands frames of `MESH_BATCH_EVENTS_MAX` events to its shard
//!   the way a connection's reader does (`Shard::handle_frame`; see `support::driver`), every
//!   event owned by node B, as `mesh_hop`'s round trip does across cores. Node A's core admits
//!   each and forwards it over the real link (`net::link`: a TCP connection to node B's port,
//!   opened on the first event with the `LinkHello` handshake; `LinkEvents` batches bounded
//!   by node B's per-source credit); node B's core applies it (the state machine included)
//!   and its reply returns in a `LinkReplies` batch, is queued for the driver's connection,
//!   and is "written" there. Timed from the first frame handed in to the last reply written.
//! - `loopback_echo`, the same run's reference: the same traffic with no engine around it.
//!   Two executors pinned to the same CPUs, one plain TCP connection on 127.0.0.1 between
//!   them: one side writes `LinkEvents` frames built from the same events as the link builds
//!   them (`LINK_BATCH_EVENTS_MAX` archives and their token record), keeping
//!   `ECHO_FRAMES_INFLIGHT` of them in flight; the other reads each whole frame and answers it
//!   with a `LinkReplies` frame of as many small replies and their tokens. Timed from the first
//!   frame written to the last answer read. The link's figure reads as a fraction of this.
//!
//! One iteration is a frame of `MESH_BATCH_EVENTS_MAX` (= `LINK_BATCH_EVENTS_MAX`) events, and
//! throughput is in events. As in `mesh_hop`, each bench also reports the CPU time each
//! executor's thread spent per event (`support::cpu`), and so the most events per second the
//! busier side could carry whatever else the machine runs, and the link bench says what
//! crossed the link (batches, bytes, credit waits, the link round trip) and checks that every
//! event was applied by node B and none was answered by a failed or refused link.
//!
//! Run: `cargo bench --bench link_hop`. Criterion writes each bench's median to
//! `target/criterion/link_hop/NAME/new/estimates.json`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::ExecutorJoinHandle;
use glommio::net::{TcpListener, TcpStream};
use rkyv::util::AlignedVec;
use socket2::Socket;
use trove::bench::workload::Workload;
use trove::constants::{
    FRAME_HEADER_BYTES, LINK_BATCH_EVENTS_MAX, MESH_BATCH_EVENTS_MAX, PARTITIONS_DEFAULT,
};
use trove::core::codec::{FrameBuilder, FrameKind, ReceiveBuffer, decode_header};
use trove::core::ids::{Epoch, NodeId, ShardId};
use trove::core::message::{Event, LinkTokens, Outcome, Reply};
use trove::core::partition::{NodeAddress, Owner, OwnerState, Placement};
use trove::core::shard::{OutcomeIndex, ShardStats};
use trove::host::preflight::preflight;
use trove::net::listener::{listen, local_addr, serve_listeners};
use trove::runtime::config::RuntimeConfig;
use trove::runtime::control_feed::{FeedReceiver, FeedSender, ShardUpdate, feed, spawn_feed_task};
use trove::runtime::executors::{Shards, spawn_shards};
use trove::runtime::shard::Shard;

use support::cpu::{CpuMeter, CpuMeterTask, HopCpu, executor, hop_cpus};
use support::driver::{DriverPayload, drive};

/// Events drawn from the workload for the measured traffic.
const EVENTS_DRAWN: usize = 16_384;
/// The cluster both nodes are in (their links' handshake checks it).
const CLUSTER: &str = "link-hop";
/// The node whose driver sends, and the node that owns every event it sends.
const NODE_A: NodeId = NodeId(1);
const NODE_B: NodeId = NodeId(2);
/// The revision both nodes registered at, and the epoch of the placement (and of every
/// partition in it) they are then given: later, so that both serve what they own.
const REGISTERED: Epoch = Epoch(2);
const PLACED: Epoch = Epoch(3);
/// How long a node may take to install the placement before the bench gives up.
const PLACED_WAIT: Duration = Duration::from_secs(10);
/// How long the feeds say the nodes' leases stay valid: longer than any run of the bench.
const LEASE: Duration = Duration::from_secs(24 * 3600);
/// How long one measured run (one criterion sample's frames) may take before the bench
/// gives up saying so, rather than hang: far longer than any sample takes (seconds at most).
const RUN_WAIT: Duration = Duration::from_secs(120);
/// `LinkEvents` frames the reference keeps in flight: enough that the socket, not the
/// window, limits it.
const ECHO_FRAMES_INFLIGHT: usize = 4;

/// Ends the bench with a sentence when this host cannot run it, or it measured nothing real.
fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("link_hop: {what}: {error}");
    std::process::exit(1);
}

/// Even partitions on node A, odd ones on node B, one shard each, at epoch [`PLACED`], with
/// where each node's shard listens.
fn placement(partitions: u32, ports: [u16; 2]) -> Placement {
    let owners = (0..partitions)
        .map(|partition| Owner {
            node: if partition % 2 == 0 { NODE_A } else { NODE_B },
            shard: ShardId(0),
            part_epoch: PLACED,
            state: OwnerState::Serving,
        })
        .collect();
    let addresses = [NODE_A, NODE_B]
        .into_iter()
        .zip(ports)
        .map(|(node, port)| NodeAddress {
            node,
            host: "127.0.0.1".into(),
            shard_ports: vec![port],
        });
    Placement::from_owners(PLACED, owners)
        .and_then(|placement| placement.with_nodes(addresses))
        .unwrap_or_else(|error| fail("cannot build the placement", error))
}

// ---- link: two nodes' shards and the link between them ------------------------------------

/// What each node's shard gets on its executor.
struct NodePayload {
    listener: Socket,
    feed: FeedReceiver,
    meter: CpuMeterTask,
    /// Told once the shard has installed the placement, or why it did not.
    placed: flume::Sender<Result<(), String>>,
    /// Node A's driver; none on node B.
    driver: Option<DriverPayload>,
}

/// Runs on a node's shard, as `node::Node::start`'s `serve_shard` does for a cluster node
/// (its feed, its listener and link connector), plus the bench's tasks.
fn serve_node(shard: Rc<Shard>, payload: NodePayload) {
    payload.meter.spawn();
    spawn_feed_task(shard.clone(), payload.feed);
    serve_listeners(shard.clone(), [payload.listener], None, None, None);
    glommio::spawn_local(report_placed(shard.clone(), payload.placed)).detach();
    if let Some(driver) = payload.driver {
        glommio::spawn_local(drive(shard, driver)).detach();
    }
}

/// Says when the shard has installed the placement (and so the lease, in the same step of
/// its feed task), within [`PLACED_WAIT`].
async fn report_placed(shard: Rc<Shard>, placed: flume::Sender<Result<(), String>>) {
    let deadline = Instant::now() + PLACED_WAIT;
    while shard.epoch() < PLACED.get() {
        if Instant::now() > deadline {
            let _ = placed.send(Err(format!(
                "node shard still at placement epoch {} after {} s",
                shard.epoch(),
                PLACED_WAIT.as_secs()
            )));
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let _ = placed.send(Ok(()));
}

/// One node of one shard, started and fed the placement, serving once this returns.
struct RunningNode {
    shards: Shards,
    /// Kept until the node stops: a feed that closes fences its shard.
    feed: FeedSender,
}

/// A node's listener, bound before its shard starts (as a node binds its sockets first).
fn bind() -> (Socket, u16) {
    let listener = listen(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0), false)
        .unwrap_or_else(|error| fail("cannot listen on 127.0.0.1", error));
    let port = local_addr(&listener).port();
    (listener, port)
}

/// Starts `node`'s one shard on `cpu`, hands it `update` through its feed as the control
/// thread would, and waits until it serves it.
fn start_node(
    node: NodeId,
    cpu: usize,
    (listener, port): (Socket, u16),
    update: &ShardUpdate,
    meter: CpuMeterTask,
    driver: Option<DriverPayload>,
) -> RunningNode {
    let mut config = RuntimeConfig::on_cpus(vec![cpu]);
    config.cluster_node = Some(node);
    config.cluster_name = Some(CLUSTER.into());
    config.shard_ports = vec![port];
    // A node starts with the single-node map until its control thread sends the placement.
    let map = Placement::round_robin(config.partitions, 1)
        .unwrap_or_else(|error| fail("cannot build the starting map", error));
    let (sender, receiver) =
        feed().unwrap_or_else(|error| fail("cannot create a shard's feed", error));
    let (placed_tx, placed) = flume::bounded(1);
    let payload = NodePayload {
        listener,
        feed: receiver,
        meter,
        placed: placed_tx,
        driver,
    };
    let shards = spawn_shards(&config, &map, vec![payload], serve_node)
        .unwrap_or_else(|error| fail("cannot start a node's shard", error));
    sender
        .send(update.clone())
        .unwrap_or_else(|error| fail("cannot feed a node's shard", error));
    match placed.recv_timeout(PLACED_WAIT + Duration::from_secs(1)) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => fail(&format!("node {} did not take its placement", node.0), why),
        Err(error) => fail(
            &format!("node {} did not take its placement", node.0),
            error,
        ),
    }
    RunningNode {
        shards,
        feed: sender,
    }
}

/// Node B's events among `events`: the ones its partitions own.
fn owned_by_b<'a>(map: &Placement, events: impl IntoIterator<Item = &'a Event>) -> Vec<&'a Event> {
    events
        .into_iter()
        .filter(|event| map.owner(map.partitioner().partition_of(event.hunt)).node == NODE_B)
        .collect()
}

/// Two nodes with a driver on node A, set up and waiting for commands.
struct Link {
    /// Node A, then node B.
    nodes: [RunningNode; 2],
    commands: flume::Sender<u64>,
    results: flume::Receiver<Duration>,
    cpu: HopCpu,
}

impl Link {
    fn start(cpus: [usize; 2], events: &[Event]) -> Link {
        let sockets = [bind(), bind()];
        let map = Arc::new(placement(PARTITIONS_DEFAULT, [sockets[0].1, sockets[1].1]));
        let update = ShardUpdate {
            placement: map.clone(),
            registered: Some(REGISTERED),
            lease_valid_until: Instant::now() + LEASE,
        };
        let workload = Workload::default();
        let setup: Vec<Event> = workload.setup_events().collect();
        let mut measured = owned_by_b(&map, events);
        // Whole frames only: every iteration is exactly one frame's worth of events.
        measured.truncate(measured.len() / MESH_BATCH_EVENTS_MAX * MESH_BATCH_EVENTS_MAX);
        let (commands, commands_rx) = flume::unbounded();
        let (results_tx, results) = flume::unbounded();
        let driver = DriverPayload {
            setup: support::frames(owned_by_b(&map, &setup), MESH_BATCH_EVENTS_MAX),
            measured: support::frames(measured, MESH_BATCH_EVENTS_MAX),
            commands: commands_rx,
            results: results_tx,
        };
        let (a_meter, a_meter_task) = CpuMeter::new();
        let (b_meter, b_meter_task) = CpuMeter::new();
        let [a_sockets, b_sockets] = sockets;
        // Node B first: node A's link connects to it on its first event.
        let b = start_node(NODE_B, cpus[1], b_sockets, &update, b_meter_task, None);
        let a = start_node(
            NODE_A,
            cpus[0],
            a_sockets,
            &update,
            a_meter_task,
            Some(driver),
        );
        commands
            .send(0)
            .expect("the driver waits for its first command");
        results.recv().expect("the driver sets the hunts up");
        Link {
            nodes: [a, b],
            commands,
            results,
            cpu: HopCpu::start("link_hop", [("node A", a_meter), ("node B", b_meter)]),
        }
    }

    /// Sends `frames` frames of events across and waits for every reply; the time it took.
    fn run(&self, frames: u64) -> Duration {
        self.commands.send(frames).expect("driver alive");
        let took = wait_for_run(&self.results, "link");
        self.cpu.add_events(frames * MESH_BATCH_EVENTS_MAX as u64);
        took
    }

    /// Stops node A (its link closes once nothing is in flight), then node B, and says what
    /// crossed the link, if the bench ran.
    fn stop(self) {
        let measured = self.cpu.events() > 0;
        self.cpu.report("link");
        drop(self.commands);
        let [a, b] = self.nodes;
        let a_stats = a.shards.stop().remove(0);
        let b_stats = b.shards.stop().remove(0);
        drop((a.feed, b.feed));
        if measured {
            report_link(&a_stats, &b_stats);
        }
    }
}

/// The time a run took, as its driver reports it, within [`RUN_WAIT`]; ends the bench saying
/// which run did not finish otherwise.
fn wait_for_run(results: &flume::Receiver<Duration>, bench: &str) -> Duration {
    results.recv_timeout(RUN_WAIT).unwrap_or_else(|error| {
        fail(
            &format!(
                "{bench}: a run did not finish within {} s",
                RUN_WAIT.as_secs()
            ),
            error,
        )
    })
}

/// Events answered without being applied by their owner: by a failed or refused link, a
/// fenced node, a placement not installed, a refusing log, a stopping shard.
fn unapplied(stats: &ShardStats) -> u64 {
    [
        OutcomeIndex::Unavailable,
        OutcomeIndex::LogFull,
        OutcomeIndex::DiskFull,
        OutcomeIndex::DiskFailed,
        OutcomeIndex::Moved,
        OutcomeIndex::ShuttingDown,
        OutcomeIndex::OutcomeUnknown,
        OutcomeIndex::Busy,
    ]
    .into_iter()
    .map(|outcome| stats.events.outcome_total(outcome))
    .sum()
}

/// What crossed the link, and a check that the figure is the link's: every event node A
/// sent was received and applied by node B, and none was answered any other way.
fn report_link(a: &ShardStats, b: &ShardStats) {
    let (sent, received) = (a.links, b.links);
    let per_batch = |events: u64, batches: u64| events as f64 / batches.max(1) as f64;
    let round_trip_us =
        |quantile: f64| a.stages.link_round_trip_ns.value_at_quantile(quantile) as f64 / 1e3;
    eprintln!(
        "link_hop/link: {} events crossed in {} batches ({:.1} a batch, {:.1} bytes an \
         event), replies in {} batches ({:.1} a batch); node A waited for link credit {} \
         times; link round trip mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
        sent.events_sent,
        sent.batches_sent,
        per_batch(sent.events_sent, sent.batches_sent),
        sent.bytes_sent as f64 / sent.events_sent.max(1) as f64,
        received.batches_sent,
        per_batch(received.events_received, received.batches_sent),
        a.link_credit_waits,
        a.stages.link_round_trip_ns.mean() / 1e3,
        round_trip_us(0.5),
        round_trip_us(0.99),
    );
    let problems = [
        (
            "events sent by node A but not received by node B",
            sent.events_sent.abs_diff(received.events_received),
        ),
        ("links failed", sent.links_failed),
        ("links refused", received.links_refused),
        (
            "link protocol errors",
            sent.protocol_errors + received.protocol_errors,
        ),
        (
            "events not applied by their owner",
            unapplied(a) + unapplied(b),
        ),
        (
            "events applied on node A (all belong to node B)",
            a.events_applied,
        ),
    ];
    for (what, count) in problems {
        if count > 0 {
            fail(
                "the link did not carry what it measured",
                format!("{count} {what}"),
            );
        }
    }
}

// ---- loopback_echo: the same bytes through a bare socket ----------------------------------

/// `LinkEvents` frames of the events, `LINK_BATCH_EVENTS_MAX` to a frame as a link batches
/// them (each archive unchanged, then the token record), and for each the `LinkReplies`
/// frame that answers it: one small reply per event (`Accepted`) and the tokens.
fn link_frames(events: &[&Event]) -> (Vec<AlignedVec>, Vec<AlignedVec>) {
    let mut sent = Vec::new();
    let mut answers = Vec::new();
    let mut token = 1u64;
    for batch in events.chunks_exact(LINK_BATCH_EVENTS_MAX) {
        let tokens: Vec<u64> = (token..token + batch.len() as u64).collect();
        token += batch.len() as u64;
        let mut frame = FrameBuilder::new();
        frame.begin(FrameKind::LinkEvents);
        for event in batch {
            frame
                .push(*event)
                .expect("a workload event fits a link frame");
        }
        let mut answer = FrameBuilder::new();
        answer.begin(FrameKind::LinkReplies);
        for event in batch {
            let reply = Reply {
                client_seq: event.client_seq,
                client_ts: event.client_ts,
                outcome: Outcome::Accepted { score: 0 },
            };
            answer.push(&reply).expect("a reply fits");
        }
        for builder in [&mut frame, &mut answer] {
            builder
                .push(&LinkTokens {
                    tokens: tokens.clone(),
                })
                .expect("a batch of the workload's events leaves room for its tokens");
            builder.finish(PLACED.get());
        }
        sent.push(aligned(frame.bytes()));
        answers.push(aligned(answer.bytes()));
    }
    (sent, answers)
}

fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut frame = AlignedVec::new();
    frame.extend_from_slice(bytes);
    frame
}

/// The length of the whole frame at the front of `input`, if one is there. Only the header
/// is decoded: the reference does no more work per frame than framing needs.
fn whole_frame(input: &ReceiveBuffer) -> Result<Option<usize>, Option<usize>> {
    match decode_header(input.pending()) {
        Ok(Some(header)) => {
            let len = FRAME_HEADER_BYTES + header.body_len as usize;
            if input.pending().len() >= len {
                Ok(Some(len))
            } else {
                Err(Some(len))
            }
        }
        Ok(None) => Err(None),
        Err(error) => fail("loopback echo: no frame on the connection", error),
    }
}

/// Reads until `input` holds a whole frame at its front; its length, or `None` when the
/// peer closed the connection.
async fn read_frame(stream: &mut TcpStream, input: &mut ReceiveBuffer) -> Option<usize> {
    loop {
        let frame_len = match whole_frame(input) {
            Ok(whole) => return whole,
            Err(frame_len) => frame_len,
        };
        match stream.read(input.spare(frame_len)).await {
            Ok(0) => return None,
            Ok(read) => input.filled(read),
            Err(error) => fail("loopback echo: read", error),
        }
    }
}

/// The echo's side: answers each `LinkEvents` frame with its `LinkReplies` frame (the
/// answers to every frame one read brought, in one write), until the sender closes.
async fn echo(listener: TcpListener, answers: Vec<AlignedVec>, meter: CpuMeterTask) {
    meter.spawn();
    let mut stream = listener
        .accept()
        .await
        .unwrap_or_else(|error| fail("loopback echo: accept", error));
    let _ = stream.set_nodelay(true);
    let mut input = ReceiveBuffer::new();
    let mut out = Vec::new();
    let mut answers = answers.iter().cycle();
    while let Some(mut len) = read_frame(&mut stream, &mut input).await {
        loop {
            input.consume(len);
            out.extend_from_slice(answers.next().expect("cycles"));
            match whole_frame(&input) {
                Ok(Some(next)) => len = next,
                _ => break,
            }
        }
        if let Err(error) = stream.write_all(&out).await {
            fail("loopback echo: write", error);
        }
        out.clear();
    }
}

/// The sender's side: on each command `n`, writes `n` frames, at most
/// [`ECHO_FRAMES_INFLIGHT`] unanswered at once, and reads their answers; reports the time.
async fn send_frames(
    address: SocketAddr,
    frames: Vec<AlignedVec>,
    commands: flume::Receiver<u64>,
    results: flume::Sender<Duration>,
    meter: CpuMeterTask,
) {
    meter.spawn();
    let mut stream = TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| fail("loopback echo: connect", error));
    let _ = stream.set_nodelay(true);
    let mut input = ReceiveBuffer::new();
    let mut frames = frames.iter().cycle();
    while let Ok(count) = commands.recv_async().await {
        let started = Instant::now();
        let (mut written, mut answered) = (0u64, 0u64);
        while answered < count {
            while written < count && written - answered < ECHO_FRAMES_INFLIGHT as u64 {
                let frame = frames.next().expect("cycles");
                if let Err(error) = stream.write_all(frame).await {
                    fail("loopback echo: write", error);
                }
                written += 1;
            }
            let Some(len) = read_frame(&mut stream, &mut input).await else {
                fail("loopback echo", "the echo closed the connection");
            };
            input.consume(len);
            answered += 1;
        }
        if results.send(started.elapsed()).is_err() {
            break;
        }
    }
}

/// The reference: two pinned executors and one TCP connection on 127.0.0.1 between them.
struct LoopbackEcho {
    commands: flume::Sender<u64>,
    results: flume::Receiver<Duration>,
    executors: Vec<ExecutorJoinHandle<()>>,
    cpu: HopCpu,
}

impl LoopbackEcho {
    fn start(cpus: [usize; 2], frames: Vec<AlignedVec>, answers: Vec<AlignedVec>) -> LoopbackEcho {
        let (address_tx, address) = flume::bounded(1);
        let (commands, commands_rx) = flume::unbounded();
        let (results_tx, results) = flume::unbounded();
        let (send_meter, send_meter_task) = CpuMeter::new();
        let (echo_meter, echo_meter_task) = CpuMeter::new();
        let echoing = executor(cpus[1], "link-hop-echo")
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .unwrap_or_else(|error| fail("loopback echo: listen", error));
                let _ = address_tx.send(listener.local_addr().expect("a bound listener"));
                echo(listener, answers, echo_meter_task).await;
            })
            .unwrap_or_else(|error| fail("cannot start the echo's executor", error));
        let address: SocketAddr = address.recv().expect("the echo listens");
        let sending = executor(cpus[0], "link-hop-send")
            .spawn(move || send_frames(address, frames, commands_rx, results_tx, send_meter_task))
            .unwrap_or_else(|error| fail("cannot start the sender's executor", error));
        LoopbackEcho {
            commands,
            results,
            executors: vec![sending, echoing],
            cpu: HopCpu::start("link_hop", [("sender", send_meter), ("echo", echo_meter)]),
        }
    }

    /// Sends `frames` frames and reads every answer; the time it took.
    fn run(&self, frames: u64) -> Duration {
        self.commands.send(frames).expect("sender alive");
        let took = wait_for_run(&self.results, "loopback_echo");
        self.cpu.add_events(frames * LINK_BATCH_EVENTS_MAX as u64);
        took
    }

    fn stop(self) {
        self.cpu.report("loopback_echo");
        drop(self.commands);
        for executor in self.executors {
            executor.join().expect("an echo executor panicked");
        }
    }
}

fn bench_link(c: &mut Criterion) {
    if let Err(error) = preflight(2) {
        fail("cannot run two executors", error);
    }
    let cpus = hop_cpus("link_hop");
    let events = support::events(&Workload::default(), EVENTS_DRAWN);
    let mut group = c.benchmark_group("link_hop");
    group.throughput(Throughput::Elements(MESH_BATCH_EVENTS_MAX as u64));

    let link = Link::start(cpus, &events);
    group.bench_function("link", |b| b.iter_custom(|frames| link.run(frames)));
    link.stop();

    // The reference carries the link's own traffic: node B's events (ownership does not
    // depend on the ports).
    let map = placement(PARTITIONS_DEFAULT, [0, 0]);
    let (frames, answers) = link_frames(&owned_by_b(&map, &events));
    let echo = LoopbackEcho::start(cpus, frames, answers);
    group.throughput(Throughput::Elements(LINK_BATCH_EVENTS_MAX as u64));
    group.bench_function("loopback_echo", |b| {
        b.iter_custom(|frames| echo.run(frames))
    });
    echo.stop();
    group.finish();
}

// A link batch is a mesh batch's size, so an iteration is the same events in both benches.
const _: () = assert!(MESH_BATCH_EVENTS_MAX == LINK_BATCH_EVENTS_MAX);

criterion_group! {
    name = benches;
    config = support::criterion(30, Duration::from_secs(2), Duration::from_secs(6));
    targets = bench_link
}
criterion_main!(benches);
