//! The accept loop shared by the data plane and the admin listener: hyper-util's
//! auto builder (HTTP/1.1 and h2c on one port), connection timeouts, and graceful
//! shutdown with a drain timeout.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Limits, conn, headers};

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
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let force_close = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_failed(&error).await;
                continue;
            }
        };
        let watcher = graceful.watcher();
        let (builder, handler) = (Arc::clone(&builder), Arc::clone(&handler));
        let force_close = force_close.clone();
        let timeout = limits.header_read_timeout;
        connections.spawn(async move {
            // One Arc per connection, cloned per request: the service's futures
            // must own what they use.
            let context = Arc::new((handler, headers::peer_header(peer.ip())));
            let io = TokioIo::new(conn::FirstBytesDeadline::new(configure(stream), timeout));
            let service = service_fn(|request| {
                let context = Arc::clone(&context);
                async move {
                    let (handler, peer) = &*context;
                    Ok::<_, Infallible>(handler.handle(request, peer).await)
                }
            });
            tokio::select! {
                served = watcher.watch(builder.serve_connection(io, service)) => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                () = force_close.cancelled() => {}
            }
        });
    }
    drop(listener);
    drain(graceful, connections, force_close, limits.drain_timeout).await
}

fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Room for the request line on top of the header limit, which the handler
        // applies exactly (and answers in JSON).
        .max_buf_size(
            limits
                .max_header_bytes
                .saturating_add(MAX_REQUEST_LINE_BYTES),
        )
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

fn configure(stream: TcpStream) -> TcpStream {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    stream
}

async fn accept_failed(error: &io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
}

/// Asks every connection to finish its in-flight requests and close; past the
/// timeout, closes the rest.
async fn drain(
    graceful: GracefulShutdown,
    connections: TaskTracker,
    force_close: CancellationToken,
    timeout: Duration,
) -> Drained {
    connections.close();
    if !connections.is_empty() {
        tracing::info!(
            open = connections.len(),
            ?timeout,
            "draining open connections"
        );
    }
    let finished = async {
        graceful.shutdown().await;
        connections.wait().await;
    };
    if tokio::time::timeout(timeout, finished).await.is_ok() {
        return Drained { abandoned: 0 };
    }
    let abandoned = connections.len();
    tracing::warn!(
        abandoned,
        "drain timeout reached; closing the remaining connections"
    );
    force_close.cancel();
    connections.wait().await;
    Drained { abandoned }
}
