//! Reading a request body ahead of forwarding it. Up to [`READ_AHEAD`] bytes are
//! read first, under the gateway's body budget: a body that ends within them
//! (most inference requests) is forwarded whole, checked against
//! `max_body_bytes` before anything is sent, and can be mirrored from the same
//! `Bytes`; a longer body streams to the model server after its first bytes, as
//! the client sends it. When the budget has no room, nothing is read ahead and
//! the body streams at once; nothing is refused for want of budget.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::{Duration, Instant, timeout_at};

use super::ProxyError;
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

/// The limits of one read-ahead.
pub struct ReadAhead<'a> {
    pub budget: &'a Arc<BodyBudget>,
    pub max_body_bytes: usize,
    pub deadline: Instant,
    pub request_timeout: Duration,
}

impl ReadAhead<'_> {
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
            let frame = match timeout_at(self.deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_elapsed) => return Err(ProxyError::ClientTimeout(self.request_timeout)),
            };
            let data = match frame {
                None => return Ok(head.whole(held)),
                Some(Err(error)) => {
                    return Err(ProxyError::BadRequest(format!(
                        "request body could not be read: {error}"
                    )));
                }
                // Request trailers are not forwarded.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_trailers) => continue,
                },
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
