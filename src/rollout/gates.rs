//! The gates, one look at a time: each compares the candidate with stable over
//! the same window and answers pass, fail or wait, with the interval it rests on.
//!
//! - `error_rate`: the difference of the two error rates, bounded by the
//!   difference of each side's bounds. Fails when it surely exceeds
//!   `max_error_rate`, passes when it is surely within it.
//! - `p99_ratio` and `latency_increase`: the ratio of the two sides' latency at a
//!   quantile, bounded by each side's order-statistic bounds (no assumption about
//!   the latency distribution). Fails when the candidate is surely slower by more
//!   than allowed; passes when it is surely not (non-inferiority).
//! - `ttft_p99_ratio` and `tpot_p99_ratio`: the same ratio at p99, of OpenAI-
//!   style streamed answers' time to the first token and per output token.
//! - `shadow_agreement`: the share of shadow answers that agree. Passes when its
//!   lower bound reaches `min_shadow_agreement`, fails when its upper bound is
//!   below it.
//!
//! Every bound comes from [`super::confidence`], valid however often it is
//! looked at; [`Risk`] splits the plan's error budget over the gates and steps.

use std::time::Duration;

use crate::registry::{GateReading, Plan, Verdict};
use crate::routing::stats::StatsSnapshot;

use super::confidence::Mixture;

/// Each gate's share of the chance, over a whole rollout, of a wrong verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Risk {
    /// For one gate at one step; a comparison spends half on each side.
    pub per_gate: f64,
}

impl Risk {
    /// `1 - confidence`, split evenly over every gate at every step, plus the
    /// shadow gate's look before the first step. A union bound: the chance that
    /// any gate anywhere in the rollout errs is at most `1 - confidence`.
    pub fn of(plan: &Plan) -> Risk {
        let gates = &plan.gates;
        let step_gates = [
            gates.max_error_rate.is_some(),
            gates.max_p99_ratio.is_some(),
            gates.max_latency_increase.is_some(),
            gates.max_ttft_p99_ratio.is_some(),
            gates.max_tpot_p99_ratio.is_some(),
            gates.min_shadow_agreement.is_some(),
        ]
        .into_iter()
        .filter(|on| *on)
        .count();
        let before_first = usize::from(gates.min_shadow_agreement.is_some());
        let looks = (step_gates * plan.steps.len() + before_first).max(1);
        Risk {
            per_gate: (1.0 - plan.confidence) / looks as f64,
        }
    }

    fn confidence(self) -> f64 {
        1.0 - self.per_gate
    }
}

