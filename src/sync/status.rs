//! [`SyncStatus`]: what the sync last did, for `GET /api/v1/registry` and
//! `stagegate ctl registry`.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};

use super::reconcile::VersionState;
use crate::config::registry::{Follow, MlflowModel};

#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub kind: &'static str,
    pub url: String,
    pub write_back: bool,
    pub webhook: bool,
    /// `starting` (no sync finished yet), `ok` or `error`.
    pub state: &'static str,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    #[serde(skip)]
    pub last_success_at: Option<SystemTime>,
    /// Why the last sync failed; cleared by a sync that succeeds.
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    pub syncs: u64,
    pub write_backs: WriteBackStats,
    pub models: Vec<ModelSync>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteBackStats {
    pub succeeded: u64,
    pub failed: u64,
    /// The last write that failed, while writes still fail.
    pub last_error: Option<String>,
}

/// One followed model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSync {
    pub model: String,
    pub registered_model: String,
    /// `aliases` or `stages`.
    pub follows: &'static str,
    pub production_slot: String,
    /// The version the registry names for production.
    pub registry_production: Option<String>,
    /// The version stagegate serves in production.
    pub serving: Option<String>,
    /// What stagegate waits for before it follows the registry.
    pub waiting_for: Option<String>,
    /// Why the last read or change for this model failed.
    pub error: Option<String>,
    pub versions: Vec<VersionState>,
}

impl ModelSync {
    pub fn new(mapping: &MlflowModel) -> ModelSync {
        let follows = match mapping.follow {
            Follow::Aliases { .. } => "aliases",
            Follow::Stages => "stages",
        };
        let production_slot = super::reconcile::production_slot_name(mapping).to_string();
        ModelSync {
            model: mapping.model.clone(),
            registered_model: mapping.registered_model.clone(),
            follows,
            production_slot,
            registry_production: None,
            serving: None,
            waiting_for: None,
            error: None,
            versions: Vec::new(),
        }
    }
}

impl SyncStatus {
    /// The status as JSON, with the age of the last successful sync at `now`.
    pub fn to_json(&self, now: SystemTime) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        let age = self
            .last_success_at
            .and_then(|at| now.duration_since(at).ok())
            .map(|age| (age.as_secs_f64() * 10.0).round() / 10.0);
        value["last_success_age_s"] = json!(age);
        value
    }

    pub fn model(&self, name: &str) -> Option<&ModelSync> {
        self.models.iter().find(|m| m.model == name)
    }
}
