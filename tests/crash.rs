//! Crash safety: drive changes through the admin API of the real binary, `kill -9`
//! it at a random moment, restart it, and check that every acknowledged change is
//! there and the state is valid: transitions, rollbacks, canary weights, rollouts
//! started, aborted and promoted, shadow settings. 50 rounds here; the soak run is
//! `cargo test --release --test crash -- --ignored`.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::Serve;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["1", "2", "3", "4", "5"];

fn write_config(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[models]]\nname = \"fraud\"\n",
    );
    for (i, version) in VERSIONS.iter().enumerate() {
        let stage = if i == 0 { "production" } else { "staging" };
        text.push_str(&format!(
            "[[models.versions]]\nversion = \"{version}\"\nstage = \"{stage}\"\nendpoints = [\"http://127.0.0.1:{}\"]\n",
            10_000 + i
        ));
    }
    let path = dir.join("stagegate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn call(
    admin: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<common::Answer> {
    let url = format!("http://{admin}{path}");
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let response = common::client().request(request).await.ok()?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .ok()?
        .to_bytes();
    Some(common::Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// One random change that keeps exactly one production version: promotions,
/// rollbacks, and moves of non-production versions between staging and archived.
fn next_change(production: &str) -> (String, Value) {
    let others: Vec<&str> = VERSIONS
        .iter()
        .copied()
        .filter(|v| *v != production)
        .collect();
    let version = others[fastrand::usize(..others.len())];
    let transition = |stage: &str| {
        (
            format!("/api/v1/models/fraud/versions/{version}/transition"),
            json!({ "stage": stage }),
        )
    };
    let post = |path: &str, body: Value| (format!("/api/v1/models/fraud/{path}"), body);
    match fastrand::u8(..9) {
        0 => transition("production"),
        1 => post("rollback", json!({ "force": true, "reason": "crash test" })),
        2 => transition("archived"),
        3 => transition("staging"),
        4 => post(
            "canary",
            json!({ "version": version, "weight": fastrand::u8(0..=100) }),
        ),
        5 => post(
            "rollout",
            json!({ "candidate": version, "steps": [10, 50], "step_interval_s": 3600 }),
        ),
        6 => post("rollout/abort", json!({})),
        7 => post("rollout/promote", json!({ "reason": "crash test" })),
        _ => post("shadow", json!({ "percent": fastrand::u8(0..=100) })),
    }
}

/// Sends changes one after another until the process dies; records what was acknowledged.
async fn drive(admin: String, mut production: String, acked: Arc<Mutex<Vec<Value>>>) {
    loop {
        let (path, body) = next_change(&production);
        let Some(answer) = call(&admin, Method::POST, &path, Some(body)).await else {
            return;
        };
        if answer.status.is_success() {
            let record = answer.json()["record"].clone();
            if record["to"] == "production" {
                production = record["version"].as_str().unwrap().to_string();
            }
            acked.lock().unwrap().push(record);
        }
    }
}

/// Every acknowledged record is in the history, revisions have no gaps, and the
/// model has exactly one production version. Returns the production version.
async fn verify(admin: &str, acked: &[Value]) -> String {
    let model = call(admin, Method::GET, "/api/v1/models/fraud", None)
        .await
        .unwrap()
        .json();
    let productions: Vec<&Value> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["stage"] == "production")
        .collect();
    assert_eq!(productions.len(), 1, "{model}");
    let history = call(
        admin,
        Method::GET,
        "/api/v1/models/fraud/history?limit=1000",
        None,
    )
    .await
    .unwrap()
    .json();
    let entries = history["entries"].as_array().unwrap();
    let newest = entries
        .first()
        .map_or(0, |e| e["revision"].as_u64().unwrap());
    assert_eq!(model["registry_revision"].as_u64().unwrap(), newest);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry["revision"].as_u64().unwrap(),
            newest - i as u64,
            "revisions have a gap"
        );
    }
    let oldest_kept = newest.saturating_sub(entries.len() as u64);
    for record in acked
        .iter()
        .filter(|r| r["revision"].as_u64().unwrap() > oldest_kept)
    {
        let revision = record["revision"].as_u64().unwrap();
        let entry = &entries[(newest - revision) as usize];
        assert_eq!(
            entry, record,
            "acknowledged change {revision} was lost or altered"
        );
    }
    // A canary only ever points at a staging version.
    let rollout = call(admin, Method::GET, "/api/v1/models/fraud/rollout", None)
        .await
        .unwrap()
        .json();
    if let Some(canary) = rollout["canary"]["version"].as_str() {
        let stage = model["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == canary)
            .map(|v| v["stage"].clone());
        assert_eq!(stage, Some(json!("staging")), "canary {canary} in {model}");
    }
    productions[0]["version"].as_str().unwrap().to_string()
}

async fn crash_rounds(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path());
    let acked = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..rounds {
        let serve = Serve::start(&path);
        let so_far = acked.lock().unwrap().clone();
        let production = verify(&serve.admin_addr, &so_far).await;
        let driver = tokio::spawn(drive(
            serve.admin_addr.clone(),
            production,
            Arc::clone(&acked),
        ));
        // A random moment: before, between or during journal writes.
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..20_000))).await;
        tokio::task::spawn_blocking(move || serve.kill_hard())
            .await
            .unwrap();
        driver.await.unwrap();
    }
    let serve = Serve::start(&path);
    let all = acked.lock().unwrap().clone();
    verify(&serve.admin_addr, &all).await;
    let acknowledged = all.len();
    eprintln!(
        "{rounds} kill -9 rounds: {acknowledged} acknowledged changes, all present after restart"
    );
    assert!(
        acknowledged > 0,
        "no change was acknowledged in {rounds} rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_survives_kill_9() {
    crash_rounds(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 1000 rounds"]
async fn soak_every_acknowledged_change_survives_kill_9() {
    crash_rounds(1000).await;
}

/// The last rollout state the journal holds.
fn journaled_rollout(dir: &Path) -> Value {
    let journal = std::fs::read_to_string(dir.join("data/journal.jsonl")).unwrap();
    journal
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|record| record.get("rollout").cloned())
        .next_back()
        .expect("a rollout record")
}

async fn rollout_view(admin: &str) -> Value {
    call(admin, Method::GET, "/api/v1/models/fraud/rollout", None)
        .await
        .unwrap()
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_where_the_journal_left_it_after_kill_9() {
    let prod = common::FakeUpstream::start("v2").await;
    let cand = common::FakeUpstream::start("v3").await;
    let dir = tempfile::tempdir().unwrap();
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";
    let mut text = common::one_model(
        server,
        &[
            ("2", "production", &[&prod.url()]),
            ("3", "staging", &[&cand.url()]),
        ],
    );
    text.push_str("[models.canary]\nsticky_header = \"x-user-id\"\n");
    let path = dir.path().join("stagegate.toml");
    std::fs::write(&path, text).unwrap();

    let mut serve = Serve::start(&path);
    // The requests below go one at a time: the error gate is loose enough to
    // pass on tens of them; the latency gates (off) would need hundreds or thousands.
    let plan = json!({
        "candidate": "3", "steps": [10, 30, 60, 100], "step_interval_s": 0.4,
        "max_step_duration_s": 60.0, "min_requests": 5,
        "max_error_rate": 0.2, "max_p99_ratio": "off", "max_latency_increase": "off"
    });
    let started = call(
        &serve.admin_addr,
        Method::POST,
        "/api/v1/models/fraud/rollout",
        Some(plan),
    )
    .await
    .unwrap();
    assert_eq!(started.status, StatusCode::CREATED);
    for target_step in [2, 3] {
        // Traffic until the rollout reaches the step, then kill -9 mid-step.
        let url = format!("http://{}/v2/models/fraud/infer", serve.data_addr);
        let admin = serve.admin_addr.clone();
        let reached = async {
            loop {
                let user = format!("u{}", fastrand::u32(..));
                call_with_user(&url, &user).await;
                if rollout_view(&admin).await["step"].as_u64() >= Some(target_step) {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), reached)
            .await
            .is_err()
        {
            panic!(
                "step {target_step} never reached: {}",
                rollout_view(&admin).await
            );
        }
        tokio::task::spawn_blocking(move || serve.kill_hard())
            .await
            .unwrap();
        let journaled = journaled_rollout(dir.path());
        assert_eq!(journaled["phase"], "progressing");

        serve = Serve::start(&path);
        let resumed = rollout_view(&serve.admin_addr).await;
        assert_eq!(
            resumed["rollout"]["step"], journaled["step"],
            "resumed at the journal's step"
        );
        assert_eq!(
            resumed["weight"],
            json!(journaled["plan"]["steps"][journaled["step"].as_u64().unwrap() as usize])
        );
        let model = call(&serve.admin_addr, Method::GET, "/api/v1/models/fraud", None)
            .await
            .unwrap()
            .json();
        assert_eq!(
            model["production"], "2",
            "no transition that was not decided"
        );
    }
    let url = format!("http://{}/v2/models/fraud/infer", serve.data_addr);
    let finished = async {
        loop {
            call_with_user(&url, &format!("u{}", fastrand::u32(..))).await;
            if rollout_view(&serve.admin_addr).await["phase"] == "succeeded" {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), finished)
        .await
        .expect("the resumed rollout finishes");
    let model = call(&serve.admin_addr, Method::GET, "/api/v1/models/fraud", None)
        .await
        .unwrap()
        .json();
    assert_eq!(model["production"], "3");
}

async fn call_with_user(url: &str, user: &str) {
    let request = http::Request::post(url)
        .header("x-user-id", user)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = common::client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
}
