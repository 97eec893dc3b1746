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
    let url = common::infer_url(&gateway);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_in_flight_at_shutdown_completes_over_http1_and_http2() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream = FakeUpstream::with("v2", Behaviour::WaitForRelease).await;
    let gateway = common::gateway(&one_model(
        "drain_timeout_ms = 30000",
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    let data = gateway.data_addr();
    let url = format!("http://{data}/v2/models/fraud/infer");
    let mut in_flight: Vec<tokio::task::JoinHandle<StatusCode>> = (0..30)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { common::post_owned(url).await.status })
        })
        .collect();
    let stream = TcpStream::connect(data).await.unwrap();
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..10 {
        let mut sender = sender.clone();
        let url = url.clone();
        in_flight.push(tokio::spawn(async move {
            let request = http::Request::post(url)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        }));
    }
    while upstream.received().len() < 40 {
        tokio::task::yield_now().await;
    }
    let shutting_down = tokio::spawn(gateway.shutdown());
    while TcpStream::connect(data).await.is_ok() {
        tokio::task::yield_now().await;
    }
    upstream.release(40);
    for request in in_flight {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(shutting_down.await.unwrap().abandoned, 0);
}
