//! What a rollout gate read and decided, as the journal and the admin API show
//! it: the verdict, the estimate with its interval, the threshold, the
//! confidence, and the samples on each side.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A gate's answer at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Shown, at the plan's confidence, to be within the limit.
    Pass,
    /// Shown, at the plan's confidence, to be outside the limit. Readings
    /// journaled before verdicts were recorded only ever described failures,
    /// hence the default.
    #[default]
    Fail,
    /// Not enough evidence either way yet.
    Wait,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Wait => "wait",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One gate's reading. What `reading`, `lower`, `upper` and `threshold` measure
/// depends on the gate: candidate minus stable error rate (`error_rate`),
/// candidate over stable latency at a quantile (`p99_ratio`,
/// `latency_increase`), the share of shadow answers that agree
/// (`shadow_agreement`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateReading {
    pub gate: String,
    /// The point estimate; `None` before there is any sample.
    pub reading: Option<f64>,
    pub threshold: f64,
    #[serde(default)]
    pub verdict: Verdict,
    /// The interval on the estimate at `confidence`, valid however often it is
    /// looked at; `None` for a side with no bound yet (too few samples).
    #[serde(default)]
    pub lower: Option<f64>,
    #[serde(default)]
    pub upper: Option<f64>,
    /// The confidence of this gate's interval: its share of the plan's.
    #[serde(default)]
    pub confidence: Option<f64>,
    /// Samples behind it: candidate requests (or shadow comparisons)...
    #[serde(default)]
    pub candidate_n: u64,
    /// ...and stable requests, for gates that compare with stable.
    #[serde(default)]
    pub stable_n: Option<u64>,
    /// The figures in words: each side's estimate, or what the gate waits for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl GateReading {
    /// One line for a journal reason or a log.
    pub fn summary(&self) -> String {
        format!(
            "{} {}: reading {} against threshold {:.4}, {}",
            self.gate,
            self.verdict,
            number(self.reading),
            self.threshold,
            self.basis()
        )
    }

    /// What the verdict rests on: the interval, its confidence, the samples.
    pub fn basis(&self) -> String {
        let interval = match (self.lower, self.upper) {
            (None, None) => "no interval yet".to_string(),
            (lower, upper) => format!("interval [{}, {}]", number(lower), number(upper)),
        };
        let confidence = self
            .confidence
            .map(|c| format!(" at {}% confidence", trim(c * 100.0)))
            .unwrap_or_default();
        let samples = match self.stable_n {
            Some(stable) => format!("{} candidate and {stable} stable", self.candidate_n),
            None => self.candidate_n.to_string(),
        };
        format!("{interval}{confidence}, {samples} samples")
    }
}

/// Four decimals, or `?` for a figure not known yet.
pub fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_string(), |v| format!("{v:.4}"))
}

/// A percentage without trailing zeros: 99.9, 99.0833.
fn trim(percent: f64) -> String {
    let text = format!("{percent:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_journaled_before_verdicts_read_as_failures() {
        let old: GateReading = serde_json::from_value(serde_json::json!({
            "gate": "error_rate", "reading": 0.5, "threshold": 0.05
        }))
        .unwrap();
        assert_eq!(
            (old.verdict, old.reading, old.stable_n),
            (Verdict::Fail, Some(0.5), None)
        );
    }

    #[test]
    fn a_summary_names_the_interval_the_confidence_and_the_samples() {
        let reading = GateReading {
            gate: "p99_ratio".into(),
            reading: Some(2.03),
            threshold: 1.5,
            verdict: Verdict::Fail,
            lower: Some(1.71),
            upper: None,
            confidence: Some(0.9989),
            candidate_n: 812,
            stable_n: Some(2410),
            detail: String::new(),
        };
        assert_eq!(
            reading.summary(),
            "p99_ratio fail: reading 2.0300 against threshold 1.5000, interval \
             [1.7100, ?] at 99.89% confidence, 812 candidate and 2410 stable samples"
        );
    }
}
