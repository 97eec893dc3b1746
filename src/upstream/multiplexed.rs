//! HTTP/2 to a model server's gRPC listener. One connection per endpoint carries
//! every call at once, a stream each: it is made on the first call and again
//! once it has closed, and driven by a task of its own, since many requests
//! share it (unlike the HTTP/1.1 pools, where each exchange drives its own
//! connection).
//!
//! The current connection sits in an `ArcSwapOption`, so a call takes it with
//! one load and no lock; two calls that find it closed at once may both connect,
//! and the later one's connection is kept.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Scheme, Uri};
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::client::{UpstreamClient, unreachable};
use super::pool::{Lease, PoolKind, UpstreamBody};
use super::request_body::RequestBody;
use super::{Endpoint, UpstreamError};
use crate::telemetry::error_chain;

/// The endpoint's HTTP/2 connection, if one is open.
#[derive(Debug, Default)]
pub struct Multiplexed {
    current: ArcSwapOption<SendRequest<RequestBody>>,
}

impl Multiplexed {
    /// The open connection's handle, if there is one.
    fn open(&self) -> Option<SendRequest<RequestBody>> {
        let current = self.current.load();
        current
            .as_deref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// Closes the connection (the next call makes a new one).
    pub fn close(&self) {
        self.current.store(None);
    }
}

impl UpstreamClient {
    /// Sends a call to `endpoint` on its HTTP/2 connection, making one if none is
    /// open, and waits for the response head. The request's URI is the path and
    /// query; the endpoint gives the rest.
    pub async fn send_multiplexed(
        &self,
        endpoint: Arc<Endpoint>,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        *request.uri_mut() = absolute(&endpoint, request.uri());
        let mut sender = match endpoint.h2.open() {
            Some(sender) => sender,
            None => Box::pin(self.connect_h2(&endpoint)).await?,
        };
        let failed = |error: hyper::Error| UpstreamError::Failed {
            endpoint: endpoint.url().to_string(),
            message: error_chain(&error),
        };
        sender.ready().await.map_err(failed)?;
        let response = sender.send_request(request).await.map_err(failed)?;
        let lease = Lease::new(None, Arc::clone(&endpoint), PoolKind::Primary);
        Ok(response.map(|body| UpstreamBody::new(body, lease)))
    }

    async fn connect_h2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let stream = self.open_tcp(endpoint).await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(KEEPALIVE))
            .keep_alive_timeout(KEEPALIVE)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| unreachable(endpoint, error_chain(&error)))?;
        let url = endpoint.url().to_string();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(endpoint = %url, error = %error_chain(&error), "HTTP/2 connection ended");
            }
        });
        endpoint.h2.current.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

/// How often a connection with calls open is pinged, and how long a ping may
/// take before the connection is given up: a server that vanished mid-call is
/// noticed. Idle connections are not pinged (gRPC servers answer pings without
/// calls by closing the connection); a dead idle one fails its next call.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// `uri` (origin form) on `endpoint`: HTTP/2 sends scheme and authority as
/// pseudo-headers, from the URI.
fn absolute(endpoint: &Endpoint, uri: &Uri) -> Uri {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(endpoint.authority().clone());
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}
