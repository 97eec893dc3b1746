//! Canary and rollout state, as the journal records it.
//!
//! A canary gives a staging version a sticky share of production traffic
//! ([`Canary`]). A rollout ([`Rollout`]) drives that share through a plan of steps
//! while gates hold, and ends by promoting the candidate or by taking its share
//! away. Every change of either is a journal record carrying the whole new state,
//! so replay is trivial and a restart resumes exactly where the journal says.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::evidence::GateReading;

/// 10,000 buckets: a weight has two decimals (12.34%).
pub const BUCKETS: u32 = 10_000;

/// A staging version answering a share of production traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub version: String,
    /// Percent of production traffic, 0 < weight <= 100.
    pub weight: f64,
    /// Mixed into the sticky hash; new for every canary, so each one samples
    /// different users.
    pub salt: u64,
}

impl Canary {
    /// Requests whose bucket is below this go to the candidate.
    pub fn threshold(&self) -> u32 {
        weight_buckets(self.weight)
    }
}

/// `weight` percent as a number of buckets.
pub fn weight_buckets(weight: f64) -> u32 {
    ((weight.clamp(0.0, 100.0) * f64::from(BUCKETS) / 100.0).round() as u32).min(BUCKETS)
}

/// What to do when a gate fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Weight to 0, the candidate back to plain staging; the rollout ends.
    Rollback,
    /// Weight to 0 and wait for a person to resume or abort.
    Pause,
}

/// The measurable conditions a step must meet. Each compares the candidate with
/// stable over the same window and judges with the plan's `confidence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// How far the candidate's rate of 5xx and transport errors may exceed
    /// stable's, in absolute terms (0.01: one percentage point). `None`: off.
    pub max_error_rate: Option<f64>,
    /// Candidate p99 over stable p99.
    pub max_p99_ratio: Option<f64>,
    /// How much slower the candidate may be at `latency_quantile`, as a fraction
    /// (0.2: 20% slower).
    #[serde(default)]
    pub max_latency_increase: Option<f64>,
    /// The quantile `max_latency_increase` is judged at (0.5: the median).
    #[serde(default = "default_latency_quantile")]
    pub latency_quantile: f64,
    /// OpenAI-style streamed answers: candidate p99 time to first token over
    /// stable's.
    #[serde(default)]
    pub max_ttft_p99_ratio: Option<f64>,
    /// Likewise the p99 time per output token.
    #[serde(default)]
    pub max_tpot_p99_ratio: Option<f64>,
    /// Shadow agreement of the candidate before (and during) the canary.
    pub min_shadow_agreement: Option<f64>,
    /// Comparisons the agreement must rest on.
    pub min_shadow_compared: u64,
}

/// How a rollout proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Canary weights, increasing, each in (0, 100].
    pub steps: Vec<f64>,
    /// Seconds a step lasts at least (fractions allowed).
    pub step_interval_s: f64,
    /// Requests a step needs, on each side it compares, before it may pass.
    pub min_requests: u64,
    /// Seconds a step may wait for enough evidence before the rollout is held;
    /// `None`: ten step intervals.
    #[serde(default)]
    pub max_step_duration_s: Option<f64>,
    /// The chance, over the whole rollout, that no gate fails a candidate within
    /// every limit, and none passes one outside a limit.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    pub gates: Gates,
    pub on_failure: OnFailure,
}

pub const DEFAULT_CONFIDENCE: f64 = 0.99;
pub const DEFAULT_LATENCY_QUANTILE: f64 = 0.5;
/// Without `max_step_duration_s`, a step waits at most this many intervals.
pub const STEP_DURATION_INTERVALS: f64 = 10.0;

fn default_confidence() -> f64 {
    DEFAULT_CONFIDENCE
}

fn default_latency_quantile() -> f64 {
    DEFAULT_LATENCY_QUANTILE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    WaitingForShadow,
    Progressing,
    Paused,
    Succeeded,
    RolledBack,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::WaitingForShadow,
        Phase::Progressing,
        Phase::Paused,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::WaitingForShadow => "waiting_for_shadow",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }

    /// Whether the rollout is over.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Aborted)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollout and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The journal revision that started it; decisions name it, so a decision
    /// about an older rollout is never applied to a newer one.
    pub id: u64,
    pub candidate: String,
    pub plan: Plan,
    pub phase: Phase,
    /// Index into `plan.steps` (the current or, when paused, the resumed step).
    pub step: usize,
    /// Why the rollout is in its phase (a failed gate with its reading and
    /// threshold, a person's reason).
    #[serde(default)]
    pub reason: String,
    /// The gate that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_gate: Option<GateReading>,
    /// Every gate's reading when the controller last decided (advanced, failed
    /// or held the rollout); empty after a person's decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<GateReading>,
    /// Paused by a person, or held for want of evidence: the candidate keeps its
    /// weight (once its first step has begun) until resumed.
    #[serde(default)]
    pub held: bool,
    /// Whether the first canary step has started (resume goes back to it).
    #[serde(default)]
    pub progressed: bool,
    pub salt: u64,
}

