//! Real Open Inference Protocol servers and clients for tests: KServe's
//! `ModelServer` with the tiny models of `tests/oip/model_server.py`, and the
//! official clients driven by `tests/oip/clients.py`, from the virtual
//! environment `scripts/install-test-deps` creates under `target/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::child::{free_port, installed, kill_group, spawn_for_the_binary, wait_until_ok};

/// KServe imports a lot; a cold start on a busy machine takes a while.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running KServe model server; killed when dropped.
pub struct ModelServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    child: Mutex<Option<Child>>,
}

impl ModelServer {
    /// Serves `models` (`name=offset`) as `version` over HTTP and gRPC, and waits
    /// until it is ready.
    pub fn start(version: &str, models: &[&str]) -> ModelServer {
        let (http, grpc) = (loopback(free_port()), loopback(free_port()));
        let dir = workspace().join("target/oip-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("model-server-{}.log", http.port()));
        let output = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(python());
        command
            .arg(workspace().join("tests/oip/model_server.py"))
            .args(["--version", version])
            .args(["--http-port", &http.port().to_string()])
            .args(["--grpc-port", &grpc.port().to_string()])
            .args(models.iter().flat_map(|m| ["--model", m]))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        let mut child = spawn_for_the_binary(command).expect("python starts");
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until_ok(
            "KServe model server",
            http,
            "/v2/health/ready",
            &mut child,
            START_TIMEOUT,
            read_log,
        );
        ModelServer {
            http,
            grpc,
            child: Mutex::new(Some(child)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            kill_group(&mut child);
        }
    }
}

/// The client scripts of `tests/oip/`.
#[derive(Debug, Clone, Copy)]
pub enum Clients {
    /// `clients.py`: tritonclient's HTTP client and the kserve SDK.
    Http,
    /// `grpc_clients.py`: tritonclient's gRPC client.
    Grpc,
}

/// Runs `clients` against `gateway` and the model server `direct` for `model`,
/// and returns what they printed.
pub fn run_clients(
    clients: Clients,
    gateway: SocketAddr,
    direct: &ModelServer,
    model: &str,
    requests: usize,
) -> serde_json::Value {
    let (script, direct_args) = match clients {
        // The kserve SDK's gRPC client runs in the HTTP script: it cannot share
        // a process with tritonclient's gRPC client.
        Clients::Http => (
            "clients.py",
            vec![
                "--direct".to_string(),
                direct.http.to_string(),
                "--direct-grpc".to_string(),
                direct.grpc.to_string(),
            ],
        ),
        Clients::Grpc => (
            "grpc_clients.py",
            vec!["--direct".to_string(), direct.grpc.to_string()],
        ),
    };
    let output = Command::new(python())
        .arg(workspace().join("tests/oip").join(script))
        .args(["--gateway", &gateway.to_string()])
        .args(direct_args)
        .args(["--model", model, "--requests", &requests.to_string()])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test environment's Python, installed now if it is missing.
pub fn python() -> PathBuf {
    installed(
        "target/oip-venv/bin/python",
        "KServe with tritonclient[http,grpc]",
    )
}
