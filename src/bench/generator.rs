//! One load-generator thread: makes events on schedule, writes them, reads replies and
//! records latency, on non-blocking sockets with one `ppoll` per idle pass.
//!
//! Open loop (as wrk2 and Aeron's load tester do): event `i` of a thread is due at
//! `i / rate`; it is stamped with that *intended* send time, and latency is measured from it
//! (corrected for coordinated omission) and from the time it was actually made (uncorrected).
//! When the target pushes back, the thread falls behind schedule instead of waiting politely,
//! and the lag is recorded too. Closed loop keeps a fixed number of events in flight.
//!
//! Both timestamps travel in the event's opaque `client_ts` and come back in its reply, so a
//! thread keeps no per-event state. The protocol (trove frames, Redis commands) is behind
//! [`Protocol`]. Each thread owns its sockets, its event maker and its histograms; the only
//! thing it shares is a channel of per-second interval histograms to the coordinating thread.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::workload::EventMaker;
use crate::client::Connection;
use crate::constants::{
    BENCH_LATENCY_NS_MAX, BENCH_SEND_BACKLOG_BYTES_MAX, BENCH_TS_INTENDED_NS_BITS,
    BENCH_TS_LAG_US_BITS,
};
use crate::core::codec::ReceiveBuffer;
use crate::core::message::Event;

/// How a reply ended, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// Applied (accepted, claimed, already claimed, a leaderboard).
    Ok,
    /// Well formed but refused by the hunt's rules.
    Rejected,
    /// Refused for lack of credit (fail-fast mode).
    Busy,
    /// The target could not process it.
    Error,
}

/// What [`Protocol::parse`] consumed.
pub struct Parsed {
    pub consumed: usize,
    /// Length of the partial message at the front of what is left, once known.
    pub message_len: Option<usize>,
}

/// A wire protocol the generator can speak to a target.
pub trait Protocol {
    /// How many connections this protocol uses.
    fn links(&self) -> usize;
    /// How many nodes those connections reach.
    fn nodes(&self) -> usize {
        1
    }
    /// The connection an event goes out on.
    fn link_for(&self, event: &Event) -> usize;
    /// Encodes one event for `link`, stamped with `ts` (which the reply must give back).
    fn encode(&mut self, link: usize, event: &Event, ts: u64) -> Result<(), String>;
    /// Bytes encoded for `link` and not yet written, a batch still open included. Unlike
    /// [`Self::pending_output`] it closes nothing, so asking does not cut frames short.
    fn backlog_bytes(&self, link: usize) -> usize;
    /// Bytes ready to be written on `link` (closing any partial batch).
    fn pending_output(&mut self, link: usize) -> &[u8];
    /// `len` bytes of [`Self::pending_output`] were written.
    fn consumed_output(&mut self, link: usize, len: usize);
    /// Parses replies from the front of `input`, calling `on_reply(ts, class)` for each.
    fn parse(
        &mut self,
        link: usize,
        input: &[u8],
        on_reply: &mut dyn FnMut(u64, ReplyClass),
    ) -> Result<Parsed, String>;
}

/// Open or closed loop, for one thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Events at a constant rate, whatever the target does, as long as fewer than
    /// `inflight_max` are unanswered; past that the thread falls behind schedule, as a real
    /// client with a bounded number of outstanding requests would.
    Open { rate_per_s: f64, inflight_max: u32 },
    /// A fixed number of events in flight to each node the thread's links reach (one node
    /// for a single node, whatever its shards): a cluster-aware client keeps a window per
    /// owner, so each node sees the same depth of work at any cluster size.
    Closed { window: u32 },
}

/// When a thread sends and measures, in nanoseconds since the common start.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    /// Events due before this are warm-up: sent, answered, not recorded.
    pub warmup_end_ns: u64,
    /// No event is due at or after this.
    pub end_ns: u64,
    /// How long after `end_ns` replies are still awaited.
    pub drain_ns: u64,
    /// This thread's first event is due this far after the start, so threads interleave.
    pub offset_ns: u64,
}

