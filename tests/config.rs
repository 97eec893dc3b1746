//! Configuration: every invalid value is reported at once with its field path, and
//! the examples in `config/` are valid.

use stagegate::config::{Config, ConfigError, FieldError, ShadowPriority};

fn field_errors(text: &str) -> Vec<String> {
    match Config::parse(text, "test") {
        Err(error @ ConfigError::Invalid { .. }) => error
            .field_errors()
            .iter()
            .map(FieldError::to_string)
            .collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

/// Each expected message starts one of `errors`, and there are no others.
fn assert_exactly(errors: &[String], expected: &[&str]) {
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn every_error_is_reported_with_its_field_path() {
    let text = r#"
        [server]
        listen = "localhost"
        header_read_timeout_ms = 0
        connect_timeout_ms = 0
        request_timeout_ms = 0
        drain_timeout_ms = 0
        max_body_bytes = 0
        max_buffered_body_bytes = 0
        max_concurrent_requests = 0
        worker_threads = 0
        shadow_worker_threads = 2000
        shadow_priority = "low"
        shadow_cpu_share = 0

        [[models]]
        name = "fraud"
          [[models.versions]]
          version = "1"
          stage = "production"
          endpoints = ["http://127.0.0.1:9001"]
          [[models.versions]]
          version = "1"
          stage = "production"
          endpoints = []
          [[models.versions]]
          version = "3"
          stage = "canary"
          endpoints = ["127.0.0.1:9003", "https://secure:443", "http://ok:1", "http://ok:1/"]

        [[models]]
        name = "fraud"
        health_path = "ready"

        [[models]]
        name = "bad/name"
    "#;
    let errors = field_errors(text);
    let expected = [
        "server.listen: not a socket address: \"localhost\"",
        "server.worker_threads: must be between 1 and 1024, got 0",
        "server.shadow_worker_threads: must be between 1 and 1024, got 2000",
        "server.shadow_priority: unknown priority \"low\" (expected normal or idle)",
        "server.shadow_cpu_share: must be a share of one core greater than 0 and at most 1025 (the shadow threads and the comparison thread), got 0",
        "server.header_read_timeout_ms: must be greater than 0",
        "server.connect_timeout_ms: must be greater than 0",
        "server.request_timeout_ms: must be greater than 0",
        "server.drain_timeout_ms: must be greater than 0",
        "server.max_body_bytes: must be greater than 0",
        "server.max_buffered_body_bytes: must be greater than 0",
        "server.max_concurrent_requests: must be greater than 0",
        "models[0].versions[1].version: duplicate version \"1\" of model \"fraud\"",
        "models[0].versions[1].endpoints: needs at least one endpoint URL",
        "models[0].versions[1].stage: model \"fraud\" already has production version \"1\"",
        "models[0].versions[2].stage: unknown stage \"canary\"",
        "models[0].versions[2].endpoints[0]: not an http URL",
        "models[0].versions[2].endpoints[1]: https endpoints are not supported yet",
        "models[0].versions[2].endpoints[3]: duplicate endpoint http://ok:1",
        "models[1].name: duplicate model \"fraud\"",
        "models[1].health_path: must start with '/'",
        "models[2].name: invalid name \"bad/name\"",
    ];
    assert_exactly(&errors, &expected);
}

#[test]
fn unknown_keys_and_wrong_types_are_syntax_errors_with_a_location() {
    for (text, needle) in [
        (
            "[server]\nlisten_addr = \"x\"\n",
            "unknown field `listen_addr`",
        ),
        ("[server]\nmax_body_bytes = \"big\"\n", "max_body_bytes"),
        (
            "[[models]]\nname = \"m\"\nshadow_percent = 1\n",
            "unknown field `shadow_percent`",
        ),
        ("[[models]\n", "line 1, column 10"),
    ] {
        match Config::parse(text, "file.toml") {
            Err(ConfigError::Syntax { origin, message }) => {
                assert_eq!(origin, "file.toml");
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn versions_may_be_written_as_integers_and_defaults_fill_the_rest() {
    let text = "[[models]]\nname = \"m\"\n[[models.versions]]\nversion = 7\nstage = \"production\"\nendpoints = [\"http://h:1\"]\n";
    let config = Config::parse(text, "t").unwrap();
    assert_eq!(config.models[0].versions[0].version, "7");
    assert_eq!(config.models[0].health_path, "/v2/health/ready");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.server.limits.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(
        config.server.limits.max_buffered_body_bytes,
        256 * 1024 * 1024
    );
    let set = Config::parse("[server]\nmax_buffered_body_bytes = 1048576\n", "t").unwrap();
    assert_eq!(set.server.limits.max_buffered_body_bytes, 1 << 20);
}

#[test]
fn shadow_threads_default_to_the_worker_count_at_normal_priority_within_a_fifth_of_a_core() {
    let defaulted = Config::parse("[server]\nworker_threads = 3\n", "t").unwrap();
    let threads = defaulted.server.shadow_threads;
    assert_eq!(threads.count, 3);
    assert_eq!(threads.priority, ShadowPriority::Normal);
    assert_eq!(threads.cpu_share.get(), 0.2);
    let text = "[server]\nworker_threads = 3\nshadow_worker_threads = 1\nshadow_priority = \"idle\"\nshadow_cpu_share = 1.5\n";
    let set = Config::parse(text, "t").unwrap();
    assert_eq!(set.server.shadow_threads.count, 1);
    assert_eq!(set.server.shadow_threads.priority, ShadowPriority::Idle);
    assert_eq!(set.server.shadow_threads.cpu_share.get(), 1.5);
    assert_eq!(
        defaulted.unreloadable_changes(&set),
        ["server.shadow_worker_threads, shadow_priority and shadow_cpu_share"]
    );
    // One shadow thread and the comparison thread cannot use more than two cores.
    let errors = field_errors("[server]\nshadow_worker_threads = 1\nshadow_cpu_share = 2.5\n");
    assert_eq!(
        errors,
        [
            "server.shadow_cpu_share: must be a share of one core greater than 0 and at most 2 (the shadow threads and the comparison thread), got 2.5"
        ]
    );
}

#[test]
fn rollout_defaults_hold_statistical_settings_and_every_bad_one_is_named() {
    let model = |rollout: &str| {
        format!(
            "[[models]]\nname = \"m\"\n[[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"http://a:1\"]\n[models.rollout]\n{rollout}"
        )
    };
    let config = Config::parse(
        &model("step_interval_s = 30\nmax_p99_ratio = \"off\"\n"),
        "test",
    )
    .unwrap();
    let plan = &config.models[0].rollout_defaults;
    assert_eq!(
        (
            plan.confidence,
            plan.max_step_duration_s(),
            plan.gates.latency_quantile
        ),
        (0.99, 300.0, 0.5),
        "99% confidence, ten intervals, the median"
    );
    assert_eq!(plan.gates.max_p99_ratio, None, "\"off\" turns the gate off");
    assert_eq!(plan.gates.max_error_rate, Some(0.01));
    assert_eq!(
        plan.gates.max_latency_increase,
        Some(0.5),
        "the median gate is on"
    );
    let set = Config::parse(
        &model("confidence = 0.95\nmax_step_duration_s = 900\nmax_latency_increase = 0.2\nlatency_quantile = 0.9\n"),
        "test",
    )
    .unwrap();
    let plan = &set.models[0].rollout_defaults;
    assert_eq!(
        (
            plan.confidence,
            plan.max_step_duration_s(),
            plan.gates.max_latency_increase,
            plan.gates.latency_quantile
        ),
        (0.95, 900.0, Some(0.2), 0.9)
    );
    let errors = field_errors(&model(
        "step_interval_s = 60\nmax_step_duration_s = 30\nconfidence = 1.5\nlatency_quantile = 0\nmax_latency_increase = -1\nmax_error_rate = 0\n",
    ));
    let unknown = Config::parse(&model("max_p99_ratio = \"none\"\n"), "test").unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("a number, or \"off\" to turn the gate off"),
        "{unknown}"
    );
    for want in [
        "models[0].rollout.max_step_duration_s: must be at least step_interval_s (60), got 30",
        "models[0].rollout.confidence: must be between 0.5 and 0.999999, got 1.5",
        "models[0].rollout.latency_quantile: must be between 0 and 1 (exclusive), got 0",
        "models[0].rollout.max_error_rate: must be greater than 0 and at most 1 (\"off\" turns the gate off), got 0",
        "models[0].rollout.max_latency_increase: must be greater than 0 (\"off\" turns the gate off), got -1",
    ] {
        assert!(
            errors.iter().any(|e| e == want),
            "missing {want:?} in {errors:#?}"
        );
    }
}

#[test]
fn registry_settings_are_checked_and_every_bad_one_is_named() {
    let text = r#"
        [registry]
        kind = "artifactory"
        url = "https://mlflow.internal"
        poll_interval_ms = 0
        token_env = "STAGEGATE_TEST_UNSET_TOKEN"

        [[models]]
        name = "fraud"
          [[models.versions]]
          version = "1"
          stage = "production"
          endpoints = ["http://127.0.0.1:9001"]
          [models.mlflow]
          production_alias = "latest"
          staging_aliases = ["champion", "bad alias"]
          endpoint_template = "http://fraud:8080"
          on_production_change = "yolo"

        [[models]]
        name = "scores"
          [models.mlflow]
          use_stages = true
          staging_aliases = ["challenger"]

        [[models]]
        name = "scores-copy"
          [models.mlflow]
          registered_model = "scores"
    "#;
    let errors = field_errors(text);
    let expected = [
        "models[0].versions: a model that follows MLflow ([models.mlflow]) takes its versions from MLflow",
        "models[0].mlflow.production_alias: alias \"latest\" is reserved by MLflow",
        "models[0].mlflow.staging_aliases: alias \"bad alias\" may only contain",
        "models[0].mlflow.endpoint_template: \"http://fraud:8080\" does not contain {version}",
        "models[0].mlflow.on_production_change: \"yolo\" is not rollout or promote",
        "models[1].mlflow.use_stages: follows MLflow's stages",
        "models[2].mlflow.registered_model: \"scores\" is already followed by model \"scores\"",
        "registry.kind: \"artifactory\" is not a registry kind",
        "registry.url: \"https://mlflow.internal\": https is not supported yet",
        "registry.poll_interval_ms: must be greater than 0",
        "registry.token_env: environment variable STAGEGATE_TEST_UNSET_TOKEN is not set",
    ];
    assert_exactly(&errors, &expected);

    let orphan = "[[models]]\nname = \"fraud\"\n[models.mlflow]\n";
    assert_eq!(
        field_errors(orphan),
        ["models[0].mlflow: needs a [registry] section saying where MLflow is"]
    );
}

#[test]
fn registry_defaults_follow_champion_and_challenger() {
    let text = "[registry]\nkind = \"mlflow\"\nurl = \"http://127.0.0.1:5000/\"\n\
                [[models]]\nname = \"fraud\"\n[models.mlflow]\n";
    let config = Config::parse(text, "test").unwrap_or_else(|e| panic!("{e}"));
    let registry = config.registry.unwrap();
    assert_eq!(registry.url, "http://127.0.0.1:5000");
    assert_eq!(registry.poll_interval.as_millis(), 5000);
    assert!(registry.write_back);
    assert!(registry.webhook_secret.is_none());
    let model = &registry.models[0];
    assert_eq!(model.registered_model, "fraud");
    assert_eq!(
        model.follow,
        stagegate::config::registry::Follow::Aliases {
            production: "champion".into(),
            staging: vec!["challenger".into()],
        }
    );
    assert_eq!(model.endpoints_tag, "stagegate.endpoints");
    assert_eq!(
        model.on_production_change,
        stagegate::config::registry::OnProductionChange::Rollout
    );
}

#[test]
fn listen_and_admin_addresses_must_differ() {
    let errors =
        field_errors("[server]\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n");
    assert_eq!(
        errors,
        ["server.admin_listen: is the same address as server.listen (127.0.0.1:9000)"]
    );
}

#[test]
fn examples_in_the_config_directory_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "only {checked} examples found in {}",
        dir.display()
    );
}

#[test]
fn missing_file_names_the_path() {
    let error = Config::load(std::path::Path::new("/nonexistent/stagegate.toml")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/stagegate.toml"),
        "{error}"
    );
}

mod hostile {
    use proptest::prelude::*;
    use stagegate::config::{Config, ConfigError};

    /// A TOML value of any type, often of the wrong one for its key.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[0-9]{1,20}".prop_map(|n| n),
            "-?[0-9]{1,5}\\.[0-9]{1,5}".prop_map(|f| f),
            any::<bool>().prop_map(|b| b.to_string()),
            "\\PC{0,30}".prop_map(|s| format!("{s:?}")),
            prop::collection::vec("[a-z:/.0-9]{0,12}", 0..4).prop_map(|items| format!("{items:?}")),
            Just("nan".to_string()),
            Just("inf".to_string()),
        ]
    }

    const SERVER_KEYS: [&str; 16] = [
        "listen",
        "admin_listen",
        "worker_threads",
        "shadow_worker_threads",
        "shadow_priority",
        "shadow_cpu_share",
        "state_dir",
        "header_read_timeout_ms",
        "connect_timeout_ms",
        "request_timeout_ms",
        "drain_timeout_ms",
        "max_body_bytes",
        "max_buffered_body_bytes",
        "max_header_bytes",
        "max_concurrent_requests",
        "eject_backoff_ms",
    ];
    const MODEL_SECTIONS: [&str; 4] = ["shadow", "compare", "canary", "rollout"];
    const SECTION_KEYS: [&str; 15] = [
        "percent",
        "versions",
        "timeout_ms",
        "max_in_flight",
        "mode",
        "abs_tol",
        "ignore",
        "label_path",
        "sticky_header",
        "steps",
        "step_interval_s",
        "max_step_duration_s",
        "confidence",
        "latency_quantile",
        "on_failure",
    ];

    fn document() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((prop::sample::select(&SERVER_KEYS[..]), value()), 0..6),
            prop::collection::vec((value(), value(), value(), value()), 0..3),
            prop::collection::vec((prop::sample::select(&MODEL_SECTIONS[..]), prop::sample::select(&SECTION_KEYS[..]), value()), 0..4),
        )
            .prop_map(|(server, versions, sections)| {
                let mut text = String::from("[server]\n");
                for (key, value) in server {
                    text.push_str(&format!("{key} = {value}\n"));
                }
                text.push_str("[[models]]\nname = \"m\"\n");
                for (version, stage, endpoints, limit) in versions {
                    text.push_str(&format!(
                        "[[models.versions]]\nversion = {version}\nstage = {stage}\nendpoints = {endpoints}\nmax_concurrent_requests = {limit}\n"
                    ));
                }
                for (section, key, value) in sections {
                    text.push_str(&format!("[models.{section}]\n{key} = {value}\n"));
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_is_refused_or_accepted_without_a_panic(text in "\\PC{0,200}") {
            let _ = Config::parse(&text, "fuzz");
        }

        #[test]
        fn broken_documents_are_refused_with_messages(text in document()) {
            match Config::parse(&text, "fuzz") {
                Ok(_) => {}
                Err(ConfigError::Invalid { errors, .. }) => {
                    prop_assert!(!errors.is_empty());
                    for error in errors {
                        prop_assert!(!error.path.is_empty() && !error.message.is_empty(), "{error:?}");
                    }
                }
                Err(ConfigError::Syntax { message, .. }) => prop_assert!(!message.is_empty()),
                Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
            }
        }
    }
}

#[test]
fn shadow_methods_compare_paths_and_sticky_headers_are_parsed_when_the_config_is_read() {
    let text = r#"
        [[models]]
        name = "m"
          [[models.versions]]
          version = "1"
          stage = "production"
          endpoints = ["http://h:1"]
        [models.shadow]
        methods = ["post", "PO ST"]
        [models.compare]
        ignore = ["id", "a["]
        label_path = ""
        [models.canary]
        sticky_header = "x user"
    "#;
    assert_exactly(
        &field_errors(text),
        &[
            "models[0].shadow.methods: \"PO ST\" is not an upper-case HTTP method",
            "models[0].compare: bad path \"a[\": unclosed '['",
            "models[0].compare: bad path \"\": empty path",
            "models[0].canary.sticky_header: \"x user\" is not a header name",
        ],
    );
    let valid = text
        .replace("\"PO ST\"", "\"GET\"")
        .replace("\"a[\"", "\"outputs[*]\"")
        .replace("label_path = \"\"", "label_path = \"predictions[*]\"")
        .replace("x user", "X-User");
    let config = Config::parse(&valid, "t").unwrap();
    let model = &config.models[0];
    assert_eq!(model.shadow.methods, ["POST", "GET"]);
    assert_eq!(model.shadow.compare.ignore[1].as_str(), "outputs[*]");
    assert_eq!(model.sticky.header.as_ref().unwrap().to_string(), "x-user");
}

#[test]
fn grpc_endpoints_are_optional_urls_checked_like_endpoints() {
    let text = "[[models]]\nname = \"m\"\n[[models.versions]]\nversion = \"1\"\nstage = \"production\"\n\
        endpoints = [\"http://h:8000\"]\ngrpc_endpoints = [\"http://h:8001\"]\n\
        [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"http://h2:8000\"]\n";
    let config = Config::parse(text, "t").unwrap();
    let versions = &config.models[0].versions;
    assert_eq!(versions[0].grpc_endpoints[0].to_string(), "http://h:8001");
    assert!(versions[1].grpc_endpoints.is_empty(), "gRPC is optional");
    let bad = "[[models]]\nname = \"m\"\n[[models.versions]]\nversion = \"1\"\nstage = \"production\"\n\
        endpoints = [\"http://h:8000\"]\ngrpc_endpoints = [\"grpc://h:8001\", \"http://h:1\", \"http://h:1\"]\n";
    assert_exactly(
        &field_errors(bad),
        &[
            "models[0].versions[0].grpc_endpoints[0]: not an http URL",
            "models[0].versions[0].grpc_endpoints[2]: duplicate endpoint http://h:1",
        ],
    );
}

#[test]
fn an_upstream_model_is_an_optional_served_name() {
    let text = "[[models]]\nname = \"chat\"\n[[models.versions]]\nversion = \"1\"\nstage = \"production\"\n\
        endpoints = [\"http://h:8000\"]\nupstream_model = \"meta-llama/Llama-3.1-8B-Instruct\"\n\
        [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"http://h2:8000\"]\n";
    let config = Config::parse(text, "t").unwrap();
    let versions = &config.models[0].versions;
    assert_eq!(
        versions[0].upstream_model.as_ref().unwrap().as_str(),
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    assert!(versions[1].upstream_model.is_none(), "optional");
    let bad = text.replace("meta-llama/Llama-3.1-8B-Instruct", "");
    assert_exactly(
        &field_errors(&bad),
        &["models[0].versions[0].upstream_model: a served model name has 1-256 characters, not 0"],
    );
}
