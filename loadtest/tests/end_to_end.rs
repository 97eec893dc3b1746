//! The generator against the fake backend, both in-process on ephemeral ports.

use std::net::SocketAddr;
use std::time::Duration;

use loadtest::{BackendOptions, ErrorKind, LoadOptions, Mode, Report, Stop, backend, load};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A backend on 127.0.0.1:0; it stops when the returned sender is dropped.
async fn start_backend(options: BackendOptions) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(backend::serve(listener, options, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn options(addr: SocketAddr, requests: u64, connections: usize) -> LoadOptions {
    let url = format!("http://{addr}/v2/models/m/infer").parse().unwrap();
    LoadOptions {
        connections,
        stop: Stop::Requests(requests),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(5),
        ..LoadOptions::new(url)
    }
}

fn total_errors(report: &Report) -> u64 {
    report.errors().values().sum()
}

/// Fails a test that hangs rather than letting it run forever.
async fn run(options: LoadOptions) -> Report {
    tokio::time::timeout(Duration::from_secs(30), load::run(options))
        .await
        .expect("load run did not finish")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_against_a_healthy_backend() {
    let (addr, _stop) = start_backend(BackendOptions::default()).await;
    let report = run(options(addr, 200, 4)).await;
    assert_eq!(report.successes(), 200);
    assert_eq!(report.requests(), 200);
    assert_eq!(total_errors(&report), 0, "{report}");
    assert!(report.latency().max > 0.0);
    assert_eq!(report.to_json().rate, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_status_class() {
    let backend = BackendOptions {
        fail_rate: 1.0,
        ..BackendOptions::default()
    };
    let (addr, _stop) = start_backend(backend).await;
    let report = run(options(addr, 200, 4)).await;
    assert_eq!(report.successes(), 0);
    assert_eq!(report.error_count(ErrorKind::Status5xx), 200, "{report}");
    assert_eq!(report.to_json().errors["status_5xx"], 200);
    assert_eq!(total_errors(&report), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_counts_connect_errors_and_terminates() {
    // Bound then dropped: nothing listens there for the rest of the test.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let report = run(options(addr, 20, 2)).await;
    assert_eq!(report.successes(), 0);
    assert_eq!(report.error_count(ErrorKind::Connect), 20, "{report}");
    assert_eq!(total_errors(&report), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_times_out() {
    let backend = BackendOptions {
        mode: Mode::Hang,
        ..BackendOptions::default()
    };
    let (addr, _stop) = start_backend(backend).await;
    let report = run(LoadOptions {
        timeout: Duration::from_millis(100),
        ..options(addr, 4, 2)
    })
    .await;
    assert_eq!(report.error_count(ErrorKind::Timeout), 4, "{report}");
    assert_eq!(total_errors(&report), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_backend_counts_resets() {
    let backend = BackendOptions {
        mode: Mode::Reset,
        ..BackendOptions::default()
    };
    let (addr, _stop) = start_backend(backend).await;
    let report = run(options(addr, 10, 2)).await;
    assert_eq!(report.error_count(ErrorKind::Reset), 10, "{report}");
    assert_eq!(total_errors(&report), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_exactly_the_requested_count() {
    let (addr, _stop) = start_backend(BackendOptions::default()).await;
    let report = run(LoadOptions {
        rate: Some(2000.0),
        ..options(addr, 100, 4)
    })
    .await;
    assert_eq!(report.successes(), 100, "{report}");
    assert_eq!(total_errors(&report), 0);
    assert_eq!(report.to_json().rate, Some(2000.0));
    // 100 slots at 2000/s are spread over ~50 ms; the run cannot be faster.
    assert!(
        report.duration >= Duration::from_millis(45),
        "{:?}",
        report.duration
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_run_stops_on_time() {
    let (addr, _stop) = start_backend(BackendOptions::default()).await;
    let report = run(LoadOptions {
        stop: Stop::Duration(Duration::from_millis(200)),
        warmup: Duration::from_millis(50),
        ..options(addr, 0, 2)
    })
    .await;
    assert_eq!(report.duration, Duration::from_millis(200));
    assert!(report.successes() > 0);
    assert_eq!(total_errors(&report), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_floor_passes_every_request_through() {
    let (backend_addr, _stop) = start_backend(BackendOptions::default()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let floor_addr = listener.local_addr().unwrap();
    // It serves until the process ends.
    std::thread::spawn(move || loadtest::floor::run(listener, backend_addr, 2));
    let report = run(options(floor_addr, 300, 8)).await;
    assert_eq!(report.successes(), 300, "{report}");
    assert_eq!(total_errors(&report), 0, "{report}");
}
