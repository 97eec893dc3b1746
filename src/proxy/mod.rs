//! The data plane: the listener, the hyper server (HTTP/1.1 and cleartext HTTP/2
//! on one port), limits and timeouts, forwarding with pooled upstream connections,
//! header hygiene and graceful shutdown.

pub mod admission;
mod body;
mod conn;
mod connection;
mod error;
mod handler;
pub mod headers;
pub mod pool;
mod server;
pub mod upstream;

pub use body::ResponseBody;
pub use error::{ProxyError, json_error, json_response};
pub use handler::{
    Proxy, X_STAGEGATE_MODEL, X_STAGEGATE_STAGE, X_STAGEGATE_VERSION, record_health,
};
pub use server::{Drained, Handler, serve};

pub use crate::config::Limits;
