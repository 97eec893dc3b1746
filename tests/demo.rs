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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_llm_answers_whole_and_streamed_and_its_candidate_is_compared() {
    let any = "127.0.0.1:0".parse().unwrap();
    let demo = stagegate::demo::start(any, any).await.unwrap();
    let base = format!("http://{}", demo.gateway.data_addr());
    let url = format!("{base}/v1/chat/completions");
    assert!(
        demo.instructions().contains(&url),
        "{}",
        demo.instructions()
    );
    let ask = |model: &str, stream: bool| {
        serde_json::json!({ "model": model, "stream": stream,
            "messages": [{ "role": "user", "content": "what does stagegate do" }] })
        .to_string()
    };
    let json = [("content-type", "application/json")];
    let send = |body: String| {
        let url = url.clone();
        async move { common::send(&common::client(), http::Method::POST, &url, &json, &body).await }
    };
    let whole = send(ask("chat", false)).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header("x-stagegate-version"), "1");
    let text = whole.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let streamed = send(ask("chat", true)).await;
    let body = String::from_utf8(streamed.body.to_vec()).unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(
        body.matches("data: ").count() > 10,
        "one event per word: {body}"
    );
    let staging = send(ask("chat@staging", false)).await;
    let reworded = staging.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(text, reworded, "the candidate words it differently");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let report = common::admin(
            &demo.gateway,
            http::Method::GET,
            "/api/v1/models/chat/shadow",
            None,
        )
        .await;
        let version = report.json()["versions"][0].clone();
        if version["compared"] == 2 {
            assert_eq!(version["matched"], 2, "close enough by ROUGE-L: {version}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{version}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    demo.shutdown().await;
}
