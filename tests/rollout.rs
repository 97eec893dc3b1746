//! Canaries and rollouts end to end: sticky splits, plans that succeed, gates that
//! fail and roll back (or pause), manual actions, and the journal's account.

mod common;

use std::time::Duration;

use common::traffic::Traffic;
use common::{Behaviour, FakeUpstream, admin, one_model, post};
use http::{Method, StatusCode};
use serde_json::{Value, json};

fn config(production: &str, candidate: &str, extra: &str) -> String {
    let mut text = one_model(
        "",
        &[
            ("2", "production", &[production]),
            ("3", "staging", &[candidate]),
        ],
    );
    text.push_str("[models.canary]\nsticky_header = \"x-user-id\"\n");
    text.push_str(extra);
    text
}

async fn rollout_status(gateway: &stagegate::gateway::RunningGateway) -> Value {
    admin(gateway, Method::GET, "/api/v1/models/fraud/rollout", None)
        .await
        .json()
}

/// Waits until the rollout reaches `phase` (bounded; no sleeping for luck).
async fn until_phase(gateway: &stagegate::gateway::RunningGateway, phase: &str) -> Value {
    let wait = async {
        loop {
            let status = rollout_status(gateway).await;
            if status["phase"] == phase {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(status) => status,
        Err(_) => panic!(
            "rollout never reached {phase}: {}",
            rollout_status(gateway).await
        ),
    }
}

async fn start(gateway: &stagegate::gateway::RunningGateway, body: Value) -> common::Answer {
    admin(
        gateway,
        Method::POST,
        "/api/v1/models/fraud/rollout",
        Some(body),
    )
    .await
}

fn fast_plan(extra: Value) -> Value {
    // Gates as loose as a test gets evidence for in seconds: a step still
    // needs about a thousand requests on each side to bound a p99.
    let mut plan = json!({
        "candidate": "3", "steps": [20, 50, 100], "step_interval_s": 0.3,
        "max_step_duration_s": 25.0, "min_requests": 20,
        "max_error_rate": 0.05, "max_p99_ratio": 1000.0
    });
    plan.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_canary_is_sticky_and_honest_about_its_weight() {
    let (prod, cand) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), "")).await;
    let set = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/canary",
        Some(json!({ "version": "3", "weight": 30 })),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.json());
    let url = common::infer_url(&gateway);
    let client = common::client();
    let mut canary = 0;
    for i in 0..2000 {
        let user = format!("user-{i}");
        let answer = common::send(&client, Method::POST, &url, &[("x-user-id", &user)], "{}").await;
        let stage = answer.header("x-stagegate-stage").to_string();
        if stage == "canary" {
            canary += 1;
            assert_eq!(answer.header("x-stagegate-version"), "3");
        }
        // The same user always gets the same version.
        let again = common::send(&client, Method::POST, &url, &[("x-user-id", &user)], "{}").await;
        assert_eq!(again.header("x-stagegate-stage"), stage, "{user} moved");
    }
    // Binomial(2000, 0.3): standard deviation 1.0 point; allow four.
    let share = f64::from(canary) / 20.0;
    assert!((share - 30.0).abs() < 4.0, "canary share {share}%");
    let metrics = common::metrics(&gateway).await;
    assert!(
        metrics.contains(r#"stagegate_canary_weight{model="fraud",version="3"} 30"#),
        "{metrics}"
    );

    let end = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/canary",
        Some(json!({ "version": "3", "weight": 0 })),
    )
    .await;
    assert_eq!(end.status, StatusCode::OK);
    for i in 0..50 {
        let answer = common::send(
            &client,
            Method::POST,
            &url,
            &[("x-user-id", &format!("user-{i}"))],
            "{}",
        )
        .await;
        assert_eq!(answer.header("x-stagegate-stage"), "production");
    }
    let archived = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/canary",
        Some(json!({ "version": "2", "weight": 10 })),
    )
    .await;
    assert_eq!(
        (archived.status, archived.code().as_str()),
        (StatusCode::CONFLICT, "rollout_refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_of_a_good_candidate_ends_in_production() {
    let (prod, cand) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), "")).await;
    let traffic = Traffic::start(common::infer_url(&gateway));
    let started = start(&gateway, fast_plan(json!({ "reason": "retrained" }))).await;
    assert_eq!(started.status, StatusCode::CREATED, "{:?}", started.json());
    let done = until_phase(&gateway, "succeeded").await;
    let statuses = traffic.stop().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "failed requests during the rollout"
    );
    assert_eq!(done["rollout"]["step"], 2);

    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(model["production"], "3");
    let routed = post(&common::infer_url(&gateway), &[]).await;
    assert_eq!(
        (
            routed.header("x-stagegate-version"),
            routed.header("x-stagegate-stage")
        ),
        ("3", "production")
    );

    let history = admin(&gateway, Method::GET, "/api/v1/models/fraud/history", None)
        .await
        .json();
    let last = &history["entries"][0];
    assert_eq!(
        (
            last["action"].as_str(),
            last["to"].as_str(),
            last["actor"].as_str()
        ),
        (
            Some("rollout"),
            Some("production"),
            Some("rollout-controller")
        )
    );
    assert_eq!(last["also"][0]["version"], "2");
    // Each step's record says what it passed on: every gate's interval, its
    // confidence and both sample sizes.
    let evidence = last["rollout"]["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 3, "{last}");
    for gate in evidence {
        assert_eq!(gate["verdict"], "pass", "{gate}");
        assert!(gate["upper"].as_f64().unwrap() <= gate["threshold"].as_f64().unwrap());
        assert!(
            gate["candidate_n"].as_u64().unwrap() >= 20 && gate["stable_n"].as_u64().unwrap() >= 20
        );
    }
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("last step 3 at 100% passed its gates (error_rate pass: reading")
            && reason.contains("confidence"),
        "{reason}"
    );
    let metrics = common::metrics(&gateway).await;
    assert!(
        metrics.contains(r#"stagegate_rollout_steps_total{model="fraud"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"stagegate_rollout_phase{model="fraud",phase="succeeded"} 1"#));
}

async fn failing_rollout(
    candidate: Behaviour,
    extra_config: &str,
    plan: Value,
    gate: &str,
) -> (common::TestGateway, Value) {
    let prod = FakeUpstream::start("v2").await;
    let cand = FakeUpstream::with("v3", candidate).await;
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), extra_config)).await;
    let traffic = Traffic::start(common::infer_url(&gateway));
    assert_eq!(start(&gateway, plan).await.status, StatusCode::CREATED);
    let failed = until_phase(&gateway, "rolled_back").await;
    traffic.stop().await;
    assert_eq!(failed["rollout"]["failed_gate"]["gate"], gate, "{failed}");
    assert_eq!(failed["weight"], 0.0);
    assert!(
        failed["rollout"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("gate {gate} failed: reading")),
        "{failed}"
    );
    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(model["production"], "2", "production untouched");
    // Weight 0 at once: every request now goes to production.
    for i in 0..20 {
        let answer = post(
            &common::infer_url(&gateway),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
        assert_eq!(answer.header("x-stagegate-version"), "2");
    }
    let metrics = common::metrics(&gateway).await;
    let line = format!(r#"stagegate_rollout_gate_failures_total{{model="fraud",gate="{gate}"}} 1"#);
    assert!(metrics.contains(&line), "missing {line}");
    let journal = std::fs::read_to_string(gateway.state_dir.path().join("journal.jsonl")).unwrap();
    assert!(
        journal.contains(&format!(
            "\"failed_gate\":{{\"gate\":\"{gate}\",\"reading\":"
        )),
        "{journal}"
    );
    (gateway, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_by_the_error_gate() {
    let plan = fast_plan(json!({ "max_error_rate": 0.05 }));
    let (_gateway, failed) = failing_rollout(Behaviour::Status(500), "", plan, "error_rate").await;
    assert_eq!(failed["rollout"]["failed_gate"]["threshold"], 0.05);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_is_rolled_back_by_the_latency_gate() {
    // 60 ms against a few ms: twice stable's p99 even when parallel tests
    // slow stable down.
    // The median gate (on by default) would catch it first.
    let plan = fast_plan(
        json!({ "max_p99_ratio": 2.0, "max_latency_increase": "off", "steps": [50, 100] }),
    );
    let (_gateway, failed) = failing_rollout(
        Behaviour::Delay(Duration::from_millis(60)),
        "",
        plan,
        "p99_ratio",
    )
    .await;
    assert!(
        failed["rollout"]["failed_gate"]["reading"]
            .as_f64()
            .unwrap()
            > 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disagreeing_candidate_is_stopped_before_any_user_sees_it() {
    let shadow = "[models.shadow]\npercent = 100.0\n[models.compare]\nmode = \"json\"\n";
    let plan = fast_plan(json!({ "min_shadow_agreement": 0.99, "min_shadow_compared": 20 }));
    let (gateway, failed) = failing_rollout(
        Behaviour::Answer { headers: vec![] },
        shadow,
        plan,
        "shadow_agreement",
    )
    .await;
    assert_eq!(
        failed["rollout"]["progressed"], false,
        "no canary step ever started"
    );
    let metrics = common::metrics(&gateway).await;
    let canary_series =
        r#"stagegate_requests_total{model="fraud",version="3",stage="canary",code="2xx"}"#;
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with(canary_series))
            .all(|l| l.ends_with(" 0")),
        "no request was answered by the canary: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_gate_lets_an_agreeing_candidate_through() {
    let (prod, cand) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let shadow = "[models.shadow]\npercent = 100.0\n[models.compare]\nignore = [\"server\"]\n";
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), shadow)).await;
    let traffic = Traffic::start(common::infer_url(&gateway));
    let plan = fast_plan(json!({ "min_shadow_agreement": 0.99, "min_shadow_compared": 20 }));
    let started = start(&gateway, plan).await.json();
    assert_eq!(started["record"]["rollout"]["phase"], "waiting_for_shadow");
    until_phase(&gateway, "succeeded").await;
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_pauses_by_policy_and_people_resume_abort_and_promote() {
    let prod = FakeUpstream::start("v2").await;
    let cand = FakeUpstream::with("v3", Behaviour::Status(503)).await;
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), "")).await;
    let traffic = Traffic::start(common::infer_url(&gateway));
    assert_eq!(
        start(&gateway, fast_plan(json!({ "on_failure": "pause" })))
            .await
            .status,
        StatusCode::CREATED
    );
    let paused = until_phase(&gateway, "paused").await;
    // Quiet, so the failing candidate's gate cannot trip again while people act.
    traffic.stop().await;
    assert_eq!(
        (
            paused["weight"].as_f64(),
            paused["rollout"]["failed_gate"]["gate"].as_str()
        ),
        (Some(0.0), Some("error_rate"))
    );

    let action = |name: &'static str| {
        let gateway = &gateway;
        async move {
            let path = format!("/api/v1/models/fraud/rollout/{name}");
            admin(gateway, Method::POST, &path, None).await
        }
    };
    let resumed = action("resume").await;
    assert_eq!(resumed.status, StatusCode::OK);
    assert_eq!(resumed.json()["record"]["actor"], "system");
    assert_eq!(rollout_status(&gateway).await["weight"], 20.0);
    let again = action("resume").await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (StatusCode::CONFLICT, "rollout_refused")
    );
    assert_eq!(action("abort").await.status, StatusCode::OK);
    assert_eq!(rollout_status(&gateway).await["phase"], "aborted");

    // A new rollout, paused by hand (the weight holds), then promoted.
    let healthy = FakeUpstream::start("v3").await;
    let register = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions",
        Some(json!({ "version": "4", "endpoints": [healthy.url()] })),
    )
    .await;
    assert_eq!(register.status, StatusCode::CREATED);
    let slow_plan = json!({ "candidate": "4", "steps": [10, 100], "step_interval_s": 3600 });
    assert_eq!(
        start(&gateway, slow_plan.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        start(&gateway, slow_plan).await.code(),
        "rollout_refused",
        "one rollout per model"
    );
    let transition = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/versions/4/transition",
        Some(json!({ "stage": "archived" })),
    )
    .await;
    assert_eq!(
        transition.code(),
        "rollout_refused",
        "the candidate is held while its rollout runs"
    );
    assert_eq!(action("pause").await.status, StatusCode::OK);
    assert_eq!(rollout_status(&gateway).await["weight"], 10.0);
    let promoted = action("promote").await;
    assert_eq!(promoted.json()["record"]["to"], "production");
    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(model["production"], "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_enough_evidence_is_held_never_passed() {
    let (prod, cand) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), "")).await;
    // No traffic at all: no gate can pass, so the step must not pass either.
    let plan = fast_plan(json!({ "step_interval_s": 0.1, "max_step_duration_s": 0.5 }));
    assert_eq!(start(&gateway, plan).await.status, StatusCode::CREATED);
    let held = until_phase(&gateway, "paused").await;
    assert_eq!(
        (held["step"].as_u64(), held["weight"].as_f64()),
        (Some(1), Some(20.0))
    );
    assert_eq!(held["rollout"]["held"], true, "{held}");
    let reason = held["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("step 1 at 20% held after")
            && reason.contains("without enough evidence"),
        "{reason}"
    );
    let waiting = &held["rollout"]["evidence"];
    assert!(
        waiting
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["verdict"] == "wait"),
        "{waiting}"
    );
    let history = admin(&gateway, Method::GET, "/api/v1/models/fraud/history", None)
        .await
        .json();
    assert_eq!(history["entries"][0]["actor"], "rollout-controller");
    assert_eq!(history["entries"][0]["rollout"]["phase"], "paused");
    // A person decides: resumed, the step starts over with a fresh window.
    let resumed = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/fraud/rollout/resume",
        None,
    )
    .await;
    assert_eq!(resumed.status, StatusCode::OK);
    assert_eq!(rollout_status(&gateway).await["phase"], "progressing");
    let model = admin(&gateway, Method::GET, "/api/v1/models/fraud", None)
        .await
        .json();
    assert_eq!(model["production"], "2", "nothing was promoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_limits_are_numbers_or_off_and_a_limit_of_zero_is_refused() {
    let (prod, cand) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    );
    let gateway = common::gateway(&config(&prod.url(), &cand.url(), "")).await;
    let zero = start(&gateway, fast_plan(json!({ "max_error_rate": 0 }))).await;
    assert_eq!(
        (zero.status, zero.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let message = zero.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("max_error_rate: must be greater than 0") && message.contains("\"off\""),
        "{message}"
    );
    let word = start(&gateway, fast_plan(json!({ "max_p99_ratio": "none" }))).await;
    assert_eq!(word.status, StatusCode::BAD_REQUEST);
    let off = start(
        &gateway,
        fast_plan(
            json!({ "max_p99_ratio": "off", "step_interval_s": 3600, "max_step_duration_s": 7200 }),
        ),
    )
    .await;
    assert_eq!(off.status, StatusCode::CREATED, "{:?}", off.json());
    let gates = &off.json()["record"]["rollout"]["plan"]["gates"];
    assert_eq!(
        (
            gates["max_p99_ratio"].is_null(),
            gates["max_error_rate"].as_f64()
        ),
        (true, Some(0.05))
    );
}
