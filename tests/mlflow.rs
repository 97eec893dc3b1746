//! Following a real MLflow server: moving the `champion` alias rolls the new
//! version out and promotes it; a failing candidate is rolled back and MLflow is
//! told; `ctl rollback` moves the alias; legacy stages drive stages; a version
//! without endpoints is reported, not served; MLflow dying changes nothing and
//! loses nothing; and MLflow's own webhook deliveries trigger syncs.
//!
//! One MLflow server is shared by the tests (each uses registered models of its
//! own); the one that kills MLflow starts its own.

mod common;
#[path = "common/mlflow_server.rs"]
mod mlflow_server;

use std::collections::BTreeMap;
use std::time::Duration;

use common::traffic::Traffic;
use common::{Behaviour, FakeUpstream, TOKEN, admin};
use http::{Method, StatusCode};
use mlflow_server::MlflowServer;
use serde_json::{Value, json};
use stagegate::gateway::RunningGateway;

/// A registered model in a real MLflow, driven through its REST API as a
/// person's tooling would.
struct Registered {
    url: String,
    name: String,
}

impl Registered {
    async fn create(server: &MlflowServer, name: &str) -> Registered {
        let registered = Registered {
            url: server.url(),
            name: name.to_string(),
        };
        registered
            .call(
                Method::POST,
                "registered-models/create",
                json!({ "name": name }),
            )
            .await;
        registered
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let (status, value) = self.try_call(method, path, body).await;
        assert!(status.is_success(), "MLflow {path}: {status} {value}");
        value
    }

