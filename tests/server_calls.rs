//! The Open Inference Protocol's server-level calls, answered by the gateway:
//! liveness, readiness by the production versions' endpoints, server metadata and
//! KServe V1's model list.

mod common;

use common::{FakeUpstream, client, gateway, one_model, refused_addr, send};
use http::{Method, StatusCode};

async fn get(base: &str, path: &str) -> common::Answer {
    send(&client(), Method::GET, &format!("{base}{path}"), &[], "").await
}

#[tokio::test]
async fn live_ready_metadata_and_model_list_are_answered_by_the_gateway() {
    let production = FakeUpstream::start("v2").await;
    let config = one_model("", &[("2", "production", &[&production.url()])]);
    let gateway = gateway(&config).await;
    let base = format!("http://{}", gateway.data_addr());

    let live = get(&base, "/v2/health/live").await;
    assert_eq!(
        (live.status, live.json()),
        (StatusCode::OK, serde_json::json!({"live": true}))
    );
    let ready = get(&base, "/v2/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::OK, serde_json::json!({"ready": true}))
    );
    let metadata = get(&base, "/v2").await.json();
    assert_eq!(metadata["name"], "stagegate");
    assert_eq!(metadata["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        metadata["extensions"],
        serde_json::json!(["binary_tensor_data"])
    );
    let models = get(&base, "/v1/models").await;
    // KServe V1's list and OpenAI's, in one answer.
    assert_eq!(
        models.json(),
        serde_json::json!({"models": ["fraud"], "object": "list", "data": [
            {"id": "fraud", "object": "model", "created": 0, "owned_by": "stagegate"}
        ]})
    );
    assert!(
        production.received().is_empty(),
        "no server-level call reaches a model server"
    );

    let posted = send(
        &client(),
        Method::POST,
        &format!("{base}/v2/health/live"),
        &[],
        "",
    )
    .await;
    assert_eq!(posted.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(posted.header("allow"), "GET, HEAD");
    assert_eq!(posted.code(), "method_not_allowed");
}

#[tokio::test]
async fn readiness_fails_while_a_production_version_has_no_endpoint_to_take_requests() {
    let staging = FakeUpstream::start("v3").await;
    let dead = format!("http://{}", refused_addr().await);
    // Ejected after one failure, for long enough that the test cannot outlive it.
    let config = one_model(
        "eject_after_failures = 1\neject_backoff_ms = 600000",
        &[
            ("2", "production", &[&dead]),
            ("3", "staging", &[&staging.url()]),
        ],
    );
    let gateway = gateway(&config).await;
    let base = format!("http://{}", gateway.data_addr());
    assert_eq!(
        get(&base, "/v2/health/ready").await.status,
        StatusCode::OK,
        "not ejected yet"
    );

    let failed = send(
        &client(),
        Method::POST,
        &format!("{base}/v2/models/fraud/infer"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let ready = get(&base, "/v2/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.json(),
        serde_json::json!({"ready": false, "unready_models": ["fraud"]})
    );
    assert_eq!(
        get(&base, "/v2/health/live").await.status,
        StatusCode::OK,
        "still live"
    );
}
