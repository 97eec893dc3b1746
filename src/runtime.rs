//! Tokio runtimes for the gateway's threads: the production workers (`main`) and
//! the shadow threads ([`crate::shadow`]) are built the same way.

/// A Tokio runtime builder for `worker_threads` workers. One worker gets the
/// current-thread scheduler, which skips the work-stealing machinery (atomics,
/// wakeups through a shared queue) that buys nothing with a single worker.
pub fn builder(worker_threads: usize) -> tokio::runtime::Builder {
    if worker_threads <= 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(worker_threads);
    builder
}
