//! A wait queue for tasks of one executor: park until a condition holds.
//!
//! Tasks that wait for credit, for replies to write or for a peer's outbox to fill register
//! their waker here; whoever changes the condition calls [`WaitQueue::wake_all`]. Every wake is
//! a direct call on the same core: nothing here depends on a timer. Shard-local (`!Send`).

use std::cell::RefCell;
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
}
