//! The control plane across restarts, reloads and concurrent changes.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{FakeUpstream, admin, gateway_from_file, one_model, post};
use http::{Method, StatusCode};
use stagegate::registry::{Command, Stage};

fn config(urls: &[String; 3]) -> String {
    one_model(
        "",
        &[
            ("1", "archived", &[&urls[0]]),
            ("2", "production", &[&urls[1]]),
            ("3", "staging", &[&urls[2]]),
        ],
    )
}

async fn upstreams() -> ([FakeUpstream; 3], [String; 3]) {
    let ups = [
        FakeUpstream::start("v1").await,
        FakeUpstream::start("v2").await,
        FakeUpstream::start("v3").await,
    ];
    let urls = [ups[0].url(), ups[1].url(), ups[2].url()];
    (ups, urls)
}

fn promote(version: &str) -> Command {
    Command::Transition {
        model: "fraud".into(),
        version: version.into(),
        to: Stage::Production,
        reason: String::new(),
    }
}

fn production(gateway: &stagegate::gateway::RunningGateway) -> Option<String> {
    let table = gateway.published().load();
    table
        .catalog()
        .model("fraud")?
        .production()
        .map(|v| v.version.clone())
}

#[tokio::test]
async fn acknowledged_changes_survive_a_restart_and_a_torn_tail() {
    let (_ups, urls) = upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let first = common::gateway_in(&config(&urls), dir.path()).await;
    first
        .registry()
        .change(promote("3"), "tester")
        .await
        .unwrap();
    first.shutdown().await;

    // A crash mid-append leaves half a line.
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("journal.jsonl"))
        .unwrap();
    journal
        .write_all(br#"{"revision":2,"time":"2026-"#)
        .unwrap();
    drop(journal);

    let second = common::gateway_in(&config(&urls), dir.path()).await;
    assert_eq!(production(&second).as_deref(), Some("3"));
    let routed = post(
        &format!("http://{}/v2/models/fraud/infer", second.data_addr()),
        &[],
    )
    .await;
    assert_eq!(routed.header("x-stagegate-version"), "3");
    // Appends continue after the repaired tail.
    second
        .registry()
        .change(
            Command::Rollback {
                model: "fraud".into(),
                to_version: None,
                reason: String::new(),
                force: false,
            },
            "tester",
        )
        .await
        .unwrap();
    second.shutdown().await;
    let third = common::gateway_in(&config(&urls), dir.path()).await;
    assert_eq!(production(&third).as_deref(), Some("2"));
    // Three seeds, a promotion and a rollback.
    assert_eq!(third.published().load().catalog().ledger.revision, 5);
}

