//! The whole frame path of the shard protocol, sans-IO and deterministic, for instruction
//! counts: frames handed to `ShardCore::handle_frame`, forwarded events carried between two
//! cores by `poll_mesh` and `handle_mesh`, and the replies taken with `poll_replies` and
//! reported written with `handle_written`, as the glommio shell drives a core. No clock, no
//! threads, no criterion: the same work on every run, so `valgrind --tool=callgrind` counts
//! the same instructions whatever else the machine runs (wall-clock time on a shared machine
//! says little, and this bench prints none).
//!
//! Two modes, each on `trove bench`'s default workload (its hunts created and players joined
//! first, through the same path, outside the measured function), 64 events a frame:
//! - `local`: a one-shard node; every event is applied where it arrives.
//! - `mesh`: a two-shard node whose client sends every frame to shard 0 (not shard-aware), so
//!   about half of the events are forwarded to shard 1 and their replies come back.
//!
//! Run: `cargo bench --bench frame_path [-- local|mesh]`, or, for instructions per event,
//! `valgrind --tool=callgrind --toggle-collect='frame_path::measured*' <the bench binary>
//! local` and divide the collected `Ir` by the events it prints.

mod support;

use std::hint::black_box;

use rkyv::util::AlignedVec;
use trove::bench::workload::Workload;
use trove::constants::PARTITIONS_DEFAULT;
use trove::core::codec::{Decoded, FrameBuilder, decode_frame};
use trove::core::ids::{ConnectionId, ShardId};
use trove::core::partition::Placement;
use trove::core::shard::{FrameProgress, MeshOutput, ShardCore};

/// Events per frame: the client's default.
const FRAME_EVENTS: usize = 64;
/// Events in the measured stream.
const MEASURED_EVENTS: usize = 64 * 1024;
/// Nanoseconds the driver's clock advances per frame (the cores only compare times).
const FRAME_NS: u64 = 10_000;

/// A node's shards, one connection on shard 0, and the driver's clock.
struct Node {
    cores: Vec<ShardCore>,
    connection: ConnectionId,
    out: FrameBuilder,
    now_ns: u64,
}

impl Node {
    fn new(shards: usize) -> Node {
        let placement = Placement::round_robin(PARTITIONS_DEFAULT, shards).expect("a valid map");
        let mut cores: Vec<ShardCore> = (0..shards)
            .map(|shard| ShardCore::new(ShardId(shard as u16), placement.clone()))
            .collect();
        let connection = cores[0].handle_connect(0).expect("room for a connection");
        Node {
            cores,
            connection,
            out: FrameBuilder::new(),
            now_ns: 0,
        }
    }

    /// One frame through shard 0, as a connection's reader, the mesh tasks and the
    /// connection's writer handle it. Returns the reply bytes written.
    fn frame(&mut self, frame: &[u8]) -> usize {
        self.now_ns += FRAME_NS;
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
            panic!("a bench frame is one whole, valid frame");
        };
        let progress = self.cores[0]
            .handle_frame(self.now_ns, self.connection, &header, body)
            .expect("a bench frame is valid");
        assert_eq!(progress, FrameProgress::Done, "the budgets hold a frame");
        self.cores[0].record_frame_dispatched(self.now_ns);
        self.carry_mesh();
        let core = &mut self.cores[0];
        if !core.poll_replies(self.connection, &mut self.out) {
            return 0;
        }
        let written = self.out.len();
        core.handle_written(self.now_ns, self.connection, written);
        self.out.clear(usize::MAX);
        written
    }

    /// Hands every batch a core has for a peer to that peer, until none is left.
    fn carry_mesh(&mut self) {
        loop {
            let mut carried = false;
            for from in 0..self.cores.len() {
                while let Some(to) = self.cores[from].poll_mesh_ready() {
                    while let Some(MeshOutput::Batch(batch)) = self.cores[from].poll_mesh(to) {
                        let from_id = ShardId(from as u16);
                        self.cores[to.index()].handle_mesh(self.now_ns, from_id, batch);
                        carried = true;
                    }
                }
            }
            if !carried {
                return;
            }
        }
    }
}

/// The measured part: every frame through the node. Kept out of line so that callgrind can
/// collect it alone.
#[inline(never)]
fn measured(node: &mut Node, frames: &[AlignedVec]) -> usize {
    frames
        .iter()
        .map(|frame| node.frame(black_box(frame)))
        .sum()
}

fn run(mode: &str) {
    let shards = match mode {
        "local" => 1,
        "mesh" => 2,
        other => {
            eprintln!("frame_path: unknown mode '{other}': say local or mesh");
            std::process::exit(2);
        }
    };
    let workload = Workload::default();
    let mut node = Node::new(shards);
    let setup: Vec<_> = workload.setup_events().collect();
    for frame in support::frames(&setup, FRAME_EVENTS) {
        node.frame(&frame);
    }
    let events = support::events(&workload, MEASURED_EVENTS);
    let frames = support::frames(&events, FRAME_EVENTS);
    let written = measured(&mut node, &frames);
    let stats = node
        .cores
        .iter()
        .map(ShardCore::stats)
        .fold((0, 0), |sum, stats| {
            (
                sum.0 + stats.events_applied + stats.events_applied_for_peers,
                sum.1 + stats.events_forwarded,
            )
        });
    println!(
        "frame_path {mode}: {} events measured ({} frames of {FRAME_EVENTS}), {} forwarded in all, {written} reply bytes written; {} applied with set-up",
        events.len(),
        frames.len(),
        stats.1,
        stats.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a mode may follow.
    let modes: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    if modes.is_empty() {
        run("local");
        run("mesh");
    }
    for mode in &modes {
        run(mode);
    }
}
