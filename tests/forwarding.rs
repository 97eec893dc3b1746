//! Forwarding: header hygiene both ways, x-forwarded-for, pooled upstream
//! connections, spreading over endpoints, HTTP/2 from clients.

mod common;

use bytes::Bytes;
use common::{Behaviour, FakeUpstream, gateway, one_model, post};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_towards_the_model_server() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    // hyper's client would manage Connection itself, so write the request by hand.
    let mut stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let request = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\n\
                   connection: x-secret, close\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n\
                   te: trailers\r\nproxy-authorization: Basic Zm9vOmJhcg==\r\n\
                   x-kept: yes\r\ncontent-length: 2\r\n\r\n{}";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let received = &upstream.received()[0];
    for stripped in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !received.headers.contains_key(stripped),
            "{stripped} reached the model server"
        );
    }
    // hyper's client may add its own `connection: keep-alive`, never the client's.
    if let Some(connection) = received.headers.get("connection") {
        assert!(!connection.to_str().unwrap().contains("x-secret"));
    }
    assert_eq!(received.headers["x-kept"], "yes");
    assert_eq!(received.body, Bytes::from_static(b"{}"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_towards_the_client() {
    let headers = vec![
        ("connection", "x-upstream-secret"),
        ("x-upstream-secret", "1"),
        ("keep-alive", "timeout=99"),
        ("proxy-authenticate", "Basic"),
        ("x-model-kept", "yes"),
    ];
    let upstream = FakeUpstream::with("v2", Behaviour::Answer { headers }).await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let answer = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    for stripped in ["x-upstream-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            !answer.headers.contains_key(stripped),
            "{stripped} reached the client"
        );
    }
    assert_eq!(answer.header("x-model-kept"), "yes");
}

#[tokio::test]
async fn forwarded_for_carries_the_real_peer_last_and_host_is_the_endpoint() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let url = common::infer_url(&gateway);
    post(&url, &[]).await;
    post(&url, &[("x-forwarded-for", "6.6.6.6")]).await;
    let received = upstream.received();
    assert_eq!(received[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(received[1].headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(
        received[0].headers["host"],
        upstream.addr.to_string().as_str()
    );
    assert_eq!(
        received[0].headers["x-forwarded-host"],
        gateway.data_addr().to_string().as_str()
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let url = common::infer_url(&gateway);
    for _ in 0..25 {
        assert_eq!(post(&url, &[]).await.status, StatusCode::OK);
    }
    assert_eq!(upstream.received().len(), 25);
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests must share one connection"
    );

    // Concurrent requests open at most one connection each, and later rounds reuse them.
    for _ in 0..3 {
        let round: Vec<_> = (0..8)
            .map(|_| tokio::spawn(common::post_owned(url.clone())))
            .collect();
        for request in round {
            assert_eq!(request.await.unwrap().status, StatusCode::OK);
        }
    }
    // 1 + 8 if every round reused perfectly; a little slack for pool check-in races.
    assert!(
        upstream.connections() <= 12,
        "{} connections for 8-wide rounds",
        upstream.connections()
    );
}

/// A model server that answers one request per connection, keep-alive in
/// appearance, then closes it; reports each close.
async fn one_answer_per_connection() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                let _ = stream.shutdown().await;
                drop(stream);
                let _ = closed.send(());
            });
        }
    });
    (url, closes)
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_reused() {
    let (upstream, mut closes) = one_answer_per_connection().await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream])])).await;
    let url = common::infer_url(&gateway);
    for round in 0..5 {
        let answer = post(&url, &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "round {round}: {:?}",
            answer.body
        );
        // The server has closed the pooled connection before the next request.
        closes.recv().await.unwrap();
    }
}

#[tokio::test]
async fn requests_spread_over_all_endpoints_of_a_version() {
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let gateway = gateway(&one_model(
        "",
        &[("2", "production", &[&a.url(), &b.url()])],
    ))
    .await;
    let url = common::infer_url(&gateway);
    for _ in 0..60 {
        assert_eq!(post(&url, &[]).await.status, StatusCode::OK);
    }
    let (hits_a, hits_b) = (a.received().len(), b.received().len());
    assert_eq!(hits_a + hits_b, 60);
    assert!(
        hits_a >= 10 && hits_b >= 10,
        "uneven spread: {hits_a} / {hits_b}"
    );
}

#[tokio::test]
async fn endpoint_path_prefix_is_prepended() {
    let upstream = FakeUpstream::start("v2").await;
    let prefixed = format!("{}/serving", upstream.url());
    let gateway = gateway(&one_model("", &[("2", "production", &[&prefixed])])).await;
    let answer = post(
        &format!(
            "http://{}/models/fraud/invocations?x=1",
            gateway.data_addr()
        ),
        &[],
    )
    .await;
    assert_eq!(answer.json()["path"], "/serving/invocations?x=1");
}

#[tokio::test]
async fn http2_cleartext_clients_are_served_on_the_same_port() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Request::post(common::infer_url(&gateway))
        .body(Full::new(Bytes::from_static(b"{\"inputs\": []}")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-stagegate-stage"], "production");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"server\":\"v2\""));
    assert_eq!(
        upstream.received()[0].body,
        Bytes::from_static(b"{\"inputs\": []}")
    );
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_gateway_and_not_forwarded() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let mut stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let head = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\n\
                content-length: 4\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ping").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let received = &upstream.received()[0];
    assert_eq!(received.body, Bytes::from_static(b"ping"));
    assert!(!received.headers.contains_key("expect"));
}

/// A model server answering every request with a chunked body of `chunks`
/// chunks of 16 KiB, chunk `i` filled with byte `i % 251`.
async fn chunked_upstream(chunks: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for i in 0..chunks {
                        let chunk = vec![(i % 251) as u8; 16 * 1024];
                        let framed = [
                            format!("{:x}\r\n", chunk.len()).into_bytes(),
                            chunk,
                            b"\r\n".to_vec(),
                        ]
                        .concat();
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    url
}

fn expected_chunked_body(chunks: usize) -> Vec<u8> {
    (0..chunks)
        .flat_map(|i| std::iter::repeat_n((i % 251) as u8, 16 * 1024))
        .collect()
}

/// Reads a body a frame at a time, pausing between frames like a slow client.
async fn read_slowly(mut body: hyper::body::Incoming) -> Vec<u8> {
    let mut read = Vec::new();
    let mut frames = 0u32;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            read.extend_from_slice(&data);
        }
        frames += 1;
        if frames.is_multiple_of(32) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    read
}

#[tokio::test]
async fn large_chunked_answers_stream_whole_to_slow_http1_and_http2_clients() {
    // 8 MiB: more than the loopback socket buffers hold, so the gateway has to
    // wait for the client and read the model server's answer over many reads.
    const CHUNKS: usize = 512;
    let upstream = chunked_upstream(CHUNKS).await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream])])).await;
    let expected = expected_chunked_body(CHUNKS);
    for http2 in [false, true] {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http::<Full<Bytes>>();
        // Twice per protocol: the second answer reuses the pooled connection.
        for round in 0..2 {
            let request = Request::post(common::infer_url(&gateway))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = read_slowly(response.into_body()).await;
            assert_eq!(body.len(), expected.len(), "http2={http2} round {round}");
            assert!(
                body == expected,
                "http2={http2} round {round}: bytes differ"
            );
        }
    }
}
