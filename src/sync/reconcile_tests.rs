//! The sync's rules, scenario by scenario, in a [`World`] that applies each change
//! as the registry writer would.

use super::*;
use crate::registry::Phase;
use crate::sync::test_world::{World, failure, rollback_to, serving_one};
use crate::sync::write_back::*;

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
        grpc_endpoints: vec![],
        upstream_model: None,
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
        grpc_endpoints: vec![],
        upstream_model: None,
        reason: String::new(),
    });
    assert_eq!(world.settle(), Vec::<String>::new());
    assert_eq!(world.stage("9"), Some(Stage::Staging));
}
