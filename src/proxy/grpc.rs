//! gRPC on the data-plane port: the Open Inference Protocol's
//! `inference.GRPCInferenceService` (KServe V2, Triton). A call names its model
//! in its first message, not its path, so it is routed after that message has
//! been read (under the body budget and the request deadline): `model_name`
//! (field 1) picks the model, `model_version` (field 2) pins a version like the
//! HTTP path's, and the pin headers (`x-stagegate-stage`, `x-stagegate-version`,
//! as gRPC metadata) work as for HTTP. Messages compressed with `gzip` are read
//! too. The call then goes, unchanged, to one of the version's
//! `grpc_endpoints` over a shared HTTP/2 connection, and its answer (messages,
//! `grpc-status` trailers) streams back.
//!
//! The server-level calls `ServerLive`, `ServerReady` and `ServerMetadata` are
//! answered by the gateway, as their HTTP forms are ([`super::server_calls`]).
//! The gateway's own refusals are gRPC statuses (trailers-only answers):
//!
//! | refusal | status |
//! |---|---|
//! | unknown model or version, no version in the pinned stage | `NOT_FOUND` |
//! | a pin to an archived version | `PERMISSION_DENIED` |
//! | overload, no production version, no (healthy) gRPC endpoint, model server unreachable | `UNAVAILABLE` |
//! | the request deadline passed | `DEADLINE_EXCEEDED` |
//! | no or a malformed first message, bad pins | `INVALID_ARGUMENT` |
//! | a first message over `max_body_bytes`, or past the body budget | `RESOURCE_EXHAUSTED` |
//! | a call other than the inference service's model and server calls | `UNIMPLEMENTED` |

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Version};

use super::ResponseBody;
use super::grpc_call::{
    Call, FirstMessage, MODEL_INFER, Refused, call_of, deadline, first_message, model_named,
    refusal_of_route,
};
use super::headers::prepare_upstream_request;
use super::respond::answered;
use super::server_calls::{EXTENSIONS, SERVER_NAME, SERVER_VERSION, ServerCall};
use super::stack::{Answer, Inbound};
use crate::grpc::frame;
use crate::grpc::status::{Code, grpc_status, http_equivalent, put_status, trailers_only};
use crate::grpc::wire::Writer;
use crate::routing::{self, Router, ServedStage, VersionRoute};
use crate::shadow::{ModelShadow, ShadowService};
use crate::upstream::admission::{Admission, Permit};
use crate::upstream::budget::BodyBudget;
use crate::upstream::client::{UpstreamClient, record_health};
use crate::upstream::health::EjectionPolicy;
use crate::upstream::request_body::RequestBody;
use crate::upstream::{Endpoint, UpstreamError};

/// The gRPC request path; one per gateway.
pub struct GrpcProxy {
    router: Arc<Router>,
    /// Holds what is read of a call before it is routed.
    budget: Arc<BodyBudget>,
    shadow: Arc<ShadowService>,
    admission: Arc<Admission>,
    client: UpstreamClient,
    request_timeout: Duration,
    max_body_bytes: usize,
    ejection: EjectionPolicy,
}

impl GrpcProxy {
    pub fn new(
        router: Arc<Router>,
        shadow: Arc<ShadowService>,
        admission: Arc<Admission>,
        budget: Arc<BodyBudget>,
        client: UpstreamClient,
        limits: &super::Limits,
    ) -> GrpcProxy {
        GrpcProxy {
            router,
            budget,
            shadow,
            admission,
            client,
            request_timeout: limits.request_timeout,
            max_body_bytes: limits.max_body_bytes,
            ejection: limits.ejection,
        }
    }

    /// Answers one call; never fails: refusals become gRPC statuses.
    pub async fn answer(&self, inbound: Inbound) -> Answer {
        let started = inbound.started;
        match self.forward(inbound).await {
            Ok(answer) => answer,
            Err(refused) => self.refusal(refused, started),
        }
    }

