//! The immutable [`RoutingTable`] and how it is built from the registry's models.

use crate::vocab::id_header_value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

use super::ServedStage;
use crate::shadow::{ModelShadow, StagingTarget};
use crate::upstream::{self, Endpoint};
use crate::vocab::{EndpointUrl, ModelSpec, ServedModelName, Stage, VersionSpec};

use super::canary::CanarySplit;
use super::stats::RouteStats;
use crate::telemetry::llm::LlmMetrics;
use crate::telemetry::{RouteMetrics, Telemetry};
use crate::upstream::admission::Admission;
use crate::upstream::pool::PoolKind;

/// Everything the request path needs to route, resolved ahead of time: version
/// routes with their endpoints, response header values and metric handles.
pub struct RoutingTable {
    revision: u64,
    /// The control-plane state this table was built from.
    models: HashMap<String, ModelRoutes>,
    /// Every endpoint in the table, so the next table can reuse them (and their
    /// outstanding-request counters) instead of starting from zero.
    endpoints: HashMap<EndpointUrl, Arc<Endpoint>>,
}

/// The routes of one model.
pub struct ModelRoutes {
    production: Option<Arc<VersionRoute>>,
    staging: Vec<Arc<VersionRoute>>,
    /// Archived version ids: known, so a pin to one is refused (403), not unknown (404).
    archived: Vec<String>,
    shadow: Arc<ModelShadow>,
    canary: Option<CanarySplit>,
}

/// The endpoints of the table being built, reusing those of the previous one.
struct Endpoints<'a> {
    previous: Option<&'a HashMap<EndpointUrl, Arc<Endpoint>>>,
    current: HashMap<EndpointUrl, Arc<Endpoint>>,
}

impl Endpoints<'_> {
    fn get(&mut self, url: &EndpointUrl) -> Arc<Endpoint> {
        let existing = self.previous.and_then(|map| map.get(url));
        let shared = existing
            .cloned()
            .unwrap_or_else(|| Arc::new(Endpoint::new(url.clone())));
        Arc::clone(self.current.entry(url.clone()).or_insert(shared))
    }
}

/// One model version serving in one stage.
pub struct VersionRoute {
    model: String,
    version: String,
    stage: ServedStage,
    endpoints: Vec<Arc<Endpoint>>,
    /// Where the version answers gRPC; empty if it does not.
    grpc_endpoints: Vec<Arc<Endpoint>>,
    /// The name its server serves it under (OpenAI's `model`), if not the
    /// model's own.
    upstream_model: Option<ServedModelName>,
    pub metrics: RouteMetrics,
    /// Resolved on the route's first OpenAI-style answer (once per table), so
    /// that models that serve none show no LLM series.
    llm_metrics: OnceLock<LlmMetrics>,
    telemetry: Telemetry,
    pub headers: RouteHeaders,
    /// Live measurements, carried across tables for the same version and stage.
    pub stats: Arc<RouteStats>,
    /// The version's own concurrency limit, if it has one (carried across tables).
    pub admission: Option<Arc<Admission>>,
}

/// Response header values, built once per table instead of once per request.
pub struct RouteHeaders {
    pub model: HeaderValue,
    pub version: HeaderValue,
    pub stage: HeaderValue,
}

// === impl RoutingTable ===

impl RoutingTable {
    /// Builds a table from validated models. Endpoints already in `previous` are
    /// reused, so load-balancing state carries over a swap.
    pub fn build(
        models: &[ModelSpec],
        revision: u64,
        telemetry: &Telemetry,
        previous: Option<&RoutingTable>,
    ) -> RoutingTable {
        let mut endpoints = Endpoints {
            previous: previous.map(|table| &table.endpoints),
            current: HashMap::new(),
        };
        let models = models
            .iter()
            .map(|model| {
                let before = previous.and_then(|table| table.models.get(&model.name));
                let routes = ModelRoutes::build(model, &mut endpoints, before, telemetry);
                (model.name.clone(), routes)
            })
            .collect();
        RoutingTable {
            revision,
            models,
            endpoints: endpoints.current,
        }
    }

    /// Closes idle upstream connections of `kind` that expired or were closed by
    /// their model server, on every endpoint of the table.
    pub fn reap_idle_connections(&self, kind: PoolKind) {
        for endpoint in self.endpoints.values() {
            endpoint.pools.reap(kind);
        }
    }

