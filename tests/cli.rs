//! The `stagegate` binary: `check` exit codes and messages, `serve` refusing bad
//! config, and `serve` draining in-flight requests on SIGTERM.

mod common;

use std::path::PathBuf;

use common::process::{Serve, stagegate};
use common::{Behaviour, FakeUpstream, one_model};
use http::StatusCode;

fn write_config(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let output = stagegate()
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (2 models, 5 versions)"));
}

#[test]
fn check_prints_every_error_and_exits_non_zero() {
    let text = one_model(
        "request_timeout_ms = 0",
        &[
            ("1", "production", &["http://h:1"]),
            ("2", "production", &["ftp://h:2"]),
        ],
    );
    let (_dir, path) = write_config("bad.toml", &text);
    let output = stagegate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "3 error(s)",
        "server.request_timeout_ms: must be greater than 0",
        "models[0].versions[1].stage: model \"fraud\" already has production version \"1\"",
        "models[0].versions[1].endpoints[0]: not an http URL",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
}

#[test]
fn serve_refuses_to_start_on_an_invalid_config() {
    let (_dir, path) = write_config("bad.toml", "[server]\nlisten = \"nowhere\"\n");
    let output = stagegate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("server.listen: not a socket address")
    );
}

#[tokio::test]
async fn serve_drains_in_flight_requests_on_sigterm() {
    let upstream = FakeUpstream::with("v2", Behaviour::WaitForRelease).await;
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";
    let (_dir, path) = write_config(
        "ok.toml",
        &one_model(server, &[("2", "production", &[&upstream.url()])]),
    );
    let serve = Serve::start(&path);
    let data_addr = serve.data_addr.clone();

    let in_flight = tokio::spawn(common::post_owned(format!(
        "http://{data_addr}/v2/models/fraud/infer"
    )));
    while upstream.received().is_empty() {
        tokio::task::yield_now().await;
    }
    serve.signal("TERM");
    // Wait until the gateway has stopped accepting before letting the request finish.
    while tokio::net::TcpStream::connect(&data_addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    upstream.release(1);
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    let status = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn serve_refuses_an_exposed_admin_listener_without_a_token() {
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"";
    let (_dir, path) = write_config(
        "exposed.toml",
        &one_model(server, &[("2", "production", &["http://127.0.0.1:1"])]),
    );
    let output = stagegate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a loopback address and no admin token is configured"),
        "{stderr}"
    );
}

#[test]
fn a_second_serve_on_the_same_state_dir_exits_with_a_clear_error() {
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";
    let (_dir, path) = write_config(
        "ok.toml",
        &one_model(server, &[("2", "production", &["http://127.0.0.1:1"])]),
    );
    let _first = Serve::start(&path);
    let output = stagegate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is in use by another stagegate process"),
        "{stderr}"
    );
}

