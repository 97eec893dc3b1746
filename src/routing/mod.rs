//! Routing: the immutable [`RoutingTable`], the [`Router`] that holds the current
//! one in a single `ArcSwap`, and [`resolve`], which picks the version route for
//! a request from its path and pin headers.
//!
//! The request path only ever calls [`Router::load`]. Every change (a stage
//! transition, a canary weight, a rollback, a reload) builds a whole new table off
//! the request path and publishes it with one atomic store: requests in flight
//! finish on the table they started with, new ones see the new one.

pub mod canary;
pub mod path;
pub mod stats;
mod table;

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};
use http::{HeaderMap, HeaderName, StatusCode};

pub use crate::upstream::{Endpoint, EndpointGuard};
pub use table::{ModelRoutes, RouteHeaders, RoutingTable, VersionRoute};

use crate::llm::ModelRef;
use crate::telemetry::Telemetry;
use crate::vocab::{ModelSpec, Stage};

/// Request header pinning a stage: `production` or `staging`.
pub static PIN_STAGE: HeaderName = HeaderName::from_static("x-stagegate-stage");
/// Request header pinning a version id.
pub static PIN_VERSION: HeaderName = HeaderName::from_static("x-stagegate-version");
/// What both pin headers' names start with.
const PIN_PREFIX: &str = "x-stagegate-";

/// The role in which a version answers a request (the `x-stagegate-stage` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedStage {
    Production,
    Canary,
    Staging,
}

impl ServedStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedStage::Production => "production",
            ServedStage::Canary => "canary",
            ServedStage::Staging => "staging",
        }
    }
}

/// Why no version route could be chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no model in request path; use /v1/models/{{model}}:predict, /v2/models/{{model}}/infer or /models/{{model}}/..."
    )]
    NoModelInPath,
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} has no version {version:?}")]
    UnknownVersion { model: String, version: String },
    #[error("version {version:?} of model {model:?} is archived and serves no traffic")]
    ArchivedVersion { model: String, version: String },
    #[error("archived versions of model {0:?} serve no traffic")]
    ArchivedStage(String),
    #[error("model {model:?} has no {stage} version")]
    NoVersionInStage { model: String, stage: Stage },
    #[error("model {0:?} has no production version")]
    NoProductionVersion(String),
    #[error("invalid {header} header: {value:?}")]
    InvalidPin { header: &'static str, value: String },
    #[error("model {0:?} has nothing after its '@' (write model@stage or model@version)")]
    EmptyNamePin(String),
    #[error("conflicting pins: {0}")]
    ConflictingPins(String),
    #[error(
        "request path {0:?} is not in plain form (no '.' or '..' segments, no encoded '/', '.' or '\')"
    )]
    UnplainPath(String),
    #[error("a model path inside the generic route ({0:?}); call that path directly")]
    NestedModelPath(String),
}

impl RouteError {
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::NoModelInPath
            | RouteError::UnknownModel(_)
            | RouteError::UnknownVersion { .. }
            | RouteError::NoVersionInStage { .. } => StatusCode::NOT_FOUND,
            RouteError::ArchivedVersion { .. } | RouteError::ArchivedStage(_) => {
                StatusCode::FORBIDDEN
            }
            RouteError::NoProductionVersion(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::InvalidPin { .. }
            | RouteError::EmptyNamePin(_)
            | RouteError::ConflictingPins(_)
            | RouteError::UnplainPath(_)
            | RouteError::NestedModelPath(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine-readable `code` of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::NoModelInPath => "no_route",
            RouteError::UnknownModel(_) => "unknown_model",
            RouteError::UnknownVersion { .. } => "unknown_version",
            RouteError::ArchivedVersion { .. } | RouteError::ArchivedStage(_) => "archived_version",
            RouteError::NoVersionInStage { .. } => "no_version_in_stage",
            RouteError::NoProductionVersion(_) => "no_production_version",
            RouteError::InvalidPin { .. } | RouteError::EmptyNamePin(_) => "invalid_pin",
            RouteError::ConflictingPins(_) => "conflicting_pins",
            RouteError::UnplainPath(_) | RouteError::NestedModelPath(_) => "invalid_path",
        }
    }
}

/// The route chosen for a request.
#[derive(Clone, Copy)]
pub struct Resolved<'t> {
    pub model: &'t ModelRoutes,
    pub route: &'t Arc<VersionRoute>,
    /// Leading bytes of the path the model server must not see.
    pub strip: usize,
    /// A readiness or metadata call, which is never mirrored.
    pub status_call: bool,
}

