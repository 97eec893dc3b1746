//! Bad input and upstream faults: each gives its JSON error and status, and
//! nothing it should not reaches the model server.

mod common;

use std::time::Duration;

use common::{Behaviour, FakeUpstream, gateway, one_model, post};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn body_over_the_limit_is_413_with_content_length_and_never_forwarded() {
    let (upstream, gateway) = common::served_with("max_body_bytes = 100").await;
    let url = common::infer_url(&gateway);
    let big = "x".repeat(101);
    let answer = common::send(&common::client(), http::Method::POST, &url, &[], &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "body_too_large");
    assert_eq!(answer.header("x-stagegate-version"), "2");
    let exact = common::send(
        &common::client(),
        http::Method::POST,
        &url,
        &[],
        &"x".repeat(100),
    )
    .await;
    assert_eq!(exact.status, StatusCode::OK);
    assert_eq!(
        upstream.received().len(),
        1,
        "only the body within the limit is forwarded"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_and_never_forwarded() {
    let (upstream, gateway) = common::served_with("max_body_bytes = 100").await;
    let chunk = format!("1e\r\n{}\r\n", "x".repeat(30));
    let request = format!(
        "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(5)
    );
    let response = raw_exchange_closing(gateway.data_addr(), request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("body_too_large"), "{response}");
    assert!(upstream.received().is_empty());

    let within = format!(
        "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(3)
    );
    let response = raw_exchange_closing(gateway.data_addr(), within.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.received()[0].body.len(), 90);
}

/// Sends a raw HTTP/1.1 request with `connection: close` added and reads until EOF.
async fn raw_exchange_closing(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request).replacen("\r\n", "\r\nconnection: close\r\n", 1);
    common::raw_exchange(addr, text.as_bytes()).await.0
}

#[tokio::test]
async fn refused_upstream_is_502() {
    let refused = common::refused_addr().await;
    let gateway = common::gateway_for(refused).await;
    let answer = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.code(), "upstream_unreachable");
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains(&refused.to_string())
    );
    assert!(counts_upstream_errors(&gateway, "connect", 1).await);
}

