//! Configuration: the TOML file, its validation, and the validated [`Config`].
//!
//! Loading is two steps. [`raw`] deserializes the file (`deny_unknown_fields`, so a
//! misspelt key is an error, not a silent default); [`validate`] turns the raw
//! structs into a [`Config`], collecting every problem with its field path
//! (`models[1].versions[0].endpoints[0]: not an http URL`) instead of stopping at
//! the first; [`server`] does the `[server]` and `[admin]` sections for it, and
//! [`registry`] the `[registry]` and `[models.mlflow]` sections.

mod raw;
pub mod registry;
mod server;
pub mod store;
mod validate;

pub use raw::{optional_version_id, version_id};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::upstream::health::EjectionPolicy;
use crate::vocab::ModelSpec;

/// Defaults for keys the file leaves out.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:8081";
    pub const STATE_DIR: &str = "data";
    pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
    pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
    pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
    /// A generation may queue and think before its first byte...
    pub const LLM_FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
    /// ...and then streams for as long as it needs, but never stalls this long.
    pub const LLM_IDLE_TIMEOUT_MS: u64 = 30_000;
    pub const DRAIN_TIMEOUT_MS: u64 = 10_000;
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    pub const MAX_BUFFERED_BODY_BYTES: u64 = 256 * 1024 * 1024;
    pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
    pub const MAX_CONCURRENT_REQUESTS: u64 = 10_000;
    pub const HEALTH_PATH: &str = "/v2/health/ready";
    pub const EJECT_AFTER_FAILURES: u64 = 5;
    pub const EJECT_BACKOFF_MS: u64 = 1_000;
}

/// A validated configuration: every value here has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub models: Vec<ModelSpec>,
    /// The external registry followed (`[registry]`), if any.
    pub registry: Option<registry::RegistrySource>,
    /// Where control-plane state is kept (`[store]`).
    pub store: store::StoreConfig,
    /// The file this came from, for reloads; `None` for in-memory configs.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// File of admin tokens, one `name:token` (or bare token) per line.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub worker_threads: usize,
    pub shadow_threads: ShadowThreads,
    pub state_dir: PathBuf,
    pub limits: Limits,
}

/// The threads mirrors and comparisons run on, apart from the workers that serve
/// production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowThreads {
    pub count: usize,
    pub priority: ShadowPriority,
    /// CPU the shadow threads may use, as a share of one core.
    pub cpu_share: CpuShareOfCore,
}

/// How the operating system schedules the shadow threads against production's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShadowPriority {
    /// Only CPU time nothing else on the host wants (Linux `SCHED_IDLE`): mirrors
    /// starve whenever anything keeps the cores busy, the gateway or not.
    Idle,
    /// The same as production's, within `shadow_cpu_share`: mirrors get their
    /// share even when other processes are busy, and never more.
    #[default]
    Normal,
}

/// A share of one core's CPU time, in millionths: greater than 0, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuShareOfCore(u32);

impl CpuShareOfCore {
    pub const DEFAULT: CpuShareOfCore = CpuShareOfCore(200_000);

    /// `share` of one core, if it is a number greater than 0 and at most `cores`.
    pub fn new(share: f64, cores: usize) -> Option<CpuShareOfCore> {
        let micros = (share * 1e6).round();
        (share.is_finite() && share > 0.0 && share <= cores as f64 && micros >= 1.0)
            .then_some(CpuShareOfCore(micros as u32))
    }

    pub fn get(self) -> f64 {
        f64::from(self.0) / 1e6
    }
}

impl ShadowPriority {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowPriority::Idle => "idle",
            ShadowPriority::Normal => "normal",
        }
    }
}

/// The limits and timeouts the listeners enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// OpenAI-compatible calls: the wait for the answer's head (instead of
    /// `request_timeout`), and the longest gap in its body.
    pub llm_first_byte_timeout: Duration,
    pub llm_idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_body_bytes: usize,
    /// Request-body bytes held in memory at once, gateway-wide: read ahead of
    /// forwarding and copied for mirrors.
    pub max_buffered_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_concurrent_requests: usize,
    /// Passive health: when an endpoint is ejected, and for how long.
    pub ejection: EjectionPolicy,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {} error(s):\n{}", .errors.len(), FieldErrors(.errors))]
    Invalid {
        origin: String,
        errors: Vec<FieldError>,
    },
}

/// One invalid value, with the path of the field that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct FieldErrors<'a>(&'a [FieldError]);

impl fmt::Display for FieldErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The field errors, when the file parsed but its values did not validate.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

impl Config {
    /// Reads and validates the config file at `path`. Relative paths in it
    /// (`state_dir`, `token_file`) are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.server.state_dir = base.join(&config.server.state_dir);
        config.admin.token_file = config.admin.token_file.map(|file| base.join(file));
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Settings that differ in `next` but only take effect at start-up.
    pub fn unreloadable_changes(&self, next: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.server, &next.server);
        [
            ("server.listen", a.listen != b.listen),
            ("server.admin_listen", a.admin_listen != b.admin_listen),
            (
                "server.worker_threads",
                a.worker_threads != b.worker_threads,
            ),
            (
                "server.shadow_worker_threads, shadow_priority and shadow_cpu_share",
                a.shadow_threads != b.shadow_threads,
            ),
            ("server.state_dir", a.state_dir != b.state_dir),
            ("server limits and timeouts", a.limits != b.limits),
            ("registry and models.mlflow", self.registry != next.registry),
            ("store", self.store != next.store),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Parses and validates config text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        validate::validate(raw).map_err(|errors| ConfigError::Invalid {
            origin: origin.to_string(),
            errors,
        })
    }
}
