//! A fast fake model server to point load at: it answers every request with a
//! prebuilt JSON body, optionally after a delay, with a share of 500s, or misbehaves
//! on purpose (`hang`, `reset`) so the client's error accounting can be exercised.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A request head larger than this is not a request this server will ever see from
/// the load generator; `reset` mode gives up reading and resets anyway.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// How long to pause after a failed accept: the usual cause is a full descriptor
/// table, and retrying at once would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// How the server treats each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Answer normally.
    #[default]
    Ok,
    /// Read the request, then never answer.
    Hang,
    /// Read the request head, then reset the connection (RST, not FIN).
    Reset,
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Delay before each answer.
    pub latency: Duration,
    /// Approximate size of the 200 body.
    pub response_bytes: usize,
    /// Fraction of requests (0..=1) answered with a 500.
    pub fail_rate: f64,
    pub mode: Mode,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            latency: Duration::ZERO,
            response_bytes: 200,
            fail_rate: 0.0,
            mode: Mode::Ok,
        }
    }
}

/// Serves `listener` until `shutdown` completes, then drops every open connection
/// (a fake backend has nothing worth draining, and `hang` connections never would).
pub async fn serve(
    listener: TcpListener,
    options: BackendOptions,
    shutdown: impl Future<Output = ()>,
) {
    let responder = Arc::new(Responder::new(&options));
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reaps finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(handle(stream, options.mode, Arc::clone(&responder)));
                }
                Err(err) => {
                    eprintln!("loadtest backend: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn handle(stream: TcpStream, mode: Mode, responder: Arc<Responder>) {
    // Without NODELAY small responses wait on Nagle plus delayed ACKs (~40 ms); a
    // failure only costs latency, so it is not worth dropping the connection for.
    let _ = stream.set_nodelay(true);
    match mode {
        Mode::Reset => reset_after_head(stream).await,
        Mode::Ok | Mode::Hang => serve_http(stream, responder).await,
    }
}

async fn serve_http(stream: TcpStream, responder: Arc<Responder>) {
    let service = service_fn(move |request| {
        let responder = Arc::clone(&responder);
        async move { responder.respond(request).await }
    });
    // A connection error (the client went away mid-request, say) ends that connection
    // only, and a load test provokes them on purpose: nothing to report.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Reads up to the end of the request head, then closes with SO_LINGER 0 so the
/// client sees a reset rather than an orderly close.
async fn reset_after_head(mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    // If the option cannot be set the drop below is a plain close, which the
    // client still counts as an error.
    let _ = stream.set_zero_linger();
}

/// Everything a request needs, built once: answering clones `Bytes` and allocates
/// nothing else itself.
struct Responder {
    ok_body: Bytes,
    error_body: Bytes,
    latency: Duration,
    fail_rate: f64,
    hang: bool,
}

impl Responder {
    fn new(options: &BackendOptions) -> Self {
        Responder {
            ok_body: json_body(options.response_bytes),
            error_body: Bytes::from_static(br#"{"error":"injected failure"}"#),
            latency: options.latency,
            fail_rate: options.fail_rate,
            hang: options.mode == Mode::Hang,
        }
    }

    async fn respond(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let mut body = request.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        // fastrand::f64() is in [0, 1), so a rate of 1.0 fails every request.
        let (status, body) = if self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate {
            (StatusCode::INTERNAL_SERVER_ERROR, &self.error_body)
        } else {
            (StatusCode::OK, &self.ok_body)
        };
        let mut response = Response::new(Full::new(body.clone()));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }
}

/// An Open Inference Protocol style response padded with scores to about `target`
/// bytes (never less than the fixed envelope).
pub fn json_body(target: usize) -> Bytes {
    const HEAD: &str =
        r#"{"model_name":"m","outputs":[{"name":"scores","datatype":"FP32","data":["#;
    const TAIL: &str = "]}]}";
    const SCORE: &str = "0.5";
    let mut body = String::with_capacity(target.max(HEAD.len() + TAIL.len()));
    body.push_str(HEAD);
    let mut first = true;
    while body.len() + TAIL.len() + SCORE.len() < target {
        if !first {
            body.push(',');
        }
        body.push_str(SCORE);
        first = false;
    }
    body.push_str(TAIL);
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_of_about_the_requested_size() {
        for target in [0, 100, 200, 1000, 10_000] {
            let body = json_body(target);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(value["outputs"][0]["data"].is_array());
            if target >= 100 {
                assert!(
                    body.len() <= target && body.len() + 4 >= target,
                    "{target}: {}",
                    body.len()
                );
            }
        }
    }
}
