//! [`ResponseBody`]: what the gateway sends back, either the model server's body
//! streamed through or a body of its own (errors), plus the guards that keep a
//! request counted until its last byte is sent.
//!
//! A model server that sends its response head and then stalls would otherwise
//! hold the request's admission slot forever; a streamed body that makes no
//! progress for the idle timeout is ended with an error instead (the client sees
//! the connection or stream reset, never a silently truncated answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::ProxyError;
use super::llm_meter::LlmMeter;
use crate::grpc::status::{Code, grpc_status, http_equivalent, put_status};
use crate::routing::{EndpointGuard, VersionRoute};
use crate::shadow::capture::Capture;
use crate::telemetry::UpstreamErrorKind;
use crate::upstream::admission::Permit;
use crate::upstream::pool::UpstreamBody;

pin_project! {
    /// The body of every data-plane response.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream {
            #[pin]
            body: UpstreamBody,
            stream: Streaming,
        },
        Local { #[pin] body: Full<Bytes> },
        /// A body of the gateway's own followed by trailers (a gRPC answer).
        Trailed { data: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

/// A forwarded body's state. Dropped with the body: the admission permit and the
/// endpoint's outstanding count end with the last byte, not the response head.
struct Streaming {
    /// The gateway's admission slot and, if the version has a limit, its own.
    permits: [Option<Permit>; 2],
    _endpoint: EndpointGuard,
    route: Arc<VersionRoute>,
    idle_timeout: Duration,
    /// Created the first time the upstream body is pending, so bodies that arrive
    /// with their head (most inference answers) never touch the timer.
    idle: Option<Pin<Box<Sleep>>>,
    /// Whether `idle` counts the current wait (it is re-armed after progress).
    armed: bool,
    /// Production's answer for shadow comparison, when this request was mirrored.
    capture: Option<Capture>,
    /// The measurements of an OpenAI-style answer.
    llm: Option<Box<LlmMeter>>,
    /// A gRPC answer: a failure ends it with a status in trailers (what gRPC
    /// clients read), not a reset stream. Set once those trailers are sent.
    grpc: bool,
    ended: bool,
}

impl ResponseBody {
    /// A body the gateway produced itself.
    pub fn local(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            kind: Kind::Local {
                body: Full::new(bytes),
            },
        }
    }

    /// A body of the gateway's own, then `trailers`.
    pub fn trailed(data: Bytes, trailers: HeaderMap) -> ResponseBody {
        ResponseBody {
            kind: Kind::Trailed {
                data: Some(data),
                trailers: Some(trailers),
            },
        }
    }

    /// A model server's body, streamed through; it fails after `idle_timeout`
    /// without a frame.
    pub fn upstream(
        body: UpstreamBody,
        endpoint: EndpointGuard,
        route: Arc<VersionRoute>,
        idle_timeout: Duration,
    ) -> ResponseBody {
        let stream = Streaming {
            permits: [None, None],
            _endpoint: endpoint,
            route,
            idle_timeout,
            idle: None,
            armed: false,
            capture: None,
            llm: None,
            grpc: false,
            ended: false,
        };
        ResponseBody {
            kind: Kind::Upstream { body, stream },
        }
    }

    /// Keeps an admission slot until the body has been sent; a body of the
    /// gateway's own is complete already and frees it now.
    pub fn hold(&mut self, permit: Permit) {
        if let Kind::Upstream { stream, .. } = &mut self.kind {
            let slot = stream.permits.iter_mut().find(|slot| slot.is_none());
            // Two holders (the gateway's admission and the version's); a third
            // would free its slot at the head.
            debug_assert!(slot.is_some(), "more permits than slots");
            if let Some(slot) = slot {
                *slot = Some(permit);
            }
        }
    }

    /// Makes a failure of this (gRPC) answer end it with a gRPC status.
    pub fn ends_with_grpc_status(&mut self) {
        if let Kind::Upstream { stream, .. } = &mut self.kind {
            stream.grpc = true;
        }
    }

    /// Measures this OpenAI-style answer as it streams.
    pub fn meter_llm(&mut self, meter: LlmMeter) {
        if let Kind::Upstream { stream, .. } = &mut self.kind {
            stream.llm = Some(Box::new(meter));
        }
    }

    /// Feeds production's answer to the shadow comparison as it streams.
    pub fn capture(&mut self, mut capture: Capture) {
        if let Kind::Upstream { body, stream } = &mut self.kind {
            if body.is_end_stream() {
                // hyper will not poll an empty body; the answer is complete now.
                capture.finish();
            }
            stream.capture = Some(capture);
        }
    }
}

/// `a` then `b` (a copy only when both have bytes).
fn joined(a: Bytes, b: Bytes) -> Bytes {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a,
        (true, false) => b,
        (false, false) => [a, b].concat().into(),
    }
}

/// What metering made of a frame.
enum Metered {
    Pass(Option<Result<Frame<Bytes>, ProxyError>>),
    /// An empty data frame (an empty chunk must not be sent).
    Nothing,
}

