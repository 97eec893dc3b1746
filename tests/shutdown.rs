//! Graceful shutdown: in-flight requests finish, new connections are refused,
//! readiness reports draining, and the drain timeout bounds the wait.

mod common;

use common::{Behaviour, FakeUpstream, one_model};
use http::StatusCode;
use tokio::net::TcpStream;

#[tokio::test]
async fn in_flight_requests_finish_during_graceful_shutdown() {
    let upstream = FakeUpstream::with("v2", Behaviour::WaitForRelease).await;
    let gateway = common::gateway(&one_model(
        "drain_timeout_ms = 30000",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let (data, admin) = (gateway.data_addr(), gateway.admin_addr());
    let in_flight = tokio::spawn(common::post_owned(format!(
        "http://{data}/v2/models/fraud/infer"
    )));
    while upstream.received().is_empty() {
        tokio::task::yield_now().await;
    }

    let shutting_down = tokio::spawn(gateway.shutdown());
    // The data listener closes: new connections are refused.
    while TcpStream::connect(data).await.is_ok() {
        tokio::task::yield_now().await;
    }
    // The admin listener stays up while draining, and says so.
    let readiness = common::send(
        &common::client(),
        http::Method::GET,
        &format!("http://{admin}/readyz"),
        &[],
        "",
    )
    .await;
    assert_eq!(readiness.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!shutting_down.is_finished());

    upstream.release(1);
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["server"], "v2");
    assert_eq!(shutting_down.await.unwrap().abandoned, 0);
}

#[tokio::test]
async fn drain_timeout_closes_connections_that_do_not_finish() {
    let upstream = FakeUpstream::with("v2", Behaviour::Hang).await;
    let gateway = common::gateway(&one_model(
        "drain_timeout_ms = 100",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let url = format!("http://{}/v2/models/fraud/infer", gateway.data_addr());
    let stuck = tokio::spawn(async move {
        let request = http::Request::post(url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        common::client().request(request).await
    });
    while upstream.received().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(gateway.shutdown().await.abandoned, 1);
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck request's connection is closed"
    );
}
