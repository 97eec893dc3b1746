//! [`ServerCalls`]: the Open Inference Protocol's server-level calls, answered by
//! the gateway itself, since they are about the server the client talks to and
//! name no model. Above admission, so a health probe is never shed as overload.
//!
//! | call | answer |
//! |---|---|
//! | `GET /v2/health/live` | 200 `{"live": true}` while the gateway serves |
//! | `GET /v2/health/ready` | 200 `{"ready": true}` when every model with a production version can take a request (an endpoint not ejected, or past its back-off); else 503 `{"ready": false, "unready_models": [...]}` |
//! | `GET /v2` | server metadata: `name`, `version`, `extensions` |
//! | `GET /v1/models` | every model routed, as KServe V1's list (`{"models": [...]}`) and OpenAI's (`{"object": "list", "data": [{"id", "object": "model", ...}]}`) in one answer |
//!
//! `HEAD` is answered like `GET`; other methods get 405.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, StatusCode};
use serde_json::json;
use tower::{Layer, Service};

use super::ResponseBody;
use super::error::{json_response, method_not_allowed};
use super::stack::{Answer, Inbound, Refusal, Step, always_ready};
use crate::routing::{Router, RoutingTable};

/// The server name and version `GET /v2` gives.
pub const SERVER_NAME: &str = "stagegate";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The protocol extensions the gateway itself understands: binary tensors are
/// passed through and compared as tensors in shadow testing. Extensions that
/// need the model server's memory or state (shared memory, model repository)
/// cannot work through a gateway and are not listed.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// A server-level call, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCall {
    Live,
    Ready,
    Metadata,
    ModelList,
}

impl ServerCall {
    pub fn of(path: &str) -> Option<ServerCall> {
        match path {
            "/v2/health/live" => Some(ServerCall::Live),
            "/v2/health/ready" => Some(ServerCall::Ready),
            "/v2" => Some(ServerCall::Metadata),
            "/v1/models" => Some(ServerCall::ModelList),
            _ => None,
        }
    }

    /// The status and JSON body of the call's answer against `table`.
    pub fn answer(self, table: &RoutingTable) -> (StatusCode, serde_json::Value) {
        match self {
            ServerCall::Live => (StatusCode::OK, json!({ "live": true })),
            ServerCall::Ready => match table.unready_models().as_slice() {
                [] => (StatusCode::OK, json!({ "ready": true })),
                unready => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "ready": false, "unready_models": unready }),
                ),
            },
            ServerCall::Metadata => (
                StatusCode::OK,
                json!({ "name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS }),
            ),
            ServerCall::ModelList => (StatusCode::OK, model_list(&table.model_names())),
        }
    }
}

/// `GET /v1/models` is both KServe V1's model list and OpenAI's: one answer
/// carries both, `models` for KServe's clients and `object`/`data` for
/// OpenAI's, each ignoring the other's fields.
fn model_list(names: &[&str]) -> serde_json::Value {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|name| json!({ "id": name, "object": "model", "created": 0, "owned_by": SERVER_NAME }))
        .collect();
    json!({ "object": "list", "data": data, "models": names })
}

pub struct ServerCallsLayer {
    router: Arc<Router>,
}

impl ServerCallsLayer {
    pub fn new(router: Arc<Router>) -> ServerCallsLayer {
        ServerCallsLayer { router }
    }
}

impl<S> Layer<S> for ServerCallsLayer {
    type Service = ServerCalls<S>;

    fn layer(&self, next: S) -> ServerCalls<S> {
        ServerCalls {
            router: Arc::clone(&self.router),
            next,
        }
    }
}

pub struct ServerCalls<S> {
    router: Arc<Router>,
    next: S,
}

impl<'a, S> Service<Inbound> for &'a ServerCalls<S>
where
    &'a S: Service<Inbound, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Step<<&'a S as Service<Inbound>>::Future, ()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this: &'a ServerCalls<S> = self;
        let Some(call) = ServerCall::of(inbound.request.uri().path()) else {
            let mut next = &this.next;
            return Step::calling(next.call(inbound), ());
        };
        let answer = this.answer(call, inbound.request.method());
        this.router.telemetry().unrouted().record(answer.status());
        Step::answered(answer)
    }
}

impl<S> ServerCalls<S> {
    fn answer(&self, call: ServerCall, method: &Method) -> Answer {
        let response = match *method {
            Method::GET | Method::HEAD => {
                let (status, body) = call.answer(&self.router.load());
                json_response(status, &body)
            }
            _ => method_not_allowed("GET, HEAD"),
        };
        response.map(ResponseBody::local)
    }
}