    /// Increases by one with every table published.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn model(&self, name: &str) -> Option<&ModelRoutes> {
        self.models.get(name)
    }

    /// Every model's name, sorted.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The models whose production version cannot take a request now: every
    /// endpoint of it is ejected by passive health and still in its back-off.
    /// Sorted; models without a production version are not counted (they serve
    /// nothing by design). An endpoint past its back-off counts as ready, so a
    /// gateway taken out of a load balancer by this comes back to get the
    /// request that probes the endpoint again.
    pub fn unready_models(&self) -> Vec<&str> {
        let mut unready: Vec<&str> =
            self.models
                .iter()
                .filter(|(_, routes)| {
                    routes.production.as_ref().is_some_and(|route| {
                        !route.endpoints.iter().any(|e| e.health.would_admit())
                    })
                })
                .map(|(name, _)| name.as_str())
                .collect();
        unready.sort_unstable();
        unready
    }
}

/// `stagegate_canary_weight`: the new canary's weight, and 0 for a canary that ended.
fn set_canary_gauges(model: &ModelSpec, previous: Option<&ModelRoutes>, telemetry: &Telemetry) {
    let before = previous
        .and_then(|p| p.canary.as_ref())
        .map(|c| c.route.version());
    let now = model.canary.as_ref();
    if let Some(old) = before.filter(|old| now.is_none_or(|c| c.version != *old)) {
        telemetry.canary_weight(&model.name, old, 0.0);
    }
    if let Some(canary) = now {
        telemetry.canary_weight(&model.name, &canary.version, canary.weight);
    }
}

/// The model's versions in `stage`. Versions without endpoints (only possible for a
/// journal-owned version the config no longer lists) cannot serve, so they are left
/// out; [`super::super::registry::merge`] warns about them.
fn versions_in(model: &ModelSpec, stage: Stage) -> impl Iterator<Item = &VersionSpec> {
    model
        .versions
        .iter()
        .filter(move |v| v.stage == stage && (stage == Stage::Archived || !v.endpoints.is_empty()))
}

// === impl ModelRoutes ===

impl ModelRoutes {
    fn build(
        model: &ModelSpec,
        endpoints: &mut Endpoints<'_>,
        previous: Option<&ModelRoutes>,
        telemetry: &Telemetry,
    ) -> ModelRoutes {
        let mut route = |spec: &VersionSpec, stage: ServedStage| {
            let eps = spec
                .endpoints
                .iter()
                .map(|url| endpoints.get(url))
                .collect();
            let grpc = spec
                .grpc_endpoints
                .iter()
                .map(|url| endpoints.get(url))
                .collect();
            let before = previous.and_then(|p| p.route(&spec.version, stage));
            let stats = before.map_or_else(Arc::default, |r| Arc::clone(&r.stats));
            let admission = spec.max_concurrent_requests.map(|limit| {
                before
                    .and_then(|r| r.admission.clone())
                    .filter(|a| a.limit() == limit)
                    .unwrap_or_else(|| Admission::new(limit))
            });
            let mut route =
                VersionRoute::new(&model.name, &spec.version, stage, eps, telemetry, stats);
            route.admission = admission;
            route.grpc_endpoints = grpc;
            route.upstream_model.clone_from(&spec.upstream_model);
            Arc::new(route)
        };
        let production = versions_in(model, Stage::Production)
            .next()
            .map(|spec| route(spec, ServedStage::Production));
        let staging: Vec<_> = versions_in(model, Stage::Staging)
            .map(|spec| route(spec, ServedStage::Staging))
            .collect();
        let canary = model.canary.as_ref().and_then(|canary| {
            let spec = versions_in(model, Stage::Staging).find(|v| v.version == canary.version)?;
            Some(CanarySplit::new(
                route(spec, ServedStage::Canary),
                canary,
                &model.sticky,
            ))
        });
        let archived = versions_in(model, Stage::Archived)
            .map(|spec| spec.version.clone())
            .collect();
        let targets: Vec<StagingTarget> = staging
            .iter()
            .map(|route| StagingTarget {
                version: route.version(),
                endpoints: &route.endpoints,
                grpc_endpoints: &route.grpc_endpoints,
                upstream_model: route.upstream_model.as_ref(),
            })
            .collect();
        let replayed = production.as_ref().map(|route| StagingTarget {
            version: route.version(),
            endpoints: &route.endpoints,
            grpc_endpoints: &route.grpc_endpoints,
            upstream_model: route.upstream_model.as_ref(),
        });
        let shadow = ModelShadow::build(
            model,
            &targets,
            replayed,
            previous.map(|p| p.shadow.as_ref()),
            telemetry,
        );
        set_canary_gauges(model, previous, telemetry);
        ModelRoutes {
            production,
            staging,
            archived,
            shadow: Arc::new(shadow),
            canary,
        }
    }

    /// The route serving `version` in `stage`, if this table has one.
    pub fn route(&self, version: &str, stage: ServedStage) -> Option<&Arc<VersionRoute>> {
        let canary = self.canary.as_ref().map(|c| &c.route);
        self.production
            .iter()
            .chain(&self.staging)
            .chain(canary)
            .find(|r| r.stage == stage && r.version == version)
    }

