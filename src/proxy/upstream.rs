//! The client side: sending a request to a model server on a pooled keep-alive
//! connection ([`super::pool`]), the upstream request URI, and the
//! classification of what went wrong.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::ProxyError;
use super::pool::{Lease, PoolKind, UpstreamBody, UpstreamConn};
use crate::routing::Endpoint;
use crate::telemetry::error_chain;

/// TCP keepalive on upstream connections, so a vanished model server is noticed
/// on an idle connection too.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Sends requests to model servers over keep-alive HTTP/1.1 connections from the
/// endpoint's pool of this client's kind: a request reuses an idle connection and
/// opens one only when none is idle.
#[derive(Clone)]
pub struct UpstreamClient {
    kind: PoolKind,
    connect_timeout: Duration,
}

/// How one exchange on one connection went.
enum Exchange {
    Answered(Response<Incoming>, Option<Box<UpstreamConn>>),
    /// The connection was closed before the request was written; it comes back
    /// untouched and may be sent on another connection.
    NotSent(Request<Full<Bytes>>),
    Failed(hyper::Error),
}

impl UpstreamClient {
    pub fn new(kind: PoolKind, connect_timeout: Duration) -> UpstreamClient {
        UpstreamClient {
            kind,
            connect_timeout,
        }
    }

    /// Sends `request` (its URI already set by [`upstream_uri`], its `Host` set) to
    /// `endpoint` and waits for the response head.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        if let Some(conn) = endpoint.pools.get(self.kind).take() {
            match exchange(conn, request).await {
                Exchange::NotSent(unsent) => request = unsent,
                done => return self.finish(endpoint, done),
            }
        }
        let conn = self.connect(endpoint).await?;
        let done = exchange(conn, request).await;
        self.finish(endpoint, done)
    }

    fn finish(
        &self,
        endpoint: &Arc<Endpoint>,
        done: Exchange,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let failed = |message: String| ProxyError::UpstreamFailed {
            endpoint: endpoint.url().to_string(),
            message,
        };
        match done {
            Exchange::Answered(response, conn) => {
                let lease = Lease::new(conn, Arc::clone(endpoint), self.kind);
                Ok(response.map(|body| UpstreamBody::new(body, lease)))
            }
            Exchange::NotSent(_) => Err(failed(
                "the connection closed before the request was sent".to_string(),
            )),
            Exchange::Failed(error) => Err(failed(error_chain(&error))),
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Box<UpstreamConn>, ProxyError> {
        let authority = endpoint.authority();
        // An IPv6 literal keeps its brackets in the authority, not in a socket address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let unreachable = |message: String| ProxyError::UpstreamUnreachable {
            endpoint: endpoint.url().to_string(),
            message,
        };
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(unreachable(error_chain(&error))),
            Err(_elapsed) => {
                return Err(ProxyError::UpstreamConnectTimeout {
                    endpoint: endpoint.url().to_string(),
                    timeout: self.connect_timeout,
                });
            }
        };
        // Both are optimisations; a socket that refuses them still works.
        let _ = stream.set_nodelay(true);
        let _ =
            SockRef::from(&stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| unreachable(error_chain(&error)))?;
        Ok(UpstreamConn::new(sender, driver))
    }
}

/// Sends `request` on `conn`, driving the connection in this task until the
/// response head arrives.
async fn exchange(mut conn: Box<UpstreamConn>, request: Request<Full<Bytes>>) -> Exchange {
    let mut response = pin!(conn.sender.try_send_request(request));
    let mut open = true;
    let answered = poll_fn(|cx| {
        // hyper answers (or fails) the request before its connection ends, so
        // the response is ready once the driver is.
        if open && conn.drive(cx).is_ready() {
            open = false;
        }
        response.as_mut().poll(cx)
    })
    .await;
    match answered {
        Ok(response) => Exchange::Answered(response, open.then_some(conn)),
        Err(mut error) => match error.take_message() {
            Some(request) => Exchange::NotSent(request),
            None => Exchange::Failed(error.into_error()),
        },
    }
}

/// The URI of the upstream request, in origin form (HTTP/1.1 sends it as is and
/// the endpoint goes in `Host`): the endpoint's path prefix, then the request's
/// path (less `strip` leading bytes) and query.
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
    Ok(Uri::from(path_and_query))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::EndpointUrl;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::new(EndpointUrl::parse(url).unwrap())
    }

    #[test]
    fn uri_is_origin_form_with_the_endpoint_prefix() {
        let plain = endpoint("http://10.0.0.1:9000");
        let uri: Uri = "/v2/models/m/infer?x=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &uri, 0).unwrap(),
            "/v2/models/m/infer?x=1"
        );

        let prefixed = endpoint("http://10.0.0.1:9000/serving");
        assert_eq!(
            upstream_uri(&prefixed, &uri, 0).unwrap(),
            "/serving/v2/models/m/infer?x=1"
        );
    }

    #[test]
    fn uri_strips_the_generic_prefix() {
        let plain = endpoint("http://h:1");
        let uri: Uri = "/models/m/invocations?a=b".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &uri, "/models/m".len()).unwrap(),
            "/invocations?a=b"
        );
        let bare: Uri = "/models/m?a=b".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &bare, "/models/m".len()).unwrap(),
            "/?a=b"
        );
    }
}
