//! [`Respond`]: the top of the request path. Every request gets an answer: a
//! refusal from any step below becomes its JSON error response, counted on the
//! route it had (with the `x-stagegate-*` headers) or as unrouted. Answers from
//! a model server are counted by [`answered`] when their head arrives.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::header::{HeaderMap, HeaderName};
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::ResponseBody;
use super::stack::{Answer, Inbound, Refusal};
use crate::llm;
use crate::routing::{Router, VersionRoute};

pub const X_STAGEGATE_MODEL: HeaderName = HeaderName::from_static("x-stagegate-model");
pub const X_STAGEGATE_VERSION: HeaderName = HeaderName::from_static("x-stagegate-version");
pub const X_STAGEGATE_STAGE: HeaderName = HeaderName::from_static("x-stagegate-stage");

pub struct RespondLayer {
    router: Arc<Router>,
}

impl RespondLayer {
    pub fn new(router: Arc<Router>) -> RespondLayer {
        RespondLayer { router }
    }
}

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, next: S) -> Respond<S> {
        Respond {
            router: Arc::clone(&self.router),
            next,
        }
    }
}

pub struct Respond<S> {
    router: Arc<Router>,
    next: S,
}

impl<'a, S> Service<Inbound> for &'a Respond<S>
where
    &'a S: Service<Inbound, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Responding<'a, <&'a S as Service<Inbound>>::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this: &'a Respond<S> = self;
        let started = inbound.started;
        let openai = llm::is_call(inbound.request.uri().path());
        let mut next = &this.next;
        Responding {
            next: next.call(inbound),
            router: &this.router,
            started,
            openai,
        }
    }
}

pin_project! {
    pub struct Responding<'a, F> {
        #[pin]
        next: F,
        router: &'a Router,
        started: Instant,
        // Refusals on the OpenAI-compatible paths are written in OpenAI's shape.
        openai: bool,
    }
}

impl<F> Future for Responding<'_, F>
where
    F: Future<Output = Result<Answer, Refusal>>,
{
    type Output = Result<Answer, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = match ready!(this.next.poll(cx)) {
            Ok(answer) => answer,
            Err(refusal) => refused(this.router, refusal, *this.started, *this.openai),
        };
        Poll::Ready(Ok(answer))
    }
}

/// The JSON answer to a refusal, counted.
fn refused(router: &Router, refusal: Refusal, started: Instant, openai: bool) -> Answer {
    let Refusal { error, route } = refusal;
    let response = match openai {
        true => error.to_openai_response(),
        false => error.to_response(),
    };
    let (mut parts, body) = response.into_parts();
    match route {
        Some(route) => {
            if let Some(kind) = error.upstream_kind() {
                route.metrics.upstream_error(kind);
            }
            answered(&route, &mut parts.headers, parts.status, started);
        }
        None => router.telemetry().unrouted().record(parts.status),
    }
    Response::from_parts(parts, ResponseBody::local(body))
}

/// Counts an answer on its route: metrics, and the live stats the rollout gates
/// read (a 5xx, the gateway's own 502/504 included, is an error); and names the
/// route in the answer's headers.
pub fn answered(
    route: &VersionRoute,
    headers: &mut HeaderMap,
    status: StatusCode,
    started: Instant,
) {
    headers.insert(X_STAGEGATE_MODEL, route.headers.model.clone());
    headers.insert(X_STAGEGATE_VERSION, route.headers.version.clone());
    headers.insert(X_STAGEGATE_STAGE, route.headers.stage.clone());
    let elapsed = started.elapsed();
    route.metrics.requests.record(status);
    route.metrics.duration.record(elapsed.as_secs_f64());
    route.stats.record(status.is_server_error(), elapsed);
}
