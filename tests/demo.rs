//! `stagegate demo`: the embedded demo answers as its instructions say.

mod common;

use common::post;
use http::StatusCode;

#[tokio::test]
async fn demo_serves_production_staging_and_refuses_archived() {
    let any = "127.0.0.1:0".parse().unwrap();
    let demo = stagegate::demo::start(any, any).await.unwrap();
    let base = format!("http://{}", demo.gateway.data_addr());
    assert!(
        demo.instructions()
            .contains(&format!("{base}/v1/models/fraud:predict"))
    );

    let production = post(&format!("{base}/v1/models/fraud:predict"), &[]).await;
    assert_eq!(production.status, StatusCode::OK);
    assert_eq!(production.header("x-stagegate-version"), "2");
    assert!(production.json()["predictions"][0].is_f64());

    let v2_body = r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "data": [0.2, 1.5, 3.0]}]}"#;
    let staging = common::send(
        &common::client(),
        http::Method::POST,
        &format!("{base}/v2/models/fraud/versions/3/infer"),
        &[],
        v2_body,
    )
    .await;
    assert_eq!(staging.status, StatusCode::OK);
    assert_eq!(staging.json()["model_version"], "3");
    assert_eq!(staging.header("x-stagegate-stage"), "staging");

    let production_v2 = common::send(
        &common::client(),
        http::Method::POST,
        &format!("{base}/v2/models/fraud/infer"),
        &[],
        v2_body,
    )
    .await;
    let (p, s) = (
        &production_v2.json()["outputs"][0]["data"][0],
        &staging.json()["outputs"][0]["data"][0],
    );
    assert!(p != s, "versions answer slightly differently: {p} vs {s}");

    let archived = post(
        &format!("{base}/v1/models/fraud:predict"),
        &[("x-stagegate-version", "1")],
    )
    .await;
    assert_eq!(archived.status, StatusCode::FORBIDDEN);
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_scenarios_end_as_they_say() {
    use stagegate::demo::scenario::{Scenario, run};
    let any = "127.0.0.1:0".parse().unwrap();
    for (scenario, expected) in [
        (Scenario::BadCanary, "rolled_back"),
        (Scenario::Rollout, "succeeded"),
    ] {
        let demo = stagegate::demo::start(any, any).await.unwrap();
        let mut lines = Vec::new();
        let phase = run(&demo, scenario, &mut |line| lines.push(line.to_string()))
            .await
            .unwrap();
        assert_eq!(phase, expected, "{lines:#?}");
        let story = lines.join("\n");
        assert!(
            story.contains("rollout: progressing step 1 at 10"),
            "{story}"
        );
        if scenario == Scenario::BadCanary {
            assert!(story.contains("gate error_rate failed"), "{story}");
        } else {
            assert!(story.contains("step 2 at 50% passed its gates"), "{story}");
        }
        demo.shutdown().await;
    }
}
