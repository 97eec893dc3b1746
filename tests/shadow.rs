//! Shadow testing end to end: what is mirrored, what the comparison reports, and
//! production untouched whatever the shadow does.

mod common;

use std::time::Duration;

use common::{Behaviour, FakeUpstream, admin, one_model, post};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use stagegate::config::{Config, ShadowPriority};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Production version 2 and staging version 3, with `shadow` as the model's
/// `[models.shadow]` body and `compare` as its `[models.compare]` body.
fn config(production: &str, staging: &str, shadow: &str, compare: &str) -> String {
    let mut text = one_model(
        "",
        &[
            ("2", "production", &[production]),
            ("3", "staging", &[staging]),
        ],
    );
    text.push_str(&format!(
        "[models.shadow]\n{shadow}\n[models.compare]\n{compare}\n"
    ));
    text
}

async fn report(gateway: &stagegate::gateway::RunningGateway) -> Value {
    let answer = admin(gateway, Method::GET, "/api/v1/models/fraud/shadow", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["versions"][0].clone()
}

/// Waits (without sleeping for luck) until the report satisfies `done`.
async fn report_until(
    gateway: &stagegate::gateway::RunningGateway,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let wait = async {
        loop {
            let report = report(gateway).await;
            if done(&report) {
                return report;
            }
            // Leaves the CPU to the shadow threads between looks.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(report) => report,
        Err(_) => panic!("report never got there: {}", report(gateway).await),
    }
}

fn settled(report: &Value) -> bool {
    let errors: u64 = report["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let dropped_after = [
        "primary_incomplete",
        "answer_too_large",
        "compare_queue_full",
    ]
    .iter()
    .map(|k| report["dropped"][k].as_u64().unwrap())
    .sum::<u64>();
    report["mirrored"].as_u64()
        == Some(report["compared"].as_u64().unwrap() + errors + dropped_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_percentage_is_honoured() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(
        &prod.url(),
        &stage.url(),
        "percent = 10.0",
        "ignore = [\"server\"]",
    ))
    .await;
    let url = common::infer_url(&gateway);
    let client = common::client();
    for _ in 0..2000 {
        assert_eq!(
            common::send(&client, Method::POST, &url, &[], "{}")
                .await
                .status,
            StatusCode::OK
        );
    }
    let mirrored = report(&gateway).await["mirrored"].as_u64().unwrap();
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; six of them either way.
    assert!(
        (120..=280).contains(&mirrored),
        "mirrored {mirrored} of 2000 at 10%"
    );
    let report = report_until(&gateway, settled).await;
    assert_eq!(report["compared"].as_u64(), Some(mirrored));
    assert_eq!(report["matched"].as_u64(), Some(mirrored));
    assert_eq!(stage.received().len() as u64, mirrored);
    assert_eq!(prod.received().len(), 2000);
}

#[tokio::test]
async fn mirrors_carry_the_shadow_marker_and_the_same_request_id_and_body() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &stage.url(), "percent = 100.0", "")).await;
    let answer = post(
        &format!("http://{}/v2/models/fraud/infer?x=1", gateway.data_addr()),
        &[],
    )
    .await;
    assert_eq!(
        (answer.status, answer.json()["server"].as_str()),
        (StatusCode::OK, Some("v2"))
    );
    report_until(&gateway, |r| r["compared"] == 1).await;
    let (primary, shadow) = (&prod.received()[0], &stage.received()[0]);
    assert_eq!(shadow.headers["x-stagegate-shadow"], "1");
    assert!(!primary.headers.contains_key("x-stagegate-shadow"));
    assert_eq!(
        shadow.headers["x-request-id"],
        primary.headers["x-request-id"]
    );
    assert_eq!(
        (shadow.uri.as_str(), &shadow.body),
        ("/v2/models/fraud/infer?x=1", &primary.body)
    );
    assert_eq!(shadow.headers["host"], stage.addr.to_string().as_str());
}

/// A request pinned in its path to the production version is mirrored with the
/// staging version's id in the path: a server holding both versions would
/// otherwise answer the mirror as production and agree with itself.
#[tokio::test]
async fn a_mirror_of_a_version_pinned_path_names_the_staging_version() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &stage.url(), "percent = 100.0", "")).await;
    let url = format!(
        "http://{}/v2/models/fraud/versions/2/infer?x=1",
        gateway.data_addr()
    );
    assert_eq!(post(&url, &[]).await.status, StatusCode::OK);
    report_until(&gateway, |r| r["compared"] == 1).await;
    assert_eq!(
        prod.received()[0].uri,
        "/v2/models/fraud/versions/2/infer?x=1"
    );
    assert_eq!(
        stage.received()[0].uri,
        "/v2/models/fraud/versions/3/infer?x=1"
    );
}

