//! Metrics and logging: metric names, the Prometheus recorder, and the handles the
//! request path records into.
//!
//! Each gateway owns its own [`Telemetry`] (not the process-global recorder), so
//! tests can run several gateways in one process and read each one's `/metrics`.
//! Handles are resolved once, when a routing table is built ([`RouteMetrics`]);
//! the request path only increments them.

pub mod llm;
mod sampled;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::vocab::Stage;
use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Metric names: part of the external interface.
pub mod names {
    pub const REQUESTS_TOTAL: &str = "stagegate_requests_total";
    pub const REQUEST_DURATION_SECONDS: &str = "stagegate_request_duration_seconds";
    pub const UPSTREAM_ERRORS_TOTAL: &str = "stagegate_upstream_errors_total";
    pub const ROUTING_TABLE_REVISION: &str = "stagegate_routing_table_revision";
    pub const TRANSITIONS_TOTAL: &str = "stagegate_transitions_total";
    pub const ROLLBACKS_TOTAL: &str = "stagegate_rollbacks_total";
    pub const CONFIG_RELOADS_TOTAL: &str = "stagegate_config_reloads_total";
    pub const SHADOW_REQUESTS_TOTAL: &str = "stagegate_shadow_requests_total";
    pub const SHADOW_COMPARISONS_TOTAL: &str = "stagegate_shadow_comparisons_total";
    pub const SHADOW_LATENCY_SECONDS: &str = "stagegate_shadow_latency_seconds";
    pub const CANARY_WEIGHT: &str = "stagegate_canary_weight";
    pub const ROLLOUT_PHASE: &str = "stagegate_rollout_phase";
    pub const STORE_UP: &str = "stagegate_store_up";
    pub const ROLLOUT_LEADER: &str = "stagegate_rollout_leader";
    pub const ROLLOUT_GATE_FAILURES_TOTAL: &str = "stagegate_rollout_gate_failures_total";
    pub const ROLLOUT_STEPS_TOTAL: &str = "stagegate_rollout_steps_total";
    pub const REGISTRY_SYNCS_TOTAL: &str = "stagegate_registry_syncs_total";
    pub const REGISTRY_LAST_SYNC: &str = "stagegate_registry_last_sync_timestamp_seconds";
    pub const REGISTRY_WRITE_BACKS_TOTAL: &str = "stagegate_registry_write_backs_total";
    pub const BUFFERED_BODY_BYTES: &str = "stagegate_buffered_body_bytes";
    pub const BUFFERED_BODY_BYTES_PEAK: &str = "stagegate_buffered_body_bytes_peak";
    pub const BUFFERED_BODY_BYTES_LIMIT: &str = "stagegate_buffered_body_bytes_limit";
    pub const BODY_BUDGET_REFUSALS_TOTAL: &str = "stagegate_body_budget_refusals_total";
    pub const LLM_TIME_TO_FIRST_TOKEN_SECONDS: &str = "stagegate_llm_time_to_first_token_seconds";
    pub const LLM_TIME_PER_OUTPUT_TOKEN_SECONDS: &str =
        "stagegate_llm_time_per_output_token_seconds";
    pub const LLM_TOKENS_TOTAL: &str = "stagegate_llm_tokens_total";
    pub const LLM_FINISH_REASONS_TOTAL: &str = "stagegate_llm_finish_reasons_total";
}

pub use sampled::BodyBudgetMetrics;

/// Buckets of `stagegate_request_duration_seconds`, from fast in-memory models to
/// slow generative ones.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// How long histogram samples may pile up before they are folded into buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The `kind` label of `stagegate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The connection was refused or could not be made.
    Connect,
    /// The connection was not made within `connect_timeout_ms`.
    ConnectTimeout,
    /// No response within `request_timeout_ms`.
    Timeout,
    /// The upstream closed, reset or broke the protocol mid-exchange.
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// The `result` label of `stagegate_shadow_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowResult {
    Ok,
    Error,
    Timeout,
    Dropped,
}

