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
//! What stagegate then writes back to MLflow is in [`super::write_back`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::view::{ModelView, PRODUCTION_STAGE, Slot};
use crate::config::registry::{Follow, MlflowModel, OnProductionChange};
use crate::registry::ledger::{LedgerModel, ObservedSlot};
use crate::registry::{Command, Decision, ModelSpec, Observation, Stage};

/// Everything a decision reads.
pub struct Inputs<'a> {
    pub mapping: &'a MlflowModel,
    pub model: &'a ModelSpec,
    pub ledger: Option<&'a LedgerModel>,
    pub view: &'a ModelView,
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

pub(super) fn describe_slot(mapping: &MlflowModel, slot: &str) -> String {
    match mapping.follow {
        Follow::Aliases { .. } => format!("alias {slot:?}"),
        Follow::Stages => format!("stage {slot}"),
    }
}

fn describe(mapping: &MlflowModel, seen: &Observation) -> String {
    let what = describe_slot(mapping, &seen.slot);
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

/// The name of the slot that names the production version under `mapping`.
pub fn production_slot_name(mapping: &MlflowModel) -> &str {
    match &mapping.follow {
        Follow::Aliases { production, .. } => production,
        Follow::Stages => PRODUCTION_STAGE,
    }
}

/// The production slot as the journal last saw it. Looked up by the mapping's
/// name, so a slot an older mapping followed never counts.
pub(super) fn production_slot<'a>(inputs: &'a Inputs) -> Option<(&'a str, &'a ObservedSlot)> {
    let name = production_slot_name(inputs.mapping);
    let slot = inputs.ledger?.observed.get(name)?;
    Some((name, slot))
}

/// The production slot, when it names a version.
pub(super) fn production_target<'a>(
    inputs: &'a Inputs,
) -> Option<(&'a str, &'a ObservedSlot, &'a str)> {
    let (name, slot) = production_slot(inputs)?;
    Some((name, slot, slot.version.as_deref()?))
}

/// Whether stagegate has yet to act on the registry naming `target` at
/// `revision`: production did not change since, no rollout began since, and no
/// rollout of `target` was still going on then (it answers the change too).
pub(super) fn waiting(inputs: &Inputs, revision: u64, target: &str) -> bool {
    let Some(ledger) = inputs.ledger else {
        return true;
    };
    let acted = inputs.model.rollout.as_ref().is_some_and(|r| {
        r.id > revision || (r.candidate == target && ledger.rollout_revision > revision)
    });
    ledger.production_revision <= revision && !acted
}

fn abort_superseded(inputs: &Inputs) -> Option<Command> {
    let rollout = inputs.model.running_rollout()?;
    // An emptied alias is left alone, and so is the rollout.
    let (name, slot, now) = production_target(inputs)?;
    if slot.revision < rollout.id || now == rollout.candidate {
        return None;
    }
    let now = format!("version {now}");
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
        || !waiting(inputs, slot.revision, target)
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
        // MLflow tags name HTTP endpoints only, for now.
        grpc_endpoints: Vec::new(),
        upstream_model: inputs.view.upstream_model(version),
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
    let named_once = &inputs.ledger?.registry_named;
    let retired = model.versions.iter().find(|v| {
        let id = Some(v.version.as_str());
        // A version a person registered by hand is theirs to retire.
        v.stage == Stage::Staging
            && named_once.contains(&v.version)
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
    if waiting(inputs, slot.revision, target) {
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
