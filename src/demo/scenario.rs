//! `stagegate demo --scenario rollout | bad-canary`: demo traffic through a whole
//! rollout, narrated step by step from the admin API.
//!
//! `rollout` takes version 3 from staging to production through canary steps.
//! `bad-canary` does the same, but version 3 starts failing once it has a share of
//! traffic, and the error-rate gate takes that share away again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::Demo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Start the demo and wait (print what to try).
    Interactive,
    /// A rollout of version 3 that succeeds.
    Rollout,
    /// A rollout whose candidate starts failing and is rolled back.
    BadCanary,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs a scripted scenario to its end; returns the rollout's final phase.
pub async fn run(
    demo: &Demo,
    scenario: Scenario,
    out: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let admin = format!("http://{}/api/v1/models/fraud", demo.gateway.admin_addr());
    let data = format!(
        "http://{}/v1/models/fraud:predict",
        demo.gateway.data_addr()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(drive(client.clone(), data, Arc::clone(&stop)));
    let plan = json!({
        "candidate": "3",
        "steps": [10, 50, 100],
        "step_interval_s": 2,
        "max_step_duration_s": 30,
        "min_requests": 50,
        "max_error_rate": 0.02,
        // The demo's models answer in microseconds, where a busy machine's
        // scheduler makes the tail a cliff that takes many thousands of
        // requests to bound; the median shows a slow candidate in seconds.
        "max_p99_ratio": "off",
        "max_latency_increase": 1.0,
        "reason": "demo: retrained on November data",
    });
    out(
        "starting a rollout of version 3: 10% -> 50% -> 100%, at least 2 s and 50 requests per step; \
         a step passes once its gates show, at 99% confidence, errors within 2 points of stable's \
         and a median latency at most twice stable's",
    );
    let started = call(
        &client,
        Method::POST,
        &format!("{admin}/rollout"),
        Some(plan),
    )
    .await?;
    if started["record"].is_null() {
        return Err(format!("the rollout did not start: {started}"));
    }
    let phase = narrate(demo, &client, &admin, scenario, out).await;
    stop.store(true, Ordering::Release);
    let sent = traffic.await.unwrap_or(0);
    out(&format!("done: {sent} demo requests sent"));
    let history = call(
        &client,
        Method::GET,
        &format!("{admin}/history?limit=10"),
        None,
    )
    .await?;
    out("journal (newest first):");
    for entry in history["entries"].as_array().into_iter().flatten() {
        let field = |name: &str| entry[name].as_str().unwrap_or("").to_string();
        out(&format!(
            "  #{} {} by {}: {}",
            entry["revision"],
            field("action"),
            field("actor"),
            field("reason")
        ));
    }
    phase
}

/// Prints every change of phase or step until the rollout ends.
async fn narrate(
    demo: &Demo,
    client: &HttpClient,
    admin: &str,
    scenario: Scenario,
    out: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let mut last = String::new();
    loop {
        let status = call(client, Method::GET, &format!("{admin}/rollout"), None).await?;
        let phase = status["phase"].as_str().unwrap_or("none").to_string();
        let now = format!("{phase} step {} at {}%", status["step"], status["weight"]);
        if now != last {
            out(&format!("rollout: {now}"));
            if let Some(reason) = status["rollout"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
            {
                out(&format!("  because: {reason}"));
            }
            last = now;
        }
        if let Some(readings) = status["readings"]
            .as_object()
            .filter(|_| phase == "progressing")
        {
            out(&format!(
                "  candidate {} requests, {} errors",
                readings["candidate_requests"], readings["candidate_errors"]
            ));
            for gate in readings["gates"].as_array().into_iter().flatten() {
                out(&format!("    {}", crate::ctl::gate_line(gate)));
            }
        }
        if scenario == Scenario::BadCanary
            && phase == "progressing"
            && status["weight"].as_f64() >= Some(10.0)
        {
            out("  (version 3 starts failing every prediction)");
            demo.set_failing("3", true);
        }
        if matches!(
            phase.as_str(),
            "succeeded" | "rolled_back" | "aborted" | "paused"
        ) {
            return Ok(phase);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Clients sending demo traffic at once.
const DEMO_CLIENTS: usize = 4;

/// Demo traffic: users `user-0` to `user-999`, from a few clients at once, as
/// fast as they go; returns the requests sent.
async fn drive(client: HttpClient, url: String, stop: Arc<AtomicBool>) -> u64 {
    let clients: Vec<_> = (0..DEMO_CLIENTS)
        .map(|_| tokio::spawn(drive_one(client.clone(), url.clone(), Arc::clone(&stop))))
        .collect();
    let mut sent = 0;
    for one in clients {
        sent += one.await.unwrap_or(0);
    }
    sent
}

async fn drive_one(client: HttpClient, url: String, stop: Arc<AtomicBool>) -> u64 {
    let mut sent = 0;
    while !stop.load(Ordering::Acquire) {
        let user = format!("user-{}", rand::random_range(0..1000u32));
        let body = r#"{"instances": [[0.2, 1.5, 3.0]]}"#;
        let request = Request::post(&url)
            .header("x-user-id", user)
            .body(Full::new(Bytes::from_static(body.as_bytes())));
        let Ok(request) = request else { continue };
        if let Ok(response) = client.request(request).await {
            let _ = response.into_body().collect().await;
        }
        sent += 1;
    }
    sent
}

async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("admin API: {e}"))?;
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("admin API answered non-JSON: {e}"))
}
