//! Tee of production's answer for comparison: the response body keeps a reference
//! to each frame it streams (a `Bytes` clone, no copy) and hands the whole answer
//! over when the last frame has gone to the client. The client never waits for it.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use tokio::sync::oneshot;

/// Production's complete answer.
#[derive(Debug, Clone)]
pub struct Captured {
    pub status: u16,
    /// `Inference-Header-Content-Length`, for the comparator.
    pub binary_header: Option<HeaderValue>,
    /// The body's frames as they streamed (joined later, off the data plane);
    /// `None` when the answer was larger than the comparison limit.
    pub body: Option<Frames>,
    /// From the start of the request to the last byte.
    pub latency: Duration,
    /// From the start of the request to the first body bytes (a streamed
    /// answer's first event).
    pub first_frame: Option<Duration>,
}

/// A body as the frames it arrived in.
#[derive(Debug, Clone, Default)]
pub struct Frames(pub Vec<Bytes>);

impl Frames {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    /// One contiguous body (a copy only when there were several frames).
    pub fn join(self) -> Bytes {
        match self.0.len() {
            0 => Bytes::new(),
            1 => self.0.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.len());
                self.0.iter().for_each(|f| joined.extend_from_slice(f));
                joined.freeze()
            }
        }
    }
}

/// The receiving end, held by the mirror task.
pub type CaptureReceiver = oneshot::Receiver<Captured>;

/// The sending end, held by the response body. Dropped without finishing (the
/// answer failed or the client went away), the receiver learns it was incomplete.
pub struct Capture {
    status: u16,
    binary_header: Option<HeaderValue>,
    frames: Vec<Bytes>,
    size: usize,
    limit: usize,
    started: Instant,
    first_frame: Option<Duration>,
    done: Option<oneshot::Sender<Captured>>,
}

/// A pending capture: created before the primary is sent, started once its
/// response head is known.
pub struct CaptureSender {
    sender: oneshot::Sender<Captured>,
    limit: usize,
    started: Instant,
}

pub fn channel(limit: usize, started: Instant) -> (CaptureSender, CaptureReceiver) {
    let (sender, receiver) = oneshot::channel();
    (
        CaptureSender {
            sender,
            limit,
            started,
        },
        receiver,
    )
}

impl CaptureSender {
    /// Starts capturing an answer with `status` and the binary-extension
    /// header `binary_header`.
    pub fn start(self, status: u16, binary_header: Option<HeaderValue>) -> Capture {
        Capture {
            status,
            binary_header,
            frames: Vec::new(),
            size: 0,
            limit: self.limit,
            started: self.started,
            first_frame: None,
            done: Some(self.sender),
        }
    }
}

impl Capture {
    pub fn push(&mut self, data: &Bytes) {
        if self.first_frame.is_none() && !data.is_empty() {
            self.first_frame = Some(self.started.elapsed());
        }
        self.size = self.size.saturating_add(data.len());
        if self.size <= self.limit {
            self.frames.push(data.clone());
        } else {
            self.frames.clear();
        }
    }

    /// The answer's trailers: a gRPC answer's outcome is its `grpc-status`,
    /// compared as the HTTP status it stands for.
    pub fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(code) = crate::grpc::status::grpc_status(trailers) {
            let http = http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::OK);
            self.status = crate::grpc::status::http_equivalent(code, http).as_u16();
        }
    }

    /// The answer is complete: hand it over.
    pub fn finish(&mut self) {
        let Some(done) = self.done.take() else { return };
        let body = (self.size <= self.limit).then(|| Frames(std::mem::take(&mut self.frames)));
        let _ = done.send(Captured {
            status: self.status,
            binary_header: self.binary_header.take(),
            body,
            latency: self.started.elapsed(),
            first_frame: self.first_frame,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_joined_and_limits_respected() {
        let (sender, receiver) = channel(10, Instant::now());
        let mut capture = sender.start(200, None);
        capture.push(&Bytes::from_static(b"{\"a\":"));
        capture.push(&Bytes::from_static(b"1}"));
        capture.finish();
        let captured = receiver.await.unwrap();
        assert_eq!(captured.status, 200);
        assert_eq!(
            captured.body.unwrap().join(),
            Bytes::from_static(b"{\"a\":1}")
        );

        let (sender, receiver) = channel(4, Instant::now());
        let mut capture = sender.start(200, None);
        capture.push(&Bytes::from_static(b"too long"));
        capture.finish();
        assert!(receiver.await.unwrap().body.is_none());

        let (sender, receiver) = channel(4, Instant::now());
        drop(sender.start(200, None));
        assert!(
            receiver.await.is_err(),
            "an unfinished capture means an incomplete answer"
        );
    }
}
