//! The sync's rules, driven through the real planner, ledger and merge: a
//! [`World`] applies each change the rules ask for as the registry writer would.

use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::registry::ledger::Ledger;
use crate::registry::merge::merge;
use crate::registry::rules::plan;
use crate::registry::{GateReading, Phase, Verdict};
use crate::sync::mlflow::{ModelVersion, RegisteredModel};
use crate::sync::view::PRODUCTION_STAGE;
use crate::sync::write_back::*;

const ALIASES: &str = r#"
[registry]
kind = "mlflow"
url = "http://127.0.0.1:5000"

[[models]]
name = "fraud"
[models.mlflow]
registered_model = "fraud-detector"
"#;

struct World {
    config: Config,
    ledger: Ledger,
    view: ModelView,
}

impl World {
    fn new(extra: &str) -> World {
        let text = format!("{ALIASES}{extra}");
        let config = Config::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
        World {
            config,
            ledger: Ledger::default(),
            view: ModelView::default(),
        }
    }

    fn stages() -> World {
        World::new("use_stages = true\n")
    }

    fn mapping(&self) -> &MlflowModel {
        &self.config.registry.as_ref().unwrap().models[0]
    }

    fn model(&self) -> ModelSpec {
        merge(&self.config.models, &self.ledger).models.remove(0)
    }