/// Latency histograms of one interval (or of a whole run).
pub struct Latencies {
    pub corrected_ns: Histogram<u64>,
    pub uncorrected_ns: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies {
            corrected_ns: new_histogram(),
            uncorrected_ns: new_histogram(),
        }
    }

    fn record(&mut self, corrected: u64, uncorrected: u64) {
        self.corrected_ns.saturating_record(corrected.max(1));
        self.uncorrected_ns.saturating_record(uncorrected.max(1));
    }

    pub fn add(&mut self, other: &Latencies) {
        self.corrected_ns
            .add(&other.corrected_ns)
            .expect("histograms of the same range");
        self.uncorrected_ns
            .add(&other.uncorrected_ns)
            .expect("histograms of the same range");
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

/// A histogram of nanoseconds, 3 significant digits, up to `BENCH_LATENCY_NS_MAX`.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, BENCH_LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// One second of one thread's measurements, sent to the coordinating thread as it ends.
pub struct IntervalReport {
    /// Seconds since the end of the warm-up.
    pub second: u32,
    pub latencies: Latencies,
    pub replies: u64,
}

/// Counters of the measured phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub acknowledged: u64,
    pub ok: u64,
    pub rejected: u64,
    pub busy: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.acknowledged += other.acknowledged;
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.busy += other.busy;
        self.errors += other.errors;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
    }
}

/// What one thread measured.
pub struct ThreadResult {
    pub counts: Counts,
    pub latencies: Latencies,
    pub lag_ns: Histogram<u64>,
    /// Events sent in the measured phase whose replies never came.
    pub missing: u64,
    /// Why the thread stopped early, if it did.
    pub failure: Option<String>,
}

/// Largest lag, in microseconds, an event's timestamp holds; later ones are clamped to it.
const TS_LAG_US_MAX: u64 = (1 << BENCH_TS_LAG_US_BITS) - 1;

/// The timestamp an event carries: intended send time (ns since start, in the high
/// [`BENCH_TS_INTENDED_NS_BITS`]) and how late it was actually made (µs, in the low
/// [`BENCH_TS_LAG_US_BITS`], clamped). [`RunPlan::check`](crate::bench::run::RunPlan::check)
/// refuses a schedule whose intended times would not fit, so nothing is cut off here.
fn pack_ts(intended_ns: u64, lag_ns: u64) -> u64 {
    assert!(
        intended_ns < 1 << BENCH_TS_INTENDED_NS_BITS,
        "the run plan bounds warm-up plus duration by BENCH_SCHEDULE_S_MAX"
    );
    (intended_ns << BENCH_TS_LAG_US_BITS) | (lag_ns / 1_000).min(TS_LAG_US_MAX)
}

fn unpack_ts(ts: u64) -> (u64, u64) {
    (ts >> BENCH_TS_LAG_US_BITS, (ts & TS_LAG_US_MAX) * 1_000)
}

/// Nothing to do now, try again later: the socket is not ready, or a signal interrupted the
/// call.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// One connection's socket and receive state.
struct LinkIo {
    stream: Connection,
    input: ReceiveBuffer,
    message_len: Option<usize>,
    wants_write: bool,
}

/// What a thread has measured so far, apart from the sockets that feed it.
struct Recorder<'a> {
    schedule: Schedule,
    inflight: u64,
    measured_inflight: u64,
    result: ThreadResult,
    interval: Option<IntervalReport>,
    intervals: &'a flume::Sender<IntervalReport>,
}

/// The state of a running generator thread.
struct Generator<'a, P: Protocol> {
    protocol: P,
    links: Vec<LinkIo>,
    maker: EventMaker,
    schedule: Schedule,
    load: Load,
    seq: u64,
    next_due_ns: u64,
    recorder: Recorder<'a>,
}