/// Fails or passes on bounds, or waits.
fn verdict(fails: bool, passes: bool) -> Verdict {
    if fails {
        Verdict::Fail
    } else if passes {
        Verdict::Pass
    } else {
        Verdict::Wait
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Candidate error rate minus stable's, at most `max` (absolute).
pub fn error_rate(
    max: f64,
    candidate: &StatsSnapshot,
    stable: &StatsSnapshot,
    min_requests: u64,
    risk: Risk,
) -> GateReading {
    let mixture = Mixture::rates();
    let side = |s: &StatsSnapshot| mixture.rate_bounds(s.errors, s.requests, risk.per_gate / 2.0);
    let (c, s) = (side(candidate), side(stable));
    let (lower, upper) = (c.lower - s.upper, c.upper - s.lower);
    let enough = candidate.requests >= min_requests && stable.requests >= min_requests;
    let reading = share(candidate.errors, candidate.requests)
        .zip(share(stable.errors, stable.requests))
        .map(|(c, s)| c - s);
    let percent = |s: &StatsSnapshot| {
        share(s.errors, s.requests).map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
    };
    let mut detail = format!(
        "candidate {} errors in {} ({}), stable {} in {} ({})",
        candidate.errors,
        candidate.requests,
        percent(candidate),
        stable.errors,
        stable.requests,
        percent(stable)
    );
    if !enough && lower <= max {
        detail.push_str(&format!(
            "; a pass needs {min_requests} requests on each side"
        ));
    }
    GateReading {
        gate: "error_rate".into(),
        reading,
        threshold: max,
        verdict: verdict(lower > max, upper <= max && enough),
        lower: Some(lower),
        upper: Some(upper),
        confidence: Some(risk.confidence()),
        candidate_n: candidate.requests,
        stable_n: Some(stable.requests),
        detail,
    }
}

/// Which latency quantile a gate compares, and how much slower it may be.
#[derive(Debug, Clone, Copy)]
pub struct LatencyLimit {
    pub gate: &'static str,
    pub quantile: f64,
    /// The largest allowed ratio of candidate to stable.
    pub max_ratio: f64,
    /// Shown as `ratio - 1` (an increase) rather than a ratio.
    pub as_increase: bool,
}

/// Where a side's quantile lies, in microseconds: `(lower, estimate, upper)`,
/// `upper` infinite while there are too few samples to bound it.
fn quantile_bounds(stats: &StatsSnapshot, quantile: f64, alpha: f64) -> (f64, Option<f64>, f64) {
    let ranks = Mixture::centred(quantile).quantile_ranks(stats.samples(), quantile, alpha);
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let lower = ranks
        .lower
        .and_then(|r| stats.rank_range(r))
        .map_or(0.0, |(low, _)| micros(low));
    let upper = ranks
        .upper
        .and_then(|r| stats.rank_range(r))
        .map_or(f64::INFINITY, |(_, high)| micros(high));
    (lower, stats.quantile(quantile).map(micros), upper)
}

/// Candidate latency at a quantile over stable's, at most `limit.max_ratio`.
pub fn latency(
    limit: LatencyLimit,
    candidate: &StatsSnapshot,
    stable: &StatsSnapshot,
    min_requests: u64,
    risk: Risk,
) -> GateReading {
    let alpha = risk.per_gate / 2.0;
    let (c_low, c_mid, c_high) = quantile_bounds(candidate, limit.quantile, alpha);
    let (s_low, s_mid, s_high) = quantile_bounds(stable, limit.quantile, alpha);
    let enough = candidate.samples() >= min_requests && stable.samples() >= min_requests;
    // A stable bound of zero (sub-microsecond answers) bounds nothing.
    let lower = if s_high > 0.0 { c_low / s_high } else { 0.0 };
    let upper = if s_low > 0.0 {
        c_high / s_low
    } else {
        f64::INFINITY
    };
    let reading = c_mid
        .zip(s_mid)
        .filter(|(_, s)| *s > 0.0)
        .map(|(c, s)| c / s);
    let shift = if limit.as_increase { 1.0 } else { 0.0 };
    let finite = |v: f64| v.is_finite().then_some(v - shift);
    let name = quantile_name(limit.quantile);
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{:.3}", v / 1000.0)
        } else {
            "?".into()
        }
    };
    let side = |label: &str, mid: Option<f64>, low: f64, high: f64| {
        format!(
            "{label} {name} {} ms in [{}, {}]",
            mid.map_or_else(|| "-".into(), ms),
            ms(low),
            ms(high)
        )
    };
    let mut detail = format!(
        "{}, {}",
        side("candidate", c_mid, c_low, c_high),
        side("stable", s_mid, s_low, s_high)
    );
    if !enough {
        detail.push_str(&format!(
            "; judged once each side has {min_requests} requests"
        ));
    } else if !upper.is_finite() {
        detail.push_str(&format!(
            "; too few samples to bound the {name} from above yet"
        ));
    }
    GateReading {
        gate: limit.gate.into(),
        reading: reading.map(|r| r - shift),
        threshold: limit.max_ratio - shift,
        verdict: verdict(
            enough && lower > limit.max_ratio,
            enough && upper <= limit.max_ratio,
        ),
        lower: finite(lower),
        upper: finite(upper),
        confidence: Some(risk.confidence()),
        candidate_n: candidate.samples(),
        stable_n: Some(stable.samples()),
        detail,
    }
}

/// `p50`, `p99`, `p99.9`.
fn quantile_name(quantile: f64) -> String {
    let percent = format!("{:.3}", quantile * 100.0);
    format!("p{}", percent.trim_end_matches('0').trim_end_matches('.'))
}

/// Shadow answers agreeing with production: at least `min`, on at least
/// `min_compared` comparisons.
pub fn shadow_agreement(
    min: f64,
    min_compared: u64,
    agreed: u64,
    judged: u64,
    risk: Risk,
) -> GateReading {
    let bounds = Mixture::rates().rate_bounds(agreed, judged, risk.per_gate);
    let enough = judged >= min_compared;
    let mut detail = format!("{agreed} of {judged} agreed");
    if !enough && bounds.upper >= min {
        detail.push_str(&format!("; a pass needs {min_compared} comparisons"));
    }
    GateReading {
        gate: "shadow_agreement".into(),
        reading: share(agreed, judged),
        threshold: min,
        verdict: verdict(bounds.upper < min, enough && bounds.lower >= min),
        lower: Some(bounds.lower),
        upper: Some(bounds.upper),
        confidence: Some(risk.confidence()),
        candidate_n: judged,
        stable_n: None,
        detail,
    }
}

#[cfg(test)]
#[path = "gates_tests.rs"]
mod tests;
