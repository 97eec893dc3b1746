//! A client of etcd's v3 API through the JSON gateway every etcd server serves
//! beside gRPC (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, ...), on the
//! hyper client the gateway already has. The gRPC client crates need `protoc` at
//! build time, which would make a plain `cargo build` fail on a machine without
//! it; the JSON gateway carries the same calls (keys and values base64, 64-bit
//! numbers as strings, as proto3's JSON mapping has them).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::config::store::EtcdConfig;
use crate::vocab::EndpointUrl;

/// The largest answer read (a whole state directory's worth of records).
const MAX_ANSWER_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable ({0})")]
    Unreachable(String),
    #[error("etcd refused {call}: {status} {message}")]
    Refused {
        call: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("etcd answered {call} with something unreadable: {0}", call = .1)]
    Malformed(String, &'static str),
}

/// One key and its value, as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// An open watch: its answers, each a JSON object, as they arrive.
pub struct Watch {
    body: Incoming,
    carry: Vec<u8>,
}

pub struct EtcdClient {
    http: Client<HttpConnector, Full<Bytes>>,
    endpoints: Vec<EndpointUrl>,
    timeout: Duration,
    auth: Option<(String, crate::config::registry::Secret)>,
    /// The token `auth/authenticate` gave, while it is good.
    token: Mutex<Option<String>>,
    /// The endpoint that answered last, tried first.
    preferred: AtomicUsize,
}

/// The least time an endpoint gets before the next is tried.
const MIN_SHARE: Duration = Duration::from_millis(100);

