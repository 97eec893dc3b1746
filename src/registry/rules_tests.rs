//! Every transition rule, allowed and refused.

use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::registry::merge::merge;

/// Model "m": version 1 archived, 2 production, 3 staging, 4 staging.
fn models() -> Vec<ModelSpec> {
    let mut text = String::from("[[models]]\nname = \"m\"\n");
    for (id, stage) in [
        ("1", "archived"),
        ("2", "production"),
        ("3", "staging"),
        ("4", "staging"),
    ] {
        text.push_str(&format!(
            "[[models.versions]]\nversion = \"{id}\"\nstage = \"{stage}\"\nendpoints = [\"http://v{id}:1\"]\n"
        ));
    }
    Config::parse(&text, "test").unwrap().models
}

fn transition(version: &str, to: Stage) -> Command {
    Command::Transition {
        model: "m".into(),
        version: version.into(),
        to,
        reason: "test".into(),
    }
}

fn rollback(to_version: Option<&str>) -> Command {
    Command::Rollback {
        model: "m".into(),
        to_version: to_version.map(str::to_string),
        reason: String::new(),
        force: false,
    }
}

/// Applies a command to (models, ledger) the way the writer does.
fn apply(
    models: &mut Vec<ModelSpec>,
    ledger: &mut Ledger,
    config: &[ModelSpec],
    command: &Command,
) -> Result<Record, RegistryError> {
    let record = plan(models, ledger, command, "tester")?;
    ledger.apply(Arc::new(record.clone())).unwrap();
    *models = merge(config, ledger).models;
    Ok(record)
}

fn stages(models: &[ModelSpec]) -> Vec<(&str, Stage)> {
    models[0]
        .versions
        .iter()
        .map(|v| (v.version.as_str(), v.stage))
        .collect()
}

#[test]
fn promotion_archives_the_old_production_version_in_the_same_record() {
    let config = models();
    let (mut current, mut ledger) = (config.clone(), Ledger::default());
    let record = apply(
        &mut current,
        &mut ledger,
        &config,
        &transition("3", Stage::Production),
    )
    .unwrap();
    assert_eq!(
        (record.revision, record.actor.as_str(), record.from),
        (1, "tester", Some(Stage::Staging))
    );
    assert_eq!(
        record.also,
        [Move {
            version: "2".into(),
            from: Stage::Production,
            to: Stage::Archived
        }]
    );
    assert_eq!(
        stages(&current),
        [
            ("1", Stage::Archived),
            ("2", Stage::Archived),
            ("3", Stage::Production),
            ("4", Stage::Staging)
        ]
    );
}

#[test]
fn allowed_transitions() {
    for (version, to) in [
        ("3", Stage::Production),
        ("3", Stage::Archived),
        ("2", Stage::Archived),
        ("1", Stage::Staging),
    ] {
        let record = plan(&models(), &Ledger::default(), &transition(version, to), "t");
        assert!(record.is_ok(), "{version} -> {to}: {record:?}");
    }
}

#[test]
fn refused_transitions_say_why() {
    let cases = [
        ("1", Stage::Production, "only through a rollback"),
        ("2", Stage::Staging, "to take a version out of production"),
        ("2", Stage::Production, "already production"),
        ("3", Stage::Staging, "already staging"),
        ("1", Stage::Archived, "already archived"),
        ("9", Stage::Staging, "has no version \"9\""),
    ];
    for (version, to, why) in cases {
        let error = plan(&models(), &Ledger::default(), &transition(version, to), "t").unwrap_err();
        assert!(
            error.to_string().contains(why),
            "{version} -> {to}: {error}"
        );
        assert!(error.status().is_client_error());
    }
    let unknown_model = Command::Transition {
        model: "x".into(),
        version: "1".into(),
        to: Stage::Staging,
        reason: String::new(),
    };
    assert_eq!(
        plan(&models(), &Ledger::default(), &unknown_model, "t")
            .unwrap_err()
            .code(),
        "unknown_model"
    );
}

#[test]
fn registration_lands_in_staging_and_checks_its_input() {
    let register = |version: &str, endpoints: &[&str]| Command::Register {
        model: "m".into(),
        version: version.into(),
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        grpc_endpoints: vec![],
        upstream_model: None,
        reason: String::new(),
    };
    let record = plan(
        &models(),
        &Ledger::default(),
        &register("5", &["http://v5:1/"]),
        "t",
    )
    .unwrap();
    assert_eq!(
        (record.action, record.from, record.to.unwrap()),
        (Action::Register, None, Stage::Staging)
    );
    assert_eq!(record.endpoints, ["http://v5:1"]);
    for (command, code) in [
        (register("3", &["http://v5:1"]), "already_registered"),
        (register("5", &[]), "invalid_request"),
        (register("5", &["ftp://x"]), "invalid_request"),
        (
            register("5", &["http://a:1", "http://a:1"]),
            "invalid_request",
        ),
        (register("a/b", &["http://a:1"]), "invalid_request"),
    ] {
        assert_eq!(
            plan(&models(), &Ledger::default(), &command, "t")
                .unwrap_err()
                .code(),
            code,
            "{command:?}"
        );
    }
}

