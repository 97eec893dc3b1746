//! The rules of canaries and rollouts: what may start, what each decision does,
//! and the record each becomes. Pure, like the stage rules beside it.
//!
//! Decisions name the rollout (`id`) and, to advance, the step they judged, so a
//! decision the controller took about a state that has since changed (a person
//! paused it, a restart) is refused instead of applied twice or too late.

use super::error::RegistryError;
use super::evidence::{GateReading, number};
use super::record::{Action, Move, Record};
use super::rollout::{Canary, OnFailure, Phase, Plan, Rollout};
use super::{ModelSpec, Stage};

/// What the controller or a person decides about a running rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Shadow gate passed (`from_step: None`), or a step passed: go on.
    Advance {
        from_step: Option<usize>,
    },
    /// A gate failed at `at_step` (`None`: before the first step): roll back or
    /// pause, by the plan's policy.
    Fail {
        failure: GateReading,
        at_step: Option<usize>,
    },
    /// The step at `at_step` (`None`: the wait for shadow evidence) reached its
    /// maximum duration without enough evidence: pause, keeping the weight, and
    /// wait for a person. A step never passes for want of evidence.
    Hold {
        at_step: Option<usize>,
    },
    Pause,
    Resume,
    Abort,
    /// Skip to the end: promote the candidate now.
    Promote,
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Advance { .. } => "advance",
            Decision::Fail { .. } => "fail",
            Decision::Hold { .. } => "hold",
            Decision::Pause => "pause",
            Decision::Resume => "resume",
            Decision::Abort => "abort",
            Decision::Promote => "promote",
        }
    }
}

fn refuse(model: &ModelSpec, why: String) -> RegistryError {
    RegistryError::RolloutRefused {
        model: model.name.clone(),
        why,
    }
}

fn running(model: &ModelSpec) -> Option<&Rollout> {
    model.running_rollout()
}

/// A staging version with endpoints, or why not.
fn staging_candidate(model: &ModelSpec, version: &str) -> Result<(), RegistryError> {
    let spec = model
        .versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| RegistryError::UnknownVersion {
            model: model.name.clone(),
            version: version.to_string(),
        })?;
    if spec.stage != Stage::Staging {
        return Err(refuse(
            model,
            format!("version {version:?} is {}, not staging", spec.stage),
        ));
    }
    if spec.endpoints.is_empty() {
        return Err(refuse(
            model,
            format!("version {version:?} has no endpoints"),
        ));
    }
    Ok(())
}

pub(super) fn set_canary(
    model: &ModelSpec,
    version: &str,
    weight: f64,
    draft: Record,
) -> Result<Record, RegistryError> {
    if let Some(rollout) = running(model) {
        return Err(refuse(
            model,
            format!(
                "a rollout of version {:?} sets the weights ({}); pause or abort it first",
                rollout.candidate, rollout.phase
            ),
        ));
    }
    if !(0.0..=100.0).contains(&weight) {
        return Err(RegistryError::Invalid {
            field: "weight",
            message: format!("must be between 0 and 100, got {weight}"),
        });
    }
    let salt = match &model.canary {
        Some(current) if current.version == version => current.salt,
        Some(current) if weight > 0.0 => {
            return Err(refuse(
                model,
                format!(
                    "version {:?} is the canary; set its weight to 0 first",
                    current.version
                ),
            ));
        }
        _ => rand::random::<u64>(),
    };
    if weight == 0.0 && model.canary.as_ref().is_none_or(|c| c.version != version) {
        return Err(refuse(
            model,
            format!("version {version:?} is not the canary"),
        ));
    }
    staging_candidate(model, version)?;
    Ok(Record {
        action: Action::Canary,
        canary: Some(Canary {
            version: version.to_string(),
            weight,
            salt,
        }),
        ..draft
    })
}