#[tokio::test]
async fn a_change_decided_on_an_older_revision_is_refused_as_stale() {
    let (_ups, urls) = upstreams().await;
    let gateway = common::gateway(&config(&urls)).await;
    let registry = gateway.registry();
    let seen = gateway.published().load().catalog().ledger.revision;
    registry.change(promote("3"), "alice").await.unwrap();
    let stale = registry
        .change_at(promote("1"), "sync", Some(seen))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), "stale_state", "{stale}");
    assert!(stale.to_string().contains("decide again"), "{stale}");
    let current = gateway.published().load().catalog().ledger.revision;
    let record = registry
        .change_at(
            Command::Transition {
                model: "fraud".into(),
                version: "2".into(),
                to: Stage::Staging,
                reason: String::new(),
            },
            "sync",
            Some(current),
        )
        .await
        .unwrap();
    assert_eq!(record.revision, current + 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_second_gateway_on_the_same_state_dir_is_refused() {
    let (_ups, urls) = upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let _first = common::gateway_in(&config(&urls), dir.path()).await;
    let Err(error) = common::try_gateway_in(&config(&urls), dir.path()).await else {
        panic!("the second gateway must not start");
    };
    assert!(
        error
            .to_string()
            .contains("in use by another stagegate process"),
        "{error}"
    );
}

#[tokio::test]
async fn a_non_loopback_admin_listener_needs_a_token() {
    let (_ups, urls) = upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = stagegate::config::Config::parse(&config(&urls), "t").unwrap();
    config.server.state_dir = dir.path().to_path_buf();
    let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exposed = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let Err(error) = stagegate::gateway::start_on(&config, data, exposed).await else {
        panic!("an exposed admin listener without a token must be refused");
    };
    assert!(
        error
            .to_string()
            .contains("not a loopback address and no admin token"),
        "{error}"
    );
}

#[tokio::test]
async fn concurrent_transitions_keep_exactly_one_production_version() {
    let ups: Vec<FakeUpstream> = futures_join(8).await;
    let mut versions = vec![("1", "production", vec![ups[0].url()])];
    let ids: Vec<String> = (2..=8).map(|i| i.to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        versions.push((id.as_str(), "staging", vec![ups[i + 1].url()]));
    }
    let borrowed: Vec<(&str, &str, Vec<&str>)> = versions
        .iter()
        .map(|(v, s, e)| (*v, *s, e.iter().map(String::as_str).collect()))
        .collect();
    let specs: Vec<(&str, &str, &[&str])> = borrowed
        .iter()
        .map(|(v, s, e)| (*v, *s, e.as_slice()))
        .collect();
    let gateway = common::gateway(&one_model("", &specs)).await;

    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (router, watching) = (Arc::clone(gateway.published()), Arc::clone(&watching));
        tokio::spawn(async move {
            let mut tables = 0;
            while watching.load(Ordering::Acquire) {
                let table = router.load();
                let model = table.catalog().model("fraud").unwrap();
                let productions = model
                    .versions
                    .iter()
                    .filter(|v| v.stage == Stage::Production)
                    .count();
                assert_eq!(productions, 1, "revision {}", table.revision());
                assert!(table.model("fraud").unwrap().production().is_some());
                tables += 1;
                tokio::task::yield_now().await;
            }
            tables
        })
    };
    let changes: Vec<_> = ids
        .iter()
        .cycle()
        .take(40)
        .map(|id| {
            let registry = gateway.registry().clone();
            let command = if id.as_str() < "5" {
                promote(id)
            } else {
                Command::Rollback {
                    model: "fraud".into(),
                    to_version: None,
                    reason: String::new(),
                    force: true,
                }
            };
            tokio::spawn(async move { registry.change(command, "racer").await })
        })
        .collect();
    let mut applied = 0;
    for change in changes {
        if change.await.unwrap().is_ok() {
            applied += 1;
        }
    }
    watching.store(false, Ordering::Release);
    assert!(watcher.await.unwrap() > 0);
    assert!(applied > 0);
    // Eight seeds, then the changes that were allowed.
    assert_eq!(
        gateway.published().load().catalog().ledger.revision,
        8 + applied
    );
}

