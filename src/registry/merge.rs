//! Where state lives: the config seeds versions the journal has never seen; once a
//! version is in the journal, the journal owns its stage.
//!
//! [`merge`] combines the two into the models the gateway serves, and says where
//! they disagree (a warning each, never silently applied).

use std::collections::HashSet;

use super::ledger::Ledger;
use super::{EndpointUrl, ModelSpec, ShadowPolicy, Stage, StickyPolicy, VersionSpec, default_plan};
use crate::config::defaults;
use crate::vocab::ServedModelName;

/// The served models, and what the operator should know about how they were made.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub models: Vec<ModelSpec>,
    pub warnings: Vec<String>,
}

pub fn merge(config: &[ModelSpec], ledger: &Ledger) -> Merged {
    let mut warnings = Vec::new();
    let mut models: Vec<ModelSpec> = config
        .iter()
        .map(|model| merge_model(model, ledger, &mut warnings))
        .collect();
    let configured: HashSet<&str> = config.iter().map(|m| m.name.as_str()).collect();
    for name in ledger
        .models
        .keys()
        .filter(|name| !configured.contains(name.as_str()))
    {
        warnings.push(format!(
            "model {name:?} is in the state directory but not in the config; \
             it is still served (archive its versions to stop it)"
        ));
        let seed = ModelSpec {
            name: name.clone(),
            health_path: defaults::HEALTH_PATH.to_string(),
            versions: Vec::new(),
            shadow: ShadowPolicy::default(),
            sticky: StickyPolicy::default(),
            rollout_defaults: default_plan(),
            canary: None,
            rollout: None,
        };
        models.push(merge_model(&seed, ledger, &mut warnings));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Merged { models, warnings }
}

fn merge_model(config: &ModelSpec, ledger: &Ledger, warnings: &mut Vec<String>) -> ModelSpec {
    let owned = ledger.model(&config.name);
    let mut versions = Vec::with_capacity(config.versions.len());
    for seed in &config.versions {
        let stage = match owned.and_then(|m| m.versions.get(&seed.version)) {
            Some(journal) if journal.stage != seed.stage => {
                warnings.push(format!(
                    "model {:?} version {:?}: the config says {} but the journal says {}; \
                     the journal wins (change stages through the admin API)",
                    config.name, seed.version, seed.stage, journal.stage
                ));
                journal.stage
            }
            Some(journal) => journal.stage,
            None => seed.stage,
        };
        versions.push(VersionSpec {
            stage,
            ..seed.clone()
        });
    }
    let configured: HashSet<&str> = config.versions.iter().map(|v| v.version.as_str()).collect();
    for (id, journal) in owned.into_iter().flat_map(|m| &m.versions) {
        if configured.contains(id.as_str()) {
            continue;
        }
        let endpoints = parse_endpoints(&config.name, id, &journal.endpoints, warnings);
        if endpoints.is_empty() && journal.stage != Stage::Archived {
            warnings.push(format!(
                "model {:?} version {id:?} is {} in the journal but has no endpoints \
                 (it was defined in a config that no longer lists it); it cannot be served",
                config.name, journal.stage
            ));
        }
        let grpc_endpoints = parse_endpoints(&config.name, id, &journal.grpc_endpoints, warnings);
        let upstream_model = journal.upstream_model.as_deref().and_then(|name| {
            ServedModelName::parse(name)
                .map_err(|e| {
                    warnings.push(format!(
                        "model {:?} version {id:?}: journal's upstream_model ignored: {e}",
                        config.name
                    ));
                })
                .ok()
        });
        versions.push(VersionSpec {
            version: id.clone(),
            stage: journal.stage,
            endpoints,
            grpc_endpoints,
            max_concurrent_requests: None,
            upstream_model,
        });
    }
    keep_one_production(&config.name, &mut versions, ledger, warnings);
    let shadow = match owned.and_then(|m| m.shadow.as_ref()) {
        Some(journal) if *journal != config.shadow => {
            warnings.push(format!(
                "model {:?}: shadow settings were changed through the admin API; the journal's apply, not the config's",
                config.name
            ));
            journal.clone()
        }
        Some(journal) => journal.clone(),
        None => config.shadow.clone(),
    };
    let rollout = owned.and_then(|m| m.rollout.clone());
    // A running rollout drives the canary; otherwise a hand-set one may exist.
    let canary = match rollout.as_ref().filter(|r| !r.phase.is_final()) {
        Some(running) => running.canary(),
        None => owned.and_then(|m| m.canary.clone()),
    };
    ModelSpec {
        versions,
        shadow,
        canary,
        rollout,
        ..config.clone()
    }
}

fn parse_endpoints(
    model: &str,
    version: &str,
    texts: &[String],
    warnings: &mut Vec<String>,
) -> Vec<EndpointUrl> {
    texts
        .iter()
        .filter_map(|text| {
            EndpointUrl::parse(text)
                .map_err(|e| warnings.push(format!("model {model:?} version {version:?}: {e}")))
                .ok()
        })
        .collect()
}

/// A config that names a new production version while the journal already owns
/// one would give the model two; the journal's stays, the config's is staged.
fn keep_one_production(
    model: &str,
    versions: &mut [VersionSpec],
    ledger: &Ledger,
    warnings: &mut Vec<String>,
) {
    let journal_owns = |v: &VersionSpec| ledger.stage(model, &v.version).is_some();
    let productions: Vec<usize> = (0..versions.len())
        .filter(|&i| versions[i].stage == Stage::Production)
        .collect();
    if productions.len() < 2 {
        return;
    }
    let keep = productions
        .iter()
        .copied()
        .find(|&i| journal_owns(&versions[i]))
        .unwrap_or(productions[0]);
    for &i in productions.iter().filter(|&&i| i != keep) {
        warnings.push(format!(
            "model {model:?} version {:?}: the config says production but version {:?} \
             is production per the journal; seeding it as staging",
            versions[i].version, versions[keep].version
        ));
        versions[i].stage = Stage::Staging;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::registry::record::{Action, Move, Record};

    fn config(versions: &[(&str, &str)]) -> Vec<ModelSpec> {
        let mut text = String::from("[[models]]\nname = \"m\"\n");
        for (id, stage) in versions {
            text.push_str(&format!(
                "[[models.versions]]\nversion = \"{id}\"\nstage = \"{stage}\"\nendpoints = [\"http://v{id}:1\"]\n"
            ));
        }
        Config::parse(&text, "test").unwrap().models
    }

    fn promote(ledger: &mut Ledger, version: &str, archived: &str) {
        let revision = ledger.revision + 1;
        ledger
            .apply(Arc::new(Record {
                revision,
                time: String::new(),
                actor: "t".into(),
                action: Action::Transition,
                model: "m".into(),
                version: version.into(),
                from: Some(Stage::Staging),
                to: Some(Stage::Production),
                reason: String::new(),
                endpoints: vec![],
                grpc_endpoints: Vec::new(),
                upstream_model: None,
                also: vec![Move {
                    version: archived.into(),
                    from: Stage::Production,
                    to: Stage::Archived,
                }],
                shadow: None,
                canary: None,
                rollout: None,
                observed: None,
            }))
            .unwrap();
    }

    fn stages(merged: &Merged) -> Vec<(String, Stage)> {
        merged.models[0]
            .versions
            .iter()
            .map(|v| (v.version.clone(), v.stage))
            .collect()
    }

    #[test]
    fn config_seeds_what_the_journal_has_not_seen() {
        let merged = merge(
            &config(&[("1", "archived"), ("2", "production")]),
            &Ledger::default(),
        );
        assert_eq!(
            stages(&merged),
            [
                ("1".into(), Stage::Archived),
                ("2".into(), Stage::Production)
            ]
        );
        assert!(merged.warnings.is_empty());
    }

    #[test]
    fn the_journal_owns_stages_it_has_recorded_and_says_so() {
        let mut ledger = Ledger::default();
        promote(&mut ledger, "3", "2");
        let merged = merge(&config(&[("2", "production"), ("3", "staging")]), &ledger);
        assert_eq!(
            stages(&merged),
            [
                ("2".into(), Stage::Archived),
                ("3".into(), Stage::Production)
            ]
        );
        assert_eq!(merged.warnings.len(), 2, "{:?}", merged.warnings);
        assert!(merged.warnings[0].contains("the journal wins"));
    }

    #[test]
    fn a_new_config_production_cannot_make_a_second_one() {
        let mut ledger = Ledger::default();
        promote(&mut ledger, "3", "2");
        let merged = merge(
            &config(&[("2", "archived"), ("3", "staging"), ("4", "production")]),
            &ledger,
        );
        let productions = merged.models[0]
            .versions
            .iter()
            .filter(|v| v.stage == Stage::Production)
            .count();
        assert_eq!(productions, 1);
        assert_eq!(stages(&merged)[2], ("4".into(), Stage::Staging));
        assert!(
            merged
                .warnings
                .iter()
                .any(|w| w.contains("seeding it as staging"))
        );
    }

    #[test]
    fn journal_models_missing_from_the_config_are_kept_with_a_warning() {
        let mut ledger = Ledger::default();
        promote(&mut ledger, "3", "2");
        let merged = merge(&[], &ledger);
        assert_eq!(merged.models[0].name, "m");
        assert!(
            merged
                .warnings
                .iter()
                .any(|w| w.contains("not in the config"))
        );
        assert!(
            merged
                .warnings
                .iter()
                .any(|w| w.contains("cannot be served"))
        );
    }
}
