//! What both benchmarks start from: the load generator's events (`trove bench`'s default
//! workload and mix), framed the way a client frames them, and their records checked the way
//! a connection checks them before a shard touches them.
//!
//! Everything here is set-up, done once before any measurement; a failure is a broken
//! benchmark, not bad input, so it panics with what went wrong.

#[allow(dead_code)] // only the benches on pinned executors measure CPU time
pub mod cpu;
#[allow(dead_code)] // only the benches that drive a real shard use a driver
pub mod driver;

use std::time::Duration;

use criterion::Criterion;
use rkyv::util::AlignedVec;
use trove::bench::workload::{EventMaker, HuntPicker, Workload};
use trove::core::codec::{
    Decoded, FrameBuilder, FrameKind, ValidatedArchive, ValidatedFrame, decode_frame,
};
use trove::core::message::{ArchivedEvent, Event};

/// `count` events of the workload's mix, as load-generator thread 0 makes them.
pub fn events(workload: &Workload, count: usize) -> Vec<Event> {
    let picker = HuntPicker::new(workload.hunts, workload.zipf);
    let mut maker = EventMaker::new(workload, picker, 0);
    (0..count as u64)
        .map(|seq| maker.next(seq, seq * 1_000).clone())
        .collect()
}

/// The events, `per_frame` to a frame (fewer where the next would not fit, as a hunt spec of
/// 64 waypoints and 64 treasures does not), each frame in its own 16-byte-aligned buffer (as
/// a frame sits in a connection's receive buffer).
pub fn frames<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    per_frame: usize,
) -> Vec<AlignedVec> {
    let mut frames = Vec::new();
    let mut builder = FrameBuilder::new();
    let mut in_frame = 0;
    let mut close = |builder: &mut FrameBuilder, in_frame: &mut usize| {
        builder.finish(1);
        let mut frame = AlignedVec::new();
        frame.extend_from_slice(builder.bytes());
        frames.push(frame);
        *builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        *in_frame = 0;
    };
    builder.begin(FrameKind::Events);
    for event in events {
        if in_frame == per_frame {
            close(&mut builder, &mut in_frame);
        }
        if builder.push(event).is_err() {
            assert!(in_frame > 0, "a workload event fits an empty frame");
            close(&mut builder, &mut in_frame);
            builder
                .push(event)
                .expect("a workload event fits an empty frame");
        }
        in_frame += 1;
    }
    if in_frame > 0 {
        close(&mut builder, &mut in_frame);
    }
    frames
}

/// The records of one whole events frame, validated as a connection validates them: each is
/// read in place (`ValidatedArchive::get`) or moved by its bytes.
#[allow(dead_code)] // the frame_path bench, which drives a whole core, does not use it
pub fn validated_records(frame: &[u8]) -> Vec<ValidatedArchive<'_, ArchivedEvent>> {
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
        panic!("a bench frame is one whole, valid frame");
    };
    ValidatedFrame::<ArchivedEvent>::validate(header.kind, body)
        .expect("a bench frame's events validate")
        .iter()
        .collect()
}

/// Criterion as these benches run it. The machines here are small and shared by other work:
/// fewer, longer samples than criterion's default, and flags on the command line still win.
#[allow(dead_code)] // the frame_path bench runs without criterion
pub fn criterion(samples: usize, warm_up: Duration, measurement: Duration) -> Criterion {
    Criterion::default()
        .sample_size(samples)
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .configure_from_args()
}
