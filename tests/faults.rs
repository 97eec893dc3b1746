//! Bad input and upstream faults: each gives its JSON error and status, and
//! nothing it should not reaches the model server.

mod common;

use std::time::Duration;

use common::{Behaviour, FakeUpstream, gateway, one_model, post};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn body_over_the_limit_is_413_with_content_length_and_never_forwarded() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model(
        "max_body_bytes = 100",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let url = format!("http://{}/v2/models/fraud/infer", gateway.data_addr());
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
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model(
        "max_body_bytes = 100",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
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
    raw_exchange(addr, text.as_bytes()).await
}

#[tokio::test]
async fn refused_upstream_is_502() {
    let refused = common::refused_addr().await;
    let gateway = gateway(&one_model(
        "",
        &[("2", "production", &[&format!("http://{refused}")])],
    ))
    .await;
    let answer = post(
        &format!("http://{}/v2/models/fraud/infer", gateway.data_addr()),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.code(), "upstream_unreachable");
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains(&refused.to_string())
    );
    let metrics = common::metrics(&gateway).await;
    assert!(
        metrics.contains(
            r#"stagegate_upstream_errors_total{model="fraud",version="2",kind="connect"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_upstream_is_504_at_the_request_timeout() {
    let upstream = FakeUpstream::with("v2", Behaviour::Hang).await;
    let gateway = gateway(&one_model(
        "request_timeout_ms = 200",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let answer = post(
        &format!("http://{}/v2/models/fraud/infer", gateway.data_addr()),
        &[],
    )
    .await;
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
    let url = format!("http://{}/v2/models/fraud/infer", gateway.data_addr());
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
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model(
        "header_read_timeout_ms = 200",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let addr = gateway.data_addr();
    // Silent, an incomplete HTTP/2 preface, and an incomplete HTTP/1 head.
    for opening in [
        &b""[..],
        b"PRI * HT",
        b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\n",
    ] {
        let closed =
            tokio::time::timeout(Duration::from_secs(10), raw_exchange(addr, opening)).await;
        let response = closed.expect("connection was not closed by the header read timeout");
        assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
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
async fn headers_over_the_limit_are_431() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model(
        "max_header_bytes = 8192",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let url = format!("http://{}/v2/models/fraud/infer", gateway.data_addr());
    let big = "y".repeat(9000);
    let answer = post(&url, &[("x-big", &big)]).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let medium = "y".repeat(5000);
    let answer = post(&url, &[("x-a", &medium), ("x-b", &medium)]).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(answer.code(), "headers_too_large");
    assert!(upstream.received().is_empty());
}
