//! Several replicas on one etcd (`[store] kind = "etcd"`), against a real etcd
//! server: a change through one replica is served by the others, and changes
//! racing through different replicas leave one production version and every
//! acknowledged change in the history every replica shows.

mod common;
#[path = "common/etcd_server.rs"]
mod etcd_server;
// Only the fake's start, versions and aliases are used here.
#[allow(dead_code)]
#[path = "common/fake_mlflow.rs"]
mod fake_mlflow;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::changes::{VERSIONS, call, drive, verify};
use common::process::Serve;
use common::{FakeUpstream, TestGateway, admin};
use etcd_server::EtcdServer;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// How long replicas may take to agree: a watch event and one read.
const CONVERGED_WITHIN: Duration = Duration::from_secs(10);
/// The replicas' bound on one etcd call.
const DIAL_TIMEOUT_MS: u64 = 1_000;

fn config(etcd: &EtcdServer, prefix: &str, upstreams: &[FakeUpstream]) -> String {
    let mut text = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\n\
         lease_ttl_s = 2\ndial_timeout_ms = {DIAL_TIMEOUT_MS}\n\n[[models]]\nname = \"fraud\"\n",
        etcd.urls()
    );
    let stages = ["production", "staging", "staging", "staging"];
    for (i, upstream) in upstreams.iter().enumerate() {
        text.push_str(&format!(
            "[[models.versions]]\nversion = \"{}\"\nstage = \"{}\"\nendpoints = [\"{}\"]\n",
            i + 1,
            stages[i],
            upstream.url()
        ));
    }
    text
}

async fn upstreams(n: usize) -> Vec<FakeUpstream> {
    let mut all = Vec::with_capacity(n);
    for i in 1..=n {
        all.push(FakeUpstream::start(&format!("v{i}")).await);
    }
    all
}

async fn replicas(config: &str, n: usize) -> Vec<TestGateway> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(common::gateway(config).await);
    }
    all
}

/// The stages `replica` serves, by version, and its journal revision.
fn served(replica: &TestGateway) -> (Vec<(String, String)>, u64) {
    let catalog = replica.published().load();
    let catalog = catalog.catalog();
    let model = catalog.model("fraud").expect("the model is served");
    let stages = model
        .versions
        .iter()
        .map(|v| (v.version.clone(), v.stage.as_str().to_string()))
        .collect();
    (stages, catalog.ledger.revision)
}