    async fn forward(&self, inbound: Inbound) -> Result<Answer, Refused> {
        let call = call_of(inbound.request.uri().path());
        let Call::Model = call else {
            return match call {
                Call::Server(server_call) => Ok(self.server_answer(server_call)),
                _ => Err(Refused::new(
                    Code::Unimplemented,
                    format!(
                        "{} is not served through stagegate: it routes the inference service's \
                         model and server calls",
                        inbound.request.uri().path()
                    ),
                )),
            };
        };
        let permit = self.admit()?;
        let deadline = deadline(&inbound, self.request_timeout)?;
        let (mut parts, body) = inbound.request.into_parts();
        let unary = parts.uri.path() == MODEL_INFER;
        let read = first_message(
            body,
            self.max_body_bytes,
            deadline,
            unary,
            self.budget.empty(),
        );
        let FirstMessage {
            bytes: first,
            held,
            rest,
        } = read.await?;
        let (name, version) = model_named(&parts, &first, self.max_body_bytes)?;
        let (route, shadow) = self.route(&parts, &name, version.as_deref(), unary)?;
        let version_permit = version_permit(&route)?;
        // Picked before any mirror goes out: a call with nowhere to go is not
        // mirrored either.
        let endpoint = pick(&route)?;
        prepare(&mut parts, &inbound.peer);
        let capture = shadow
            .and_then(|shadow| shadow.sample(&parts.method, first.len(), self.shadow.cpu()))
            .and_then(|mirror| {
                self.shadow
                    .dispatch_grpc(mirror, &mut parts, &first, version.is_some())
            });
        let body = match rest {
            None => RequestBody::whole(first, Some(held)),
            Some(rest) => RequestBody::streamed(first, Some(held), rest, usize::MAX, None).0,
        };
        let request = Request::from_parts(parts, body);
        let permits = [Some(permit), version_permit];
        let mut answer = self
            .send(request, endpoint, route, deadline, permits, inbound.started)
            .await?;
        if let Some(capture) = capture {
            // A trailers-only answer has its outcome in the head already.
            let code = grpc_status(answer.headers()).unwrap_or(Code::Ok);
            let status = http_equivalent(code, answer.status()).as_u16();
            let capture = capture.start(status, None);
            answer.body_mut().capture(capture);
        }
        Ok(answer)
    }

    fn admit(&self) -> Result<Permit, Refused> {
        self.admission.try_admit().ok_or_else(|| {
            let limit = self.admission.limit();
            Refused::new(
                Code::Unavailable,
                format!("the gateway is at its limit of {limit} concurrent requests; retry later"),
            )
        })
    }

    /// The version route of the call, and the model's shadow if the call is to
    /// be mirrored (a unary inference call that production answers).
    fn route(
        &self,
        parts: &Parts,
        name: &str,
        version: Option<&str>,
        unary_infer: bool,
    ) -> Result<(Arc<VersionRoute>, Option<Arc<ModelShadow>>), Refused> {
        let table = self.router.load();
        let (model, route) = routing::resolve_model(&table, name, version, &parts.headers)
            .map_err(refusal_of_route)?;
        let mirrored =
            unary_infer && route.stage() == ServedStage::Production && model.shadow().is_active();
        Ok((
            Arc::clone(route),
            mirrored.then(|| Arc::clone(model.shadow())),
        ))
    }

