//! Raw config -> validated [`Config`], reporting every error with its field path;
//! models, versions and their policies here, `[server]` and `[admin]` in
//! [`super::server`].

use std::collections::HashSet;

use super::raw::{RawCompare, RawConfig, RawModel, RawVersion};
use super::{Config, FieldError, defaults, registry, server, store};
use crate::vocab::names::{ServedModelName, is_valid_identifier};
use crate::vocab::policy::{
    CompareMode, ComparePolicy, LlmCompare, ShadowPolicy, StickyPolicy, TextMatch, default_plan,
};
use crate::vocab::rollout::{GateLimit, Gates, OnFailure, Plan};
use crate::vocab::{
    EndpointUrl, HeaderNameText, MethodName, ModelSpec, PathPattern, Stage, VersionSpec,
};

#[derive(Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errors = Errors::default();
    let server = server::validate_server(&raw.server, &mut errors);
    let admin = server::validate_admin(&raw.admin, &mut errors);
    let models = validate_models(&raw.models, &mut errors);
    let registry = registry::validate_registry(raw.registry.as_ref(), &raw.models, &mut errors);
    let store = store::validate_store(raw.store.as_ref(), &mut errors);
    if errors.0.is_empty() {
        Ok(Config {
            server,
            admin,
            models,
            registry,
            store,
            source: None,
        })
    } else {
        Err(errors.0)
    }
}

/// The value (or its default), which must be greater than zero.
pub(super) fn positive(
    value: Option<u64>,
    default: u64,
    path: &str,
    errors: &mut Errors,
) -> Option<u64> {
    match value.unwrap_or(default) {
        0 => {
            errors.push(path, "must be greater than 0");
            None
        }
        n => Some(n),
    }
}

