//! Hostile and malformed clients: slow and silent connections in bulk, request
//! smuggling and broken framing, header floods, HTTP/2 rapid reset. Each must be
//! refused or closed without disturbing normal traffic, and nothing of it may
//! reach a model server.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FakeUpstream, gateway, one_model, post};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A model server that records the raw bytes it receives and answers every
/// connection's first request with a fixed 200.
async fn raw_upstream() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn smuggling_and_broken_framing_are_400_closed_and_never_forwarded() {
    let (upstream, seen) = raw_upstream().await;
    let gateway = common::gateway_for(upstream).await;
    let head = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\n";
    let cases = [
        (
            "two content-lengths",
            format!("{head}content-length: 2\r\ncontent-length: 4\r\n\r\n{{}}xx"),
        ),
        (
            "bad chunk size",
            format!("{head}transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "obs-fold header",
            format!("{head}x-folded: a\r\n  b\r\ncontent-length: 2\r\n\r\n{{}}"),
        ),
        (
            "bad transfer-encoding",
            format!("{head}transfer-encoding: gzip\r\n\r\n{{}}"),
        ),
    ];
    for (name, request) in cases {
        let (response, closed) =
            common::raw_exchange(gateway.data_addr(), request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{name}: {response:?}");
        assert!(closed, "{name}: the connection must be closed");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "something reached the model server: {:?}",
        String::from_utf8_lossy(&seen.lock().unwrap())
    );
    // The gateway still serves well-formed requests.
    assert_eq!(
        post(&common::infer_url(&gateway), &[]).await.status,
        StatusCode::OK
    );
}

const INFER: &str = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\n";
/// A request smuggled behind a chunked body, for a front end that trusts the
/// Content-Length instead.
const SMUGGLED: &str = "GET /v2/models/fraud/versions/1/infer HTTP/1.1\r\nhost: gw\r\n\r\n";

/// A request with both framings (`framing` are its two header lines), a chunked
/// body and a smuggled request after it.
fn conflicting(framing: &str) -> String {
    format!("{INFER}{framing}\r\n2\r\n{{}}\r\n0\r\n\r\n{SMUGGLED}")
}

/// Asserts `response` is the gateway's JSON 400 for both framings, alone.
fn assert_refused(response: &str, case: &str) {
    assert!(response.starts_with("HTTP/1.1 400"), "{case}: {response:?}");
    assert_eq!(
        response.matches("HTTP/1.1").count(),
        1,
        "{case}: {response:?}"
    );
    let lower = response.to_lowercase();
    assert!(
        lower.contains("\r\nconnection: close\r\n"),
        "{case}: {response:?}"
    );
    assert!(
        lower.contains("content-type: application/json"),
        "{case}: {response:?}"
    );
    assert!(
        response.contains("\"code\":\"bad_request\""),
        "{case}: {response:?}"
    );
    assert!(
        response.contains("Transfer-Encoding and Content-Length"),
        "{case}: {response:?}"
    );
}

fn forwarded(seen: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&seen.lock().unwrap()).to_lowercase()
}

/// Reads one response with a Content-Length body from a connection kept open.
async fn read_one_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|line| {
                    line.to_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|value| value.trim().parse().ok())
                .expect("a content-length");
            if received.len() >= head_end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed mid-response: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

/// RFC 9112 §6.3 lets a server read a request with both framings as chunked;
/// the gateway refuses it instead, as nginx and Envoy do: front ends that
/// disagree on which framing wins are how requests get smuggled. Whatever the
/// order or case of the headers, and even with a Content-Length hyper would
/// never parse, nothing reaches the model server, the smuggled request included.
#[tokio::test]
async fn transfer_encoding_with_content_length_is_400_closed_and_never_forwarded() {
    let (upstream, seen) = raw_upstream().await;
    let gateway = common::gateway_for(upstream).await;
    let cases = [
        (
            "content-length first",
            "content-length: 4\r\ntransfer-encoding: chunked\r\n",
        ),
        (
            "transfer-encoding first",
            "transfer-encoding: chunked\r\ncontent-length: 4\r\n",
        ),
        (
            "upper-case names",
            "TRANSFER-ENCODING: chunked\r\nCONTENT-LENGTH: 4\r\n",
        ),
        (
            "mixed-case names and coding",
            "Content-Length: 4\r\nTransfer-Encoding: Chunked\r\n",
        ),
        (
            "content-length that hyper skips unread",
            "transfer-encoding: chunked\r\ncontent-length: lots\r\n",
        ),
        (
            "codings ending in chunked",
            "transfer-encoding: gzip, chunked\r\ncontent-length: 4\r\n",
        ),
    ];
    for (case, framing) in cases {
        let request = conflicting(framing);
        let (response, closed) =
            common::raw_exchange(gateway.data_addr(), request.as_bytes()).await;
        assert_refused(&response, case);
        assert!(closed, "{case}: the connection must be closed");
    }
    let forwarded = forwarded(&seen);
    assert!(
        forwarded.is_empty(),
        "reached the model server: {forwarded}"
    );
    assert_eq!(
        post(&common::infer_url(&gateway), &[]).await.status,
        StatusCode::OK
    );
}

/// The requests before the conflicting one are served as always, whether the
/// client waits for each answer or pipelines them.
#[tokio::test]
async fn a_keep_alive_connection_is_served_up_to_the_conflicting_request() {
    let (upstream, seen) = raw_upstream().await;
    let gateway = common::gateway_for(upstream).await;
    let normal = format!("{INFER}content-length: 2\r\n\r\n{{}}");
    let refused = conflicting("content-length: 4\r\ntransfer-encoding: chunked\r\n");

    let mut stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    stream.write_all(normal.as_bytes()).await.unwrap();
    let first = read_one_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(forwarded(&seen).starts_with("post /v2/models/fraud/infer http/1.1\r\n"));
    stream.write_all(refused.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .is_ok();
    assert_refused(&String::from_utf8_lossy(&rest), "after a served request");
    assert!(closed, "the connection must be closed after the 400");
    assert_eq!(forwarded(&seen).matches("http/1.1\r\n").count(), 1);

    let pipelined = format!("{normal}{normal}{refused}");
    let (responses, closed) = common::raw_exchange(gateway.data_addr(), pipelined.as_bytes()).await;
    let statuses: Vec<&str> = responses
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &responses[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{responses:?}");
    assert!(
        closed,
        "the pipelined connection must be closed after the 400"
    );
    let forwarded = forwarded(&seen);
    assert_eq!(forwarded.matches("http/1.1\r\n").count(), 3, "{forwarded}");
    assert!(!forwarded.contains("versions/1"), "{forwarded}");
    assert!(!forwarded.contains("chunked"), "{forwarded}");
}

/// HTTP/2 has no Transfer-Encoding; its frames are never read as HTTP/1
/// heads, even when a body spells one out.
#[tokio::test]
async fn http2_connections_are_not_read_as_http1() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (upstream, gateway) = common::served_with("").await;
    let stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let lookalike = conflicting("content-length: 4\r\ntransfer-encoding: chunked\r\n");
    for _ in 0..3 {
        let request = http::Request::post(common::infer_url(&gateway))
            .header("content-length", lookalike.len())
            .body(Full::new(Bytes::from(lookalike.clone())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        response.into_body().collect().await.unwrap();
    }
    let received = upstream.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.body == lookalike.as_bytes()));
}

#[tokio::test]
async fn too_many_header_fields_are_431() {
    let (upstream, gateway) = common::served_with("").await;
    let mut request = String::from("GET /v2/models/fraud/ready HTTP/1.1\r\nhost: gw\r\n");
    for i in 0..150 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let (response, _) = common::raw_exchange(gateway.data_addr(), request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(upstream.received().is_empty());
}

/// Open file descriptors of this process (the in-process gateway's included).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_and_silent_clients_are_closed_while_normal_traffic_flows() {
    let (upstream, gateway) = common::served_with("header_read_timeout_ms = 300").await;
    let addr = gateway.data_addr();
    let url = format!("http://{addr}/v2/models/fraud/infer");
    post(&url, &[]).await; // warm the pools before the baseline
    let baseline = open_fds();

    let slow: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let started = Instant::now();
                // A third send nothing, a third a partial HTTP/1 head, a third a partial preface.
                let opening: &[u8] = match i % 3 {
                    0 => b"",
                    1 => b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\n",
                    _ => b"PRI * HTTP/2",
                };
                stream.write_all(opening).await.unwrap();
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
                started.elapsed()
            })
        })
        .collect();
    for _ in 0..100 {
        assert_eq!(
            post(&url, &[]).await.status,
            StatusCode::OK,
            "normal traffic must not notice"
        );
    }
    let mut slowest = Duration::ZERO;
    for connection in slow {
        slowest = slowest.max(connection.await.unwrap());
    }
    eprintln!("slowest of 200 closed {slowest:?} after its connect");
    // Nothing else closes a silent connection before `request_timeout_ms` (30 s):
    // well under that, it was the header-read timeout (a loaded CI machine may
    // take a second or more to get round to 200 connections).
    assert!(
        slowest < Duration::from_millis(300) + Duration::from_secs(5),
        "a silent connection stayed open {slowest:?}, past the header-read timeout plus 5 s"
    );
    // The gateway's side of every slow connection is gone too.
    let settled = async {
        while open_fds() > baseline + 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "file descriptors stayed at {} (baseline {baseline})",
                open_fds()
            )
        });
    assert!(upstream.received().len() == 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_burst_does_not_stall_other_clients() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream =
        FakeUpstream::with("v2", common::Behaviour::Delay(Duration::from_millis(50))).await;
    let gateway = gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let addr = gateway.data_addr();
    let attacker = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let Ok((mut sender, connection)) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
        else {
            return 0;
        };
        tokio::spawn(connection);
        let mut reset = 0;
        for _ in 0..2000 {
            let request = http::Request::post(format!("http://{addr}/v2/models/fraud/infer"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            if sender.ready().await.is_err() {
                break; // the gateway closed the connection: fine
            }
            // Open the stream, then drop it at once: the client resets it.
            let pending = sender.send_request(request);
            drop(pending);
            reset += 1;
        }
        reset
    });
    let url = format!("http://{addr}/v2/models/fraud/ready");
    let client = common::client();
    for _ in 0..20 {
        let started = Instant::now();
        let answer = common::send(&client, http::Method::GET, &url, &[], "").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a normal client stalled"
        );
    }
    attacker.await.unwrap();
}
