//! Closed-loop clients for `loadtest rollouts`: each sends one request after
//! another with a new random `x-user-id`, so the canary's sticky split sees
//! many users, until stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::compare::CompareError;

/// What the clients sent.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub requests: u64,
    pub not_ok: u64,
    pub seconds: f64,
}

impl Sent {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The clients, on a thread and runtime of their own.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<(AtomicU64, AtomicU64)>,
    started: Instant,
    thread: JoinHandle<()>,
}

const BODY: &str =
    r#"{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.2, 1.5, 3.0]}]}"#;

impl Traffic {
    pub fn start(url: String, clients: usize) -> Result<Traffic, CompareError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|source| CompareError::io("starting the traffic runtime", source))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let (flag, tally) = (Arc::clone(&stop), Arc::clone(&counts));
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let tasks: Vec<_> = (0..clients)
                    .map(|_| {
                        let (client, url) = (client.clone(), url.clone());
                        let (flag, tally) = (Arc::clone(&flag), Arc::clone(&tally));
                        tokio::spawn(async move {
                            while !flag.load(Ordering::Acquire) {
                                let ok = send(&client, &url).await;
                                tally.0.fetch_add(1, Ordering::Relaxed);
                                tally.1.fetch_add(u64::from(!ok), Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        Ok(Traffic {
            stop,
            counts,
            started: Instant::now(),
            thread,
        })
    }

    pub fn stop(self) -> Sent {
        self.stop.store(true, Ordering::Release);
        let seconds = self.started.elapsed().as_secs_f64();
        // A panicked client thread has nothing more to count.
        let _ = self.thread.join();
        Sent {
            requests: self.counts.0.load(Ordering::Relaxed),
            not_ok: self.counts.1.load(Ordering::Relaxed),
            seconds,
        }
    }
}

/// One request; whether it was answered 200.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> bool {
    let user = format!("user-{}", fastrand::u64(..));
    let request = http::Request::post(url)
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())));
    let Ok(request) = request else {
        return false;
    };
    match client.request(request).await {
        Ok(response) => {
            let ok = response.status() == http::StatusCode::OK;
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}