/// Readiness and metadata calls are never mirrored, whatever the methods: they
/// say nothing of a candidate's answers, and clients that read only their
/// status would leave production's answer incomplete for a comparison.
#[tokio::test]
async fn readiness_and_metadata_calls_are_not_mirrored() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &stage.url(), "percent = 100.0", "")).await;
    let base = format!("http://{}", gateway.data_addr());
    let client = common::client();
    let calls = [
        "/v2/models/fraud/ready",
        "/v2/models/fraud",
        "/v2/models/fraud/versions/2/ready",
        "/v1/models/fraud",
    ];
    for path in calls {
        let answer = common::send(&client, Method::GET, &format!("{base}{path}"), &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
    post(&format!("{base}/v2/models/fraud/infer"), &[]).await;
    let report = report_until(&gateway, |r| r["compared"] == 1).await;
    assert_eq!(report["mirrored"], 1, "only the prediction: {report}");
    assert_eq!(report["dropped"]["primary_incomplete"], 0);
    assert_eq!(prod.received().len(), calls.len() + 1);
    assert_eq!(stage.received().len(), 1);
}

/// At idle priority (`shadow_priority = "idle"`), mirrors still go out and are
/// compared whenever the CPU has time, and production answers as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_on_idle_priority_threads_are_sent_and_compared() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v2").await,
    );
    let text = config(&prod.url(), &stage.url(), "percent = 100.0", "");
    let text = text.replacen("[server]\n", "[server]\nshadow_priority = \"idle\"\n", 1);
    let mut config = Config::parse(&text, "test").unwrap();
    assert_eq!(config.server.shadow_threads.priority, ShadowPriority::Idle);
    let state_dir = tempfile::tempdir().unwrap();
    config.server.state_dir = state_dir.path().to_path_buf();
    let gateway = common::start_config(&config).await.unwrap();
    let url = format!("http://{}/v2/models/fraud/infer", gateway.data_addr());
    for _ in 0..20 {
        let answer = post(&url, &[]).await;
        assert_eq!(
            (answer.status, answer.json()["server"].as_str()),
            (StatusCode::OK, Some("v2"))
        );
    }
    // Polls that leave the CPU to the idle threads between looks.
    let compared = async {
        loop {
            let report = report(&gateway).await;
            if report["compared"] == 20 {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(20), compared)
        .await
        .expect("every mirror is compared");
    assert_eq!(
        (&report["mirrored"], &report["matched"]),
        (&json!(20), &json!(20)),
        "{report}"
    );
    assert_eq!(stage.received().len(), 20);
}

#[tokio::test]
async fn answers_are_compared_and_disagreements_reported_by_path() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(
        &prod.url(),
        &stage.url(),
        "percent = 100.0",
        "mode = \"json\"",
    ))
    .await;
    for _ in 0..3 {
        post(&common::infer_url(&gateway), &[("x-request-id", "req-7")]).await;
    }
    let report = report_until(&gateway, |r| r["compared"] == 3).await;
    assert_eq!(
        (report["matched"].as_u64(), report["mismatched"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(report["agreement"]["agreement"], 0.0);
    assert_eq!(
        report["top_mismatch_paths"],
        json!([{ "path": "server", "count": 3 }])
    );
    let sample = &report["samples"][2];
    assert_eq!(
        (sample["request_id"].as_str(), sample["path"].as_str()),
        (Some("req-7"), Some("/v2/models/fraud/infer"))
    );
    assert_eq!(sample["differences"], json!(["server: \"v2\" vs \"v3\""]));
    assert!(
        sample["primary"]
            .as_str()
            .unwrap()
            .contains("\"server\":\"v2\"")
    );
    let metrics = common::metrics(&gateway).await;
    for line in [
        r#"stagegate_shadow_requests_total{model="fraud",version="3",result="ok"} 3"#,
        r#"stagegate_shadow_comparisons_total{model="fraud",version="3",result="mismatch"} 3"#,
        r#"stagegate_shadow_latency_seconds_count{model="fraud",version="3"} 3"#,
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
}

#[tokio::test]
async fn methods_body_limits_and_pins_decide_what_is_mirrored() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let shadow = "percent = 100.0\nmethods = [\"POST\"]\nmax_body_bytes = 100";
    let gateway = common::gateway(&config(&prod.url(), &stage.url(), shadow, "")).await;
    let base = format!("http://{}", gateway.data_addr());
    let client = common::client();
    common::send(
        &client,
        Method::GET,
        &format!("{base}/v2/models/fraud/ready"),
        &[],
        "",
    )
    .await;
    let large = format!("{{\"inputs\": \"{}\"}}", "x".repeat(150));
    common::send(
        &client,
        Method::POST,
        &format!("{base}/v2/models/fraud/infer"),
        &[],
        &large,
    )
    .await;
    post(
        &format!("{base}/v2/models/fraud/infer"),
        &[("x-stagegate-stage", "staging")],
    )
    .await;
    common::send(
        &client,
        Method::POST,
        &format!("{base}/v2/models/fraud/infer"),
        &[],
        "{}",
    )
    .await;
    let report = report_until(&gateway, |r| r["compared"] == 1).await;
    assert_eq!(
        report["mirrored"], 1,
        "only the small POST to production is mirrored"
    );
    assert_eq!(report["dropped"]["body_too_large"], 1);
    // The pinned staging request went to staging itself, unmirrored.
    assert_eq!(stage.received().len(), 2);
}

#[tokio::test]
async fn a_hanging_shadow_never_holds_production_and_the_in_flight_budget_holds() {
    let prod = FakeUpstream::start("v2").await;
    let hanging = FakeUpstream::with("v3", Behaviour::Hang).await;
    let shadow = "percent = 100.0\ntimeout_ms = 600000\nmax_in_flight = 4";
    let gateway = common::gateway(&config(&prod.url(), &hanging.url(), shadow, "")).await;
    let url = common::infer_url(&gateway);
    let requests: Vec<_> = (0..40)
        .map(|_| tokio::spawn(common::post_owned(url.clone())))
        .collect();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(
            (answer.status, answer.json()["server"].as_str()),
            (StatusCode::OK, Some("v2"))
        );
    }
    // Every production answer is back while four mirrors still hang.
    let report = report(&gateway).await;
    assert_eq!(report["mirrored"], 4);
    assert_eq!(report["dropped"]["in_flight"], 36);
    assert!(hanging.received().len() <= 4);
    assert_eq!(report["compared"], 0);
}

#[tokio::test]
async fn shadow_timeouts_refusals_and_resets_are_counted_and_production_is_fine() {
    let prod = FakeUpstream::start("v2").await;
    let hanging = FakeUpstream::with("v3", Behaviour::Hang).await;
    let refused = format!("http://{}", common::refused_addr().await);
    let resetting = format!("http://{}", resetting_upstream().await);
    for (shadow_url, kind) in [
        (hanging.url(), "timeout"),
        (refused, "connect"),
        (resetting, "protocol"),
    ] {
        let gateway = common::gateway(&config(
            &prod.url(),
            &shadow_url,
            "percent = 100.0\ntimeout_ms = 300",
            "",
        ))
        .await;
        for _ in 0..5 {
            let answer = post(&common::infer_url(&gateway), &[]).await;
            assert_eq!(
                (answer.status, answer.json()["server"].as_str()),
                (StatusCode::OK, Some("v2")),
                "{kind}"
            );
        }
        let report = report_until(&gateway, |r| r["errors"][kind] == 5).await;
        assert_eq!(report["compared"], 0, "{kind}");
        let metrics = common::metrics(&gateway).await;
        let result = if kind == "timeout" {
            "timeout"
        } else {
            "error"
        };
        let line = format!(
            r#"stagegate_shadow_requests_total{{model="fraud",version="3",result="{result}"}} 5"#
        );
        assert!(metrics.contains(&line), "missing {line}");
    }
}

#[tokio::test]
async fn mirrors_to_an_ejected_staging_endpoint_are_dropped_before_anything_is_sent() {
    let prod = FakeUpstream::start("v2").await;
    let refused = format!("http://{}", common::refused_addr().await);
    let mut text = one_model(
        "eject_after_failures = 2\neject_backoff_ms = 600000\n",
        &[
            ("2", "production", &[&prod.url()]),
            ("3", "staging", &[&refused]),
        ],
    );
    text.push_str("[models.shadow]\npercent = 100.0\n");
    let gateway = common::gateway(&text).await;
    let url = common::infer_url(&gateway);
    for failures in 1..=2 {
        assert_eq!(post(&url, &[]).await.status, StatusCode::OK);
        report_until(&gateway, |r| r["errors"]["connect"] == failures).await;
    }
    // Two failed connects ejected the only staging endpoint.
    for _ in 0..5 {
        let answer = post(&url, &[]).await;
        assert_eq!(answer.json()["server"], "v2");
    }
    let report = report(&gateway).await;
    assert_eq!(report["mirrored"], 2, "{report}");
    assert_eq!(report["dropped"]["no_healthy_endpoint"], 5, "{report}");
    assert_eq!(report["errors"]["connect"], 2, "{report}");
}

/// A mirror that times out says nothing certain about its endpoint (at idle
/// priority the shadow threads may just have been late), so it does not count
/// towards ejecting it: the endpoint may serve a canary too.
#[tokio::test]
async fn shadow_timeouts_do_not_eject_the_staging_endpoint() {
    let prod = FakeUpstream::start("v2").await;
    let hanging = FakeUpstream::with("v3", Behaviour::Hang).await;
    let mut text = one_model(
        "eject_after_failures = 2\neject_backoff_ms = 600000\n",
        &[
            ("2", "production", &[&prod.url()]),
            ("3", "staging", &[&hanging.url()]),
        ],
    );
    text.push_str("[models.shadow]\npercent = 100.0\ntimeout_ms = 300\n");
    let gateway = common::gateway(&text).await;
    let url = common::infer_url(&gateway);
    for timeouts in 1..=4 {
        assert_eq!(post(&url, &[]).await.json()["server"], "v2");
        report_until(&gateway, |r| r["errors"]["timeout"] == timeouts).await;
    }
    let report = report(&gateway).await;
    assert_eq!(report["mirrored"], 4, "{report}");
    assert_eq!(report["dropped"]["no_healthy_endpoint"], 0, "{report}");
}

/// Answers with a head and half a body, then closes the connection.
async fn resetting_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"half\":")
                .await;
        }
    });
    addr
}