async fn futures_join(n: usize) -> Vec<FakeUpstream> {
    let mut ups = Vec::with_capacity(n);
    for i in 0..n {
        ups.push(FakeUpstream::start(&format!("v{}", i + 1)).await);
    }
    ups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_returns_every_new_request_goes_to_the_restored_version() {
    let (ups, urls) = upstreams().await;
    let gateway = common::gateway(&config(&urls)).await;
    gateway
        .registry()
        .change(promote("3"), "tester")
        .await
        .unwrap();
    let url = common::infer_url(&gateway);

    let rolled_back = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (url, rolled_back, stop) =
                (url.clone(), Arc::clone(&rolled_back), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = common::client();
                let (mut after, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Acquire) {
                    let started_after = rolled_back.load(Ordering::Acquire);
                    let answer = common::send(&client, Method::POST, &url, &[], "{}").await;
                    let version = answer.header("x-stagegate-version").to_string();
                    if answer.status != StatusCode::OK {
                        failures.push(answer.status);
                    }
                    if started_after {
                        assert_eq!(
                            version, "2",
                            "a request started after the rollback returned went to {version}"
                        );
                        after += 1;
                    }
                }
                (after, failures)
            })
        })
        .collect();
    while ups[2].received().len() < 20 {
        tokio::task::yield_now().await;
    }
    let rollback = Command::Rollback {
        model: "fraud".into(),
        to_version: None,
        reason: "bad release".into(),
        force: false,
    };
    let record = gateway.registry().change(rollback, "oncall").await.unwrap();
    rolled_back.store(true, Ordering::Release);
    assert_eq!(record.version, "2");
    let restored_before = ups[1].received().len();
    while ups[1].received().len() < restored_before + 50 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Release);
    for client in clients {
        let (after, failures) = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        assert!(after > 0);
    }
    let metrics = common::metrics(&gateway).await;
    assert!(
        metrics.contains(r#"stagegate_rollbacks_total{model="fraud"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn rollback_refuses_an_unhealthy_target_unless_forced() {
    let (_ups, mut urls) = upstreams().await;
    urls[1] = format!("http://{}", common::refused_addr().await);
    let gateway = common::gateway(&config(&urls)).await;
    let rollback = |force| Command::Rollback {
        model: "fraud".into(),
        to_version: Some("1".into()),
        reason: String::new(),
        force,
    };
    // Version 1's server is up; roll back to it, then try to roll back to the dead version 2.
    gateway
        .registry()
        .change(rollback(false), "t")
        .await
        .unwrap();
    let to_dead = |force| Command::Rollback {
        model: "fraud".into(),
        to_version: Some("2".into()),
        reason: String::new(),
        force,
    };
    let error = gateway
        .registry()
        .change(to_dead(false), "t")
        .await
        .unwrap_err();
    assert_eq!(error.code(), "target_unhealthy");
    assert!(
        error.to_string().contains("use force to override"),
        "{error}"
    );
    assert_eq!(production(&gateway).as_deref(), Some("1"));
    gateway.registry().change(to_dead(true), "t").await.unwrap();
    assert_eq!(production(&gateway).as_deref(), Some("2"));
}

#[tokio::test]
async fn reload_applies_a_valid_file_and_keeps_the_old_table_on_errors() {
    let (_ups, urls) = upstreams().await;
    let (gateway, path) = gateway_from_file(&config(&urls)).await;
    let original = std::fs::read_to_string(&path).unwrap();
    let revision = gateway.published().load().revision();

    std::fs::write(
        &path,
        original
            .replace("version = \"3\"", "version = \"3\"\nbogus = 1")
            .replace("max", ""),
    )
    .unwrap();
    let broken = admin(&gateway, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(
        (broken.status, broken.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
    );
    assert!(
        broken.json()["error"].as_str().unwrap().contains("bogus"),
        "{:?}",
        broken.json()
    );

    let invalid = original
        .replace(&urls[2], "ftp://nowhere")
        .replace("stage = \"archived\"", "stage = \"retired\"");
    std::fs::write(&path, invalid).unwrap();
    let answer = admin(&gateway, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors: Vec<String> = answer.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "models[0].versions[0].stage",
            "models[0].versions[2].endpoints[0]"
        ]
    );
    assert_eq!(
        gateway.published().load().revision(),
        revision,
        "the old table stays"
    );

    let moved = FakeUpstream::start("v3-moved").await;
    std::fs::write(&path, original.replace(&urls[2], &moved.url())).unwrap();
    let applied = admin(&gateway, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(applied.status, StatusCode::OK, "{:?}", applied.json());
    assert_eq!(applied.json()["result"], "applied");
    let pinned = post(
        &format!(
            "http://{}/v2/models/fraud/versions/3/infer",
            gateway.data_addr()
        ),
        &[],
    )
    .await;
    assert_eq!(pinned.json()["server"], "v3-moved");

    std::fs::write(
        &path,
        original.replace("[server]\n", "[server]\nlisten = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    let fixed = admin(&gateway, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(
        (fixed.status, fixed.code().as_str()),
        (StatusCode::CONFLICT, "not_reloadable")
    );
    assert!(
        fixed.json()["error"]
            .as_str()
            .unwrap()
            .contains("server.listen")
    );

    let metrics = common::metrics(&gateway).await;
    assert!(
        metrics.contains(r#"stagegate_config_reloads_total{result="error"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"stagegate_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_writer_compacts_the_journal_into_a_snapshot_and_loses_nothing() {
    use stagegate::registry::store::FileStore;
    use stagegate::registry::{Catalog, Registry, Writer};

    let (_ups, urls) = upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let config = stagegate::config::Config::parse(&config(&urls), "t").unwrap();
    let (store, loaded) = FileStore::open(dir.path()).unwrap();
    let ledger = Arc::new(loaded.ledger);
    let catalog = Catalog {
        models: config.models.clone(),
        ledger: Arc::clone(&ledger),
    };
    let published = Arc::new(stagegate::registry::Published::new(
        Arc::new(catalog),
        stagegate::telemetry::Telemetry::new(),
    ));
    let (registry, writer) = Registry::spawn(Writer {
        config,
        ledger,
        store: Box::new(store),
        published,
        probe_timeout: std::time::Duration::from_secs(1),
        reload_hook: None,
        compact_after: 3,
    });
    for stage in [
        Stage::Archived,
        Stage::Staging,
        Stage::Archived,
        Stage::Staging,
        Stage::Archived,
        Stage::Staging,
        Stage::Archived,
    ] {
        let change = Command::Transition {
            model: "fraud".into(),
            version: "3".into(),
            to: stage,
            reason: String::new(),
        };
        registry.change(change, "t").await.unwrap();
    }
    writer.stop().await;
    assert!(dir.path().join("snapshot.json").exists());
    let journal = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
    assert_eq!(
        journal.lines().count(),
        1,
        "7 changes, compacted after the 3rd and the 6th"
    );
    let (_, reloaded) = FileStore::open(dir.path()).unwrap();
    assert_eq!(reloaded.ledger.revision, 7);
    assert_eq!(reloaded.ledger.stage("fraud", "3"), Some(Stage::Archived));
    assert_eq!(reloaded.ledger.model("fraud").unwrap().history.len(), 7);
}
