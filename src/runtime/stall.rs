//! Stall detection: how often a shard's executor ran one task queue far past its time slice
//! (a task that did not yield), and by how much at worst.
//!
//! glommio 0.9's detector (`LocalExecutorBuilder::detect_stalls`) arms a timer each time the
//! executor starts running a task queue, for the queue's time slice plus the handler's
//! threshold. When it fires, a helper thread signals the executor's thread, which records its
//! stack; once the run ends, glommio hands a `StallDetection` to the handler's `stall` method.
//! That type is not exported by glommio 0.9, so no handler outside glommio can name it to
//! override `stall`; the default one reports through `log::warn!`, on the executor's thread,
//! with the overage and the budget in its text. So [`StallCounter`] only sets the threshold,
//! and [`StallLog`], the process's `log` logger, takes glommio's stall warnings and counts them
//! for the thread they are reported on, reading the two durations from the message's head (it
//! stops formatting there: the backtrace after it is never written out).
//!
//! Lives on one shard's executor thread. The tally is thread-local: it is written and read only
//! on that thread (glommio reports there, and the shard reads it when it stops), so no atomic
//! or lock is shared with other shards.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::Duration;

use glommio::{StallDetectionHandler, TaskQueueHandle};

use crate::constants::STALL_REPORT_HEAD_BYTES_MAX;
pub use crate::core::shard::Stalls;

thread_local! {
    /// This thread's stalls so far.
    static STALLS: Cell<Stalls> = const {
        Cell::new(Stalls {
            count: 0,
            worst_overage_ns: 0,
        })
    };
}

/// The stalls counted on the calling thread (a shard's executor thread) so far. glommio
/// reports a run's stall when the run ends, so a task that asks from inside a run that may be
/// stalling should use [`stalls_after_this_run`].
pub fn stalls_on_this_thread() -> Stalls {
    STALLS.get()
}

/// Ends the current task-queue run (so that glommio reports it if it stalled), then returns
/// this executor's stalls. Called from a task on a shard's executor.
pub async fn stalls_after_this_run() -> Stalls {
    glommio::executor().yield_task_queue_now().await;
    stalls_on_this_thread()
}

fn record_stall(overage: Option<Duration>) {
    let mut stalls = STALLS.get();
    stalls.count += 1;
    let overage_ns = overage.map_or(0, |overage| overage.as_nanos() as u64);
    stalls.worst_overage_ns = stalls.worst_overage_ns.max(overage_ns);
    STALLS.set(stalls);
}

/// The handler given to glommio: a stall is a task-queue run more than `threshold` past its
/// time slice. glommio's default `stall` reports it (see the module doc).
#[derive(Debug)]
pub struct StallCounter {
    threshold: Duration,
}

impl StallCounter {
    /// Installs [`StallLog`] (once per process) and returns a handler for one executor.
    pub fn new(threshold: Duration) -> StallCounter {
        StallLog::install();
        StallCounter { threshold }
    }
}

impl StallDetectionHandler for StallCounter {
    fn threshold(&self, _queue: TaskQueueHandle, _time_slice: Duration) -> Option<Duration> {
        Some(self.threshold)
    }
}

/// The `log` target of glommio's stall reports.
const STALL_TARGET: &str = "glommio::executor::stall";

/// The process's logger: counts glommio's stall reports, drops everything else (as the absence
/// of a logger did before).
pub struct StallLog;

static STALL_LOG: StallLog = StallLog;

impl StallLog {
    /// Makes [`StallLog`] the process's logger. If another logger was installed first, stalls
    /// still happen but go to that logger and are not counted.
    fn install() {
        if log::set_logger(&STALL_LOG).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    }
}

impl log::Log for StallLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() == log::Level::Warn && metadata.target() == STALL_TARGET
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut head = MessageHead::default();
        // The head stops the formatting once it is full: an error here is expected.
        let _ = head.write_fmt(*record.args());
        record_stall(overage_of(&head.text));
    }

    fn flush(&self) {}
}