impl EtcdClient {
    pub fn new(config: &EtcdConfig) -> EtcdClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.dial_timeout));
        connector.set_nodelay(true);
        EtcdClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
            endpoints: config.endpoints.clone(),
            timeout: config.dial_timeout,
            auth: config.auth.clone(),
            token: Mutex::new(None),
            preferred: AtomicUsize::new(0),
        }
    }

    /// The keys in `[key, range_end)` (or `key` alone), at `revision` (0: now),
    /// with the store's revision they were read at.
    pub async fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        revision: i64,
    ) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut body = json!({ "key": STANDARD.encode(key), "revision": revision.to_string() });
        if let Some(end) = range_end {
            body["range_end"] = json!(STANDARD.encode(end));
        }
        let answer = self.call("range", "/v3/kv/range", body).await?;
        let kvs = answer["kvs"].as_array().map_or(&[][..], Vec::as_slice);
        let kvs = kvs.iter().map(kv).collect::<Result<_, _>>()?;
        Ok((header_revision(&answer)?, kvs))
    }

    /// Puts each `(key, value)` if none of the keys exists yet, in one
    /// transaction; returns whether it did, and the store's revision after.
    pub async fn create(&self, puts: &[(Vec<u8>, Vec<u8>)]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = puts
            .iter()
            .map(|(key, _)| {
                json!({ "key": STANDARD.encode(key), "target": "CREATE", "result": "EQUAL",
                        "create_revision": "0" })
            })
            .collect();
        let success: Vec<Value> = puts.iter().map(|(k, v)| put(k, v)).collect();
        self.txn(compare, success).await
    }

    /// Puts `(key, value)` and deletes `[from, to)`, if `guard` still has
    /// `mod_revision` (0: does not exist).
    pub async fn replace(
        &self,
        guard: (&[u8], i64),
        key_value: (&[u8], &[u8]),
        delete: (&[u8], &[u8]),
    ) -> Result<(bool, i64), EtcdError> {
        let compare = vec![json!({
            "key": STANDARD.encode(guard.0), "target": "MOD", "result": "EQUAL",
            "mod_revision": guard.1.to_string(),
        })];
        let success = vec![
            put(key_value.0, key_value.1),
            json!({ "request_delete_range": {
                "key": STANDARD.encode(delete.0), "range_end": STANDARD.encode(delete.1) } }),
        ];
        self.txn(compare, success).await
    }

    /// Puts `key` bound to `lease` if it does not exist; whether it did.
    pub async fn create_leased(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let compare = vec![json!({ "key": STANDARD.encode(key), "target": "CREATE",
                                   "result": "EQUAL", "create_revision": "0" })];
        let mut put = put(key, value);
        put["request_put"]["lease"] = json!(lease.to_string());
        Ok(self.txn(compare, vec![put]).await?.0)
    }

    /// Puts `key`, bound to no lease.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EtcdError> {
        let body = put(key, value)["request_put"].take();
        self.call("put", "/v3/kv/put", body).await.map(drop)
    }

    /// Puts `key` bound to `lease` (it goes when the lease does).
    pub async fn put_leased(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let mut body = put(key, value)["request_put"].take();
        body["lease"] = json!(lease.to_string());
        self.call("put", "/v3/kv/put", body).await.map(drop)
    }

    /// A lease of `ttl`; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let body = json!({ "TTL": ttl.as_secs().max(1).to_string() });
        let answer = self.call("lease grant", "/v3/lease/grant", body).await?;
        number(&answer["ID"]).ok_or_else(|| EtcdError::Malformed("no ID".into(), "lease grant"))
    }

    /// Renews `lease`; the seconds it has left, 0 once it has expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let body = json!({ "ID": lease.to_string() });
        let (_, response) = self
            .send("lease keepalive", "/v3/lease/keepalive", &body)
            .await?;
        let mut answers = Watch {
            body: response.into_body(),
            carry: Vec::new(),
        };
        // The gateway streams one answer per request it relays: the first is ours.
        let first = tokio::time::timeout(self.timeout, answers.next())
            .await
            .map_err(|_| {
                EtcdError::Unreachable(format!("no keepalive answer within {:?}", self.timeout))
            })??;
        let result = first.as_ref().map(|a| &a["result"]);
        Ok(result.and_then(|r| number(&r["TTL"])).unwrap_or(0))
    }

    /// Ends `lease` now (its keys go with it).
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let body = json!({ "ID": lease.to_string() });
        self.call("lease revoke", "/v3/lease/revoke", body)
            .await
            .map(drop)
    }

    async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
    ) -> Result<(bool, i64), EtcdError> {
        let body = json!({ "compare": compare, "success": success });
        let answer = self.call("txn", "/v3/kv/txn", body).await?;
        Ok((
            answer["succeeded"] == json!(true),
            header_revision(&answer)?,
        ))
    }

    /// Watches `[key, range_end)` from `start_revision` on.
    pub async fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": STANDARD.encode(key), "range_end": STANDARD.encode(range_end),
            "start_revision": start_revision.to_string() } });
        let (_, response) = self.send("watch", "/v3/watch", &body).await?;
        Ok(Watch {
            body: response.into_body(),
            carry: Vec::new(),
        })
    }

    async fn call(&self, what: &'static str, path: &str, body: Value) -> Result<Value, EtcdError> {
        let (endpoint, response) = self.send(what, path, &body).await?;
        let status = response.status();
        let read = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect();
        let bytes = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| {
                EtcdError::Unreachable(format!(
                    "{endpoint} did not finish answering {what} within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {e}")))?
            .to_bytes();
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| EtcdError::Malformed(e.to_string(), what))?;
        if !status.is_success() {
            if status == StatusCode::UNAUTHORIZED {
                *lock(&self.token) = None;
            }
            let message = answer["message"].as_str().or(answer["error"].as_str());
            return Err(EtcdError::Refused {
                call: what,
                status,
                message: message.unwrap_or_default().to_string(),
            });
        }
        Ok(answer)
    }

    /// Sends to the first endpoint that answers, starting with the one that
    /// answered last. All of it within the dial timeout: each endpoint gets a
    /// share of it, so one hung member cannot use it all up, and a write etcd
    /// cannot take is refused in time whatever the number of members.
    async fn send(
        &self,
        what: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<(String, http::Response<Incoming>), EtcdError> {
        let token = self.token(what).await?;
        let deadline = Instant::now() + self.timeout;
        let count = self.endpoints.len();
        let share = (self.timeout / u32::try_from(count).unwrap_or(u32::MAX)).max(MIN_SHARE);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for index in (0..count).map(|k| (first + k) % count) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let endpoint = &self.endpoints[index];
            let request = request(endpoint, path, body, token.as_deref());
            let wait = share.min(left);
            match tokio::time::timeout(wait, self.http.request(request)).await {
                Ok(Ok(response)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((endpoint.to_string(), response));
                }
                Ok(Err(error)) => failures.push(format!("{endpoint}: {error}")),
                Err(_) => failures.push(format!("{endpoint}: no answer within {wait:?}")),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// The auth token, fetched once (and again after a 401).
    async fn token(&self, what: &'static str) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.auth else {
            return Ok(None);
        };
        if let Some(token) = lock(&self.token).clone() {
            return Ok(Some(token));
        }
        let body = json!({ "name": user, "password": password.expose() });
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            let request = request(endpoint, "/v3/auth/authenticate", &body, None);
            let answer = match tokio::time::timeout(self.timeout, self.http.request(request)).await
            {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    failures.push(format!("{endpoint}: {error}"));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{endpoint}: no answer"));
                    continue;
                }
            };
            let status = answer.status();
            let bytes = Limited::new(answer.into_body(), 64 << 10)
                .collect()
                .await
                .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {e}")))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| EtcdError::Malformed(e.to_string(), "auth/authenticate"))?;
            let Some(token) = value["token"].as_str().filter(|_| status.is_success()) else {
                return Err(EtcdError::Refused {
                    call: what,
                    status,
                    message: format!("authenticating as {user}: {}", value["message"]),
                });
            };
            *lock(&self.token) = Some(token.to_string());
            return Ok(Some(token.to_string()));
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }
}