impl ShadowResult {
    pub const ALL: [ShadowResult; 4] = [
        ShadowResult::Ok,
        ShadowResult::Error,
        ShadowResult::Timeout,
        ShadowResult::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowResult::Ok => "ok",
            ShadowResult::Error => "error",
            ShadowResult::Timeout => "timeout",
            ShadowResult::Dropped => "dropped",
        }
    }
}

/// The handles one staging version's mirroring records into.
#[derive(Clone)]
pub struct ShadowMetrics {
    requests: [Counter; ShadowResult::ALL.len()],
    comparisons: [Counter; 2],
    pub latency: Histogram,
}

impl ShadowMetrics {
    pub fn request(&self, result: ShadowResult) {
        self.requests[result as usize].increment(1);
    }

    pub fn comparison(&self, matched: bool) {
        self.comparisons[usize::from(!matched)].increment(1);
    }
}

/// One counter per status class (`1xx` .. `5xx`), for the `code` label.
#[derive(Clone)]
pub struct CodeCounters([Counter; 5]);

impl CodeCounters {
    pub fn record(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0[class].increment(1);
    }
}

/// The handles one route (a model version serving in one stage) records into.
#[derive(Clone)]
pub struct RouteMetrics {
    pub requests: CodeCounters,
    pub duration: Histogram,
    upstream_errors: [Counter; UpstreamErrorKind::ALL.len()],
}

impl RouteMetrics {
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].increment(1);
    }
}

