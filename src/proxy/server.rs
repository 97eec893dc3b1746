//! The accept loop shared by the data plane and the admin listener: hyper-util's
//! auto builder (HTTP/1.1 and h2c on one port), connection timeouts, and graceful
//! shutdown with a drain timeout.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Limits;
use super::connection::{Closers, ConnectionLimits, serve_connection};

/// HTTP/2 streams a client may have open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Request line (method, URI, version) allowance on top of `max_header_bytes`.
const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Answers the requests of a listener.
pub trait Handler: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<Box<dyn StdError + Send + Sync>>> + Send + 'static;

    /// Answers one request; `peer` is the client's IP address as a header value.
    fn handle(
        &self,
        request: Request<Incoming>,
        peer: &HeaderValue,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// Turns an answer the connection gives itself, refusing a request before
    /// `handle` sees it, into this handler's response.
    fn local_response(&self, response: Response<Bytes>) -> Response<Self::Body>;
}

/// How a [`serve`] run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the drain timeout ran out, then closed.
    pub abandoned: usize,
}

/// Serves `handler` on `listener` until `shutdown` is cancelled, then stops
/// accepting and lets open connections finish within the drain timeout.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: &Limits,
    shutdown: CancellationToken,
) -> Drained {
    let builder = Arc::new(server_builder(limits));
    let connection_limits = ConnectionLimits {
        idle_timeout: limits.header_read_timeout,
        max_head_bytes: max_head_bytes(limits),
    };
    let connections = TaskTracker::new();
    let closers = Closers {
        draining: CancellationToken::new(),
        force_close: CancellationToken::new(),
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&builder),
                    Arc::clone(&handler),
                    connection_limits,
                    closers.clone(),
                ));
            }
            Err(error) => accept_failed(&error).await,
        }
    }
    drop(listener);
    drain(connections, closers, limits.drain_timeout).await
}

fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Off, and no timer: the first head's deadline is `conn::ClientIo`'s, the
        // later ones' the connection watchdog's (see `conn`'s doc for the cost).
        .header_read_timeout(None)
        .max_buf_size(max_head_bytes(limits))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // HTTP/2 counts 32 bytes of overhead per field; leave room so the handler
        // applies the limit exactly and answers with a JSON 431.
        .max_header_list_size(
            u32::try_from(
                limits
                    .max_header_bytes
                    .saturating_mul(2)
                    .saturating_add(MAX_REQUEST_LINE_BYTES),
            )
            .unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// hyper's HTTP/1 read buffer, the most a request head can take: room for the
/// request line on top of the header limit, which the handler applies exactly
/// (and answers in JSON).
fn max_head_bytes(limits: &Limits) -> usize {
    limits
        .max_header_bytes
        .saturating_add(MAX_REQUEST_LINE_BYTES)
}

async fn accept_failed(error: &io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
}

/// Asks every connection to finish its in-flight requests and close; past the
/// timeout, closes the rest.
async fn drain(connections: TaskTracker, closers: Closers, timeout: Duration) -> Drained {
    connections.close();
    if !connections.is_empty() {
        tracing::info!(
            open = connections.len(),
            ?timeout,
            "draining open connections"
        );
    }
    closers.draining.cancel();
    if tokio::time::timeout(timeout, connections.wait())
        .await
        .is_ok()
    {
        return Drained { abandoned: 0 };
    }
    let abandoned = connections.len();
    tracing::warn!(
        abandoned,
        "drain timeout reached; closing the remaining connections"
    );
    closers.force_close.cancel();
    connections.wait().await;
    Drained { abandoned }
}