#[tokio::test]
async fn a_slow_shadow_is_compared_when_it_answers_after_production() {
    let prod = FakeUpstream::start("v2").await;
    let slow = FakeUpstream::with("v3", Behaviour::WaitForRelease).await;
    let gateway = common::gateway(&config(
        &prod.url(),
        &slow.url(),
        "percent = 100.0",
        "ignore = [\"server\"]",
    ))
    .await;
    let answer = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "production answered while the shadow waits"
    );
    assert_eq!(report(&gateway).await["compared"], 0);
    slow.release(1);
    let report = report_until(&gateway, |r| r["compared"] == 1).await;
    assert_eq!(report["matched"], 1);
}

#[tokio::test]
async fn settings_change_through_the_api_journaled_and_reports_reset() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = config(&prod.url(), &stage.url(), "percent = 0.0", "");
    let gateway = common::gateway_in(&text, dir.path()).await;
    let url = common::infer_url(&gateway);
    post(&url, &[]).await;
    assert_eq!(report(&gateway).await["mirrored"], 0);

    let set = admin(&gateway, Method::POST, "/api/v1/models/fraud/shadow", Some(json!({ "percent": 100, "compare": { "ignore": ["server"] }, "reason": "start shadowing" }))).await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.json());
    assert_eq!(set.json()["record"]["action"], "shadow");
    post(&url, &[]).await;
    let report_now = report_until(&gateway, |r| r["compared"] == 1).await;
    assert_eq!(report_now["matched"], 1);

    let bad = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/shadow",
        Some(json!({ "percent": 150 })),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["error"].as_str().unwrap().contains("percent"),
        "{:?}",
        bad.json()
    );
    let typo = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/shadow",
        Some(json!({ "percnt": 1 })),
    )
    .await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);

    let reset = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/shadow/reset",
        None,
    )
    .await;
    assert_eq!(reset.json()["reset"], json!(["3"]));
    assert_eq!(report(&gateway).await["compared"], 0);

    // Counting restarts when a version enters staging again.
    post(&url, &[]).await;
    report_until(&gateway, |r| r["compared"] == 1).await;
    for stage_name in ["archived", "staging"] {
        let body = json!({ "stage": stage_name });
        let moved = admin(
            &gateway,
            Method::POST,
            "/api/v1/models/fraud/versions/3/transition",
            Some(body),
        )
        .await;
        assert_eq!(moved.status, StatusCode::OK);
    }
    assert_eq!(report(&gateway).await["compared"], 0);

    // The journaled settings survive a restart.
    gateway.shutdown().await;
    let restarted = common::gateway_in(&text, dir.path()).await;
    let view = admin(&restarted, Method::GET, "/api/v1/models/fraud/shadow", None)
        .await
        .json();
    assert_eq!(
        (view["policy"]["percent"].as_f64(), view["active"].as_bool()),
        (Some(100.0), Some(true))
    );
}
