//! The gRPC generator against the fake gRPC backend, directly and through a
//! stagegate that routes by the calls' model name, all in-process on ephemeral
//! ports.

use std::time::Duration;

use loadtest::grpc::{self, GrpcLoad};
use tokio::net::TcpListener;

async fn backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(grpc::serve(
        listener,
        grpc::infer_response(200),
        Duration::ZERO,
    ));
    addr
}

fn load(addr: std::net::SocketAddr, model: &str) -> GrpcLoad {
    GrpcLoad {
        addr,
        model: model.to_string(),
        connections: 2,
        streams: 4,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(5),
        request_bytes: 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_many_streams_succeed_directly_and_through_the_gateway() {
    let addr = backend().await;
    let direct = grpc::run(load(addr, "m")).await.unwrap();
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
         endpoints = [\"http://{addr}\"]\ngrpc_endpoints = [\"http://{addr}\"]\n"
    );
    let mut config = stagegate::config::Config::parse(&config, "test").unwrap();
    let state = tempfile::tempdir().unwrap();
    config.server.state_dir = state.path().to_path_buf();
    let gateway = stagegate::gateway::start(&config).await.unwrap();
    let through = grpc::run(load(gateway.data_addr(), "m")).await.unwrap();
    assert!(through.successes() > 0);
    assert_eq!(
        through.errors().values().sum::<u64>(),
        0,
        "{:?}",
        through.errors()
    );

    // A model the gateway does not route is refused with a status: an error here.
    let unknown = grpc::run(load(gateway.data_addr(), "nope")).await.unwrap();
    assert_eq!(unknown.successes(), 0);
    assert!(unknown.errors().values().sum::<u64>() > 0);
}
