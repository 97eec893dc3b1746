//! Test support: fake model servers that record what reaches them, a gateway on
//! ephemeral ports, and a small HTTP client.
#![allow(dead_code)]

pub mod browser;
pub mod changes;
pub mod child;
pub mod process;
pub mod traffic;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stagegate::config::Config;
use stagegate::gateway::{self, RunningGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What a fake model server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a fake model server answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with `{"server": name, "path": ...}` and the given extra headers.
    Answer {
        headers: Vec<(&'static str, &'static str)>,
    },
    /// Waits for a permit from [`FakeUpstream::release`] before answering.
    WaitForRelease,
    /// Never answers.
    Hang,
    /// Answers with this status.
    Status(u16),
    /// Answers after this long.
    Delay(Duration),
}

/// A model server on an ephemeral port that records every request.
pub struct FakeUpstream {
    pub name: String,
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

impl FakeUpstream {
    pub async fn start(name: &str) -> FakeUpstream {
        FakeUpstream::with(name, Behaviour::Answer { headers: vec![] }).await
    }

    pub async fn with(name: &str, behaviour: Behaviour) -> FakeUpstream {
        FakeUpstream::at("127.0.0.1:0".parse().unwrap(), name, behaviour).await
    }

    /// A fake model server on a given address (to bring a dead endpoint back).
    pub async fn at(addr: SocketAddr, name: &str, behaviour: Behaviour) -> FakeUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let upstream = FakeUpstream {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            connections: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
        };
        let state = (
            name.to_string(),
            behaviour,
            Arc::clone(&upstream.received),
            Arc::clone(&upstream.release),
        );
        let connections = Arc::clone(&upstream.connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(state, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Lets `n` waiting requests answer.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

type State = (String, Behaviour, Arc<Mutex<Vec<Received>>>, Arc<Semaphore>);

async fn answer(state: State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (name, behaviour, received, release) = state;
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.to_string();
    received.lock().unwrap().push(Received {
        method: parts.method,
        uri: path.clone(),
        headers: parts.headers,
        body,
    });
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::json!({ "server": name, "path": path }).to_string(),
    )));
    match behaviour {
        Behaviour::Answer { headers } => {
            for (k, v) in headers {
                response.headers_mut().append(k, v.parse().unwrap());
            }
        }
        Behaviour::WaitForRelease => {
            release.acquire().await.unwrap().forget();
        }
        Behaviour::Hang => std::future::pending::<()>().await,
        Behaviour::Status(status) => {
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
        }
        Behaviour::Delay(delay) => tokio::time::sleep(delay).await,
    }
    response
}

/// A port with nothing listening on it.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A gateway on ephemeral ports with its own state directory.
pub struct TestGateway {
    pub running: RunningGateway,
    pub state_dir: tempfile::TempDir,
}

impl std::ops::Deref for TestGateway {
    type Target = RunningGateway;
    fn deref(&self) -> &RunningGateway {
        &self.running
    }
}

impl TestGateway {
    pub async fn shutdown(self) -> stagegate::proxy::Drained {
        self.running.shutdown().await
    }
}

/// Starts a gateway on ephemeral ports from config text (its listen addresses and
/// state directory are replaced).
pub async fn gateway(config: &str) -> TestGateway {
    let state_dir = tempfile::tempdir().unwrap();
    let running = gateway_in(config, state_dir.path()).await;
    TestGateway { running, state_dir }
}

/// A model server named `v2`, and a gateway whose model `fraud` has one
/// version, "2", in production there, with `server_setting` in `[server]`.
pub async fn served_with(server_setting: &str) -> (FakeUpstream, TestGateway) {
    let upstream = FakeUpstream::start("v2").await;
    let gateway = gateway(&one_model(
        server_setting,
        &[("2", "production", &[&upstream.url()])],
    ))
    .await;
    (upstream, gateway)
}

/// A gateway whose model `fraud` has one version, "2", in production at `upstream`.
pub async fn gateway_for(upstream: SocketAddr) -> TestGateway {
    gateway(&one_model(
        "",
        &[("2", "production", &[&format!("http://{upstream}")])],
    ))
    .await
}

/// Starts a gateway on ephemeral ports with the given state directory.
pub async fn gateway_in(config: &str, state_dir: &std::path::Path) -> RunningGateway {
    try_gateway_in(config, state_dir)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn try_gateway_in(
    config: &str,
    state_dir: &std::path::Path,
) -> Result<RunningGateway, gateway::GatewayError> {
    let mut config = Config::parse(config, "test config").unwrap_or_else(|e| panic!("{e}"));
    config.server.state_dir = state_dir.to_path_buf();
    start_config(&config).await
}

/// Starts a gateway from a validated config on ephemeral ports.
pub async fn start_config(config: &Config) -> Result<RunningGateway, gateway::GatewayError> {
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gateway::start_on(config, data, admin).await
}

/// An admin token for tests, long enough to be accepted.
pub const TOKEN: &str = "test-token-0123456789";

/// Writes `config` and a token file (`alice:{TOKEN}`) into a fresh directory and
/// starts a gateway from the file, so reloads work. Returns the config's path.
pub async fn gateway_from_file(config: &str) -> (TestGateway, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("alice:{TOKEN}\n")).unwrap();
    let path = dir.path().join("stagegate.toml");
    std::fs::write(&path, format!("[admin]\ntoken_file = \"tokens\"\n{config}")).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let running = start_config(&config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (
        TestGateway {
            running,
            state_dir: dir,
        },
        path,
    )
}

/// Calls the admin API with the test token; `body` is sent when given.
pub async fn admin(
    gateway: &RunningGateway,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Answer {
    let url = format!("http://{}{path}", gateway.admin_addr());
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(&client(), method, &url, &[("authorization", &auth)], &body).await
}

/// Model fraud's journal entries, newest first (up to 1,000).
pub async fn history(gateway: &RunningGateway) -> Vec<serde_json::Value> {
    let path = "/api/v1/models/fraud/history?limit=1000";
    let answer = admin(gateway, Method::GET, path, None).await;
    answer.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Config text for one model "fraud" with the given `(version, stage, [urls])`.
pub fn one_model(server: &str, versions: &[(&str, &str, &[&str])]) -> String {
    let mut text = format!("[server]\n{server}\n[[models]]\nname = \"fraud\"\n");
    for (version, stage, endpoints) in versions {
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        text.push_str(&format!(
            "[[models.versions]]\nversion = \"{version}\"\nstage = \"{stage}\"\nendpoints = [{}]\n",
            endpoints.join(", ")
        ));
    }
    text
}

/// A response, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// The `code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Seconds since the epoch, as an MLflow webhook's timestamp header carries them.
pub fn unix_seconds() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

/// An MLflow webhook delivery (`{}`) to `hook`, signed with `secret` as sent at
/// `timestamp` (seconds since the epoch).
pub async fn deliver_webhook(hook: &str, secret: &str, timestamp: i64) -> Answer {
    let key = stagegate::config::registry::Secret::new(secret.into());
    let timestamp = timestamp.to_string();
    let signature = stagegate::sync::webhook::sign(&key, "d-1", &timestamp, b"{}");
    let headers = [
        ("x-mlflow-signature", signature.as_str()),
        ("x-mlflow-delivery-id", "d-1"),
        ("x-mlflow-timestamp", timestamp.as_str()),
    ];
    send(&client(), Method::POST, hook, &headers, "{}").await
}

/// Sends one request and reads the whole answer.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("no answer within 20 s")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Writes raw `request` bytes and reads until the gateway closes the
/// connection or 10 s pass; the flag says whether it closed.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .is_ok();
    (String::from_utf8_lossy(&response).into_owned(), closed)
}

/// The data listener's inference URL for model `fraud`.
pub fn infer_url(gateway: &RunningGateway) -> String {
    format!("http://{}/v2/models/fraud/infer", gateway.data_addr())
}

/// POSTs a small JSON body.
pub async fn post(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(
        &client(),
        Method::POST,
        url,
        headers,
        r#"{"instances": [[1.0]]}"#,
    )
    .await
}

/// [`post`] with an owned URL, for spawned tasks.
pub async fn post_owned(url: String) -> Answer {
    post(&url, &[]).await
}

/// The admin listener's `/metrics` text.
pub async fn metrics(gateway: &RunningGateway) -> String {
    let url = format!("http://{}/metrics", gateway.admin_addr());
    let answer = send(&client(), Method::GET, &url, &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    String::from_utf8(answer.body.to_vec()).unwrap()
}
