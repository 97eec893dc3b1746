//! Raw config -> validated [`Config`], reporting every error with its field path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAdmin, RawConfig, RawModel, RawServer, RawVersion};
use super::{
    AdminConfig, Config, EjectionPolicy, FieldError, Limits, ServerConfig, ShadowPriority,
    ShadowThreads, defaults,
};
use crate::registry::{
    CompareMode, ComparePolicy, EndpointUrl, Gates, ModelSpec, OnFailure, Plan, ShadowPolicy,
    Stage, StickyPolicy, VersionSpec, default_plan, is_valid_identifier,
};

/// hyper refuses header buffers smaller than this.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
const MAX_WORKER_THREADS: u64 = 1024;

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errors = Errors::default();
    let server = validate_server(&raw.server, &mut errors);
    let admin = validate_admin(&raw.admin, &mut errors);
    let models = validate_models(&raw.models, &mut errors);
    if errors.0.is_empty() {
        Ok(Config {
            server,
            admin,
            models,
            source: None,
        })
    } else {
        Err(errors.0)
    }
}

fn validate_server(raw: &RawServer, errors: &mut Errors) -> ServerConfig {
    let listen = socket_addr(&raw.listen, defaults::LISTEN, "server.listen", errors);
    let admin_listen = socket_addr(
        &raw.admin_listen,
        defaults::ADMIN_LISTEN,
        "server.admin_listen",
        errors,
    );
    if listen == admin_listen && listen.port() != 0 {
        errors.push(
            "server.admin_listen",
            format!("is the same address as server.listen ({listen})"),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let worker_threads = raw.worker_threads.unwrap_or(cores);
    if !(1..=MAX_WORKER_THREADS).contains(&worker_threads) {
        errors.push(
            "server.worker_threads",
            format!("must be between 1 and {MAX_WORKER_THREADS}, got {worker_threads}"),
        );
    }
    let shadow_threads = validate_shadow_threads(raw, worker_threads, errors);
    let max_header_bytes = raw.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES);
    if max_header_bytes < MIN_HEADER_BYTES {
        errors.push(
            "server.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES}, got {max_header_bytes}"),
        );
    }
    let mut millis = |value: Option<u64>, default: u64, path: &str| {
        positive(value, default, path, errors).map_or(Duration::ZERO, Duration::from_millis)
    };
    let header_read_timeout = millis(
        raw.header_read_timeout_ms,
        defaults::HEADER_READ_TIMEOUT_MS,
        "server.header_read_timeout_ms",
    );
    let connect_timeout = millis(
        raw.connect_timeout_ms,
        defaults::CONNECT_TIMEOUT_MS,
        "server.connect_timeout_ms",
    );
    let request_timeout = millis(
        raw.request_timeout_ms,
        defaults::REQUEST_TIMEOUT_MS,
        "server.request_timeout_ms",
    );
    let drain_timeout = millis(
        raw.drain_timeout_ms,
        defaults::DRAIN_TIMEOUT_MS,
        "server.drain_timeout_ms",
    );
    let max_body_bytes = positive(
        raw.max_body_bytes,
        defaults::MAX_BODY_BYTES,
        "server.max_body_bytes",
        errors,
    );
    let max_concurrent_requests = positive(
        raw.max_concurrent_requests,
        defaults::MAX_CONCURRENT_REQUESTS,
        "server.max_concurrent_requests",
        errors,
    );
    let eject_after = positive(
        raw.eject_after_failures,
        defaults::EJECT_AFTER_FAILURES,
        "server.eject_after_failures",
        errors,
    );
    let eject_backoff = positive(
        raw.eject_backoff_ms,
        defaults::EJECT_BACKOFF_MS,
        "server.eject_backoff_ms",
        errors,
    )
    .map_or(Duration::ZERO, Duration::from_millis);
    ServerConfig {
        listen,
        admin_listen,
        worker_threads: worker_threads as usize,
        shadow_threads,
        state_dir: PathBuf::from(raw.state_dir.as_deref().unwrap_or(defaults::STATE_DIR)),
        limits: Limits {
            header_read_timeout,
            connect_timeout,
            request_timeout,
            drain_timeout,
            max_body_bytes: usize_or_max(max_body_bytes),
            max_header_bytes: usize_or_max(Some(max_header_bytes)),
            max_concurrent_requests: usize_or_max(max_concurrent_requests),
            ejection: EjectionPolicy {
                failures: eject_after.map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                base: eject_backoff,
                max: eject_backoff.saturating_mul(30),
            },
        },
    }
}

