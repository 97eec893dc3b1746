//! The transition rules: which changes are allowed, and the record each becomes.
//!
//! | from \ to  | production            | staging   | archived |
//! | ---------- | --------------------- | --------- | -------- |
//! | (new)      | refused               | register  | refused  |
//! | production | (already)             | refused   | allowed  |
//! | staging    | allowed, archives old | (already) | allowed  |
//! | archived   | only by rollback      | allowed   | (already)|
//!
//! Planning is pure: it reads the current models and ledger and returns the record
//! to journal, or why not. Exactly one production version per model holds because a
//! promotion archives the old production version in the same record.

use super::command::Command;
use super::error::RegistryError;
use super::ledger::Ledger;
use super::record::{Action, Move, Observation, Record, now};
use super::rollout_rules;
use super::{EndpointUrl, ModelSpec, ShadowPolicy, Stage, is_valid_identifier};
use crate::vocab::ServedModelName;

/// The record `command` becomes, stamped with the next revision, or why it is refused.
pub fn plan(
    models: &[ModelSpec],
    ledger: &Ledger,
    command: &Command,
    actor: &str,
) -> Result<Record, RegistryError> {
    let mut record = match command {
        Command::Register {
            model,
            version,
            endpoints,
            grpc_endpoints,
            upstream_model,
            reason,
        } => register(
            find(models, model)?,
            version,
            Serving {
                endpoints,
                grpc_endpoints,
                upstream_model: upstream_model.as_deref(),
            },
            reason,
        )?,
        Command::Transition {
            model,
            version,
            to,
            reason,
        } => transition(find(models, model)?, version, *to, reason)?,
        Command::Rollback {
            model,
            to_version,
            reason,
            ..
        } => rollback(find(models, model)?, ledger, to_version.as_deref(), reason)?,
        Command::SetShadow {
            model,
            patch,
            reason,
        } => {
            let model = find(models, model)?;
            let policy = model
                .shadow
                .patched(patch)
                .map_err(|message| RegistryError::Invalid {
                    field: "shadow",
                    message,
                })?;
            rollout_rules::guard_shadow_change(model)?;
            set_shadow(model, &policy, reason)?
        }
        Command::SetCanary {
            model,
            version,
            weight,
            reason,
        } => {
            let model = find(models, model)?;
            let draft = draft(Action::Canary, model, version, None, Stage::Staging, reason);
            rollout_rules::set_canary(model, version, *weight, Record { to: None, ..draft })?
        }
        Command::StartRollout {
            model,
            candidate,
            plan,
            reason,
        } => {
            let model = find(models, model)?;
            let mut draft = draft(
                Action::Rollout,
                model,
                candidate,
                None,
                Stage::Staging,
                reason,
            );
            draft.to = None;
            draft.revision = ledger.revision + 1;
            rollout_rules::start(model, candidate, plan, draft)?
        }
        Command::Rollout {
            model,
            id,
            decision,
            evidence,
            reason,
        } => {
            let model = find(models, model)?;
            let mut draft = draft(Action::Rollout, model, "", None, Stage::Staging, reason);
            draft.to = None;
            rollout_rules::decide(model, *id, decision, evidence, draft)?
        }
        Command::Observe {
            model,
            observation,
            reason,
        } => observe(find(models, model)?, observation, reason)?,
    };
    record.revision = ledger.revision + 1;
    record.time = now();
    record.actor = actor.to_string();
    Ok(record)
}

fn find<'a>(models: &'a [ModelSpec], name: &str) -> Result<&'a ModelSpec, RegistryError> {
    models
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| RegistryError::UnknownModel(name.to_string()))
}

fn stage_of(model: &ModelSpec, version: &str) -> Result<Stage, RegistryError> {
    model
        .versions
        .iter()
        .find(|v| v.version == version)
        .map(|v| v.stage)
        .ok_or_else(|| RegistryError::UnknownVersion {
            model: model.name.clone(),
            version: version.to_string(),
        })
}

