//! Stall detection: how often a task on a shard's executor ran longer than the stall threshold
//! without yielding, and by how much at worst.
//!
//! Every task a shard spawns is wrapped in [`Timed`] (through [`spawn_timed`]), which reads the
//! clock around each `poll` and counts a stall when one poll ran longer than the threshold. Two
//! reads of `Instant::now()` (the vDSO, no system call) per poll, no signal, no allocation.
//!
//! It replaces glommio 0.9's detector (`LocalExecutorBuilder::detect_stalls`), which signals
//! the executor's thread to capture its stack on every stall and, when the run ends, resolves
//! that backtrace unconditionally (`StallDetectorGuard::drop`): it loads and parses the
//! binary's DWARF on the shard thread, about 565 M instructions for one stall under callgrind,
//! a tenth of a second or more of shard CPU for every stall we only wanted to count. glommio
//! also reported the stall only through `log::warn!`, which we had to parse.
//!
//! What it cannot see: time spent between polls, inside glommio's own reactor (io_uring
//! submission and completion, timers, its scheduler), and code run outside a [`Timed`] task.
//! A poll is measured in wall time, so a shard thread descheduled by the host during a poll
//! counts that time too (as glommio's detector did).
//!
//! Lives on one shard's executor thread. The threshold and the tally are thread-local: written
//! and read only on that thread, so no atomic or lock is shared with other shards.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use crate::core::shard::Stalls;

thread_local! {
    /// This thread's stalls so far.
    static STALLS: Cell<Stalls> = const {
        Cell::new(Stalls {
            count: 0,
            worst_overage_ns: 0,
        })
    };
    /// The threshold [`spawn_timed`] gives the tasks it spawns on this thread; `None`: off.
    static THRESHOLD: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Sets the stall threshold of the tasks spawned on this thread from now on (`None` turns
/// detection off: tasks are then polled without reading the clock). Called once, on a shard's
/// executor thread, before it spawns anything.
pub fn set_threshold_on_this_thread(threshold: Option<Duration>) {
    THRESHOLD.set(threshold);
}

/// The stalls counted on the calling thread (a shard's executor thread) so far. A poll's stall
/// is counted when that poll returns, so the poll that asks does not count itself.
pub fn stalls_on_this_thread() -> Stalls {
    STALLS.get()
}

/// Spawns `future` on the current executor, timed with this thread's threshold.
pub fn spawn_timed<F>(future: F) -> glommio::Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(Timed::with_this_threads_threshold(future))
}

fn record_stall(overage: Duration) {
    let mut stalls = STALLS.get();
    stalls.count += 1;
    let overage_ns = u64::try_from(overage.as_nanos()).unwrap_or(u64::MAX);
    stalls.worst_overage_ns = stalls.worst_overage_ns.max(overage_ns);
    STALLS.set(stalls);
}

/// A future whose polls are timed: one that runs longer than `threshold` is a stall, counted
/// on the polling thread with its overage (how far past the threshold it ran).
#[derive(Debug)]
pub struct Timed<F> {
    inner: F,
    threshold: Option<Duration>,
}

impl<F: Future> Timed<F> {
    /// Times `inner`'s polls against `threshold` (`None`: polls it untimed).
    pub fn new(inner: F, threshold: Option<Duration>) -> Timed<F> {
        Timed { inner, threshold }
    }

    /// Times `inner`'s polls against the threshold set on this thread.
    pub fn with_this_threads_threshold(inner: F) -> Timed<F> {
        Timed::new(inner, THRESHOLD.get())
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let threshold = self.threshold;
        // SAFETY: structural pinning of `inner`: it is never moved out of `self`, `Timed` has
        // no `Drop` of its own, and it is `Unpin` only when `F` is.
        let inner = unsafe { self.map_unchecked_mut(|timed| &mut timed.inner) };
        let Some(threshold) = threshold else {
            return inner.poll(cx);
        };
        let start = Instant::now();
        let poll = inner.poll(cx);
        let ran = start.elapsed();
        if ran > threshold {
            record_stall(ran - threshold);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    /// Runs `test` on a fresh executor thread, so the tally it reads is that test's alone.
    fn on_an_executor<T: Send + 'static>(
        test: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    ) -> T {
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(test)
            .unwrap()
            .join()
            .unwrap()
    }

    fn spin_for(duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_poll_that_runs_past_the_threshold_is_counted_with_its_overage() {
        let (spin, threshold) = (Duration::from_millis(60), Duration::from_millis(20));
        let stalls = on_an_executor(move || {
            Box::pin(async move {
                set_threshold_on_this_thread(Some(threshold));
                spawn_timed(async move { spin_for(spin) }).await;
                stalls_on_this_thread()
            })
        });
        assert_eq!(stalls.count, 1, "{stalls:?}");
        let overage_min = (spin - threshold).as_nanos() as u64;
        assert!(stalls.worst_overage_ns >= overage_min, "{stalls:?}");
        // This thread ran nothing: its tally is its own.
        assert_eq!(stalls_on_this_thread(), Stalls::default());
    }

    #[test]
    fn polls_shorter_than_the_threshold_are_not_stalls_even_when_the_task_is_long() {
        let threshold = Duration::from_millis(200);
        let stalls = on_an_executor(move || {
            Box::pin(async move {
                set_threshold_on_this_thread(Some(threshold));
                spawn_timed(async move {
                    // 300 ms of work in all, yielding every 5 ms: no single poll is long.
                    for _ in 0..60 {
                        spin_for(Duration::from_millis(5));
                        futures_lite::future::yield_now().await;
                    }
                })
                .await;
                stalls_on_this_thread()
            })
        });
        assert_eq!(stalls, Stalls::default());
    }

    #[test]
    fn without_a_threshold_nothing_is_counted() {
        let stalls = on_an_executor(|| {
            Box::pin(async {
                set_threshold_on_this_thread(None);
                spawn_timed(async { spin_for(Duration::from_millis(50)) }).await;
                stalls_on_this_thread()
            })
        });
        assert_eq!(stalls, Stalls::default());
    }

    #[test]
    fn every_long_poll_counts_and_the_worst_is_kept() {
        let threshold = Duration::from_millis(10);
        let stalls = on_an_executor(move || {
            Box::pin(async move {
                let timed = Timed::new(
                    async {
                        spin_for(Duration::from_millis(30));
                        futures_lite::future::yield_now().await;
                        spin_for(Duration::from_millis(90));
                    },
                    Some(threshold),
                );
                glommio::spawn_local(timed).await;
                stalls_on_this_thread()
            })
        });
        assert_eq!(stalls.count, 2, "{stalls:?}");
        assert!(stalls.worst_overage_ns >= 80_000_000, "{stalls:?}");
    }
}
