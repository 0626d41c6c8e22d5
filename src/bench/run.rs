//! One measured run: set the hunts up, start the generator threads, collect what they
//! measure (live, one interval a second), and add it all up.
//!
//! Runs on the coordinating thread; the generator threads it starts are pinned to the client
//! CPUs and report back through a channel of interval histograms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::generator::{
    self, Counts, IntervalReport, Latencies, Load, Protocol, Schedule, ThreadResult, new_histogram,
};
use crate::bench::workload::{EventMaker, HuntPicker, Workload};
use crate::client::tls::TlsClient;
use crate::client::{self, ClientConfig, Connection, Incoming, RecvError};
use crate::constants::{
    BENCH_DURATION_S_MAX, BENCH_SCHEDULE_S_MAX, BENCH_STALL_MS_MAX, BENCH_TS_INTENDED_NS_BITS,
};
use crate::core::auth::AuthSecret;

/// How to load the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadSpec {
    /// Open loop at this many events per second in total, with at most `inflight_max`
    /// unanswered events per connection.
    Open { rate_per_s: f64, inflight_max: u32 },
    /// Closed loop with this many events in flight per connection (to each node it reaches).
    Closed { window: u32 },
}

/// Everything one run needs to know.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub workload: Workload,
    pub load: LoadSpec,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Generator threads are pinned to these CPUs in turn; empty: not pinned.
    pub client_cpus: Vec<usize>,
}

/// What a run measured, added up over its threads and intervals.
pub struct Measurement {
    pub load: LoadSpec,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    pub counts: Counts,
    pub missing: u64,
    pub latencies: Latencies,
    pub lag_ns: Histogram<u64>,
    /// One entry a second of the measured phase (seconds with no replies are empty).
    pub intervals: Vec<Latencies>,
}

impl Measurement {
    /// Replies per second of the measured phase.
    pub fn achieved_rate(&self) -> f64 {
        self.counts.acknowledged as f64 / self.duration_s
    }

    /// Replies in each whole second of the measured phase (a reply sent in the measured
    /// phase and answered after it counts in no second).
    pub fn replies_per_second(&self) -> Vec<u64> {
        let whole_seconds = self.duration_s.floor() as usize;
        self.intervals
            .iter()
            .take(whole_seconds)
            .map(|second| second.uncorrected_ns.len())
            .collect()
    }
}

/// Called once a second with the interval just finished (merged over threads).
pub type OnInterval<'a> = &'a mut dyn FnMut(u32, &Latencies, u64);

impl RunPlan {
    pub fn check(&self) -> Result<(), String> {
        self.workload.check()?;
        if self.duration.is_zero() || self.duration.as_secs() > BENCH_DURATION_S_MAX {
            return Err(format!(
                "the duration must be more than 0 s and at most {BENCH_DURATION_S_MAX} s"
            ));
        }
        if (self.warmup + self.duration).as_secs_f64() > BENCH_SCHEDULE_S_MAX as f64 {
            return Err(format!(
                "warm-up and duration together must be at most {BENCH_SCHEDULE_S_MAX} s, so \
                 every intended send time fits its {BENCH_TS_INTENDED_NS_BITS}-bit field"
            ));
        }
        if self.connections == 0 {
            return Err("at least one connection is needed".into());
        }
        Ok(())
    }

    fn load_per_thread(&self) -> Load {
        match self.load {
            LoadSpec::Open {
                rate_per_s,
                inflight_max,
            } => Load::Open {
                rate_per_s: rate_per_s / self.connections as f64,
                inflight_max,
            },
            LoadSpec::Closed { window } => Load::Closed { window },
        }
    }
}

/// Creates the workload's hunts and players on a trove node, waiting for every reply. Gives up
/// with a message when the node takes no data or sends no reply for `BENCH_STALL_MS_MAX`.
pub fn set_up_hunts(
    addr: SocketAddr,
    workload: &Workload,
    auth: Option<Arc<AuthSecret>>,
    tls: Option<Arc<TlsClient>>,
) -> Result<(), String> {
    let stall = Duration::from_millis(BENCH_STALL_MS_MAX);
    let mut config = ClientConfig::new(addr);
    config.events_per_frame = 256;
    config.auth = auth;
    config.tls = tls;
    config.stall_timeout = Some(stall);
    let (mut sender, mut receiver) = client::connect(&config).map_err(|error| error.to_string())?;
    let mut sent = 0u64;
    let events = workload.setup_events();
    let sending = std::thread::scope(|scope| {
        let replies = scope.spawn(move || -> Result<u64, String> {
            let mut replies = 0;
            loop {
                let incoming = match receiver.recv_timeout(stall) {
                    Ok(incoming) => incoming,
                    Err(RecvError::Ended) => break,
                    Err(RecvError::Timeout) => {
                        return Err(format!(
                            "no reply from the node for {} s after {replies} replies (is a shard stopped or not reading?)",
                            stall.as_secs()
                        ));
                    }
                };
                match incoming {
                    Incoming::Replies(frame) => replies += frame.replies().count() as u64,
                    Incoming::NodeError { message, .. } => return Err(message),
                    Incoming::Closed {
                        error: Some(error), ..
                    } => return Err(error),
                    Incoming::Closed { error: None, .. } => {}
                }
            }
            Ok(replies)
        });
        for (seq, mut event) in events.enumerate() {
            event.client_seq = seq as u64;
            sender.send(&event).map_err(|error| error.to_string())?;
            sent += 1;
        }
        sender.finish().map_err(|error| error.to_string())?;
        replies.join().expect("the setup reader does not panic")
    })?;
    if sending != sent {
        return Err(format!(
            "setting the hunts up: {sent} events sent, {sending} answered"
        ));
    }
    Ok(())
}

