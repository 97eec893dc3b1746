//! Crash safety: drive changes through the admin API of the real binary, `kill -9`
//! it at a random moment, restart it, and check that every acknowledged change is
//! there and the state is valid: transitions, rollbacks, canary weights, rollouts
//! started, aborted and promoted, shadow settings. 50 rounds here; the soak run is
//! `cargo test --release --test crash -- --ignored`.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::changes::{VERSIONS, call, drive, verify};
use common::process::Serve;
use http::{Method, StatusCode};
use serde_json::{Value, json};

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