fn validate_admin(raw: &RawAdmin, errors: &mut Errors) -> AdminConfig {
    if raw.token_file.as_deref() == Some("") {
        errors.push(
            "admin.token_file",
            "must not be empty (leave it out for no token)",
        );
    }
    AdminConfig {
        token_file: raw
            .token_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from),
    }
}

fn socket_addr(
    value: &Option<String>,
    default: &str,
    path: &str,
    errors: &mut Errors,
) -> SocketAddr {
    let text = value.as_deref().unwrap_or(default);
    text.parse().unwrap_or_else(|_| {
        errors.push(
            path,
            format!("not a socket address: {text:?} (expected e.g. \"127.0.0.1:8080\")"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// The value (or its default), which must be greater than zero.
fn positive(value: Option<u64>, default: u64, path: &str, errors: &mut Errors) -> Option<u64> {
    match value.unwrap_or(default) {
        0 => {
            errors.push(path, "must be greater than 0");
            None
        }
        n => Some(n),
    }
}

fn usize_or_max(value: Option<u64>) -> usize {
    value.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn validate_models(raw: &[RawModel], errors: &mut Errors) -> Vec<ModelSpec> {
    let mut names = HashSet::new();
    let mut models = Vec::with_capacity(raw.len());
    for (i, model) in raw.iter().enumerate() {
        let path = format!("models[{i}]");
        if !is_valid_identifier(&model.name) {
            errors.push(format!("{path}.name"), identifier_message(&model.name));
        } else if !names.insert(model.name.as_str()) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate model {:?}", model.name),
            );
        }
        models.push(validate_model(model, &path, errors));
    }
    models
}

fn validate_model(raw: &RawModel, path: &str, errors: &mut Errors) -> ModelSpec {
    let health_path = raw.health_path.as_deref().unwrap_or(defaults::HEALTH_PATH);
    // "" means: probe with a TCP connect only.
    if !health_path.is_empty() && !health_path.starts_with('/') {
        errors.push(
            format!("{path}.health_path"),
            format!("must start with '/', got {health_path:?}"),
        );
    }
    let mut ids = HashSet::new();
    let mut production: Option<&str> = None;
    let mut versions = Vec::with_capacity(raw.versions.len());
    for (j, version) in raw.versions.iter().enumerate() {
        let vpath = format!("{path}.versions[{j}]");
        if !is_valid_identifier(&version.version) {
            let message = identifier_message(&version.version);
            errors.push(format!("{vpath}.version"), message);
        } else if !ids.insert(version.version.as_str()) {
            errors.push(
                format!("{vpath}.version"),
                format!(
                    "duplicate version {:?} of model {:?}",
                    version.version, raw.name
                ),
            );
        }
        let Some(spec) = validate_version(version, &vpath, errors) else {
            continue;
        };
        if spec.stage == Stage::Production {
            if let Some(first) = production {
                errors.push(
                    format!("{vpath}.stage"),
                    format!(
                        "model {:?} already has production version {first:?}; \
                         at most one version per model may be in production",
                        raw.name
                    ),
                );
            } else {
                production = Some(&version.version);
            }
        }
        versions.push(spec);
    }
    ModelSpec {
        name: raw.name.clone(),
        health_path: health_path.to_string(),
        versions,
        shadow: validate_shadow(raw, path, errors),
        sticky: validate_sticky(raw, path, errors),
        rollout_defaults: validate_rollout(raw, path, errors),
        canary: None,
        rollout: None,
    }
}

fn validate_sticky(raw: &RawModel, path: &str, errors: &mut Errors) -> StickyPolicy {
    let canary = raw.canary.as_ref();
    let header = canary
        .and_then(|c| c.sticky_header.as_deref())
        .map(str::to_ascii_lowercase);
    if let Some(name) = &header
        && http::HeaderName::from_bytes(name.as_bytes()).is_err()
    {
        errors.push(
            format!("{path}.canary.sticky_header"),
            format!("{name:?} is not a header name"),
        );
    }
    let cookie = canary.and_then(|c| c.sticky_cookie.clone());
    if cookie
        .as_deref()
        .is_some_and(|c| c.is_empty() || c.contains([';', '=', ' ']))
    {
        errors.push(
            format!("{path}.canary.sticky_cookie"),
            "is not a cookie name",
        );
    }
    StickyPolicy { header, cookie }
}

fn validate_rollout(raw: &RawModel, path: &str, errors: &mut Errors) -> Plan {
    let defaults = default_plan();
    let Some(r) = raw.rollout.as_ref() else {
        return defaults;
    };
    let on_failure = match r.on_failure.as_deref() {
        None => defaults.on_failure,
        Some("rollback") => OnFailure::Rollback,
        Some("pause") => OnFailure::Pause,
        Some(other) => {
            errors.push(
                format!("{path}.rollout.on_failure"),
                format!("{other:?} is not rollback or pause"),
            );
            defaults.on_failure
        }
    };
    let plan = Plan {
        steps: r.steps.clone().unwrap_or(defaults.steps),
        step_interval_s: r.step_interval_s.unwrap_or(defaults.step_interval_s),
        min_requests: r.min_requests.unwrap_or(defaults.min_requests),
        gates: Gates {
            max_error_rate: r.max_error_rate.or(defaults.gates.max_error_rate),
            max_p99_ratio: r.max_p99_ratio.or(defaults.gates.max_p99_ratio),
            min_shadow_agreement: r.min_shadow_agreement,
            min_shadow_compared: r
                .min_shadow_compared
                .unwrap_or(defaults.gates.min_shadow_compared),
        },
        on_failure,
    };
    for (field, message) in plan.problems() {
        errors.push(format!("{path}.rollout.{field}"), message);
    }
    plan
}

/// `shadow_worker_threads` (as many as `worker_threads` by default) and
/// `shadow_priority`.
fn validate_shadow_threads(raw: &RawServer, workers: u64, errors: &mut Errors) -> ShadowThreads {
    // An invalid `worker_threads` is reported once, under its own name.
    let count = raw
        .shadow_worker_threads
        .unwrap_or(workers.clamp(1, MAX_WORKER_THREADS));
    if !(1..=MAX_WORKER_THREADS).contains(&count) {
        errors.push(
            "server.shadow_worker_threads",
            format!("must be between 1 and {MAX_WORKER_THREADS}, got {count}"),
        );
    }
    let priority = match raw.shadow_priority.as_deref() {
        None | Some("idle") => ShadowPriority::Idle,
        Some("normal") => ShadowPriority::Normal,
        Some(other) => {
            errors.push(
                "server.shadow_priority",
                format!("unknown priority {other:?} (expected idle or normal)"),
            );
            ShadowPriority::Idle
        }
    };
    ShadowThreads {
        count: count.clamp(1, MAX_WORKER_THREADS) as usize,
        priority,
    }
}

/// `[models.shadow]` and `[models.compare]`. A `[models.shadow]` section turns
/// mirroring on (percent 100 unless it says otherwise).
fn validate_shadow(raw: &RawModel, path: &str, errors: &mut Errors) -> ShadowPolicy {
    let defaults = ShadowPolicy::default();
    let shadow = raw.shadow.as_ref();
    let compare = raw.compare.as_ref();
    let mode = compare
        .and_then(|c| c.mode.as_deref())
        .map_or(Ok(defaults.compare.mode), |mode| {
            serde_json::from_value::<CompareMode>(serde_json::Value::String(mode.to_string()))
                .map_err(|_| {
                    format!("unknown mode {mode:?} (expected json, oip, label, status or bytes)")
                })
        });
    let policy = ShadowPolicy {
        percent: shadow.map_or(0.0, |s| s.percent.unwrap_or(100.0)),
        versions: shadow.and_then(|s| s.versions.clone()).unwrap_or_default(),
        timeout_ms: shadow
            .and_then(|s| s.timeout_ms)
            .unwrap_or(defaults.timeout_ms),
        max_in_flight: shadow
            .and_then(|s| s.max_in_flight)
            .map_or(defaults.max_in_flight, |n| usize_or_max(Some(n))),
        max_body_bytes: shadow
            .and_then(|s| s.max_body_bytes)
            .map_or(defaults.max_body_bytes, |n| usize_or_max(Some(n))),
        methods: shadow
            .and_then(|s| s.methods.clone())
            .unwrap_or(defaults.methods)
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        compare: ComparePolicy {
            mode: mode.clone().unwrap_or(defaults.compare.mode),
            abs_tol: compare
                .and_then(|c| c.abs_tol)
                .unwrap_or(defaults.compare.abs_tol),
            rel_tol: compare
                .and_then(|c| c.rel_tol)
                .unwrap_or(defaults.compare.rel_tol),
            ignore: compare.and_then(|c| c.ignore.clone()).unwrap_or_default(),
            label_path: compare
                .and_then(|c| c.label_path.clone())
                .unwrap_or(defaults.compare.label_path),
        },
    };
    if let Err(message) = mode {
        errors.push(format!("{path}.compare.mode"), message);
    }
    for (field, message) in policy.problems() {
        let section = if field.starts_with("compare") {
            ""
        } else {
            "shadow."
        };
        errors.push(format!("{path}.{section}{field}"), message);
    }
    for version in &policy.versions {
        if !raw.versions.iter().any(|v| &v.version == version) {
            errors.push(
                format!("{path}.shadow.versions"),
                format!("no version {version:?} in this model"),
            );
        }
    }
    policy
}

fn validate_version(raw: &RawVersion, path: &str, errors: &mut Errors) -> Option<VersionSpec> {
    let stage = raw
        .stage
        .parse::<Stage>()
        .map_err(|e| errors.push(format!("{path}.stage"), e.to_string()))
        .ok();
    if raw.endpoints.is_empty() {
        errors.push(
            format!("{path}.endpoints"),
            "needs at least one endpoint URL",
        );
    }
    let mut seen = HashSet::new();
    let mut endpoints = Vec::with_capacity(raw.endpoints.len());
    for (k, text) in raw.endpoints.iter().enumerate() {
        let epath = format!("{path}.endpoints[{k}]");
        match EndpointUrl::parse(text) {
            Ok(url) if !seen.insert(url.clone()) => {
                errors.push(epath, format!("duplicate endpoint {url}"));
            }
            Ok(url) => endpoints.push(url),
            Err(e) => errors.push(epath, e.to_string()),
        }
    }
    if raw.max_concurrent_requests == Some(0) {
        errors.push(
            format!("{path}.max_concurrent_requests"),
            "must be greater than 0",
        );
    }
    Some(VersionSpec {
        version: raw.version.clone(),
        stage: stage?,
        endpoints,
        max_concurrent_requests: raw
            .max_concurrent_requests
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    })
}

fn identifier_message(name: &str) -> String {
    format!("invalid name {name:?}: use 1-128 characters from A-Z a-z 0-9 '-' '_' '.'")
}
