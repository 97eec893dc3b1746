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
//! | a first message over `max_body_bytes` | `RESOURCE_EXHAUSTED` |
//! | a call other than the inference service's model and server calls | `UNIMPLEMENTED` |

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST, TE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::ResponseBody;
use super::headers::prepare_upstream_request;
use super::respond::answered;
use super::server_calls::{EXTENSIONS, SERVER_NAME, SERVER_VERSION, ServerCall};
use super::stack::{Answer, Inbound};
use crate::grpc::frame::{self, PREFIX};
use crate::grpc::status::{Code, grpc_status, http_equivalent, put_status, trailers_only};
use crate::grpc::timeout::{self, GRPC_TIMEOUT};
use crate::grpc::wire::{self, Writer};
use crate::routing::{self, RouteError, Router, ServedStage, VersionRoute};
use crate::shadow::{ModelShadow, ShadowService};
use crate::upstream::UpstreamError;
use crate::upstream::admission::{Admission, Permit};
use crate::upstream::client::{UpstreamClient, record_health};
use crate::upstream::health::EjectionPolicy;
use crate::upstream::request_body::RequestBody;

const SERVICE: &str = "/inference.GRPCInferenceService/";
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Whether `request` is a gRPC call (its content type says so).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"))
}

/// What a call's path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A server-level call the gateway answers.
    Server(ServerCall),
    /// A call about one model, routed by the model its first message names.
    Model,
    Unimplemented,
}

fn call_of(path: &str) -> Call {
    match path.strip_prefix(SERVICE) {
        Some("ServerLive") => Call::Server(ServerCall::Live),
        Some("ServerReady") => Call::Server(ServerCall::Ready),
        Some("ServerMetadata") => Call::Server(ServerCall::Metadata),
        // Each of their requests has the model's name in field 1 and the
        // version in field 2.
        Some(
            "ModelInfer" | "ModelStreamInfer" | "ModelReady" | "ModelMetadata" | "ModelConfig"
            | "ModelStatistics",
        ) => Call::Model,
        _ => Call::Unimplemented,
    }
}

/// Why the gateway answers a call itself, with the route it had, if any.
struct Refused {
    code: Code,
    message: String,
    route: Option<Arc<VersionRoute>>,
}

impl Refused {
    fn new(code: Code, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
            route: None,
        }
    }

    fn on(mut self, route: &Arc<VersionRoute>) -> Refused {
        self.route = Some(Arc::clone(route));
        self
    }
}

