//! The admin listener: health, readiness, and Prometheus metrics.

mod common;

use common::{FakeUpstream, one_model, post, send};
use http::{Method, StatusCode};

#[tokio::test]
async fn health_and_readiness() {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = common::gateway(&one_model("", &[("2", "production", &[&upstream.url()])])).await;
    let admin = gateway.admin_addr();
    let client = common::client();
    assert_eq!(
        send(
            &client,
            Method::GET,
            &format!("http://{admin}/healthz"),
            &[],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &client,
            Method::GET,
            &format!("http://{admin}/readyz"),
            &[],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );
    let wrong_method = send(
        &client,
        Method::POST,
        &format!("http://{admin}/metrics"),
        &[],
        "",
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let missing = send(
        &client,
        Method::GET,
        &format!("http://{admin}/nope"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class() {
    let upstream = FakeUpstream::start("v2").await;
    let staging = FakeUpstream::start("v3").await;
    let gateway = common::gateway(&one_model(
        "",
        &[
            ("2", "production", &[&upstream.url()]),
            ("3", "staging", &[&staging.url()]),
        ],
    ))
    .await;
    let base = format!("http://{}", gateway.data_addr());
    for _ in 0..3 {
        post(&format!("{base}/v2/models/fraud/infer"), &[]).await;
    }
    post(&format!("{base}/v2/models/fraud/versions/3/infer"), &[]).await;
    post(&format!("{base}/v2/models/nope/infer"), &[]).await;

    let metrics = common::metrics(&gateway).await;
    let expected = [
        r#"stagegate_requests_total{model="fraud",version="2",stage="production",code="2xx"} 3"#,
        r#"stagegate_requests_total{model="fraud",version="3",stage="staging",code="2xx"} 1"#,
        r#"stagegate_requests_total{model="",version="",stage="",code="4xx"} 1"#,
        r#"stagegate_request_duration_seconds_count{model="fraud",version="2",stage="production"} 3"#,
        r#"stagegate_request_duration_seconds_bucket{model="fraud",version="2",stage="production",le="0.0005"}"#,
        r#"stagegate_request_duration_seconds_bucket{model="fraud",version="2",stage="production",le="60"} 3"#,
        r#"stagegate_upstream_errors_total{model="fraud",version="2",kind="timeout"} 0"#,
        "stagegate_routing_table_revision 2",
        "# TYPE stagegate_requests_total counter",
        "# HELP stagegate_request_duration_seconds",
    ];
    for line in expected {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    let text = one_model("", &[("2", "production", &[&upstream.url()])]);
    let models = stagegate::config::Config::parse(&text, "t").unwrap().models;
    let catalog = stagegate::registry::Catalog::from_models(models);
    gateway.published().publish(std::sync::Arc::new(catalog));
    assert!(
        common::metrics(&gateway)
            .await
            .contains("stagegate_routing_table_revision 3")
    );
}