/// Runs one generator thread to the end of its schedule and returns what it measured. The
/// thread is one client session (`Event::client_session`, random per run so that a second run
/// against the same node is not taken for retries of the first): its seqs grow from 1.
pub fn run<P: Protocol>(
    protocol: P,
    streams: Vec<Connection>,
    mut maker: EventMaker,
    load: Load,
    schedule: Schedule,
    intervals: &flume::Sender<IntervalReport>,
) -> ThreadResult {
    assert_eq!(
        protocol.links(),
        streams.len(),
        "one stream per protocol link"
    );
    let links = streams
        .into_iter()
        .map(|stream| {
            stream
                .set_nonblocking(true)
                .expect("a connected socket can be made non-blocking");
            LinkIo {
                stream,
                input: ReceiveBuffer::new(),
                message_len: None,
                wants_write: false,
            }
        })
        .collect();
    let recorder = Recorder {
        schedule,
        inflight: 0,
        measured_inflight: 0,
        result: ThreadResult {
            counts: Counts::default(),
            latencies: Latencies::new(),
            lag_ns: new_histogram(),
            missing: 0,
            failure: None,
        },
        interval: None,
        intervals,
    };
    maker.set_session(crate::client::new_session());
    let load = load_to_every_node(load, protocol.nodes());
    let mut generator = Generator {
        protocol,
        links,
        maker,
        schedule,
        load,
        seq: 0,
        next_due_ns: schedule.offset_ns,
        recorder,
    };
    set_fine_timer_slack();
    if let Err(failure) = generator.run() {
        generator.recorder.result.failure = Some(failure);
    }
    let mut recorder = generator.recorder;
    recorder.flush_interval();
    recorder.result.missing = recorder.measured_inflight;
    recorder.result
}

/// The thread's load over links that reach `nodes` nodes: a closed window is kept to each.
fn load_to_every_node(load: Load, nodes: usize) -> Load {
    match load {
        Load::Closed { window } => {
            let nodes = u32::try_from(nodes).unwrap_or(u32::MAX).max(1);
            Load::Closed {
                window: window.saturating_mul(nodes),
            }
        }
        open => open,
    }
}

/// Timed waits of this thread wake within a microsecond instead of the default 50 µs slack.
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64) };
}

