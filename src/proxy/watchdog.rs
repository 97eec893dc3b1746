//! [`Watched`]: a connection and its watchdog (drain, forced close, the idle
//! check) in one task, the watchdog polled only when something it waits on woke
//! it.
//!
//! The connection's socket wakes its task for every request, several times; a
//! `select!` over the connection and the watchdog would poll the watchdog's
//! timer and both cancellation tokens each time (a lock inside each token's
//! `Notified` per poll). Here the watchdog runs under a waker of its own, which
//! marks it woken before waking the task, and the task polls it only when
//! marked.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use pin_project_lite::pin_project;

/// How a [`Watched`] connection's wait ended.
pub enum Outcome<S, O> {
    /// The connection ended on its own.
    Served(S),
    /// The watchdog gave an order.
    Ordered(O),
}

/// The watchdog's waker: marks it woken, then wakes the connection's task.
pub struct WatchWaker {
    woken: AtomicBool,
    /// The task's waker, set whenever the watchdog is polled (rarely: at start
    /// and when woken), so the lock is never taken per request.
    task: Mutex<Option<Waker>>,
}

impl WatchWaker {
    /// One per connection, reused for each wait.
    pub fn new() -> Arc<WatchWaker> {
        Arc::new(WatchWaker {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        })
    }

    fn follow(&self, task: &Waker) {
        let mut current = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !current.as_ref().is_some_and(|known| known.will_wake(task)) {
            *current = Some(task.clone());
        }
    }
}

impl Wake for WatchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

pin_project! {
    /// Waits for `connection` to end or `watchdog` to give an order, whichever
    /// comes first; see the module doc.
    pub struct Watched<'a, C, W> {
        connection: Pin<&'a mut C>,
        #[pin]
        watchdog: W,
        waker: &'a Arc<WatchWaker>,
        watch_waker: Waker,
    }
}

impl<'a, C, W> Watched<'a, C, W> {
    /// A wait for a new `watchdog`, which is polled once at the start.
    pub fn new(connection: Pin<&'a mut C>, watchdog: W, waker: &'a Arc<WatchWaker>) -> Self {
        waker.woken.store(true, Ordering::Release);
        Watched {
            connection,
            watchdog,
            waker,
            watch_waker: Waker::from(Arc::clone(waker)),
        }
    }
}

impl<C: Future, W: Future> Future for Watched<'_, C, W> {
    type Output = Outcome<C::Output, W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(served) = this.connection.as_mut().poll(cx) {
            return Poll::Ready(Outcome::Served(served));
        }
        // Cleared before the poll: a wake during or after it marks it again.
        if this.waker.woken.swap(false, Ordering::AcqRel) {
            this.waker.follow(cx.waker());
            let mut watch_cx = Context::from_waker(this.watch_waker);
            if let Poll::Ready(order) = this.watchdog.poll(&mut watch_cx) {
                return Poll::Ready(Outcome::Ordered(order));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Notify;

    use super::*;

    /// A future that counts its polls and waits for `notify`.
    async fn counted(polls: &AtomicUsize, notify: &Notify) -> &'static str {
        let mut notified = std::pin::pin!(notify.notified());
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            notified.as_mut().poll(cx)
        })
        .await;
        "order"
    }

    #[tokio::test]
    async fn the_watchdog_is_polled_only_when_it_was_woken() {
        let (connection_wakes, watchdog) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let polls = AtomicUsize::new(0);
        let mut connection = std::pin::pin!(async {
            for _ in 0..10 {
                connection_wakes.notified().await;
            }
            "served"
        });
        let waker = WatchWaker::new();
        let waiting = Watched::new(connection.as_mut(), counted(&polls, &watchdog), &waker);
        let wakes = {
            let (connection_wakes, watchdog) =
                (Arc::clone(&connection_wakes), Arc::clone(&watchdog));
            async move {
                for _ in 0..5 {
                    connection_wakes.notify_one();
                    tokio::task::yield_now().await;
                }
                watchdog.notify_one();
            }
        };
        let (outcome, ()) = tokio::join!(waiting, wakes);
        assert!(matches!(outcome, Outcome::Ordered("order")));
        assert_eq!(
            polls.load(Ordering::Relaxed),
            2,
            "once at the start and once when woken, never for the connection's wakes"
        );
    }

    #[tokio::test]
    async fn a_connection_that_ends_ends_the_wait() {
        let mut connection = std::pin::pin!(async { "served" });
        let waker = WatchWaker::new();
        let never = std::future::pending::<()>();
        let outcome = Watched::new(connection.as_mut(), never, &waker).await;
        assert!(matches!(outcome, Outcome::Served("served")));
    }
}
