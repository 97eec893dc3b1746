//! Upstream: everything about reaching model servers, below routing and the
//! request path. An [`Endpoint`] (one model server base URL) owns its connection
//! pools and its passive health; [`client::UpstreamClient`] connects, sends a
//! request and hands back a response whose body drives its pooled connection
//! (HTTP/1.1), or sends a gRPC call on the endpoint's shared HTTP/2 connection
//! ([`multiplexed`]);
//! [`request_body`] is what it sends, whole or streamed from the client;
//! [`admission`] bounds requests in flight and [`budget`] the body bytes held. It has its own error type and imports
//! nothing from routing, shadow or proxy; from the rest only telemetry and
//! `EndpointUrl`, a vocabulary type that still lives in `registry`.

pub mod admission;
pub mod budget;
pub mod client;
mod endpoint;
mod error;
pub mod health;
mod idle_stack;
pub mod multiplexed;
pub mod pool;
pub mod request_body;

pub use endpoint::{Endpoint, EndpointGuard, pick};
pub use error::UpstreamError;
