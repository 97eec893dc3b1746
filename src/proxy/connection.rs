//! One accepted connection: the hyper service around a [`Handler`], the idle
//! watchdog, and graceful or forced close.
//!
//! hyper closes idle HTTP/1 connections through its header-read timeout, but an
//! HTTP/2 connection that completed its preface has no idle limit at all: a client
//! could hold it (and a file descriptor) forever without sending a request. The
//! watchdog here closes any connection gracefully once a full idle period passes
//! with no request started and none in flight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::server::Handler;
use super::{conn, headers};

/// What ends connections from outside: `draining` asks them to finish their
/// requests and close; `force_close` drops them.
#[derive(Clone)]
pub struct Closers {
    pub draining: CancellationToken,
    pub force_close: CancellationToken,
}

/// Requests started and in flight on one connection.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

struct InFlight<'a>(&'a Activity);

impl Activity {
    fn begin(&self) -> InFlight<'_> {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until it ends, goes idle, or is closed from outside.
pub async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    idle_timeout: Duration,
    closers: Closers,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    // One Arc per connection, cloned per request: the service's futures must own
    // what they use.
    let context = Arc::new((
        handler,
        headers::peer_header(peer.ip()),
        Activity::default(),
    ));
    let io = TokioIo::new(conn::FirstBytesDeadline::new(stream, idle_timeout));
    let service = service_fn(|request| {
        let context = Arc::clone(&context);
        async move {
            let (handler, peer, activity) = &*context;
            let _in_flight = activity.begin();
            Ok::<_, Infallible>(handler.handle(request, peer).await)
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut idle_check =
        tokio::time::interval_at(tokio::time::Instant::now() + idle_timeout, idle_timeout);
    idle_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut closing, mut last_started) = (false, 0);
    loop {
        tokio::select! {
            // The connection is what wakes this task almost every time.
            biased;
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = closers.force_close.cancelled() => return,
            () = closers.draining.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = idle_check.tick(), if !closing => {
                let activity = &context.2;
                let started = activity.started.load(Ordering::Relaxed);
                if started == last_started && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(%peer, "closing idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                last_started = started;
            }
        }
    }
}