/// The first [`STALL_REPORT_HEAD_BYTES_MAX`] bytes of a message; writing more is refused,
/// which ends the formatting of the message there.
#[derive(Default)]
struct MessageHead {
    text: String,
}

impl fmt::Write for MessageHead {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = STALL_REPORT_HEAD_BYTES_MAX - self.text.len();
        if text.len() <= room {
            self.text.push_str(text);
            return Ok(());
        }
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&text[..end]);
        Err(fmt::Error)
    }
}

/// The overage in glommio 0.9's report: "… went over-budget: 290.1ms (budget: 20ms). …".
fn overage_of(report: &str) -> Option<Duration> {
    let (_, after) = report.split_once("went over-budget: ")?;
    let (overage, _) = after.split_once(" (budget: ")?;
    parse_debug_duration(overage)
}

/// Reads a `Duration` as its `Debug` writes it: `290.123456ms`, `1.5s`, `15µs`, `5ns`.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds_per_unit = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(value * seconds_per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Instant;

    #[test]
    fn durations_are_read_as_debug_writes_them() {
        for duration in [
            Duration::from_nanos(5),
            Duration::from_micros(15),
            Duration::from_nanos(290_123_456),
            Duration::from_millis(1500),
        ] {
            let parsed = parse_debug_duration(&format!("{duration:#?}")).unwrap();
            assert_eq!(parsed.as_nanos(), duration.as_nanos(), "{duration:?}");
        }
        assert_eq!(parse_debug_duration("12 parsecs"), None);
        assert_eq!(parse_debug_duration("ms"), None);
    }

    #[test]
    fn the_overage_is_read_from_glommios_report() {
        let report = format!(
            "[stall-detector -- executor 3] task queue default went over-budget: {:#?} (budget: \
             {:#?}). Backtrace: …",
            Duration::from_micros(290_100),
            Duration::from_millis(110)
        );
        assert_eq!(overage_of(&report), Some(Duration::from_micros(290_100)));
        assert_eq!(overage_of("something else went wrong"), None);
    }

    #[test]
    fn the_head_of_a_long_message_is_kept_and_the_rest_refused() {
        let mut head = MessageHead::default();
        let long = "é".repeat(STALL_REPORT_HEAD_BYTES_MAX);
        assert!(write!(head, "{long}").is_err());
        assert!(head.text.len() <= STALL_REPORT_HEAD_BYTES_MAX);
        assert!(head.text.len() > STALL_REPORT_HEAD_BYTES_MAX - 2);
    }

    #[test]
    fn a_task_that_does_not_yield_is_counted_with_its_overage() {
        let spin = Duration::from_millis(300);
        let (time_slice, threshold) = (Duration::from_millis(10), Duration::from_millis(20));
        let stalls = LocalExecutorBuilder::new(Placement::Unbound)
            .preempt_timer(time_slice)
            .detect_stalls(Some(Box::new(StallCounter::new(threshold))))
            .spawn(move || async move {
                let start = Instant::now();
                while start.elapsed() < spin {
                    std::hint::spin_loop();
                }
                let during = stalls_on_this_thread();
                (during, stalls_after_this_run().await)
            })
            .unwrap()
            .join()
            .unwrap();
        let (during, stalls) = stalls;
        // glommio reports a stall once its run is over, not while it lasts.
        assert!(during.count < stalls.count, "{during:?} then {stalls:?}");
        assert!(stalls.count >= 1, "{stalls:?}");
        // The run lasted at least the spin, of which the budget is slice plus threshold.
        let overage_min = spin - time_slice - threshold;
        assert!(
            stalls.worst_overage_ns >= overage_min.as_nanos() as u64,
            "{stalls:?}"
        );
        // This thread ran nothing: its tally is its own.
        assert_eq!(stalls_on_this_thread(), Stalls::default());
    }
}
