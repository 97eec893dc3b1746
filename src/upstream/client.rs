//! The client side: sending a request to a model server on a pooled keep-alive
//! connection ([`super::pool`]), the upstream request URI, and the
//! classification of what went wrong.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpStream, lookup_host};
use tokio::time::{Instant, timeout, timeout_at};

use super::health::EjectionPolicy;
use super::pool::{Lease, PoolKind, PooledConn, UpstreamBody, UpstreamConn};
use super::request_body::RequestBody;
use super::{Endpoint, UpstreamError};
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

/// When the answer's head must have come, and the timeout that makes it (for
/// the error).
#[derive(Debug, Clone, Copy)]
pub struct HeadDeadline {
    pub at: Instant,
    pub timeout: Duration,
}

/// How one exchange on one connection went.
enum Exchange {
    Answered(Response<Incoming>, Option<PooledConn>),
    /// The connection was closed before the request was written; it comes back
    /// untouched and may be sent on another connection.
    /// Boxed: it is rare, and the request would make every exchange larger.
    NotSent(Box<Request<RequestBody>>),
    Failed(hyper::Error),
    /// No answer by the deadline; the connection is closed.
    TimedOut,
}

impl UpstreamClient {
    pub fn new(kind: PoolKind, connect_timeout: Duration) -> UpstreamClient {
        UpstreamClient {
            kind,
            connect_timeout,
        }
    }

    /// Sends `request` (its URI already set by [`upstream_uri`], its `Host` set) to
    /// `endpoint` and waits for the response head until `deadline`, connecting
    /// first if no connection is idle.
    /// `endpoint` is owned so the future borrows nothing but the client; the
    /// response body's lease keeps it.
    pub async fn send(
        &self,
        endpoint: Arc<Endpoint>,
        mut request: Request<RequestBody>,
        deadline: HeadDeadline,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if let Some(conn) = endpoint.pools.get(self.kind).take() {
            match exchange(conn, request, deadline.at).await {
                Exchange::NotSent(unsent) => request = *unsent,
                done => return self.finish(endpoint, done, deadline),
            }
        }
        // Boxed: connecting is the rare path, and its future would otherwise
        // make every request's future larger (and costlier to move).
        let conn = match timeout_at(deadline.at, Box::pin(self.connect(&endpoint))).await {
            Ok(connected) => connected?,
            Err(_elapsed) => return self.finish(endpoint, Exchange::TimedOut, deadline),
        };
        let done = exchange(conn, request, deadline.at).await;
        self.finish(endpoint, done, deadline)
    }

    fn finish(
        &self,
        endpoint: Arc<Endpoint>,
        done: Exchange,
        deadline: HeadDeadline,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let failed = |message: String| UpstreamError::Failed {
            endpoint: endpoint.url().to_string(),
            message,
        };
        match done {
            Exchange::TimedOut => Err(UpstreamError::Timeout {
                endpoint: endpoint.url().to_string(),
                timeout: deadline.timeout,
            }),
            Exchange::Answered(response, conn) => {
                let lease = Lease::new(conn, endpoint, self.kind);
                Ok(response.map(|body| UpstreamBody::new(body, lease)))
            }
            // Only a fresh connection gets here: it closed before anything was sent.
            Exchange::NotSent(_) => Err(unreachable(
                &endpoint,
                "the connection closed before the request was sent".to_string(),
            )),
            Exchange::Failed(error) => Err(failed(error_chain(&error))),
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<PooledConn, UpstreamError> {
        let stream = self.open_tcp(endpoint).await?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| unreachable(endpoint, error_chain(&error)))?;
        Ok(UpstreamConn::new(sender, driver))
    }

    /// A TCP connection to `endpoint`, set up for requests.
    pub(super) async fn open_tcp(&self, endpoint: &Endpoint) -> Result<TcpStream, UpstreamError> {
        let stream = self.open_stream(endpoint).await?;
        // Both are optimisations; a socket that refuses them still works.
        let _ = stream.set_nodelay(true);
        let _ =
            SockRef::from(&stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        Ok(stream)
    }

    /// Resolves the endpoint's host and connects to its addresses in turn, all
    /// within the connect timeout; each address gets an equal share of the time
    /// left, so one that drops packets cannot use it all up.
    async fn open_stream(&self, endpoint: &Endpoint) -> Result<TcpStream, UpstreamError> {
        let deadline = Instant::now() + self.connect_timeout;
        let timed_out = || UpstreamError::ConnectTimeout {
            endpoint: endpoint.url().to_string(),
            timeout: self.connect_timeout,
        };
        let authority = endpoint.authority();
        // An IPv6 literal keeps its brackets in the authority, not in a socket address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        // An IP address resolves at once, without a lookup.
        let addrs: Vec<SocketAddr> = match timeout_at(deadline, lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(error)) => {
                return Err(unreachable(
                    endpoint,
                    format!("cannot resolve {host}: {error}"),
                ));
            }
            Err(_elapsed) => return Err(timed_out()),
        };
        let mut failure = unreachable(endpoint, format!("{host} resolved to no address"));
        for (tried, addr) in addrs.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = left / u32::try_from(addrs.len() - tried).unwrap_or(u32::MAX);
            failure = match timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => unreachable(endpoint, format!("{addr}: {}", error_chain(&error))),
                Err(_elapsed) => timed_out(),
            };
        }
        Err(failure)
    }
}

