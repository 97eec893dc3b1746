//! [`ModelView`]: one registered model as MLflow shows it, read whole or not at
//! all, and the slots (aliases or stages) in it that name stagegate versions.

use std::collections::BTreeMap;

use super::mlflow::{MlflowClient, MlflowError, ModelVersion, RegisteredModel};
use crate::config::registry::{Follow, MlflowModel};
use crate::registry::{EndpointUrl, Stage};

/// What MLflow showed of one registered model in one read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelView {
    pub registered: RegisteredModel,
    /// By version id.
    pub versions: BTreeMap<String, ModelVersion>,
}

/// MLflow's name for the stage a production slot follows in stage mode.
pub const PRODUCTION_STAGE: &str = "Production";
const STAGING_STAGE: &str = "Staging";

/// A slot of the registry naming a version for a stagegate stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub role: Stage,
    pub version: String,
    /// When the registry last changed what the slot names, in milliseconds.
    pub updated_ms: Option<i64>,
}

impl ModelView {
    /// Reads the registered model and all its versions; one failed call fails it all,
    /// so nothing is ever decided from half a registry.
    pub async fn read(client: &MlflowClient, mapping: &MlflowModel) -> Result<Self, MlflowError> {
        let registered = client.registered_model(&mapping.registered_model).await?;
        let versions = client.versions(&mapping.registered_model).await?;
        Ok(ModelView {
            registered,
            versions: versions
                .into_iter()
                .map(|v| (v.version.clone(), v))
                .collect(),
        })
    }

    /// The slots that name a version, by slot name: the production alias and the
    /// staging aliases, or (in stage mode) `Production` and `Staging/<version>`.
    pub fn slots(&self, mapping: &MlflowModel) -> BTreeMap<String, Slot> {
        match &mapping.follow {
            Follow::Aliases {
                production,
                staging,
            } => {
                let roles = std::iter::once((production, Stage::Production))
                    .chain(staging.iter().map(|alias| (alias, Stage::Staging)));
                roles
                    .filter_map(|(alias, role)| {
                        let version = self.registered.aliases.get(alias)?;
                        let slot = Slot {
                            role,
                            version: version.clone(),
                            updated_ms: self.registered.updated_ms,
                        };
                        Some((alias.clone(), slot))
                    })
                    .collect()
            }
            Follow::Stages => self.stage_slots(),
        }
    }

    fn stage_slots(&self) -> BTreeMap<String, Slot> {
        let in_stage = |stage: &'static str| {
            self.versions
                .values()
                .filter(move |v| v.stage.eq_ignore_ascii_case(stage))
        };
        let slot = |v: &ModelVersion, role| Slot {
            role,
            version: v.version.clone(),
            updated_ms: v.updated_ms,
        };
        let mut slots: BTreeMap<String, Slot> = in_stage(STAGING_STAGE)
            .map(|v| {
                (
                    format!("{STAGING_STAGE}/{}", v.version),
                    slot(v, Stage::Staging),
                )
            })
            .collect();
        // Several versions may be in Production (archive_existing_versions off):
        // the one moved there last is the one meant.
        if let Some(newest) = in_stage(PRODUCTION_STAGE).max_by_key(|v| v.updated_ms) {
            slots.insert(
                PRODUCTION_STAGE.to_string(),
                slot(newest, Stage::Production),
            );
        }
        slots
    }

    /// The endpoints of `version` (its tag, or the template), or why it cannot be
    /// served.
    pub fn endpoints(&self, mapping: &MlflowModel, version: &str) -> Result<Vec<String>, String> {
        let name = &mapping.registered_model;
        let Some(found) = self.versions.get(version) else {
            return Err(format!("MLflow has no version {version} of {name:?}"));
        };
        if found.status != "READY" {
            return Err(format!(
                "MLflow says its status is {:?}, not READY",
                found.status
            ));
        }
        let tag = &mapping.endpoints_tag;
        let endpoints: Vec<String> = match found.tags.get(tag) {
            Some(value) => value
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
            None => mapping.templated_endpoints(version).ok_or_else(|| {
                format!("no endpoints: its tag {tag:?} is not set and the model has no endpoint_template")
            })?,
        };
        if endpoints.is_empty() {
            return Err(format!("no endpoints: its tag {tag:?} is empty"));
        }
        for endpoint in &endpoints {
            EndpointUrl::parse(endpoint).map_err(|e| format!("tag {tag:?}: {e}"))?;
        }
        Ok(endpoints)
    }

    /// The name the version's server serves it under, from its
    /// [`UPSTREAM_MODEL_TAG`] tag (checked when it is registered).
    pub fn upstream_model(&self, version: &str) -> Option<String> {
        let found = self.versions.get(version)?;
        found.tags.get(UPSTREAM_MODEL_TAG).cloned()
    }
}

/// The MLflow version tag naming the model a version's OpenAI-compatible
/// server serves it under (its `upstream_model`).
pub const UPSTREAM_MODEL_TAG: &str = "stagegate.upstream_model";
