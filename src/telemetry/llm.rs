//! The measurements of OpenAI-style answers, per route: time to the first
//! token, time per output token, tokens in and out, finish reasons.

use metrics::{Counter, Histogram, Recorder, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{METADATA, Telemetry, key, names};
use crate::llm::events::FinishReason;

/// The handles of one route's LLM measurements.
pub struct LlmMetrics {
    /// From the request to its first content event.
    pub time_to_first_token: Histogram,
    /// Between content events, from the first to the last, per output token.
    pub time_per_output_token: Histogram,
    /// `input`, then `output`.
    tokens: [Counter; 2],
    finish_reasons: [Counter; FinishReason::ALL.len()],
}

impl LlmMetrics {
    pub fn tokens(&self, input: u64, output: u64) {
        self.tokens[0].increment(input);
        self.tokens[1].increment(output);
    }

    pub fn finished(&self, reason: FinishReason) {
        let index = FinishReason::ALL.iter().position(|r| *r == reason);
        if let Some(counter) = index.and_then(|i| self.finish_reasons.get(i)) {
            counter.increment(1);
        }
    }
}

impl Telemetry {
    /// Resolves one route's LLM handles.
    pub fn llm_metrics(&self, model: &str, version: &str, stage: &str) -> LlmMetrics {
        let recorder = &self.inner.recorder;
        let labels = [("model", model), ("version", version), ("stage", stage)];
        let histogram = |name| recorder.register_histogram(&key(name, &labels), &METADATA);
        let counter = |name, label: (&'static str, &str)| {
            let labels = [labels[0], labels[1], labels[2], label];
            recorder.register_counter(&key(name, &labels), &METADATA)
        };
        LlmMetrics {
            time_to_first_token: histogram(names::LLM_TIME_TO_FIRST_TOKEN_SECONDS),
            time_per_output_token: histogram(names::LLM_TIME_PER_OUTPUT_TOKEN_SECONDS),
            tokens: ["input", "output"].map(|d| counter(names::LLM_TOKENS_TOTAL, ("direction", d))),
            finish_reasons: FinishReason::ALL
                .map(|r| counter(names::LLM_FINISH_REASONS_TOTAL, ("reason", r.as_str()))),
        }
    }
}

pub(super) fn describe(recorder: &PrometheusRecorder) {
    recorder.describe_histogram(
        names::LLM_TIME_TO_FIRST_TOKEN_SECONDS.into(),
        Some(Unit::Seconds),
        "OpenAI-style streamed answers: time from the request to the first event with generated content.".into(),
    );
    recorder.describe_histogram(
        names::LLM_TIME_PER_OUTPUT_TOKEN_SECONDS.into(),
        Some(Unit::Seconds),
        "OpenAI-style streamed answers: time from the first to the last content event, per output token after the first.".into(),
    );
    recorder.describe_counter(
        names::LLM_TOKENS_TOTAL.into(),
        None,
        "Tokens of OpenAI-style calls as their servers report them (usage), by direction (input, output).".into(),
    );
    recorder.describe_counter(
        names::LLM_FINISH_REASONS_TOTAL.into(),
        None,
        "OpenAI-style answers by finish reason (stop, length, tool_calls, content_filter, other)."
            .into(),
    );
}
