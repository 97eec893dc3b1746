//! Reading a gRPC call before it is routed: which call its path asks for, its
//! first message (under the size limit, before the deadline; `gzip` read), the
//! model and version pin that message names, the caller's `grpc-timeout`; and
//! the refusals that reading and routing give, as gRPC statuses.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::server_calls::ServerCall;
use super::stack::Inbound;
use crate::grpc::frame::{self, PREFIX};
use crate::grpc::status::Code;
use crate::grpc::timeout::{self, GRPC_TIMEOUT};
use crate::grpc::wire;
use crate::routing::{RouteError, VersionRoute};
use crate::upstream::budget::Reservation;

pub const SERVICE: &str = "/inference.GRPCInferenceService/";
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Whether `request` is a gRPC call (its content type says so).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    // gRPC is HTTP/2 only: HTTP/1.1 requests (most of them) skip the lookup.
    request.version() == http::Version::HTTP_2
        && request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/grpc"))
}

/// What a call's path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A server-level call the gateway answers.
    Server(ServerCall),
    /// A call about one model, routed by the model its first message names.
    Model,
    Unimplemented,
}

pub fn call_of(path: &str) -> Call {
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
pub struct Refused {
    pub code: Code,
    pub message: String,
    pub route: Option<Arc<VersionRoute>>,
}

impl Refused {
    pub fn new(code: Code, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
            route: None,
        }
    }

    pub fn on(mut self, route: &Arc<VersionRoute>) -> Refused {
        self.route = Some(Arc::clone(route));
        self
    }
}

/// When the call must have its answer's head: the caller's `grpc-timeout`
/// if it is sooner than the gateway's request timeout.
pub fn deadline(inbound: &Inbound, limit: Duration) -> Result<tokio::time::Instant, Refused> {
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
    let wait = asked.map_or(limit, |asked| asked.min(limit));
    Ok(tokio::time::Instant::from_std(inbound.started + wait))
}

/// Reads the call's first message: its bytes (prefix included), and the rest
/// of the body if it goes on (a streaming call). A `unary` call is read to its
/// end (clients may end the stream in a frame of its own), and a second
/// message in it is refused.
pub async fn first_message(
    mut body: Incoming,
    limit: usize,
    deadline: tokio::time::Instant,
    unary: bool,
    mut held: Reservation,
) -> Result<FirstMessage, Refused> {
    let mut read = BytesMut::new();
    loop {
        let complete = message_length(&read, limit)?.is_some_and(|length| read.len() >= length);
        if complete {
            let one_message = message_length(&read, limit)? == Some(read.len());
            if unary && !one_message {
                let refused = "a unary call carries one message";
                return Err(Refused::new(Code::InvalidArgument, refused));
            }
            if !unary || body.is_end_stream() {
                let rest = (!body.is_end_stream()).then_some(body);
                return Ok(FirstMessage {
                    bytes: read.freeze(),
                    held,
                    rest,
                });
            }
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
                    if !held.grow(data.len()) {
                        let full = "the gateway's memory for request bodies \
                                    (max_buffered_body_bytes) is full; retry later";
                        return Err(Refused::new(Code::ResourceExhausted, full));
                    }
                    read.extend_from_slice(data);
                }
            }
            Some(Err(error)) => {
                return Err(Refused::new(
                    Code::Cancelled,
                    format!("the call's body failed: {error}"),
                ));
            }
            // A unary call whose message was whole, ended by an empty frame.
            None if complete => {
                return Ok(FirstMessage {
                    bytes: read.freeze(),
                    held,
                    rest: None,
                });
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

/// A call's first message as read: its bytes (prefix included, and whatever
/// followed it in the same frames), their hold on the body budget, and the
/// rest of a streaming call's body.
pub struct FirstMessage {
    pub bytes: Bytes,
    pub held: Reservation,
    pub rest: Option<Incoming>,
}

/// The length of the first message with its prefix, once the prefix is in.
fn message_length(read: &[u8], limit: usize) -> Result<Option<usize>, Refused> {
    let head = frame::head(read, limit).map_err(|e| {
        let code = match e {
            frame::FrameError::TooLarge { .. } => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        };
        Refused::new(code, e.to_string())
    })?;
    Ok(head.map(|head| PREFIX + head.length))
}

/// The model (and version pin) the first message names.
pub fn model_named(
    parts: &Parts,
    first: &[u8],
    limit: usize,
) -> Result<(String, Option<String>), Refused> {
    let invalid = |message: String| Refused::new(Code::InvalidArgument, message);
    let head = frame::head(first, limit)
        .ok()
        .flatten()
        .ok_or_else(|| invalid("no message".into()))?;
    let encoding = parts
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok());
    let message = &first[PREFIX..PREFIX + head.length];
    let message =
        frame::decoded(head, message, encoding, limit).map_err(|e| invalid(e.to_string()))?;
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

pub fn refusal_of_route(error: RouteError) -> Refused {
    let code = match &error {
        RouteError::UnknownModel(_)
        | RouteError::UnknownVersion { .. }
        | RouteError::NoVersionInStage { .. }
        | RouteError::NoModelInPath => Code::NotFound,
        RouteError::ArchivedVersion { .. } | RouteError::ArchivedStage(_) => Code::PermissionDenied,
        RouteError::NoProductionVersion(_) => Code::Unavailable,
        RouteError::InvalidPin { .. }
        | RouteError::EmptyNamePin(_)
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
    }
}
