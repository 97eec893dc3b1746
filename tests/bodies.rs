//! Request bodies: long uploads stream to the model server as they arrive, what
//! the gateway holds for bodies stays within `server.max_buffered_body_bytes`,
//! and a client's faults while streaming are not blamed on the model server.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Behaviour, FakeUpstream, admin, one_model};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const KIB: usize = 1024;

/// A model server that says how many body bytes each request had when its
/// first chunk arrived (on `first_chunks`), then answers with the body's length.
async fn first_chunk_server() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_chunks, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first_chunks = first_chunks.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let first_chunks = first_chunks.clone();
                    async move {
                        let mut body = request.into_body();
                        let mut len = 0;
                        let mut first = true;
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Ok(data) = frame.into_data() {
                                len += data.len();
                                if first {
                                    let _ = first_chunks.send(len);
                                    first = false;
                                }
                            }
                        }
                        let answer = format!("{{\"received\": {len}}}");
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Starts a chunked upload to model `fraud`: the head and the first `chunk`.
async fn start_upload(gateway: SocketAddr, chunk: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let head = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    send_chunk(&mut stream, chunk).await;
    stream
}

async fn send_chunk(stream: &mut TcpStream, chunk: &[u8]) {
    stream
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(chunk).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();
}

/// Ends a chunked upload and reads the answer to the end.
async fn finish_upload(mut stream: TcpStream) -> String {
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    read_answer(stream).await
}

async fn read_answer(mut stream: TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_long_upload_reaches_the_model_server_before_the_client_has_sent_it_all() {
    let (server, mut first_chunks) = first_chunk_server().await;
    let gateway = common::gateway(&one_model(
        "",
        &[("2", "production", &[&format!("http://{server}")])],
    ))
    .await;
    // More than the read-ahead, so the body streams after its first bytes.
    let first = vec![b'x'; 100 * KIB];
    let mut upload = start_upload(gateway.data_addr(), &first).await;
    let seen = tokio::time::timeout(Duration::from_secs(20), first_chunks.recv())
        .await
        .expect("the model server saw nothing of the body while the client was still sending");
    assert!(seen.is_some_and(|n| n > 0));
    // Only now does the client send the rest.
    send_chunk(&mut upload, &vec![b'y'; 50 * KIB]).await;
    let answer = finish_upload(upload).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"received\": {}", 150 * KIB)),
        "{answer}"
    );
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413_and_does_not_count_against_the_endpoint() {
    let (server, _first_chunks) = first_chunk_server().await;
    let gateway = common::gateway(&one_model(
        "max_body_bytes = 131072\neject_after_failures = 1\neject_backoff_ms = 600000",
        &[("2", "production", &[&format!("http://{server}")])],
    ))
    .await;
    let mut upload = start_upload(gateway.data_addr(), &vec![b'x'; 100 * KIB]).await;
    send_chunk(&mut upload, &vec![b'x'; 100 * KIB]).await;
    let answer = finish_upload(upload).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    // One failure would eject the only endpoint; the next request gets through.
    let next = common::post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
}

#[tokio::test]
async fn a_client_that_stalls_mid_upload_gets_408_and_the_endpoint_stays_healthy() {
    let (server, mut first_chunks) = first_chunk_server().await;
    let gateway = common::gateway(&one_model(
        "request_timeout_ms = 300\neject_after_failures = 1\neject_backoff_ms = 600000",
        &[("2", "production", &[&format!("http://{server}")])],
    ))
    .await;
    let upload = start_upload(gateway.data_addr(), &vec![b'x'; 100 * KIB]).await;
    first_chunks.recv().await.unwrap();
    // The client sends nothing more; the request deadline passes.
    let answer = read_answer(upload).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client_timeout"), "{answer}");
    let next = common::post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
}

/// Production version 2 and staging version 3, every POST mirrored.
fn mirrored(server: &str, production: &str, staging: &str, shadow: &str) -> String {
    let mut text = one_model(
        server,
        &[
            ("2", "production", &[production]),
            ("3", "staging", &[staging]),
        ],
    );
    text.push_str(&format!("[models.shadow]\npercent = 100.0\n{shadow}\n"));
    text
}

