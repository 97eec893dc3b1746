//! [`Proxy`]: the data plane's handler. It builds the request path's stack of
//! services once ([`super::stack`]) and runs every request through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::{Service, ServiceBuilder};

use super::admit::{Admit, AdmitLayer};
use super::balance::{Balance, BalanceLayer};
use super::forward::{Forward, Timeouts};
use super::grpc::GrpcProxy;
use super::grpc_call::is_grpc;
use super::llm_body::{LlmBody, LlmBodyLayer};
use super::mirror::{Mirror, MirrorLayer};
use super::read_ahead::{BodyLimits, ReadAhead, ReadAheadLayer};
use super::respond::{Respond, RespondLayer};
use super::route::{Route, RouteLayer};
use super::server_calls::{ServerCalls, ServerCallsLayer};
use super::stack::{Answer, Inbound};
use super::{Handler, Limits, ResponseBody};
use crate::config::ShadowThreads;
use crate::routing::Router;
use crate::shadow::{MirrorTimeouts, ShadowService};
use crate::telemetry::BodyBudgetMetrics;
use crate::upstream::admission::Admission;
use crate::upstream::budget::BodyBudget;
use crate::upstream::client::UpstreamClient;
use crate::upstream::pool::PoolKind;

/// The request path, outermost service first.
type Stack = Respond<ServerCalls<Admit<LlmBody<Route<ReadAhead<Balance<Mirror<Forward>>>>>>>>;

/// The data plane's shared state; one per gateway, behind an `Arc`.
pub struct Proxy {
    router: Arc<Router>,
    stack: Stack,
    /// gRPC calls, routed by the model their first message names.
    grpc: GrpcProxy,
}

impl Proxy {
    /// The data plane, with its shadow threads started.
    pub fn start(
        router: Arc<Router>,
        limits: Limits,
        shadow_threads: ShadowThreads,
    ) -> std::io::Result<Proxy> {
        let timeouts = MirrorTimeouts {
            connect: limits.connect_timeout,
            // A mirror task waits for production's answer at most as long as
            // production may take to give it.
            primary_wait: limits.request_timeout + limits.request_timeout,
            llm_first_byte: limits.llm_first_byte_timeout,
            llm_idle: limits.llm_idle_timeout,
        };
        let shadow_router = Arc::clone(&router);
        let shadow = ShadowService::start(
            shadow_threads,
            move || shadow_router.load().reap_idle_connections(PoolKind::Shadow),
            timeouts,
            limits.ejection,
        )?;
        let budget = BodyBudget::new(limits.max_buffered_body_bytes);
        show_budget(&router, &budget);
        // HTTP requests and gRPC calls share the gateway's admission.
        let admission = Admission::new(limits.max_concurrent_requests);
        let shadow = Arc::new(shadow);
        let grpc = GrpcProxy::new(
            Arc::clone(&router),
            Arc::clone(&shadow),
            Arc::clone(&admission),
            Arc::clone(&budget),
            UpstreamClient::new(PoolKind::Primary, limits.connect_timeout),
            &limits,
        );
        let body_limits = BodyLimits {
            budget: Arc::clone(&budget),
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.request_timeout,
        };
        let stack = ServiceBuilder::new()
            .layer(RespondLayer::new(Arc::clone(&router)))
            .layer(ServerCallsLayer::new(Arc::clone(&router)))
            .layer(AdmitLayer::new(admission))
            .layer(LlmBodyLayer::new(body_limits.clone()))
            .layer(RouteLayer::new(
                Arc::clone(&router),
                limits.max_header_bytes,
            ))
            .layer(ReadAheadLayer::new(body_limits))
            .layer(BalanceLayer)
            .layer(MirrorLayer::new(shadow, budget, limits.max_body_bytes))
            .service(Forward::new(
                UpstreamClient::new(PoolKind::Primary, limits.connect_timeout),
                Timeouts {
                    request: limits.request_timeout,
                    llm_first_byte: limits.llm_first_byte_timeout,
                    llm_idle: limits.llm_idle_timeout,
                },
                limits.max_body_bytes,
                limits.ejection,
            ));
        Ok(Proxy {
            router,
            stack,
            grpc,
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Answers one request; never fails: errors become JSON error responses.
    pub fn answer(&self, request: Request<Incoming>, peer: &HeaderValue) -> Answering<'_> {
        let inbound = Inbound {
            request,
            peer: peer.clone(),
            started: Instant::now(),
        };
        if is_grpc(&inbound.request) {
            // Boxed: a gRPC call's future is several times an HTTP request's,
            // and every request's future would otherwise be that large (and
            // copied at that size when hyper takes it).
            return Answering::Grpc {
                call: Box::pin(self.grpc.answer(inbound)),
            };
        }
        let mut stack = &self.stack;
        Answering::Stack {
            call: stack.call(inbound),
        }
    }
}

pin_project! {
    /// [`Proxy::answer`]'s future. Written by hand rather than as an `async fn`:
    /// each level of nested `async fn` keeps its own copy of the request beside
    /// the inner future, and the future hyper moves per request grew to 4.6 KB.
    #[project = AnsweringProj]
    pub enum Answering<'a> {
        Grpc { call: Pin<Box<dyn Future<Output = Answer> + Send + 'a>> },
        Stack { #[pin] call: <&'a Stack as Service<Inbound>>::Future },
    }
}

impl Future for Answering<'_> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.project() {
            AnsweringProj::Grpc { call } => call.as_mut().poll(cx),
            AnsweringProj::Stack { call } => match ready!(call.poll(cx)) {
                Ok(answer) => Poll::Ready(answer),
                Err(never) => match never {},
            },
        }
    }
}

/// The body budget's gauges, copied into the metrics at every scrape.
fn show_budget(router: &Router, budget: &Arc<BodyBudget>) {
    let metrics = BodyBudgetMetrics::new(router.telemetry());
    let budget = Arc::clone(budget);
    router.telemetry().sample_on_render(move || {
        metrics.show(
            budget.held(),
            budget.peak(),
            budget.limit(),
            budget.refusals(),
        );
    });
}

impl Handler for Proxy {
    type Body = ResponseBody;

    fn handle(
        &self,
        request: Request<Incoming>,
        peer: &HeaderValue,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        self.answer(request, peer)
    }

    fn local_response(&self, response: Response<Bytes>) -> Response<ResponseBody> {
        self.router.telemetry().unrouted().record(response.status());
        response.map(ResponseBody::local)
    }
}
