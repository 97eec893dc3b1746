//! Metrics whose values live in the data plane's own atomics and are copied into
//! the recorder when `/metrics` is scraped ([`super::Telemetry::sample_on_render`]),
//! so the request path pays nothing for them.

use metrics::{Counter, Gauge, Key, Recorder, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{METADATA, Telemetry, names};

/// The gauges of the gateway's request-body budget.
pub struct BodyBudgetMetrics {
    held: Gauge,
    peak: Gauge,
    limit: Gauge,
    refusals: Counter,
}

impl BodyBudgetMetrics {
    pub fn new(telemetry: &Telemetry) -> BodyBudgetMetrics {
        let recorder = &telemetry.inner.recorder;
        let gauge = |name| recorder.register_gauge(&Key::from_name(name), &METADATA);
        BodyBudgetMetrics {
            held: gauge(names::BUFFERED_BODY_BYTES),
            peak: gauge(names::BUFFERED_BODY_BYTES_PEAK),
            limit: gauge(names::BUFFERED_BODY_BYTES_LIMIT),
            refusals: recorder.register_counter(
                &Key::from_name(names::BODY_BUDGET_REFUSALS_TOTAL),
                &METADATA,
            ),
        }
    }

    pub fn show(&self, held: usize, peak: usize, limit: usize, refusals: u64) {
        self.held.set(held as f64);
        self.peak.set(peak as f64);
        self.limit.set(limit as f64);
        self.refusals.absolute(refusals);
    }
}

pub(super) fn describe(recorder: &PrometheusRecorder) {
    let gauges = [
        (
            names::BUFFERED_BODY_BYTES,
            "Request-body bytes held in memory now (read ahead of forwarding, copied for mirrors).",
        ),
        (
            names::BUFFERED_BODY_BYTES_PEAK,
            "The most request-body bytes ever held at once.",
        ),
        (
            names::BUFFERED_BODY_BYTES_LIMIT,
            "server.max_buffered_body_bytes.",
        ),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(name.into(), Some(Unit::Bytes), help.into());
    }
    recorder.describe_counter(
        names::BODY_BUDGET_REFUSALS_TOTAL.into(),
        None,
        "Body bytes the budget had no room for: a body streamed without read-ahead, or a mirror dropped.".into(),
    );
}