fn draft(
    action: Action,
    model: &ModelSpec,
    version: &str,
    from: Option<Stage>,
    to: Stage,
    reason: &str,
) -> Record {
    Record {
        revision: 0,
        time: String::new(),
        actor: String::new(),
        action,
        model: model.name.clone(),
        version: version.to_string(),
        from,
        to: Some(to),
        reason: reason.to_string(),
        endpoints: Vec::new(),
        grpc_endpoints: Vec::new(),
        upstream_model: None,
        also: Vec::new(),
        shadow: None,
        canary: None,
        rollout: None,
        observed: None,
    }
}

fn observe(
    model: &ModelSpec,
    observation: &Observation,
    reason: &str,
) -> Result<Record, RegistryError> {
    let named = [&observation.from, &observation.to];
    if let Some(bad) = named
        .into_iter()
        .flatten()
        .find(|v| !is_valid_identifier(v))
    {
        return Err(RegistryError::Invalid {
            field: "version",
            message: format!(
                "{bad:?} (named by {} {:?}) cannot be a stagegate version: use 1-128 \
                 characters from A-Z a-z 0-9 '-' '_' '.'",
                observation.source, observation.slot
            ),
        });
    }
    if observation.role == Stage::Archived {
        return Err(RegistryError::Invalid {
            field: "observation",
            message: "a registry slot names production or staging versions".to_string(),
        });
    }
    let version = observation.to.as_ref().or(observation.from.as_ref());
    let mut record = draft(
        Action::Observe,
        model,
        version.map_or("", String::as_str),
        None,
        Stage::Staging,
        reason,
    );
    record.to = None;
    record.observed = Some(observation.clone());
    Ok(record)
}

/// Where and under which name a version being registered is served.
struct Serving<'a> {
    endpoints: &'a [String],
    grpc_endpoints: &'a [String],
    upstream_model: Option<&'a str>,
}

fn register(
    model: &ModelSpec,
    version: &str,
    serving: Serving<'_>,
    reason: &str,
) -> Result<Record, RegistryError> {
    let Serving {
        endpoints,
        grpc_endpoints,
        upstream_model,
    } = serving;
    if !is_valid_identifier(version) {
        return Err(RegistryError::Invalid {
            field: "version",
            message: format!("{version:?}: use 1-128 characters from A-Z a-z 0-9 '-' '_' '.'"),
        });
    }
    if model.versions.iter().any(|v| v.version == version) {
        return Err(RegistryError::AlreadyRegistered {
            model: model.name.clone(),
            version: version.to_string(),
        });
    }
    if endpoints.is_empty() {
        return Err(RegistryError::Invalid {
            field: "endpoints",
            message: "at least one endpoint URL is needed".to_string(),
        });
    }
    let parsed = validate_endpoints("endpoints", endpoints)?;
    let grpc = validate_endpoints("grpc_endpoints", grpc_endpoints)?;
    let upstream_model = upstream_model
        .map(ServedModelName::parse)
        .transpose()
        .map_err(|message| RegistryError::Invalid {
            field: "upstream_model",
            message,
        })?;
    let mut record = draft(
        Action::Register,
        model,
        version,
        None,
        Stage::Staging,
        reason,
    );
    record.endpoints = parsed.iter().map(EndpointUrl::to_string).collect();
    record.grpc_endpoints = grpc.iter().map(EndpointUrl::to_string).collect();
    record.upstream_model = upstream_model.map(String::from);
    Ok(record)
}

fn validate_endpoints(
    field: &'static str,
    endpoints: &[String],
) -> Result<Vec<EndpointUrl>, RegistryError> {
    let invalid = |message: String| RegistryError::Invalid { field, message };
    let mut parsed: Vec<EndpointUrl> = Vec::with_capacity(endpoints.len());
    for (i, text) in endpoints.iter().enumerate() {
        let url = EndpointUrl::parse(text).map_err(|e| invalid(format!("[{i}]: {e}")))?;
        if parsed.contains(&url) {
            return Err(invalid(format!("[{i}]: duplicate endpoint {url}")));
        }
        parsed.push(url);
    }
    Ok(parsed)
}

