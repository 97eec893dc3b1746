//! JSON views of the served catalog for the admin API.

use serde_json::{Value, json};

use crate::registry::Served;
use crate::registry::{ModelSpec, Stage};

/// `GET /api/v1/models`.
pub fn models(served: &Served) -> Value {
    let catalog = served.catalog();
    let models: Vec<Value> = catalog
        .models
        .iter()
        .map(|model| {
            let versions: Vec<Value> = model
                .versions
                .iter()
                .map(|v| json!({ "version": v.version, "stage": v.stage }))
                .collect();
            let canary = model
                .canary
                .as_ref()
                .map(|c| json!({ "version": c.version, "weight": c.weight }));
            let rollout = model.rollout.as_ref().map(|r| {
                json!({ "id": r.id, "candidate": r.candidate, "phase": r.phase, "step": r.step,
                        "steps": r.plan.steps.len() })
            });
            json!({
                "name": model.name,
                "production": model.production().map(|v| &v.version),
                "versions": versions,
                "canary": canary,
                "rollout": rollout,
            })
        })
        .collect();
    json!({
        "routing_revision": served.revision(),
        "registry_revision": catalog.ledger.revision,
        "models": models,
    })
}

/// `GET /api/v1/models/{m}`, or `None` for an unknown model.
pub fn model(served: &Served, name: &str) -> Option<Value> {
    let catalog = served.catalog();
    let model = catalog.model(name)?;
    let ledger = catalog.ledger.model(name);
    let versions: Vec<Value> = model
        .versions
        .iter()
        .map(|v| {
            let owner = match ledger.is_some_and(|l| l.versions.contains_key(&v.version)) {
                true => "journal",
                false => "config",
            };
            let endpoints: Vec<String> = v.endpoints.iter().map(ToString::to_string).collect();
            let grpc: Vec<String> = v.grpc_endpoints.iter().map(ToString::to_string).collect();
            json!({ "version": v.version, "stage": v.stage, "endpoints": endpoints,
                    "grpc_endpoints": grpc, "upstream_model": v.upstream_model,
                    "stage_owner": owner })
        })
        .collect();
    let current = model.production().map(|v| v.version.as_str());
    Some(json!({
        "name": model.name,
        "health_path": model.health_path,
        "routing_revision": served.revision(),
        "registry_revision": catalog.ledger.revision,
        "production": current,
        "rollback_target": ledger.and_then(|l| l.previous_production(current)).filter(|v| is_archived(model, v)),
        "versions": versions,
    }))
}

fn is_archived(model: &ModelSpec, version: &str) -> bool {
    model
        .versions
        .iter()
        .any(|v| v.version == version && v.stage == Stage::Archived)
}
