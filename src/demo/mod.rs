//! `stagegate demo`: three versions of a small model served in-process (one
//! archived, one in production, one in staging), two of a small OpenAI-compatible
//! LLM ([`llm_model`]: production, and a staging version that words its answers a
//! little differently), and a gateway in front of them, configured from an
//! embedded config.

pub mod llm_model;
mod model;
pub mod scenario;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use llm_model::{DemoLlm, Voice};
pub use model::DemoModel;

use crate::config::{Config, ConfigError};
use crate::gateway::{self, GatewayError, RunningGateway};
use crate::proxy::{self, Limits};

/// The demo's config; `{v1}`, `{v2}`, `{v3}` become the model servers' ports.
const DEMO_CONFIG: &str = r#"
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
state_dir = "{state_dir}"
request_timeout_ms = 5000

[[models]]
name = "fraud"

  [[models.versions]]
  version = "1"
  stage = "archived"
  endpoints = ["http://127.0.0.1:{v1}"]

  [[models.versions]]
  version = "2"
  stage = "production"
  endpoints = ["http://127.0.0.1:{v2}"]

  [[models.versions]]
  version = "3"
  stage = "staging"
  endpoints = ["http://127.0.0.1:{v3}"]

  [models.canary]
  sticky_header = "x-user-id"

  # Every production request is mirrored to version 3; its answers are compared
  # with production's, ignoring the fields that always differ.
  [models.shadow]
  percent = 100.0

  [models.compare]
  mode = "json"
  rel_tol = 0.015
  ignore = ["model_version", "id"]

# An OpenAI-compatible LLM: version 2's text differs from version 1's in a few words.
[[models]]
name = "chat"

  [[models.versions]]
  version = "1"
  stage = "production"
  endpoints = ["http://127.0.0.1:{llm1}"]
  upstream_model = "demo-llm-1"

  [[models.versions]]
  version = "2"
  stage = "staging"
  endpoints = ["http://127.0.0.1:{llm2}"]
  upstream_model = "demo-llm-2"

  [models.canary]
  sticky_openai_user = true

  [models.shadow]
  percent = 100.0

  [models.compare]
  mode = "llm"
"#;

