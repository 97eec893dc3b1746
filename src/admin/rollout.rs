//! The canary and rollout part of the admin API: bodies, plans merged onto the
//! model's defaults, and the status view.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::registry::{Decision, GateLimit, ModelSpec, OnFailure, Plan};

/// `POST /api/v1/models/{m}/canary`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    #[serde(deserialize_with = "crate::config::version_id")]
    pub version: String,
    pub weight: f64,
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/models/{m}/rollout`: the candidate, and any plan settings that
/// differ from the model's `[models.rollout]` defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    #[serde(deserialize_with = "crate::config::version_id")]
    pub candidate: String,
    pub steps: Option<Vec<f64>>,
    pub step_interval_s: Option<f64>,
    pub min_requests: Option<u64>,
    pub max_step_duration_s: Option<f64>,
    pub confidence: Option<f64>,
    pub max_error_rate: Option<GateLimit>,
    pub max_p99_ratio: Option<GateLimit>,
    pub max_latency_increase: Option<GateLimit>,
    pub latency_quantile: Option<f64>,
    pub max_ttft_p99_ratio: Option<GateLimit>,
    pub max_tpot_p99_ratio: Option<GateLimit>,
    pub min_shadow_agreement: Option<f64>,
    pub min_shadow_compared: Option<u64>,
    pub on_failure: Option<OnFailure>,
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/models/{m}/rollout/{action}`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    #[serde(default)]
    pub reason: String,
}

impl RolloutBody {
    pub fn plan(&self, defaults: &Plan) -> Plan {
        let mut plan = defaults.clone();
        if let Some(steps) = &self.steps {
            plan.steps.clone_from(steps);
        }
        plan.step_interval_s = self.step_interval_s.unwrap_or(plan.step_interval_s);
        plan.min_requests = self.min_requests.unwrap_or(plan.min_requests);
        plan.max_step_duration_s = self.max_step_duration_s.or(plan.max_step_duration_s);
        plan.confidence = self.confidence.unwrap_or(plan.confidence);
        let gates = &mut plan.gates;
        let set = |given: Option<GateLimit>, default| given.map_or(default, GateLimit::limit);
        gates.max_error_rate = set(self.max_error_rate, gates.max_error_rate);
        gates.max_p99_ratio = set(self.max_p99_ratio, gates.max_p99_ratio);
        gates.max_latency_increase = set(self.max_latency_increase, gates.max_latency_increase);
        gates.latency_quantile = self.latency_quantile.unwrap_or(gates.latency_quantile);
        gates.max_ttft_p99_ratio = set(self.max_ttft_p99_ratio, gates.max_ttft_p99_ratio);
        gates.max_tpot_p99_ratio = set(self.max_tpot_p99_ratio, gates.max_tpot_p99_ratio);
        gates.min_shadow_agreement = self.min_shadow_agreement.or(gates.min_shadow_agreement);
        gates.min_shadow_compared = self
            .min_shadow_compared
            .unwrap_or(gates.min_shadow_compared);
        plan.on_failure = self.on_failure.unwrap_or(plan.on_failure);
        plan
    }
}

/// The decision a `rollout/{action}` path names.
pub fn decision(action: &str) -> Option<Decision> {
    Some(match action {
        "pause" => Decision::Pause,
        "resume" => Decision::Resume,
        "abort" => Decision::Abort,
        "promote" => Decision::Promote,
        _ => return None,
    })
}

/// `GET /api/v1/models/{m}/rollout`: the rollout (running or the last one), its
/// weight, and what the controller last measured.
pub fn view(model: &ModelSpec, readings: Option<Value>) -> Value {
    let canary = model
        .canary
        .as_ref()
        .map(|c| json!({ "version": c.version, "weight": c.weight }));
    let Some(rollout) = &model.rollout else {
        return json!({ "model": model.name, "rollout": null, "canary": canary });
    };
    let running = !rollout.phase.is_final();
    json!({
        "model": model.name,
        "canary": canary,
        "rollout": rollout,
        "phase": rollout.phase,
        "step": rollout.step + 1,
        "steps": rollout.plan.steps.len(),
        "weight": rollout.weight(),
        "readings": if running { readings } else { None },
    })
}
