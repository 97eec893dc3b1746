//! One accepted connection: the hyper service around a [`Handler`], the idle
//! watchdog, the refusal of requests with conflicting framing, and graceful or
//! forced close.
//!
//! A connection on which nothing happens is closed by its watchdog: once a full
//! idle period (`header_read_timeout_ms`) passes with no request started and
//! none in flight (a request is in flight until its answer's body has been
//! sent), it shuts the connection down gracefully. That ends an idle HTTP/2
//! connection (which hyper would keep forever), and an idle HTTP/1 keep-alive
//! connection, also when it holds the start of a head that never completes
//! (hyper closes an HTTP/1 connection waiting for its next head at once; the
//! first head has its own deadline in [`super::conn`]). The watchdog looks every
//! half period and wants three quiet looks in a row, so the close comes between
//! one and one and a half periods after the last request. It runs in the
//! connection's task but is polled only when its timer or a closer wakes it
//! ([`super::watchdog`]).
//!
//! A request with both Transfer-Encoding and Content-Length is found by the
//! connection's IO ([`super::framing`]), which tells the service its index; the
//! service answers it with a 400 and `connection: close` instead of handing it
//! to the handler, so nothing of it is forwarded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::framing::{ConflictingRequest, HeadScanner};
use super::server::Handler;
use super::watchdog::{Outcome, WatchWaker, Watched};
use super::{ProxyError, conn, headers};

/// What ends connections from outside: `draining` asks them to finish their
/// requests and close; `force_close` drops them.
#[derive(Clone)]
pub struct Closers {
    pub draining: CancellationToken,
    pub force_close: CancellationToken,
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a connection may stay silent or idle.
    pub idle_timeout: Duration,
    /// hyper's HTTP/1 read buffer, the most one request head can take.
    pub max_head_bytes: usize,
}

