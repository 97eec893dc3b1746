//! What to do about one model, given what MLflow shows and what stagegate serves.
//! Pure: every rule is tested without a server.
//!
//! The rules, in the order [`next_change`] applies them:
//!
//! 1. A slot (alias or stage) naming another version than last seen is journaled
//!    first ([`Command::Observe`]), so history says who changed what and the
//!    decisions below read only the journal.
//! 2. A registry change of the production slot made after the running rollout
//!    began, naming another version than its candidate, aborts it.
//! 3. A production target that stagegate has not acted on since it was seen
//!    (no rollout started and no production change since) is followed: registered
//!    if new, then rolled out (`on_production_change = "rollout"`), promoted
//!    (`"promote"`, or when nothing serves yet), or rolled back to at once if it
//!    served production before.
//! 4. Versions the staging slots name are registered (or brought back from
//!    archived) into staging; staging versions no slot names any more are archived.
//!
//! Write-back ([`write_backs`]) then makes MLflow say what stagegate serves: the
//! production slot follows the production version (never while a rollout runs,
//! nor while a registry change waits to be followed), and tags on each version
//! say its stage and its latest rollout.

use std::collections::BTreeMap;

use serde::Serialize;

use super::view::{ModelView, PRODUCTION_STAGE, Slot};
use crate::config::registry::{Follow, MlflowModel, OnProductionChange};
use crate::registry::ledger::{LedgerModel, ObservedSlot};
use crate::registry::{Command, Decision, ModelSpec, Observation, Stage};

/// Tag saying what a version does in stagegate.
pub const STAGE_TAG: &str = "stagegate.stage";
/// Tags on a rollout's candidate: its phase, and why it is in it.
pub const ROLLOUT_TAG: &str = "stagegate.rollout";
pub const ROLLOUT_REASON_TAG: &str = "stagegate.rollout_reason";
/// MLflow refuses longer tag values.
const MAX_TAG_VALUE: usize = 5_000;

/// Everything a decision reads.
pub struct Inputs<'a> {
    pub mapping: &'a MlflowModel,
    pub model: &'a ModelSpec,
    pub ledger: Option<&'a LedgerModel>,
    pub view: &'a ModelView,
}

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

/// A version the registry names or stagegate knows, and whether it can serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionState {
    pub version: String,
    /// The registry's slots naming it (aliases, or stages).
    pub named_by: Vec<String>,
    /// MLflow's status (`READY`, ...), if MLflow has the version.
    pub mlflow_status: Option<String>,
    /// Its stage in stagegate, if stagegate knows it.
    pub stage: Option<Stage>,
    pub servable: bool,
    /// Why it cannot be served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The next change that brings stagegate in line with the registry, if any.
pub fn next_change(inputs: &Inputs) -> Option<Command> {
    observation(inputs)
        .or_else(|| abort_superseded(inputs))
        .or_else(|| follow_production(inputs))
        .or_else(|| follow_staging(inputs))
        .or_else(|| retire_staging(inputs))
}

fn observation(inputs: &Inputs) -> Option<Command> {
    let seen = inputs.view.slots(inputs.mapping);
    let empty = BTreeMap::new();
    let known = inputs.ledger.map_or(&empty, |l| &l.observed);
    let names = seen
        .keys()
        .chain(known.keys().filter(|k| !seen.contains_key(*k)));
    for name in names {
        let now = seen.get(name);
        let before = known.get(name);
        let (now_version, before_version) = (
            now.map(|s| s.version.as_str()),
            before.and_then(|s| s.version.as_deref()),
        );
        let role = now.map_or_else(|| before.map_or(Stage::Staging, |s| s.role), |s| s.role);
        if now_version == before_version && before.is_none_or(|b| b.role == role) {
            continue;
        }
        let observation = Observation {
            source: "mlflow".to_string(),
            slot: name.clone(),
            role,
            from: before_version.map(str::to_string),
            to: now_version.map(str::to_string),
            updated_ms: now.map_or(inputs.view.registered.updated_ms, |s| s.updated_ms),
        };
        let reason = describe(inputs.mapping, &observation);
        return Some(Command::Observe {
            model: inputs.model.name.clone(),
            observation,
            reason,
        });
    }
    None
}

