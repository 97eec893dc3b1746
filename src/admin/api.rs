//! The JSON admin API under `/api/v1`: reads come from the routing table's
//! catalog (the state the data plane routes by); changes go to the registry
//! writer and are answered once durable and live.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::auth::Caller;
use super::routes::ApiRoute;
use super::{registry, rollout, shadow, views};
use crate::proxy::{json_error, json_response};
use crate::registry::Published;
use crate::registry::{Command, Registry, RegistryError, Stage};
use crate::rollout::{RemoteStats, RolloutReadings};
use crate::sync::SyncHandle;

/// Admin request bodies are small JSON documents.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_HISTORY_PAGE: usize = 50;
const MAX_HISTORY_PAGE: usize = 1000;

pub struct Api {
    published: Arc<Published>,
    registry: Registry,
    readings: RolloutReadings,
    sync: Option<SyncHandle>,
    /// The other replicas' measurements, for merged shadow reports.
    pub(super) remote: RemoteStats,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    #[serde(deserialize_with = "crate::config::version_id")]
    version: String,
    endpoints: Vec<String>,
    #[serde(default)]
    grpc_endpoints: Vec<String>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    stage: Stage,
    #[serde(default)]
    reason: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    #[serde(default, deserialize_with = "crate::config::optional_version_id")]
    version: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default, deserialize_with = "crate::config::optional_version_id")]
    to_version: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    force: bool,
}

impl Api {
    pub fn new(
        published: Arc<Published>,
        registry: Registry,
        readings: RolloutReadings,
        sync: Option<SyncHandle>,
    ) -> Api {
        Api {
            published,
            registry,
            readings,
            sync,
            remote: RemoteStats::default(),
        }
    }

    /// What the rollout controller last measured for `model`: this replica's own
    /// when it runs the controller, the leader's otherwise.
    fn rollout_readings(&self, model: &str) -> Option<Value> {
        match self.readings.get(model) {
            Some(own) => serde_json::to_value(own).ok(),
            None => self.remote.leader_readings(model),
        }
    }

    pub async fn answer(
        &self,
        route: ApiRoute,
        caller: &Caller,
        request: Request<Incoming>,
    ) -> Response<Bytes> {
        let query = request.uri().query().unwrap_or_default().to_string();
        match route {
            ApiRoute::Models => self.models(),
            ApiRoute::Model(model) => self.model(&model),
            ApiRoute::History(model) => self.history(&model, &query),
            ApiRoute::Register(model) => {
                let command = |body: RegisterBody| Command::Register {
                    model,
                    version: body.version,
                    endpoints: body.endpoints,
                    grpc_endpoints: body.grpc_endpoints,
                    upstream_model: body.upstream_model,
                    reason: body.reason,
                };
                self.change_from(request, None, command, caller, StatusCode::CREATED)
                    .await
            }
            ApiRoute::Transition(model, version) => {
                let command = |body: TransitionBody| Command::Transition {
                    model,
                    version,
                    to: body.stage,
                    reason: body.reason,
                };
                self.change_from(request, None, command, caller, StatusCode::OK)
                    .await
            }
            ApiRoute::Rollback(model) => {
                let command = |body: RollbackBody| Command::Rollback {
                    model,
                    to_version: body.to_version,
                    reason: body.reason,
                    force: body.force,
                };
                let empty = Some(RollbackBody::default());
                self.change_from(request, empty, command, caller, StatusCode::OK)
                    .await
            }
            ApiRoute::Reload => self.reload().await,
            ApiRoute::ShadowReport(model) => {
                match shadow::report(&self.published.load(), &model, &self.remote) {
                    Some(view) => json_response(StatusCode::OK, &view),
                    None => registry_error(&RegistryError::UnknownModel(model)),
                }
            }
            ApiRoute::SetShadow(model) => self.set_shadow(model, caller, request).await,
            ApiRoute::SetCanary(model) => {
                let command = |body: rollout::CanaryBody| Command::SetCanary {
                    model,
                    version: body.version,
                    weight: body.weight,
                    reason: body.reason,
                };
                self.change_from(request, None, command, caller, StatusCode::OK)
                    .await
            }
            ApiRoute::RolloutStatus(model) => {
                let table = self.published.load();
                match table.catalog().model(&model) {
                    Some(spec) => json_response(
                        StatusCode::OK,
                        &rollout::view(spec, self.rollout_readings(&model)),
                    ),
                    None => registry_error(&RegistryError::UnknownModel(model)),
                }
            }
            ApiRoute::StartRollout(model) => self.start_rollout(model, caller, request).await,
            ApiRoute::RolloutAction(model, action) => {
                let Some(decision) = rollout::decision(&action) else {
                    return json_error(
                        StatusCode::NOT_FOUND,
                        &format!("no rollout action {action:?}"),
                        "not_found",
                    );
                };
                let command = |body: rollout::ActionBody| Command::Rollout {
                    model,
                    id: None,
                    decision,
                    evidence: Vec::new(),
                    reason: body.reason,
                };
                let empty = Some(rollout::ActionBody::default());
                self.change_from(request, empty, command, caller, StatusCode::OK)
                    .await
            }
            ApiRoute::ResetShadow(model) => self.reset_shadow(&model, request).await,
            ApiRoute::Registry => self
                .sync
                .as_ref()
                .map_or_else(registry::not_configured, registry::status),
            ApiRoute::RegistrySync => match &self.sync {
                Some(sync) => registry::sync_now(sync).await,
                None => registry::not_configured(),
            },
        }
    }