/// The gRPC request path; one per gateway.
pub struct GrpcProxy {
    router: Arc<Router>,
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
        client: UpstreamClient,
        limits: &super::Limits,
    ) -> GrpcProxy {
        GrpcProxy {
            router,
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
        let deadline = self.deadline(&inbound)?;
        let (mut parts, body) = inbound.request.into_parts();
        let (first, rest) = self.first_message(body, deadline).await?;
        let (name, version) = self.model_named(&parts, &first)?;
        let unary_infer = rest.is_none() && parts.uri.path() == MODEL_INFER;
        let (route, shadow) = self.route(&parts, &name, version.as_deref(), unary_infer)?;
        let version_permit = version_permit(&route)?;
        prepare(&mut parts, &inbound.peer);
        let capture = shadow
            .and_then(|shadow| shadow.sample(&parts.method, first.len(), self.shadow.cpu()))
            .and_then(|mirror| {
                self.shadow
                    .dispatch_grpc(mirror, &mut parts, &first, version.is_some())
            });
        let body = match rest {
            None => RequestBody::whole(first, None),
            Some(rest) => RequestBody::streamed(first, None, rest, usize::MAX, None).0,
        };
        let request = Request::from_parts(parts, body);
        let permits = [Some(permit), version_permit];
        let mut answer = self
            .send(request, route, deadline, permits, inbound.started)
            .await?;
        if let Some(capture) = capture {
            let capture = capture.start(answer.status().as_u16(), None);
            answer.body_mut().capture(capture);
        }
        Ok(answer)
    }

    /// When the call must have its answer's head: the caller's `grpc-timeout`
    /// if it is sooner than the gateway's request timeout.
    fn deadline(&self, inbound: &Inbound) -> Result<tokio::time::Instant, Refused> {
        let asked = match inbound.request.headers().get(GRPC_TIMEOUT) {
            None => None,
            Some(value) => Some(timeout::parse(value.as_bytes()).ok_or_else(|| {
                let shown = String::from_utf8_lossy(value.as_bytes()).into_owned();
                Refused::new(
                    Code::InvalidArgument,
                    format!("grpc-timeout {shown:?} is not a timeout"),
                )
            })?),
        };
        let wait = asked.map_or(self.request_timeout, |asked| {
            asked.min(self.request_timeout)
        });
        Ok(tokio::time::Instant::from_std(inbound.started + wait))
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
        route: Arc<VersionRoute>,
        deadline: tokio::time::Instant,
        permits: [Option<Permit>; 2],
        started: Instant,
    ) -> Result<Answer, Refused> {
        let endpoint = match route.pick_grpc_endpoint() {
            Some(endpoint) => Arc::clone(endpoint),
            None if route.grpc_endpoints().is_empty() => {
                return Err(Refused::new(Code::Unavailable, format!(
                    "version {} of model {} has no grpc_endpoints: configure its gRPC listener to call it over gRPC",
                    route.version(), route.model()
                )).on(&route));
            }
            None => {
                return Err(Refused::new(
                    Code::Unavailable,
                    format!(
                        "every gRPC endpoint of version {} of model {} is ejected after failures",
                        route.version(),
                        route.model()
                    ),
                )
                .on(&route));
            }
        };
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
        permits
            .into_iter()
            .flatten()
            .for_each(|permit| body.hold(permit));
        Ok(Answer::from_parts(parts, body))
    }

    /// Reads the call's first message: its bytes (prefix included), and the rest
    /// of the body if it goes on (a streaming call).
    async fn first_message(
        &self,
        mut body: Incoming,
        deadline: tokio::time::Instant,
    ) -> Result<(Bytes, Option<Incoming>), Refused> {
        let mut read = BytesMut::new();
        loop {
            let length = frame::head(&read, self.max_body_bytes).map_err(|e| {
                let code = match e {
                    frame::FrameError::TooLarge { .. } => Code::ResourceExhausted,
                    _ => Code::InvalidArgument,
                };
                Refused::new(code, e.to_string())
            })?;
            if let Some(head) = length
                && read.len() >= PREFIX + head.length
            {
                let rest = (!body.is_end_stream()).then_some(body);
                return Ok((read.freeze(), rest));
            }
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| {
                    Refused::new(
                        Code::DeadlineExceeded,
                        "the call's first message did not arrive in time",
                    )
                })?;
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read.extend_from_slice(data);
                    }
                }
                Some(Err(error)) => {
                    return Err(Refused::new(
                        Code::Cancelled,
                        format!("the call's body failed: {error}"),
                    ));
                }
                None => {
                    return Err(Refused::new(
                        Code::InvalidArgument,
                        "the call ended before its first message",
                    ));
                }
            }
        }
    }

    /// The model (and version pin) the first message names.
    fn model_named(
        &self,
        parts: &Parts,
        first: &[u8],
    ) -> Result<(String, Option<String>), Refused> {
        let invalid = |message: String| Refused::new(Code::InvalidArgument, message);
        let head = frame::head(first, self.max_body_bytes)
            .ok()
            .flatten()
            .ok_or_else(|| invalid("no message".into()))?;
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok());
        let message = &first[PREFIX..PREFIX + head.length];
        let message = frame::decoded(head, message, encoding, self.max_body_bytes)
            .map_err(|e| invalid(e.to_string()))?;
        let field = |number| {
            wire::last_string(&message, number)
                .map_err(|e| invalid(format!("the first message is not a valid request: {e}")))
        };
        let name = field(1)?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("the call names no model (its model name is empty)".into()))?;
        let version = field(2)?.filter(|v| !v.is_empty()).map(str::to_string);
        Ok((name.to_string(), version))
    }

    fn server_answer(&self, call: ServerCall) -> Answer {
        let table = self.router.load();
        let message = match call {
            ServerCall::Live => Writer::new().bool(1, true).finish(),
            ServerCall::Ready => {
                let (status, _) = call.answer(&table);
                Writer::new().bool(1, status == StatusCode::OK).finish()
            }
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

fn refusal_of_route(error: RouteError) -> Refused {
    let code = match &error {
        RouteError::UnknownModel(_)
        | RouteError::UnknownVersion { .. }
        | RouteError::NoVersionInStage { .. }
        | RouteError::NoModelInPath => Code::NotFound,
        RouteError::ArchivedVersion { .. } | RouteError::ArchivedStage(_) => Code::PermissionDenied,
        RouteError::NoProductionVersion(_) => Code::Unavailable,
        RouteError::InvalidPin { .. }
        | RouteError::ConflictingPins(_)
        | RouteError::UnplainPath(_)
        | RouteError::NestedModelPath(_) => Code::InvalidArgument,
    };
    Refused::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_told_apart_by_path() {
        assert_eq!(
            call_of("/inference.GRPCInferenceService/ServerLive"),
            Call::Server(ServerCall::Live)
        );
        assert_eq!(
            call_of("/inference.GRPCInferenceService/ModelInfer"),
            Call::Model
        );
        assert_eq!(
            call_of("/inference.GRPCInferenceService/ModelStreamInfer"),
            Call::Model
        );
        assert_eq!(
            call_of("/inference.GRPCInferenceService/RepositoryIndex"),
            Call::Unimplemented
        );
        assert_eq!(call_of("/grpc.health.v1.Health/Check"), Call::Unimplemented);
    }

    #[test]
    fn routing_errors_become_the_statuses_the_issue_names() {
        let code = |e| refusal_of_route(e).code;
        assert_eq!(code(RouteError::UnknownModel("m".into())), Code::NotFound);
        assert_eq!(
            code(RouteError::ArchivedVersion {
                model: "m".into(),
                version: "1".into()
            }),
            Code::PermissionDenied
        );
        assert_eq!(
            code(RouteError::NoProductionVersion("m".into())),
            Code::Unavailable
        );
        assert_eq!(
            code(RouteError::ConflictingPins("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            http_equivalent(Code::Unavailable, StatusCode::OK),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_equivalent(Code::DeadlineExceeded, StatusCode::OK),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(http_equivalent(Code::Ok, StatusCode::OK), StatusCode::OK);
    }
}
