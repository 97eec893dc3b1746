//! Streamed LLM load: a fake OpenAI-compatible server that answers every
//! `POST /v1/chat/completions` with `events` server-sent events `gap` apart
//! (one token each, then `[DONE]`), and a closed-loop generator that sends
//! streamed chat calls over HTTP/1.1 keep-alive connections and reads each
//! answer to its end. Reports like [`crate::load`] does, with the latency of a
//! call measured to its first event (time to first token); every call must
//! bring all `events`, or it counts as an error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

use crate::load::{LoadError, closed_loop_report, connect_tcp, refused};
use crate::report::{ErrorKind, Recorder, Report};

pub const CHAT: &str = "/v1/chat/completions";

/// Serves streamed answers of `events` events, `gap` apart, until dropped.
pub async fn serve(listener: TcpListener, events: usize, gap: Duration) {
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| async move {
                // The request is read whole, as a server would before generating.
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(answer(events, gap))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn answer(events: usize, gap: Duration) -> Response<Events> {
    let (sender, receiver) = mpsc::channel(2);
    tokio::spawn(async move {
        for k in 0..events {
            if k > 0 {
                tokio::time::sleep(gap).await;
            }
            if sender.send(event(k)).await.is_err() {
                return;
            }
        }
        let _ = sender.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let mut response = Response::new(Events(receiver));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// Event `k`: a chat completion chunk carrying one word.
fn event(k: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\
         \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{k}\"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

/// A streamed chat load.
#[derive(Debug, Clone)]
pub struct SseLoad {
    pub addr: SocketAddr,
    pub model: String,
    /// The events each answer must bring (its `[DONE]` not counted).
    pub events: usize,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
}

/// Runs a closed loop of streamed chat calls and reports what it measured.
pub async fn run(load: SseLoad) -> Result<Report, LoadError> {
    if load.connections == 0 {
        return Err(LoadError::NoConnections);
    }
    let body = Bytes::from(format!(
        "{{\"model\":\"{}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}",
        load.model
    ));
    let uri: Uri = format!("http://{}{CHAT}", load.addr)
        .parse()
        .map_err(|_| LoadError::NoAddress(load.addr.to_string()))?;
    let start = Instant::now();
    let (measured_from, end) = (start + load.warmup, start + load.warmup + load.duration);
    let mut workers = JoinSet::new();
    for _ in 0..load.connections {
        let mut sender = connect(load.addr).await?;
        let (uri, body, load) = (uri.clone(), body.clone(), load.clone());
        workers.spawn(async move {
            let mut recorder = Recorder::new()?;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return Ok::<_, LoadError>(recorder);
                }
                let call = one_call(&mut sender, &uri, &body, load.events);
                let outcome = timeout_at(sent + load.timeout, call).await;
                if sent < measured_from {
                    continue;
                }
                match outcome {
                    Ok(Ok(first_event)) => recorder.success(first_event.duration_since(sent)),
                    Ok(Err(ErrorKind::Connect)) => {
                        recorder.error(ErrorKind::Connect);
                        return Ok(recorder);
                    }
                    Ok(Err(kind)) => recorder.error(kind),
                    Err(_) => recorder.error(ErrorKind::Timeout),
                }
            }
        });
    }
    closed_loop_report(workers, load.duration, load.connections).await
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, LoadError> {
    let stream = connect_tcp(addr).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| refused(addr, &e))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One streamed call read to its end; when its first event came.
async fn one_call(
    sender: &mut SendRequest<Full<Bytes>>,
    uri: &Uri,
    body: &Bytes,
    events: usize,
) -> Result<Instant, ErrorKind> {
    let request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(http::header::HOST, "loadtest")
        .body(Full::new(body.clone()))
        .map_err(|_| ErrorKind::Connect)?;
    sender.ready().await.map_err(|_| ErrorKind::Connect)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| ErrorKind::Reset)?;
    if let Some(kind) = ErrorKind::from_status(response.status()) {
        return Err(kind);
    }
    let mut body = response.into_body();
    let (mut first, mut seen) = (None, 0usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ErrorKind::Reset)?;
        if let Ok(data) = frame.into_data() {
            first.get_or_insert_with(Instant::now);
            seen += event_ends(&data);
        }
    }
    // `[DONE]` is one more event than the tokens.
    match (first, seen == events + 1) {
        (Some(first), true) => Ok(first),
        _ => Err(ErrorKind::Reset),
    }
}

/// Events ended (by a blank line) in a frame. An event's end split across two
/// frames would be missed and the call counted as failed; the server writes
/// one event per frame and a proxy that passes frames through keeps them.
fn event_ends(data: &[u8]) -> usize {
    data.windows(2).filter(|w| w == b"\n\n").count()
}

/// An answer's events as its generating task sends them.
pub struct Events(mpsc::Receiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(Frame::data(data))))
    }
}