fn describe(mapping: &MlflowModel, seen: &Observation) -> String {
    let what = match mapping.follow {
        Follow::Aliases { .. } => format!("alias {:?}", seen.slot),
        Follow::Stages => format!("stage {}", seen.slot),
    };
    let model = &mapping.registered_model;
    match (&seen.from, &seen.to) {
        (None, Some(to)) => format!("MLflow: {what} of {model:?} names version {to}"),
        (Some(from), Some(to)) => {
            format!("MLflow: {what} of {model:?} moved from version {from} to {to}")
        }
        (Some(from), None) => {
            format!("MLflow: {what} of {model:?} no longer names a version (was {from})")
        }
        (None, None) => format!("MLflow: {what} of {model:?} changed role"),
    }
}

/// The production slot as the journal last saw it, when it names a version.
fn production_target<'a>(inputs: &'a Inputs) -> Option<(&'a str, &'a ObservedSlot, &'a str)> {
    let (name, slot) = inputs.ledger?.observed_production()?;
    Some((name, slot, slot.version.as_deref()?))
}

/// Whether stagegate has yet to act on what the registry saw at `revision`: no
/// rollout began and production did not change since.
fn waiting(inputs: &Inputs, revision: u64) -> bool {
    let changed_since = inputs
        .ledger
        .is_some_and(|l| l.production_revision > revision);
    let rolled_out_since = inputs
        .model
        .rollout
        .as_ref()
        .is_some_and(|r| r.id > revision);
    !changed_since && !rolled_out_since
}

fn abort_superseded(inputs: &Inputs) -> Option<Command> {
    let rollout = inputs.model.running_rollout()?;
    let (name, slot) = inputs.ledger?.observed_production()?;
    if slot.revision < rollout.id || slot.version.as_deref() == Some(rollout.candidate.as_str()) {
        return None;
    }
    let now = slot
        .version
        .as_deref()
        .map_or("no version".to_string(), |v| format!("version {v}"));
    Some(Command::Rollout {
        model: inputs.model.name.clone(),
        id: Some(rollout.id),
        decision: Decision::Abort,
        evidence: Vec::new(),
        reason: format!(
            "MLflow: {name:?} now names {now} while version {} was rolling out",
            rollout.candidate
        ),
    })
}

fn follow_production(inputs: &Inputs) -> Option<Command> {
    let (name, slot, target) = production_target(inputs)?;
    let model = inputs.model;
    let production = model.production().map(|v| v.version.as_str());
    if production == Some(target)
        || !waiting(inputs, slot.revision)
        || model.running_rollout().is_some()
    {
        return None;
    }
    let reason = format!("MLflow: {name:?} names version {target}");
    let served_before = inputs
        .ledger
        .is_some_and(|l| l.production_history.iter().any(|v| v == target));
    let transition = |to| Command::Transition {
        model: model.name.clone(),
        version: target.to_string(),
        to,
        reason: reason.clone(),
    };
    match model.version(target).map(|v| v.stage) {
        None => register(inputs, target, reason.clone()),
        Some(Stage::Archived) if served_before && production.is_some() => Some(Command::Rollback {
            model: model.name.clone(),
            to_version: Some(target.to_string()),
            reason,
            force: false,
        }),
        // A version that never served production is not trusted with it at once.
        Some(Stage::Archived) => Some(transition(Stage::Staging)),
        Some(Stage::Staging)
            if production.is_none()
                || inputs.mapping.on_production_change == OnProductionChange::Promote =>
        {
            Some(transition(Stage::Production))
        }
        Some(Stage::Staging) => Some(Command::StartRollout {
            model: model.name.clone(),
            candidate: target.to_string(),
            plan: model.rollout_defaults.clone(),
            reason,
        }),
        Some(Stage::Production) => None,
    }
}

/// Registers `version` into staging, when MLflow says it can be served.
fn register(inputs: &Inputs, version: &str, reason: String) -> Option<Command> {
    let endpoints = inputs.view.endpoints(inputs.mapping, version).ok()?;
    Some(Command::Register {
        model: inputs.model.name.clone(),
        version: version.to_string(),
        endpoints,
        reason,
    })
}