/// Chooses the version route for a request from its path and pin headers.
pub fn resolve<'t>(
    table: &'t RoutingTable,
    path: &str,
    headers: &HeaderMap,
) -> Result<Resolved<'t>, RouteError> {
    if !path::is_plain(path) {
        return Err(RouteError::UnplainPath(path.to_string()));
    }
    let parsed = path::parse(path).ok_or(RouteError::NoModelInPath)?;
    if parsed.strip > 0 && path::parse(&path[parsed.strip..]).is_some() {
        return Err(RouteError::NestedModelPath(path.to_string()));
    }
    let (model, route) = resolve_model(table, parsed.model, parsed.version, headers)?;
    Ok(Resolved {
        model,
        route,
        strip: parsed.strip,
        status_call: parsed.status_call,
    })
}

/// Chooses the version route of `name` for a call that names the model itself
/// (a gRPC call's `model_name`), pinned to `version` if the call names one, and
/// by the pin headers.
pub fn resolve_model<'t>(
    table: &'t RoutingTable,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
) -> Result<(&'t ModelRoutes, &'t Arc<VersionRoute>), RouteError> {
    let model = table
        .model(name)
        .ok_or_else(|| RouteError::UnknownModel(name.to_string()))?;
    let pins = pin_headers(headers);
    let version = pinned_version(version, pins)?;
    let route = choose(model, name, version, pinned_stage(pins)?, headers, None)?;
    Ok((model, route))
}

/// Chooses the version route for an OpenAI-style call from the model name the
/// client wrote (`chat`, or pinned: `chat@staging`, `chat@7`; a stage name
/// after the `@` pins the stage, anything else a version), the pin headers,
/// and `user` (OpenAI's end-user id) as a sticky key where the model's canary
/// takes it.
pub fn resolve_named<'t>(
    table: &'t RoutingTable,
    name: &str,
    headers: &HeaderMap,
    user: Option<&str>,
) -> Result<(&'t ModelRoutes, &'t Arc<VersionRoute>), RouteError> {
    let named = ModelRef::parse(name);
    let model = table
        .model(named.model)
        .ok_or_else(|| RouteError::UnknownModel(named.model.to_string()))?;
    let (version, stage) = match named.pin {
        None => (None, None),
        Some("") => return Err(RouteError::EmptyNamePin(name.to_string())),
        Some(pin) => match pin.parse::<Stage>() {
            Ok(stage) => (None, Some(stage)),
            Err(_) => (Some(pin), None),
        },
    };
    let pins = pin_headers(headers);
    let version = pinned_version(version, pins)?;
    let stage = match (stage, pinned_stage(pins)?) {
        (Some(named), Some(header)) if named != header => {
            return Err(RouteError::ConflictingPins(format!(
                "the model name pins {named} but x-stagegate-stage pins {header}"
            )));
        }
        (named, header) => named.or(header),
    };
    let key = user.map(str::as_bytes);
    let route = choose(model, named.model, version, stage, headers, key)?;
    Ok((model, route))
}

/// The route the pins (or their absence: production) select.
fn choose<'t>(
    model: &'t ModelRoutes,
    name: &str,
    version: Option<&str>,
    stage: Option<Stage>,
    headers: &HeaderMap,
    user: Option<&[u8]>,
) -> Result<&'t Arc<VersionRoute>, RouteError> {
    match (version, stage) {
        (Some(version), stage) => {
            let route = by_version(model, name, version)?;
            match stage {
                Some(stage) if stage.as_str() != route.stage().as_str() => {
                    Err(RouteError::ConflictingPins(format!(
                        "x-stagegate-stage is {stage} but version {version:?} is {}",
                        route.stage().as_str()
                    )))
                }
                _ => Ok(route),
            }
        }
        (None, Some(stage)) => by_stage(model, name, stage),
        (None, None) => match model.canary() {
            Some(split) if split.chooses_canary(headers, user) => Ok(&split.route),
            _ => model
                .production()
                .ok_or_else(|| RouteError::NoProductionVersion(name.to_string())),
        },
    }
}

/// The headers, if any of them may pin: most requests carry no pin, and one
/// pass over their few names is cheaper than hashing both pin names to find
/// neither.
fn pin_headers(headers: &HeaderMap) -> Option<&HeaderMap> {
    headers
        .keys()
        .any(|name| name.as_str().starts_with(PIN_PREFIX))
        .then_some(headers)
}

