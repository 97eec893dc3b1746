//! An in-process fake of the MLflow REST calls stagegate makes, for the edges a
//! real server cannot easily show: small search pages, a 500 in the middle of a
//! sync, a server that stops answering.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Default)]
pub struct FakeVersion {
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct State {
    /// Registered model name -> alias -> version.
    pub aliases: BTreeMap<String, BTreeMap<String, String>>,
    /// Registered model name -> version -> version.
    pub versions: BTreeMap<String, BTreeMap<String, FakeVersion>>,
    /// Versions per search page.
    pub page_size: usize,
    /// Answer this search page (1-based) with a 500.
    pub fail_page: Option<usize>,
    /// Never answer anything.
    pub hang: bool,
    /// Every request, as "METHOD path?query".
    pub calls: Vec<String>,
}

#[derive(Clone)]
pub struct FakeMlflow {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl FakeMlflow {
    pub async fn start() -> FakeMlflow {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(Mutex::new(State {
            page_size: 100,
            ..State::default()
        }));
        let fake = FakeMlflow {
            addr: listener.local_addr().unwrap(),
            state: Arc::clone(&state),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a READY version whose endpoints tag is `endpoint`.
    pub fn add_version(&self, model: &str, version: &str, endpoint: &str) {
        let tags = [("stagegate.endpoints".to_string(), endpoint.to_string())];
        let version_entry = FakeVersion {
            status: "READY".into(),
            tags: tags.into_iter().collect(),
        };
        let mut state = self.state.lock().unwrap();
        state
            .versions
            .entry(model.into())
            .or_default()
            .insert(version.into(), version_entry);
        state.aliases.entry(model.into()).or_default();
    }

    pub fn set_alias(&self, model: &str, alias: &str, version: &str) {
        let mut state = self.state.lock().unwrap();
        let aliases = state.aliases.entry(model.into()).or_default();
        aliases.insert(alias.into(), version.into());
    }

    pub fn with<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        change(&mut self.state.lock().unwrap())
    }
}

async fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let hang = {
        let mut state = state.lock().unwrap();
        let line = format!("{method} {path} {query:?}");
        state.calls.push(line);
        state.hang
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut state = state.lock().unwrap();
    let route = path.trim_start_matches("/api/2.0/mlflow/");
    let (status, value) = match (method.as_str(), route) {
        ("GET", "registered-models/get") => registered_model(&state, &query["name"]),
        ("GET", "model-versions/search") => search(&state, &query),
        ("POST", "registered-models/alias") => {
            let model = body["name"].as_str().unwrap_or_default().to_string();
            let alias = body["alias"].as_str().unwrap_or_default().to_string();
            let version = body["version"].as_str().unwrap_or_default().to_string();
            state
                .aliases
                .entry(model)
                .or_default()
                .insert(alias, version);
            (StatusCode::OK, json!({}))
        }
        ("POST", "model-versions/set-tag") => {
            let model = body["name"].as_str().unwrap_or_default();
            let version = body["version"].as_str().unwrap_or_default();
            match state
                .versions
                .get_mut(model)
                .and_then(|v| v.get_mut(version))
            {
                Some(found) => {
                    let key = body["key"].as_str().unwrap_or_default().to_string();
                    let value = body["value"].as_str().unwrap_or_default().to_string();
                    found.tags.insert(key, value);
                    (StatusCode::OK, json!({}))
                }
                None => not_found(&format!(
                    "Model Version (name={model}, version={version}) not found"
                )),
            }
        }
        _ => not_found(&format!("no fake endpoint {method} {path}")),
    };
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
}

fn not_found(message: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": message}),
    )
}

fn registered_model(state: &State, name: &str) -> (StatusCode, Value) {
    let Some(aliases) = state.aliases.get(name) else {
        return not_found(&format!("Registered Model with name={name} not found"));
    };
    let aliases: Vec<Value> = aliases
        .iter()
        .map(|(alias, version)| json!({"alias": alias, "version": version}))
        .collect();
    let model =
        json!({"name": name, "last_updated_timestamp": 1_700_000_000_000_i64, "aliases": aliases});
    (StatusCode::OK, json!({ "registered_model": model }))
}

fn search(state: &State, query: &BTreeMap<String, String>) -> (StatusCode, Value) {
    let name = query["filter"]
        .trim_start_matches("name='")
        .trim_end_matches('\'')
        .to_string();
    let start: usize = query.get("page_token").map_or(0, |t| t.parse().unwrap());
    let page = start / state.page_size + 1;
    if state.fail_page == Some(page) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error_code": "INTERNAL_ERROR", "message": "database is locked"}),
        );
    }
    let all: Vec<Value> = state
        .versions
        .get(&name)
        .into_iter()
        .flatten()
        .map(|(version, v)| {
            let tags: Vec<Value> = v
                .tags
                .iter()
                .map(|(key, value)| json!({"key": key, "value": value}))
                .collect();
            json!({
                "name": name, "version": version, "status": v.status,
                "current_stage": "None", "tags": tags,
                "last_updated_timestamp": "1700000000000",
            })
        })
        .collect();
    let end = (start + state.page_size).min(all.len());
    let mut answer = json!({ "model_versions": all[start.min(end)..end] });
    if end < all.len() {
        answer["next_page_token"] = json!(end.to_string());
    }
    (StatusCode::OK, answer)
}