pub(super) fn usize_or_max(value: Option<u64>) -> usize {
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
        .and_then(|name| {
            HeaderNameText::parse(name)
                .map_err(|message| errors.push(format!("{path}.canary.sticky_header"), message))
                .ok()
        });
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
    StickyPolicy {
        header,
        cookie,
        openai_user: canary.and_then(|c| c.sticky_openai_user).unwrap_or(false),
    }
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
        max_step_duration_s: r.max_step_duration_s,
        confidence: r.confidence.unwrap_or(defaults.confidence),
        gates: Gates {
            max_error_rate: r
                .max_error_rate
                .map_or(defaults.gates.max_error_rate, GateLimit::limit),
            max_p99_ratio: r
                .max_p99_ratio
                .map_or(defaults.gates.max_p99_ratio, GateLimit::limit),
            max_latency_increase: r
                .max_latency_increase
                .map_or(defaults.gates.max_latency_increase, GateLimit::limit),
            latency_quantile: r
                .latency_quantile
                .unwrap_or(defaults.gates.latency_quantile),
            max_ttft_p99_ratio: r
                .max_ttft_p99_ratio
                .map_or(defaults.gates.max_ttft_p99_ratio, GateLimit::limit),
            max_tpot_p99_ratio: r
                .max_tpot_p99_ratio
                .map_or(defaults.gates.max_tpot_p99_ratio, GateLimit::limit),
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

/// Each of `texts` parsed; the first error otherwise.
fn parsed<T>(
    texts: &[String],
    parse: impl Fn(&String) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    texts.iter().map(parse).collect()
}

/// `[models.compare]`'s settings for `llm` mode (their ranges are checked with
/// the rest of the policy).
fn validate_llm_compare(
    compare: Option<&RawCompare>,
    path: &str,
    errors: &mut Errors,
) -> LlmCompare {
    let defaults = LlmCompare::default();
    let Some(compare) = compare else {
        return defaults;
    };
    let text = match compare.text.as_deref() {
        None => defaults.text,
        Some("exact") => TextMatch::Exact,
        Some("similarity") => TextMatch::Similarity,
        Some(other) => {
            let message = format!("unknown text rule {other:?} (expected exact or similarity)");
            errors.push(format!("{path}.compare.text"), message);
            defaults.text
        }
    };
    LlmCompare {
        text,
        min_similarity: compare.min_similarity.unwrap_or(defaults.min_similarity),
        json_output: compare.json_output.unwrap_or(defaults.json_output),
        max_length_ratio: compare
            .max_length_ratio
            .unwrap_or(defaults.max_length_ratio),
        min_cosine: compare.min_cosine.unwrap_or(defaults.min_cosine),
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
                    format!(
                        "unknown mode {mode:?} (expected json, oip, label, status, bytes or llm)"
                    )
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
            .and_then(|s| s.methods.as_ref())
            .map_or(Ok(defaults.methods.clone()), |methods| {
                parsed(methods, |m| MethodName::parse(&m.to_ascii_uppercase()))
            })
            .unwrap_or_else(|message| {
                // Reported once; the defaults stand in so nothing else is.
                errors.push(format!("{path}.shadow.methods"), message);
                defaults.methods.clone()
            }),
        compare: ComparePolicy {
            mode: mode.clone().unwrap_or(defaults.compare.mode),
            abs_tol: compare
                .and_then(|c| c.abs_tol)
                .unwrap_or(defaults.compare.abs_tol),
            rel_tol: compare
                .and_then(|c| c.rel_tol)
                .unwrap_or(defaults.compare.rel_tol),
            ignore: compare
                .and_then(|c| c.ignore.as_ref())
                .map_or(Ok(Vec::new()), |ignore| {
                    parsed(ignore, |p| PathPattern::parse(p))
                })
                .unwrap_or_else(|message| {
                    errors.push(format!("{path}.compare"), message);
                    Vec::new()
                }),
            label_path: compare
                .and_then(|c| c.label_path.as_deref())
                .map_or(Ok(defaults.compare.label_path.clone()), PathPattern::parse)
                .unwrap_or_else(|message| {
                    errors.push(format!("{path}.compare"), message);
                    defaults.compare.label_path
                }),
            llm: validate_llm_compare(compare, path, errors),
        },
        replay_primary: shadow.and_then(|s| s.replay_primary).unwrap_or(false),
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
    // A model that follows MLflow learns its versions at run time.
    for version in policy.versions.iter().filter(|_| raw.mlflow.is_none()) {
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
    let endpoints = endpoint_urls(&raw.endpoints, &format!("{path}.endpoints"), errors);
    let grpc_endpoints = endpoint_urls(
        &raw.grpc_endpoints,
        &format!("{path}.grpc_endpoints"),
        errors,
    );
    if raw.max_concurrent_requests == Some(0) {
        errors.push(
            format!("{path}.max_concurrent_requests"),
            "must be greater than 0",
        );
    }
    let upstream_model = raw.upstream_model.as_deref().and_then(|name| {
        ServedModelName::parse(name)
            .map_err(|message| errors.push(format!("{path}.upstream_model"), message))
            .ok()
    });
    Some(VersionSpec {
        version: raw.version.clone(),
        stage: stage?,
        endpoints,
        grpc_endpoints,
        max_concurrent_requests: raw
            .max_concurrent_requests
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        upstream_model,
    })
}

/// The URLs of a list of endpoints, each error at its index in `path`.
fn endpoint_urls(texts: &[String], path: &str, errors: &mut Errors) -> Vec<EndpointUrl> {
    let mut seen = HashSet::new();
    let mut urls = Vec::with_capacity(texts.len());
    for (k, text) in texts.iter().enumerate() {
        let at = format!("{path}[{k}]");
        match EndpointUrl::parse(text) {
            Ok(url) if !seen.insert(url.clone()) => {
                errors.push(at, format!("duplicate endpoint {url}"));
            }
            Ok(url) => urls.push(url),
            Err(e) => errors.push(at, e.to_string()),
        }
    }
    urls
}

fn identifier_message(name: &str) -> String {
    format!("invalid name {name:?}: use 1-128 characters from A-Z a-z 0-9 '-' '_' '.'")
}
