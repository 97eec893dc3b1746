//! gRPC through the gateway against a hand-made HTTP/2 model server: streaming
//! calls flow both ways, the deadline and overload give their statuses, canaries
//! split calls by sticky metadata, and metrics count gRPC outcomes.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use stagegate::grpc::frame::{PREFIX, framed};
use stagegate::grpc::status::{Code, grpc_status, put_status};
use stagegate::grpc::wire::{self, Writer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const STREAM: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// A model server that answers each message of a call with one naming
/// `server` and echoing the message's `id` (field 3), after `delay`; `received`
/// is notified of each message as it arrives.
async fn model_server(server: &'static str, delay: Duration) -> SocketAddr {
    model_server_telling(server, delay, Arc::new(Notify::new())).await
}

async fn model_server_telling(
    server: &'static str,
    delay: Duration,
    received: Arc<Notify>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    answer(request, server, delay, Arc::clone(&received))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Frames sent from a task as they are made.
struct Frames(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

async fn answer(
    request: Request<Incoming>,
    server: &'static str,
    delay: Duration,
    received: Arc<Notify>,
) -> Result<Response<Frames>, Infallible> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut body = request.into_body();
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            // One answer per whole message, as it arrives.
            while pending.len() >= PREFIX {
                let length =
                    u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
                if pending.len() < PREFIX + length {
                    break;
                }
                let message: Vec<u8> = pending.drain(..PREFIX + length).skip(PREFIX).collect();
                received.notify_one();
                let id = wire::last_string(&message, 3)
                    .unwrap()
                    .unwrap_or("")
                    .to_string();
                tokio::time::sleep(delay).await;
                let reply = Writer::new().string(1, server).string(3, &id).finish();
                if sender
                    .send(Frame::data(Bytes::from(framed(&reply))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        put_status(&mut trailers, Code::Ok, "");
        let _ = sender.send(Frame::trailers(trailers)).await;
    });
    let mut response = Response::new(Frames(receiver));
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    Ok(response)
}

fn request_message(model: &str, id: &str) -> Vec<u8> {
    framed(&Writer::new().string(1, model).string(3, id).finish())
}

/// What a call got: the `server` and `id` of each answer, and its status.
#[derive(Debug)]
struct Outcome {
    answers: Vec<(String, String)>,
    status: Option<Code>,
}

async fn call(
    gateway: SocketAddr,
    path: &str,
    messages: &[Vec<u8>],
    metadata: &[(&str, &str)],
) -> Outcome {
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::post(format!("http://{gateway}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in metadata {
        request = request.header(*name, *value);
    }
    let body = Full::new(Bytes::from(messages.concat()));
    let response = sender
        .send_request(request.body(body).unwrap())
        .await
        .unwrap();
    let head_status = grpc_status(response.headers());
    let collected = response.into_body().collect().await.unwrap();
    let status = head_status.or_else(|| collected.trailers().and_then(grpc_status));
    let bytes = collected.to_bytes();
    let mut answers = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= PREFIX {
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let message = &rest[PREFIX..PREFIX + length];
        let field = |n| {
            wire::last_string(message, n)
                .unwrap()
                .unwrap_or("")
                .to_string()
        };
        answers.push((field(1), field(3)));
        rest = &rest[PREFIX + length..];
    }
    Outcome { answers, status }
}

fn config(server: &str, production: SocketAddr, staging: SocketAddr, model_extra: &str) -> String {
    format!(
        "[server]\n{server}\n[[models]]\nname = \"m\"\n{model_extra}\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\n\
         endpoints = [\"http://{production}\"]\ngrpc_endpoints = [\"http://{production}\"]\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\n\
         endpoints = [\"http://{staging}\"]\ngrpc_endpoints = [\"http://{staging}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_call_is_routed_by_its_first_message_and_flows_both_ways() {
    let (production, staging) = (
        model_server("v1", Duration::ZERO).await,
        model_server("v2", Duration::ZERO).await,
    );
    let gateway = common::gateway(&config("", production, staging, "")).await;
    let messages: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|id| request_message("m", id))
        .collect();
    let outcome = call(gateway.data_addr(), STREAM, &messages, &[]).await;
    assert_eq!(outcome.status, Some(Code::Ok), "{outcome:?}");
    let ids: Vec<&str> = outcome.answers.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["a", "b", "c"],
        "every message of the stream reached the server"
    );
    assert!(
        outcome.answers.iter().all(|(server, _)| server == "v1"),
        "{outcome:?}"
    );
    // The same stream pinned to staging by metadata goes there, all of it.
    let pinned = call(
        gateway.data_addr(),
        STREAM,
        &messages,
        &[("x-stagegate-stage", "staging")],
    )
    .await;
    assert!(
        pinned.answers.iter().all(|(server, _)| server == "v2"),
        "{pinned:?}"
    );
    assert_eq!(pinned.answers.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_server_is_deadline_exceeded_and_an_overloaded_gateway_unavailable() {
    let received = Arc::new(Notify::new());
    let slow = model_server_telling("v1", Duration::from_secs(30), Arc::clone(&received)).await;
    let server = "request_timeout_ms = 200\nmax_concurrent_requests = 1";
    let gateway = common::gateway(&config(server, slow, slow, "")).await;
    let addr = gateway.data_addr();
    let first =
        tokio::spawn(async move { call(addr, INFER, &[request_message("m", "1")], &[]).await });
    // Once the first call is at the model server, holding the only slot, a
    // second is refused at once.
    received.notified().await;
    let second = call(addr, INFER, &[request_message("m", "2")], &[]).await;
    assert_eq!(second.status, Some(Code::Unavailable), "{second:?}");
    let first = first.await.unwrap();
    assert_eq!(first.status, Some(Code::DeadlineExceeded), "{first:?}");
    let metrics = common::metrics(&gateway).await;
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    // The refused call counts as an unrouted 503; the stalled one as answered by
    // version 1, then as its upstream timing out (which the gates also see).
    assert!(
        value("stagegate_requests_total{model=\"\",version=\"\",stage=\"\",code=\"5xx\"}") >= 1.0
    );
    assert!(
        value("stagegate_upstream_errors_total{model=\"m\",version=\"1\",kind=\"timeout\"}") >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_splits_grpc_calls_by_sticky_metadata() {
    let (production, staging) = (
        model_server("v1", Duration::ZERO).await,
        model_server("v2", Duration::ZERO).await,
    );
    let canary = "[models.canary]\nsticky_header = \"x-user-id\"";
    let gateway = common::gateway(&config("", production, staging, canary)).await;
    let answer = common::admin(
        &gateway,
        http::Method::POST,
        "/api/v1/models/m/canary",
        Some(serde_json::json!({ "version": "2", "weight": 50 })),
    )
    .await;
    assert!(answer.status.is_success(), "{:?}", answer.body);
    let mut seen = std::collections::BTreeMap::new();
    for user in 0..40 {
        let user = user.to_string();
        let metadata = [("x-user-id", user.as_str())];
        let first = call(
            gateway.data_addr(),
            INFER,
            &[request_message("m", "1")],
            &metadata,
        )
        .await;
        let again = call(
            gateway.data_addr(),
            INFER,
            &[request_message("m", "2")],
            &metadata,
        )
        .await;
        assert_eq!(
            first.answers[0].0, again.answers[0].0,
            "user {user} is sticky"
        );
        *seen.entry(first.answers[0].0.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both versions take calls at 50%: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_past_the_body_budget_is_resource_exhausted() {
    let production = model_server("v1", Duration::ZERO).await;
    let gateway = common::gateway(&config(
        "max_buffered_body_bytes = 64",
        production,
        production,
        "",
    ))
    .await;
    let large = framed(&Writer::new().string(1, "m").bytes(7, &[0u8; 256]).finish());
    let outcome = call(gateway.data_addr(), INFER, &[large], &[]).await;
    assert_eq!(outcome.status, Some(Code::ResourceExhausted), "{outcome:?}");
    let small = call(
        gateway.data_addr(),
        INFER,
        &[request_message("m", "1")],
        &[],
    )
    .await;
    assert_eq!(
        small.status,
        Some(Code::Ok),
        "the budget is given back: {small:?}"
    );
}
