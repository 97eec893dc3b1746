//! The data plane: the listener, the hyper server (HTTP/1.1 and cleartext HTTP/2
//! on one port), limits and timeouts, forwarding through [`crate::upstream`],
//! header hygiene and graceful shutdown.

mod body;
mod conn;
mod connection;
mod error;
mod handler;
pub mod headers;
mod server;

pub use body::ResponseBody;
pub use error::{ProxyError, json_error, json_response};
pub use handler::{Proxy, X_STAGEGATE_MODEL, X_STAGEGATE_STAGE, X_STAGEGATE_VERSION};
pub use server::{Drained, Handler, serve};

pub use crate::config::Limits;

/// A Tokio runtime builder for `worker_threads` workers. One worker gets the
/// current-thread scheduler, which skips the work-stealing machinery (atomics,
/// wakeups through a shared queue) that buys nothing with a single worker.
pub fn runtime_builder(worker_threads: usize) -> tokio::runtime::Builder {
    if worker_threads <= 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(worker_threads);
    builder
}
