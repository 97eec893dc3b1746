//! The `stagegate` binary: `check` exit codes and messages, `serve` refusing bad
//! config, and `serve` draining in-flight requests on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Behaviour, FakeUpstream, one_model};
use http::StatusCode;

fn stagegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stagegate"))
}

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
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 models, 3 versions)"));
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
    let mut child = KillOnDrop(Some(
        stagegate()
            .args(["serve", "--config"])
            .arg(&path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let data_addr = serving_address(child.get().stderr.take().unwrap());

    let in_flight = tokio::spawn(common::post_owned(format!(
        "http://{data_addr}/v2/models/fraud/infer"
    )));
    while upstream.received().is_empty() {
        tokio::task::yield_now().await;
    }
    // The shell's builtin kill, so the test needs no procps.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.get().id())])
        .status()
        .unwrap();
    assert!(killed.success());
    // Wait until the gateway has stopped accepting before letting the request finish.
    while tokio::net::TcpStream::connect(&data_addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    upstream.release(1);
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    let mut child = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Reads the gateway's log until it says where it serves; returns the data address.
fn serving_address(stderr: std::process::ChildStderr) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("data_addr=").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("stagegate did not report its address")
}

/// Kills the gateway process if the test fails before it exits.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
