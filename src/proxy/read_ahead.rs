//! Reading a request body ahead of forwarding it. Up to [`READ_AHEAD`] bytes are
//! read first, under the gateway's body budget: a body that ends within them
//! (most inference requests) is forwarded whole, checked against
//! `max_body_bytes` before anything is sent, and can be mirrored from the same
//! `Bytes`; a longer body streams to the model server after its first bytes, as
//! the client sends it. When the budget has no room, nothing is read ahead and
//! the body streams at once; nothing is refused for want of budget.
//!
//! [`ReadAhead`] is the request path's step for it: it waits for the client
//! until the request's deadline at most, and a client too slow to send its
//! first bytes in time is answered 408 (nothing was sent to a model server).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use pin_project_lite::pin_project;
use tokio::time::{Duration, Instant, timeout_at};
use tower::{Layer, Service};

use super::ProxyError;
use super::stack::{Answer, ClientBody, Refusal, Routed, always_ready};
use crate::llm::LlmCall;
use crate::upstream::budget::{BodyBudget, Reservation};

/// How much of a body is read before it is forwarded (nginx's
/// `client_body_buffer_size` plays the same part, at 8-16 KiB; inference
/// requests are often larger, and a whole body can be mirrored without a copy).
pub const READ_AHEAD: usize = 64 * 1024;

/// A request body after the read-ahead.
pub enum Ahead {
    /// All of it; `held` reserves its bytes (`None`: empty).
    Whole {
        bytes: Bytes,
        held: Option<Reservation>,
    },
    /// Its first bytes (perhaps none); the rest is still with the client.
    Partial {
        head: Bytes,
        held: Option<Reservation>,
        rest: Incoming,
    },
}

impl Ahead {
    /// The body's length as far as known now: all of it when read, else what
    /// was read plus what `Content-Length` promises (nothing for a chunked body).
    pub fn known_len(&self) -> usize {
        match self {
            Ahead::Whole { bytes, .. } => bytes.len(),
            Ahead::Partial { head, rest, .. } => {
                let promised = usize::try_from(rest.size_hint().lower()).unwrap_or(usize::MAX);
                head.len().saturating_add(promised)
            }
        }
    }
}

/// What reading a request body is bounded by: the gateway's body budget,
/// `max_body_bytes`, and the request's deadline.
#[derive(Clone)]
pub struct BodyLimits {
    pub budget: Arc<BodyBudget>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

impl BodyLimits {
    /// A reader of the body of a request that arrived at `started`.
    pub fn reader(&self, started: std::time::Instant) -> Reader<'_> {
        Reader {
            budget: &self.budget,
            max_body_bytes: self.max_body_bytes,
            deadline: Instant::from_std(started + self.request_timeout),
            request_timeout: self.request_timeout,
        }
    }
}

pub struct ReadAheadLayer {
    limits: BodyLimits,
}

impl ReadAheadLayer {
    pub fn new(limits: BodyLimits) -> ReadAheadLayer {
        ReadAheadLayer { limits }
    }
}

impl<S> Layer<S> for ReadAheadLayer {
    type Service = ReadAhead<S>;

    fn layer(&self, next: S) -> ReadAhead<S> {
        ReadAhead {
            limits: self.limits.clone(),
            next,
        }
    }
}

pub struct ReadAhead<S> {
    limits: BodyLimits,
    next: S,
}

impl<'a, S> Service<Routed<ClientBody>> for &'a ReadAhead<S>
where
    &'a S: Service<Routed<Ahead>, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Reading<'a, S, <&'a S as Service<Routed<Ahead>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, routed: Routed<ClientBody>) -> Self::Future {
        let this: &'a ReadAhead<S> = self;
        let (body, routed) = routed.take_body();
        let mut next = &this.next;
        let body = match body {
            ClientBody::Unread(body) => body,
            // Read whole already, to be routed.
            ClientBody::Read { bytes, held }
            | ClientBody::Call {
                call: LlmCall { body: bytes, .. },
                held,
            } => {
                return Reading::Calling {
                    next: next.call(routed.with_body(Ahead::Whole { bytes, held })),
                };
            }
        };
        if body.is_end_stream() {
            let ahead = Ahead::Whole {
                bytes: Bytes::new(),
                held: None,
            };
            return Reading::Calling {
                next: next.call(routed.with_body(ahead)),
            };
        }
        let reader = this.limits.reader(routed.started);
        Reading::Body {
            read: Box::pin(async move { reader.read(body).await }),
            routed: Some(routed),
            next,
        }
    }
}

/// The read-ahead, an `async` block, boxed (stable Rust cannot name it).
type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<Ahead, ProxyError>> + Send + 'a>>;

pin_project! {
    /// [`ReadAhead`]'s future: the body's first bytes, then the next service.
    #[project = ReadingProj]
    pub enum Reading<'a, S, F> {
        Body {
            read: ReadFuture<'a>,
            routed: Option<Routed<()>>,
            next: &'a S,
        },
        Calling { #[pin] next: F },
    }
}

