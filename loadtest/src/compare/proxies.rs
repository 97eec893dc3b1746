//! The proxies under comparison: starting each pinned to the proxy core, with its
//! config (from [`super::configs`]) in a temporary directory of its own, and
//! waiting until a request gets through it.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use tempfile::TempDir;

use super::CompareError;
use super::configs::{
    Ports, Setup, fd_hard_limit, haproxy_config, haproxy_maxconn, nginx_config, stagegate_config,
};
use super::http;
use super::procs::{Core, Pinning, ProcessGuard, free_addr, tree_cpu_seconds, tree_peak_rss_kib};

/// The path every load run and probe requests.
pub const INFER_PATH: &str = "/v2/models/m/infer";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    /// No proxy: load goes straight to the primary backend.
    Direct,
    Stagegate,
    Nginx,
    Haproxy,
    /// The hyper floor ([`crate::floor`]): what hyper and Tokio cost alone.
    Floor,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 5] = [
        ProxyKind::Direct,
        ProxyKind::Stagegate,
        ProxyKind::Nginx,
        ProxyKind::Haproxy,
        ProxyKind::Floor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Direct => "direct",
            ProxyKind::Stagegate => "stagegate",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
            ProxyKind::Floor => "hyper floor",
        }
    }
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a proxy is set up to do for one case.
#[derive(Debug)]
pub struct RunningProxy {
    pub kind: ProxyKind,
    /// The name of its series in the report: the kind's name unless a case runs
    /// the same proxy in two variants.
    pub label: &'static str,
    /// Where load goes.
    pub target: SocketAddr,
    /// stagegate's admin listener.
    pub admin: Option<SocketAddr>,
    // Declared before the directory so the process stops before its files go.
    process: Option<ProcessGuard>,
    _dir: Option<TempDir>,
}

impl RunningProxy {
    pub fn direct(primary: SocketAddr) -> Self {
        RunningProxy {
            kind: ProxyKind::Direct,
            label: ProxyKind::Direct.name(),
            target: primary,
            admin: None,
            process: None,
            _dir: None,
        }
    }

    /// CPU seconds used so far by the proxy's process tree; `None` for direct.
    pub fn cpu_seconds(&self, ticks_per_second: f64) -> Option<f64> {
        let pid = self.process.as_ref()?.pid();
        Some(tree_cpu_seconds(pid, ticks_per_second))
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        Some(tree_peak_rss_kib(self.process.as_ref()?.pid()))
    }

    /// Mirrors stagegate has sent so far (its shadow report of model `m`);
    /// `None` when it does not mirror, or is not stagegate.
    pub fn mirrored(&self) -> Option<u64> {
        let response = http::call(self.admin?, "GET", SHADOW_PATH, None, CALL_TIMEOUT).ok()?;
        mirrored_in_report(&response.body)
    }
}

const SHADOW_PATH: &str = "/api/v1/models/m/shadow";

/// The sum of `versions[].mirrored` in a shadow report whose mirroring is active.
pub fn mirrored_in_report(body: &str) -> Option<u64> {
    let report: serde_json::Value = serde_json::from_str(body).ok()?;
    if report["active"] != serde_json::Value::Bool(true) {
        return None;
    }
    report["versions"]
        .as_array()?
        .iter()
        .map(|version| version["mirrored"].as_u64())
        .sum()
}

/// Programs the proxies run from.
#[derive(Debug, Clone)]
pub struct Programs {
    pub stagegate: PathBuf,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    /// This executable, which runs the hyper floor.
    pub loadtest: PathBuf,
}

pub fn start(
    kind: ProxyKind,
    setup: &Setup,
    programs: &Programs,
    pin: &Pinning,
) -> Result<RunningProxy, CompareError> {
    if kind == ProxyKind::Direct {
        return Ok(RunningProxy::direct(setup.grpc.unwrap_or(setup.primary)));
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("loadtest-{}-", kind.name().replace(' ', "-")))
        .tempdir()
        .map_err(|source| CompareError::io("creating a temporary directory", source))?;
    let ports = Ports {
        listen: free_addr()?,
        admin: free_addr()?,
    };
    let (program, args) = write_config(kind, setup, programs, dir.path(), &ports)?;
    let log_path = dir.path().join("stderr.log");
    let log = File::create(&log_path)
        .map_err(|source| CompareError::io(format!("creating {}", log_path.display()), source))?;
    let mut command = pin.command(Core::Proxy, &program);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut process = ProcessGuard::spawn(kind.name(), &mut command)?;
    let admin = (kind == ProxyKind::Stagegate).then_some(ports.admin);
    wait_ready(&mut process, &ports, admin.is_some(), &log_path)?;
    Ok(RunningProxy {
        kind,
        label: kind.name(),
        target: ports.listen,
        admin,
        process: Some(process),
        _dir: Some(dir),
    })
}