impl Streaming {
    /// Passes a frame through the LLM meter, if the answer has one; records it
    /// once the answer has ended.
    fn metered(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
        ended: bool,
    ) -> Metered {
        let Some(meter) = self.llm.as_mut() else {
            return Metered::Pass(frame.map(|f| f.map_err(ProxyError::UpstreamBody)));
        };
        let frame = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let mut pass = meter.frame(data);
                    if ended {
                        pass = joined(pass, meter.rest());
                        meter.finish(&self.route);
                    }
                    match (pass.is_empty(), ended) {
                        (true, false) => return Metered::Nothing,
                        (true, true) => None,
                        (false, _) => Some(Ok(Frame::data(pass))),
                    }
                }
                Err(trailers) => {
                    if ended {
                        meter.finish(&self.route);
                    }
                    Some(Ok(trailers))
                }
            },
            None => {
                let rest = meter.rest();
                meter.finish(&self.route);
                (!rest.is_empty()).then(|| Ok(Frame::data(rest)))
            }
            Some(Err(error)) => Some(Err(ProxyError::UpstreamBody(error))),
        };
        Metered::Pass(frame)
    }

    /// Feeds the capture and counts upstream failures. hyper stops polling once
    /// `is_end_stream` is true, so the capture finishes on the last data frame too.
    fn observe(&mut self, frame: Option<&Result<Frame<Bytes>, hyper::Error>>, ended: bool) {
        match frame {
            Some(Ok(frame)) => {
                if let (Some(capture), Some(data)) = (self.capture.as_mut(), frame.data_ref()) {
                    capture.push(data);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    self.trailers(trailers);
                }
                if ended {
                    self.capture.iter_mut().for_each(Capture::finish);
                }
            }
            Some(Err(_)) => {
                self.route
                    .metrics
                    .upstream_error(UpstreamErrorKind::Protocol);
                // The head was counted as answered; the rollout gates must still
                // see the failure.
                self.route.stats.count_late_error();
                self.capture = None;
            }
            None => self.capture.iter_mut().for_each(Capture::finish),
        }
    }

    /// A gRPC answer's outcome comes in its trailers, after the head was counted
    /// as answered: a server-side failure there counts for the rollout gates as
    /// a failed body does.
    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(capture) = self.capture.as_mut() {
            capture.trailers(trailers);
        }
        if is_server_failure(trailers) {
            self.route.stats.count_late_error();
        }
    }

    /// How a failed answer ends: an error (the stream or connection is reset),
    /// or for gRPC the status a client reads, in trailers.
    fn failure(&mut self, error: ProxyError) -> Result<Frame<Bytes>, ProxyError> {
        if !self.grpc {
            return Err(error);
        }
        self.ended = true;
        let code = match error {
            ProxyError::UpstreamBodyStalled { .. } => Code::DeadlineExceeded,
            _ => Code::Unavailable,
        };
        let mut trailers = HeaderMap::new();
        put_status(&mut trailers, code, &error.to_string());
        Ok(Frame::trailers(trailers))
    }

    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<ProxyError> {
        let deadline = Instant::now() + self.idle_timeout;
        let idle = match &mut self.idle {
            Some(idle) if self.armed => idle,
            Some(idle) => {
                idle.as_mut().reset(deadline);
                idle
            }
            None => self
                .idle
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        ready!(idle.as_mut().poll(cx));
        self.route
            .metrics
            .upstream_error(UpstreamErrorKind::Timeout);
        self.route.stats.count_late_error();
        Poll::Ready(ProxyError::UpstreamBodyStalled {
            timeout: self.idle_timeout,
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        match self.project().kind.project() {
            KindProj::Local { body } => match ready!(body.poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(Err(never)) => match never {},
                None => Poll::Ready(None),
            },
            KindProj::Trailed { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            KindProj::Upstream { stream, .. } if stream.ended => Poll::Ready(None),
            KindProj::Upstream { mut body, stream } => loop {
                let failed = match body.as_mut().poll_frame(cx) {
                    Poll::Ready(frame) => {
                        // Progress: the next wait gets a full idle period.
                        stream.armed = false;
                        let ended = body.is_end_stream();
                        stream.observe(frame.as_ref(), ended);
                        match frame {
                            Some(Err(error)) => ProxyError::UpstreamBody(error),
                            frame => match stream.metered(frame, ended) {
                                // All of it held back or left out: read on.
                                Metered::Nothing => continue,
                                Metered::Pass(frame) => return Poll::Ready(frame),
                            },
                        }
                    }
                    Poll::Pending => ready!(stream.poll_idle(cx)),
                };
                return Poll::Ready(Some(stream.failure(failed)));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, stream } => stream.ended || body.is_end_stream(),
            Kind::Local { body } => body.is_end_stream(),
            Kind::Trailed { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            // Metering may leave bytes out: the server's length is not ours.
            Kind::Upstream { stream, .. } if stream.llm.is_some() => SizeHint::default(),
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Local { body } => body.size_hint(),
            Kind::Trailed { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Whether trailers carry a gRPC status that is the server's failure (as a 5xx
/// would be: `INTERNAL`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...), not the
/// caller's (`NOT_FOUND`, `INVALID_ARGUMENT`, ...).
fn is_server_failure(trailers: &HeaderMap) -> bool {
    grpc_status(trailers)
        .is_some_and(|code| http_equivalent(code, http::StatusCode::OK).is_server_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::status::{Code, put_status};

    #[test]
    fn server_side_grpc_statuses_in_trailers_count_as_failures_and_others_do_not() {
        let with = |code| {
            let mut trailers = HeaderMap::new();
            put_status(&mut trailers, code, "");
            is_server_failure(&trailers)
        };
        for code in [
            Code::Internal,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unknown,
        ] {
            assert!(with(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Cancelled,
        ] {
            assert!(!with(code), "{code:?}");
        }
        assert!(
            !is_server_failure(&HeaderMap::new()),
            "HTTP trailers without a status"
        );
    }
}