/// Runs the generator threads against `connect`'s streams and adds up what they measured.
pub fn measure<P, C>(
    plan: &RunPlan,
    mut connect: C,
    on_interval: OnInterval<'_>,
) -> Result<Measurement, String>
where
    P: Protocol + Send,
    C: FnMut(usize) -> Result<(P, Vec<Connection>), String>,
{
    plan.check()?;
    let picker = HuntPicker::new(plan.workload.hunts, plan.workload.zipf);
    let mut sessions = Vec::with_capacity(plan.connections);
    for connection in 0..plan.connections {
        sessions.push(connect(connection)?);
    }
    let warmup_ns = plan.warmup.as_nanos() as u64;
    let end_ns = warmup_ns + plan.duration.as_nanos() as u64;
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            elapsed.as_millis() as u64 + plan.warmup.as_millis() as u64
        });
    let start = Instant::now();
    let load = plan.load_per_thread();
    let (intervals_tx, intervals_rx) = flume::unbounded::<IntervalReport>();
    let (results, intervals) = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for (index, (protocol, streams)) in sessions.into_iter().enumerate() {
            let maker = EventMaker::new(&plan.workload, picker.clone(), index as u32);
            let offset_ns = match load {
                Load::Open { rate_per_s, .. } => {
                    (index as f64 * 1e9 / rate_per_s / plan.connections as f64) as u64
                }
                Load::Closed { .. } => 0,
            };
            let schedule = Schedule {
                start,
                warmup_end_ns: warmup_ns,
                end_ns,
                drain_ns: 2_000_000_000,
                offset_ns,
            };
            let cpu = (!plan.client_cpus.is_empty())
                .then(|| plan.client_cpus[index % plan.client_cpus.len()]);
            let intervals = intervals_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("trove-load-{index}"))
                    .spawn_scoped(scope, move || {
                        if let Some(cpu) = cpu {
                            crate::host::affinity::pin_current_thread(cpu);
                        }
                        generator::run(protocol, streams, maker, load, schedule, &intervals)
                    })
                    .expect("a generator thread starts"),
            );
        }
        drop(intervals_tx);
        let intervals = collect_intervals(&intervals_rx, on_interval);
        let results: Vec<ThreadResult> = threads
            .into_iter()
            .map(|thread| thread.join().expect("a generator thread panicked"))
            .collect();
        (results, intervals)
    });
    add_up(plan, started_unix_ms, results, intervals)
}

/// Merges interval reports as they arrive; returns them by second.
fn collect_intervals(
    reports: &flume::Receiver<IntervalReport>,
    on_interval: OnInterval<'_>,
) -> Vec<(Latencies, u64)> {
    let mut intervals: Vec<(Latencies, u64)> = Vec::new();
    let mut shown = 0u32;
    for report in reports.iter() {
        let second = report.second as usize;
        while intervals.len() <= second {
            intervals.push((Latencies::new(), 0));
        }
        intervals[second].0.add(&report.latencies);
        intervals[second].1 += report.replies;
        // A second is shown once a later one has begun: every thread has moved past it.
        while (shown as usize) + 1 < intervals.len() {
            let (latencies, replies) = &intervals[shown as usize];
            on_interval(shown, latencies, *replies);
            shown += 1;
        }
    }
    intervals
}

fn add_up(
    plan: &RunPlan,
    started_unix_ms: u64,
    results: Vec<ThreadResult>,
    intervals: Vec<(Latencies, u64)>,
) -> Result<Measurement, String> {
    let mut counts = Counts::default();
    let mut latencies = Latencies::new();
    let mut lag_ns = new_histogram();
    let mut missing = 0;
    for result in &results {
        if let Some(failure) = &result.failure {
            return Err(failure.clone());
        }
        counts.add(&result.counts);
        latencies.add(&result.latencies);
        lag_ns
            .add(&result.lag_ns)
            .expect("histograms of the same range");
        missing += result.missing;
    }
    let seconds = plan.duration.as_secs_f64();
    let intervals = intervals
        .into_iter()
        .map(|(latencies, _)| latencies)
        .collect();
    Ok(Measurement {
        load: plan.load,
        started_unix_ms,
        duration_s: seconds,
        counts,
        missing,
        latencies,
        lag_ns,
        intervals,
    })
}
