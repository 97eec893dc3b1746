//! The client side: pooled keep-alive connections to model servers, the upstream
//! request URI, and the classification of what went wrong.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyError;
use crate::routing::Endpoint;
use crate::telemetry::error_chain;

/// How long an idle pooled connection to a model server is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A pool of keep-alive HTTP/1.1 connections per model server, shared by every
/// route: a request reuses an idle connection and opens one only when none is idle.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
    connect_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        UpstreamClient {
            client,
            connect_timeout,
        }
    }

    /// Sends `request` to `endpoint`, its URI already set by [`upstream_uri`].
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.client
            .request(request)
            .await
            .map_err(|error| self.classify(endpoint, &error))
    }

    fn classify(
        &self,
        endpoint: &Endpoint,
        error: &hyper_util::client::legacy::Error,
    ) -> ProxyError {
        let endpoint_name = endpoint.url().to_string();
        let message = error_chain(error);
        if !error.is_connect() {
            return ProxyError::UpstreamFailed {
                endpoint: endpoint_name,
                message,
            };
        }
        match io_error_kind(error) {
            Some(io::ErrorKind::TimedOut) => ProxyError::UpstreamConnectTimeout {
                endpoint: endpoint_name,
                timeout: self.connect_timeout,
            },
            _ => ProxyError::UpstreamUnreachable {
                endpoint: endpoint_name,
                message,
            },
        }
    }
}

/// The URI of the upstream request: the endpoint's authority and path prefix,
/// then the request's path (less `strip` leading bytes) and query.
pub fn upstream_uri(endpoint: &Endpoint, original: &Uri, strip: usize) -> Result<Uri, http::Error> {
    let prefix = endpoint.url().path_prefix();
    let path_and_query = match original.path_and_query() {
        Some(pq) if strip == 0 && prefix.is_empty() => pq.clone(),
        Some(pq) => {
            let rest = &pq.as_str()[strip..];
            let slash = if rest.starts_with('/') { "" } else { "/" };
            PathAndQuery::try_from(format!("{prefix}{slash}{rest}"))?
        }
        None => PathAndQuery::from_static("/"),
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(endpoint.authority().clone())
        .path_and_query(path_and_query)
        .build()
}

fn io_error_kind(error: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::EndpointUrl;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::new(EndpointUrl::parse(url).unwrap())
    }

    #[test]
    fn uri_keeps_path_and_query_and_adds_prefix() {
        let plain = endpoint("http://10.0.0.1:9000");
        let uri: Uri = "/v2/models/m/infer?x=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &uri, 0).unwrap(),
            "http://10.0.0.1:9000/v2/models/m/infer?x=1"
        );

        let prefixed = endpoint("http://10.0.0.1:9000/serving");
        assert_eq!(
            upstream_uri(&prefixed, &uri, 0).unwrap(),
            "http://10.0.0.1:9000/serving/v2/models/m/infer?x=1"
        );
    }

    #[test]
    fn uri_strips_the_generic_prefix() {
        let plain = endpoint("http://h:1");
        let uri: Uri = "/models/m/invocations?a=b".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &uri, "/models/m".len()).unwrap(),
            "http://h:1/invocations?a=b"
        );
        let bare: Uri = "/models/m?a=b".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &bare, "/models/m".len()).unwrap(),
            "http://h:1/?a=b"
        );
    }
}
