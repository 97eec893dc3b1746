//! The shadow's CPU share, in a test binary of its own: its busy loops would slow
//! every other test running beside it.

mod common;

use std::time::Duration;

use common::{FakeUpstream, admin, one_model, post};
use http::{Method, StatusCode};
use serde_json::Value;

const REQUESTS: u64 = 200;

/// Spins on every core until dropped: other work of normal priority on the host,
/// in processes of their own (as model servers and batch jobs beside a gateway
/// are), so the gateway's process clock sees none of it.
struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    fn on_every_core() -> BusyLoops {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let loops = (0..cores)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("cannot start a busy loop with sh")
            })
            .collect();
        BusyLoops(loops)
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn report(gateway: &stagegate::gateway::RunningGateway) -> Value {
    let answer = admin(gateway, Method::GET, "/api/v1/models/fraud/shadow", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["versions"][0].clone()
}

fn dropped(report: &Value) -> u64 {
    let dropped = report["dropped"].as_object().unwrap();
    dropped.values().map(|v| v.as_u64().unwrap()).sum()
}

fn errors(report: &Value) -> u64 {
    let errors = report["errors"].as_object().unwrap();
    errors.values().map(|v| v.as_u64().unwrap()).sum()
}

/// With a busy loop of normal priority on every core and a light request rate,
/// mirrors still get their CPU share (at the default priority and share): at
/// least 95% of sampled requests are mirrored and compared. At idle priority
/// they would get no CPU at all while the loops run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_their_cpu_share_while_other_work_keeps_every_core_busy() {
    let (prod, stage) = (
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v2").await,
    );
    let mut text = one_model(
        "",
        &[
            ("2", "production", &[&prod.url()]),
            ("3", "staging", &[&stage.url()]),
        ],
    );
    text.push_str("[models.shadow]\npercent = 100.0\n");
    let gateway = common::gateway(&text).await;
    let url = common::infer_url(&gateway);

    let busy = BusyLoops::on_every_core();
    // A light, steady rate: the gateway's own threads are mostly idle, even in a
    // debug build, whose mirrors cost many times the CPU of a release build's.
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..REQUESTS {
        pace.tick().await;
        let answer = post(&url, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    // Every sampled request ends up compared, failed or dropped.
    let settled = async {
        loop {
            let report = report(&gateway).await;
            let compared = report["compared"].as_u64().unwrap();
            if compared + errors(&report) + dropped(&report) >= REQUESTS {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("the mirrors never settled while the cores were busy");
    drop(busy);
    let compared = report["compared"].as_u64().unwrap();
    assert!(
        compared * 100 >= REQUESTS * 95,
        "only {compared} of {REQUESTS} sampled requests were compared: {report}"
    );
}
