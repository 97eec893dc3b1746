//! The streamed chat generator against the fake streaming backend, directly and
//! through a stagegate that routes by the body's model, in-process on
//! ephemeral ports: every answer brings all its events.

use std::time::Duration;

use loadtest::sse::{self, SseLoad};
use tokio::net::TcpListener;

const EVENTS: usize = 8;

fn load(addr: std::net::SocketAddr, model: &str, events: usize) -> SseLoad {
    SseLoad {
        addr,
        model: model.to_string(),
        events,
        connections: 2,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_arrive_whole_directly_and_through_the_gateway() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sse::serve(listener, EVENTS, Duration::from_millis(1)));
    let direct = sse::run(load(addr, "m", EVENTS)).await.unwrap();
    assert!(direct.successes() > 0);
    assert_eq!(
        direct.errors().values().sum::<u64>(),
        0,
        "{:?}",
        direct.errors()
    );

    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[models]]\nname = \"m\"\n[[models.versions]]\nversion = \"1\"\nstage = \"production\"\n\
         endpoints = [\"http://{addr}\"]\n"
    );
    let mut config = stagegate::config::Config::parse(&config, "test").unwrap();
    let state = tempfile::tempdir().unwrap();
    config.server.state_dir = state.path().to_path_buf();
    let gateway = stagegate::gateway::start(&config).await.unwrap();
    let through = sse::run(load(gateway.data_addr(), "m", EVENTS))
        .await
        .unwrap();
    assert!(through.successes() > 0);
    assert_eq!(
        through.errors().values().sum::<u64>(),
        0,
        "{:?}",
        through.errors()
    );

    // An answer short of the events expected is an error, as is an unknown model.
    let short = sse::run(load(addr, "m", EVENTS + 1)).await.unwrap();
    assert_eq!(short.successes(), 0);
    let unknown = sse::run(load(gateway.data_addr(), "nope", EVENTS))
        .await
        .unwrap();
    assert_eq!(unknown.successes(), 0);
    assert!(unknown.errors().values().sum::<u64>() > 0);
}