/// The versions the demo serves: (version, weight drift).
const VERSIONS: [(&str, f64); 3] = [("1", -0.05), ("2", 0.0), ("3", 0.01)];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start demo model server: {0}")]
    ModelServer(#[source] std::io::Error),
    #[error("cannot create the demo's state directory: {0}")]
    StateDir(#[source] std::io::Error),
    #[error("embedded demo config is invalid: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// A running demo: the gateway and its model servers.
pub struct Demo {
    pub gateway: RunningGateway,
    pub config: Config,
    model_servers: CancellationToken,
    /// Per version: set it and the version's predictions fail.
    failing: Vec<(String, Arc<AtomicBool>)>,
    /// A fresh journal each run, removed when the demo ends.
    _state_dir: tempfile::TempDir,
}

/// Starts the model servers and the gateway. Use port 0 for ephemeral ports.
pub async fn start(listen: SocketAddr, admin_listen: SocketAddr) -> Result<Demo, DemoError> {
    let model_servers = CancellationToken::new();
    let mut ports = Vec::with_capacity(VERSIONS.len());
    let mut failing = Vec::with_capacity(VERSIONS.len());
    for (version, drift) in VERSIONS {
        let model = DemoModel {
            name: "fraud".to_string(),
            version: version.to_string(),
            drift,
            failing: Arc::default(),
        };
        failing.push((version.to_string(), Arc::clone(&model.failing)));
        ports.push(spawn_model_server(model, model_servers.clone()).await?);
    }
    let mut llm_ports = Vec::with_capacity(2);
    for (served, voice) in [
        ("demo-llm-1", Voice::Plain),
        ("demo-llm-2", Voice::Reworded),
    ] {
        let mut model = DemoLlm::new(served, voice);
        // Slow enough to watch a streamed answer arrive word by word.
        model.token_delay = Duration::from_millis(40);
        llm_ports.push(spawn_model_server(model, model_servers.clone()).await?);
    }
    let state_dir = tempfile::Builder::new()
        .prefix("stagegate-demo-")
        .tempdir()
        .map_err(DemoError::StateDir)?;
    let text = DEMO_CONFIG
        .replace(
            "{state_dir}",
            &state_dir.path().display().to_string().replace('\\', "/"),
        )
        .replace("{listen}", &listen.to_string())
        .replace("{admin_listen}", &admin_listen.to_string())
        .replace("{v1}", &ports[0].to_string())
        .replace("{v2}", &ports[1].to_string())
        .replace("{v3}", &ports[2].to_string())
        .replace("{llm1}", &llm_ports[0].to_string())
        .replace("{llm2}", &llm_ports[1].to_string());
    let config = Config::parse(&text, "embedded demo config")?;
    let gateway = gateway::start(&config).await?;
    Ok(Demo {
        gateway,
        config,
        model_servers,
        failing,
        _state_dir: state_dir,
    })
}

impl Demo {
    /// Makes `version`'s model server fail every prediction (or recover).
    pub fn set_failing(&self, version: &str, failing: bool) {
        for (v, flag) in &self.failing {
            if v == version {
                flag.store(failing, Ordering::Relaxed);
            }
        }
    }

    /// Shuts the gateway down, then the model servers.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.model_servers.cancel();
    }

    /// What to try, as shell commands.
    pub fn instructions(&self) -> String {
        let data = self.gateway.data_addr();
        let admin = self.gateway.admin_addr();
        let program = std::env::current_exe()
            .ok()
            .filter(|exe| exe.file_name().is_some_and(|name| name == "stagegate"))
            .map_or_else(|| "stagegate".to_string(), |exe| exe.display().to_string());
        let ctl = format!("{program} ctl --admin http://{admin}");
        let v1 = r#"'{"instances": [[0.2, 1.5, 3.0]]}'"#;
        let v2 = r#"'{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "data": [0.2, 1.5, 3.0]}]}'"#;
        let llm = llm_instructions(&data.to_string(), &ctl);
        format!(
            "stagegate demo: gateway on http://{data}, admin on http://{admin}\n\
             model \"fraud\": version 1 archived, version 2 in production, version 3 in staging\n\n\
             Production answers (see the x-stagegate-* response headers):\n  \
             curl -si http://{data}/v1/models/fraud:predict -d {v1}\n  \
             curl -si http://{data}/v2/models/fraud/infer -d {v2}\n\
             Pin the staging version by header, or by the V2 version path:\n  \
             curl -si http://{data}/v1/models/fraud:predict -H 'x-stagegate-stage: staging' -d {v1}\n  \
             curl -si http://{data}/v2/models/fraud/versions/3/infer -d {v2}\n\
             Archived versions serve nothing (403), unknown models are 404:\n  \
             curl -si http://{data}/v1/models/fraud:predict -H 'x-stagegate-version: 1' -d {v1}\n  \
             curl -si http://{data}/v1/models/nope:predict -d {v1}\n\
             Production traffic is mirrored to version 3 and the answers compared:\n  \
             {ctl} shadow fraud\n\
             Promote version 3, see the next request go to it, then roll back (the journal\n\
             keeps both; the admin API needs no token here because it is on loopback):\n  \
             {ctl} transition fraud 3 production --reason 'shadow looks good'\n  \
             curl -si http://{data}/v1/models/fraud:predict -d {v1}\n  \
             {ctl} rollback fraud --reason 'p99 regression'\n  \
             {ctl} history fraud\n  \
             {ctl} status\n\
             Or hand the promotion to a rollout (canary steps with gates; see --scenario):\n  \
             {ctl} rollout start fraud 3 --steps 10,50,100 --step-interval-s 5 --min-requests 20\n  \
             {ctl} rollout status fraud\n\
             {llm}\
             Metrics and health:\n  \
             curl -s http://{admin}/metrics | grep ^stagegate_\n  \
             curl -s http://{admin}/readyz\n\n\
             Ctrl-C stops the demo.\n"
        )
    }
}

/// The LLM part of the instructions.
fn llm_instructions(data: &str, ctl: &str) -> String {
    let chat = |model: &str, stream: bool| {
        format!(
            "'{{\"model\": \"{model}\", \"stream\": {stream}, \"messages\": [{{\"role\": \"user\", \"content\": \"what does stagegate do\"}}]}}'"
        )
    };
    let url = format!("http://{data}/v1/chat/completions");
    let json = "-H 'content-type: application/json'";
    format!(
        "model \"chat\" (OpenAI-compatible): version 1 in production, version 2 in staging\n\
         A chat completion, then the same streamed event by event (-N), then pinned to staging:\n  \
         curl -s {url} {json} -d {whole}\n  \
         curl -sN {url} {json} -d {streamed}\n  \
         curl -s {url} {json} -d {pinned}\n\
         Every answer is mirrored to version 2 and compared as generated text (ROUGE-L):\n  \
         {ctl} shadow chat\n",
        whole = chat("chat", false),
        streamed = chat("chat", true),
        pinned = chat("chat@staging", false),
    )
}

/// Serves `model` on an ephemeral loopback port until `shutdown`; its port.
pub async fn spawn_model_server(
    model: impl crate::proxy::Handler,
    shutdown: CancellationToken,
) -> Result<u16, DemoError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::ModelServer)?;
    let port = listener
        .local_addr()
        .map_err(DemoError::ModelServer)?
        .port();
    let limits = Limits {
        header_read_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        llm_first_byte_timeout: Duration::from_secs(5),
        llm_idle_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
        max_body_bytes: 1 << 20,
        max_buffered_body_bytes: 64 << 20,
        max_header_bytes: 64 << 10,
        max_concurrent_requests: 1024,
        ejection: Default::default(),
    };
    tokio::spawn(async move { proxy::serve(listener, Arc::new(model), &limits, shutdown).await });
    Ok(port)
}
