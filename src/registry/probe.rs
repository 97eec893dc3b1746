//! Health probes of a version's endpoints, before a rollback puts it back into
//! production.
//!
//! Each endpoint gets `GET {health_path}`: 2xx is healthy; 404, 405 or 501 mean the
//! server has no such health route, and since it answered at all it counts as up
//! (the TCP fallback). Any other status, a refused connection or a timeout is
//! unhealthy. An empty `health_path` probes with a TCP connect only.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::EndpointUrl;

/// The outcome for each endpoint, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub results: Vec<(String, Result<(), String>)>,
}

impl ProbeReport {
    pub fn any_healthy(&self) -> bool {
        self.results.iter().any(|(_, result)| result.is_ok())
    }

    /// "endpoint: why; endpoint: why" for the unhealthy ones.
    pub fn failures(&self) -> String {
        let failures: Vec<String> = self
            .results
            .iter()
            .filter_map(|(endpoint, result)| {
                result
                    .as_ref()
                    .err()
                    .map(|why| format!("{endpoint}: {why}"))
            })
            .collect();
        failures.join("; ")
    }
}

/// Probes every endpoint concurrently, each within `timeout`.
pub async fn probe(endpoints: &[EndpointUrl], health_path: &str, timeout: Duration) -> ProbeReport {
    let mut probes = JoinSet::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let (endpoint, health_path) = (endpoint.clone(), health_path.to_string());
        probes.spawn(async move {
            let result = tokio::time::timeout(timeout, probe_one(&endpoint, &health_path))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            (index, endpoint.to_string(), result)
        });
    }
    let mut results = vec![(String::new(), Err("not probed".to_string())); endpoints.len()];
    while let Some(done) = probes.join_next().await {
        if let Ok((index, endpoint, result)) = done {
            results[index] = (endpoint, result);
        }
    }
    ProbeReport { results }
}

async fn probe_one(endpoint: &EndpointUrl, health_path: &str) -> Result<(), String> {
    if health_path.is_empty() {
        return TcpStream::connect(endpoint.authority().as_str())
            .await
            .map(drop)
            .map_err(|e| format!("TCP connect failed: {e}"));
    }
    let uri: Uri = format!("{endpoint}{health_path}")
        .parse()
        .map_err(|e| format!("bad health URL: {e}"))?;
    let request = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad health request: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.request(request).await.map_err(|e| format!("{e}"))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
            Ok(())
        }
        status => Err(format!("{health_path} answered {status}")),
    }
}
