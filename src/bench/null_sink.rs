//! The generator alone: events made, stamped and encoded into frames that go nowhere. Its rate
//! is the ceiling of what the load generator can offer, to compare with what the engine
//! reaches (the generator must never be the bottleneck).

use std::time::{Duration, Instant};

use crate::bench::workload::{EventMaker, HuntPicker, Workload};
use crate::core::codec::{FrameBuilder, FrameKind};

/// Events per second that `threads` generator threads make and encode, in total.
pub fn rate(
    workload: &Workload,
    threads: usize,
    events_per_frame: usize,
    duration: Duration,
    client_cpus: &[usize],
) -> f64 {
    let picker = HuntPicker::new(workload.hunts, workload.zipf);
    let start = Instant::now();
    let made: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let maker = EventMaker::new(workload, picker.clone(), thread as u32);
                let cpu =
                    (!client_cpus.is_empty()).then(|| client_cpus[thread % client_cpus.len()]);
                scope.spawn(move || {
                    if let Some(cpu) = cpu {
                        crate::host::affinity::pin_current_thread(cpu);
                    }
                    make_until(maker, events_per_frame, start + duration)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a null-sink thread panicked"))
            .sum()
    });
    made as f64 / start.elapsed().as_secs_f64()
}

fn make_until(mut maker: EventMaker, events_per_frame: usize, deadline: Instant) -> u64 {
    let mut frames = FrameBuilder::new();
    let mut made = 0u64;
    while Instant::now() < deadline {
        // One clock read per batch, as the generator reads it once per loop pass.
        let ts = Instant::now().elapsed().as_nanos() as u64;
        for _ in 0..events_per_frame {
            if !frames.is_open() {
                frames.begin(FrameKind::Events);
            }
            made += 1;
            let event = maker.next(made, ts);
            if frames.push(event).is_err() {
                frames.finish(0);
                frames.clear(usize::MAX);
                frames.begin(FrameKind::Events);
                frames.push(event).expect("an event fits an empty frame");
            }
        }
        frames.finish(0);
        std::hint::black_box(frames.bytes());
        frames.clear(usize::MAX);
    }
    made
}