    async fn set_shadow(
        &self,
        model: String,
        caller: &Caller,
        request: Request<Incoming>,
    ) -> Response<Bytes> {
        let body: Value = match read_json(request, None).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        match shadow::patch_and_reason(body) {
            Ok((patch, reason)) => {
                let command = Command::SetShadow {
                    model,
                    patch,
                    reason,
                };
                self.change(command, caller, StatusCode::OK).await
            }
            Err(message) => json_error(StatusCode::BAD_REQUEST, &message, "invalid_request"),
        }
    }

    async fn start_rollout(
        &self,
        model: String,
        caller: &Caller,
        request: Request<Incoming>,
    ) -> Response<Bytes> {
        let body: rollout::RolloutBody = match read_json(request, None).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let defaults = match self.published.load().catalog().model(&model) {
            Some(spec) => spec.rollout_defaults.clone(),
            None => return registry_error(&RegistryError::UnknownModel(model)),
        };
        let command = Command::StartRollout {
            plan: body.plan(&defaults),
            model,
            candidate: body.candidate,
            reason: body.reason,
        };
        self.change(command, caller, StatusCode::CREATED).await
    }

    async fn reset_shadow(&self, model: &str, request: Request<Incoming>) -> Response<Bytes> {
        let body: ResetBody = match read_json(request, Some(ResetBody::default())).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        match shadow::reset(&self.published.load(), model, body.version.as_deref()) {
            Some(reset) => {
                json_response(StatusCode::OK, &json!({ "model": model, "reset": reset }))
            }
            None => registry_error(&match body.version {
                Some(version) => RegistryError::UnknownVersion {
                    model: model.to_string(),
                    version,
                },
                None => RegistryError::UnknownModel(model.to_string()),
            }),
        }
    }

    fn models(&self) -> Response<Bytes> {
        let table = self.published.load();
        let mut view = views::models(&table);
        // The sync's state beside the catalog it feeds, so one read shows both.
        view["registry_sync"] = self
            .sync
            .as_ref()
            .map_or(Value::Null, |sync| sync.status().to_json(SystemTime::now()));
        json_response(StatusCode::OK, &view)
    }

    fn model(&self, name: &str) -> Response<Bytes> {
        let table = self.published.load();
        match views::model(&table, name) {
            Some(mut view) => {
                let status = self.sync.as_ref().map(SyncHandle::status);
                if let Some(followed) = status.as_ref().and_then(|s| s.model(name)) {
                    view["registry"] = serde_json::to_value(followed).unwrap_or(Value::Null);
                }
                json_response(StatusCode::OK, &view)
            }
            None => registry_error(&RegistryError::UnknownModel(name.to_string())),
        }
    }