fn pinned_version<'a>(
    from_path: Option<&'a str>,
    pins: Option<&'a HeaderMap>,
) -> Result<Option<&'a str>, RouteError> {
    let from_header = header_str(pins, &PIN_VERSION)?;
    match (from_path, from_header) {
        (Some(path), Some(header)) if path != header => Err(RouteError::ConflictingPins(format!(
            "the request pins version {path:?} but x-stagegate-version pins {header:?}"
        ))),
        (path, header) => Ok(path.or(header)),
    }
}

fn pinned_stage(pins: Option<&HeaderMap>) -> Result<Option<Stage>, RouteError> {
    let Some(value) = header_str(pins, &PIN_STAGE)? else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| RouteError::InvalidPin {
        header: PIN_STAGE.as_str(),
        value: value.to_string(),
    })
}

fn header_str<'a>(
    pins: Option<&'a HeaderMap>,
    name: &'static HeaderName,
) -> Result<Option<&'a str>, RouteError> {
    match pins.and_then(|headers| headers.get(name)) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| RouteError::InvalidPin {
                header: name.as_str(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            }),
    }
}

fn by_version<'t>(
    model: &'t ModelRoutes,
    name: &str,
    version: &str,
) -> Result<&'t Arc<VersionRoute>, RouteError> {
    if let Some(route) = model.serving_version(version) {
        return Ok(route);
    }
    let (model_name, version_id) = (name.to_string(), version.to_string());
    Err(if model.is_archived(version) {
        RouteError::ArchivedVersion {
            model: model_name,
            version: version_id,
        }
    } else {
        RouteError::UnknownVersion {
            model: model_name,
            version: version_id,
        }
    })
}

fn by_stage<'t>(
    model: &'t ModelRoutes,
    name: &str,
    stage: Stage,
) -> Result<&'t Arc<VersionRoute>, RouteError> {
    let route = match stage {
        Stage::Production => model.production(),
        Stage::Staging => match model.staging() {
            [] => None,
            [only] => Some(only),
            several => several.get(rand::random_range(0..several.len())),
        },
        Stage::Archived => return Err(RouteError::ArchivedStage(name.to_string())),
    };
    route.ok_or_else(|| RouteError::NoVersionInStage {
        model: name.to_string(),
        stage,
    })
}

// === impl Router ===

/// Holds the current routing table. Readers call [`Router::load`]; writers build a
/// new table and [`Router::publish`] it.
pub struct Router {
    current: ArcSwap<RoutingTable>,
    telemetry: Telemetry,
    /// Serializes publishers so revisions stay strictly increasing. Never taken on
    /// the request path.
    publishing: Mutex<()>,
}

impl Router {
    /// A router serving `models` at revision 1.
    pub fn new(models: &[ModelSpec], telemetry: Telemetry) -> Router {
        let table = RoutingTable::build(models, 1, &telemetry, None);
        telemetry.set_routing_revision(table.revision());
        Router {
            current: ArcSwap::from_pointee(table),
            telemetry,
            publishing: Mutex::new(()),
        }
    }

    /// The current table. Lock-free; hold the guard only briefly (not across an
    /// `.await`): clone the `Arc<VersionRoute>` you need instead.
    pub fn load(&self) -> Guard<Arc<RoutingTable>> {
        self.current.load()
    }

    /// The current table, as an `Arc` of its own.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Builds a table from `models` with the next revision and swaps it in with one
    /// atomic store. Returns the new table.
    pub fn publish(&self, models: &[ModelSpec]) -> Arc<RoutingTable> {
        let _writer = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.current.load_full();
        let next = Arc::new(RoutingTable::build(
            models,
            previous.revision() + 1,
            &self.telemetry,
            Some(&previous),
        ));
        self.current.store(Arc::clone(&next));
        self.telemetry.set_routing_revision(next.revision());
        next
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;

    #[test]
    fn both_pins_are_found_by_their_prefix() {
        for pin in [&PIN_STAGE, &PIN_VERSION] {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, http::HeaderValue::from_static("x"));
            assert!(pin_headers(&headers).is_none());
            headers.insert(pin.clone(), http::HeaderValue::from_static("1"));
            assert!(pin_headers(&headers).is_some(), "{pin}");
        }
    }
}
