//! The admin API end to end: auth, methods, transitions with their journal
//! entries, validation of bodies, history pages, and the metrics they move.

mod common;

use common::{FakeUpstream, TOKEN, admin, gateway_from_file, one_model, post};
use http::{Method, StatusCode};
use serde_json::json;

async fn setup() -> (common::TestGateway, [FakeUpstream; 3]) {
    let upstreams = [
        FakeUpstream::start("v1").await,
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    ];
    let config = one_model(
        "",
        &[
            ("1", "archived", &[&upstreams[0].url()]),
            ("2", "production", &[&upstreams[1].url()]),
            ("3", "staging", &[&upstreams[2].url()]),
        ],
    );
    let (gateway, _) = gateway_from_file(&config).await;
    (gateway, upstreams)
}

#[tokio::test]
async fn every_api_call_needs_the_token() {
    let (gateway, _upstreams) = setup().await;
    let base = format!("http://{}", gateway.admin_addr());
    let client = common::client();
    let calls = [
        (Method::GET, "/api/v1/models"),
        (Method::GET, "/api/v1/models/fraud"),
        (Method::GET, "/api/v1/models/fraud/history"),
        (Method::POST, "/api/v1/models/fraud/versions/3/transition"),
        (Method::POST, "/api/v1/models/fraud/rollback"),
        (Method::POST, "/api/v1/reload"),
        (Method::GET, "/api/v1/nope"),
    ];
    for (method, path) in calls {
        for auth in [
            vec![],
            vec![("authorization", "Bearer wrong-token-0123456789")],
            vec![("authorization", TOKEN)],
        ] {
            let answer = common::send(
                &client,
                method.clone(),
                &format!("{base}{path}"),
                &auth,
                "{}",
            )
            .await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(answer.code(), "unauthorized");
            assert_eq!(answer.header("www-authenticate"), "Bearer");
        }
    }
    // Health and metrics stay open for probes and scrapers.
    let metrics = common::send(&client, Method::GET, &format!("{base}/metrics"), &[], "").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let stages = common::send(
        &client,
        Method::GET,
        &format!("{base}/api/v1/models"),
        &[],
        "",
    )
    .await;
    assert_eq!(stages.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn changes_are_post_only_and_reads_get_only() {
    let (gateway, upstreams) = setup().await;
    for path in [
        "/api/v1/models/fraud/versions/3/transition",
        "/api/v1/models/fraud/rollback",
        "/api/v1/reload",
        "/api/v1/models/fraud/versions",
    ] {
        let answer = admin(&gateway, Method::GET, path, None).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(answer.header("allow"), "POST");
    }
    let answer = admin(&gateway, Method::POST, "/api/v1/models", Some(json!({}))).await;
    assert_eq!(
        (answer.status, answer.header("allow")),
        (StatusCode::METHOD_NOT_ALLOWED, "GET")
    );
    assert!(upstreams.iter().all(|u| u.received().is_empty()));
    let unchanged = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(unchanged["production"], "2");
}

#[tokio::test]
async fn a_promotion_is_journaled_with_the_actor_and_live_when_acknowledged() {
    let (gateway, upstreams) = setup().await;
    let answer = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions/3/transition",
        Some(json!({ "stage": "production", "reason": "agreement 99.8%" })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let record = &answer.json()["record"];
    assert_eq!(record["actor"], "alice");
    // Revisions 1-3 are the config's three versions, seeded into the journal.
    assert_eq!(record["revision"], 4);
    assert_eq!(
        record["also"],
        json!([{ "version": "2", "from": "production", "to": "archived" }])
    );

    // Live as soon as acknowledged: the very next request goes to version 3.
    let routed = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(routed.header("x-stagegate-version"), "3");
    assert_eq!(upstreams[2].received().len(), 1);

    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(model["production"], "3");
    assert_eq!(model["registry_revision"], 4);
    assert_eq!(model["rollback_target"], "2");
    let journal =
        std::fs::read_to_string(gateway.state_dir.path().join("data/journal.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 4);
    assert!(
        journal.contains("\"actor\":\"alice\"") && journal.contains("agreement 99.8%"),
        "{journal}"
    );

    let metrics = common::metrics(&gateway).await;
    for line in [
        r#"stagegate_transitions_total{model="fraud",to_stage="production"} 1"#,
        r#"stagegate_transitions_total{model="fraud",to_stage="archived"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in {metrics}");
    }
}

#[tokio::test]
async fn refused_transitions_are_409_and_change_nothing() {
    let (gateway, _upstreams) = setup().await;
    let refused = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions/1/transition",
        Some(json!({ "stage": "production" })),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.code(), "transition_refused");
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("only through a rollback")
    );
    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(
        (
            model["production"].as_str(),
            model["registry_revision"].as_u64()
        ),
        (Some("2"), Some(3)),
        "only the three seeds"
    );
}

#[tokio::test]
async fn bad_bodies_are_400_naming_the_field_and_large_ones_413() {
    let (gateway, _upstreams) = setup().await;
    let path = "/api/v1/models/fraud/versions/3/transition";
    let cases = [
        (json!({ "stage": "canary" }), "unknown stage"),
        (json!({ "stag": "production" }), "unknown field `stag`"),
        (json!({ "reason": "x" }), "missing field `stage`"),
        (json!({ "stage": 7 }), "invalid type"),
    ];
    for (body, needle) in cases {
        let answer = admin(&gateway, Method::POST, path, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            answer.json()["error"].as_str().unwrap().contains(needle),
            "{body}: {:?}",
            answer.json()
        );
    }
    let url = format!("http://{}{path}", gateway.admin_addr());
    let auth = format!("Bearer {TOKEN}");
    let not_json = common::send(
        &common::client(),
        Method::POST,
        &url,
        &[("authorization", &auth)],
        "stage=production",
    )
    .await;
    assert_eq!(
        (not_json.status, not_json.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let huge = format!(
        "{{\"stage\": \"production\", \"reason\": \"{}\"}}",
        "x".repeat(100_000)
    );
    let too_large = common::send(
        &common::client(),
        Method::POST,
        &url,
        &[("authorization", &auth)],
        &huge,
    )
    .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    let register = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions",
        Some(json!({ "version": 4, "endpoints": ["nope"] })),
    )
    .await;
    assert_eq!(register.status, StatusCode::BAD_REQUEST);
    assert!(
        register.json()["error"]
            .as_str()
            .unwrap()
            .contains("invalid endpoints"),
        "{:?}",
        register.json()
    );
}

#[tokio::test]
async fn registered_versions_land_in_staging_and_serve_when_pinned() {
    let (gateway, _upstreams) = setup().await;
    let v4 = FakeUpstream::start("v4").await;
    let answer = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions",
        Some(json!({ "version": 4, "endpoints": [v4.url()], "reason": "retrained" })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert_eq!(answer.json()["record"]["to"], "staging");
    let pinned = post(
        &format!(
            "http://{}/v2/models/fraud/versions/4/infer",
            gateway.data_addr()
        ),
        &[],
    )
    .await;
    assert_eq!(
        (pinned.status, pinned.header("x-stagegate-stage")),
        (StatusCode::OK, "staging")
    );
    assert_eq!(v4.received().len(), 1);
    let again = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions",
        Some(json!({ "version": "4", "endpoints": [v4.url()] })),
    )
    .await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (StatusCode::CONFLICT, "already_registered")
    );
    let unknown = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/nope/versions",
        Some(json!({ "version": "1", "endpoints": [v4.url()] })),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (StatusCode::NOT_FOUND, "unknown_model")
    );
}

#[tokio::test]
async fn a_version_registered_with_grpc_endpoints_shows_them_and_keeps_them() {
    let (gateway, _upstreams) = setup().await;
    let body = json!({ "version": "5", "endpoints": ["http://v5:8000"],
                       "grpc_endpoints": ["http://v5:8001"] });
    let answer = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions",
        Some(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert_eq!(
        answer.json()["record"]["grpc_endpoints"],
        json!(["http://v5:8001"])
    );
    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    let v5 = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "5")
        .cloned();
    assert_eq!(v5.unwrap()["grpc_endpoints"], json!(["http://v5:8001"]));
    let bad =
        json!({ "version": "6", "endpoints": ["http://v6:1"], "grpc_endpoints": ["v6:8001"] });
    let refused = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions",
        Some(bad),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("grpc_endpoints"),
        "{:?}",
        refused.body
    );
}

#[tokio::test]
async fn history_is_newest_first_and_paginated() {
    let (gateway, _upstreams) = setup().await;
    for stage in ["archived", "staging", "archived", "staging", "archived"] {
        let body = json!({ "stage": stage, "reason": stage });
        let answer = admin(
            &gateway,
            Method::POST,
            "/api/v1/models/fraud/versions/3/transition",
            Some(body),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let first = admin(
        &gateway,
        Method::GET,
        "/api/v1/models/fraud/history?limit=2",
        None,
    )
    .await
    .json();
    let revisions = |page: &serde_json::Value| -> Vec<u64> {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["revision"].as_u64().unwrap())
            .collect()
    };
    // Three seeds and five transitions, two per page, newest first.
    assert_eq!(revisions(&first), [8, 7]);
    assert_eq!(first["next_before"], 7);
    let mut all = revisions(&first);
    let mut next = first["next_before"].as_u64();
    while let Some(before) = next {
        let path = format!("/api/v1/models/fraud/history?limit=2&before={before}");
        let page = admin(&gateway, Method::GET, &path, None).await.json();
        all.extend(revisions(&page));
        next = page["next_before"].as_u64();
    }
    assert_eq!(all, (1..=8).rev().collect::<Vec<u64>>());
    let bad = admin(
        &gateway,
        Method::GET,
        "/api/v1/models/fraud/history?limit=x",
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = admin(&gateway, Method::GET, "/api/v1/models/nope/history", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