async fn shadow_report(gateway: &stagegate::gateway::RunningGateway) -> Value {
    let answer = admin(gateway, Method::GET, "/api/v1/models/fraud/shadow", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["versions"][0].clone()
}

/// Polls `read` until `done` holds (20 s at most), without sleeping for luck.
async fn until<T, F: std::future::Future<Output = T>>(
    read: impl Fn() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let wait = async {
        loop {
            let value = read().await;
            if done(&value) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("never got there within 20 s")
}

#[tokio::test]
async fn a_long_mirrored_upload_streams_to_production_and_reaches_staging_whole() {
    let (production, mut first_chunks) = first_chunk_server().await;
    let staging = FakeUpstream::start("v3").await;
    let text = mirrored(
        "",
        &format!("http://{production}"),
        &staging.url(),
        "max_body_bytes = 1048576",
    );
    let gateway = common::gateway(&text).await;
    let mut upload = start_upload(gateway.data_addr(), &vec![b'a'; 100 * KIB]).await;
    first_chunks.recv().await.unwrap();
    send_chunk(&mut upload, &vec![b'b'; 100 * KIB]).await;
    let answer = finish_upload(upload).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    until(|| async { staging.received().len() }, |n| *n == 1).await;
    let body = &staging.received()[0].body;
    assert_eq!(body.len(), 200 * KIB);
    assert!(body[..100 * KIB].iter().all(|&b| b == b'a'));
    assert!(body[100 * KIB..].iter().all(|&b| b == b'b'));
}

/// The value of an unlabelled metric in `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_of_concurrent_uploads_stay_within_the_body_budget() {
    const UPLOADS: usize = 8;
    const SIZE: usize = 512 * KIB;
    const BUDGET: usize = 1024 * KIB;
    let production = FakeUpstream::start("v2").await;
    // Staging holds every mirror it gets, so their copies are all held at once.
    let staging = FakeUpstream::with("v3", Behaviour::WaitForRelease).await;
    let text = mirrored(
        &format!("max_buffered_body_bytes = {BUDGET}"),
        &production.url(),
        &staging.url(),
        "max_body_bytes = 4194304\nmax_in_flight = 64\ntimeout_ms = 600000",
    );
    let gateway = common::gateway(&text).await;
    let url = common::infer_url(&gateway);
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = "x".repeat(SIZE);
                common::send(&common::client(), Method::POST, &url, &[], &body).await
            })
        })
        .collect();
    for upload in uploads {
        let answer = upload.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    assert_eq!(production.received().len(), UPLOADS);
    assert!(production.received().iter().all(|r| r.body.len() == SIZE));

    // Every sampled request is either at staging (its copy held until released)
    // or dropped for want of budget.
    let report = until(
        || shadow_report(&gateway),
        |r| {
            staging.received().len() as u64 + r["dropped"]["body_budget"].as_u64().unwrap()
                == UPLOADS as u64
        },
    )
    .await;
    let at_staging = staging.received().len();
    assert!(
        at_staging <= BUDGET / SIZE,
        "{at_staging} copies of {SIZE} bytes held: {report}"
    );
    assert!(staging.received().iter().all(|r| r.body.len() == SIZE));
    let text = common::metrics(&gateway).await;
    assert!(
        metric(&text, "stagegate_buffered_body_bytes_peak") <= BUDGET as f64,
        "{text}"
    );
    assert_eq!(
        metric(&text, "stagegate_buffered_body_bytes_limit"),
        BUDGET as f64
    );
    assert_eq!(
        metric(&text, "stagegate_buffered_body_bytes"),
        (at_staging * SIZE) as f64
    );
    assert!(metric(&text, "stagegate_body_budget_refusals_total") >= 1.0);

    // Released, the mirrors end and give their bytes back.
    staging.release(UPLOADS);
    until(
        || common::metrics(&gateway),
        |text| metric(text, "stagegate_buffered_body_bytes") == 0.0,
    )
    .await;
}
