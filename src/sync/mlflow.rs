//! The MLflow REST API calls the sync makes: reading a registered model's aliases
//! and versions, and writing aliases, tags and stages back.
//!
//! Every call has the source's timeout; an answer that is not 2xx becomes an
//! [`MlflowError::Status`] carrying MLflow's own `error_code` and message.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::registry::{RegistryAuth, RegistrySource};
use crate::telemetry::error_chain;

const API: &str = "/api/2.0/mlflow";
/// Versions asked for per search page.
pub const PAGE_SIZE: usize = 200;
/// Pages read before a search is taken to be looping.
const MAX_PAGES: usize = 1_000;
/// The largest answer read: a page of versions is far smaller.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("MLflow at {url} did not answer {what} within {timeout:?}")]
    Timeout {
        url: String,
        what: String,
        timeout: Duration,
    },
    #[error("MLflow answered {what} with {status} {code}: {message}")]
    Status {
        what: String,
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("MLflow's answer to {what} is not what its API documents: {message}")]
    Malformed { what: String, message: String },
}

/// A registered model as `registered-models/get` describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegisteredModel {
    pub name: String,
    pub updated_ms: Option<i64>,
    /// Alias -> version.
    pub aliases: BTreeMap<String, String>,
}

/// One model version as `model-versions/search` describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelVersion {
    pub version: String,
    /// `READY`, `PENDING_REGISTRATION` or `FAILED_REGISTRATION`.
    pub status: String,
    /// The legacy stage: `None`, `Staging`, `Production` or `Archived`.
    pub stage: String,
    pub tags: BTreeMap<String, String>,
    pub updated_ms: Option<i64>,
}