impl<'a, S, F> Future for Reading<'a, S, F>
where
    &'a S: Service<Routed<Ahead>, Response = Answer, Error = Refusal, Future = F>,
    F: Future<Output = Result<Answer, Refusal>>,
{
    type Output = Result<Answer, Refusal>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ReadingProj::Calling { next } => return next.poll(cx),
                ReadingProj::Body { read, routed, next } => {
                    let read = ready!(read.as_mut().poll(cx));
                    let Some(routed) = routed.take() else {
                        panic!("Reading polled after it completed");
                    };
                    let ahead = match read {
                        Ok(ahead) => ahead,
                        Err(error) => return Poll::Ready(Err(Refusal::on(routed.route, error))),
                    };
                    let next = next.call(routed.with_body(ahead));
                    self.set(Reading::Calling { next });
                }
            }
        }
    }
}

/// The limits of reading one request's body.
pub struct Reader<'a> {
    budget: &'a Arc<BodyBudget>,
    max_body_bytes: usize,
    deadline: Instant,
    request_timeout: Duration,
}

impl Reader<'_> {
    /// Reads all of `body`, up to `max_body_bytes`, held in the body budget: a
    /// body that must be read whole to be routed. One the budget has no room
    /// for is refused, since it cannot be streamed instead.
    pub async fn read_whole(
        &self,
        mut body: Incoming,
    ) -> Result<(Bytes, Option<Reservation>), ProxyError> {
        let too_large = ProxyError::BodyTooLarge {
            limit: self.max_body_bytes,
        };
        if body.size_hint().lower() > self.max_body_bytes as u64 {
            return Err(too_large);
        }
        let no_room = ProxyError::BodyBudgetFull {
            limit: self.budget.limit(),
        };
        let mut held = self.budget.empty();
        let expected = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
        if !held.grow(expected) {
            return Err(no_room);
        }
        let mut head = Head::default();
        while !body.is_end_stream() {
            let Some(data) = self.next_data(&mut body).await? else {
                break;
            };
            let len = head.len() + data.len();
            if len > self.max_body_bytes {
                return Err(too_large);
            }
            if len > held.bytes() && !held.grow(len - held.bytes()) {
                return Err(no_room);
            }
            head.push(data);
        }
        let bytes = head.into_bytes();
        let held = held.shrunk_to(bytes.len());
        Ok((bytes, held))
    }

    /// The body's next data before the deadline; `None` at its end (trailers,
    /// which are not forwarded, are skipped).
    async fn next_data(&self, body: &mut Incoming) -> Result<Option<Bytes>, ProxyError> {
        loop {
            let frame = match timeout_at(self.deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_elapsed) => return Err(ProxyError::ClientTimeout(self.request_timeout)),
            };
            match frame {
                None => return Ok(None),
                Some(Err(error)) => {
                    return Err(ProxyError::BadRequest(format!(
                        "request body could not be read: {error}"
                    )));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Reads `body` up to [`READ_AHEAD`] bytes or its end, whichever is first.
    pub async fn read(&self, mut body: Incoming) -> Result<Ahead, ProxyError> {
        if body.is_end_stream() {
            return Ok(Ahead::Whole {
                bytes: Bytes::new(),
                held: None,
            });
        }
        let hint = body.size_hint();
        if hint.lower() > self.max_body_bytes as u64 {
            return Err(ProxyError::BodyTooLarge {
                limit: self.max_body_bytes,
            });
        }
        let expected = hint
            .exact()
            .map_or(READ_AHEAD, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let mut held = self.budget.empty();
        if !held.grow(expected.min(READ_AHEAD)) {
            return Ok(Ahead::Partial {
                head: Bytes::new(),
                held: None,
                rest: body,
            });
        }
        let mut head = Head::default();
        loop {
            if body.is_end_stream() {
                return Ok(head.whole(held));
            }
            if head.len() >= READ_AHEAD {
                return Ok(head.partial(held, body));
            }
            let Some(data) = self.next_data(&mut body).await? else {
                return Ok(head.whole(held));
            };
            let len = head.len() + data.len();
            if len > self.max_body_bytes {
                return Err(ProxyError::BodyTooLarge {
                    limit: self.max_body_bytes,
                });
            }
            let fits = len <= held.bytes() || held.grow(len - held.bytes());
            head.push(data);
            if !fits {
                // Already read, so it goes out first; nothing more is read ahead.
                return Ok(head.partial(held, body));
            }
        }
    }
}

/// The bytes read so far: one chunk as it came, or several copied together.
#[derive(Default)]
struct Head {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Head {
    fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, data: Bytes) {
        if let Some(joined) = self.joined.as_mut() {
            joined.extend_from_slice(&data);
        } else if self.first.is_empty() {
            self.first = data;
        } else {
            let mut joined = BytesMut::with_capacity(self.first.len() + data.len());
            joined.extend_from_slice(&self.first);
            joined.extend_from_slice(&data);
            self.first = Bytes::new();
            self.joined = Some(joined);
        }
    }

    fn into_bytes(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }

    /// The whole body; the reservation shrinks to what it holds.
    fn whole(self, held: Reservation) -> Ahead {
        let bytes = self.into_bytes();
        let held = held.shrunk_to(bytes.len());
        Ahead::Whole { bytes, held }
    }

    fn partial(self, held: Reservation, rest: Incoming) -> Ahead {
        let head = self.into_bytes();
        let held = held.shrunk_to(head.len());
        Ahead::Partial { head, held, rest }
    }
}