/// A gateway's metrics: its recorder and the handles not tied to a route.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    revision: Gauge,
    unrouted: CodeCounters,
    /// Read when `/metrics` is scraped: values kept elsewhere as plain atomics.
    on_render: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &DURATION_BUCKETS)
            .unwrap_or_else(|_| unreachable!("the bucket list is not empty"))
            .build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let revision =
            recorder.register_gauge(&Key::from_name(names::ROUTING_TABLE_REVISION), &METADATA);
        let unrouted = code_counters(&recorder, &[("model", ""), ("version", ""), ("stage", "")]);
        for result in ["success", "error"] {
            let key = key(names::CONFIG_RELOADS_TOTAL, &[("result", result)]);
            // Present (at 0) from the start, so rate() works before the first reload.
            recorder.register_counter(&key, &METADATA).increment(0);
        }
        Telemetry {
            inner: Arc::new(Inner {
                recorder,
                handle,
                revision,
                unrouted,
                on_render: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Resolves the handles of one route; called when a routing table is built.
    pub fn route_metrics(&self, model: &str, version: &str, stage: &str) -> RouteMetrics {
        let recorder = &self.inner.recorder;
        let labels = [("model", model), ("version", version), ("stage", stage)];
        let requests = code_counters(recorder, &labels);
        let duration =
            recorder.register_histogram(&key(names::REQUEST_DURATION_SECONDS, &labels), &METADATA);
        let upstream_errors = UpstreamErrorKind::ALL.map(|kind| {
            let labels = [
                ("model", model),
                ("version", version),
                ("kind", kind.as_str()),
            ];
            recorder.register_counter(&key(names::UPSTREAM_ERRORS_TOTAL, &labels), &METADATA)
        });
        RouteMetrics {
            requests,
            duration,
            upstream_errors,
        }
    }

    /// Resolves the mirroring handles of one staging version.
    pub fn shadow_metrics(&self, model: &str, version: &str) -> ShadowMetrics {
        let recorder = &self.inner.recorder;
        let labels = [("model", model), ("version", version)];
        let with = |name: &'static str, result: &str| {
            let labels = [("model", model), ("version", version), ("result", result)];
            recorder.register_counter(&key(name, &labels), &METADATA)
        };
        ShadowMetrics {
            requests: ShadowResult::ALL.map(|r| with(names::SHADOW_REQUESTS_TOTAL, r.as_str())),
            comparisons: ["match", "mismatch"].map(|r| with(names::SHADOW_COMPARISONS_TOTAL, r)),
            latency: recorder
                .register_histogram(&key(names::SHADOW_LATENCY_SECONDS, &labels), &METADATA),
        }
    }

    /// Counts requests answered before a model version was chosen (unknown model,
    /// overload, bad request).
    pub fn unrouted(&self) -> &CodeCounters {
        &self.inner.unrouted
    }

    /// Counts a version moving to `stage` (control plane: resolved per call).
    pub fn transition(&self, model: &str, stage: Stage) {
        let labels = [("model", model), ("to_stage", stage.as_str())];
        self.counter(names::TRANSITIONS_TOTAL, &labels).increment(1);
    }

    /// `stagegate_canary_weight{model,version}`, in percent.
    pub fn canary_weight(&self, model: &str, version: &str, weight: f64) {
        let key = key(
            names::CANARY_WEIGHT,
            &[("model", model), ("version", version)],
        );
        self.inner
            .recorder
            .register_gauge(&key, &METADATA)
            .set(weight);
    }

    /// `stagegate_rollout_phase{model,phase}`: 1 for the current phase, 0 for the others.
    pub fn rollout_phase(&self, model: &str, phase: &str, phases: &[&str]) {
        for candidate in phases {
            let key = key(
                names::ROLLOUT_PHASE,
                &[("model", model), ("phase", candidate)],
            );
            let value = if *candidate == phase { 1.0 } else { 0.0 };
            self.inner
                .recorder
                .register_gauge(&key, &METADATA)
                .set(value);
        }
    }

    /// Whether the shared store answered its last call (1) or not (0).
    pub fn set_store_up(&self, up: bool) {
        let gauge = self
            .inner
            .recorder
            .register_gauge(&key(names::STORE_UP, &[]), &METADATA);
        gauge.set(f64::from(u8::from(up)));
    }

    /// Whether this replica runs the cluster's rollout controller.
    pub fn set_rollout_leader(&self, leader: bool) {
        let gauge = self
            .inner
            .recorder
            .register_gauge(&key(names::ROLLOUT_LEADER, &[]), &METADATA);
        gauge.set(f64::from(u8::from(leader)));
    }

    pub fn rollout_gate_failure(&self, model: &str, gate: &str) {
        let labels = [("model", model), ("gate", gate)];
        self.counter(names::ROLLOUT_GATE_FAILURES_TOTAL, &labels)
            .increment(1);
    }

    pub fn rollout_step(&self, model: &str) {
        self.counter(names::ROLLOUT_STEPS_TOTAL, &[("model", model)])
            .increment(1);
    }

    pub fn rollback(&self, model: &str) {
        self.counter(names::ROLLBACKS_TOTAL, &[("model", model)])
            .increment(1);
    }

    /// Makes the registry sync's series exist (at 0) before the first sync, so
    /// `rate()` and alerts on them work from the start.
    pub fn registry_sync_started(&self) {
        for result in ["success", "error"] {
            self.counter(names::REGISTRY_SYNCS_TOTAL, &[("result", result)])
                .increment(0);
            self.counter(names::REGISTRY_WRITE_BACKS_TOTAL, &[("result", result)])
                .increment(0);
        }
    }

    /// A sync of the external registry; `result` is `success` or `error`. A
    /// success also sets the last-sync timestamp to `at` (seconds since the epoch).
    pub fn registry_sync(&self, result: &str, at: f64) {
        self.counter(names::REGISTRY_SYNCS_TOTAL, &[("result", result)])
            .increment(1);
        if result == "success" {
            let key = key(names::REGISTRY_LAST_SYNC, &[]);
            self.inner.recorder.register_gauge(&key, &METADATA).set(at);
        }
    }

    /// A write back to the external registry; `result` is `success` or `error`.
    pub fn registry_write_back(&self, result: &str) {
        self.counter(names::REGISTRY_WRITE_BACKS_TOTAL, &[("result", result)])
            .increment(1);
    }

    /// `result` is `success` or `error`.
    pub fn config_reload(&self, result: &str) {
        self.counter(names::CONFIG_RELOADS_TOTAL, &[("result", result)])
            .increment(1);
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn set_routing_revision(&self, revision: u64) {
        self.inner.revision.set(revision as f64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let samplers = self
            .inner
            .on_render
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        samplers.iter().for_each(|sample| sample());
        drop(samplers);
        self.inner.handle.render()
    }

    /// Runs `sample` before every render, to copy values the request path keeps
    /// in atomics of its own into metric handles.
    pub fn sample_on_render(&self, sample: impl Fn() + Send + Sync + 'static) {
        self.inner
            .on_render
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(sample));
    }

    /// Folds pending histogram samples into buckets; run every [`UPKEEP_INTERVAL`]
    /// so memory stays bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

/// "outer: cause: root cause", so a logged or returned message says what actually
/// failed, not only the outermost wrapper.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

fn code_counters(recorder: &PrometheusRecorder, labels: &[(&'static str, &str)]) -> CodeCounters {
    CodeCounters(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
        let mut labels = labels.to_vec();
        labels.push(("code", code));
        recorder.register_counter(&key(names::REQUESTS_TOTAL, &labels), &METADATA)
    }))
}

/// HELP text of each counter.
const COUNTERS: &[(&str, &str)] = &[
    (
        names::REQUESTS_TOTAL,
        "Requests answered, by model, version, stage and status class.",
    ),
    (
        names::UPSTREAM_ERRORS_TOTAL,
        "Failed exchanges with model servers, by kind.",
    ),
    (
        names::TRANSITIONS_TOTAL,
        "Versions moved to a stage, by model and stage.",
    ),
    (names::ROLLBACKS_TOTAL, "Rollbacks, by model."),
    (
        names::CONFIG_RELOADS_TOTAL,
        "Config reloads, by result (success, error).",
    ),
    (
        names::SHADOW_REQUESTS_TOTAL,
        "Mirrored requests to staging versions, by result (ok, error, timeout, dropped).",
    ),
    (
        names::ROLLOUT_GATE_FAILURES_TOTAL,
        "Rollout gates that failed, by model and gate.",
    ),
    (names::ROLLOUT_STEPS_TOTAL, "Rollout steps taken, by model."),
    (
        names::REGISTRY_SYNCS_TOTAL,
        "Syncs with the external model registry, by result (success, error).",
    ),
    (
        names::REGISTRY_WRITE_BACKS_TOTAL,
        "Writes of stagegate's changes back to the external registry, by result.",
    ),
    (
        names::SHADOW_COMPARISONS_TOTAL,
        "Shadow answers compared with production's, by result (match, mismatch).",
    ),
];

fn describe(recorder: &PrometheusRecorder) {
    for &(name, help) in COUNTERS {
        recorder.describe_counter(name.into(), None, help.into());
    }
    recorder.describe_gauge(
        names::ROUTING_TABLE_REVISION.into(),
        None,
        "Revision of the routing table in use.".into(),
    );
    recorder.describe_gauge(
        names::CANARY_WEIGHT.into(),
        None,
        "Percent of production traffic a canary version answers.".into(),
    );
    recorder.describe_gauge(
        names::REGISTRY_LAST_SYNC.into(),
        Some(Unit::Seconds),
        "When the external registry was last read in full (seconds since the epoch).".into(),
    );
    recorder.describe_gauge(
        names::ROLLOUT_PHASE.into(),
        None,
        "1 for the phase a model's rollout is in, 0 for the others.".into(),
    );
    recorder.describe_gauge(
        names::STORE_UP.into(),
        None,
        "1 while the shared store (etcd) answers, 0 while it does not.".into(),
    );
    recorder.describe_gauge(
        names::ROLLOUT_LEADER.into(),
        None,
        "1 on the replica that holds the cluster's lease and runs the rollout controller.".into(),
    );
    sampled::describe(recorder);
    llm::describe(recorder);
    recorder.describe_histogram(
        names::REQUEST_DURATION_SECONDS.into(),
        Some(Unit::Seconds),
        "Time from receiving a request to sending its response head.".into(),
    );
    recorder.describe_histogram(
        names::SHADOW_LATENCY_SECONDS.into(),
        Some(Unit::Seconds),
        "Time for a staging version to answer a mirrored request in full.".into(),
    );
}
