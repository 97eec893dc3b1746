//! Keep-alive HTTP/1.1 connections to model servers: pooled per endpoint and
//! driven by the request that uses them.
//!
//! hyper's pooled client runs every connection in a task of its own: a request
//! hands its message to that task through a channel and is woken again with the
//! answer, two task switches and a pool lookup keyed by URI per request. Here an
//! idle connection waits undriven in its endpoint's pool; a request takes it,
//! drives it inline while the request is sent and while the response body
//! streams ([`UpstreamBody`]), and puts it back once the body has ended and hyper
//! says the connection can carry another request. A connection the server closed
//! while it sat idle is noticed when taken (one poll reads the EOF) and dropped;
//! the gateway's upkeep task also reaps closed and expired idle connections
//! ([`EndpointPools::reap`]), since nothing else looks at an unused pool. The
//! idle list is a lock-free stack ([`super::idle_stack`]): no request waits for
//! another to take or return a connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::Endpoint;
use super::idle_stack::{IdleStack, Linked};
use super::request_body::RequestBody;

/// How long an idle connection is kept before it is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and pool; more are closed when released.
const MAX_IDLE: usize = 1024;

/// Which of an endpoint's pools: production traffic and mirrors never share
/// connections, so a hanging shadow cannot hold or poison production's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Primary,
    Shadow,
}

/// An endpoint's idle connections, one pool per [`PoolKind`].
#[derive(Default)]
pub struct EndpointPools {
    primary: IdlePool,
    shadow: IdlePool,
}

impl EndpointPools {
    pub fn get(&self, kind: PoolKind) -> &IdlePool {
        match kind {
            PoolKind::Primary => &self.primary,
            PoolKind::Shadow => &self.shadow,
        }
    }

    /// Closes the `kind` connections that expired or that the server closed.
    /// Each kind is reaped on the runtime its sockets belong to.
    pub fn reap(&self, kind: PoolKind) {
        self.get(kind).reap();
    }
}

impl std::fmt::Debug for EndpointPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPools")
            .field("primary_idle", &self.primary.len())
            .field("shadow_idle", &self.shadow.len())
            .finish()
    }
}

/// Idle connections, lock-free, most recently used on top: reuse takes the
/// warmest one.
pub struct IdlePool {
    idle: IdleStack<UpstreamConn>,
}

impl Default for IdlePool {
    fn default() -> IdlePool {
        IdlePool {
            idle: IdleStack::new(MAX_IDLE),
        }
    }
}

/// A connection boxed with its link in the idle list: it moves between pool,
/// exchange and response body without being copied (hyper's connection state
/// is several hundred bytes) and is pooled without an allocation.
pub type PooledConn = Linked<UpstreamConn>;

impl IdlePool {
    /// An idle connection that is still open, if there is one.
    pub fn take(&self) -> Option<PooledConn> {
        loop {
            let mut conn = self.idle.pop()?;
            if conn.idle_since.elapsed() < IDLE_TIMEOUT && conn.is_reusable() {
                return Some(conn);
            }
        }
    }

    /// Past [`MAX_IDLE`] the connection is closed. Expired entries are left to
    /// [`IdlePool::reap`] and skipped by `take`.
    fn put(&self, mut conn: PooledConn) {
        conn.idle_since = Instant::now();
        // A full pool hands the connection back, and dropping it closes it.
        let _ = self.idle.push(conn);
    }

    /// Takes the list, closes what expired or was closed by the server, and puts
    /// the rest back. Requests meanwhile find the pool empty and connect (one
    /// poll per idle connection, every [`crate::telemetry::UPKEEP_INTERVAL`]);
    /// none waits.
    fn reap(&self) {
        let mut keep = Vec::new();
        for mut conn in self.idle.drain() {
            if conn.idle_since.elapsed() < IDLE_TIMEOUT && conn.is_reusable() {
                keep.push(conn);
            }
        }
        // Oldest first, so the warmest ends on top again.
        for conn in keep.into_iter().rev() {
            let _ = self.idle.push(conn);
        }
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }
}

type Driver = Connection<TokioIo<TcpStream>, RequestBody>;

/// One HTTP/1.1 connection: the handle requests are sent through and the
/// connection state machine that must be polled for anything to happen.
pub struct UpstreamConn {
    pub(super) sender: SendRequest<RequestBody>,
    driver: Driver,
    /// When it last went back to its pool.
    idle_since: Instant,
    /// The deadline of the exchange on it, one timer for all of them: a timer
    /// armed per request is an insert into and a removal from the runtime's
    /// timer wheel, under its lock, each time. Reset to a later deadline it
    /// stays where it is in the wheel (tokio moves it on only when the earlier
    /// one comes round).
    pub(super) head_deadline: Pin<Box<Sleep>>,
}

impl UpstreamConn {
    pub(super) fn new(sender: SendRequest<RequestBody>, driver: Driver) -> PooledConn {
        let now = Instant::now();
        Linked::new(UpstreamConn {
            sender,
            driver,
            idle_since: now,
            head_deadline: Box::pin(tokio::time::sleep_until(now.into())),
        })
    }

    /// Polls the connection; `Ready` means it has ended (closed or failed).
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.driver).poll(cx).map(|_| ())
    }

    /// Whether the connection can carry a new request: one poll lets hyper read a
    /// pending EOF or finish the previous exchange, then the handle must be ready.
    fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx).is_pending() && self.sender.is_ready()
    }
}

/// A connection on loan to one exchange; goes back to its pool when dropped
/// after the response body ended, and is closed otherwise.
pub struct Lease {
    conn: Option<PooledConn>,
    home: Arc<Endpoint>,
    kind: PoolKind,
    body_ended: bool,
}

impl Lease {
    pub(super) fn new(conn: Option<PooledConn>, home: Arc<Endpoint>, kind: PoolKind) -> Lease {
        Lease {
            conn,
            home,
            kind,
            body_ended: false,
        }
    }

    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = self.conn.as_mut()
            && conn.drive(cx).is_ready()
        {
            self.conn = None;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.body_ended {
            return;
        }
        if let Some(mut conn) = self.conn.take()
            && conn.is_reusable()
        {
            self.home.pools.get(self.kind).put(conn);
        }
    }
}

pin_project! {
    /// A model server's response body, which drives its connection as it is read.
    pub struct UpstreamBody {
        #[pin]
        body: Incoming,
        lease: Lease,
    }
}

impl UpstreamBody {
    pub(super) fn new(body: Incoming, mut lease: Lease) -> UpstreamBody {
        lease.body_ended = body.is_end_stream();
        UpstreamBody { body, lease }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        this.lease.drive(cx);
        let frame = std::task::ready!(this.body.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) => this.lease.body_ended = this.body.is_end_stream(),
            Some(Err(_)) => this.lease.conn = None,
            None => this.lease.body_ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