    /// The canary split, if a staging version answers a share of production traffic.
    pub fn canary(&self) -> Option<&CanarySplit> {
        self.canary.as_ref()
    }

    /// The model's mirroring to its staging versions.
    pub fn shadow(&self) -> &Arc<ModelShadow> {
        &self.shadow
    }

    pub fn production(&self) -> Option<&Arc<VersionRoute>> {
        self.production.as_ref()
    }

    pub fn staging(&self) -> &[Arc<VersionRoute>] {
        &self.staging
    }

    /// The serving route of `version`, if it is in production or staging.
    pub fn serving_version(&self, version: &str) -> Option<&Arc<VersionRoute>> {
        self.production
            .iter()
            .chain(&self.staging)
            .find(|route| route.version == version)
    }

    pub fn is_archived(&self, version: &str) -> bool {
        self.archived.iter().any(|v| v == version)
    }
}

// === impl VersionRoute ===

impl VersionRoute {
    fn new(
        model: &str,
        version: &str,
        stage: ServedStage,
        endpoints: Vec<Arc<Endpoint>>,
        telemetry: &Telemetry,
        stats: Arc<RouteStats>,
    ) -> VersionRoute {
        VersionRoute {
            model: model.to_string(),
            version: version.to_string(),
            stage,
            endpoints,
            grpc_endpoints: Vec::new(),
            upstream_model: None,
            llm_metrics: OnceLock::new(),
            telemetry: telemetry.clone(),
            stats,
            admission: None,
            metrics: telemetry.route_metrics(model, version, stage.as_str()),
            headers: RouteHeaders {
                model: id_header_value(model),
                version: id_header_value(version),
                stage: HeaderValue::from_static(stage.as_str()),
            },
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn stage(&self) -> ServedStage {
        self.stage
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The endpoint for the next request (power of two choices among those not
    /// ejected), or `None` when every endpoint is ejected.
    pub fn pick_endpoint(&self) -> Option<&Arc<Endpoint>> {
        upstream::pick(&self.endpoints)
    }

    /// The handles of this route's LLM measurements.
    pub fn llm_metrics(&self) -> &LlmMetrics {
        self.llm_metrics.get_or_init(|| {
            self.telemetry
                .llm_metrics(&self.model, &self.version, self.stage.as_str())
        })
    }

    /// The model name an OpenAI-style request to this version is sent with:
    /// its served name, or the model's own.
    pub fn served_model(&self) -> &str {
        self.upstream_model
            .as_ref()
            .map_or(&self.model, ServedModelName::as_str)
    }

    pub fn grpc_endpoints(&self) -> &[Arc<Endpoint>] {
        &self.grpc_endpoints
    }

    /// The gRPC endpoint for the next call, as [`Self::pick_endpoint`] picks.
    pub fn pick_grpc_endpoint(&self) -> Option<&Arc<Endpoint>> {
        upstream::pick(&self.grpc_endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn catalog(production: &str) -> Vec<ModelSpec> {
        let text = format!(
            "[[models]]\nname = \"m\"\n\
             [[models.versions]]\nversion = \"1\"\nstage = \"{production}\"\nendpoints = [\"http://a:1\", \"http://b:1\"]\n\
             [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"http://c:1\"]\n"
        );
        Config::parse(&text, "test").unwrap().models
    }

    #[test]
    fn endpoints_and_their_counters_carry_over_a_rebuild() {
        let telemetry = Telemetry::new();
        let first = RoutingTable::build(&catalog("production"), 1, &telemetry, None);
        let production = first.model("m").unwrap().production().unwrap();
        let _busy = production.endpoints()[0].begin();

        let second = RoutingTable::build(&catalog("production"), 2, &telemetry, Some(&first));
        let rebuilt = second.model("m").unwrap().production().unwrap();
        assert!(Arc::ptr_eq(
            &production.endpoints()[0],
            &rebuilt.endpoints()[0]
        ));
        assert_eq!(rebuilt.endpoints()[0].outstanding(), 1);
    }

    #[test]
    fn stages_sort_versions_into_routes() {
        let table = RoutingTable::build(&catalog("archived"), 1, &Telemetry::new(), None);
        let model = table.model("m").unwrap();
        assert!(model.production().is_none());
        assert!(model.is_archived("1") && !model.is_archived("2"));
        assert_eq!(
            model.serving_version("2").unwrap().stage(),
            ServedStage::Staging
        );
        assert!(model.serving_version("1").is_none());
        assert_eq!(&model.staging()[0].headers.stage, "staging");
    }
}