impl Rollout {
    /// The weight the candidate has in this state.
    pub fn weight(&self) -> f64 {
        match self.phase {
            Phase::Progressing => self.step_weight(),
            Phase::Paused if self.held && self.progressed => self.step_weight(),
            _ => 0.0,
        }
    }

    fn step_weight(&self) -> f64 {
        self.plan.steps.get(self.step).copied().unwrap_or(0.0)
    }

    /// The weight of the step before this one, when there is one.
    pub fn previous_weight(&self) -> Option<f64> {
        self.step
            .checked_sub(1)
            .and_then(|i| self.plan.steps.get(i).copied())
    }

    /// The canary this state implies, if any.
    pub fn canary(&self) -> Option<Canary> {
        let weight = self.weight();
        (weight > 0.0).then(|| Canary {
            version: self.candidate.clone(),
            weight,
            salt: self.salt,
        })
    }
}

/// A gate's limit as a config file or an API call writes it: a number, or
/// `"off"` to turn the gate off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateLimit {
    Limit(f64),
    Off,
}

impl GateLimit {
    /// The limit, `None` when the gate is off.
    pub fn limit(self) -> Option<f64> {
        match self {
            GateLimit::Limit(limit) => Some(limit),
            GateLimit::Off => None,
        }
    }
}

impl<'de> Deserialize<'de> for GateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<GateLimit, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GateLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or \"off\" to turn the gate off")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<GateLimit, E> {
                Ok(GateLimit::Limit(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<GateLimit, E> {
                Ok(GateLimit::Limit(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<GateLimit, E> {
                Ok(GateLimit::Limit(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GateLimit, E> {
                match v {
                    "off" => Ok(GateLimit::Off),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Plan {
    /// How long a step may wait for evidence before the rollout is held.
    pub fn max_step_duration_s(&self) -> f64 {
        self.max_step_duration_s
            .unwrap_or(self.step_interval_s * STEP_DURATION_INTERVALS)
    }

    /// Every problem with this plan, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.steps.is_empty() {
            problems.push(("steps", "needs at least one step".to_string()));
        }
        if self.steps.iter().any(|w| !(*w > 0.0 && *w <= 100.0)) {
            problems.push((
                "steps",
                format!("each step must be in (0, 100], got {:?}", self.steps),
            ));
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            problems.push((
                "steps",
                format!("steps must increase, got {:?}", self.steps),
            ));
        }
        if !(self.step_interval_s > 0.0 && self.step_interval_s.is_finite()) {
            problems.push((
                "step_interval_s",
                format!("must be greater than 0, got {}", self.step_interval_s),
            ));
        }
        if let Some(max) = self.max_step_duration_s
            && !(max >= self.step_interval_s && max.is_finite())
        {
            problems.push((
                "max_step_duration_s",
                format!(
                    "must be at least step_interval_s ({}), got {max}",
                    self.step_interval_s
                ),
            ));
        }
        if !(0.5..=0.999_999).contains(&self.confidence) {
            problems.push((
                "confidence",
                format!("must be between 0.5 and 0.999999, got {}", self.confidence),
            ));
        }
        let gates = &self.gates;
        if !(gates.latency_quantile > 0.0 && gates.latency_quantile < 1.0) {
            problems.push((
                "latency_quantile",
                format!(
                    "must be between 0 and 1 (exclusive), got {}",
                    gates.latency_quantile
                ),
            ));
        }
        if gates.min_shadow_agreement.is_some() && gates.min_shadow_compared == 0 {
            problems.push((
                "min_shadow_compared",
                "must be at least 1 when min_shadow_agreement is set".to_string(),
            ));
        }
        if let Some(v) = gates.min_shadow_agreement
            && !(0.0..=1.0).contains(&v)
        {
            problems.push((
                "min_shadow_agreement",
                format!("must be between 0 and 1, got {v}"),
            ));
        }
        // A limit of 0 could never be shown to hold, so the gate would only
        // ever wait: refused rather than taken to mean "off".
        for (field, value, within) in [
            ("max_error_rate", gates.max_error_rate, " and at most 1"),
            ("max_p99_ratio", gates.max_p99_ratio, ""),
            ("max_latency_increase", gates.max_latency_increase, ""),
            ("max_ttft_p99_ratio", gates.max_ttft_p99_ratio, ""),
            ("max_tpot_p99_ratio", gates.max_tpot_p99_ratio, ""),
        ] {
            let at_most = if within.is_empty() {
                f64::INFINITY
            } else {
                1.0
            };
            if let Some(v) = value
                && !(v > 0.0 && v <= at_most && v.is_finite())
            {
                problems.push((
                    field,
                    format!("must be greater than 0{within} (\"off\" turns the gate off), got {v}"),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