#[tokio::test]
async fn slow_upstream_is_504_at_the_request_timeout() {
    let upstream = FakeUpstream::with("v2", Behaviour::Hang).await;
    let gateway = gateway(&one_model(
        "request_timeout_ms = 200",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let answer = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.code(), "upstream_timeout");
    assert!(answer.json()["error"].as_str().unwrap().contains("200ms"));
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn over_the_concurrency_limit_is_503_at_once_while_admitted_requests_finish() {
    let upstream = FakeUpstream::with("v2", Behaviour::WaitForRelease).await;
    let gateway = gateway(&one_model(
        "max_concurrent_requests = 1",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let url = common::infer_url(&gateway);
    let admitted = tokio::spawn(common::post_owned(url.clone()));
    while upstream.received().is_empty() {
        tokio::task::yield_now().await;
    }
    // The upstream holds the first request; a second one is shed without waiting.
    let shed = post(&url, &[]).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.code(), "overloaded");
    upstream.release(1);
    assert_eq!(admitted.await.unwrap().status, StatusCode::OK);
    // The slot is free again once the first response has been sent.
    upstream.release(1);
    assert_eq!(post(&url, &[]).await.status, StatusCode::OK);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn silent_and_partial_connections_are_closed_by_the_header_read_timeout() {
    let (upstream, gateway) = common::served_with("header_read_timeout_ms = 200").await;
    let addr = gateway.data_addr();
    // Silent, an incomplete HTTP/2 preface, and an incomplete HTTP/1 head.
    for opening in [
        &b""[..],
        b"PRI * HT",
        b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\n",
    ] {
        let (response, closed) = common::raw_exchange(addr, opening).await;
        assert!(
            closed,
            "connection was not closed by the header read timeout"
        );
        assert!(response.is_empty(), "{response}");
    }
    assert!(upstream.received().is_empty());
    assert_eq!(
        post(&format!("http://{addr}/v2/models/fraud/infer"), &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_keep_alive_connection_left_holding_half_a_head_is_closed() {
    let (upstream, gateway) = common::served_with("header_read_timeout_ms = 200").await;
    let body = r#"{"instances": [[1.0]]}"#;
    let exchange = format!(
        "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}\
         POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\n",
        body.len()
    );
    let (response, closed) = common::raw_exchange(gateway.data_addr(), exchange.as_bytes()).await;
    assert!(
        closed,
        "a second head that never completes must not hold the connection"
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn a_keep_alive_connection_stays_open_through_an_answer_that_streams_past_the_idle_limit() {
    // Three idle periods of answer, one chunk every half period.
    let upstream = streaming_upstream(6, Duration::from_millis(250)).await;
    let gateway = gateway(&one_model(
        "header_read_timeout_ms = 500",
        &[("2", "production", &[&format!("http://{upstream}")])],
    ))
    .await;
    let stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = |method: http::Method, path: &str, body: &'static [u8]| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "gateway")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body)))
            .unwrap()
    };
    let infer = request(http::Method::POST, "/v2/models/fraud/infer", b"{}");
    let answer = sender.send_request(infer).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(answer.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"......");
    // The gateway answers this one itself, on the same connection.
    sender
        .ready()
        .await
        .expect("the connection was closed after the long answer");
    let live = request(http::Method::GET, "/v2/health/live", b"");
    let answer = sender
        .send_request(live)
        .await
        .expect("the connection was closed after the long answer");
    assert_eq!(answer.status(), StatusCode::OK);
}

/// A model server whose every answer is `chunks` one-byte chunks, one per `gap`.
async fn streaming_upstream(chunks: usize, gap: Duration) -> std::net::SocketAddr {
    raw_upstream(move |mut stream| async move {
        let mut buf = [0u8; 4096];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            for _ in 0..chunks {
                tokio::time::sleep(gap).await;
                if stream.write_all(b"1\r\n.\r\n").await.is_err() {
                    return;
                }
            }
            if stream.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A model server on an ephemeral port that runs `serve` on each connection.
async fn raw_upstream<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

#[tokio::test]
async fn headers_over_the_limit_are_431() {
    let (upstream, gateway) = common::served_with("max_header_bytes = 8192").await;
    let url = common::infer_url(&gateway);
    let big = "y".repeat(9000);
    let answer = post(&url, &[("x-big", &big)]).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let medium = "y".repeat(5000);
    let answer = post(&url, &[("x-a", &medium), ("x-b", &medium)]).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(answer.code(), "headers_too_large");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_off_and_frees_its_slot() {
    let stalling = misbehaving_upstream(PARTIAL_ANSWER, Then::Stall).await;
    let healthy = FakeUpstream::start("v3").await;
    let config = one_model(
        "request_timeout_ms = 300\nmax_concurrent_requests = 1",
        &[
            ("2", "production", &[&format!("http://{stalling}")]),
            ("3", "staging", &[&healthy.url()]),
        ],
    );
    let gateway = gateway(&config).await;
    let url = common::infer_url(&gateway);
    let response = post_streaming(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body()).await;
    assert!(
        body.is_err(),
        "a stalled body must end in an error, not look complete"
    );
    // The only admission slot is free again.
    let next = post(&url, &[("x-stagegate-stage", "staging")]).await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(counts_upstream_errors(&gateway, "timeout", 1).await);
}

#[tokio::test]
async fn paths_that_could_reach_another_version_are_refused() {
    let archived = FakeUpstream::start("v1").await;
    let production = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model(
        "",
        &[
            ("1", "archived", &[&archived.url()]),
            ("2", "production", &[&production.url()]),
        ],
    ))
    .await;
    let base = format!("http://{}", gateway.data_addr());
    for path in [
        "/v2/models/fraud/ready/../versions/1/infer",
        "/v2/models/fraud/%2e%2e/fraud/versions/1/infer",
        "/models/fraud/v2/models/fraud/versions/1/infer",
    ] {
        let answer = post(&format!("{base}{path}"), &[]).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_path"),
            "{path}"
        );
    }
    let conflicting = post(
        &format!("{base}/v2/models/fraud/versions/2/infer"),
        &[("x-stagegate-stage", "staging")],
    )
    .await;
    assert_eq!(
        (conflicting.status, conflicting.code().as_str()),
        (StatusCode::BAD_REQUEST, "conflicting_pins")
    );
    assert!(archived.received().is_empty() && production.received().is_empty());
}

mod http2 {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    async fn connect(
        addr: std::net::SocketAddr,
    ) -> (http2::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        (
            sender,
            tokio::spawn(async move {
                let _ = connection.await;
            }),
        )
    }

    async fn send(
        sender: &mut http2::SendRequest<Full<Bytes>>,
        request: http::Request<Full<Bytes>>,
    ) -> (StatusCode, String) {
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn limits_answer_in_json_over_http2_too() {
        let (upstream, gateway) =
            common::served_with("max_body_bytes = 100\nmax_header_bytes = 8192").await;
        let (mut sender, _connection) = connect(gateway.data_addr()).await;
        let url = common::infer_url(&gateway);
        let big_body = http::Request::post(&url)
            .body(Full::new(Bytes::from(vec![b'x'; 200])))
            .unwrap();
        let (status, body) = send(&mut sender, big_body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("body_too_large"), "{body}");
        let big_headers = http::Request::post(&url)
            .header("x-a", "y".repeat(5000))
            .header("x-b", "y".repeat(5000))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, body) = send(&mut sender, big_headers).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(body.contains("headers_too_large"), "{body}");
        assert!(upstream.received().is_empty());
    }

    #[tokio::test]
    async fn the_forwarded_host_is_the_http2_authority_never_the_clients_header() {
        let (upstream, gateway) = common::served_with("").await;
        let (mut sender, _connection) = connect(gateway.data_addr()).await;
        let request = http::Request::post("http://gw.example:8080/v2/models/fraud/infer")
            .header("x-forwarded-host", "evil.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&mut sender, request).await.0, StatusCode::OK);
        let received = &upstream.received()[0];
        assert_eq!(received.headers["x-forwarded-host"], "gw.example:8080");
        assert_eq!(received.headers["host"], upstream.addr.to_string().as_str());
    }

    #[tokio::test]
    async fn an_idle_http2_connection_is_closed() {
        let (_upstream, gateway) = common::served_with("header_read_timeout_ms = 200").await;
        let (mut sender, connection) = connect(gateway.data_addr()).await;
        let request = http::Request::get(format!(
            "http://{}/v2/models/fraud/ready",
            gateway.data_addr()
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
        assert_eq!(send(&mut sender, request).await.0, StatusCode::OK);
        // Then nothing: the gateway ends the connection instead of holding it forever.
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .expect("an idle HTTP/2 connection must be closed")
            .unwrap();
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_the_healthy_one_takes_the_traffic() {
    let healthy = FakeUpstream::start("ok").await;
    let dead = format!("http://{}", common::refused_addr().await);
    let config = one_model(
        "eject_after_failures = 3\neject_backoff_ms = 60000",
        &[("2", "production", &[&healthy.url(), &dead])],
    );
    let gateway = gateway(&config).await;
    let url = common::infer_url(&gateway);
    let mut failed = 0;
    for _ in 0..60 {
        if post(&url, &[]).await.status != StatusCode::OK {
            failed += 1;
        }
    }
    assert!(
        failed <= 3,
        "{failed} requests failed; the dead endpoint must be ejected after 3"
    );
    assert_eq!(healthy.received().len(), 60 - failed);
}

#[tokio::test]
async fn a_version_with_no_healthy_endpoint_fails_fast_and_is_probed_back_in() {
    let addr = common::refused_addr().await;
    let config = one_model(
        "eject_after_failures = 2\neject_backoff_ms = 100",
        &[("2", "production", &[&format!("http://{addr}")])],
    );
    let gateway = gateway(&config).await;
    let url = common::infer_url(&gateway);
    for _ in 0..2 {
        assert_eq!(post(&url, &[]).await.code(), "upstream_unreachable");
    }
    let fast = post(&url, &[]).await;
    assert_eq!(
        (fast.status, fast.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_healthy_endpoint")
    );

    // The server comes back: after its back-off a probe finds it, and it serves again.
    let back = FakeUpstream::at(addr, "back", Behaviour::Answer { headers: vec![] }).await;
    let recovered = async {
        loop {
            if post(&url, &[]).await.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), recovered)
        .await
        .expect("probed back in");
    for _ in 0..5 {
        assert_eq!(post(&url, &[]).await.status, StatusCode::OK);
    }
    assert!(back.received().len() >= 6);
}

#[tokio::test]
async fn a_version_over_its_own_limit_sheds_while_others_serve() {
    let held = FakeUpstream::with("v2", Behaviour::WaitForRelease).await;
    let staging = FakeUpstream::start("v3").await;
    let mut config = one_model(
        "",
        &[
            ("2", "production", &[&held.url()]),
            ("3", "staging", &[&staging.url()]),
        ],
    );
    config = config.replacen(
        "stage = \"production\"",
        "stage = \"production\"\nmax_concurrent_requests = 1",
        1,
    );
    let gateway = gateway(&config).await;
    let url = common::infer_url(&gateway);
    let first = tokio::spawn(common::post_owned(url.clone()));
    while held.received().is_empty() {
        tokio::task::yield_now().await;
    }
    let shed = post(&url, &[]).await;
    assert_eq!(
        (shed.status, shed.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    assert_eq!(shed.header("x-stagegate-version"), "2");
    let other = post(&url, &[("x-stagegate-stage", "staging")]).await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "another version is not limited by version 2's limit"
    );
    held.release(2);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        post(&url, &[]).await.status,
        StatusCode::OK,
        "the slot is free again"
    );
}

/// What a misbehaving model server does after writing part of its answer.
#[derive(Clone, Copy)]
enum Then {
    Stall,
    Reset,
}

/// A model server that reads the request, writes `partial` (possibly nothing)
/// and then stalls forever or resets the connection (RST, not FIN).
async fn misbehaving_upstream(partial: &'static [u8], then: Then) -> std::net::SocketAddr {
    raw_upstream(move |mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(partial).await;
        let _ = stream.flush().await;
        match then {
            Then::Stall => std::future::pending::<()>().await,
            Then::Reset => {
                let _ = stream.set_zero_linger();
            }
        }
    })
    .await
}

const PARTIAL_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":";

/// Whether /metrics counts `count` upstream errors of `kind` for fraud v2.
async fn counts_upstream_errors(
    gateway: &stagegate::gateway::RunningGateway,
    kind: &str,
    count: u64,
) -> bool {
    let metrics = common::metrics(gateway).await;
    metrics.contains(&format!(
        r#"stagegate_upstream_errors_total{{model="fraud",version="2",kind="{kind}"}} {count}"#
    ))
}

#[tokio::test]
async fn an_upstream_reset_before_the_answer_is_502() {
    let resetting = misbehaving_upstream(b"", Then::Reset).await;
    let gateway = common::gateway_for(resetting).await;
    let answer = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.code(), "upstream_error");
    assert!(counts_upstream_errors(&gateway, "protocol", 1).await);
}

#[tokio::test]
async fn an_upstream_reset_mid_body_ends_the_client_body_in_an_error() {
    let resetting = misbehaving_upstream(PARTIAL_ANSWER, Then::Reset).await;
    let gateway = common::gateway_for(resetting).await;
    let url = common::infer_url(&gateway);
    // The gateway may already have sent the 200 head when the reset reaches it,
    // or not yet (the reset can arrive with the head): the client then sees its
    // connection end without an answer. Either way the answer must not look
    // complete.
    match post_streaming(&url).await {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK);
            let body = http_body_util::BodyExt::collect(response.into_body()).await;
            assert!(body.is_err(), "a reset body must end in an error");
        }
        Err(error) => assert!(!error.is_connect(), "{error}"),
    }
    assert!(counts_upstream_errors(&gateway, "protocol", 1).await);
}

/// A model server whose first connection sends the head and part of a body, then
/// stalls with the connection open; every later connection answers `{}`.
async fn first_answer_stalls() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let nth = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                        return;
                    }
                    let answer: &[u8] = if nth == 0 {
                        PARTIAL_ANSWER
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                    };
                    let _ = stream.write_all(answer).await;
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_whose_answer_was_abandoned_is_never_reused() {
    let (addr, accepted) = first_answer_stalls().await;
    let gateway = common::gateway_for(addr).await;
    let url = common::infer_url(&gateway);
    let response = post_streaming(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The client walks away with the body half read.
    drop(response);

    // Reusing that connection would read the rest of the old body as the next
    // answer; the next requests must get fresh, complete answers instead.
    for _ in 0..3 {
        let answer = post(&url, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"{}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// An empty POST whose response body is left to the caller to read (or not).
async fn post_streaming(
    url: &str,
) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
    let request = http::Request::post(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    common::client().request(request).await
}
