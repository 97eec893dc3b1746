//! The data plane: the listener, the hyper server (HTTP/1.1 and cleartext HTTP/2
//! on one port), limits and timeouts, forwarding through [`crate::upstream`],
//! header hygiene and graceful shutdown.

mod body;
mod chunked;
mod conn;
mod connection;
mod error;
pub(crate) mod framing;
mod handler;
pub mod headers;
mod read_ahead;
mod server;

pub use body::ResponseBody;
pub use error::{ProxyError, json_error, json_response};
pub use handler::{Proxy, X_STAGEGATE_MODEL, X_STAGEGATE_STAGE, X_STAGEGATE_VERSION};
pub use server::{Drained, Handler, serve};

pub use crate::config::Limits;