pub(super) fn start(
    model: &ModelSpec,
    candidate: &str,
    plan: &Plan,
    draft: Record,
) -> Result<Record, RegistryError> {
    if let Some(rollout) = running(model) {
        return Err(refuse(
            model,
            format!(
                "a rollout of version {:?} is already {}",
                rollout.candidate, rollout.phase
            ),
        ));
    }
    if let Some(canary) = &model.canary {
        return Err(refuse(
            model,
            format!(
                "version {:?} has a hand-set canary; set its weight to 0 first",
                canary.version
            ),
        ));
    }
    staging_candidate(model, candidate)?;
    if model.production().is_none() {
        return Err(refuse(
            model,
            "there is no production version to compare the candidate with".into(),
        ));
    }
    let problems: Vec<String> = plan
        .problems()
        .into_iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect();
    if !problems.is_empty() {
        return Err(RegistryError::Invalid {
            field: "plan",
            message: problems.join("; "),
        });
    }
    let shadowed = model.shadow.is_enabled()
        && (model.shadow.versions.is_empty()
            || model.shadow.versions.iter().any(|v| v == candidate));
    let waits_for_shadow = plan.gates.min_shadow_agreement.is_some();
    if waits_for_shadow && !shadowed {
        let message = format!(
            "min_shadow_agreement needs mirroring to version {candidate:?}; turn shadowing on for it or drop the gate"
        );
        return Err(RegistryError::Invalid {
            field: "plan",
            message,
        });
    }
    let rollout = Rollout {
        id: draft.revision,
        candidate: candidate.to_string(),
        plan: plan.clone(),
        phase: if waits_for_shadow {
            Phase::WaitingForShadow
        } else {
            Phase::Progressing
        },
        step: 0,
        reason: draft.reason.clone(),
        failed_gate: None,
        evidence: Vec::new(),
        held: false,
        progressed: !waits_for_shadow,
        salt: rand::random::<u64>(),
    };
    Ok(Record {
        action: Action::Rollout,
        version: candidate.to_string(),
        rollout: Some(rollout),
        ..draft
    })
}

pub(super) fn decide(
    model: &ModelSpec,
    id: Option<u64>,
    decision: &Decision,
    evidence: &[GateReading],
    draft: Record,
) -> Result<Record, RegistryError> {
    let Some(current) = running(model) else {
        return Err(refuse(model, "no rollout is running".into()));
    };
    if id.is_some_and(|id| id != current.id) {
        return Err(refuse(
            model,
            format!(
                "the decision is about rollout {}, but rollout {} is running",
                id.unwrap_or(0),
                current.id
            ),
        ));
    }
    let stale = || {
        refuse(
            model,
            format!(
                "cannot {} a rollout that is {} at step {}",
                decision.name(),
                current.phase,
                current.step
            ),
        )
    };
    let mut next = current.clone();
    next.reason.clone_from(&draft.reason);
    next.evidence = evidence.to_vec();
    match (decision, current.phase) {
        (Decision::Advance { from_step: None }, Phase::WaitingForShadow) => {
            next.phase = Phase::Progressing;
            next.progressed = true;
        }
        (
            Decision::Advance {
                from_step: Some(step),
            },
            Phase::Progressing,
        ) if *step == current.step => {
            if current.step + 1 >= current.plan.steps.len() {
                return succeed(model, next, draft);
            }
            next.step += 1;
        }
        (Decision::Fail { failure, at_step }, phase) if judged(current, phase, *at_step) => {
            next.phase = match current.plan.on_failure {
                OnFailure::Rollback => Phase::RolledBack,
                OnFailure::Pause => Phase::Paused,
            };
            next.held = false;
            next.reason = failure_reason(failure);
            next.failed_gate = Some(failure.clone());
        }
        (Decision::Hold { at_step }, Phase::WaitingForShadow | Phase::Progressing)
            if judged(current, current.phase, *at_step) =>
        {
            next.phase = Phase::Paused;
            next.held = true;
        }
        (Decision::Pause, Phase::WaitingForShadow | Phase::Progressing) => {
            next.phase = Phase::Paused;
            next.held = true;
        }
        (Decision::Resume, Phase::Paused) => {
            next.phase = if current.progressed {
                Phase::Progressing
            } else {
                Phase::WaitingForShadow
            };
            next.held = false;
            next.failed_gate = None;
        }
        (Decision::Abort, _) => next.phase = Phase::Aborted,
        (Decision::Promote, _) => return succeed(model, next, draft),
        _ => return Err(stale()),
    }
    Ok(Record {
        action: Action::Rollout,
        version: current.candidate.clone(),
        rollout: Some(next),
        ..draft
    })
}