fn transition(
    model: &ModelSpec,
    version: &str,
    to: Stage,
    reason: &str,
) -> Result<Record, RegistryError> {
    let from = stage_of(model, version)?;
    rollout_rules::guard_transition(model, version, to)?;
    let refuse = |why| RegistryError::Refused {
        model: model.name.clone(),
        version: version.to_string(),
        from,
        to,
        why,
    };
    match (from, to) {
        _ if from == to => {
            return Err(RegistryError::AlreadyInStage {
                model: model.name.clone(),
                version: version.to_string(),
                stage: to,
            });
        }
        (Stage::Archived, Stage::Production) => {
            return Err(refuse(
                "archived versions return to production only through a rollback",
            ));
        }
        (Stage::Production, Stage::Staging) => {
            return Err(refuse(
                "to take a version out of production, promote another one, archive it, or roll back",
            ));
        }
        _ => {}
    }
    let mut record = draft(Action::Transition, model, version, Some(from), to, reason);
    if to == Stage::Production {
        record.also = archive_production(model);
    }
    record.canary = rollout_rules::end_canary_of(model, version);
    Ok(record)
}

fn set_shadow(
    model: &ModelSpec,
    policy: &ShadowPolicy,
    reason: &str,
) -> Result<Record, RegistryError> {
    let mut problems: Vec<String> = policy
        .problems()
        .into_iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect();
    for version in &policy.versions {
        if !model.versions.iter().any(|v| &v.version == version) {
            problems.push(format!(
                "versions: model {:?} has no version {version:?}",
                model.name
            ));
        }
    }
    if !problems.is_empty() {
        return Err(RegistryError::Invalid {
            field: "shadow",
            message: problems.join("; "),
        });
    }
    let mut record = draft(Action::Shadow, model, "", None, Stage::Staging, reason);
    record.to = None;
    record.shadow = Some(policy.clone());
    Ok(record)
}

fn archive_production(model: &ModelSpec) -> Vec<Move> {
    model
        .production()
        .map(|current| Move {
            version: current.version.clone(),
            from: Stage::Production,
            to: Stage::Archived,
        })
        .into_iter()
        .collect()
}

fn rollback(
    model: &ModelSpec,
    ledger: &Ledger,
    to_version: Option<&str>,
    reason: &str,
) -> Result<Record, RegistryError> {
    let current = model.production().map(|v| v.version.as_str());
    let no_target = |why: String| RegistryError::NoRollbackTarget {
        model: model.name.clone(),
        why,
    };
    let target = match to_version {
        Some(version) => version.to_string(),
        None => ledger
            .model(&model.name)
            .and_then(|m| m.previous_production(current))
            .map(str::to_string)
            .ok_or_else(|| {
                no_target(
                    "no earlier production version is on record; name one with to_version".into(),
                )
            })?,
    };
    match stage_of(model, &target)? {
        Stage::Archived => {}
        stage => {
            return Err(no_target(format!(
                "version {target:?} is {stage}, not archived{}",
                if stage == Stage::Staging {
                    "; promote it with a transition instead"
                } else {
                    ""
                }
            )));
        }
    }
    let endpoints = model
        .versions
        .iter()
        .find(|v| v.version == target)
        .map_or(0, |v| v.endpoints.len());
    if endpoints == 0 {
        return Err(no_target(format!(
            "version {target:?} has no endpoints to serve from"
        )));
    }
    let mut record = draft(
        Action::Rollback,
        model,
        &target,
        Some(Stage::Archived),
        Stage::Production,
        reason,
    );
    record.also = archive_production(model);
    record.rollout = rollout_rules::abort_for_rollback(model);
    Ok(record)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
