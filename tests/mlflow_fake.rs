//! Following MLflow, against an in-process fake of its REST API: every page of a
//! search is read before anything is decided, a failed or hanging read changes
//! nothing, a version MLflow no longer has is reported, and the registry state
//! shows in `GET /api/v1/registry` and the metrics.

mod common;
#[path = "common/fake_mlflow.rs"]
mod fake_mlflow;

use std::time::Duration;

use common::{FakeUpstream, TestGateway, admin, infer_url, post};
use fake_mlflow::FakeMlflow;
use http::{Method, StatusCode};
use serde_json::Value;

const MODEL: &str = "fraud-detector";

fn config(mlflow: &FakeMlflow) -> String {
    format!(
        r#"
[registry]
kind = "mlflow"
url = "{}"
poll_interval_ms = 3600000
request_timeout_ms = 300

[[models]]
name = "fraud"
[models.mlflow]
registered_model = "{MODEL}"
on_production_change = "promote"
"#,
        mlflow.url()
    )
}

async fn sync(gateway: &TestGateway) -> Value {
    let answer = admin(gateway, Method::POST, "/api/v1/registry/sync", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()
}

async fn serving(gateway: &TestGateway) -> Value {
    let answer = admin(gateway, Method::GET, "/api/v1/models/fraud", None).await;
    answer.json()["production"].clone()
}

/// A fake MLflow whose `champion` names version 1, and a gateway serving it.
async fn serving_one() -> (FakeMlflow, FakeUpstream, TestGateway) {
    let mlflow = FakeMlflow::start().await;
    let upstream = FakeUpstream::start("v1").await;
    mlflow.add_version(MODEL, "1", &upstream.url());
    mlflow.set_alias(MODEL, "champion", "1");
    let gateway = common::gateway(&config(&mlflow)).await;
    sync(&gateway).await;
    assert_eq!(serving(&gateway).await, "1");
    (mlflow, upstream, gateway)
}

#[tokio::test]
async fn every_search_page_is_read_and_the_champion_on_the_last_one_serves() {
    let mlflow = FakeMlflow::start().await;
    let upstream = FakeUpstream::start("v5").await;
    for version in 1..=5 {
        mlflow.add_version(
            MODEL,
            &version.to_string(),
            &format!("http://{}", upstream.addr),
        );
    }
    mlflow.set_alias(MODEL, "champion", "5");
    mlflow.with(|s| s.page_size = 2);
    let gateway = common::gateway(&config(&mlflow)).await;
    let status = sync(&gateway).await;
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(serving(&gateway).await, "5");
    let searches: Vec<String> = mlflow.with(|s| {
        s.calls
            .iter()
            .filter(|c| c.contains("search"))
            .cloned()
            .collect()
    });
    assert!(searches.len() >= 3, "three pages of two: {searches:?}");
    assert!(searches[1].contains("page_token"), "{searches:?}");
    let answer = post(&infer_url(&gateway), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    // Written back: the tag says what serves.
    let tag = mlflow.with(|s| s.versions[MODEL]["5"].tags.get("stagegate.stage").cloned());
    assert_eq!(tag.as_deref(), Some("production"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_500_in_the_middle_of_a_sync_changes_nothing_and_the_next_sync_applies_it_once() {
    let mlflow = FakeMlflow::start().await;
    let upstream = FakeUpstream::start("v1").await;
    for version in ["1", "2", "3"] {
        mlflow.add_version(MODEL, version, &format!("http://{}", upstream.addr));
    }
    mlflow.set_alias(MODEL, "champion", "1");
    let gateway = common::gateway(&config(&mlflow)).await;
    sync(&gateway).await;
    assert_eq!(serving(&gateway).await, "1");
    let before = common::history(&gateway).await.len();

    mlflow.set_alias(MODEL, "champion", "3");
    mlflow.with(|s| {
        s.page_size = 1;
        s.fail_page = Some(2);
    });
    let status = sync(&gateway).await;
    assert_eq!(status["state"], "error");
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("500") && error.contains("database is locked"),
        "{error}"
    );
    assert_eq!(
        common::history(&gateway).await.len(),
        before,
        "nothing journaled"
    );
    assert_eq!(serving(&gateway).await, "1");

    mlflow.with(|s| s.fail_page = None);
    let status = sync(&gateway).await;
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(serving(&gateway).await, "3");
    sync(&gateway).await;
    let records = common::history(&gateway).await;
    let observed = records
        .iter()
        .filter(|r| r["action"] == "observe" && r["observed"]["to"] == "3")
        .count();
    assert_eq!(observed, 1, "the move is journaled once: {records:?}");
    let metrics = common::metrics(&gateway).await;
    // A retry may have failed too before the page was mended.
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stagegate_registry_syncs_total{result=\"error\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no error count in {metrics}"));
    assert!(errors >= 1.0, "{metrics}");
    assert!(metrics.contains("stagegate_registry_last_sync_timestamp_seconds"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_registry_that_stops_answering_times_out_and_serving_goes_on() {
    let (mlflow, _upstream, gateway) = serving_one().await;
    mlflow.with(|s| s.hang = true);
    let status = tokio::time::timeout(Duration::from_secs(10), sync(&gateway))
        .await
        .expect("a hanging MLflow holds a sync no longer than its timeout");
    assert_eq!(status["state"], "error");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{status}"
    );
    assert_eq!(post(&infer_url(&gateway), &[]).await.status, StatusCode::OK);
    let ready = common::send(
        &common::client(),
        Method::GET,
        &format!("http://{}/readyz", gateway.admin_addr()),
        &[],
        "",
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK, "readiness stays up");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_version_mlflow_does_not_have_is_reported_not_served() {
    let (mlflow, _upstream, gateway) = serving_one().await;
    // Version 9 was deleted; its alias survived in this (fake) registry.
    mlflow.set_alias(MODEL, "champion", "9");
    let status = sync(&gateway).await;
    assert_eq!(serving(&gateway).await, "1");
    let model = &status["models"][0];
    let nine = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "9")
        .unwrap();
    assert_eq!(nine["servable"], false);
    assert!(
        nine["reason"].as_str().unwrap().contains("no version 9"),
        "{nine}"
    );
    assert!(
        model["waiting_for"]
            .as_str()
            .unwrap()
            .contains("cannot be served")
    );
    // ctl model shows it too.
    let view = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(view["registry"]["registry_production"], "9");

    // A registered model that does not exist is an error that says so.
    mlflow.with(|s| s.aliases.clear());
    let status = sync(&gateway).await;
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("RESOURCE_DOES_NOT_EXIST"), "{error}");
    assert_eq!(serving(&gateway).await, "1");
    gateway.shutdown().await;
}

#[tokio::test]
async fn without_a_registry_its_endpoints_say_so() {
    let gateway = common::gateway("[[models]]\nname = \"fraud\"\n").await;
    let answer = admin(&gateway, Method::GET, "/api/v1/registry", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "no_registry");
    let url = format!("http://{}/api/v1/registry/webhook", gateway.admin_addr());
    let answer = common::send(&common::client(), Method::POST, &url, &[], "{}").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    gateway.shutdown().await;
}