impl<P: Protocol> Generator<'_, P> {
    fn now_ns(&self) -> u64 {
        self.schedule.start.elapsed().as_nanos() as u64
    }

    fn run(&mut self) -> Result<(), String> {
        loop {
            let now = self.now_ns();
            let sending = now < self.schedule.end_ns;
            if !sending
                && (self.recorder.inflight == 0
                    || now >= self.schedule.end_ns + self.schedule.drain_ns)
            {
                return Ok(());
            }
            let made = if sending {
                self.make_due_events(now)?
            } else {
                0
            };
            let wrote = self.write_all_links()?;
            let replies = self.read_all_links()?;
            if made == 0 && wrote == 0 && replies == 0 {
                self.wait(now)?;
            }
        }
    }

    fn backlog_full(&self) -> bool {
        (0..self.links.len())
            .any(|link| self.protocol.backlog_bytes(link) >= BENCH_SEND_BACKLOG_BYTES_MAX)
    }

    /// Makes every event that is due (open loop) or that the window allows (closed loop).
    fn make_due_events(&mut self, now: u64) -> Result<u64, String> {
        let mut made = 0;
        loop {
            let intended = match self.load {
                Load::Open {
                    rate_per_s,
                    inflight_max,
                } => {
                    let due = self.next_due_ns <= now && self.next_due_ns < self.schedule.end_ns;
                    if !due || self.recorder.inflight >= u64::from(inflight_max) {
                        break;
                    }
                    let due = self.next_due_ns;
                    self.next_due_ns =
                        self.schedule.offset_ns + ((self.seq + 1) as f64 * 1e9 / rate_per_s) as u64;
                    due
                }
                Load::Closed { window } => {
                    if self.recorder.inflight >= u64::from(window) {
                        break;
                    }
                    now
                }
            };
            self.make_event(intended, now)?;
            made += 1;
            // Check the backlog every so often: a target that stops reading makes this thread
            // fall behind schedule rather than buffer without bound.
            if made % 64 == 0 && self.backlog_full() {
                break;
            }
        }
        Ok(made)
    }

    fn make_event(&mut self, intended: u64, now: u64) -> Result<(), String> {
        let lag = now.saturating_sub(intended);
        let ts = pack_ts(intended, lag);
        self.seq += 1;
        let event = self.maker.next(self.seq, ts);
        let link = self.protocol.link_for(event);
        self.protocol.encode(link, event, ts)?;
        self.recorder.on_send(intended, lag);
        Ok(())
    }

    fn write_all_links(&mut self) -> Result<usize, String> {
        let mut wrote = 0;
        for (index, link) in self.links.iter_mut().enumerate() {
            let pending = self.protocol.pending_output(index);
            if pending.is_empty() {
                // TLS may hold records a full socket did not take; a plain socket holds none.
                link.wants_write = link.stream.has_unsent()
                    && match link.stream.flush() {
                        Ok(()) => false,
                        Err(error) if is_transient(&error) => true,
                        Err(error) => return Err(format!("cannot send to the target: {error}")),
                    };
                continue;
            }
            match link.stream.write(pending) {
                Ok(len) => {
                    self.protocol.consumed_output(index, len);
                    self.recorder.result.counts.bytes_sent += len as u64;
                    link.wants_write =
                        !self.protocol.pending_output(index).is_empty() || link.stream.has_unsent();
                    wrote += len;
                }
                Err(error) if is_transient(&error) => link.wants_write = true,
                Err(error) => return Err(format!("cannot send to the target: {error}")),
            }
        }
        Ok(wrote)
    }

    fn read_all_links(&mut self) -> Result<u64, String> {
        let mut replies = 0;
        for index in 0..self.links.len() {
            replies += self.read_link(index)?;
        }
        Ok(replies)
    }

    fn read_link(&mut self, index: usize) -> Result<u64, String> {
        let mut replies = 0;
        loop {
            let link = &mut self.links[index];
            let spare = link.input.spare(link.message_len);
            let spare_len = spare.len();
            let read = match link.stream.read(spare) {
                Ok(0) => return Err("the target closed the connection".into()),
                Ok(len) => len,
                Err(error) if is_transient(&error) => return Ok(replies),
                Err(error) => return Err(format!("cannot read from the target: {error}")),
            };
            link.input.filled(read);
            self.recorder.result.counts.bytes_received += read as u64;
            // A short read emptied the socket, unless TLS still holds decrypted records: then
            // read on, or the thread would wait on a socket with nothing more to say.
            let drained = read < spare_len && !link.stream.has_buffered_input();
            replies += self.parse_link(index)?;
            if drained {
                return Ok(replies);
            }
        }
    }

    fn parse_link(&mut self, index: usize) -> Result<u64, String> {
        let now = self.now_ns();
        let Generator {
            protocol,
            links,
            recorder,
            ..
        } = self;
        let link = &mut links[index];
        let mut replies = 0;
        let parsed = protocol.parse(index, link.input.pending(), &mut |ts, class| {
            recorder.on_reply(now, ts, class);
            replies += 1;
        })?;
        link.input.consume(parsed.consumed);
        link.message_len = parsed.message_len;
        Ok(replies)
    }

    /// Sleeps until a socket is ready or the next event is due.
    fn wait(&mut self, now: u64) -> Result<(), String> {
        let mut wake_ns = self.schedule.end_ns.max(now) + self.schedule.drain_ns;
        if now < self.schedule.end_ns {
            wake_ns = wake_ns.min(self.schedule.end_ns);
            let window_open = match self.load {
                Load::Open { inflight_max, .. } => self.recorder.inflight < u64::from(inflight_max),
                Load::Closed { .. } => false,
            };
            if window_open {
                wake_ns = wake_ns.min(self.next_due_ns);
            }
        }
        let mut fds: Vec<libc::pollfd> = self
            .links
            .iter()
            .map(|link| libc::pollfd {
                fd: link.stream.as_raw_fd(),
                events: libc::POLLIN | if link.wants_write { libc::POLLOUT } else { 0 },
                revents: 0,
            })
            .collect();
        let timeout = Duration::from_nanos(wake_ns.saturating_sub(now));
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries and `timeout` a valid
        // timespec, both alive for the duration of the call; no signal mask is passed.
        let ready = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &timeout,
                std::ptr::null(),
            )
        };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(format!("cannot wait for the target's sockets: {error}"));
            }
        }
        Ok(())
    }
}

