//! The data plane: the listener, the hyper server (HTTP/1.1 and cleartext HTTP/2
//! on one port), limits and timeouts, forwarding with pooled upstream connections,
//! header hygiene and graceful shutdown.

mod admission;
mod body;
mod conn;
mod error;
mod handler;
pub mod headers;
mod server;
mod upstream;

use std::time::Duration;

pub use body::ResponseBody;
pub use error::{ProxyError, json_error};
pub use handler::{Proxy, X_STAGEGATE_MODEL, X_STAGEGATE_STAGE, X_STAGEGATE_VERSION};
pub use server::{Drained, Handler, serve};

use crate::config::ServerConfig;

/// The limits and timeouts the data plane enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_concurrent_requests: usize,
}

impl From<&ServerConfig> for Limits {
    fn from(server: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: server.header_read_timeout,
            connect_timeout: server.connect_timeout,
            request_timeout: server.request_timeout,
            drain_timeout: server.drain_timeout,
            max_body_bytes: server.max_body_bytes,
            max_header_bytes: server.max_header_bytes,
            max_concurrent_requests: server.max_concurrent_requests,
        }
    }
}
