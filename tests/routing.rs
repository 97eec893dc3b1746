//! Model resolution from every path style, pin headers, and the errors of routing.

mod common;

use common::{FakeUpstream, gateway, one_model, post};
use http::StatusCode;

struct Setup {
    archived: FakeUpstream,
    production: FakeUpstream,
    staging: FakeUpstream,
    base: String,
    _gateway: common::TestGateway,
}

async fn setup() -> Setup {
    let archived = FakeUpstream::start("v1").await;
    let production = FakeUpstream::start("v2").await;
    let staging = FakeUpstream::start("v3").await;
    let config = one_model(
        "",
        &[
            ("1", "archived", &[&archived.url()]),
            ("2", "production", &[&production.url()]),
            ("3", "staging", &[&staging.url()]),
        ],
    );
    let gateway = gateway(&config).await;
    Setup {
        base: format!("http://{}", gateway.data_addr()),
        archived,
        production,
        staging,
        _gateway: gateway,
    }
}

#[tokio::test]
async fn every_path_style_reaches_production_with_the_right_path() {
    let s = setup().await;
    let cases = [
        ("/v1/models/fraud:predict", "/v1/models/fraud:predict"),
        ("/v1/models/fraud:explain", "/v1/models/fraud:explain"),
        ("/v2/models/fraud/infer", "/v2/models/fraud/infer"),
        (
            "/v2/models/fraud/ready?verbose=1",
            "/v2/models/fraud/ready?verbose=1",
        ),
        ("/models/fraud/invocations", "/invocations"),
        ("/models/fraud/predictions/fraud/2", "/predictions/fraud/2"),
    ];
    for (path, upstream_path) in cases {
        let answer = post(&format!("{}{path}", s.base), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.json()["server"], "v2", "{path}");
        assert_eq!(answer.json()["path"], upstream_path, "{path}");
        assert_eq!(answer.header("x-stagegate-model"), "fraud");
        assert_eq!(answer.header("x-stagegate-version"), "2");
        assert_eq!(answer.header("x-stagegate-stage"), "production");
    }
    assert_eq!(s.production.received().len(), cases.len());
    assert!(s.staging.received().is_empty() && s.archived.received().is_empty());
}

#[tokio::test]
async fn kserve_v1_get_reaches_the_model() {
    let s = setup().await;
    let answer = common::send(
        &common::client(),
        http::Method::GET,
        &format!("{}/v1/models/fraud", s.base),
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(s.production.received()[0].method, http::Method::GET);
}

#[tokio::test]
async fn pins_choose_staging_by_stage_header_version_header_or_v2_path() {
    let s = setup().await;
    let by_stage = post(
        &format!("{}/v1/models/fraud:predict", s.base),
        &[("x-stagegate-stage", "staging")],
    )
    .await;
    let by_version = post(
        &format!("{}/v2/models/fraud/infer", s.base),
        &[("x-stagegate-version", "3")],
    )
    .await;
    let by_path = post(&format!("{}/v2/models/fraud/versions/3/infer", s.base), &[]).await;
    for answer in [&by_stage, &by_version, &by_path] {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["server"], "v3");
        assert_eq!(answer.header("x-stagegate-version"), "3");
        assert_eq!(answer.header("x-stagegate-stage"), "staging");
    }
    assert_eq!(by_path.json()["path"], "/v2/models/fraud/versions/3/infer");
    // The gateway's own pin headers are not passed on.
    for received in s.staging.received() {
        assert!(!received.headers.contains_key("x-stagegate-stage"));
        assert!(!received.headers.contains_key("x-stagegate-version"));
    }
    let production_pin = post(
        &format!("{}/v2/models/fraud/infer", s.base),
        &[("x-stagegate-stage", "production")],
    )
    .await;
    assert_eq!(production_pin.json()["server"], "v2");
}

#[tokio::test]
async fn archived_versions_are_refused_and_receive_nothing() {
    let s = setup().await;
    let attempts = [
        post(
            &format!("{}/v1/models/fraud:predict", s.base),
            &[("x-stagegate-version", "1")],
        )
        .await,
        post(&format!("{}/v2/models/fraud/versions/1/infer", s.base), &[]).await,
        post(
            &format!("{}/v2/models/fraud/infer", s.base),
            &[("x-stagegate-stage", "archived")],
        )
        .await,
    ];
    for answer in attempts {
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.code(), "archived_version");
        assert_eq!(answer.header("content-type"), "application/json");
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("archived")
        );
    }
    assert!(s.archived.received().is_empty());
    assert_eq!(s.archived.connections(), 0);
}

#[tokio::test]
async fn unknown_models_versions_and_paths_are_404() {
    let s = setup().await;
    let cases = [
        ("/v1/models/nope:predict", vec![], "unknown_model"),
        (
            "/v2/models/fraud/versions/9/infer",
            vec![],
            "unknown_version",
        ),
        (
            "/v2/models/fraud/infer",
            vec![("x-stagegate-version", "9")],
            "unknown_version",
        ),
        ("/predict", vec![], "no_route"),
        // The server-level calls (`/v2/health/ready`, ...) are answered by the
        // gateway (tests/server_calls.rs); other paths under /v2 name no model.
        ("/v2/health/startup", vec![], "no_route"),
    ];
    for (path, headers, code) in cases {
        let answer = post(&format!("{}{path}", s.base), &headers).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.code(), code, "{path}");
    }
}

#[tokio::test]
async fn bad_and_conflicting_pins_are_400() {
    let s = setup().await;
    let invalid = post(
        &format!("{}/v2/models/fraud/infer", s.base),
        &[("x-stagegate-stage", "canary-ish")],
    )
    .await;
    assert_eq!(
        (invalid.status, invalid.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_pin")
    );
    let conflicting = post(
        &format!("{}/v2/models/fraud/versions/3/infer", s.base),
        &[("x-stagegate-version", "2")],
    )
    .await;
    assert_eq!(
        (conflicting.status, conflicting.code().as_str()),
        (StatusCode::BAD_REQUEST, "conflicting_pins")
    );
    assert!(s.production.received().is_empty() && s.staging.received().is_empty());
}

#[tokio::test]
async fn model_without_production_is_503_and_missing_stage_pin_is_404() {
    let staging = FakeUpstream::start("v3").await;
    let gateway = gateway(&one_model("", &[("3", "staging", &[&staging.url()])])).await;
    let base = format!("http://{}", gateway.data_addr());
    let unpinned = post(&format!("{base}/v2/models/fraud/infer"), &[]).await;
    assert_eq!(
        (unpinned.status, unpinned.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_production_version")
    );
    let pinned = post(
        &format!("{base}/v2/models/fraud/infer"),
        &[("x-stagegate-stage", "staging")],
    )
    .await;
    assert_eq!(pinned.status, StatusCode::OK);

    let production_only = FakeUpstream::start("v2").await;
    let gateway = common::gateway(&one_model(
        "",
        &[("2", "production", &[&production_only.url()])],
    ))
    .await;
    let answer = post(
        &common::infer_url(&gateway),
        &[("x-stagegate-stage", "staging")],
    )
    .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::NOT_FOUND, "no_version_in_stage")
    );
}