impl Recorder<'_> {
    fn on_send(&mut self, intended: u64, lag: u64) {
        self.inflight += 1;
        if intended >= self.schedule.warmup_end_ns {
            self.result.counts.sent += 1;
            self.measured_inflight += 1;
            self.result.lag_ns.saturating_record(lag.max(1));
        }
    }

    fn on_reply(&mut self, now: u64, ts: u64, class: ReplyClass) {
        self.inflight -= 1;
        let (intended, lag) = unpack_ts(ts);
        if intended < self.schedule.warmup_end_ns {
            return;
        }
        self.measured_inflight -= 1;
        let counts = &mut self.result.counts;
        counts.acknowledged += 1;
        match class {
            ReplyClass::Ok => counts.ok += 1,
            ReplyClass::Rejected => counts.rejected += 1,
            ReplyClass::Busy => counts.busy += 1,
            ReplyClass::Error => counts.errors += 1,
        }
        let corrected = now.saturating_sub(intended);
        let uncorrected = corrected.saturating_sub(lag);
        self.result.latencies.record(corrected, uncorrected);
        if let Some(interval) = self.interval_for(now) {
            interval.latencies.record(corrected, uncorrected);
            interval.replies += 1;
        }
    }

    /// The interval `now` falls in, sending the previous one on when a second has passed.
    fn interval_for(&mut self, now: u64) -> Option<&mut IntervalReport> {
        let second = (now.checked_sub(self.schedule.warmup_end_ns)? / 1_000_000_000) as u32;
        if self
            .interval
            .as_ref()
            .is_some_and(|interval| interval.second != second)
        {
            self.flush_interval();
        }
        Some(self.interval.get_or_insert_with(|| IntervalReport {
            second,
            latencies: Latencies::new(),
            replies: 0,
        }))
    }

    fn flush_interval(&mut self) {
        if let Some(interval) = self.interval.take() {
            // The coordinator may be gone when the run was abandoned; nothing to do then.
            let _ = self.intervals.send(interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::BENCH_SCHEDULE_S_MAX;

    #[test]
    fn timestamps_carry_intended_time_and_lag() {
        let (intended, lag) = unpack_ts(pack_ts(123_456_789_000, 5_000_000));
        assert_eq!((intended, lag), (123_456_789_000, 5_000_000));
        // Lag beyond what 24 bits of microseconds hold is clamped, not wrapped.
        let (_, clamped) = unpack_ts(pack_ts(1, 100_000_000_000));
        assert_eq!(clamped, TS_LAG_US_MAX * 1_000);
    }

    #[test]
    fn the_longest_schedule_keeps_its_intended_times() {
        let last_ns = BENCH_SCHEDULE_S_MAX * 1_000_000_000 - 1;
        let (intended, lag) = unpack_ts(pack_ts(last_ns, 7_000));
        assert_eq!((intended, lag), (last_ns, 7_000));
    }
}
