//! [`Forward`]: the bottom of the request path. Sends the request to the
//! endpoint [`super::balance::Balance`] picked, at the path the model server
//! serves, and waits for the answer's head until the request's deadline (on the
//! connection's own timer, see [`crate::upstream::pool`]); the rest of the
//! answer streams to the client through [`ResponseBody`]. A failure is the model
//! server's (502/504, counted against its health) unless the streamed request
//! body says the client was why (413, 408, 400).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::Service;

use super::headers::strip_hop_by_hop;
use super::llm_meter::LlmMeter;
use super::mirror::Outgoing;
use super::respond::answered;
use super::stack::{Answer, Refusal, Routed, Target, always_ready};
use super::{ProxyError, ResponseBody};
use crate::routing::{EndpointGuard, VersionRoute};
use crate::upstream::UpstreamError;
use crate::upstream::client::{HeadDeadline, UpstreamClient, record_health};
use crate::upstream::health::EjectionPolicy;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::request_body::{BodyStage, Progress};

pub struct Forward {
    client: UpstreamClient,
    timeouts: Timeouts,
    max_body_bytes: usize,
    ejection: EjectionPolicy,
}

/// How long the model server may take: for the answer's head and between the
/// frames of its body.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub request: Duration,
    /// An OpenAI-compatible call: a generation takes long to start and as long
    /// as it needs to stream, so its limits are its own.
    pub llm_first_byte: Duration,
    pub llm_idle: Duration,
}

impl Forward {
    pub fn new(
        client: UpstreamClient,
        timeouts: Timeouts,
        max_body_bytes: usize,
        ejection: EjectionPolicy,
    ) -> Forward {
        Forward {
            client,
            timeouts,
            max_body_bytes,
            ejection,
        }
    }

    fn forward(&self, routed: Routed<Outgoing, Target>) -> Forwarding<'_> {
        let Routed {
            mut parts,
            body: Outgoing { body, progress },
            target: Target { endpoint, uri },
            started,
            route,
            llm,
            ..
        } = routed;
        parts.uri = uri;
        let (head_timeout, idle_timeout) = match llm {
            Some(_) => (self.timeouts.llm_first_byte, self.timeouts.llm_idle),
            None => (self.timeouts.request, self.timeouts.request),
        };
        let llm_usage_added = llm.map(|l| l.usage_added);
        let deadline = HeadDeadline {
            at: Instant::from_std(started + head_timeout),
            timeout: head_timeout,
        };
        let request = Request::from_parts(parts, body);
        let send: Sending<'_> = Box::pin(self.client.send(
            Arc::clone(endpoint.endpoint()),
            request,
            deadline,
        ));
        Forwarding {
            sent: send,
            forward: self,
            waiting: Some(Waiting {
                endpoint,
                route,
                progress,
                started,
                idle_timeout,
                llm_usage_added,
            }),
        }
    }

    /// The answer, or why there is none, once the exchange has ended.
    fn answer(&self, result: Sent, waiting: Waiting) -> Result<Answer, Refusal> {
        let Waiting {
            endpoint,
            route,
            progress,
            started,
            idle_timeout,
            llm_usage_added,
        } = waiting;
        if result.is_err()
            && let Some(error) = progress.and_then(|p| self.client_fault(&p))
        {
            // The client's doing, not the model server's: its health is untouched.
            return Err(Refusal::on(route, error));
        }
        record_health(endpoint.endpoint(), &result, &self.ejection);
        let (mut parts, body) = match result {
            Ok(response) => response.into_parts(),
            Err(error) => return Err(Refusal::on(route, error.into())),
        };
        strip_hop_by_hop(&mut parts.headers);
        answered(&route, &mut parts.headers, parts.status, started);
        let meter = llm_usage_added
            .filter(|_| parts.status.is_success())
            .map(|strip| LlmMeter::new(started, is_event_stream(&parts.headers), strip));
        if llm_usage_added == Some(true) && meter.is_some() {
            // Leaving the usage event out shortens the body: its length is
            // no longer the server's.
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let mut body = ResponseBody::upstream(body, endpoint, route, idle_timeout);
        if let Some(meter) = meter {
            body.meter_llm(meter);
        }
        Ok(Answer::from_parts(parts, body))
    }

    /// What the client did wrong, when a streamed body is why the exchange failed.
    fn client_fault(&self, progress: &Progress) -> Option<ProxyError> {
        match progress.stage() {
            BodyStage::TooLarge => Some(ProxyError::BodyTooLarge {
                limit: self.max_body_bytes,
            }),
            BodyStage::ClientFailed => Some(ProxyError::BadRequest(
                "request body could not be read: the client stopped sending it".to_string(),
            )),
            BodyStage::WaitingForClient => Some(ProxyError::ClientTimeout(self.timeouts.request)),
            BodyStage::Sending | BodyStage::Complete => None,
        }
    }
}

impl<'a> Service<Routed<Outgoing, Target>> for &'a Forward {
    type Response = Answer;
    type Error = Refusal;
    type Future = Forwarding<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, routed: Routed<Outgoing, Target>) -> Forwarding<'a> {
        let this: &'a Forward = self;
        this.forward(routed)
    }
}

/// The client's exchange, an `async fn`: boxed, as stable Rust cannot name it.
/// Only it is boxed (960 bytes, within glibc's per-thread cache; the whole
/// forwarding state, 2.3 KB, was not and cost a slow allocation per request).
type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a>>;

type Sent = Result<Response<UpstreamBody>, UpstreamError>;

/// What the answer needs once the exchange ends.
struct Waiting {
    endpoint: EndpointGuard,
    route: Arc<VersionRoute>,
    progress: Option<Arc<Progress>>,
    started: std::time::Instant,
    idle_timeout: Duration,
    /// An OpenAI-style call: whether the gateway asked for its usage event.
    llm_usage_added: Option<bool>,
}

/// Whether an answer streams as server-sent events.
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// [`Forward`]'s future: the exchange, until the request's deadline.
pub struct Forwarding<'a> {
    sent: Sending<'a>,
    forward: &'a Forward,
    waiting: Option<Waiting>,
}

impl Future for Forwarding<'_> {
    type Output = Result<Answer, Refusal>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let sent = ready!(this.sent.as_mut().poll(cx));
        let Some(waiting) = this.waiting.take() else {
            panic!("Forwarding polled after it completed");
        };
        Poll::Ready(this.forward.answer(sent, waiting))
    }
}
