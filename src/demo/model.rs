//! A small deterministic model server for the demo: a logistic "fraud score" over
//! a feature vector, whose weights differ slightly from version to version (as a
//! retrained model's would), speaking KServe V1, Open Inference Protocol V2 and
//! MLflow's `/invocations`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::proxy::{Handler, json_error};

const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One version of the demo model.
#[derive(Debug, Clone)]
pub struct DemoModel {
    pub name: String,
    pub version: String,
    /// Added to every weight: how far this version drifted from the first.
    pub drift: f64,
    /// While set, predictions fail with 500 (the `bad-canary` scenario).
    pub failing: Arc<AtomicBool>,
}

impl DemoModel {
    /// The fraud score of one feature vector.
    pub fn score(&self, features: &[f64]) -> f64 {
        let z: f64 = features
            .iter()
            .enumerate()
            .map(|(i, x)| x * (0.3 + 0.1 * i as f64 + self.drift))
            .sum::<f64>()
            - 1.0;
        let score = 1.0 / (1.0 + (-z).exp());
        (score * 1e6).round() / 1e6
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Bytes> {
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        if method == Method::POST && self.failing.load(Ordering::Relaxed) {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model crashed (demo failure mode)",
                "internal",
            );
        }
        let v1 = format!("/v1/models/{}", self.name);
        let v2 = format!("/v2/models/{}", self.name);
        let v2_pinned = format!("{v2}/versions/{}", self.version);
        match (method, path.as_str()) {
            (Method::GET, "/v2/health/ready" | "/v2/health/live") => {
                json_ok(json!({ "ready": true }))
            }
            (Method::GET, p) if p == v1 => json_ok(json!({ "name": self.name, "ready": true })),
            (Method::GET, p) if p == format!("{v2}/ready") || p == format!("{v2_pinned}/ready") => {
                json_ok(json!({ "name": self.name, "ready": true }))
            }
            (Method::GET, p) if p == v2 || p == v2_pinned => json_ok(self.metadata()),
            (Method::POST, p) if p == format!("{v1}:predict") || p == "/invocations" => {
                self.with_json(request, |model, body| model.predict_v1(body))
                    .await
            }
            (Method::POST, p)
                if p == format!("{v2}/infer") || p == format!("{v2_pinned}/infer") =>
            {
                self.with_json(request, |model, body| model.infer_v2(body))
                    .await
            }
            (_, p) => json_error(
                StatusCode::NOT_FOUND,
                &format!("no such route: {p}"),
                "not_found",
            ),
        }
    }

    async fn with_json(
        &self,
        request: Request<Incoming>,
        infer: impl FnOnce(&DemoModel, &Value) -> Result<Value, String>,
    ) -> Response<Bytes> {
        let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return bad_request(&format!("cannot read body: {e}")),
        };
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(e) => return bad_request(&format!("body is not JSON: {e}")),
        };
        match infer(self, &parsed) {
            Ok(answer) => json_ok(answer),
            Err(message) => bad_request(&message),
        }
    }

    /// KServe V1: `{"instances": [[f, ...], ...]}` -> `{"predictions": [score, ...]}`.
    fn predict_v1(&self, body: &Value) -> Result<Value, String> {
        let instances = body
            .get("instances")
            .or_else(|| body.get("inputs"))
            .and_then(Value::as_array)
            .ok_or("expected {\"instances\": [[number, ...], ...]}")?;
        let predictions = instances
            .iter()
            .map(|row| features(row).map(|f| self.score(&f)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "predictions": predictions, "model_version": self.version }))
    }

    /// Open Inference Protocol: the first input tensor, rows of `shape[1]` features.
    fn infer_v2(&self, body: &Value) -> Result<Value, String> {
        let input = body
            .pointer("/inputs/0")
            .ok_or("expected {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")?;
        let data = features(input.get("data").ok_or("input has no \"data\"")?)?;
        let width = input
            .pointer("/shape/1")
            .and_then(Value::as_u64)
            .map_or(data.len(), |w| w as usize)
            .max(1);
        let scores: Vec<f64> = data.chunks(width).map(|row| self.score(row)).collect();
        Ok(json!({
            "model_name": self.name,
            "model_version": self.version,
            "id": body.get("id").cloned().unwrap_or(Value::Null),
            "outputs": [{ "name": "fraud_score", "shape": [scores.len()], "datatype": "FP64", "data": scores }],
        }))
    }

    fn metadata(&self) -> Value {
        json!({
            "name": self.name,
            "versions": [self.version],
            "platform": "stagegate-demo",
            "inputs": [{ "name": "features", "datatype": "FP64", "shape": [-1, -1] }],
            "outputs": [{ "name": "fraud_score", "datatype": "FP64", "shape": [-1] }],
        })
    }
}

impl Handler for DemoModel {
    type Body = Full<Bytes>;

    async fn handle(
        &self,
        request: Request<Incoming>,
        _peer: &HeaderValue,
    ) -> Response<Full<Bytes>> {
        self.answer(request).await.map(Full::new)
    }

    fn local_response(&self, response: Response<Bytes>) -> Response<Full<Bytes>> {
        response.map(Full::new)
    }
}

/// A flat list of numbers from a JSON array (nested arrays are flattened).
fn features(value: &Value) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Number(n) => out.push(n.as_f64().unwrap_or(0.0)),
            Value::Array(items) => stack.extend(items.iter().rev()),
            other => return Err(format!("expected numbers, found {other}")),
        }
    }
    Ok(out)
}

fn json_ok(value: Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(value.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: &str) -> Response<Bytes> {
    json_error(StatusCode::BAD_REQUEST, message, "bad_request")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(drift: f64) -> DemoModel {
        DemoModel {
            name: "fraud".into(),
            version: "2".into(),
            drift,
            failing: Arc::default(),
        }
    }

    #[test]
    fn versions_differ_slightly() {
        let (a, b) = (
            model(0.0).score(&[0.2, 1.5, 3.0]),
            model(0.02).score(&[0.2, 1.5, 3.0]),
        );
        assert!(a != b && (a - b).abs() < 0.05, "{a} vs {b}");
    }

    #[test]
    fn v1_and_v2_agree() {
        let m = model(0.0);
        let v1 = m
            .predict_v1(&json!({ "instances": [[0.2, 1.5, 3.0], [1, 1, 1]] }))
            .unwrap();
        let v2 = m
            .infer_v2(&json!({ "inputs": [{ "name": "features", "shape": [2, 3], "datatype": "FP64", "data": [0.2, 1.5, 3.0, 1, 1, 1] }] }))
            .unwrap();
        assert_eq!(v1["predictions"], v2["outputs"][0]["data"]);
        assert_eq!(v2["outputs"][0]["shape"], json!([2]));
    }

    #[test]
    fn rejects_non_numeric_input() {
        assert!(
            model(0.0)
                .predict_v1(&json!({ "instances": [["x"]] }))
                .is_err()
        );
        assert!(model(0.0).infer_v2(&json!({})).is_err());
    }
}
