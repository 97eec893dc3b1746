//! [`UpstreamError`]: why an exchange with a model server failed, before its
//! response head arrived.

use std::time::Duration;

use crate::telemetry::UpstreamErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("model server {endpoint} refused or dropped the connection: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("no connection to model server {endpoint} within {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("model server {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("model server {endpoint} failed mid-exchange: {message}")]
    Failed { endpoint: String, message: String },
}

impl UpstreamError {
    /// The `kind` of `stagegate_upstream_errors_total` it counts as.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Unreachable { .. } => UpstreamErrorKind::Connect,
            UpstreamError::ConnectTimeout { .. } => UpstreamErrorKind::ConnectTimeout,
            UpstreamError::Timeout { .. } => UpstreamErrorKind::Timeout,
            UpstreamError::Failed { .. } => UpstreamErrorKind::Protocol,
        }
    }
}