fn staging_slots<'a>(inputs: &'a Inputs) -> impl Iterator<Item = (&'a str, &'a str)> {
    inputs
        .ledger
        .into_iter()
        .flat_map(|l| &l.observed)
        .filter(|(_, slot)| slot.role == Stage::Staging)
        .filter_map(|(name, slot)| Some((name.as_str(), slot.version.as_deref()?)))
}

fn follow_staging(inputs: &Inputs) -> Option<Command> {
    let model = inputs.model;
    staging_slots(inputs).find_map(|(name, version)| {
        let reason = format!("MLflow: {name:?} names version {version}");
        match model.version(version).map(|v| v.stage) {
            None => register(inputs, version, reason),
            Some(Stage::Archived) => Some(Command::Transition {
                model: model.name.clone(),
                version: version.to_string(),
                to: Stage::Staging,
                reason,
            }),
            Some(Stage::Staging | Stage::Production) => None,
        }
    })
}

fn retire_staging(inputs: &Inputs) -> Option<Command> {
    let model = inputs.model;
    let target = production_target(inputs).map(|(_, _, v)| v);
    let candidate = model.running_rollout().map(|r| r.candidate.as_str());
    let hand_set = model.canary.as_ref().map(|c| c.version.as_str());
    let retired = model.versions.iter().find(|v| {
        let id = Some(v.version.as_str());
        v.stage == Stage::Staging
            && id != target
            && id != candidate
            && id != hand_set
            && !staging_slots(inputs).any(|(_, named)| named == v.version)
    })?;
    Some(Command::Transition {
        model: model.name.clone(),
        version: retired.version.clone(),
        to: Stage::Archived,
        reason: format!(
            "MLflow: no staging slot of {:?} names version {} any more",
            inputs.mapping.registered_model, retired.version
        ),
    })
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
    if target == production || waiting(inputs, slot.revision) {
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

/// Every version a slot names or stagegate knows, with whether it can serve.
pub fn version_states(inputs: &Inputs) -> Vec<VersionState> {
    let slots = inputs.view.slots(inputs.mapping);
    let mut named: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, Slot { version, .. }) in &slots {
        named.entry(version).or_default().push(name.clone());
    }
    for version in &inputs.model.versions {
        named.entry(&version.version).or_default();
    }
    named
        .into_iter()
        .map(|(version, named_by)| {
            let stage = inputs.model.version(version).map(|v| v.stage);
            // A version stagegate knows serves from its journaled endpoints.
            let reason = match stage {
                Some(_) => None,
                None => inputs.view.endpoints(inputs.mapping, version).err(),
            };
            VersionState {
                version: version.to_string(),
                named_by,
                mlflow_status: inputs.view.versions.get(version).map(|v| v.status.clone()),
                stage,
                servable: reason.is_none(),
                reason,
            }
        })
        .collect()
}

/// What stagegate is waiting for before it follows the registry, if anything.
pub fn waiting_for(inputs: &Inputs) -> Option<String> {
    let (name, slot, target) = production_target(inputs)?;
    let model = inputs.model;
    if model.production().is_some_and(|p| p.version == target) {
        return None;
    }
    if let Some(rollout) = model.running_rollout() {
        return Some(format!(
            "rollout of version {} is {} (step {} of {})",
            rollout.candidate,
            rollout.phase,
            rollout.step + 1,
            rollout.plan.steps.len()
        ));
    }
    if waiting(inputs, slot.revision) {
        let unservable = model.version(target).is_none();
        return Some(match inputs.view.endpoints(inputs.mapping, target) {
            Err(why) if unservable => {
                format!("{name:?} names version {target}, which cannot be served: {why}")
            }
            _ => format!(
                "{name:?} names version {target}; following it (see last_error if this stays)"
            ),
        });
    }
    let serving = model
        .production()
        .map_or("no version", |p| p.version.as_str());
    let outcome = match &model.rollout {
        Some(r) if r.candidate == target => format!("its rollout {}: {}", r.phase, r.reason),
        _ => "stagegate changed production since".to_string(),
    };
    Some(format!(
        "{name:?} names version {target} but version {serving} serves ({outcome})"
    ))
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