    async fn try_call(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}/api/2.0/mlflow/{path}", self.url);
        let headers = [("content-type", "application/json")];
        let body = if method == Method::GET {
            String::new()
        } else {
            body.to_string()
        };
        let answer = common::send(&common::client(), method, &url, &headers, &body).await;
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status, value)
    }

    /// A registered model with two versions served at `first` and `second`, and
    /// `champion` on the first; returns it and the two version ids.
    async fn with_champion(
        server: &MlflowServer,
        name: &str,
        first: &str,
        second: &str,
    ) -> (Registered, String, String) {
        let registered = Registered::create(server, name).await;
        let v1 = registered.version(Some(first)).await;
        let v2 = registered.version(Some(second)).await;
        registered.set_alias("champion", &v1).await;
        (registered, v1, v2)
    }

    /// A new version; with `endpoint`, tagged with it.
    async fn version(&self, endpoint: Option<&str>) -> String {
        let tags: Vec<Value> = endpoint
            .map(|e| json!({"key": "stagegate.endpoints", "value": e}))
            .into_iter()
            .collect();
        let body = json!({"name": self.name, "source": "s3://models/fraud", "tags": tags});
        let answer = self.call(Method::POST, "model-versions/create", body).await;
        answer["model_version"]["version"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn set_alias(&self, alias: &str, version: &str) {
        let body = json!({"name": self.name, "alias": alias, "version": version});
        self.call(Method::POST, "registered-models/alias", body)
            .await;
    }

    async fn alias(&self, alias: &str) -> Option<String> {
        let path = format!("registered-models/alias?name={}&alias={alias}", self.name);
        let (status, value) = self.try_call(Method::GET, &path, Value::Null).await;
        status.is_success().then(|| {
            value["model_version"]["version"]
                .as_str()
                .unwrap()
                .to_string()
        })
    }

    async fn tags(&self, version: &str) -> BTreeMap<String, String> {
        let path = format!("model-versions/get?name={}&version={version}", self.name);
        let answer = self.call(Method::GET, &path, Value::Null).await;
        answer["model_version"]["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let text = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (text("key"), text("value"))
            })
            .collect()
    }

    async fn stage(&self, version: &str) -> String {
        let path = format!("model-versions/get?name={}&version={version}", self.name);
        let answer = self.call(Method::GET, &path, Value::Null).await;
        answer["model_version"]["current_stage"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn transition(&self, version: &str, stage: &str) {
        let body = json!({
            "name": self.name, "version": version, "stage": stage,
            "archive_existing_versions": true,
        });
        self.call(Method::POST, "model-versions/transition-stage", body)
            .await;
    }
}

/// Config for model `fraud` following `registered` in `url`.
fn config(url: &str, registered: &str, mlflow: &str, extra: &str) -> String {
    format!(
        r#"
[registry]
kind = "mlflow"
url = "{url}"
poll_interval_ms = 200
{extra}

[[models]]
name = "fraud"
[models.canary]
sticky_header = "x-user-id"
[models.rollout]
steps = [50, 100]
step_interval_s = 0.3
max_step_duration_s = 25.0
min_requests = 20
max_error_rate = 0.05
max_p99_ratio = "off"
max_latency_increase = "off"
[models.mlflow]
registered_model = "{registered}"
{mlflow}
"#
    )
}

async fn model(gateway: &RunningGateway) -> Value {
    admin(gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json()
}

/// Waits (bounded) until `check` holds for the model's admin view.
async fn until(gateway: &RunningGateway, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let wait = async {
        loop {
            let view = model(gateway).await;
            if check(&view) {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(view) => view,
        Err(_) => panic!("never {what}: {}", model(gateway).await),
    }
}

async fn serving(gateway: &RunningGateway, version: &str) -> Value {
    until(gateway, &format!("serving {version}"), |m| {
        m["production"] == version
    })
    .await
}

/// Waits (bounded) until MLflow shows `check`.
async fn until_mlflow<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let wait = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .is_err()
    {
        panic!("MLflow never showed {what}");
    }
}

async fn history(gateway: &RunningGateway) -> Vec<Value> {
    let path = "/api/v1/models/fraud/history?limit=1000";
    let answer = admin(gateway, Method::GET, path, None).await;
    answer.json()["entries"].as_array().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_champion_alias_rolls_the_version_out_and_promotes_it() {
    let server = MlflowServer::shared();
    let (one, two) = (
        FakeUpstream::start("v1").await,
        FakeUpstream::start("v2").await,
    );
    let (registered, v1, v2) =
        Registered::with_champion(server, "fraud-release", &one.url(), &two.url()).await;
    let gateway = common::gateway(&config(&server.url(), &registered.name, "", "")).await;
    serving(&gateway, &v1).await;
    let traffic = Traffic::start(common::infer_url(&gateway));

    registered.set_alias("champion", &v2).await;
    let view = until(&gateway, "rolling out", |m| {
        m["registry"]["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("rollout"))
    })
    .await;
    assert_eq!(
        view["production"], v1,
        "users keep version 1 until the gates pass"
    );
    serving(&gateway, &v2).await;
    traffic.stop().await;
    let rollout = admin(&gateway, Method::GET, "/api/v1/models/fraud/rollout", None).await;
    assert_eq!(rollout.json()["phase"], "succeeded", "{}", rollout.json());
    until_mlflow("the stage tags", || async {
        registered
            .tags(&v2)
            .await
            .get("stagegate.stage")
            .map(String::as_str)
            == Some("production")
            && registered
                .tags(&v1)
                .await
                .get("stagegate.stage")
                .map(String::as_str)
                == Some("archived")
    })
    .await;
    let entries = history(&gateway).await;
    let observed = entries
        .iter()
        .find(|e| e["action"] == "observe" && e["observed"]["to"] == v2.as_str())
        .expect("the alias move is journaled");
    assert_eq!(observed["actor"], "mlflow");
    assert_eq!(observed["observed"]["from"], v1.as_str());
    assert!(observed["observed"]["updated_ms"].as_i64().unwrap() > 0);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "rollout" && e["actor"] == "mlflow")
    );
    gateway.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_and_mlflow_is_told_why() {
    let server = MlflowServer::shared();
    let one = FakeUpstream::start("v1").await;
    let failing = FakeUpstream::with("v2", Behaviour::Status(500)).await;
    let (registered, v1, v2) =
        Registered::with_champion(server, "fraud-failing", &one.url(), &failing.url()).await;
    let gateway = common::gateway(&config(&server.url(), &registered.name, "", "")).await;
    serving(&gateway, &v1).await;
    let traffic = Traffic::start(common::infer_url(&gateway));

    registered.set_alias("champion", &v2).await;
    until_mlflow("the alias moved back", || async {
        registered.alias("champion").await.as_deref() == Some(v1.as_str())
    })
    .await;
    traffic.stop().await;
    let rollout = admin(&gateway, Method::GET, "/api/v1/models/fraud/rollout", None)
        .await
        .json();
    assert_eq!(rollout["phase"], "rolled_back", "{rollout}");
    assert_eq!(
        rollout["rollout"]["step"], 0,
        "stopped at the first step (50%): {rollout}"
    );
    for _ in 0..50 {
        let answer = common::post(&common::infer_url(&gateway), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "no user reaches version 2 any more"
        );
    }
    assert_eq!(model(&gateway).await["production"], v1);
    until_mlflow("the rollout tags", || async {
        let tags = registered.tags(&v2).await;
        tags.get("stagegate.rollout").map(String::as_str) == Some("rolled_back")
            && tags
                .get("stagegate.rollout_reason")
                .is_some_and(|r| r.contains("error_rate") && r.contains("threshold"))
    })
    .await;
    // Seeing its own write-back, stagegate does not roll the version out again.
    for _ in 0..2 {
        admin(&gateway, Method::POST, "/api/v1/registry/sync", None).await;
    }
    let starts = history(&gateway)
        .await
        .iter()
        .filter(|e| {
            e["action"] == "rollout"
                && e["rollout"]["phase"] == "progressing"
                && e["rollout"]["step"] == 0
                && e["reason"].as_str().is_some_and(|r| r.contains("MLflow"))
        })
        .count();
    assert_eq!(starts, 1);
    gateway.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_rollback_moves_the_alias_back() {
    let server = MlflowServer::shared();
    let upstream = FakeUpstream::start("any").await;
    let endpoint = format!("http://{}", upstream.addr);
    let (registered, v1, v2) =
        Registered::with_champion(server, "fraud-rollback", &endpoint, &endpoint).await;
    let mlflow = "on_production_change = \"promote\"";
    let gateway = common::gateway(&config(&server.url(), &registered.name, mlflow, "")).await;
    serving(&gateway, &v1).await;
    registered.set_alias("champion", &v2).await;
    serving(&gateway, &v2).await;

    let ctl = common::process::stagegate()
        .args([
            "ctl",
            "--admin",
            &format!("http://{}", gateway.admin_addr()),
        ])
        .args(["rollback", "fraud", "--reason", "answers drifted"])
        .env("STAGEGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert_eq!(model(&gateway).await["production"], v1);
    until_mlflow("champion back on version 1", || async {
        registered.alias("champion").await.as_deref() == Some(v1.as_str())
    })
    .await;
    // The write-back, seen by the next sync, changes nothing more.
    let before = history(&gateway).await.len();
    admin(&gateway, Method::POST, "/api/v1/registry/sync", None).await;
    admin(&gateway, Method::POST, "/api/v1/registry/sync", None).await;
    let entries = history(&gateway).await;
    assert!(
        entries.len() <= before + 1,
        "only the observation: {entries:?}"
    );
    assert_eq!(model(&gateway).await["production"], v1);
    gateway.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_stages_drive_stagegate_stages() {
    let server = MlflowServer::shared();
    let upstream = FakeUpstream::start("any").await;
    let endpoint = format!("http://{}", upstream.addr);
    let registered = Registered::create(server, "fraud-stages").await;
    let v1 = registered.version(Some(&endpoint)).await;
    let v2 = registered.version(Some(&endpoint)).await;
    registered.transition(&v1, "Production").await;
    registered.transition(&v2, "Staging").await;
    let mlflow = "use_stages = true\non_production_change = \"promote\"";
    let gateway = common::gateway(&config(&server.url(), &registered.name, mlflow, "")).await;
    let stage_of = |view: &Value, v: &str| {
        view["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == v)
            .map(|x| x["stage"].clone())
    };
    // One sync registers both, one change at a time.
    until(&gateway, "serving 1 with 2 in staging", |m| {
        m["production"] == v1 && stage_of(m, &v2) == Some(json!("staging"))
    })
    .await;

    registered.transition(&v2, "Production").await;
    let view = serving(&gateway, &v2).await;
    assert_eq!(stage_of(&view, &v1), Some(json!("archived")));

    // A rollback through stagegate moves version 1 back into Production.
    let answer = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/rollback",
        Some(json!({})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    until_mlflow("version 1 back in Production", || async {
        registered.stage(&v1).await == "Production" && registered.stage(&v2).await == "Archived"
    })
    .await;
    gateway.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_without_endpoints_is_not_served_and_says_why() {
    let server = MlflowServer::shared();
    let upstream = FakeUpstream::start("v1").await;
    let registered = Registered::create(server, "fraud-no-endpoints").await;
    let v1 = registered
        .version(Some(&format!("http://{}", upstream.addr)))
        .await;
    let v2 = registered.version(None).await;
    registered.set_alias("champion", &v1).await;
    registered.set_alias("challenger", &v2).await;
    let gateway = common::gateway(&config(&server.url(), &registered.name, "", "")).await;
    let view = until(&gateway, "reporting version 2", |m| {
        m["registry"]["versions"]
            .as_array()
            .is_some_and(|v| v.len() == 2)
            && m["production"] == v1
    })
    .await;
    let state = view["registry"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == v2.as_str())
        .unwrap()
        .clone();
    assert_eq!(state["servable"], false, "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("stagegate.endpoints"),
        "{state}"
    );
    assert_eq!(
        view["versions"].as_array().unwrap().len(),
        1,
        "not routed: {view}"
    );
    let ctl = common::process::stagegate()
        .args([
            "ctl",
            "--admin",
            &format!("http://{}", gateway.admin_addr()),
            "model",
            "fraud",
        ])
        .env("STAGEGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ctl.stdout);
    assert!(out.contains("no: no endpoints"), "{out}");
    gateway.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_dying_changes_nothing_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::child::free_port();
    let server = MlflowServer::start(dir.path(), port);
    let upstream = FakeUpstream::start("any").await;
    let endpoint = format!("http://{}", upstream.addr);
    let (registered, v1, v2) =
        Registered::with_champion(&server, "fraud-outage", &endpoint, &endpoint).await;
    let text = config(
        &server.url(),
        &registered.name,
        "on_production_change = \"promote\"",
        "",
    );
    let state_dir = tempfile::tempdir().unwrap();
    let gateway = common::gateway_in(&text, state_dir.path()).await;
    serving(&gateway, &v1).await;

    // The alias moves, and MLflow dies before stagegate has seen it.
    registered.set_alias("champion", &v2).await;
    let stop = admin(&gateway, Method::POST, "/api/v1/registry/sync", None);
    server.kill();
    drop(stop);
    let status = admin(&gateway, Method::POST, "/api/v1/registry/sync", None)
        .await
        .json();
    assert_eq!(status["state"], "error", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{status}"
    );
    let answer = common::post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "serving goes on");

    // stagegate restarts while MLflow is down: it serves what its journal says.
    gateway.shutdown().await;
    let gateway = common::gateway_in(&text, state_dir.path()).await;
    let production = model(&gateway).await["production"].clone();
    assert!(production == v1 || production == v2, "{production}");
    let answer = common::post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);

    // MLflow comes back: the move made while it was away is followed, once.
    let server = MlflowServer::start(dir.path(), port);
    serving(&gateway, &v2).await;
    admin(&gateway, Method::POST, "/api/v1/registry/sync", None).await;
    let entries = history(&gateway).await;
    let observed = entries
        .iter()
        .filter(|e| e["action"] == "observe" && e["observed"]["to"] == v2.as_str())
        .count();
    let promoted = entries
        .iter()
        .filter(|e| e["version"] == v2.as_str() && e["to"] == "production")
        .count();
    assert_eq!((observed, promoted), (1, 1), "{entries:?}");
    gateway.shutdown().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_webhooks_trigger_a_sync_and_bad_signatures_are_refused() {
    let server = MlflowServer::shared();
    let upstream = FakeUpstream::start("any").await;
    let endpoint = format!("http://{}", upstream.addr);
    let (registered, v1, v2) =
        Registered::with_champion(server, "fraud-webhook", &endpoint, &endpoint).await;
    let secret = "webhook-secret-0123456789";
    // SAFETY: set before the gateway (the only reader) starts; no other test
    // of this binary reads this variable.
    unsafe { std::env::set_var("STAGEGATE_TEST_WEBHOOK_SECRET", secret) };
    let extra =
        "poll_interval_ms = 3600000\nwebhook_secret_env = \"STAGEGATE_TEST_WEBHOOK_SECRET\"";
    let text = config(
        &server.url(),
        &registered.name,
        "on_production_change = \"promote\"",
        "",
    )
    .replace("poll_interval_ms = 200", extra);
    let gateway = common::gateway(&text).await;
    serving(&gateway, &v1).await;
    let hook = format!("http://{}/api/v1/registry/webhook", gateway.admin_addr());
    let body = json!({
        "name": "stagegate-fraud-webhook",
        "url": hook,
        "events": [{"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"}],
        "secret": secret,
    });
    registered.call(Method::POST, "webhooks", body).await;

    // Polls are an hour apart: only the delivery can make this sync happen.
    registered.set_alias("champion", &v2).await;
    serving(&gateway, &v2).await;

    let now = common::unix_seconds();
    let answer = common::deliver_webhook(&hook, secret, now).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = common::deliver_webhook(&hook, "not-it", now).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::UNAUTHORIZED, "bad_signature")
    );
    let answer = common::deliver_webhook(&hook, secret, now - 301).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::UNAUTHORIZED, "stale_delivery")
    );
    gateway.running.shutdown().await;
}
