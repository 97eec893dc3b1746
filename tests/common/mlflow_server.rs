//! A real MLflow tracking server for tests: installed on first use into a
//! virtual environment under `target/` (by `scripts/install-test-deps`), started
//! with an sqlite backend on a free loopback port, and shared by the tests of
//! one binary (it takes 15-30 s to start).
//!
//! Set `STAGEGATE_MLFLOW` to an `mlflow` executable to use another install.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::common::child::{free_port, kill_group, spawn_for_the_binary, wait_until_ok};

/// How long a fresh server may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(180);

pub struct MlflowServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl MlflowServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server every test of this binary shares.
    pub fn shared() -> &'static MlflowServer {
        static SHARED: OnceLock<MlflowServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = workspace().join("target/mlflow-tests");
            std::fs::create_dir_all(&dir).unwrap();
            let dir = tempfile::tempdir_in(dir).unwrap().keep();
            MlflowServer::start(&dir, free_port())
        })
    }

    /// Starts a server keeping its state in `dir` on `port`, and waits until it
    /// answers.
    pub fn start(dir: &Path, port: u16) -> MlflowServer {
        let mlflow = mlflow_binary();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (db, artifacts) = (dir.join("mlflow.db"), dir.join("artifacts"));
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut command = Command::new(&mlflow);
        command
            .args(["server", "--host", "127.0.0.1", "--workers", "1"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", db.display()))
            .arg("--default-artifact-root")
            .arg(&artifacts)
            .env("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
            .env("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
            // MLflow caches each event's webhook list for 60 s: a webhook
            // created after an earlier alias change would stay silent.
            .env("MLFLOW_WEBHOOK_CACHE_TTL", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_for_the_binary(command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", mlflow.display()));
        let server = MlflowServer {
            addr,
            dir: dir.to_path_buf(),
            child: Mutex::new(Some(child)),
        };
        server.wait_until_healthy();
        server
    }

    fn wait_until_healthy(&self) {
        let mut child = self.child.lock().unwrap();
        let child = child.as_mut().expect("started");
        wait_until_ok(
            "mlflow server",
            self.addr,
            "/health",
            child,
            START_TIMEOUT,
            || self.log(),
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the server and every process it started.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            kill_group(&mut child);
        }
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `mlflow` executable: `STAGEGATE_MLFLOW`, or the test environment under
/// `target/`, installed now if it is missing.
pub fn mlflow_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STAGEGATE_MLFLOW") {
        return PathBuf::from(path);
    }
    // Or set STAGEGATE_MLFLOW to an mlflow executable.
    crate::common::child::installed("target/test-venv/bin/mlflow", "MLflow")
}
