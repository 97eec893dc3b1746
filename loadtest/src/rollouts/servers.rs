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
use crate::compare::procs::{ProcessGuard, free_addr, stagegate_binary};

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
    steps: usize,
    max_step_duration_s: f64,
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
        let stagegate = stagegate_binary(args.stagegate.as_deref())?;
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
            steps: args.steps.len(),
            max_step_duration_s: args.max_step_duration_s,
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

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn max_step_duration_s(&self) -> f64 {
        self.max_step_duration_s
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        rollouts: RolloutsArgs,
    }

    #[test]
    fn the_gateway_config_is_valid_and_holds_the_plan() {
        let args = Cli::parse_from([
            "rollouts",
            "--steps",
            "10,100",
            "--max-step-duration-s",
            "90",
        ])
        .rollouts;
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let endpoints = [
            ("a", addr(1)),
            ("b", addr(2)),
            ("slow", addr(3)),
            ("failing", addr(4)),
        ];
        let text = config_text(
            &args,
            addr(8080),
            addr(8081),
            Path::new("/tmp/x"),
            &endpoints,
        );
        let config = stagegate::config::Config::parse(&text, "rollouts").unwrap();
        let model = &config.models[0];
        assert_eq!(model.production().map(|v| v.version.as_str()), Some("a"));
        assert_eq!(model.versions.len(), 4);
        let plan = &model.rollout_defaults;
        assert_eq!(
            (plan.steps.clone(), plan.max_step_duration_s()),
            (vec![10.0, 100.0], 90.0)
        );
    }
}
