//! Shadow testing: mirroring a share of production traffic to staging versions and
//! comparing their answers with production's, off the request path.
//!
//! - [`ModelShadow`]: a model's mirroring, resolved when a routing table is built
//!   (policy, compiled comparator, staging targets with their reports and metric
//!   handles, the in-flight budget). The request path only calls
//!   [`ModelShadow::sample`].
//! - [`dispatch`]: hands the mirrors to the shadow threads with the body (shared
//!   `Bytes`, or a streamed body's copy once it has ended); the client's response
//!   never waits for them. [`grpc_mirror`]: the same for gRPC `ModelInfer`
//!   calls, over HTTP/2, with a pinned `model_version` naming the staging version.
//!   [`mirror_task`]: sends them, reads their answers within their time limits
//!   and settles each pair.
//! - [`capture`]: tees production's answer as it streams to the client.
//! - [`runtime`]: the shadow threads; [`cpu_share`]: the share of CPU they may
//!   use, past which mirrors are dropped.
//! - [`worker`]: the comparison thread, fed through a bounded queue.
//! - [`compare`], [`path`]: the comparators and their JSON paths.
//! - [`report`]: per staging version counters, agreement, latencies, samples.

pub mod capture;
pub mod compare;
pub mod cpu_share;
mod dispatch;
mod grpc_mirror;
mod llm_report;
mod mirror_task;
pub mod report;
mod runtime;
mod worker;

use std::sync::Arc;

use http::Method;

pub use compare::{Answer, Comparator, Verdict};
pub use dispatch::{Mirror, MirrorBody, MirrorRewrite, ShadowService, X_STAGEGATE_SHADOW};
pub use mirror_task::MirrorTimeouts;
pub use report::{Agreement, DropReason, VersionReport};

use crate::telemetry::{ShadowMetrics, ShadowResult, Telemetry};
use crate::upstream::admission::{Admission, Permit};
use crate::upstream::{self, Endpoint};
use crate::vocab::policy::ShadowPolicy;
use crate::vocab::{ModelSpec, ServedModelName};
use cpu_share::CpuShare;

/// A model's mirroring, as one routing table sees it.
pub struct ModelShadow {
    policy: ShadowPolicy,
    methods: Vec<Method>,
    comparator: Arc<Comparator>,
    in_flight: Arc<Admission>,
    /// The staging versions, then, with `replay_primary`, production replayed.
    versions: Vec<ShadowVersion>,
    staging: usize,
    /// The production version the reports compare against.
    production: Option<String>,
}

/// A staging version as the routing table gives it to [`ModelShadow::build`].
pub struct StagingTarget<'a> {
    pub version: &'a str,
    pub endpoints: &'a [Arc<Endpoint>],
    pub grpc_endpoints: &'a [Arc<Endpoint>],
    pub upstream_model: Option<&'a ServedModelName>,
}

/// One staging version: its endpoints, report and metrics, and whether the
/// policy mirrors to it.
pub struct ShadowVersion {
    pub version: String,
    endpoints: Vec<Arc<Endpoint>>,
    grpc_endpoints: Vec<Arc<Endpoint>>,
    /// The name its server serves it under, for mirrored OpenAI-style calls.
    upstream_model: Option<ServedModelName>,
    pub report: Arc<VersionReport>,
    pub metrics: ShadowMetrics,
    pub targeted: bool,
    /// The production version itself, sent each sampled request again.
    pub replay: bool,
}

impl ShadowVersion {
    /// The endpoint the next mirror goes to, or `None` when every one is ejected.
    pub fn pick_endpoint(&self) -> Option<&Arc<Endpoint>> {
        upstream::pick(&self.endpoints)
    }

    /// The model name a mirrored OpenAI-style call is sent with: its served
    /// name, or `model` (the model's own).
    pub fn served_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.upstream_model
            .as_ref()
            .map_or(model, ServedModelName::as_str)
    }

    /// Likewise among its gRPC endpoints, for mirrors of gRPC calls.
    pub fn pick_grpc_endpoint(&self) -> Option<&Arc<Endpoint>> {
        upstream::pick(&self.grpc_endpoints)
    }
}

