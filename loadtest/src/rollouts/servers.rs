//! The processes of `loadtest rollouts`: four Python model servers (two alike,
//! one twice as slow, one failing 5% more), and stagegate in front of them with
//! one model whose versions they serve.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{RolloutsArgs, admin_call};
use crate::compare::CompareError;
use crate::compare::backends::spawn_announcing;
use crate::compare::procs::{ProcessGuard, free_addr};

/// The kinds of candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Identical,
    Slow,
    Failing,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Identical => "identical",
            Kind::Slow => "2x latency",
            Kind::Failing => "+5% errors",
        }
    }
}

/// The model servers and the gateway, stopped when dropped.
pub struct Fleet {
    data: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    _gateway: ProcessGuard,
    _servers: Vec<ProcessGuard>,
}

const MODEL: &str = "m";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/model_server.py")
}

impl Fleet {
    pub fn start(args: &RolloutsArgs) -> Result<Fleet, CompareError> {
        let exe = std::env::current_exe()
            .map_err(|source| CompareError::io("locating this executable", source))?;
        let stagegate = args
            .stagegate
            .clone()
            .unwrap_or_else(|| exe.with_file_name("stagegate"));
        if !stagegate.is_file() {
            return Err(CompareError::NoStagegate(stagegate));
        }
        let median = args.median_ms.to_string();
        let mut servers = Vec::new();
        let mut endpoints = Vec::new();
        for (version, extra) in [
            ("a", vec![]),
            ("b", vec![]),
            ("slow", vec!["--slowdown", "2"]),
            ("failing", vec!["--error-rate", "0.051"]),
        ] {
            let mut command = Command::new(&args.python);
            command
                .arg(script())
                .args(["--name", MODEL, "--median-ms", &median])
                .args(extra);
            let name = format!("model server {version} ({})", args.python.display());
            let (guard, addr) = spawn_announcing(&name, &mut command)?;
            servers.push(guard);
            endpoints.push((version, addr));
        }
        let dir = tempfile::tempdir().map_err(|source| CompareError::io("a temp dir", source))?;
        let (data, admin) = (free_addr()?, free_addr()?);
        let config = dir.path().join("stagegate.toml");
        fs::write(
            &config,
            config_text(args, data, admin, dir.path(), &endpoints),
        )
        .map_err(|source| CompareError::io("writing the stagegate config", source))?;
        let log = fs::File::create(dir.path().join("stagegate.log"))
            .map_err(|source| CompareError::io("creating the stagegate log", source))?;
        let mut command = Command::new(&stagegate);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stderr(log);
        let gateway = ProcessGuard::spawn("stagegate", &mut command)?;
        let fleet = Fleet {
            data,
            admin,
            _dir: dir,
            _gateway: gateway,
            _servers: servers,
        };
        fleet.wait_ready()?;
        Ok(fleet)
    }

    fn wait_ready(&self) -> Result<(), CompareError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if admin_call(self.admin, "GET", "/api/v1/models", None).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CompareError::NotReady {
                    what: "stagegate".into(),
                    detail: "its admin API did not answer".into(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn infer_url(&self) -> String {
        format!("http://{}/v2/models/{MODEL}/infer", self.data)
    }

    /// An admin call about the model: `path` is under `/api/v1/models/m`.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CompareError> {
        admin_call(
            self.admin,
            method,
            &format!("/api/v1/models/{MODEL}{path}"),
            body,
        )
    }

    /// The version to roll out for `kind`, in staging. The identical candidate
    /// is whichever of `a` and `b` is not in production (brought back from
    /// archived after the last promotion).
    pub fn prepare_candidate(&self, kind: Kind) -> Result<String, CompareError> {
        let version = match kind {
            Kind::Slow => "slow",
            Kind::Failing => "failing",
            Kind::Identical => {
                let model = self.admin("GET", "", None)?;
                if model["production"] == "a" { "b" } else { "a" }
            }
        };
        let model = self.admin("GET", "", None)?;
        let stage = model["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["version"] == version)
            .and_then(|v| v["stage"].as_str())
            .unwrap_or("");
        if stage == "archived" {
            let body = json!({ "stage": "staging", "reason": "next identical rollout" });
            self.admin(
                "POST",
                &format!("/versions/{version}/transition"),
                Some(&body),
            )?;
        }
        Ok(version.to_string())
    }
}

fn config_text(
    args: &RolloutsArgs,
    data: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    endpoints: &[(&str, SocketAddr)],
) -> String {
    let mut text = format!(
        "[server]\nlisten = \"{data}\"\nadmin_listen = \"{admin}\"\nstate_dir = \"{}\"\n\n[[models]]\nname = \"{MODEL}\"\n",
        dir.join("state").display()
    );
    for (version, addr) in endpoints {
        let stage = if *version == "a" {
            "production"
        } else {
            "staging"
        };
        text.push_str(&format!(
            "  [[models.versions]]\n  version = \"{version}\"\n  stage = \"{stage}\"\n  endpoints = [\"http://{addr}\"]\n"
        ));
    }
    let steps: Vec<String> = args.steps.iter().map(f64::to_string).collect();
    text.push_str(&format!(
        "  [models.canary]\n  sticky_header = \"x-user-id\"\n  [models.rollout]\n  steps = [{}]\n  step_interval_s = {}\n  max_step_duration_s = {}\n",
        steps.join(", "),
        args.step_interval_s,
        args.max_step_duration_s
    ));
    text
}
