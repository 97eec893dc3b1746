//! [`World`]: a model following MLflow, for the sync's unit tests. It applies each
//! change the rules ask for through the real planner, ledger and merge, as the
//! registry writer would, and each write-back to its view of MLflow.

use std::sync::Arc;

use super::reconcile::*;
use super::write_back::*;
use crate::config::Config;
use crate::config::registry::MlflowModel;
use crate::registry::ledger::Ledger;
use crate::registry::merge::merge;
use crate::registry::rules::plan;
use crate::registry::{Command, Decision, GateReading, ModelSpec, Phase, Stage, Verdict};
use crate::sync::mlflow::{ModelVersion, RegisteredModel};
use crate::sync::view::{ModelView, PRODUCTION_STAGE};

const ALIASES: &str = r#"
[registry]
kind = "mlflow"
url = "http://127.0.0.1:5000"

[[models]]
name = "fraud"
[models.mlflow]
registered_model = "fraud-detector"
"#;

pub struct World {
    pub config: Config,
    pub ledger: Ledger,
    pub view: ModelView,
}

impl World {
    pub fn new(extra: &str) -> World {
        let text = format!("{ALIASES}{extra}");
        let config = Config::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
        World {
            config,
            ledger: Ledger::default(),
            view: ModelView::default(),
        }
    }

    pub fn stages() -> World {
        World::new("use_stages = true\n")
    }

    pub fn mapping(&self) -> &MlflowModel {
        &self.config.registry.as_ref().unwrap().models[0]
    }

    pub fn model(&self) -> ModelSpec {
        merge(&self.config.models, &self.ledger).models.remove(0)
    }

    /// Adds (or replaces) an MLflow version with endpoints in its tag.
    pub fn version(&mut self, version: &str, status: &str) -> &mut ModelVersion {
        let tags = [(
            "stagegate.endpoints".to_string(),
            format!("http://v{version}:8080"),
        )];
        self.view.versions.insert(
            version.to_string(),
            ModelVersion {
                version: version.to_string(),
                status: status.to_string(),
                stage: "None".to_string(),
                tags: tags.into_iter().collect(),
                updated_ms: Some(1),
            },
        );
        self.view.versions.get_mut(version).unwrap()
    }

    pub fn alias(&mut self, alias: &str, version: Option<&str>) {
        let RegisteredModel { aliases, .. } = &mut self.view.registered;
        match version {
            Some(v) => aliases.insert(alias.to_string(), v.to_string()),
            None => aliases.remove(alias),
        };
    }

    pub fn next(&self) -> Option<Command> {
        let (model, mapping) = (self.model(), self.mapping());
        let ledger = self.ledger.model("fraud");
        next_change(&Inputs {
            mapping,
            model: &model,
            ledger,
            view: &self.view,
        })
    }

    pub fn writes(&self) -> Vec<WriteBack> {
        let model = self.model();
        write_backs(&Inputs {
            mapping: self.mapping(),
            model: &model,
            ledger: self.ledger.model("fraud"),
            view: &self.view,
        })
    }

    pub fn states(&self) -> (Vec<VersionState>, Option<String>) {
        let model = self.model();
        let inputs = Inputs {
            mapping: self.mapping(),
            model: &model,
            ledger: self.ledger.model("fraud"),
            view: &self.view,
        };
        (version_states(&inputs), waiting_for(&inputs))
    }

    pub fn apply(&mut self, command: &Command, actor: &str) {
        let models = merge(&self.config.models, &self.ledger).models;
        let record = plan(&models, &self.ledger, command, actor)
            .unwrap_or_else(|e| panic!("{command:?} refused: {e}"));
        self.ledger.apply(Arc::new(record)).unwrap();
    }

    /// Applies what the rules ask for until they ask for nothing; returns the
    /// kinds of change, in order.
    pub fn settle(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        while let Some(command) = self.next() {
            assert!(done.len() < 20, "not settling: {done:?}");
            done.push(kind(&command));
            self.apply(&command, "mlflow");
        }
        done
    }

    /// Does what the sync does with its write-backs: MLflow takes them, and a
    /// production write is journaled.
    pub fn write_back(&mut self) {
        for write in self.writes() {
            let model = self.model();
            let journal = written(
                &Inputs {
                    mapping: self.mapping(),
                    model: &model,
                    ledger: self.ledger.model("fraud"),
                    view: &self.view,
                },
                &write,
            );
            match &write {
                WriteBack::Alias { alias, version } => self.alias(alias, Some(version)),
                WriteBack::Stage { version, .. } => {
                    for v in self.view.versions.values_mut() {
                        if v.stage == PRODUCTION_STAGE {
                            v.stage = "Archived".into();
                        }
                    }
                    self.view.versions.get_mut(version).unwrap().stage = PRODUCTION_STAGE.into();
                }
                WriteBack::Tag {
                    version,
                    key,
                    value,
                } => {
                    let found = self.view.versions.get_mut(version).unwrap();
                    found.tags.insert(key.clone(), value.clone());
                }
            }
            if let Some(command) = journal {
                self.apply(&command, "mlflow");
            }
        }
    }

    pub fn person(&mut self, command: Command) {
        self.apply(&command, "alice");
    }

    pub fn stage(&self, version: &str) -> Option<Stage> {
        self.model().version(version).map(|v| v.stage)
    }

    pub fn phase(&self) -> Option<Phase> {
        self.model().rollout.map(|r| r.phase)
    }

    pub fn decide(&mut self, decision: Decision) {
        let command = Command::Rollout {
            model: "fraud".into(),
            id: None,
            decision,
            evidence: Vec::new(),
            reason: String::new(),
        };
        self.apply(&command, "controller");
    }
}

pub fn kind(command: &Command) -> String {
    match command {
        Command::Observe { observation, .. } => format!(
            "observe {} {:?}->{:?}",
            observation.slot, observation.from, observation.to
        ),
        Command::Register { version, .. } => format!("register {version}"),
        Command::Transition { version, to, .. } => format!("{version} to {to}"),
        Command::Rollback { to_version, .. } => format!("rollback to {to_version:?}"),
        Command::StartRollout { candidate, .. } => format!("roll out {candidate}"),
        Command::Rollout { decision, .. } => format!("rollout {}", decision.name()),
        other => format!("{other:?}"),
    }
}

pub fn failure() -> Decision {
    Decision::Fail {
        failure: GateReading {
            gate: "error_rate".into(),
            reading: Some(0.05),
            threshold: 0.01,
            verdict: Verdict::Fail,
            lower: Some(0.03),
            upper: Some(0.07),
            confidence: Some(0.997),
            candidate_n: 400,
            stable_n: Some(1200),
            detail: String::new(),
        },
        at_step: Some(0),
    }
}

/// A world serving version 1, which `champion` names.
pub fn serving_one(extra: &str) -> World {
    let mut world = World::new(extra);
    world.version("1", "READY");
    world.alias("champion", Some("1"));
    world.settle();
    world
}

pub fn rollback_to(version: &str) -> Command {
    Command::Rollback {
        model: "fraud".into(),
        to_version: Some(version.into()),
        reason: "by hand".into(),
        force: true,
    }
}