impl ModelShadow {
    /// Resolves `model`'s mirroring over its staging routes. Reports and the
    /// in-flight budget carry over from `previous` for versions that were staging
    /// there too; a version that (re)enters staging starts a fresh report, and so
    /// does every version when production or the comparator changes.
    /// `production` is replayed when the policy says `replay_primary`.
    pub fn build(
        model: &ModelSpec,
        staging: &[StagingTarget<'_>],
        production_target: Option<StagingTarget<'_>>,
        previous: Option<&ModelShadow>,
        telemetry: &Telemetry,
    ) -> ModelShadow {
        let policy = model.shadow.clone();
        let comparator = Comparator::new(&policy.compare);
        let in_flight = previous
            .filter(|p| p.policy.max_in_flight == policy.max_in_flight)
            .map_or_else(
                || Admission::new(policy.max_in_flight),
                |p| Arc::clone(&p.in_flight),
            );
        let production = model.production().map(|v| v.version.clone());
        // Reports compare against one production version under one comparator;
        // when either changes, counting starts over.
        let comparable =
            previous.filter(|p| p.production == production && p.policy.compare == policy.compare);
        let version = |target: &StagingTarget<'_>, replay: bool| {
            let report = comparable
                .and_then(|p| {
                    p.versions
                        .iter()
                        .find(|v| v.version == target.version && v.replay == replay)
                })
                .map_or_else(
                    || {
                        let report = VersionReport::new(&model.name, target.version);
                        Arc::new(if replay { report.replaying() } else { report })
                    },
                    |v| Arc::clone(&v.report),
                );
            // Production's replay has series of its own, apart from any
            // staging version's.
            let label = match replay {
                true => format!("replay:{}", target.version),
                false => target.version.to_string(),
            };
            ShadowVersion {
                version: target.version.to_string(),
                endpoints: target.endpoints.to_vec(),
                grpc_endpoints: target.grpc_endpoints.to_vec(),
                upstream_model: target.upstream_model.cloned(),
                report,
                metrics: telemetry.shadow_metrics(&model.name, &label),
                targeted: replay
                    || policy.versions.is_empty()
                    || policy.versions.iter().any(|v| v == target.version),
                replay,
            }
        };
        let mut versions: Vec<ShadowVersion> = staging.iter().map(|t| version(t, false)).collect();
        let staging_count = versions.len();
        if let Some(target) = production_target.filter(|_| policy.replay_primary) {
            versions.push(version(&target, true));
        }
        let methods = policy.methods.iter().map(|m| m.method().clone()).collect();
        ModelShadow {
            policy,
            methods,
            comparator: Arc::new(comparator),
            in_flight,
            versions,
            staging: staging_count,
            production,
        }
    }

    /// Whether any request of this model may be mirrored.
    pub fn is_active(&self) -> bool {
        self.policy.is_enabled() && self.versions.iter().any(|v| v.targeted)
    }

    pub fn policy(&self) -> &ShadowPolicy {
        &self.policy
    }

    /// Every staging version, mirrored to or not.
    pub fn versions(&self) -> &[ShadowVersion] {
        &self.versions[..self.staging]
    }

    /// Production replayed (`replay_primary`): its agreement with itself.
    pub fn replay(&self) -> Option<&ShadowVersion> {
        self.versions.get(self.staging)
    }

    pub fn report(&self, version: &str) -> Option<&Arc<VersionReport>> {
        self.versions()
            .iter()
            .find(|v| v.version == version)
            .map(|v| &v.report)
    }

    /// The request-path decision: whether to mirror this request, and to which
    /// versions (each holding a slot of the in-flight budget). Counts what it
    /// drops.
    pub fn sample(
        self: &Arc<Self>,
        method: &Method,
        body_len: usize,
        cpu: &CpuShare,
    ) -> Option<Mirror> {
        if !self.methods.contains(method) || rand::random::<f64>() * 100.0 >= self.policy.percent {
            return None;
        }
        let targeted = self.versions.iter().enumerate().filter(|(_, v)| v.targeted);
        if !cpu.allows() {
            targeted.for_each(|(_, v)| dropped(v, DropReason::CpuShare));
            return None;
        }
        if body_len > self.policy.max_body_bytes {
            targeted.for_each(|(_, v)| dropped(v, DropReason::BodyTooLarge));
            return None;
        }
        let mut targets: Vec<(usize, Permit)> = Vec::with_capacity(1);
        for (index, version) in targeted {
            match self.in_flight.try_admit() {
                Some(permit) => targets.push((index, permit)),
                None => dropped(version, DropReason::InFlight),
            }
        }
        (!targets.is_empty()).then(|| Mirror::new(Arc::clone(self), targets))
    }
}

fn dropped(version: &ShadowVersion, reason: DropReason) {
    version.report.count_dropped(reason);
    version.metrics.request(ShadowResult::Dropped);
}