#[test]
fn grpc_endpoints_and_the_upstream_model_are_registered_beside_the_http_ones_and_checked() {
    let register = |grpc: &[&str]| Command::Register {
        model: "m".into(),
        version: "5".into(),
        endpoints: vec!["http://v5:8000".into()],
        grpc_endpoints: grpc.iter().map(|e| e.to_string()).collect(),
        upstream_model: Some("meta-llama/Llama-3.1-8B-Instruct".into()),
        reason: String::new(),
    };
    let record = plan(
        &models(),
        &Ledger::default(),
        &register(&["http://v5:8001/"]),
        "t",
    )
    .unwrap();
    assert_eq!(record.grpc_endpoints, ["http://v5:8001"]);
    assert_eq!(
        record.upstream_model.as_deref(),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
    let mut ledger = Ledger::default();
    ledger
        .apply(Arc::new(Record {
            revision: 1,
            ..record
        }))
        .unwrap();
    assert_eq!(
        ledger.model("m").unwrap().versions["5"].grpc_endpoints,
        ["http://v5:8001"]
    );
    assert_eq!(
        ledger.model("m").unwrap().versions["5"]
            .upstream_model
            .as_deref(),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
    for bad in [&["ftp://x"][..], &["http://a:1", "http://a:1"]] {
        let refused = plan(&models(), &Ledger::default(), &register(bad), "t").unwrap_err();
        assert_eq!(refused.code(), "invalid_request", "{bad:?}");
        assert!(refused.to_string().contains("grpc_endpoints"), "{refused}");
    }
    let unservable = Command::Register {
        model: "m".into(),
        version: "6".into(),
        endpoints: vec!["http://v6:8000".into()],
        grpc_endpoints: vec![],
        upstream_model: Some("two\nlines".into()),
        reason: String::new(),
    };
    let refused = plan(&models(), &Ledger::default(), &unservable, "t").unwrap_err();
    assert!(refused.to_string().contains("upstream_model"), "{refused}");
}

#[test]
fn rollback_restores_the_previous_production_version() {
    let config = models();
    let (mut current, mut ledger) = (config.clone(), Ledger::default());
    apply(
        &mut current,
        &mut ledger,
        &config,
        &transition("3", Stage::Production),
    )
    .unwrap();
    let record = apply(&mut current, &mut ledger, &config, &rollback(None)).unwrap();
    assert_eq!(
        (record.action, record.version.as_str()),
        (Action::Rollback, "2")
    );
    assert_eq!(record.also[0].version, "3");
    assert_eq!(
        stages(&current)[1..3],
        [("2", Stage::Production), ("3", Stage::Archived)]
    );
    // A second rollback undoes the first.
    let again = apply(&mut current, &mut ledger, &config, &rollback(None)).unwrap();
    assert_eq!(again.version, "3");
}

#[test]
fn rollback_to_a_named_archived_version() {
    let record = plan(&models(), &Ledger::default(), &rollback(Some("1")), "t").unwrap();
    assert_eq!(
        (record.version.as_str(), record.also[0].version.as_str()),
        ("1", "2")
    );
}

#[test]
fn refused_rollbacks() {
    let none_on_record = plan(&models(), &Ledger::default(), &rollback(None), "t").unwrap_err();
    assert!(
        none_on_record
            .to_string()
            .contains("no earlier production version"),
        "{none_on_record}"
    );
    let staging = plan(&models(), &Ledger::default(), &rollback(Some("3")), "t").unwrap_err();
    assert!(
        staging
            .to_string()
            .contains("promote it with a transition instead"),
        "{staging}"
    );
    let production = plan(&models(), &Ledger::default(), &rollback(Some("2")), "t").unwrap_err();
    assert_eq!(production.code(), "no_rollback_target");
    let unknown = plan(&models(), &Ledger::default(), &rollback(Some("9")), "t").unwrap_err();
    assert_eq!(unknown.code(), "unknown_version");
}

#[test]
fn exactly_one_production_version_after_any_sequence() {
    let config = models();
    let (mut current, mut ledger) = (config.clone(), Ledger::default());
    let commands = [
        transition("3", Stage::Production),
        transition("4", Stage::Production),
        rollback(None),
        transition("1", Stage::Staging),
        transition("1", Stage::Production),
        rollback(Some("3")),
    ];
    for command in &commands {
        apply(&mut current, &mut ledger, &config, command).unwrap();
        let productions = current[0]
            .versions
            .iter()
            .filter(|v| v.stage == Stage::Production)
            .count();
        assert_eq!(productions, 1, "after {command:?}: {:?}", stages(&current));
    }
    assert_eq!(ledger.revision, commands.len() as u64);
}