impl Watch {
    /// The next answer of the watch, or `None` once etcd closed it.
    pub async fn next(&mut self) -> Result<Option<Value>, EtcdError> {
        loop {
            if let Some(answer) = self.take_line()? {
                return Ok(Some(answer));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(error)) => return Err(EtcdError::Unreachable(format!("watch: {error}"))),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.carry.extend_from_slice(data);
                    }
                }
            }
        }
    }

    /// One newline-ended JSON answer out of what has arrived, if whole.
    fn take_line(&mut self) -> Result<Option<Value>, EtcdError> {
        let Some(end) = self.carry.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line: Vec<u8> = self.carry.drain(..=end).collect();
        let text = line.trim_ascii();
        if text.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(text)
            .map(Some)
            .map_err(|e| EtcdError::Malformed(e.to_string(), "watch"))
    }
}

fn request(
    endpoint: &EndpointUrl,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", endpoint.authority()))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, token);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| unreachable!("a validated authority and a fixed path"))
}

fn put(key: &[u8], value: &[u8]) -> Value {
    json!({ "request_put": { "key": STANDARD.encode(key), "value": STANDARD.encode(value) } })
}

fn kv(value: &Value) -> Result<Kv, EtcdError> {
    let bytes = |field: &str| -> Result<Vec<u8>, EtcdError> {
        let text = value[field].as_str().unwrap_or_default();
        STANDARD
            .decode(text)
            .map_err(|e| EtcdError::Malformed(format!("{field}: {e}"), "range"))
    };
    Ok(Kv {
        key: bytes("key")?,
        value: bytes("value")?,
        mod_revision: number(&value["mod_revision"]).unwrap_or(0),
    })
}

/// An int64 as proto3's JSON mapping writes it (a string), or a plain number.
pub fn number(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or(value.as_i64())
}

fn header_revision(answer: &Value) -> Result<i64, EtcdError> {
    number(&answer["header"]["revision"])
        .ok_or_else(|| EtcdError::Malformed("no header.revision".into(), "txn"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
