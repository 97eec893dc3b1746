//! Random admin changes for the crash tests, and the check that every
//! acknowledged one is still there: shared by the single-process crash tests
//! (`tests/crash.rs`) and the replica crash tests (`tests/etcd.rs`).

use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{Value, json};

/// The versions of the crash tests' model `fraud`; "1" starts in production.
pub const VERSIONS: [&str; 5] = ["1", "2", "3", "4", "5"];

/// One admin call; `None` when the process did not answer (it died).
pub async fn call(
    admin: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<super::Answer> {
    let url = format!("http://{admin}{path}");
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let response = super::client().request(request).await.ok()?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .ok()?
        .to_bytes();
    Some(super::Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// One random change that keeps exactly one production version: promotions,
/// rollbacks, and moves of non-production versions between staging and archived.
pub fn next_change(production: &str) -> (String, Value) {
    let others: Vec<&str> = VERSIONS
        .iter()
        .copied()
        .filter(|v| *v != production)
        .collect();
    let version = others[fastrand::usize(..others.len())];
    let transition = |stage: &str| {
        (
            format!("/api/v1/models/fraud/versions/{version}/transition"),
            json!({ "stage": stage }),
        )
    };
    let post = |path: &str, body: Value| (format!("/api/v1/models/fraud/{path}"), body);
    match fastrand::u8(..9) {
        0 => transition("production"),
        1 => post("rollback", json!({ "force": true, "reason": "crash test" })),
        2 => transition("archived"),
        3 => transition("staging"),
        4 => post(
            "canary",
            json!({ "version": version, "weight": fastrand::u8(0..=100) }),
        ),
        5 => post(
            "rollout",
            json!({ "candidate": version, "steps": [10, 50], "step_interval_s": 3600 }),
        ),
        6 => post("rollout/abort", json!({})),
        7 => post("rollout/promote", json!({ "reason": "crash test" })),
        _ => post("shadow", json!({ "percent": fastrand::u8(0..=100) })),
    }
}

/// Sends changes one after another until the process dies; records what was acknowledged.
pub async fn drive(admin: String, mut production: String, acked: Arc<Mutex<Vec<Value>>>) {
    loop {
        let (path, body) = next_change(&production);
        let Some(answer) = call(&admin, Method::POST, &path, Some(body)).await else {
            return;
        };
        if answer.status.is_success() {
            let record = answer.json()["record"].clone();
            if record["to"] == "production" {
                production = record["version"].as_str().unwrap().to_string();
            }
            acked.lock().unwrap().push(record);
        }
    }
}

/// Every acknowledged record is in the history, revisions have no gaps, and the
/// model has exactly one production version. Returns the production version.
pub async fn verify(admin: &str, acked: &[Value]) -> String {
    let model = call(admin, Method::GET, "/api/v1/models/fraud", None)
        .await
        .unwrap()
        .json();
    let productions: Vec<&Value> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["stage"] == "production")
        .collect();
    assert_eq!(productions.len(), 1, "{model}");
    let history = call(
        admin,
        Method::GET,
        "/api/v1/models/fraud/history?limit=1000",
        None,
    )
    .await
    .unwrap()
    .json();
    let entries = history["entries"].as_array().unwrap();
    let newest = entries
        .first()
        .map_or(0, |e| e["revision"].as_u64().unwrap());
    assert_eq!(model["registry_revision"].as_u64().unwrap(), newest);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry["revision"].as_u64().unwrap(),
            newest - i as u64,
            "revisions have a gap"
        );
    }
    let oldest_kept = newest.saturating_sub(entries.len() as u64);
    for record in acked
        .iter()
        .filter(|r| r["revision"].as_u64().unwrap() > oldest_kept)
    {
        let revision = record["revision"].as_u64().unwrap();
        let entry = &entries[(newest - revision) as usize];
        assert_eq!(
            entry, record,
            "acknowledged change {revision} was lost or altered"
        );
    }
    // A canary only ever points at a staging version.
    let rollout = call(admin, Method::GET, "/api/v1/models/fraud/rollout", None)
        .await
        .unwrap()
        .json();
    if let Some(canary) = rollout["canary"]["version"].as_str() {
        let stage = model["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == canary)
            .map(|v| v["stage"].clone());
        assert_eq!(stage, Some(json!("staging")), "canary {canary} in {model}");
    }
    productions[0]["version"].as_str().unwrap().to_string()
}