/// The MLflow REST client.
#[derive(Clone)]
pub struct MlflowClient {
    base: String,
    timeout: Duration,
    authorization: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl MlflowClient {
    pub fn new(source: &RegistrySource) -> MlflowClient {
        let authorization = match &source.auth {
            RegistryAuth::None => None,
            RegistryAuth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
            RegistryAuth::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(format!("Basic {encoded}"))
            }
        };
        MlflowClient {
            base: source.url.clone(),
            timeout: source.request_timeout,
            authorization,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn registered_model(&self, name: &str) -> Result<RegisteredModel, MlflowError> {
        let what = format!("registered-models/get for {name:?}");
        let path = format!("/registered-models/get?name={}", encode(name));
        let answer = self.call(Method::GET, &path, None, &what).await?;
        let model: RawRegisteredModel = decode(&answer["registered_model"], &what)?;
        Ok(RegisteredModel {
            name: model.name,
            updated_ms: model.last_updated_timestamp.map(|t| t.0),
            aliases: model
                .aliases
                .into_iter()
                .map(|a| (a.alias, a.version))
                .collect(),
        })
    }

    /// Every version of `name`, all pages; any page failing fails the whole read.
    pub async fn versions(&self, name: &str) -> Result<Vec<ModelVersion>, MlflowError> {
        let filter = encode(&format!("name='{}'", name.replace('\'', "\\'")));
        let mut versions = Vec::new();
        let mut token: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let what = format!("model-versions/search for {name:?} (page {page})");
            let mut path =
                format!("/model-versions/search?filter={filter}&max_results={PAGE_SIZE}");
            if let Some(token) = &token {
                path.push_str(&format!("&page_token={}", encode(token)));
            }
            let answer = self.call(Method::GET, &path, None, &what).await?;
            let page: RawSearchPage = decode(&answer, &what)?;
            versions.extend(page.model_versions.into_iter().map(ModelVersion::from));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(versions),
            }
        }
        Err(MlflowError::Malformed {
            what: format!("model-versions/search for {name:?}"),
            message: format!("still more pages after {MAX_PAGES}"),
        })
    }

    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: &str,
    ) -> Result<(), MlflowError> {
        let what = format!("setting alias {alias:?} of {name:?} to version {version}");
        let body = json!({"name": name, "alias": alias, "version": version});
        self.call(Method::POST, "/registered-models/alias", Some(body), &what)
            .await
            .map(drop)
    }

    pub async fn set_tag(
        &self,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> Result<(), MlflowError> {
        let what = format!("setting tag {key:?} on version {version} of {name:?}");
        let body = json!({"name": name, "version": version, "key": key, "value": value});
        self.call(Method::POST, "/model-versions/set-tag", Some(body), &what)
            .await
            .map(drop)
    }

    /// Moves `version` to `stage`, archiving the versions that were in it.
    pub async fn transition_stage(
        &self,
        name: &str,
        version: &str,
        stage: &str,
    ) -> Result<(), MlflowError> {
        let what = format!("moving version {version} of {name:?} to stage {stage}");
        let body = json!({
            "name": name,
            "version": version,
            "stage": stage,
            "archive_existing_versions": true,
        });
        self.call(
            Method::POST,
            "/model-versions/transition-stage",
            Some(body),
            &what,
        )
        .await
        .map(drop)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, MlflowError> {
        let url = format!("{}{API}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| self.unreachable(format!("cannot build a request for {url}: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    self.unreachable(format!(
                        "answer unreadable or over {MAX_ANSWER_BYTES} bytes: {e}"
                    ))
                })?
                .to_bytes();
            Ok::<_, MlflowError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| MlflowError::Timeout {
                url: self.base.clone(),
                what: what.to_string(),
                timeout: self.timeout,
            })??;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let text = || String::from_utf8_lossy(&body).chars().take(300).collect();
        Err(MlflowError::Status {
            what: what.to_string(),
            status,
            code: value["error_code"].as_str().unwrap_or("").to_string(),
            message: value["message"].as_str().map_or_else(text, str::to_string),
        })
    }

    fn unreachable(&self, message: String) -> MlflowError {
        MlflowError::Unreachable {
            url: self.base.clone(),
            message,
        }
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn decode<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T, MlflowError> {
    T::deserialize(value).map_err(|e| MlflowError::Malformed {
        what: what.to_string(),
        message: e.to_string(),
    })
}

#[derive(Deserialize)]
struct RawRegisteredModel {
    name: String,
    #[serde(default)]
    last_updated_timestamp: Option<Millis>,
    #[serde(default)]
    aliases: Vec<RawAlias>,
}

#[derive(Deserialize)]
struct RawAlias {
    alias: String,
    version: String,
}

#[derive(Deserialize)]
struct RawSearchPage {
    #[serde(default)]
    model_versions: Vec<RawModelVersion>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct RawModelVersion {
    version: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    current_stage: String,
    #[serde(default)]
    tags: Vec<RawTag>,
    #[serde(default)]
    last_updated_timestamp: Option<Millis>,
}

#[derive(Deserialize)]
struct RawTag {
    key: String,
    #[serde(default)]
    value: String,
}

/// MLflow writes int64 fields as numbers, but protobuf's JSON mapping allows
/// strings: take either.
#[derive(Deserialize)]
#[serde(try_from = "Value")]
struct Millis(i64);

impl TryFrom<Value> for Millis {
    type Error = String;

    fn try_from(value: Value) -> Result<Millis, String> {
        match &value {
            Value::Number(n) => n.as_i64().map(Millis),
            Value::String(s) => s.parse().ok().map(Millis),
            _ => None,
        }
        .ok_or_else(|| format!("{value} is not a timestamp in milliseconds"))
    }
}

impl From<RawModelVersion> for ModelVersion {
    fn from(raw: RawModelVersion) -> ModelVersion {
        ModelVersion {
            version: raw.version,
            status: raw.status,
            stage: raw.current_stage,
            tags: raw.tags.into_iter().map(|t| (t.key, t.value)).collect(),
            updated_ms: raw.last_updated_timestamp.map(|t| t.0),
        }
    }
}