    /// Adds (or replaces) an MLflow version with endpoints in its tag.
    fn version(&mut self, version: &str, status: &str) -> &mut ModelVersion {
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

    fn alias(&mut self, alias: &str, version: Option<&str>) {
        let RegisteredModel { aliases, .. } = &mut self.view.registered;
        match version {
            Some(v) => aliases.insert(alias.to_string(), v.to_string()),
            None => aliases.remove(alias),
        };
    }

    fn next(&self) -> Option<Command> {
        let (model, mapping) = (self.model(), self.mapping());
        let ledger = self.ledger.model("fraud");
        next_change(&Inputs {
            mapping,
            model: &model,
            ledger,
            view: &self.view,
        })
    }

    fn writes(&self) -> Vec<WriteBack> {
        let model = self.model();
        write_backs(&Inputs {
            mapping: self.mapping(),
            model: &model,
            ledger: self.ledger.model("fraud"),
            view: &self.view,
        })
    }

    fn states(&self) -> (Vec<VersionState>, Option<String>) {
        let model = self.model();
        let inputs = Inputs {
            mapping: self.mapping(),
            model: &model,
            ledger: self.ledger.model("fraud"),
            view: &self.view,
        };
        (version_states(&inputs), waiting_for(&inputs))
    }

    fn apply(&mut self, command: &Command, actor: &str) {
        let models = merge(&self.config.models, &self.ledger).models;
        let record = plan(&models, &self.ledger, command, actor)
            .unwrap_or_else(|e| panic!("{command:?} refused: {e}"));
        self.ledger.apply(Arc::new(record)).unwrap();
    }

    /// Applies what the rules ask for until they ask for nothing; returns the
    /// kinds of change, in order.
    fn settle(&mut self) -> Vec<String> {
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
    fn write_back(&mut self) {
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

    fn person(&mut self, command: Command) {
        self.apply(&command, "alice");
    }

    fn stage(&self, version: &str) -> Option<Stage> {
        self.model().version(version).map(|v| v.stage)
    }

    fn phase(&self) -> Option<Phase> {
        self.model().rollout.map(|r| r.phase)
    }

    fn decide(&mut self, decision: Decision) {
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

fn kind(command: &Command) -> String {
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

fn failure() -> Decision {
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
fn serving_one(extra: &str) -> World {
    let mut world = World::new(extra);
    world.version("1", "READY");
    world.alias("champion", Some("1"));
    world.settle();
    world
}

#[test]
fn the_first_champion_is_registered_and_promoted_at_once() {
    let mut world = World::new("");
    world.version("1", "READY");
    world.alias("champion", Some("1"));
    assert_eq!(
        world.settle(),
        [
            "observe champion None->Some(\"1\")",
            "register 1",
            "1 to production",
        ]
    );
    let model = world.model();
    assert_eq!(model.production().unwrap().version, "1");
    assert_eq!(model.versions[0].endpoints[0].to_string(), "http://v1:8080");
    // Everything agrees: nothing to change, and only tags to write.
    assert_eq!(world.next(), None);
    let stage_tag = WriteBack::Tag {
        version: "1".into(),
        key: STAGE_TAG.into(),
        value: "production".into(),
    };
    assert_eq!(world.writes(), [stage_tag]);
    world
        .view
        .versions
        .get_mut("1")
        .unwrap()
        .tags
        .insert(STAGE_TAG.into(), "production".into());
    assert_eq!(world.writes(), [], "writes stop once MLflow shows them");
}

#[test]
fn moving_the_alias_starts_a_rollout_that_must_pass_its_gates() {
    let mut world = serving_one("");
    world.version("2", "READY");
    world.alias("champion", Some("2"));
    assert_eq!(
        world.settle(),
        [
            "observe champion Some(\"1\")->Some(\"2\")",
            "register 2",
            "roll out 2",
        ]
    );
    assert_eq!(world.stage("1"), Some(Stage::Production), "users keep 1");
    assert_eq!(world.phase(), Some(Phase::Progressing));
    assert_eq!(
        world
            .writes()
            .iter()
            .filter(|w| matches!(w, WriteBack::Alias { .. }))
            .count(),
        0
    );
    world.decide(Decision::Promote);
    assert_eq!(world.stage("2"), Some(Stage::Production));
    assert_eq!(world.settle(), Vec::<String>::new());
}

#[test]
fn with_promote_the_new_champion_is_promoted_in_one_change() {
    let mut world = serving_one("on_production_change = \"promote\"\n");
    world.version("2", "READY");
    world.alias("champion", Some("2"));
    assert_eq!(&world.settle()[1..], ["register 2", "2 to production"]);
    assert_eq!(world.stage("1"), Some(Stage::Archived));
}

#[test]
fn a_failed_rollout_is_not_retried_and_the_alias_is_written_back() {
    let mut world = serving_one("");
    world.version("2", "READY");
    world.alias("champion", Some("2"));
    world.settle();
    world.decide(failure());
    assert_eq!(world.phase(), Some(Phase::RolledBack));
    assert_eq!(world.settle(), Vec::<String>::new(), "not rolled out again");
    let writes = world.writes();
    assert_eq!(
        writes[0],
        WriteBack::Alias {
            alias: "champion".into(),
            version: "1".into()
        }
    );
    let tag = |key: &str| {
        writes.iter().find_map(|w| match w {
            WriteBack::Tag {
                version,
                key: k,
                value,
            } if version == "2" && k == key => Some(value.clone()),
            _ => None,
        })
    };
    assert_eq!(tag(ROLLOUT_TAG).as_deref(), Some("rolled_back"));
    let reason = tag(ROLLOUT_REASON_TAG).unwrap();
    assert!(
        reason.contains("error_rate") && reason.contains("0.0100"),
        "{reason}"
    );
    let (_, waiting) = world.states();
    assert!(waiting.unwrap().contains("rolled_back"));

    // MLflow shows the write: the alias is back on 1, and 2 leaves staging.
    world.alias("champion", Some("1"));
    assert_eq!(
        world.settle(),
        ["observe champion Some(\"2\")->Some(\"1\")", "2 to archived"]
    );
    // Moving the alias to 2 again is a new release: a rollout, not a rollback.
    world.alias("champion", Some("2"));
    assert_eq!(&world.settle()[1..], ["2 to staging", "roll out 2"]);
}

#[test]
fn a_person_moving_the_alias_during_a_rollout_aborts_it_then_it_is_followed() {
    let mut world = serving_one("");
    world.version("2", "READY");
    world.version("3", "READY");
    world.alias("champion", Some("2"));
    world.settle();
    world.alias("champion", Some("3"));
    assert_eq!(
        world.settle(),
        [
            "observe champion Some(\"2\")->Some(\"3\")",
            "rollout abort",
            "register 3",
            "roll out 3",
            "2 to archived",
        ]
    );
    let rollout = world.model().rollout.unwrap();
    assert_eq!(rollout.candidate, "3");
}

#[test]
fn stagegate_changes_are_written_back_and_not_undone() {
    let mut world = serving_one("on_production_change = \"promote\"\n");
    world.version("2", "READY");
    world.alias("champion", Some("2"));
    world.settle();
    // `ctl rollback` puts 1 back.
    let rollback = Command::Rollback {
        model: "fraud".into(),
        to_version: None,
        reason: "bad answers".into(),
        force: true,
    };
    world.apply(&rollback, "alice");
    assert_eq!(world.stage("1"), Some(Stage::Production));
    assert_eq!(
        world.settle(),
        Vec::<String>::new(),
        "2 is not promoted again"
    );
    assert_eq!(
        world.writes()[0],
        WriteBack::Alias {
            alias: "champion".into(),
            version: "1".into()
        }
    );
    // Going back to a version that served production is a rollback, at once.
    world.alias("champion", Some("1"));
    world.settle();
    world.alias("champion", Some("2"));
    assert_eq!(&world.settle()[1..], ["rollback to Some(\"2\")"]);
}

#[test]
fn a_version_that_cannot_be_served_waits_and_says_why() {
    let mut world = serving_one("");
    world.version("2", "PENDING_REGISTRATION");
    world.version("3", "READY").tags.clear();
    world.alias("champion", Some("2"));
    world.alias("challenger", Some("3"));
    let done = world.settle();
    assert_eq!(done.len(), 2, "only the observations: {done:?}");
    let (states, waiting) = world.states();
    let state = |v: &str| states.iter().find(|s| s.version == v).unwrap().clone();
    assert!(!state("2").servable);
    assert!(state("2").reason.unwrap().contains("PENDING_REGISTRATION"));
    assert!(state("3").reason.unwrap().contains("stagegate.endpoints"));
    assert_eq!(state("3").named_by, ["challenger"]);
    assert!(waiting.unwrap().contains("cannot be served"));
    // Nothing is written over what a person asked for.
    assert!(
        world
            .writes()
            .iter()
            .all(|w| !matches!(w, WriteBack::Alias { .. }))
    );

    world.version("2", "READY");
    assert_eq!(world.settle(), ["register 2", "roll out 2"]);
}

#[test]
fn staging_aliases_register_versions_and_retire_them() {
    let mut world = serving_one("endpoint_template = \"http://fraud-v{version}:8080\"\n");
    world.version("4", "READY").tags.clear();
    world.alias("challenger", Some("4"));
    assert_eq!(&world.settle()[1..], ["register 4"]);
    assert_eq!(
        world.model().version("4").unwrap().endpoints[0].to_string(),
        "http://fraud-v4:8080"
    );
    world.alias("challenger", None);
    assert_eq!(
        world.settle(),
        ["observe challenger Some(\"4\")->None", "4 to archived"]
    );
}

#[test]
fn an_emptied_production_alias_is_journaled_and_not_recreated() {
    let mut world = serving_one("");
    world.alias("champion", None);
    assert_eq!(world.settle(), ["observe champion Some(\"1\")->None"]);
    assert_eq!(world.stage("1"), Some(Stage::Production), "1 keeps serving");
    assert!(
        world
            .writes()
            .iter()
            .all(|w| !matches!(w, WriteBack::Alias { .. }))
    );
}

#[test]
fn legacy_stages_name_the_newest_production_version_and_are_written_back() {
    let mut world = World::stages();
    world.version("1", "READY").stage = "Production".into();
    world.version("2", "READY").stage = "Staging".into();
    assert_eq!(
        world.settle(),
        [
            "observe Production None->Some(\"1\")",
            "observe Staging/2 None->Some(\"2\")",
            "register 1",
            "1 to production",
            "register 2",
        ]
    );
    // Two versions in Production: the one moved there last is meant.
    let v3 = world.version("3", "READY");
    v3.stage = "Production".into();
    v3.updated_ms = Some(5);
    assert_eq!(
        world.settle(),
        [
            "observe Production Some(\"1\")->Some(\"3\")",
            "register 3",
            "roll out 3"
        ]
    );
    world.decide(failure());
    assert_eq!(
        world.writes()[0],
        WriteBack::Stage {
            version: "1".into(),
            stage: "Production".into()
        }
    );
}

fn rollback_to(version: &str) -> Command {
    Command::Rollback {
        model: "fraud".into(),
        to_version: Some(version.into()),
        reason: "by hand".into(),
        force: true,
    }
}

#[test]
fn a_write_back_seen_again_is_not_taken_for_a_person_s_change() {
    let mut world = serving_one("on_production_change = \"promote\"\n");
    world.version("2", "READY");
    world.alias("champion", Some("2"));
    world.settle();
    world.person(rollback_to("1"));
    world.write_back();
    assert_eq!(world.view.registered.aliases["champion"], "1");
    // Before the next sync sees the write, a person rolls back again.
    world.person(rollback_to("2"));
    assert_eq!(
        world.settle(),
        Vec::<String>::new(),
        "the echo of 1 is not followed"
    );
    assert_eq!(world.stage("2"), Some(Stage::Production));
    assert_eq!(
        world.writes()[0],
        WriteBack::Alias {
            alias: "champion".into(),
            version: "2".into()
        }
    );
    world.write_back();
    assert_eq!(world.settle(), Vec::<String>::new());
    assert_eq!(world.writes(), []);
}

#[test]
fn an_alias_moved_to_a_running_candidate_does_not_start_a_second_rollout() {
    let mut world = serving_one("");
    world.version("2", "READY");
    world.person(Command::Register {
        model: "fraud".into(),
        version: "2".into(),
        endpoints: vec!["http://v2:8080".into()],
        reason: String::new(),
    });
    let plan = world.model().rollout_defaults.clone();
    world.person(Command::StartRollout {
        model: "fraud".into(),
        candidate: "2".into(),
        plan,
        reason: String::new(),
    });
    world.alias("champion", Some("2"));
    assert_eq!(
        world.settle(),
        ["observe champion Some(\"1\")->Some(\"2\")"]
    );
    world.decide(failure());
    assert_eq!(
        world.settle(),
        Vec::<String>::new(),
        "that rollout answered the move"
    );
}

#[test]
fn a_renamed_production_alias_is_the_one_followed() {
    let mut old = serving_one("");
    old.alias("prod", Some("1"));
    let mut world = World::new("production_alias = \"prod\"\n");
    world.ledger = old.ledger.clone();
    world.view = old.view.clone();
    world.alias("champion", None);
    world.settle();
    assert_eq!(world.stage("1"), Some(Stage::Production));
    world.version("2", "READY");
    world.alias("prod", Some("2"));
    assert_eq!(&world.settle()[1..], ["register 2", "roll out 2"]);
    assert_eq!(world.phase(), Some(Phase::Progressing));
}

#[test]
fn an_emptied_alias_leaves_a_running_rollout_alone() {
    let mut world = serving_one("");
    world.version("2", "READY");
    world.alias("champion", Some("2"));
    world.settle();
    world.alias("champion", None);
    assert_eq!(world.settle(), ["observe champion Some(\"2\")->None"]);
    assert_eq!(world.phase(), Some(Phase::Progressing));
}

#[test]
fn a_version_registered_by_hand_is_not_retired() {
    let mut world = serving_one("");
    world.person(Command::Register {
        model: "fraud".into(),
        version: "9".into(),
        endpoints: vec!["http://v9:8080".into()],
        reason: String::new(),
    });
    assert_eq!(world.settle(), Vec::<String>::new());
    assert_eq!(world.stage("9"), Some(Stage::Staging));
}
