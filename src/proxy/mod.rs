//! The data plane: the listener, the hyper server (HTTP/1.1 and cleartext HTTP/2
//! on one port), connection limits and framing checks, graceful shutdown, and
//! the request path as a stack of tower services ([`stack`]: respond, server
//! calls, admit, read an OpenAI-style call's body, route, read ahead, balance,
//! mirror, forward through [`crate::upstream`]); gRPC calls take a path of
//! their own ([`grpc`]: routed by the model their first message names, over
//! HTTP/2).

mod admit;
mod balance;
mod body;
mod chunked;
mod conn;
mod connection;
mod error;
mod forward;
pub(crate) mod framing;
mod grpc;
mod grpc_call;
mod handler;
pub mod headers;
mod llm_body;
mod llm_meter;
mod mirror;
mod read_ahead;
mod respond;
mod route;
mod server;
pub mod server_calls;
mod stack;
mod watchdog;

pub use body::ResponseBody;
pub use error::{ProxyError, json_error, json_response, method_not_allowed};
pub use handler::Proxy;
pub use respond::{X_STAGEGATE_MODEL, X_STAGEGATE_STAGE, X_STAGEGATE_VERSION};
pub use server::{Drained, Handler, serve};

pub use crate::config::Limits;
