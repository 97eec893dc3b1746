//! `stagegate ctl rollout ...`: starting, following and steering a rollout.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::CtlError;
use super::client::AdminClient;

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Start a rollout of a staging version; unset options take the model's defaults.
    Start(Box<RolloutStart>),
    /// Phase, step, weight, gate readings and what the rollout waits for.
    Status { model: String },
    /// Hold the candidate at its current weight.
    Pause {
        model: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Resume {
        model: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop the rollout; the candidate loses its share.
    Abort {
        model: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Skip the remaining steps: the candidate becomes production now.
    Promote {
        model: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct RolloutStart {
    pub model: String,
    pub candidate: String,
    /// Canary weights, comma-separated, e.g. 5,25,50,100.
    #[arg(long, value_delimiter = ',')]
    pub steps: Option<Vec<f64>>,
    #[arg(long)]
    pub step_interval_s: Option<f64>,
    /// Requests each side needs in a step before it may pass.
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// Seconds a step may wait for evidence before the rollout is held
    /// (default: ten step intervals).
    #[arg(long)]
    pub max_step_duration_s: Option<f64>,
    /// Chance over the whole rollout of no wrong verdict, e.g. 0.99.
    #[arg(long)]
    pub confidence: Option<f64>,
    /// How far the candidate's error rate may exceed stable's (absolute, 0.01),
    /// or "off".
    #[arg(long, value_parser = gate_limit)]
    pub max_error_rate: Option<Value>,
    /// Candidate p99 over stable's at most this, or "off".
    #[arg(long, value_parser = gate_limit)]
    pub max_p99_ratio: Option<Value>,
    /// How much slower the candidate may be at --latency-quantile (0.2: 20%),
    /// or "off".
    #[arg(long, value_parser = gate_limit)]
    pub max_latency_increase: Option<Value>,
    /// The quantile --max-latency-increase is judged at (default 0.5).
    #[arg(long)]
    pub latency_quantile: Option<f64>,
    /// OpenAI-style streamed answers: candidate p99 time to first token over
    /// stable's at most this, or "off" (the default).
    #[arg(long, value_parser = gate_limit)]
    pub max_ttft_p99_ratio: Option<Value>,
    /// Likewise the p99 time per output token.
    #[arg(long, value_parser = gate_limit)]
    pub max_tpot_p99_ratio: Option<Value>,
    #[arg(long)]
    pub min_shadow_agreement: Option<f64>,
    #[arg(long)]
    pub min_shadow_compared: Option<u64>,
    /// rollback or pause.
    #[arg(long)]
    pub on_failure: Option<String>,
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// A gate's limit on the command line: a number, or "off".
fn gate_limit(text: &str) -> Result<Value, String> {
    if text == "off" {
        return Ok(Value::from("off"));
    }
    text.parse::<f64>()
        .map(Value::from)
        .map_err(|_| format!("{text:?} is not a number or \"off\""))
}

pub(super) async fn rollout(
    client: &AdminClient,
    action: &RolloutAction,
) -> Result<Value, CtlError> {
    let models = "/api/v1/models";
    let (model, name, reason) = match action {
        RolloutAction::Status { model } => {
            return client.get(&format!("{models}/{model}/rollout")).await;
        }
        RolloutAction::Start(start) => {
            let body = json!({
                "candidate": start.candidate,
                "steps": start.steps,
                "step_interval_s": start.step_interval_s,
                "min_requests": start.min_requests,
                "max_step_duration_s": start.max_step_duration_s,
                "confidence": start.confidence,
                "max_error_rate": start.max_error_rate,
                "max_p99_ratio": start.max_p99_ratio,
                "max_latency_increase": start.max_latency_increase,
                "latency_quantile": start.latency_quantile,
                "max_ttft_p99_ratio": start.max_ttft_p99_ratio,
                "max_tpot_p99_ratio": start.max_tpot_p99_ratio,
                "min_shadow_agreement": start.min_shadow_agreement,
                "min_shadow_compared": start.min_shadow_compared,
                "on_failure": start.on_failure,
                "reason": start.reason,
            });
            let body: serde_json::Map<String, Value> = body
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return client
                .post(
                    &format!("{models}/{}/rollout", start.model),
                    &Value::Object(body),
                )
                .await;
        }
        RolloutAction::Pause { model, reason } => (model, "pause", reason),
        RolloutAction::Resume { model, reason } => (model, "resume", reason),
        RolloutAction::Abort { model, reason } => (model, "abort", reason),
        RolloutAction::Promote { model, reason } => (model, "promote", reason),
    };
    client
        .post(
            &format!("{models}/{model}/rollout/{name}"),
            &json!({ "reason": reason }),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_limit_is_a_number_or_off() {
        assert_eq!(gate_limit("off"), Ok(Value::from("off")));
        assert_eq!(gate_limit("1.5"), Ok(Value::from(1.5)));
        assert_eq!(
            gate_limit("none"),
            Err("\"none\" is not a number or \"off\"".to_string())
        );
    }
}
