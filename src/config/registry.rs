//! `[registry]` and `[models.mlflow]`: the external model registry stagegate
//! follows, validated into [`RegistrySource`] and one [`MlflowModel`] per model.
//!
//! Secrets are named by environment variable and read here, once, so that
//! `stagegate check` reports a variable that is not set.

use std::fmt;
use std::time::Duration;

use super::raw::{RawMlflowModel, RawModel, RawRegistry};
use super::validate::{Errors, positive};
use crate::vocab::EndpointUrl;

pub const POLL_INTERVAL_MS: u64 = 5_000;
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const PRODUCTION_ALIAS: &str = "champion";
pub const STAGING_ALIAS: &str = "challenger";
pub const ENDPOINTS_TAG: &str = "stagegate.endpoints";
/// Read when `token_env` is not given, as MLflow's own clients do.
pub const DEFAULT_TOKEN_ENV: &str = "MLFLOW_TRACKING_TOKEN";
pub const USERNAME_ENV: &str = "MLFLOW_TRACKING_USERNAME";
pub const PASSWORD_ENV: &str = "MLFLOW_TRACKING_PASSWORD";

/// The registry stagegate follows, and how it follows each model.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySource {
    /// The MLflow tracking server, `http://host:port` with an optional path prefix
    /// and no trailing slash.
    pub url: String,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    pub auth: RegistryAuth,
    /// Whether stagegate's own changes are written back to the registry.
    pub write_back: bool,
    /// The secret MLflow signs webhook deliveries with; `None`: no webhook.
    pub webhook_secret: Option<Secret>,
    pub models: Vec<MlflowModel>,
}

/// How stagegate authenticates to MLflow.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryAuth {
    None,
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

/// A value that never appears in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How one stagegate model follows one registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowModel {
    /// The stagegate model (`[[models]] name`).
    pub model: String,
    pub registered_model: String,
    pub follow: Follow,
    /// The version tag holding comma-separated endpoint base URLs.
    pub endpoints_tag: String,
    /// Endpoints of versions without the tag; `{version}` is replaced.
    pub endpoint_template: Option<Vec<String>>,
    pub on_production_change: OnProductionChange,
}

/// What in the registry names a model's production and staging versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    Aliases {
        production: String,
        staging: Vec<String>,
    },
    /// MLflow's legacy stages (`current_stage`): Production and Staging.
    Stages,
}

/// What stagegate does when the registry names a new production version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnProductionChange {
    /// Run the model's rollout plan, and promote only if its gates pass.
    Rollout,
    /// Promote at once.
    Promote,
}

impl MlflowModel {
    /// The endpoints the template gives `version`.
    pub fn templated_endpoints(&self, version: &str) -> Option<Vec<String>> {
        self.endpoint_template.as_ref().map(|templates| {
            templates
                .iter()
                .map(|t| t.replace("{version}", version))
                .collect()
        })
    }
}

/// Validates `[registry]`, and every model's `[models.mlflow]` against it.
pub(super) fn validate_registry(
    raw: Option<&RawRegistry>,
    models: &[RawModel],
    errors: &mut Errors,
) -> Option<RegistrySource> {
    let mut followed: Vec<MlflowModel> = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let Some(section) = model.mlflow.as_ref() else {
            continue;
        };
        let path = format!("models[{i}]");
        if raw.is_none() {
            errors.push(
                format!("{path}.mlflow"),
                "needs a [registry] section saying where MLflow is",
            );
        }
        if !model.versions.is_empty() {
            errors.push(
                format!("{path}.versions"),
                "a model that follows MLflow ([models.mlflow]) takes its versions from \
                 MLflow; remove its [[models.versions]]",
            );
        }
        let mapping = validate_model(&model.name, section, &path, errors);
        // Two models following one registered model would each take the
        // other's write-back for a person's change.
        if let Some(first) = followed
            .iter()
            .find(|m| m.registered_model == mapping.registered_model)
        {
            errors.push(
                format!("{path}.mlflow.registered_model"),
                format!(
                    "{:?} is already followed by model {:?}; one registered model drives one \
                     stagegate model",
                    mapping.registered_model, first.model
                ),
            );
        }
        followed.push(mapping);
    }
    let raw = raw?;
    match raw.kind.as_deref() {
        Some("mlflow") => {}
        None => errors.push("registry.kind", "is required; the only kind is \"mlflow\""),
        Some(other) => errors.push(
            "registry.kind",
            format!("{other:?} is not a registry kind (the only kind is \"mlflow\")"),
        ),
    }
    let url = validate_url(raw.url.as_deref(), errors);
    let poll = positive(
        raw.poll_interval_ms,
        POLL_INTERVAL_MS,
        "registry.poll_interval_ms",
        errors,
    );
    let timeout = positive(
        raw.request_timeout_ms,
        REQUEST_TIMEOUT_MS,
        "registry.request_timeout_ms",
        errors,
    );
    let auth = validate_auth(raw.token_env.as_deref(), errors);

    let webhook_secret = raw
        .webhook_secret_env
        .as_deref()
        .and_then(|name| read_env(name, "registry.webhook_secret_env", errors).map(Secret::new));
    Some(RegistrySource {
        url,
        poll_interval: Duration::from_millis(poll.unwrap_or(POLL_INTERVAL_MS)),
        request_timeout: Duration::from_millis(timeout.unwrap_or(REQUEST_TIMEOUT_MS)),
        auth,
        write_back: raw.write_back.unwrap_or(true),
        webhook_secret,
        models: followed,
    })
}

