//! [`ProxyError`]: everything that can go wrong with one request, and the JSON
//! error response (`{"error": ..., "code": ...}`) each one becomes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::routing::RouteError;
use crate::telemetry::UpstreamErrorKind;
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("gateway is at its limit of {limit} concurrent requests; retry later")]
    Overloaded { limit: usize },
    #[error(
        "every endpoint of version {version:?} is ejected after repeated failures; retry later"
    )]
    NoHealthyEndpoint { version: String },
    #[error("this version is at its limit of {limit} concurrent requests; retry later")]
    VersionOverloaded { limit: usize },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error(
        "the gateway's body budget (server.max_buffered_body_bytes = {limit}) has no room for this body, which must be read whole to be routed; retry later"
    )]
    BodyBudgetFull { limit: usize },
    #[error("request headers exceed the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("only {0} is allowed here")]
    MethodNotAllowed(&'static str),
    /// A body the gateway reads to route by, whose `field` is wrong.
    #[error("{message}")]
    BadField {
        field: Option<&'static str>,
        message: String,
    },
    #[error(
        "request has both Transfer-Encoding and Content-Length; refused as a possible request smuggling attempt"
    )]
    ConflictingFraming,
    #[error("request body not received within {0:?}")]
    ClientTimeout(Duration),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("model server's response body failed: {0}")]
    UpstreamBody(#[source] hyper::Error),
    #[error("model server's response body made no progress for {timeout:?}")]
    UpstreamBodyStalled { timeout: Duration },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(e) => e.status(),
            ProxyError::Overloaded { .. }
            | ProxyError::VersionOverloaded { .. }
            | ProxyError::NoHealthyEndpoint { .. }
            | ProxyError::BodyBudgetFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(_)
            | ProxyError::BadField { .. }
            | ProxyError::ConflictingFraming => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(
                UpstreamError::Unreachable { .. } | UpstreamError::Failed { .. },
            )
            | ProxyError::UpstreamBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream(
                UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. },
            )
            | ProxyError::UpstreamBodyStalled { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Route(e) => e.code(),
            ProxyError::Overloaded { .. }
            | ProxyError::VersionOverloaded { .. }
            | ProxyError::BodyBudgetFull { .. } => "overloaded",
            ProxyError::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::BadRequest(_) | ProxyError::ConflictingFraming => "bad_request",
            ProxyError::BadField { .. } => "invalid_body",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::ClientTimeout(_) => "client_timeout",
            ProxyError::Upstream(UpstreamError::Unreachable { .. }) => "upstream_unreachable",
            ProxyError::Upstream(
                UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. },
            )
            | ProxyError::UpstreamBodyStalled { .. } => "upstream_timeout",
            ProxyError::Upstream(UpstreamError::Failed { .. }) | ProxyError::UpstreamBody(_) => {
                "upstream_error"
            }
        }
    }

    /// The `kind` of `stagegate_upstream_errors_total` this error counts as, if any.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::Upstream(error) => Some(error.kind()),
            ProxyError::UpstreamBodyStalled { .. } => Some(UpstreamErrorKind::Timeout),
            ProxyError::UpstreamBody(_) => Some(UpstreamErrorKind::Protocol),
            _ => None,
        }
    }

    /// The JSON error response for this error.
    pub fn to_response(&self) -> Response<Bytes> {
        match self {
            ProxyError::MethodNotAllowed(allowed) => method_not_allowed(allowed),
            _ => json_error(self.status(), &self.to_string(), self.code()),
        }
    }

    /// The error response in OpenAI's shape, for the OpenAI-compatible paths:
    /// `{"error": {"message", "type", "param", "code"}}`, so that the `openai`
    /// SDKs raise their usual exceptions with a readable message.
    pub fn to_openai_response(&self) -> Response<Bytes> {
        let status = self.status();
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        let (param, code) = match self {
            ProxyError::BadField { field, .. } => (*field, self.code()),
            // OpenAI's own code for a model it does not serve.
            ProxyError::Route(RouteError::UnknownModel(_)) => (Some("model"), "model_not_found"),
            ProxyError::Route(_) => (Some("model"), self.code()),
            _ => (None, self.code()),
        };
        let body = serde_json::json!({ "error": {
            "message": self.to_string(), "type": kind, "param": param, "code": code,
        }});
        let mut response = json_response(status, &body);
        if let ProxyError::MethodNotAllowed(allowed) = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        response
    }
}

/// A `{"error": message, "code": code}` response.
pub fn json_error(status: StatusCode, message: &str, code: &str) -> Response<Bytes> {
    json_response(
        status,
        &serde_json::json!({ "error": message, "code": code }),
    )
}

/// 405 `method_not_allowed`, with `Allow: allowed` (e.g. `"GET"`, `"GET, HEAD"`).
pub fn method_not_allowed(allowed: &'static str) -> Response<Bytes> {
    let message = format!("only {allowed} is allowed here");
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &message,
        "method_not_allowed",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// A JSON response with `value` as its body.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Bytes> {
    let body =
        serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_json_with_status_and_code() {
        let response = ProxyError::BodyTooLarge { limit: 10 }.to_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["code"], "body_too_large");
        assert_eq!(body["error"], "request body exceeds the limit of 10 bytes");
    }

    #[test]
    fn route_errors_keep_their_status() {
        let error = ProxyError::from(RouteError::UnknownModel("m".into()));
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::NOT_FOUND, "unknown_model")
        );
    }
}