/// Writes the proxy's config into `dir`; returns the program and its arguments.
fn write_config(
    kind: ProxyKind,
    setup: &Setup,
    programs: &Programs,
    dir: &Path,
    ports: &Ports,
) -> Result<(PathBuf, Vec<OsString>), CompareError> {
    let (program, name, config, flags): (_, _, _, &[&str]) = match kind {
        ProxyKind::Direct => return Err(CompareError::Setup("direct has no proxy".into())),
        ProxyKind::Floor => return Ok((programs.loadtest.clone(), floor_args(setup, ports))),
        ProxyKind::Stagegate => (
            programs.stagegate.clone(),
            "stagegate.toml",
            stagegate_config(setup, ports, &dir.join("state")),
            &["serve", "--config"],
        ),
        ProxyKind::Nginx => (
            missing(programs.nginx.clone(), kind)?,
            "nginx.conf",
            nginx_config(setup, ports.listen, dir),
            &["-c"],
        ),
        ProxyKind::Haproxy => (
            missing(programs.haproxy.clone(), kind)?,
            "haproxy.cfg",
            haproxy_config(setup, ports.listen, haproxy_maxconn(fd_hard_limit())),
            &["-db", "-f"],
        ),
    };
    let path = dir.join(name);
    fs::write(&path, config)
        .map_err(|source| CompareError::io(format!("writing {}", path.display()), source))?;
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.push(path.into_os_string());
    Ok((program, args))
}

/// The hyper floor takes its few settings as arguments.
fn floor_args(setup: &Setup, ports: &Ports) -> Vec<OsString> {
    let args = [
        "floor".to_string(),
        "--listen".to_string(),
        ports.listen.to_string(),
        "--upstream".to_string(),
        setup.primary.to_string(),
        "--threads".to_string(),
        setup.threads.to_string(),
    ];
    args.into_iter().map(OsString::from).collect()
}

fn missing(program: Option<PathBuf>, kind: ProxyKind) -> Result<PathBuf, CompareError> {
    program.ok_or_else(|| CompareError::Setup(format!("{kind} is not installed")))
}

/// Waits for stagegate's `/readyz`, then for one request through the proxy to
/// succeed; fails early if the process exits.
fn wait_ready(
    process: &mut ProcessGuard,
    ports: &Ports,
    has_admin: bool,
    log: &Path,
) -> Result<(), CompareError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let last = loop {
        if let Some(status) = process.exited() {
            break format!("it exited ({status})");
        }
        let problem = match probe(ports, has_admin) {
            Ok(()) => return Ok(()),
            Err(problem) => problem,
        };
        if Instant::now() >= deadline {
            break problem;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(CompareError::NotReady {
        what: process.name().to_string(),
        detail: format!("{last}; its stderr ends with: {}", tail.join(" / ")),
    })
}

/// One readiness check: `/readyz` (stagegate), then a request through the proxy.
fn probe(ports: &Ports, has_admin: bool) -> Result<(), String> {
    if has_admin {
        match http::call(ports.admin, "GET", "/readyz", None, CALL_TIMEOUT) {
            Ok(response) if response.status == 200 => {}
            Ok(response) => return Err(format!("admin /readyz answered {}", response.status)),
            Err(err) => return Err(format!("admin /readyz failed: {err}")),
        }
    }
    let body = Some(r#"{"instances": [[0.5]]}"#);
    match http::call(ports.listen, "POST", INFER_PATH, body, CALL_TIMEOUT) {
        Ok(response) if response.is_success() => Ok(()),
        Ok(response) => Err(format!("probe request answered {}", response.status)),
        Err(err) => Err(format!("probe request failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_summed_over_versions_of_an_active_report() {
        let report = r#"{"active": true, "model": "m",
            "versions": [{"version": "2", "mirrored": 40}, {"version": "3", "mirrored": 2}]}"#;
        assert_eq!(mirrored_in_report(report), Some(42));
        let inactive = r#"{"active": false, "versions": [{"mirrored": 0}]}"#;
        assert_eq!(mirrored_in_report(inactive), None);
        assert_eq!(mirrored_in_report("not json"), None);
        assert_eq!(mirrored_in_report(r#"{"active": true}"#), None);
    }
}
