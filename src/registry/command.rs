//! [`Command`]: a change someone (a person, the rollout controller, the MLflow
//! sync) asks the registry writer for; [`super::rules::plan`] turns it into a
//! record or refuses it.

use super::record::Observation;
use super::rollout_rules::Decision;
use super::{GateReading, Plan, Stage};

/// A change someone asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Register {
        model: String,
        version: String,
        endpoints: Vec<String>,
        /// Where the version answers gRPC, if it does.
        grpc_endpoints: Vec<String>,
        /// The name its server serves it under (OpenAI's `model`), if not the
        /// model's own.
        upstream_model: Option<String>,
        reason: String,
    },
    Transition {
        model: String,
        version: String,
        to: Stage,
        reason: String,
    },
    Rollback {
        model: String,
        to_version: Option<String>,
        reason: String,
        force: bool,
    },
    /// Changes to a model's shadow and compare settings: the given fields over
    /// the current ones (merged here, by the single writer, so concurrent
    /// partial updates cannot lose each other).
    SetShadow {
        model: String,
        patch: serde_json::Value,
        reason: String,
    },
    /// A hand-set canary weight (0 ends the canary).
    SetCanary {
        model: String,
        version: String,
        weight: f64,
        reason: String,
    },
    StartRollout {
        model: String,
        candidate: String,
        plan: Plan,
        reason: String,
    },
    /// A decision about the running rollout; `id` (when known) names it, and
    /// `evidence` holds the gate readings it rests on (none for a person's).
    Rollout {
        model: String,
        id: Option<u64>,
        decision: Decision,
        evidence: Vec<GateReading>,
        reason: String,
    },
    /// A change seen in an external registry, journaled so that history says who
    /// changed what and a restart compares the registry with what was last seen.
    Observe {
        model: String,
        observation: Observation,
        reason: String,
    },
}

impl Command {
    pub fn model(&self) -> &str {
        match self {
            Command::Register { model, .. }
            | Command::Transition { model, .. }
            | Command::Rollback { model, .. }
            | Command::SetShadow { model, .. }
            | Command::SetCanary { model, .. }
            | Command::StartRollout { model, .. }
            | Command::Rollout { model, .. }
            | Command::Observe { model, .. } => model,
        }
    }
}
