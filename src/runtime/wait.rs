//! A wait queue for tasks of one executor: park until a condition holds.
//!
//! Tasks that wait for credit, for replies to write or for a peer's outbox to fill register
//! their waker here; whoever changes the condition calls [`WaitQueue::wake_all`]. Every wake is
//! a direct call on the same core: nothing here depends on a timer. Shard-local (`!Send`).
//!
//! A [`Latch`] is the one-shot kind (stop, force-close): it wakes its waiters once, when it is
//! set. Race a long-pending I/O future (an `accept()`, a `read()`) only against a latch, never
//! against a queue that is woken for other reasons: glommio 0.9 keeps one more waker clone each
//! time a pending I/O future is polled, its count is 16 bits, and 32,767 re-polls panic the
//! shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakers of tasks waiting for something on this core.
#[derive(Default)]
pub struct WaitQueue {
    wakers: RefCell<Vec<Waker>>,
}

impl WaitQueue {
    pub fn new() -> WaitQueue {
        WaitQueue::default()
    }

    /// Wakes every waiting task; each re-checks its own condition.
    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once `ready()` returns `Some`, re-checking after every wake.
    pub fn until<'a, T, F>(&'a self, ready: F) -> Until<'a, F>
    where
        F: FnMut() -> Option<T> + 'a,
    {
        Until { queue: self, ready }
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

/// A one-shot signal of one executor: once set it stays set, and its waiters are woken exactly
/// once, when it is set. Shard-local (`!Send`).
#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    waiters: WaitQueue,
}

impl Latch {
    pub fn new() -> Latch {
        Latch::default()
    }

    /// Sets the latch; only the first call wakes anyone.
    pub fn set(&self) {
        if !self.set.replace(true) {
            self.waiters.wake_all();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the latch is set.
    pub async fn wait(&self) {
        self.waiters.until(|| self.set.get().then_some(())).await
    }
}

/// The future of [`WaitQueue::until`].
pub struct Until<'a, F> {
    queue: &'a WaitQueue,
    ready: F,
}

impl<T, F: FnMut() -> Option<T> + Unpin> Future for Until<'_, F> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = (self.ready)() {
            return Poll::Ready(value);
        }
        self.queue.register(cx.waker());
        Poll::Pending
    }
}

/// File operations of this executor that it must not end under, counted: those on glommio's
/// blocking-thread pool (renames, removals, directory syncs: a pool thread whose executor is
/// gone panics when it hands back its result), and the zero-filling of a log segment ahead of
/// use. Shard-local (`!Send`).
#[derive(Default)]
pub struct FileOpsInFlight {
    in_flight: Cell<usize>,
    idle: WaitQueue,
}

impl FileOpsInFlight {
    pub fn new() -> FileOpsInFlight {
        FileOpsInFlight::default()
    }

    /// Runs `op`, counted as in flight until it resolves.
    pub async fn track<F: Future>(&self, op: F) -> F::Output {
        self.in_flight.set(self.in_flight.get() + 1);
        let _done = FileOpDone(self);
        op.await
    }

    /// Resolves once no operation is in flight.
    pub async fn until_idle(&self) {
        self.idle
            .until(|| (self.in_flight.get() == 0).then_some(()))
            .await
    }
}

/// Counts a tracked operation as over when its future completes (or is dropped).
struct FileOpDone<'a>(&'a FileOpsInFlight);

impl Drop for FileOpDone<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.idle.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_waiter_resolves_only_once_its_condition_holds() {
        let executor = glommio::LocalExecutor::default();
        executor.run(async {
            let queue = Rc::new(WaitQueue::new());
            let value = Rc::new(Cell::new(0));
            let waiter = glommio::spawn_local({
                let (queue, value) = (queue.clone(), value.clone());
                async move {
                    queue
                        .until(|| (value.get() >= 2).then(|| value.get()))
                        .await
                }
            });
            for step in 1..=3 {
                value.set(step);
                queue.wake_all();
                futures_lite::future::yield_now().await;
            }
            // Woken at 1 (still waiting), at 2 (done): it saw 2, not 3.
            assert_eq!(waiter.await, 2);
        });
    }

    /// A future that counts its polls and never resolves, as a pending `accept()` would.
    struct CountPolls(Rc<Cell<u32>>);

    impl Future for CountPolls {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.set(self.0.get() + 1);
            Poll::Pending
        }
    }

    #[test]
    fn a_latch_wakes_its_waiters_once_however_often_it_is_set() {
        let executor = glommio::LocalExecutor::default();
        executor.run(async {
            let latch = Rc::new(Latch::new());
            let polls = Rc::new(Cell::new(0));
            let waiter = glommio::spawn_local({
                let (latch, polls) = (latch.clone(), polls.clone());
                async move {
                    futures_lite::future::or(CountPolls(polls), latch.wait()).await;
                }
            });
            futures_lite::future::yield_now().await;
            assert_eq!(polls.get(), 1, "polled once, then parked");
            for _ in 0..1000 {
                latch.set();
                futures_lite::future::yield_now().await;
            }
            waiter.await;
            assert!(latch.is_set());
            assert_eq!(polls.get(), 2, "re-polled only when the latch was set");
        });
    }

    #[test]
    fn file_ops_are_idle_only_once_every_tracked_one_is_over() {
        let executor = glommio::LocalExecutor::default();
        executor.run(async {
            let ops = Rc::new(FileOpsInFlight::new());
            let released = Rc::new(Latch::new());
            let tracked = glommio::spawn_local({
                let (ops, released) = (ops.clone(), released.clone());
                async move { ops.track(released.wait()).await }
            });
            futures_lite::future::yield_now().await;
            let idle = Rc::new(Latch::new());
            let waiter = glommio::spawn_local({
                let (ops, idle) = (ops.clone(), idle.clone());
                async move {
                    ops.until_idle().await;
                    idle.set();
                }
            });
            futures_lite::future::yield_now().await;
            assert!(!idle.is_set(), "idle while an operation was in flight");
            released.set();
            tracked.await;
            waiter.await;
            assert!(idle.is_set());
            assert_eq!(ops.in_flight.get(), 0);
        });
    }
}
