//! Routing-table swaps under concurrent requests lose none.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{FakeUpstream, one_model};
use http::StatusCode;
use stagegate::config::Config;

const CLIENTS: usize = 8;
const SWAPS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_concurrent_requests_lose_none() {
    let v2 = FakeUpstream::start("v2").await;
    let v3 = FakeUpstream::start("v3").await;
    let before = one_model(
        "",
        &[
            ("2", "production", &[&v2.url()]),
            ("3", "staging", &[&v3.url()]),
        ],
    );
    let after = one_model(
        "",
        &[
            ("2", "archived", &[&v2.url()]),
            ("3", "production", &[&v3.url()]),
        ],
    );
    let catalog = |text: &str| Config::parse(text, "t").unwrap().models;
    let tables = [catalog(&before), catalog(&after)];
    let gateway = common::gateway(&before).await;
    let url = common::infer_url(&gateway);

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, stop, served) = (url.clone(), Arc::clone(&stop), Arc::clone(&served));
            tokio::spawn(async move {
                let client = common::client();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let answer = common::send(&client, http::Method::POST, &url, &[], "{}").await;
                    if answer.status != StatusCode::OK {
                        failures.push((answer.status, answer.body));
                    }
                    served.fetch_add(1, Ordering::AcqRel);
                }
                failures
            })
        })
        .collect();

    let router = Arc::clone(gateway.router());
    for swap in 0..SWAPS {
        // Publish only once requests have gone through since the last swap, so every
        // swap lands among requests in flight.
        let seen = served.load(Ordering::Acquire);
        while served.load(Ordering::Acquire) < seen + CLIENTS / 2 {
            tokio::task::yield_now().await;
        }
        router.publish(&tables[(swap % 2) as usize]);
    }
    stop.store(true, Ordering::Release);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during swaps: {failures:?}"
        );
    }
    // Revision 2 is the table published after the config's versions were seeded.
    assert_eq!(router.load().revision(), 2 + SWAPS);
    let (hits_v2, hits_v3) = (v2.received().len(), v3.received().len());
    assert!(
        hits_v2 > 0 && hits_v3 > 0,
        "both tables served: {hits_v2} / {hits_v3}"
    );
    assert_eq!(hits_v2 + hits_v3, served.load(Ordering::Acquire));
    let metrics = common::metrics(&gateway).await;
    assert!(
        metrics.contains(&format!("stagegate_routing_table_revision {}", 2 + SWAPS)),
        "{metrics}"
    );
}