/// Requests started and in flight on one connection.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    /// Counts a request in; returns its index on the connection, from 0.
    fn begin(&self) -> u64 {
        let index = self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        index
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request of the connection, in flight until this is dropped: with its
/// answer's body, so an answer that streams for longer than the idle period
/// (a generation, say) keeps the connection from being closed as idle.
struct InFlight<H>(Arc<Shared<H>>);

impl<H> InFlight<H> {
    /// Counts a request in; returns its index on the connection and its guard.
    fn begin(shared: &Arc<Shared<H>>) -> (u64, InFlight<H>) {
        (shared.activity.begin(), InFlight(Arc::clone(shared)))
    }
}

impl<H> Drop for InFlight<H> {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

pin_project! {
    /// An answer's body, with its request held in flight.
    struct TrackedBody<B, H> {
        #[pin]
        body: B,
        in_flight: InFlight<H>,
    }
}

impl<B: Body, H> Body for TrackedBody<B, H> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the requests of one connection share.
struct Shared<H> {
    handler: Arc<H>,
    /// The client's IP address as a header value.
    peer: HeaderValue,
    activity: Activity,
    conflict: Arc<ConflictingRequest>,
}

impl<H: Handler> Shared<H> {
    /// The answer the connection gives itself to the request with index
    /// `index`, if the handler must not see it.
    fn refusal(&self, index: u64, request: &Request<Incoming>) -> Option<Response<H::Body>> {
        // hyper keeps Transfer-Encoding (it drops only Content-Length): checking it
        // too means a scanner gone wrong could never refuse a plain request.
        if self.conflict.is(index) && request.headers().contains_key(header::TRANSFER_ENCODING) {
            tracing::debug!(peer = ?self.peer, "refused a request with both framings");
            return Some(self.handler.local_response(conflicting_framing()));
        }
        None
    }
}

/// The answer to a request with both framings; hyper closes the connection
/// after it already, and `connection: close` tells the client so.
fn conflicting_framing() -> Response<Bytes> {
    let mut response = ProxyError::ConflictingFraming.to_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves one connection until it ends, goes idle, or is closed from outside.
pub async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    limits: ConnectionLimits,
    closers: Closers,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let idle_timeout = limits.idle_timeout;
    let conflict = Arc::new(ConflictingRequest::default());
    let heads = HeadScanner::new(limits.max_head_bytes, Arc::clone(&conflict));
    // One Arc per connection, cloned per request: the service's futures must own
    // what they use.
    let shared = Arc::new(Shared {
        handler,
        peer: headers::peer_header(peer.ip()),
        activity: Activity::default(),
        conflict,
    });
    let io = TokioIo::new(conn::ClientIo::new(stream, idle_timeout, heads));
    // One `async` block, not `async fn`s inside it: each nested one would keep
    // its own copy of the request beside the handler's future.
    let service = service_fn(|request: Request<Incoming>| {
        let (index, in_flight) = InFlight::begin(&shared);
        async move {
            let shared = &in_flight.0;
            let answer = match shared.refusal(index, &request) {
                Some(refused) => refused,
                None => shared.handler.handle(request, &shared.peer).await,
            };
            Ok::<_, Infallible>(answer.map(|body| TrackedBody { body, in_flight }))
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut idle_check = IdleCheck::new(idle_timeout);
    let watch = WatchWaker::new();
    let mut closing = false;
    loop {
        let watchdog = next_order(&closers, &mut idle_check, &shared.activity, closing);
        match Watched::new(connection.as_mut(), watchdog, &watch).await {
            Outcome::Served(served) => {
                if let Err(error) = served {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            Outcome::Ordered(Order::Close) => return,
            Outcome::Ordered(order) => {
                if matches!(order, Order::Idle) {
                    tracing::debug!(%peer, "closing idle connection");
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// What the watchdog tells a connection.
enum Order {
    /// Drop it now.
    Close,
    /// Finish what is in flight, then close (the gateway is draining).
    Drain,
    /// The same, after a whole idle period with no request started or in flight.
    Idle,
}

/// The watchdog's next order; once `closing`, only a forced close is left.
async fn next_order(
    closers: &Closers,
    idle_check: &mut IdleCheck,
    activity: &Activity,
    closing: bool,
) -> Order {
    tokio::select! {
        biased;
        () = closers.force_close.cancelled() => Order::Close,
        () = closers.draining.cancelled(), if !closing => Order::Drain,
        () = idle_check.idle(activity), if !closing => Order::Idle,
    }
}

/// Looks at a connection's activity every half idle period.
struct IdleCheck {
    looks: Interval,
    /// Requests started at the last look.
    started: u64,
    /// Looks in a row that found no request started since the one before and
    /// none in flight.
    quiet: u8,
}

impl IdleCheck {
    /// Quiet looks in a row that make a connection idle: the first may come just
    /// after its last request ended, the third is a whole period after that.
    const QUIET_LOOKS: u8 = 3;

    fn new(idle_timeout: Duration) -> IdleCheck {
        let half = idle_timeout / 2;
        let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        IdleCheck {
            looks,
            started: 0,
            quiet: 0,
        }
    }

    /// Returns once the connection has been idle for a whole period.
    async fn idle(&mut self, activity: &Activity) {
        while self.quiet < Self::QUIET_LOOKS {
            self.looks.tick().await;
            let started = activity.started.load(Ordering::Relaxed);
            let quiet = started == self.started && activity.in_flight.load(Ordering::Relaxed) == 0;
            self.started = started;
            self.quiet = if quiet { self.quiet + 1 } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_a_period_after_its_last_request() {
        let period = Duration::from_secs(10);
        let activity = Activity::default();
        let mut check = IdleCheck::new(period);
        let start = tokio::time::Instant::now();
        check.idle(&activity).await;
        assert_eq!(
            start.elapsed(),
            period * 3 / 2,
            "never used: three half periods"
        );

        let mut check = IdleCheck::new(period);
        activity.begin();
        let busy = async {
            // Off the looks' beat, so which comes first is not up to the runtime.
            tokio::time::sleep(period * 4 + Duration::from_millis(1)).await;
            activity.end();
            tokio::time::Instant::now()
        };
        let (ended, ()) = tokio::join!(busy, check.idle(&activity));
        let waited = ended.elapsed();
        assert!(
            waited > period && waited <= period * 3 / 2,
            "idle {waited:?} after the request ended"
        );
    }
}