/// Waits until every replica serves what the first one does.
async fn converged(replicas: &[TestGateway]) -> (Vec<(String, String)>, u64) {
    let deadline = Instant::now() + CONVERGED_WITHIN;
    loop {
        let all: Vec<_> = replicas.iter().map(served).collect();
        if all.windows(2).all(|w| w[0] == w[1]) {
            return all[0].clone();
        }
        assert!(Instant::now() < deadline, "replicas disagree: {all:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn transition(replica: &TestGateway, version: &str, stage: &str) -> (StatusCode, Value) {
    let path = format!("/api/v1/models/fraud/versions/{version}/transition");
    let body = json!({ "stage": stage, "reason": format!("{stage} via a replica") });
    let answer = admin(replica, Method::POST, &path, Some(body)).await;
    (answer.status, answer.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_is_served_by_the_others() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let replicas = replicas(&config(&etcd, "/sg/follow", &upstreams), 3).await;
    let (stages, revision) = converged(&replicas).await;
    assert_eq!(
        stages,
        [
            ("1".to_string(), "production".to_string()),
            ("2".to_string(), "staging".to_string())
        ]
    );
    assert_eq!(
        revision, 2,
        "each config version seeded once, by the first replica"
    );

    let (status, answer) = transition(&replicas[1], "2", "production").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (stages, revision) = converged(&replicas).await;
    assert_eq!(
        stages,
        [
            ("1".to_string(), "archived".to_string()),
            ("2".to_string(), "production".to_string())
        ]
    );
    assert_eq!(revision, 3);
    // And the data plane of every replica routes to the new production version.
    for replica in &replicas {
        let url = common::infer_url(replica);
        let answer = common::post(&url, &[]).await;
        assert_eq!(answer.header("x-stagegate-version"), "2");
    }
    // A replica started later reads the whole state.
    let late = common::gateway(&config(&etcd, "/sg/follow", &upstreams)).await;
    assert_eq!(served(&late).1, 3);
    for replica in replicas.into_iter().chain([late]) {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_leave_one_production_version_and_every_acknowledged_change() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(4).await;
    let replicas = replicas(&config(&etcd, "/sg/race", &upstreams), 2).await;
    converged(&replicas).await;

    let mut acknowledged = Vec::new();
    for round in 0..15 {
        // Two replicas promote different versions at the same instant.
        let (a, b) = (["2", "3", "4"][round % 3], ["3", "4", "2"][round % 3]);
        let (first, second) = tokio::join!(
            transition(&replicas[0], a, "production"),
            transition(&replicas[1], b, "production"),
        );
        for (status, answer) in [first, second] {
            match status {
                StatusCode::OK => acknowledged.push(answer["record"]["revision"].as_u64().unwrap()),
                // Refused by the rules on the state the other made (already
                // production, say): that is a refusal, not a loss.
                StatusCode::CONFLICT => {}
                other => panic!("{other}: {answer}"),
            }
        }
        let (stages, _) = converged(&replicas).await;
        let production: Vec<_> = stages.iter().filter(|(_, s)| s == "production").collect();
        assert_eq!(production.len(), 1, "round {round}: {stages:?}");
        // Put the archived versions back in staging for the next round.
        for (version, stage) in stages {
            if stage == "archived" {
                let (status, answer) = transition(&replicas[round % 2], &version, "staging").await;
                assert_eq!(status, StatusCode::OK, "{answer}");
                acknowledged.push(answer["record"]["revision"].as_u64().unwrap());
            }
        }
    }
    let (_, revision) = converged(&replicas).await;
    for replica in &replicas {
        let revisions: Vec<u64> = common::history(replica)
            .await
            .iter()
            .map(|e| e["revision"].as_u64().unwrap())
            .collect();
        assert_eq!(revisions.len() as u64, revision, "no gaps, no duplicates");
        for acked in &acknowledged {
            assert!(
                revisions.contains(acked),
                "acknowledged revision {acked} is in the history"
            );
        }
    }
    assert!(acknowledged.len() >= 15, "{acknowledged:?}");
    for replica in replicas {
        replica.shutdown().await;
    }
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_journaling_the_same_revision_exactly_one_succeeds() {
    use stagegate::config::store::StoreConfig;
    use stagegate::registry::store::{EtcdStore, Store, StoreError};

    let etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let text = config(&etcd, "/sg/cas", &upstreams);
    let seeded = common::gateway(&text).await;
    let revision = served(&seeded).1;
    seeded.shutdown().await;

    let parsed = stagegate::config::Config::parse(&text, "test").unwrap();
    let StoreConfig::Etcd(etcd_config) = parsed.store else {
        panic!("an etcd store")
    };
    let (mut a, mut b) = (
        EtcdStore::open(&etcd_config).await.unwrap(),
        EtcdStore::open(&etcd_config).await.unwrap(),
    );
    assert_eq!(a.loaded.ledger.revision, revision);
    let history = a.loaded.ledger.model("fraud").unwrap().history.clone();
    let mut record = (*history[history.len() - 1]).clone();
    record.revision = revision + 1;
    record.reason = "from A".into();
    let mut other = record.clone();
    other.reason = "from B".into();
    let (first, second) = tokio::task::spawn_blocking(move || {
        (a.store.append(&record), b.store.append(&other), a, b)
    })
    .await
    .map(|(x, y, a, b)| {
        drop((a, b));
        (x, y)
    })
    .unwrap();
    assert!(first.is_ok(), "{first:?}");
    assert!(
        matches!(second, Err(StoreError::Conflict { revision: r }) if r == revision + 1),
        "{second:?}"
    );
    // The one that lost reads the winner's record when it catches up.
    let mut c = EtcdStore::open(&etcd_config).await.unwrap();
    let caught = tokio::task::spawn_blocking(move || c.store.catch_up(revision))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caught.records.len(), 1);
    assert_eq!(caught.records[0].reason, "from A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_the_data_plane_serves_and_writes_are_refused_quickly() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let replicas = replicas(&config(&etcd, "/sg/outage", &upstreams), 2).await;
    converged(&replicas).await;

    etcd.freeze();
    serves_but_refuses_writes(&replicas[0], &replicas[1], "1", "2").await;
    assert_eq!(
        served(&replicas[1]).0[1].1,
        "staging",
        "nothing was applied"
    );
    // Readiness stays up (the data plane serves) but says it is degraded.
    let readyz = format!("http://{}/readyz", replicas[0].admin_addr());
    let deadline = Instant::now() + CONVERGED_WITHIN;
    loop {
        let answer = common::send(&common::client(), Method::GET, &readyz, &[], "").await;
        assert_eq!(answer.status, StatusCode::OK);
        if String::from_utf8_lossy(&answer.body).contains("degraded: etcd does not answer") {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never said degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        common::metrics(&replicas[0])
            .await
            .contains("stagegate_store_up 0")
    );

    etcd.thaw();
    promoted_once_etcd_is_back(&replicas[1], &replicas).await;
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_then_killed_under_load_fails_no_prediction_and_replicas_recover() {
    let mut etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let replicas = replicas(&config(&etcd, "/sg/killed", &upstreams), 2).await;
    converged(&replicas).await;
    // Predictions through both replicas all along, each one counted.
    let stop = tokio_util::sync::CancellationToken::new();
    let urls: Vec<String> = replicas.iter().map(|r| common::infer_url(r)).collect();
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut served, mut failed) = (0u64, Vec::new());
            for n in 0usize.. {
                if stop.is_cancelled() {
                    break;
                }
                let answer = common::post(&urls[n % urls.len()], &[]).await;
                match answer.status {
                    StatusCode::OK => served += 1,
                    status => failed.push(status),
                }
            }
            (served, failed)
        }
    });

    etcd.freeze();
    serves_but_refuses_writes(&replicas[0], &replicas[1], "1", "2").await;
    // SIGKILL while stopped: what a crashed etcd host leaves.
    etcd.kill(0);
    serves_but_refuses_writes(&replicas[1], &replicas[0], "1", "2").await;
    etcd.restart(0);
    // Back on its data directory: writes are taken again, both replicas catch up.
    promoted_once_etcd_is_back(&replicas[0], &replicas).await;
    stop.cancel();
    let (served, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} predictions failed: {failed:?}",
        failed.len(),
        served + failed.len() as u64
    );
    assert!(served > 0);
    for replica in replicas {
        replica.shutdown().await;
    }
}

/// Promotes version 2 through `writer` once etcd answers again, and waits until
/// every replica serves it. The write refused during the outage may have landed
/// after all (its request was on its way when etcd went): then the retry finds
/// version 2 in production already.
async fn promoted_once_etcd_is_back(writer: &TestGateway, replicas: &[TestGateway]) {
    let deadline = Instant::now() + CONVERGED_WITHIN;
    loop {
        let (status, answer) = transition(writer, "2", "production").await;
        match (status, answer["code"].as_str()) {
            (StatusCode::OK, _) | (StatusCode::CONFLICT, Some("already_in_stage")) => break,
            _ => assert!(
                Instant::now() < deadline,
                "etcd did not come back: {answer}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stages, _) = converged(replicas).await;
    assert_eq!(stages[1], ("2".to_string(), "production".to_string()));
}

/// Whether `replica` runs the cluster's rollout controller, by its gauge.
async fn leads(replica: &TestGateway) -> bool {
    common::metrics(replica)
        .await
        .lines()
        .any(|line| line == "stagegate_rollout_leader 1")
}

async fn rollout(replica: &TestGateway) -> Value {
    admin(replica, Method::GET, "/api/v1/models/fraud/rollout", None)
        .await
        .json()
}

/// Starts a rollout of `plan` through `replica`.
async fn start_rollout(replica: &TestGateway, plan: Value) {
    let started = admin(
        replica,
        Method::POST,
        "/api/v1/models/fraud/rollout",
        Some(plan),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{:?}", started.json());
}

/// Waits until `done` holds for `replica`'s rollout status.
async fn wait_rollout(replica: &TestGateway, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let status = rollout(replica).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_finishes_its_rollout_when_it_goes() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let text =
        config(&etcd, "/sg/leader", &upstreams).replace("lease_ttl_s = 2", "lease_ttl_s = 1");
    let replicas = replicas(&text, 2).await;
    let leader = leader_of(&replicas).await;
    let survivor = 1 - leader;

    // Traffic to both replicas, then only to the survivor once the leader goes.
    let targets = Arc::new(Mutex::new(vec![
        common::infer_url(&replicas[0]),
        common::infer_url(&replicas[1]),
    ]));
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = traffic(Arc::clone(&targets), stop.clone());
    let plan = json!({
        "candidate": "2", "steps": [20, 50, 100], "step_interval_s": 0.3,
        "max_step_duration_s": 30.0, "min_requests": 20, "max_error_rate": 0.05,
        "max_p99_ratio": "off", "max_latency_increase": "off", "reason": "leader test"
    });
    start_rollout(&replicas[survivor], plan).await;
    wait_rollout(&replicas[survivor], "the second step", |s| {
        s["step"].as_u64() >= Some(2)
    })
    .await;

    *targets.lock().unwrap() = vec![common::infer_url(&replicas[survivor])];
    let mut replicas = replicas;
    let gone = replicas.remove(leader);
    gone.shutdown().await;
    let survivor = replicas.remove(0);
    let done = wait_rollout(&survivor, "the rollout's end", |s| {
        s["phase"] == "succeeded" || s["phase"] == "rolled_back"
    })
    .await;
    assert_eq!(done["phase"], "succeeded", "{done:#}");
    assert!(leads(&survivor).await, "the survivor took the lease");
    stop.cancel();
    let _ = traffic.await;

    // Every step was decided once, in order, whoever decided it.
    let steps: Vec<(u64, String)> = common::history(&survivor)
        .await
        .iter()
        .rev()
        .filter_map(|e| {
            let r = &e["rollout"];
            (e["action"] == "rollout").then(|| {
                (
                    r["step"].as_u64().unwrap(),
                    r["phase"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    let mut unique = steps.clone();
    unique.dedup();
    assert_eq!(unique, steps, "a decision was applied twice: {steps:?}");
    assert_eq!(
        steps.last().map(|s| s.1.as_str()),
        Some("succeeded"),
        "{steps:?}"
    );
    survivor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_shows_what_the_leaders_controller_measured() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let replicas = replicas(&config(&etcd, "/sg/readings", &upstreams), 2).await;
    let follower = 1 - leader_of(&replicas).await;
    // No traffic: the rollout waits for requests, and the leader says so.
    let plan = json!({
        "candidate": "2", "steps": [50, 100], "step_interval_s": 0.3,
        "max_step_duration_s": 600.0, "min_requests": 20, "max_error_rate": 0.05,
        "reason": "readings on a follower"
    });
    start_rollout(&replicas[follower], plan).await;
    let status = wait_rollout(&replicas[follower], "the leader's readings", |s| {
        !s["readings"].is_null()
    })
    .await;
    let gates: Vec<&str> = status["readings"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gate"].as_str().unwrap())
        .collect();
    assert!(gates.contains(&"error_rate"), "{status:#}");
    assert_ne!(status["readings"]["waiting_for"], "", "{status:#}");
    assert_eq!(status["readings"]["candidate_requests"], 0, "{status:#}");
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_migrates_into_an_empty_prefix_only() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(2).await;
    let etcd_config = config(&etcd, "/sg/migrated", &upstreams);
    // A file-store gateway with some history of its own.
    let file_config = etcd_config[etcd_config.find("[[models]]").unwrap()..].to_string();
    let dir = tempfile::tempdir().unwrap();
    let single = common::gateway_in(&file_config, dir.path()).await;
    let answer = admin(
        &single,
        Method::POST,
        "/api/v1/models/fraud/versions/2/transition",
        Some(json!({ "stage": "production", "reason": "before the move" })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    single.shutdown().await;

    let config_file = dir.path().join("etcd.toml");
    std::fs::write(&config_file, &etcd_config).unwrap();
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
            .args(["store", "migrate", "--config"])
            .arg(&config_file)
            .arg("--from-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let first = migrate();
    assert!(first.status.success(), "{first:?}");
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("revision 3"),
        "{first:?}"
    );
    let again = migrate();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{again:?}"
    );

    let replica = common::gateway(&etcd_config).await;
    assert_eq!(
        served(&replica),
        (
            vec![
                ("1".to_string(), "archived".to_string()),
                ("2".to_string(), "production".to_string())
            ],
            3
        )
    );
    let reasons: Vec<Value> = common::history(&replica)
        .await
        .iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons[0], "before the move", "{reasons:?}");
    replica.shutdown().await;
}

/// The convergence figure in the README: from a change's 2xx on replica A to
/// the new routing table on replica B. A measurement, not a check:
/// `cargo test --release --test etcd -- --ignored convergence --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by name"]
async fn convergence() {
    let etcd = EtcdServer::start();
    let upstreams = upstreams(3).await;
    let replicas = replicas(&config(&etcd, "/sg/converge", &upstreams), 2).await;
    converged(&replicas).await;
    let mut delays = Vec::new();
    for round in 0..200 {
        let version = ["2", "3"][round % 2];
        let stage = if round % 4 < 2 {
            "production"
        } else {
            "staging"
        };
        let (status, answer) = transition(&replicas[0], version, stage).await;
        let acked = Instant::now();
        if status != StatusCode::OK {
            continue;
        }
        let revision = answer["record"]["revision"].as_u64().unwrap();
        while replicas[1].published().load().catalog().ledger.revision < revision {
            tokio::task::yield_now().await;
        }
        delays.push(acked.elapsed());
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    println!(
        "convergence over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        at(0.5),
        at(0.99),
        delays[delays.len() - 1]
    );
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_three_members_changes_nothing_and_losing_two_refuses_writes() {
    let mut etcd = EtcdServer::cluster(3);
    let upstreams = upstreams(3).await;
    let replicas = replicas(&config(&etcd, "/sg/quorum", &upstreams), 2).await;
    converged(&replicas).await;

    // The member the replicas talk to first goes: the others still have quorum.
    // If it was etcd's leader, the two left elect another first (about a
    // second): until then a write may be refused, and one refused may still
    // land, so the retry can find it done.
    etcd.kill(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer) = transition(&replicas[0], "2", "production").await;
        match (status, answer["code"].as_str()) {
            (StatusCode::OK, _) | (StatusCode::CONFLICT, Some("already_in_stage")) => break,
            (StatusCode::SERVICE_UNAVAILABLE, _) if Instant::now() < deadline => {}
            _ => panic!("two of three members should take writes: {answer}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stages, _) = converged(&replicas).await;
    assert_eq!(stages[1], ("2".to_string(), "production".to_string()));

    // One of three left: no quorum. Predictions are served, writes refused in time.
    etcd.kill(1);
    serves_but_refuses_writes(&replicas[1], &replicas[1], "2", "3").await;
    let (stages, _) = converged(&replicas).await;
    assert_eq!(stages[1], ("2".to_string(), "production".to_string()));
    for replica in replicas {
        replica.shutdown().await;
    }
}

/// Three `stagegate serve` processes on one etcd; each round drives changes
/// through one of them and `kill -9`s one at a random moment, then restarts it.
async fn replica_crash_rounds(rounds: usize) {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"/sg/crash\"\n\
         lease_ttl_s = 2\ndial_timeout_ms = {DIAL_TIMEOUT_MS}\n[[models]]\nname = \"fraud\"\n",
        etcd.urls()
    );
    for (i, version) in VERSIONS.iter().enumerate() {
        let stage = if i == 0 { "production" } else { "staging" };
        // Never contacted: rollbacks are forced, so nothing probes them.
        text.push_str(&format!(
            "[[models.versions]]\nversion = \"{version}\"\nstage = \"{stage}\"\n\
             endpoints = [\"http://127.0.0.1:{}\"]\n",
            10_000 + i
        ));
    }
    let path = dir.path().join("stagegate.toml");
    std::fs::write(&path, text).unwrap();
    let start = || {
        let path = path.clone();
        tokio::task::spawn_blocking(move || Serve::start(&path))
    };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start().await.unwrap());
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..rounds {
        let so_far = acked.lock().unwrap().clone();
        let production = verify_replicas(&replicas, &so_far).await;
        let driven = fastrand::usize(..replicas.len());
        let driver = tokio::spawn(drive(
            replicas[driven].admin_addr.clone(),
            production,
            Arc::clone(&acked),
        ));
        // A random moment: before, between or during journal writes.
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..50_000))).await;
        let victim = fastrand::usize(..replicas.len());
        let serve = replicas.remove(victim);
        tokio::task::spawn_blocking(move || serve.kill_hard())
            .await
            .unwrap();
        // A driver on a replica that lives on is stopped mid-change: what it
        // did not see acknowledged is not counted.
        driver.abort();
        let _ = driver.await;
        replicas.insert(victim, start().await.unwrap());
    }
    let all = acked.lock().unwrap().clone();
    verify_replicas(&replicas, &all).await;
    eprintln!(
        "{rounds} kill -9 rounds over 3 replicas: {} acknowledged changes, all present on every replica",
        all.len()
    );
    assert!(
        !all.is_empty(),
        "no change was acknowledged in {rounds} rounds"
    );
}

/// Waits until every replica is at the same revision, then checks on each that
/// every acknowledged change is there and there is one production version.
async fn verify_replicas(replicas: &[Serve], acked: &[Value]) -> String {
    let deadline = Instant::now() + CONVERGED_WITHIN;
    loop {
        let mut revisions = Vec::new();
        for replica in replicas {
            let model = call(
                &replica.admin_addr,
                Method::GET,
                "/api/v1/models/fraud",
                None,
            )
            .await
            .expect("a live replica answers")
            .json();
            revisions.push(model["registry_revision"].as_u64());
        }
        if revisions.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas disagree: {revisions:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut productions = Vec::new();
    for replica in replicas {
        productions.push(verify(&replica.admin_addr, acked).await);
    }
    assert!(
        productions.windows(2).all(|w| w[0] == w[1]),
        "{productions:?}"
    );
    productions.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_survives_kill_9_of_any_replica() {
    replica_crash_rounds(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 500 rounds"]
async fn soak_every_acknowledged_change_survives_kill_9_of_any_replica() {
    replica_crash_rounds(500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_failing_only_on_a_follower_is_rolled_back_by_the_leader() {
    let etcd = EtcdServer::start();
    let production = FakeUpstream::start("v1").await;
    let failing = FakeUpstream::with("v2", common::Behaviour::Status(500)).await;
    let text = config(&etcd, "/sg/merged", &[production, failing]);
    let replicas = replicas(&text, 2).await;
    let follower = 1 - leader_of(&replicas).await;
    let plan = json!({
        "candidate": "2", "steps": [50, 100], "step_interval_s": 0.3,
        "max_step_duration_s": 600.0, "min_requests": 20, "max_error_rate": 0.05,
        "max_p99_ratio": "off", "max_latency_increase": "off", "reason": "merged gates"
    });
    start_rollout(&replicas[follower], plan).await;
    // Only the follower serves traffic: the leader's own counts stay at zero.
    let stop = tokio_util::sync::CancellationToken::new();
    let targets = Arc::new(Mutex::new(vec![common::infer_url(&replicas[follower])]));
    let traffic = traffic(targets, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        // The leader must stay the leader: its own counts are zero, so only the
        // follower's, merged in, can fail the candidate.
        assert!(leads(&replicas[1 - follower]).await, "leadership moved");
        let status = rollout(&replicas[follower]).await;
        if status["phase"] == "rolled_back" || status["phase"] == "succeeded" {
            break status;
        }
        assert!(Instant::now() < deadline, "no decision: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    let _ = traffic.await;
    assert_eq!(done["phase"], "rolled_back", "{done:#}");
    assert_eq!(
        done["rollout"]["failed_gate"]["gate"], "error_rate",
        "rolled back by the error gate on the follower's errors: {done:#}"
    );
    for replica in replicas {
        replica.shutdown().await;
    }
}

/// The staging version's shadow report as `replica` shows it.
async fn shadow_report(replica: &TestGateway) -> Value {
    let answer = admin(replica, Method::GET, "/api/v1/models/fraud/shadow", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["versions"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_report_of_any_replica_merges_every_replicas_mirrors() {
    let etcd = EtcdServer::start();
    let production = FakeUpstream::start("v1").await;
    // The staging version disagrees on every answer.
    let staging = FakeUpstream::start("v2").await;
    let text = format!(
        "[server]\nshadow_cpu_share = 2.0\n\n{}[models.shadow]\npercent = 100.0\n",
        config(&etcd, "/sg/shadow", &[production, staging])
    );
    let replicas = replicas(&text, 2).await;
    // 30 requests through the first replica, 20 through the second.
    for (replica, n) in replicas.iter().zip([30, 20]) {
        let url = common::infer_url(replica);
        for _ in 0..n {
            assert_eq!(common::post(&url, &[]).await.status, StatusCode::OK);
        }
    }
    let deadline = Instant::now() + CONVERGED_WITHIN;
    let reports = loop {
        let reports = [
            shadow_report(&replicas[0]).await,
            shadow_report(&replicas[1]).await,
        ];
        if reports.iter().all(|r| r["compared"] == 50) {
            break reports;
        }
        assert!(Instant::now() < deadline, "not merged: {reports:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for report in &reports {
        assert_eq!(report["replicas"], 2, "{report:#}");
        assert_eq!(report["mirrored"], 50, "{report:#}");
        assert_eq!(report["mismatched"], 50, "{report:#}");
        assert_eq!(report["agreement"]["judged"], 50, "{report:#}");
        assert_eq!(report["agreement"]["window_compared"], 50, "{report:#}");
        let minutes: u64 = report["agreement_per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["compared"].as_u64().unwrap())
            .sum();
        assert_eq!(minutes, 50, "{report:#}");
        assert!(report["latency_ms"]["shadow"]["p50"].as_f64().unwrap() > 0.0);
        assert!(!report["samples"].as_array().unwrap().is_empty());
        assert_eq!(report["top_mismatch_paths"][0]["count"], 50, "{report:#}");
    }
    // A replica that goes stops counting in the others' report.
    let mut replicas = replicas;
    let gone = replicas.pop().unwrap();
    gone.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = shadow_report(&replicas[0]).await;
        if report["replicas"] == 1 {
            assert_eq!(report["compared"], 30, "{report:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gone replica still counts: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_follows_mlflow_and_every_replica_serves_what_it_applied() {
    let etcd = EtcdServer::start();
    let mlflow = fake_mlflow::FakeMlflow::start().await;
    let (v1, v2) = (
        FakeUpstream::start("v1").await,
        FakeUpstream::start("v2").await,
    );
    mlflow.add_version("fraud-detector", "1", &v1.url());
    mlflow.add_version("fraud-detector", "2", &v2.url());
    mlflow.set_alias("fraud-detector", "champion", "1");
    let secret = "etcd-webhook-secret-0123456789";
    // SAFETY: set before the gateways that read it start. Other tests of this
    // binary may run meanwhile, but none sets the environment, and what they
    // read of it (etcd's and the gateways' start-up) is read once, at start;
    // the remaining risk is the one `set_var` documents for any threaded test.
    unsafe { std::env::set_var("STAGEGATE_TEST_ETCD_WEBHOOK_SECRET", secret) };
    // Polls an hour apart: after the first, only a webhook delivery makes the
    // leader poll.
    let text = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"/sg/mlflow\"\n\
         lease_ttl_s = 2\ndial_timeout_ms = {DIAL_TIMEOUT_MS}\n\
         [registry]\nkind = \"mlflow\"\nurl = \"{}\"\npoll_interval_ms = 3600000\n\
         webhook_secret_env = \"STAGEGATE_TEST_ETCD_WEBHOOK_SECRET\"\n\n\
         [[models]]\nname = \"fraud\"\n[models.mlflow]\nregistered_model = \"fraud-detector\"\n\
         on_production_change = \"promote\"\n",
        etcd.urls(),
        mlflow.url()
    );
    let replicas = replicas(&text, 2).await;
    let deadline = Instant::now() + CONVERGED_WITHIN;
    loop {
        let states = [
            sync_state(&replicas[0]).await,
            sync_state(&replicas[1]).await,
        ];
        let mut sorted = states.clone();
        sorted.sort();
        if sorted == ["following", "ok"] {
            break;
        }
        assert!(Instant::now() < deadline, "sync states: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serving = |replica: &TestGateway| {
        let catalog = replica.published().load();
        let model = catalog.catalog().model("fraud").cloned();
        model.and_then(|m| m.production().map(|v| v.version.clone()))
    };
    let deadline = Instant::now() + CONVERGED_WITHIN;
    while replicas.iter().any(|r| serving(r).as_deref() != Some("1")) {
        assert!(
            Instant::now() < deadline,
            "version 1 never served everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // MLflow moves the champion and delivers its webhook to the follower: the
    // leader polls, applies it once, and both serve it.
    mlflow.set_alias("fraud-detector", "champion", "2");
    let follower = usize::from(sync_state(&replicas[0]).await != "following");
    let hook = format!(
        "http://{}/api/v1/registry/webhook",
        replicas[follower].admin_addr()
    );
    let delivered = common::deliver_webhook(&hook, secret, common::unix_seconds()).await;
    assert_eq!(delivered.status, StatusCode::OK, "{:?}", delivered.body);
    let deadline = Instant::now() + CONVERGED_WITHIN;
    while replicas.iter().any(|r| serving(r).as_deref() != Some("2")) {
        assert!(
            Instant::now() < deadline,
            "version 2 never served everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = common::history(&replicas[0]).await;
    let promotions = entries
        .iter()
        .filter(|e| e["version"] == "2" && e["to"] == "production")
        .count();
    assert_eq!(promotions, 1, "{entries:#?}");
    for replica in replicas {
        replica.shutdown().await;
    }
}

async fn sync_state(replica: &TestGateway) -> String {
    let status = admin(replica, Method::GET, "/api/v1/registry", None)
        .await
        .json();
    status["state"].as_str().unwrap_or_default().to_string()
}

/// Without etcd: `reader` still answers predictions from `serving`, and a
/// promotion of `promoted` through `writer` is refused with 503 in time.
async fn serves_but_refuses_writes(
    reader: &TestGateway,
    writer: &TestGateway,
    serving: &str,
    promoted: &str,
) {
    let url = common::infer_url(reader);
    for _ in 0..20 {
        let answer = common::post(&url, &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "the data plane needs no etcd"
        );
        assert_eq!(answer.header("x-stagegate-version"), serving);
    }
    let started = Instant::now();
    let (status, answer) = transition(writer, promoted, "production").await;
    let took = started.elapsed();
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable")),
        "{answer}"
    );
    // Refused within the dial timeout and a margin, never hanging.
    let bound = Duration::from_millis(DIAL_TIMEOUT_MS * 4);
    assert!(took < bound, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_folds_the_journal_into_the_snapshot_and_a_lagging_replica_reads_it() {
    use stagegate::config::store::StoreConfig;
    use stagegate::registry::store::{EtcdStore, Store};

    let etcd = EtcdServer::start();
    let upstreams = upstreams(3).await;
    let text = config(&etcd, "/sg/compact", &upstreams);
    let seeded = common::gateway(&text).await;
    let (status, _) = transition(&seeded, "2", "production").await;
    assert_eq!(status, StatusCode::OK);
    seeded.shutdown().await;

    let parsed = stagegate::config::Config::parse(&text, "test").unwrap();
    let StoreConfig::Etcd(etcd_config) = parsed.store else {
        panic!("an etcd store")
    };
    let opened = EtcdStore::open(&etcd_config).await.unwrap();
    let (ledger, mut store) = (opened.loaded.ledger, opened.store);
    assert_eq!((ledger.revision, store.records_since_snapshot()), (4, 4));
    let client = store.client();
    let compacted = ledger.clone();
    let store = tokio::task::spawn_blocking(move || {
        store.compact(&compacted).unwrap();
        store
    })
    .await
    .unwrap();
    assert_eq!(store.records_since_snapshot(), 0);
    // The journal's keys are gone, in the same transaction that wrote the snapshot.
    let keys = store.keys();
    let (start, end) = keys.range();
    let (_, kvs) = client.range(&start, Some(&end), 0).await.unwrap();
    let names: Vec<String> = kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .filter(|k| !k.contains("/measurements/") && !k.ends_with("/leader"))
        .collect();
    assert_eq!(names, ["/sg/compact/snapshot"], "{names:?}");

    // A replica that is behind (at revision 1) catches up from the snapshot.
    let mut lagging = EtcdStore::open(&etcd_config).await.unwrap().store;
    let caught = tokio::task::spawn_blocking(move || lagging.catch_up(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caught.snapshot.map(|s| s.revision), Some(4));
    assert!(caught.records.is_empty());
    // And a replica that starts now serves the same state, history included.
    let replica = common::gateway(&text).await;
    assert_eq!(served(&replica).1, 4);
    assert_eq!(common::history(&replica).await.len(), 4);
    let (status, answer) = transition(&replica, "3", "production").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["record"]["revision"], 5);
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cancelled_by_etcd_compaction_asks_for_a_re_read_and_watches_again() {
    use stagegate::config::store::StoreConfig;
    use stagegate::registry::store::etcd::{EtcdClient, Keys, follow};

    let etcd = EtcdServer::start();
    let text = config(&etcd, "/sg/compacted", &[]);
    let parsed = stagegate::config::Config::parse(&text, "test").unwrap();
    let StoreConfig::Etcd(etcd_config) = parsed.store else {
        panic!("an etcd store")
    };
    let client = std::sync::Arc::new(EtcdClient::new(&etcd_config));
    let keys = Keys::new("/sg/compacted");
    for n in 1..=3 {
        client
            .create(&[(keys.journal(n), b"{}".to_vec())])
            .await
            .unwrap();
    }
    // etcd forgets its history up to now: a watch from revision 1 is refused.
    let (_, kvs) = client.range(&keys.journal(1), None, 0).await.unwrap();
    let (now, _) = client.range(&keys.snapshot(), None, 0).await.unwrap();
    assert_eq!(kvs.len(), 1);
    let compaction = format!("http://{}/v3/kv/compaction", etcd.client_addr(0));
    let body = json!({ "revision": now.to_string(), "physical": true }).to_string();
    let answer = common::send(&common::client(), Method::POST, &compaction, &[], &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);

    let (changed, mut changes) = tokio::sync::mpsc::channel(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = follow::spawn(
        std::sync::Arc::clone(&client),
        keys.clone(),
        1,
        changed,
        stop.clone(),
    );
    // The cancelled watch asks for a re-read...
    tokio::time::timeout(CONVERGED_WITHIN, changes.recv())
        .await
        .expect("a re-read is asked for")
        .expect("the channel is open");
    // ...and the watch is opened again from where etcd is: a new record is seen.
    while changes.try_recv().is_ok() {}
    client
        .create(&[(keys.journal(4), b"{}".to_vec())])
        .await
        .unwrap();
    tokio::time::timeout(CONVERGED_WITHIN, changes.recv())
        .await
        .expect("the new record is seen")
        .expect("the channel is open");
    stop.cancel();
    let _ = task.await;
}

/// One prediction as `user`, for background traffic: a replica shutting down
/// while it is in flight may fail it, which the traffic shrugs off.
async fn predict_as(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    user: &str,
) {
    let request = http::Request::post(url)
        .header("x-user-id", user)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .expect("a valid request");
    if let Ok(Ok(response)) =
        tokio::time::timeout(Duration::from_secs(5), client.request(request)).await
    {
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    }
}

/// Which of two replicas leads, once exactly one does (by its gauge).
async fn leader_of(replicas: &[TestGateway]) -> usize {
    let deadline = Instant::now() + CONVERGED_WITHIN;
    loop {
        match [leads(&replicas[0]).await, leads(&replicas[1]).await] {
            [true, false] => return 0,
            [false, true] => return 1,
            [true, true] => panic!("two leaders"),
            [false, false] => assert!(Instant::now() < deadline, "no leader"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Predictions, each from another user, round-robin over `targets` (which the
/// test may change) until `stop`.
fn traffic(
    targets: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = common::client();
        let mut n = 0usize;
        while !stop.is_cancelled() {
            let url = {
                let urls = targets.lock().unwrap();
                urls[n % urls.len()].clone()
            };
            predict_as(&client, &url, &format!("user-{n}")).await;
            n += 1;
        }
    })
}
