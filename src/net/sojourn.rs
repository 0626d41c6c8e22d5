//! How long what a connection reads had waited in its socket: the measurement behind load
//! shedding in fail-fast mode (the decision is the core's, `core::shard::shedding`).
//!
//! The kernel does not timestamp the bytes of a TCP stream for a reader on io_uring, so the
//! reader bounds their arrival itself. Before and after each read it asks the socket how
//! many bytes are unread (`FIONREAD`, i.e. `SIOCINQ`) and keeps an observation: "at this
//! time the stream had delivered this many bytes". A byte that an observation had not yet
//! seen arrived after it; so when a read reaches a byte, the byte has waited at most the
//! time since the latest observation that had not seen it. That upper bound is what the core
//! sheds by: an event served is one that waited no longer than the target, even when the
//! shard was kept from reading for a while (a long apply, a busy host), which a lower bound
//! would miss. The bound is off by at most the time between two observations, i.e. one
//! turn of the read loop. One case is set apart: when the socket was empty just before a
//! read, what that read returns arrived while the reader was waiting for it, and counts as
//! not having waited.
//!
//! Observations are few (`SOJOURN_SAMPLES_MAX`) and spent as reads pass them; when they run
//! out the newest replaces the last, which only loosens the bound. Lives in a connection's
//! reader task, on its shard's executor.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::constants::SOJOURN_SAMPLES_MAX;

/// One connection's observations. See the module documentation.
pub(crate) struct SojournMeter {
    /// Bytes read from the socket so far.
    read_total: u64,
    /// (bytes the stream had delivered, when that was seen), oldest first.
    seen: VecDeque<(u64, Instant)>,
    /// The socket was empty just before the current read.
    empty_before_read: bool,
}

impl SojournMeter {
    pub fn new() -> SojournMeter {
        SojournMeter {
            read_total: 0,
            seen: VecDeque::with_capacity(SOJOURN_SAMPLES_MAX),
            empty_before_read: false,
        }
    }

    /// The socket held `unread` bytes at `now`, outside a read.
    pub fn observe(&mut self, now: Instant, unread: usize) {
        if self.seen.len() == SOJOURN_SAMPLES_MAX {
            self.seen.pop_back();
        }
        self.seen.push_back((self.read_total + unread as u64, now));
    }

    /// The socket held `unread` bytes at `now`, just before a read.
    pub fn before_read(&mut self, now: Instant, unread: usize) {
        self.empty_before_read = unread == 0;
        self.observe(now, unread);
    }

    /// `len` bytes were just read, at `now`. Returns how long the oldest of them had waited
    /// in the socket at most.
    pub fn read(&mut self, now: Instant, len: usize) -> Duration {
        let oldest = self.read_total + 1;
        self.read_total += len as u64;
        // Of the observations that had not seen the oldest byte, only the latest matters.
        while self.seen.len() >= 2 && self.seen[1].0 < oldest {
            self.seen.pop_front();
        }
        if std::mem::take(&mut self.empty_before_read) {
            return Duration::ZERO;
        }
        // If even the first observation kept had seen it, it waited at least that long.
        self.seen
            .front()
            .map_or(Duration::ZERO, |&(_, at)| now.saturating_duration_since(at))
    }
}

/// Bytes waiting in socket `fd`'s receive queue; 0 if the kernel will not say.
pub(crate) fn unread_bytes(fd: RawFd) -> usize {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to a live local.
    let status = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread as *mut libc::c_int) };
    if status < 0 {
        0
    } else {
        unread.max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_byte_waited_at_most_since_the_last_look_that_had_not_seen_it() {
        let start = Instant::now();
        let mut meter = SojournMeter::new();
        meter.before_read(start, 1000);
        meter.read(start, 100);
        meter.observe(start + MS, 900);
        // More arrives (1000 to 3000) while the shard is busy elsewhere for 20 ms.
        meter.before_read(start + 21 * MS, 2900);
        // Bytes 101..=600 were there at 0 ms already: at least 25 ms of waiting.
        assert_eq!(meter.read(start + 25 * MS, 500), 25 * MS);
        meter.observe(start + 25 * MS, 2400);
        // Bytes from 1001 on had not arrived at 1 ms (they had at 21 ms): at most 29 ms.
        meter.before_read(start + 30 * MS, 2400);
        assert_eq!(meter.read(start + 30 * MS, 400), 30 * MS);
        assert_eq!(meter.read(start + 30 * MS, 1000), 29 * MS);
    }

    #[test]
    fn what_arrives_in_an_empty_socket_during_a_read_has_not_waited() {
        let start = Instant::now();
        let mut meter = SojournMeter::new();
        meter.before_read(start, 0);
        assert_eq!(meter.read(start + 50 * MS, 100), Duration::ZERO);
        meter.observe(start + 50 * MS, 0);
        // Arrived after the look at 50 ms, read at 80 ms without the socket found empty.
        meter.before_read(start + 80 * MS, 100);
        assert_eq!(meter.read(start + 80 * MS, 100), 30 * MS);
    }

    #[test]
    fn observations_are_bounded_and_dropping_one_only_loosens_the_bound() {
        let start = Instant::now();
        let mut meter = SojournMeter::new();
        meter.observe(start, 0);
        for step in 1..(2 * SOJOURN_SAMPLES_MAX as u32) {
            meter.observe(start + step * MS, step as usize);
        }
        assert_eq!(meter.seen.len(), SOJOURN_SAMPLES_MAX);
        // The first byte had not been seen at 0 ms: at most 100 ms, whatever was dropped.
        let later = start + 100 * MS;
        assert_eq!(meter.read(later, 1), 100 * MS);
    }
}
