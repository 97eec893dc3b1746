//! [`RequestBody`]: the body of a request sent to a model server. Either whole
//! (read before sending: small bodies, and mirrors) or streamed from the client
//! as it arrives, after what was read ahead of sending; a streamed body can keep
//! a copy for a mirror ([`BodyCopy`]) within the shadow's `max_body_bytes` and
//! the gateway's [`BodyBudget`](super::budget::BodyBudget).
//!
//! A streamed body tells the request path what happened to it ([`Progress`]),
//! so a client that is slow, aborts, or sends too much is not blamed on the
//! model server (and never counts against its endpoint's health).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use super::budget::Reservation;

pin_project! {
    #[project = RequestBodyProj]
    pub enum RequestBody {
        /// Sent in one frame; the reservation covers the bytes until they are sent.
        Whole { bytes: Option<Bytes>, held: Option<Reservation> },
        /// Boxed: whole bodies are the common case, and every request, whole
        /// or not, is as large as the largest variant.
        Streamed { body: Pin<Box<Streamed>> },
    }
}

pin_project! {
    /// A client's body on its way through: `head` (read ahead, under `held`)
    /// first, then the rest as the client sends it.
    pub struct Streamed {
        head: Option<Bytes>,
        held: Option<Reservation>,
        #[pin]
        rest: Incoming,
        limit: usize,
        received: usize,
        copy: Option<BodyCopy>,
        progress: Arc<Progress>,
    }
}

/// Why a streamed body ended early, as the model server's connection sees it.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body could not be read: {0}")]
    Client(#[source] hyper::Error),
}

/// Where a streamed body is, read by the request path once the exchange with
/// the model server ended or timed out.
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStage {
    /// The body is being sent, or waits for the model server to take more.
    Sending,
    /// The body waits for the client to send more.
    WaitingForClient,
    Complete,
    TooLarge,
    ClientFailed,
}

impl Progress {
    fn set(&self, stage: BodyStage) {
        // Written and read by the one task that drives the exchange.
        self.0.store(stage as u8, Ordering::Relaxed);
    }

    pub fn stage(&self) -> BodyStage {
        match self.0.load(Ordering::Relaxed) {
            0 => BodyStage::Sending,
            1 => BodyStage::WaitingForClient,
            2 => BodyStage::Complete,
            3 => BodyStage::TooLarge,
            _ => BodyStage::ClientFailed,
        }
    }
}

/// A mirror's copy of a streamed body, sent whole to the mirror when the body
/// has ended, or given up (and the mirror told why).
pub struct BodyCopy {
    bytes: BytesMut,
    limit: usize,
    held: Reservation,
    sender: oneshot::Sender<Copied>,
}

/// What a mirror gets of a streamed body. A mirror whose copy is dropped
/// unsent (the request ended early) sees the channel closed.
#[derive(Debug)]
pub enum Copied {
    Whole {
        bytes: Bytes,
        held: Reservation,
    },
    /// The body went past the shadow's `max_body_bytes`.
    TooLarge,
    /// The gateway's body budget had no room for the copy.
    OverBudget,
}

impl BodyCopy {
    /// A copy starting with `head` (already read), bounded by `limit`, its bytes
    /// reserved in `held` as they are copied; `None` with the reason when the
    /// head alone does not fit.
    pub fn start(
        head: &[u8],
        limit: usize,
        held: Reservation,
        expected: usize,
    ) -> (Option<BodyCopy>, oneshot::Receiver<Copied>) {
        let (sender, receiver) = oneshot::channel();
        let mut copy = BodyCopy {
            bytes: BytesMut::with_capacity(expected.min(limit)),
            limit,
            held,
            sender,
        };
        if let Err(refused) = copy.add(head) {
            let _ = copy.sender.send(refused);
            return (None, receiver);
        }
        (Some(copy), receiver)
    }

    fn add(&mut self, chunk: &[u8]) -> Result<(), Copied> {
        if self.bytes.len() + chunk.len() > self.limit {
            return Err(Copied::TooLarge);
        }
        if !self.held.grow(chunk.len()) {
            return Err(Copied::OverBudget);
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(self) {
        let copied = Copied::Whole {
            bytes: self.bytes.freeze(),
            held: self.held,
        };
        let _ = self.sender.send(copied);
    }
}

impl RequestBody {
    pub fn whole(bytes: Bytes, held: Option<Reservation>) -> RequestBody {
        RequestBody::Whole {
            bytes: (!bytes.is_empty()).then_some(bytes),
            held,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody::Whole {
            bytes: None,
            held: None,
        }
    }

    /// `head`, then the rest of the client's body, refused past `limit` bytes in
    /// all; the progress handle says how far it got.
    pub fn streamed(
        head: Bytes,
        held: Option<Reservation>,
        rest: Incoming,
        limit: usize,
        copy: Option<BodyCopy>,
    ) -> (RequestBody, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        let body = Streamed {
            received: head.len(),
            head: (!head.is_empty()).then_some(head),
            held,
            rest,
            limit,
            copy,
            progress: Arc::clone(&progress),
        };
        let body = Box::pin(body);
        (RequestBody::Streamed { body }, progress)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            RequestBodyProj::Whole { bytes, held } => {
                let frame = bytes.take().map(|bytes| Ok(Frame::data(bytes)));
                held.take();
                Poll::Ready(frame)
            }
            RequestBodyProj::Streamed { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Whole { bytes, .. } => bytes.is_none(),
            RequestBody::Streamed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Whole { bytes, .. } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Streamed { body } => body.size_hint(),
        }
    }
}

/// The client's body has ended: say so, and hand the mirror its copy.
fn complete(progress: &Progress, copy: &mut Option<BodyCopy>) {
    progress.set(BodyStage::Complete);
    if let Some(copy) = copy.take() {
        copy.finish();
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        if let Some(head) = this.head.take() {
            // Sent: the bytes are hyper's to write now, no longer held here.
            this.held.take();
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        this.progress.set(BodyStage::WaitingForClient);
        let frame = ready!(this.rest.as_mut().poll_frame(cx));
        this.progress.set(BodyStage::Sending);
        let frame = match frame {
            None => {
                complete(this.progress, this.copy);
                return Poll::Ready(None);
            }
            Some(Err(error)) => {
                this.progress.set(BodyStage::ClientFailed);
                this.copy.take();
                return Poll::Ready(Some(Err(BodyError::Client(error))));
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            *this.received += data.len();
            if *this.received > *this.limit {
                this.progress.set(BodyStage::TooLarge);
                this.copy.take();
                let limit = *this.limit;
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
            }
            if let Some(copy) = this.copy.as_mut()
                && let Err(refused) = copy.add(data)
                && let Some(copy) = this.copy.take()
            {
                let _ = copy.sender.send(refused);
            }
        }
        if this.rest.is_end_stream() {
            complete(this.progress, this.copy);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}
