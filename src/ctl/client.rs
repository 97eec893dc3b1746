//! The admin API over HTTP: one JSON request, one JSON answer.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::CtlError;
use crate::telemetry::error_chain;

/// Long enough for a rollback's health probes.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct AdminClient {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// `token` may be `name:token` (as the server's token file has it) or bare.
    pub fn new(base: &str, token: Option<&str>) -> AdminClient {
        let token = token.map(str::trim).filter(|t| !t.is_empty()).map(|t| {
            t.split_once(':')
                .map_or(t, |(_, secret)| secret)
                .to_string()
        });
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| CtlError::Usage(format!("bad admin URL {url:?}: {e}")))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| CtlError::Usage(e.to_string()))?;
        let unreachable = |e: String| CtlError::Unreachable {
            url: self.base.clone(),
            message: e,
        };
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if status.is_success() {
            Ok(value)
        } else {
            Err(CtlError::Refused {
                status,
                body: value,
            })
        }
    }
}

impl CtlError {
    /// The server's `{"error", "code", "errors"}` as lines for a terminal.
    pub fn describe(&self) -> String {
        let CtlError::Refused { status, body } = self else {
            return self.to_string();
        };
        let message = body["error"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_string);
        let code = body["code"].as_str().unwrap_or("?");
        let mut text = format!("{message} ({} {code})", status.as_u16());
        for field in body["errors"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  {}: {}",
                field["path"].as_str().unwrap_or("?"),
                field["message"].as_str().unwrap_or("?")
            ));
        }
        if *status == StatusCode::UNAUTHORIZED {
            text.push_str(&format!(
                "\nset {} to an admin token",
                crate::admin::auth::TOKEN_ENV
            ));
        }
        text
    }
}