fn validate_url(url: Option<&str>, errors: &mut Errors) -> String {
    let Some(url) = url else {
        errors.push("registry.url", "is required (the MLflow tracking server)");
        return String::new();
    };
    let trimmed = url.trim_end_matches('/');
    match trimmed.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
            if uri.query().is_some() {
                errors.push("registry.url", format!("{url:?} must not have a query"));
            }
        }
        Ok(uri) if uri.scheme_str() == Some("https") => errors.push(
            "registry.url",
            format!(
                "{url:?}: https is not supported yet; reach MLflow over http (a local \
                 TLS-terminating proxy works)"
            ),
        ),
        _ => errors.push(
            "registry.url",
            format!("{url:?} is not an http URL such as http://127.0.0.1:5000"),
        ),
    }
    trimmed.to_string()
}

fn validate_auth(token_env: Option<&str>, errors: &mut Errors) -> RegistryAuth {
    if let Some(name) = token_env {
        return read_env(name, "registry.token_env", errors).map_or(RegistryAuth::None, |token| {
            RegistryAuth::Bearer(Secret::new(token))
        });
    }
    let set = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = set(DEFAULT_TOKEN_ENV) {
        return RegistryAuth::Bearer(Secret::new(token));
    }
    match (set(USERNAME_ENV), set(PASSWORD_ENV)) {
        (Some(username), Some(password)) => RegistryAuth::Basic {
            username,
            password: Secret::new(password),
        },
        (None, None) => RegistryAuth::None,
        (username, _) => {
            let (given, missing) = match username {
                Some(_) => (USERNAME_ENV, PASSWORD_ENV),
                None => (PASSWORD_ENV, USERNAME_ENV),
            };
            errors.push(
                "registry",
                format!("{given} is set but {missing} is not: basic auth needs both"),
            );
            RegistryAuth::None
        }
    }
}

fn read_env(name: &str, path: &str, errors: &mut Errors) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        Ok(_) => {
            errors.push(path, format!("environment variable {name} is empty"));
            None
        }
        Err(_) => {
            errors.push(path, format!("environment variable {name} is not set"));
            None
        }
    }
}

fn validate_model(
    name: &str,
    raw: &RawMlflowModel,
    path: &str,
    errors: &mut Errors,
) -> MlflowModel {
    let path = format!("{path}.mlflow");
    let registered_model = raw.registered_model.clone().unwrap_or(name.to_string());
    if registered_model.trim().is_empty() {
        errors.push(format!("{path}.registered_model"), "must not be empty");
    }
    let follow = validate_follow(raw, &path, errors);
    let endpoints_tag = raw
        .endpoints_tag
        .clone()
        .unwrap_or(ENDPOINTS_TAG.to_string());
    if endpoints_tag.is_empty() {
        errors.push(format!("{path}.endpoints_tag"), "must not be empty");
    }
    let endpoint_template = raw.endpoint_template.as_deref().map(|template| {
        let templates: Vec<String> = template.split(',').map(|t| t.trim().to_string()).collect();
        for t in &templates {
            if !t.contains("{version}") {
                errors.push(
                    format!("{path}.endpoint_template"),
                    format!("{t:?} does not contain {{version}}"),
                );
            } else if let Err(e) = EndpointUrl::parse(&t.replace("{version}", "1")) {
                errors.push(format!("{path}.endpoint_template"), e.to_string());
            }
        }
        templates
    });
    let on_production_change = match raw.on_production_change.as_deref() {
        None | Some("rollout") => OnProductionChange::Rollout,
        Some("promote") => OnProductionChange::Promote,
        Some(other) => {
            errors.push(
                format!("{path}.on_production_change"),
                format!("{other:?} is not rollout or promote"),
            );
            OnProductionChange::Rollout
        }
    };
    MlflowModel {
        model: name.to_string(),
        registered_model,
        follow,
        endpoints_tag,
        endpoint_template,
        on_production_change,
    }
}

fn validate_follow(raw: &RawMlflowModel, path: &str, errors: &mut Errors) -> Follow {
    if raw.use_stages == Some(true) {
        if raw.production_alias.is_some() || raw.staging_aliases.is_some() {
            errors.push(
                format!("{path}.use_stages"),
                "follows MLflow's stages; remove production_alias and staging_aliases, \
                 or set use_stages = false to follow aliases",
            );
        }
        return Follow::Stages;
    }
    let production = raw
        .production_alias
        .clone()
        .unwrap_or(PRODUCTION_ALIAS.to_string());
    let staging = raw
        .staging_aliases
        .clone()
        .unwrap_or_else(|| vec![STAGING_ALIAS.to_string()]);
    for (field, alias) in std::iter::once(("production_alias", &production))
        .chain(staging.iter().map(|a| ("staging_aliases", a)))
    {
        if let Err(message) = check_alias(alias) {
            errors.push(format!("{path}.{field}"), message);
        }
    }
    if staging.contains(&production) {
        errors.push(
            format!("{path}.staging_aliases"),
            format!("{production:?} is the production alias; it cannot also be a staging alias"),
        );
    }
    Follow::Aliases {
        production,
        staging,
    }
}

/// MLflow's own rules for alias names.
fn check_alias(alias: &str) -> Result<(), String> {
    let reserved_version = alias.len() > 1
        && alias.starts_with(['v', 'V'])
        && alias[1..].bytes().all(|b| b.is_ascii_digit());
    if alias.is_empty() || alias.len() > 255 {
        Err(format!("alias {alias:?} must have 1 to 255 characters"))
    } else if !alias
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        Err(format!(
            "alias {alias:?} may only contain letters, digits, '_' and '-'"
        ))
    } else if alias.eq_ignore_ascii_case("latest") || reserved_version {
        Err(format!(
            "alias {alias:?} is reserved by MLflow (latest, v<number>)"
        ))
    } else {
        Ok(())
    }
}