    async fn send(
        &self,
        request: Request<RequestBody>,
        endpoint: Arc<Endpoint>,
        route: Arc<VersionRoute>,
        deadline: tokio::time::Instant,
        permits: [Option<Permit>; 2],
        started: Instant,
    ) -> Result<Answer, Refused> {
        let guard = endpoint.begin();
        let sent = tokio::time::timeout_at(
            deadline,
            self.client.send_multiplexed(Arc::clone(&endpoint), request),
        )
        .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(_elapsed) => {
                let waited =
                    deadline.saturating_duration_since(tokio::time::Instant::from_std(started));
                // Only the gateway's own deadline says something of the server;
                // a caller's shorter one does not.
                if waited >= self.request_timeout {
                    let timed_out: Result<http::Response<()>, _> = Err(UpstreamError::Timeout {
                        endpoint: endpoint.url().to_string(),
                        timeout: waited,
                    });
                    record_health(&endpoint, &timed_out, &self.ejection);
                }
                return Err(Refused::new(
                    Code::DeadlineExceeded,
                    format!("the model server did not answer within {waited:?}"),
                )
                .on(&route));
            }
        };
        record_health(&endpoint, &sent, &self.ejection);
        let response = sent.map_err(|error| {
            if matches!(error, UpstreamError::Failed { .. }) {
                endpoint.h2.close();
            }
            Refused::new(Code::Unavailable, error.to_string()).on(&route)
        })?;
        let (mut parts, body) = response.into_parts();
        let status = http_equivalent(
            grpc_status(&parts.headers).unwrap_or(Code::Ok),
            parts.status,
        );
        answered(&route, &mut parts.headers, status, started);
        let mut body = ResponseBody::upstream(body, guard, route, self.request_timeout);
        body.ends_with_grpc_status();
        permits
            .into_iter()
            .flatten()
            .for_each(|permit| body.hold(permit));
        Ok(Answer::from_parts(parts, body))
    }

    fn server_answer(&self, call: ServerCall) -> Answer {
        let table = self.router.load();
        let message = match call {
            ServerCall::Live => Writer::new().bool(1, true).finish(),
            ServerCall::Ready => {
                let (status, _) = call.answer(&table);
                Writer::new().bool(1, status == StatusCode::OK).finish()
            }
            // The model list has no gRPC form; only Metadata gets here.
            ServerCall::Metadata | ServerCall::ModelList => {
                let mut writer = Writer::new();
                writer.string(1, SERVER_NAME).string(2, SERVER_VERSION);
                for extension in EXTENSIONS {
                    writer.string(3, extension);
                }
                writer.finish()
            }
        };
        self.router.telemetry().unrouted().record(StatusCode::OK);
        let mut trailers = HeaderMap::new();
        put_status(&mut trailers, Code::Ok, "");
        let mut answer = Answer::new(ResponseBody::trailed(
            Bytes::from(frame::framed(&message)),
            trailers,
        ));
        answer.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(crate::grpc::status::CONTENT_TYPE),
        );
        answer
    }

    fn refusal(&self, refused: Refused, started: Instant) -> Answer {
        let mut answer = trailers_only(
            refused.code,
            &refused.message,
            ResponseBody::local(Bytes::new()),
        );
        let status = http_equivalent(refused.code, StatusCode::OK);
        match &refused.route {
            Some(route) => answered(route, answer.headers_mut(), status, started),
            None => self.router.telemetry().unrouted().record(status),
        }
        answer
    }
}

/// The gRPC endpoint the call goes to, or why there is none.
fn pick(route: &Arc<VersionRoute>) -> Result<Arc<Endpoint>, Refused> {
    match route.pick_grpc_endpoint() {
        Some(endpoint) => Ok(Arc::clone(endpoint)),
        None if route.grpc_endpoints().is_empty() => {
            Err(Refused::new(Code::Unavailable, format!(
                "version {} of model {} has no grpc_endpoints: configure its gRPC listener to call it over gRPC",
                route.version(), route.model()
            )).on(route))
        }
        None => {
            Err(Refused::new(
                Code::Unavailable,
                format!(
                    "every gRPC endpoint of version {} of model {} is ejected after failures",
                    route.version(),
                    route.model()
                ),
            )
            .on(route))
        }
    }
}

/// The version's own admission slot, if it has a limit.
fn version_permit(route: &Arc<VersionRoute>) -> Result<Option<Permit>, Refused> {
    let Some(admission) = &route.admission else {
        return Ok(None);
    };
    let permit = admission.try_admit().ok_or_else(|| {
        let (version, limit) = (route.version(), admission.limit());
        let message = format!("version {version} is at its limit of {limit} concurrent requests");
        Refused::new(Code::Unavailable, message).on(route)
    })?;
    Ok(Some(permit))
}

/// Makes the client's call the model server's: hop-by-hop headers and pins gone,
/// `te: trailers` (which gRPC requires) kept, and no `Host` (HTTP/2 names the
/// server in `:authority`).
fn prepare(parts: &mut Parts, peer: &HeaderValue) {
    let authority = parts.uri.authority().cloned();
    let placeholder = HeaderValue::from_static("");
    prepare_upstream_request(&mut parts.headers, &placeholder, peer, authority.as_ref());
    parts.headers.remove(HOST);
    parts
        .headers
        .insert(TE, HeaderValue::from_static("trailers"));
    parts.version = Version::HTTP_2;
    if let Some(path) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(path);
    }
}