// Multi-threaded: ctl runs as a blocking child process while the fake model
// servers must keep answering (the rollback probes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_a_running_gateway_and_sighup_reloads_its_config() {
    let v2 = FakeUpstream::start("v2").await;
    let v3 = FakeUpstream::start("v3").await;
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";
    let text = one_model(
        server,
        &[
            ("2", "production", &[&v2.url()]),
            ("3", "staging", &[&v3.url()]),
        ],
    );
    let (dir, path) = write_config("stagegate.toml", &text);
    std::fs::write(dir.path().join("tokens"), format!("ci:{}\n", common::TOKEN)).unwrap();
    std::fs::write(&path, format!("[admin]\ntoken_file = \"tokens\"\n{text}")).unwrap();
    let serve = Serve::start(&path);
    let admin = format!("http://{}", serve.admin_addr);
    let ctl = |args: &[&str], token: Option<&str>| {
        let mut command = stagegate();
        command.args(["ctl", "--admin", &admin]).args(args);
        command.env_remove("STAGEGATE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("STAGEGATE_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    };
    let ok = |args: &[&str]| {
        let output = ctl(args, Some(common::TOKEN));
        assert!(
            output.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let denied = ctl(&["status"], None);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401 unauthorized"));

    assert!(ok(&["status"]).contains("fraud  2           3"));
    let promoted = ok(&[
        "transition",
        "fraud",
        "3",
        "production",
        "--reason",
        "canary passed",
    ]);
    assert!(
        promoted.contains("3 staging -> production, 2 production -> archived by ci"),
        "{promoted}"
    );
    let refused = ctl(
        &["transition", "fraud", "2", "production"],
        Some(common::TOKEN),
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("only through a rollback (409 transition_refused)")
    );
    let rolled_back = ok(&["rollback", "fraud", "--reason", "p99 regression"]);
    assert!(
        rolled_back.contains("rollback fraud 2 archived -> production"),
        "{rolled_back}"
    );
    let history = ok(&["history", "fraud"]);
    assert!(
        history.contains("p99 regression") && history.contains("canary passed"),
        "{history}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&["--json", "model", "fraud"])).unwrap();
    assert_eq!(json["production"], "2");
    let registered = ok(&[
        "register",
        "fraud",
        "7",
        "--endpoint",
        "http://v7:8000",
        "--grpc-endpoint",
        "http://v7:8001",
    ]);
    assert!(registered.contains('7'), "{registered}");
    let shown = ok(&["model", "fraud"]);
    assert!(
        shown.contains("GRPC ENDPOINTS") && shown.contains("http://v7:8001"),
        "{shown}"
    );

    // SIGHUP re-reads the file: a new staging version appears.
    let v4 = FakeUpstream::start("v4").await;
    let added = format!(
        "{}\n[[models.versions]]\nversion = \"4\"\nstage = \"staging\"\nendpoints = [\"{}\"]\n",
        std::fs::read_to_string(&path).unwrap(),
        v4.url()
    );
    std::fs::write(&path, added).unwrap();
    serve.signal("HUP");
    while !ok(&["model", "fraud"]).contains(&v4.url()) {
        tokio::task::yield_now().await;
    }
    let reloaded = ok(&["reload"]);
    assert!(reloaded.contains("config reloaded"), "{reloaded}");

    // Shadow: turn mirroring on for version 4, send traffic, read the report.
    let set = ok(&[
        "shadow",
        "set",
        "fraud",
        "--percent",
        "100",
        "--versions",
        "4",
        "--mode",
        "json",
        "--ignore",
        "server,path",
    ]);
    assert!(set.contains("shadow fraud"), "{set}");
    let url = format!("http://{}/v2/models/fraud/infer", serve.data_addr);
    for _ in 0..3 {
        assert_eq!(common::post_owned(url.clone()).await.status, StatusCode::OK);
    }
    while v4.received().len() < 3 {
        tokio::task::yield_now().await;
    }
    let compared = async {
        loop {
            let report = ok(&["shadow", "fraud"]);
            if report.contains("100.00% (3)") {
                return report;
            }
            tokio::task::yield_now().await;
        }
    };
    let report = tokio::time::timeout(std::time::Duration::from_secs(20), compared)
        .await
        .expect("three comparisons in the report");
    assert!(
        report.contains("mirroring on (100% of POST,GET, to 4)"),
        "{report}"
    );
    let reset = ok(&["shadow", "reset", "fraud"]);
    assert!(
        reset.contains("shadow reports of fraud reset: 4"),
        "{reset}"
    );
    let usage = ctl(&["shadow"], Some(common::TOKEN));
    assert!(!usage.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_canaries_and_rollouts() {
    let v2 = FakeUpstream::start("v2").await;
    let v3 = FakeUpstream::start("v3").await;
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";
    let text = one_model(
        server,
        &[
            ("2", "production", &[&v2.url()]),
            ("3", "staging", &[&v3.url()]),
        ],
    );
    let (_dir, path) = write_config("stagegate.toml", &text);
    let serve = Serve::start(&path);
    let admin = format!("http://{}", serve.admin_addr);
    let ctl = |args: &[&str]| {
        let output = stagegate()
            .args(["ctl", "--admin", &admin])
            .args(args)
            .env_remove("STAGEGATE_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = ctl(&[
        "canary", "fraud", "3", "--weight", "25", "--reason", "try it",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("canary 3 at 25%"), "{out}");
    let (ok, _, err) = ctl(&["rollout", "start", "fraud", "3", "--steps", "10,100"]);
    assert!(!ok && err.contains("hand-set canary"), "{err}");
    assert!(ctl(&["canary", "fraud", "3", "--weight", "0"]).0);

    let (ok, out, err) = ctl(&[
        "rollout",
        "start",
        "fraud",
        "3",
        "--steps",
        "10,100",
        "--step-interval-s",
        "3600",
        "--reason",
        "ship it",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("rollout of 3 progressing at step 1 (10%)"),
        "{out}"
    );
    // The controller reports its readings within a tick.
    let status = (0..200)
        .map(|_| ctl(&["rollout", "status", "fraud"]).1)
        .find(|status| status.contains("waiting for"))
        .expect("readings in the status");
    assert!(
        status.contains("phase progressing  step 1 of 2  weight 10%"),
        "{status}"
    );
    assert!(status.contains("waiting for: step interval"), "{status}");
    assert!(ctl(&["rollout", "pause", "fraud"]).1.contains("paused"));
    let (ok, out, err) = ctl(&["rollout", "promote", "fraud", "--reason", "looks fine"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 staging -> production, 2 production -> archived"),
        "{out}"
    );
    let (_, done, _) = ctl(&["rollout", "status", "fraud"]);
    assert!(done.contains("phase succeeded"), "{done}");
}