/// The journal's reason for a failed gate.
pub fn failure_reason(failure: &GateReading) -> String {
    format!(
        "gate {} failed: reading {} against threshold {:.4}, {}",
        failure.gate,
        number(failure.reading),
        failure.threshold,
        failure.basis()
    )
}

/// Whether a failure (or hold) was judged on the state the rollout is still in: before the
/// first step, on the current step, or on a step a person paused (whose
/// candidate keeps serving, so its gates keep being checked).
fn judged(current: &Rollout, phase: Phase, at_step: Option<usize>) -> bool {
    match (phase, at_step) {
        (Phase::WaitingForShadow, None) => true,
        // Held before the first step: the shadow gate still watches.
        (Phase::Paused, None) => current.held && !current.progressed,
        (Phase::Progressing, Some(step)) => step == current.step,
        (Phase::Paused, Some(step)) => current.held && step == current.step,
        _ => false,
    }
}

/// The candidate becomes production and the old production version is archived,
/// in the same record that ends the rollout.
fn succeed(
    model: &ModelSpec,
    mut rollout: Rollout,
    draft: Record,
) -> Result<Record, RegistryError> {
    staging_candidate(model, &rollout.candidate)?;
    rollout.phase = Phase::Succeeded;
    rollout.held = false;
    let also = model
        .production()
        .map(|p| Move {
            version: p.version.clone(),
            from: Stage::Production,
            to: Stage::Archived,
        })
        .into_iter()
        .collect();
    Ok(Record {
        action: Action::Rollout,
        version: rollout.candidate.clone(),
        from: Some(Stage::Staging),
        to: Some(Stage::Production),
        also,
        rollout: Some(rollout),
        ..draft
    })
}

/// A transition of the hand-set canary's version takes the canary away in the
/// same record: a canary only ever points at a staging version.
pub(super) fn end_canary_of(model: &ModelSpec, version: &str) -> Option<Canary> {
    let canary = model
        .canary
        .as_ref()
        .filter(|c| c.version == version && running(model).is_none())?;
    Some(Canary {
        weight: 0.0,
        ..canary.clone()
    })
}

/// A rollback in the middle of a rollout ends it too (on-call wins).
pub(super) fn abort_for_rollback(model: &ModelSpec) -> Option<Rollout> {
    running(model).map(|r| Rollout {
        phase: Phase::Aborted,
        held: false,
        reason: "aborted by a rollback".into(),
        ..r.clone()
    })
}

/// Refuses stage changes that would pull the ground from under a running rollout:
/// its candidate, its stable (production) version, or a new production version.
pub(super) fn guard_transition(
    model: &ModelSpec,
    version: &str,
    to: Stage,
) -> Result<(), RegistryError> {
    let Some(rollout) = running(model) else {
        return Ok(());
    };
    let production = model.production().map(|p| p.version.as_str());
    if version == rollout.candidate || to == Stage::Production || Some(version) == production {
        return Err(refuse(
            model,
            format!(
                "a rollout of version {:?} is {}; abort it first",
                rollout.candidate, rollout.phase
            ),
        ));
    }
    Ok(())
}

/// Shadow settings are frozen while a rollout is gated on shadow agreement: a
/// change could make the gate pass on answers compared some other way.
pub(super) fn guard_shadow_change(model: &ModelSpec) -> Result<(), RegistryError> {
    match running(model) {
        Some(rollout) if rollout.plan.gates.min_shadow_agreement.is_some() => Err(refuse(
            model,
            format!(
                "a rollout of version {:?} is gated on shadow agreement; abort it before changing shadow settings",
                rollout.candidate
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "rollout_rules_tests.rs"]
mod tests;
