//! gRPC load: a fake `inference.GRPCInferenceService` server that answers every
//! `ModelInfer` at once, and a closed-loop generator that keeps `streams` calls
//! in flight on each of a few HTTP/2 connections (many streams on few
//! connections, as gRPC clients run). Reports like [`crate::load`] does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, TE};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use stagegate::grpc::frame::framed;
use stagegate::grpc::status::{Code, grpc_status, put_status};
use stagegate::grpc::wire::Writer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

use crate::load::{LoadError, closed_loop_report, connect_tcp, refused};
use crate::report::{ErrorKind, Recorder, Report};

pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A `ModelInferRequest` for `model` with about `bytes` of raw FP32 input.
pub fn infer_request(model: &str, bytes: usize) -> Bytes {
    let (tensor, raw) = fp32_tensor("x", bytes, 100.0);
    let message = Writer::new()
        .string(1, model)
        .bytes(5, &tensor)
        .bytes(7, &raw)
        .finish();
    Bytes::from(framed(&message))
}

/// A `ModelInferResponse` with about `bytes` of raw FP32 output.
pub fn infer_response(bytes: usize) -> Bytes {
    let (tensor, raw) = fp32_tensor("scores", bytes, 7.0);
    let message = Writer::new()
        .string(1, "m")
        .string(2, "1")
        .bytes(5, &tensor)
        .bytes(6, &raw)
        .finish();
    Bytes::from(framed(&message))
}

/// An FP32 tensor `name` of shape `[1, n]` (its metadata message) and its raw
/// data, about `bytes` long, values `i / scale`.
fn fp32_tensor(name: &str, bytes: usize, scale: f32) -> (Vec<u8>, Vec<u8>) {
    let values = bytes / 4;
    let tensor = Writer::new()
        .string(1, name)
        .string(2, "FP32")
        .varint(3, 1)
        .varint(3, values as u64)
        .finish();
    let raw = (0..values)
        .flat_map(|i| (i as f32 / scale).to_le_bytes())
        .collect();
    (tensor, raw)
}

/// Serves `listener` until the task is dropped: every call gets `answer` and
/// `grpc-status: 0`, `latency` after it was read (a model's compute time).
pub async fn serve(listener: TcpListener, answer: Bytes, latency: Duration) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = answer.clone();
                async move {
                    // Read the call to its end, as a server does.
                    let _ = request.into_body().collect().await;
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    Ok::<_, std::convert::Infallible>(grpc_answer(answer))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn grpc_answer(message: Bytes) -> Response<Answer> {
    let mut trailers = HeaderMap::new();
    put_status(&mut trailers, Code::Ok, "");
    let mut response = Response::new(Answer {
        data: Some(message),
        trailers: Some(trailers),
    });
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// One message, then the trailers.
pub struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Ok(Frame::data(data))),
            None => self.trailers.take().map(|t| Ok(Frame::trailers(t))),
        };
        std::task::Poll::Ready(frame)
    }
}

/// What a gRPC run sends.
#[derive(Debug, Clone)]
pub struct GrpcLoad {
    pub addr: SocketAddr,
    pub model: String,
    pub connections: usize,
    /// Calls in flight on each connection.
    pub streams: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub request_bytes: usize,
}

/// Runs a closed loop of `ModelInfer` calls and reports what it measured.
pub async fn run(load: GrpcLoad) -> Result<Report, LoadError> {
    if load.connections == 0 || load.streams == 0 {
        return Err(LoadError::NoConnections);
    }
    let call = Arc::new(infer_request(&load.model, load.request_bytes));
    let uri: Uri = format!("http://{}{MODEL_INFER}", load.addr)
        .parse()
        .map_err(|_| LoadError::NoAddress(load.addr.to_string()))?;
    let mut senders = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        senders.push(connect(load.addr).await?);
    }
    let start = Instant::now();
    let measured_from = start + load.warmup;
    let end = measured_from + load.duration;
    let mut workers = JoinSet::new();
    for sender in &senders {
        for _ in 0..load.streams {
            let (sender, call, uri) = (sender.clone(), Arc::clone(&call), uri.clone());
            let timeout = load.timeout;
            workers.spawn(async move {
                let mut recorder = Recorder::new()?;
                let mut sender = sender;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        return Ok::<_, LoadError>(recorder);
                    }
                    let outcome =
                        timeout_at(sent + timeout, one_call(&mut sender, &uri, &call)).await;
                    let measured = sent >= measured_from;
                    if let Ok(Err(ErrorKind::Connect)) = outcome {
                        // The connection is gone: every further call would fail
                        // at once, so this worker stops instead of spinning.
                        if measured {
                            recorder.error(ErrorKind::Connect);
                        }
                        return Ok(recorder);
                    }
                    if !measured {
                        continue;
                    }
                    match outcome {
                        Ok(Ok(())) => recorder.success(sent.elapsed()),
                        Ok(Err(kind)) => recorder.error(kind),
                        Err(_) => recorder.error(ErrorKind::Timeout),
                    }
                }
            });
        }
    }
    closed_loop_report(workers, load.duration, load.connections).await
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, LoadError> {
    let stream = connect_tcp(addr).await?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| refused(addr, &e))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One call: sent, its answer read to the trailers, its status checked.
async fn one_call(
    sender: &mut SendRequest<Full<Bytes>>,
    uri: &Uri,
    call: &Bytes,
) -> Result<(), ErrorKind> {
    let mut request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(Full::new(call.clone()))
        .map_err(|_| ErrorKind::Connect)?;
    *request.version_mut() = http::Version::HTTP_2;
    sender.ready().await.map_err(|_| ErrorKind::Connect)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| ErrorKind::Reset)?;
    let head_status = grpc_status(response.headers());
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|_| ErrorKind::Reset)?;
    let status = head_status.or_else(|| collected.trailers().and_then(grpc_status));
    match status {
        Some(Code::Ok) => Ok(()),
        Some(_) => Err(ErrorKind::Status5xx),
        None => Err(ErrorKind::Reset),
    }
}
