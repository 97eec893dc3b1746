//! A real MLflow tracking server for tests: installed on first use into a
//! virtual environment under `target/` (by `scripts/install-test-deps`), started
//! with an sqlite backend on a free loopback port, and shared by the tests of
//! one binary (it takes 15-30 s to start).
//!
//! Set `STAGEGATE_MLFLOW` to an `mlflow` executable to use another install.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

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
        // Spawned from a thread that lives as long as the test binary, so that
        // the parent-death signal below fires when the binary exits, not when the
        // test that first asked for the server ends.
        let (tx, rx) = mpsc::channel();
        let (db, artifacts) = (dir.join("mlflow.db"), dir.join("artifacts"));
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        std::thread::spawn(move || {
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
                .stderr(log)
                .process_group(0);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork
            // and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", mlflow_binary().display()));
        let server = MlflowServer {
            addr,
            dir: dir.to_path_buf(),
            child: Mutex::new(Some(child)),
        };
        server.wait_until_healthy();
        server
    }

    fn wait_until_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if health(self.addr) {
                return;
            }
            if let Some(child) = self.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "mlflow server exited ({status}) before answering; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "mlflow server did not answer /health within {START_TIMEOUT:?}; its log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the server and every process it started.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let group = i32::try_from(child.id()).unwrap();
            // SAFETY: a plain kill(2) of the process group the server leads.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn health(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
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
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let bin = workspace().join("target/test-venv/bin/mlflow");
            // The script does nothing once MLflow is installed.
            let script = workspace().join("scripts/install-test-deps");
            let status = Command::new(&script).status();
            match status {
                Ok(status) if status.success() && bin.exists() => bin,
                other => panic!(
                    "MLflow is needed by these tests and could not be installed ({other:?}).\n\
                     Install it with: {}\n\
                     (it creates target/test-venv and runs pip install mlflow there), or set \
                     STAGEGATE_MLFLOW to an mlflow executable.",
                    script.display()
                ),
            }
        })
        .clone()
}