    fn history(&self, name: &str, query: &str) -> Response<Bytes> {
        let page = match HistoryPage::parse(query) {
            Ok(page) => page,
            Err(message) => {
                return json_error(StatusCode::BAD_REQUEST, &message, "invalid_request");
            }
        };
        let table = self.published.load();
        if table.catalog().model(name).is_none() {
            return registry_error(&RegistryError::UnknownModel(name.to_string()));
        }
        let history = table.catalog().ledger.model(name).map(|m| &m.history);
        let mut newest_first = history
            .into_iter()
            .flatten()
            .rev()
            .filter(|r| page.before.is_none_or(|before| r.revision < before));
        let entries: Vec<_> = newest_first.by_ref().take(page.limit).cloned().collect();
        let next_before = match newest_first.next() {
            Some(_) => entries.last().map(|r| r.revision),
            None => None,
        };
        json_response(
            StatusCode::OK,
            &json!({ "model": name, "entries": entries, "next_before": next_before }),
        )
    }

    /// Reads the body as `T`, turns it into a command and makes the change.
    async fn change_from<T: DeserializeOwned>(
        &self,
        request: Request<Incoming>,
        when_empty: Option<T>,
        command: impl FnOnce(T) -> Command,
        caller: &Caller,
        status: StatusCode,
    ) -> Response<Bytes> {
        match read_json(request, when_empty).await {
            Ok(body) => self.change(command(body), caller, status).await,
            Err(response) => response,
        }
    }

    async fn change(
        &self,
        command: Command,
        caller: &Caller,
        status: StatusCode,
    ) -> Response<Bytes> {
        match self.registry.change(command, caller.actor()).await {
            Ok(record) => {
                let revision = self.published.load().revision();
                json_response(
                    status,
                    &json!({ "record": record, "routing_revision": revision }),
                )
            }
            Err(error) => registry_error(&error),
        }
    }

    async fn reload(&self) -> Response<Bytes> {
        match self.registry.reload().await {
            Ok(reloaded) => json_response(
                StatusCode::OK,
                &json!({
                    "result": "applied",
                    "routing_revision": reloaded.routing_revision,
                    "warnings": reloaded.warnings,
                }),
            ),
            Err(error) => registry_error(&error),
        }
    }
}

struct HistoryPage {
    limit: usize,
    before: Option<u64>,
}

impl HistoryPage {
    fn parse(query: &str) -> Result<HistoryPage, String> {
        let mut page = HistoryPage {
            limit: DEFAULT_HISTORY_PAGE,
            before: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key} must be a number, got {value:?}"))
            };
            match key {
                "limit" => page.limit = (number()? as usize).clamp(1, MAX_HISTORY_PAGE),
                "before" => page.before = Some(number()?),
                _ => {
                    return Err(format!(
                        "unknown query parameter {key:?} (use limit, before)"
                    ));
                }
            }
        }
        Ok(page)
    }
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]; an empty body means
/// `when_empty`, if given. Errors are ready-made 400/413 responses naming the field.
async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
    when_empty: Option<T>,
) -> Result<T, Response<Bytes>> {
    let bytes = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            let message = format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes");
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
                "body_too_large",
            ));
        }
        Err(error) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read body: {error}"),
                "bad_request",
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return when_empty.ok_or_else(|| {
            json_error(
                StatusCode::BAD_REQUEST,
                "a JSON body is required",
                "invalid_request",
            )
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON body: {e}"),
            "invalid_request",
        )
    })
}

fn registry_error(error: &RegistryError) -> Response<Bytes> {
    let mut body = json!({ "error": error.to_string(), "code": error.code() });
    if let RegistryError::Reload(config_error) = error {
        let fields: Vec<Value> = config_error
            .field_errors()
            .iter()
            .map(|e| json!({ "path": e.path, "message": e.message }))
            .collect();
        body["errors"] = Value::from(fields);
    }
    json_response(error.status(), &body)
}
