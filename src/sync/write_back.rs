//! Write-back: the writes that make MLflow say what stagegate serves. The
//! production slot follows the production version (never while a rollout runs,
//! nor while a registry change waits to be followed), and tags on each version say
//! its stage and its latest rollout. Each write is computed from what MLflow
//! shows, so it is idempotent, and one that fails is simply computed again.

use serde::Serialize;

use super::reconcile::{
    Inputs, describe_slot, production_slot, production_slot_name, production_target, waiting,
};
use super::view::PRODUCTION_STAGE;
use crate::config::registry::Follow;
use crate::registry::{Command, Observation, Stage};

/// Tag saying what a version does in stagegate.
pub const STAGE_TAG: &str = "stagegate.stage";
/// Tags on a rollout's candidate: its phase, and why it is in it.
pub const ROLLOUT_TAG: &str = "stagegate.rollout";
pub const ROLLOUT_REASON_TAG: &str = "stagegate.rollout_reason";
/// MLflow refuses longer tag values.
const MAX_TAG_VALUE: usize = 5_000;

/// One idempotent write to MLflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "write", rename_all = "snake_case")]
pub enum WriteBack {
    Alias {
        alias: String,
        version: String,
    },
    /// Legacy stages: move the version to `Production`, archiving the others.
    Stage {
        version: String,
        stage: String,
    },
    Tag {
        version: String,
        key: String,
        value: String,
    },
}

/// The writes that make MLflow say what stagegate serves (none when it does).
pub fn write_backs(inputs: &Inputs) -> Vec<WriteBack> {
    let mut writes: Vec<WriteBack> = production_write(inputs).into_iter().collect();
    writes.extend(tag_writes(inputs));
    writes
}

fn production_write(inputs: &Inputs) -> Option<WriteBack> {
    let model = inputs.model;
    if model.running_rollout().is_some() {
        return None;
    }
    let production = &model.production()?.version;
    // An empty slot was emptied by a person: that is theirs to fill again.
    let (_, slot, target) = production_target(inputs)?;
    if target == production || waiting(inputs, slot.revision, target) {
        return None;
    }
    Some(match &inputs.mapping.follow {
        Follow::Aliases {
            production: alias, ..
        } => WriteBack::Alias {
            alias: alias.clone(),
            version: production.clone(),
        },
        Follow::Stages => WriteBack::Stage {
            version: production.clone(),
            stage: PRODUCTION_STAGE.to_string(),
        },
    })
}

fn tag_writes(inputs: &Inputs) -> Vec<WriteBack> {
    let model = inputs.model;
    let mut wanted: Vec<(&str, &'static str, String)> = Vec::new();
    let canary = model.running_rollout().map(|r| r.candidate.as_str());
    for version in &model.versions {
        let stage = if Some(version.version.as_str()) == canary {
            "canary"
        } else {
            version.stage.as_str()
        };
        wanted.push((&version.version, STAGE_TAG, stage.to_string()));
    }
    if let Some(rollout) = &model.rollout {
        let reason: String = rollout.reason.chars().take(MAX_TAG_VALUE).collect();
        wanted.push((&rollout.candidate, ROLLOUT_TAG, rollout.phase.to_string()));
        wanted.push((&rollout.candidate, ROLLOUT_REASON_TAG, reason));
    }
    wanted
        .into_iter()
        .filter(|(version, key, value)| {
            inputs
                .view
                .versions
                .get(*version)
                .is_some_and(|v| v.tags.get(*key) != Some(value))
        })
        .map(|(version, key, value)| WriteBack::Tag {
            version: version.to_string(),
            key: key.to_string(),
            value,
        })
        .collect()
}

/// The journal entry for a write-back of the production slot that MLflow
/// accepted: what the slot names now, so that the next read, which shows it, is
/// not taken for a person's change.
pub fn written(inputs: &Inputs, write: &WriteBack) -> Option<Command> {
    let version = match write {
        WriteBack::Alias { version, .. } | WriteBack::Stage { version, .. } => version,
        WriteBack::Tag { .. } => return None,
    };
    let slot = production_slot_name(inputs.mapping).to_string();
    let from = production_slot(inputs).and_then(|(_, s)| s.version.clone());
    let reason = format!(
        "written back to MLflow: {} now names version {version}, which serves",
        describe_slot(inputs.mapping, &slot)
    );
    let observation = Observation {
        source: "mlflow".to_string(),
        slot,
        role: Stage::Production,
        from,
        to: Some(version.clone()),
        updated_ms: None,
    };
    Some(Command::Observe {
        model: inputs.model.name.clone(),
        observation,
        reason,
    })
}
