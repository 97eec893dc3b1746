//! The file as written: serde structs that mirror the TOML one to one.
//!
//! Fields whose values need checking (addresses, stages, URLs) stay strings here so
//! that validation can report every bad value at once with its path, instead of
//! serde stopping at the first.

use serde::Deserialize;

use crate::vocab::rollout::GateLimit;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    pub registry: Option<RawRegistry>,
    pub store: Option<RawStore>,
    #[serde(default)]
    pub models: Vec<RawModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub dial_timeout_ms: Option<u64>,
    pub lease_ttl_s: Option<u64>,
    pub username: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub token_env: Option<String>,
    pub write_back: Option<bool>,
    pub webhook_secret_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMlflowModel {
    pub registered_model: Option<String>,
    pub production_alias: Option<String>,
    pub staging_aliases: Option<Vec<String>>,
    pub use_stages: Option<bool>,
    pub endpoints_tag: Option<String>,
    pub endpoint_template: Option<String>,
    pub on_production_change: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub worker_threads: Option<u64>,
    pub shadow_worker_threads: Option<u64>,
    pub shadow_priority: Option<String>,
    pub shadow_cpu_share: Option<f64>,
    pub state_dir: Option<String>,
    pub header_read_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub llm_first_byte_timeout_ms: Option<u64>,
    pub llm_idle_timeout_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_buffered_body_bytes: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    pub eject_after_failures: Option<u64>,
    pub eject_backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub health_path: Option<String>,
    #[serde(default)]
    pub versions: Vec<RawVersion>,
    pub shadow: Option<RawShadow>,
    pub compare: Option<RawCompare>,
    pub canary: Option<RawCanary>,
    pub rollout: Option<RawRollout>,
    pub mlflow: Option<RawMlflowModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub sticky_header: Option<String>,
    pub sticky_cookie: Option<String>,
    pub sticky_openai_user: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub steps: Option<Vec<f64>>,
    pub step_interval_s: Option<f64>,
    pub min_requests: Option<u64>,
    pub max_step_duration_s: Option<f64>,
    pub confidence: Option<f64>,
    pub max_error_rate: Option<GateLimit>,
    pub max_p99_ratio: Option<GateLimit>,
    pub max_latency_increase: Option<GateLimit>,
    pub latency_quantile: Option<f64>,
    pub max_ttft_p99_ratio: Option<GateLimit>,
    pub max_tpot_p99_ratio: Option<GateLimit>,
    pub min_shadow_agreement: Option<f64>,
    pub min_shadow_compared: Option<u64>,
    pub on_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub percent: Option<f64>,
    pub versions: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub methods: Option<Vec<String>>,
    pub replay_primary: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    pub mode: Option<String>,
    pub abs_tol: Option<f64>,
    pub rel_tol: Option<f64>,
    pub ignore: Option<Vec<String>>,
    pub label_path: Option<String>,
    pub text: Option<String>,
    pub min_similarity: Option<f64>,
    pub json_output: Option<bool>,
    pub max_length_ratio: Option<f64>,
    pub min_cosine: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    /// `version = "3"` and `version = 3` both mean version "3".
    #[serde(deserialize_with = "version_id")]
    pub version: String,
    pub stage: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub grpc_endpoints: Vec<String>,
    pub max_concurrent_requests: Option<u64>,
    pub upstream_model: Option<String>,
}

/// A version id written as a string or an integer (`"3"` or `3`).
pub fn version_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    StringOrInteger::deserialize(deserializer).map(String::from)
}

/// [`version_id`] for optional fields.
pub fn optional_version_id<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Option::<StringOrInteger>::deserialize(deserializer).map(|id| id.map(String::from))
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a version id such as \"3\" or 3")]
enum StringOrInteger {
    String(String),
    Integer(i64),
}

impl From<StringOrInteger> for String {
    fn from(id: StringOrInteger) -> String {
        match id {
            StringOrInteger::String(s) => s,
            StringOrInteger::Integer(n) => n.to_string(),
        }
    }
}