pub(super) fn unreachable(endpoint: &Endpoint, message: String) -> UpstreamError {
    UpstreamError::Unreachable {
        endpoint: endpoint.url().to_string(),
        message,
    }
}

/// Sends `request` on `conn`, driving the connection in this task until the
/// response head arrives or `deadline` passes.
async fn exchange(
    mut conn: PooledConn,
    request: Request<RequestBody>,
    deadline: Instant,
) -> Exchange {
    conn.head_deadline.as_mut().reset(deadline);
    let mut response = pin!(conn.sender.try_send_request(request));
    let mut conn = Some(conn);
    let answered = poll_fn(|cx| {
        // A connection that ends (even cleanly: the server closed it while it was
        // idle) is dropped at once: hyper hands a request it had not written back
        // only when its connection goes, and otherwise the answer would never come.
        if let Some(open) = conn.as_mut()
            && open.drive(cx).is_ready()
        {
            conn = None;
        }
        if let Poll::Ready(answered) = response.as_mut().poll(cx) {
            return Poll::Ready(Some(answered));
        }
        match conn.as_mut() {
            Some(open) => open.head_deadline.as_mut().poll(cx).map(|()| None),
            // Gone with its connection, the answer fails at once.
            None => Poll::Pending,
        }
    })
    .await;
    let Some(answered) = answered else {
        return Exchange::TimedOut;
    };
    match answered {
        Ok(response) => Exchange::Answered(response, conn),
        Err(mut error) => match error.take_message() {
            Some(request) => Exchange::NotSent(Box::new(request)),
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
    use crate::vocab::EndpointUrl;

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

#[cfg(test)]
mod exchange_tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::vocab::EndpointUrl;

    fn request() -> Request<RequestBody> {
        Request::post("/infer")
            .header(http::header::HOST, "model")
            .body(RequestBody::whole(bytes::Bytes::from_static(b"{}"), None))
            .unwrap()
    }

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn within(timeout: Duration) -> HeadDeadline {
        HeadDeadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Answers one request on one connection, then closes it when told to and
    /// says so.
    async fn one_answer_then_close() -> (SocketAddr, oneshot::Sender<()>, oneshot::Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, close_now) = oneshot::channel();
        let (closed, on_close) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
            stream.write_all(answer).await.unwrap();
            let _ = close_now.await;
            drop(stream);
            let _ = closed.send(());
        });
        (addr, close, on_close)
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_server_closed_comes_back_unsent() {
        let (addr, close, on_close) = one_answer_then_close().await;
        let endpoint = Endpoint::new(EndpointUrl::parse(&format!("http://{addr}")).unwrap());
        let client = UpstreamClient::new(PoolKind::Primary, Duration::from_secs(5));
        let conn = client.connect(&endpoint).await.unwrap();
        let Exchange::Answered(response, Some(conn)) = exchange(conn, request(), far()).await
        else {
            panic!("the first request must be answered on an open connection");
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}");

        // The server closes the idle connection; the runtime sees the EOF.
        close.send(()).unwrap();
        on_close.await.unwrap();
        tokio::task::yield_now().await;
        // Sent on it anyway (as when the close races a checkout), the request must
        // come back unwritten, ready for another connection, not wait forever.
        let sent =
            tokio::time::timeout(Duration::from_secs(30), exchange(conn, request(), far())).await;
        match sent {
            Ok(Exchange::NotSent(request)) => assert_eq!(request.uri(), "/infer"),
            Ok(Exchange::Answered(..)) => panic!("answered on a closed connection"),
            Ok(Exchange::Failed(error)) => panic!("failed instead of coming back: {error}"),
            Ok(Exchange::TimedOut) => panic!("timed out instead of coming back"),
            Err(_) => panic!("the exchange hung on a closed connection"),
        }
    }

    /// The endpoint at `addr`, a client, and the answer to one request sent there.
    async fn answered_once(addr: SocketAddr) -> (Arc<Endpoint>, UpstreamClient, Bytes) {
        let url = EndpointUrl::parse(&format!("http://{addr}")).unwrap();
        let endpoint = Arc::new(Endpoint::new(url));
        let client = UpstreamClient::new(PoolKind::Primary, Duration::from_secs(5));
        let response = client
            .send(
                Arc::clone(&endpoint),
                request(),
                within(Duration::from_secs(30)),
            )
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (endpoint, client, body)
    }

    #[tokio::test]
    async fn the_connections_one_timer_bounds_each_exchange_on_it() {
        let (addr, _close, _on_close) = one_answer_then_close().await;
        let (endpoint, client, _) = answered_once(addr).await;
        // The server never answers the second request on the same connection,
        // whose timer was last set for the first one.
        assert_eq!(endpoint.pools.get(PoolKind::Primary).len(), 1);
        let timeout = Duration::from_millis(100);
        let Err(error) = client
            .send(Arc::clone(&endpoint), request(), within(timeout))
            .await
        else {
            panic!("answered a request the server never answered");
        };
        assert!(
            matches!(error, UpstreamError::Timeout { timeout: t, .. } if t == timeout),
            "{error}"
        );
        assert!(
            endpoint.pools.get(PoolKind::Primary).is_empty(),
            "a connection that timed out is closed, not pooled"
        );
    }

    #[tokio::test]
    async fn idle_connections_go_back_to_the_pool_and_are_reaped_once_closed() {
        let (addr, close, on_close) = one_answer_then_close().await;
        let (endpoint, _, body) = answered_once(addr).await;
        assert_eq!(&body[..], b"{}");
        let pool = endpoint.pools.get(PoolKind::Primary);
        assert_eq!(pool.len(), 1, "a finished exchange returns its connection");
        assert!(endpoint.pools.get(PoolKind::Shadow).is_empty());

        endpoint.pools.reap(PoolKind::Primary);
        assert_eq!(pool.len(), 1, "an open idle connection is kept");
        close.send(()).unwrap();
        on_close.await.unwrap();
        tokio::task::yield_now().await;
        endpoint.pools.reap(PoolKind::Primary);
        assert!(pool.is_empty(), "a connection the server closed is reaped");
    }
}

/// Passive health from one exchange: transport failures and gateway-class
/// statuses count against the endpoint; anything else is a sign of life.
pub fn record_health<B>(
    endpoint: &Endpoint,
    result: &Result<Response<B>, UpstreamError>,
    policy: &EjectionPolicy,
) {
    let failed = match result {
        Ok(response) => matches!(response.status().as_u16(), 502..=504),
        Err(_) => true,
    };
    if !failed {
        endpoint.health.record_success();
    } else if endpoint.health.record_failure(policy) {
        tracing::warn!(endpoint = %endpoint.url(), "endpoint ejected after repeated failures");
    }
}
