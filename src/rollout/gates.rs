//! Gate evaluation: given a rollout and what was measured since its step began,
//! what should happen next. Pure, so every gate is tested without traffic.

use std::time::Duration;

use serde::Serialize;

use crate::registry::{Decision, GateFailure, Phase, Rollout};
use crate::routing::stats::StatsSnapshot;
use crate::shadow::Agreement;

/// Stable requests the latency gate needs before it compares p99s.
const MIN_STABLE_FOR_LATENCY: u64 = 20;

/// What was measured for one evaluation.
pub struct Measured<'a> {
    /// Since the step began.
    pub elapsed: Duration,
    /// The canary route's requests in the step.
    pub candidate: &'a StatsSnapshot,
    /// The production route's requests in the step.
    pub stable: &'a StatsSnapshot,
    /// The candidate's shadow report, when it is mirrored to.
    pub shadow: Option<Agreement>,
    /// Stable's p99 from an earlier step of this rollout, for steps where stable
    /// has too little traffic of its own (at 100% it has none).
    pub stable_p99_before: Option<Duration>,
}

/// The readings behind a verdict, as `GET .../rollout` shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Readings {
    pub elapsed_s: f64,
    pub candidate_requests: u64,
    pub candidate_errors: u64,
    pub error_rate: Option<f64>,
    pub candidate_p99_ms: Option<f64>,
    pub stable_requests: u64,
    pub stable_p99_ms: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub shadow_compared: Option<u64>,
    pub shadow_agreement: Option<f64>,
    /// Why the rollout is not moving on yet (empty when it is).
    pub waiting_for: String,
}

/// The next decision (if any) and the readings it rests on.
pub fn evaluate(rollout: &Rollout, measured: &Measured<'_>) -> (Option<Decision>, Readings) {
    let mut readings = readings(measured);
    let decision = match rollout.phase {
        Phase::WaitingForShadow => shadow_gate(rollout, measured.shadow, &mut readings),
        Phase::Progressing => step_gates(rollout, measured, &mut readings),
        // A person's pause keeps the candidate's share, so its gates stay armed;
        // only advancing waits for the resume.
        Phase::Paused if rollout.held => step_gates(rollout, measured, &mut readings)
            .filter(|decision| matches!(decision, Decision::Fail { .. })),
        _ => None,
    };
    (decision, readings)
}

/// Stable's p99 in this step when it had enough requests to tell.
pub fn stable_p99(stable: &StatsSnapshot) -> Option<Duration> {
    (stable.requests >= MIN_STABLE_FOR_LATENCY)
        .then(|| stable.quantile(0.99))
        .flatten()
}

fn readings(m: &Measured<'_>) -> Readings {
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0);
    let candidate_p99 = ms(m.candidate.quantile(0.99));
    let stable_p99 = ms(stable_p99(m.stable).or(m.stable_p99_before));
    Readings {
        elapsed_s: m.elapsed.as_secs_f64(),
        candidate_requests: m.candidate.requests,
        candidate_errors: m.candidate.errors,
        error_rate: m.candidate.error_rate(),
        candidate_p99_ms: candidate_p99,
        stable_requests: m.stable.requests,
        stable_p99_ms: stable_p99,
        p99_ratio: match (candidate_p99, stable_p99) {
            (Some(c), Some(s)) if s > 0.0 => Some(c / s),
            _ => None,
        },
        shadow_compared: m.shadow.map(|a| a.compared),
        shadow_agreement: m.shadow.and_then(|a| a.agreement),
        waiting_for: String::new(),
    }
}

fn failure(at_step: Option<usize>, gate: &str, reading: f64, threshold: f64) -> Option<Decision> {
    let failure = GateFailure {
        gate: gate.to_string(),
        reading,
        threshold,
    };
    Some(Decision::Fail { failure, at_step })
}

/// Before the first canary step: enough comparisons, and enough of them agree.
fn shadow_gate(
    rollout: &Rollout,
    shadow: Option<Agreement>,
    readings: &mut Readings,
) -> Option<Decision> {
    let gates = &rollout.plan.gates;
    let min = gates.min_shadow_agreement?;
    let Some(agreement) = shadow else {
        readings.waiting_for = format!(
            "shadow comparisons of version {:?} (it is not mirrored to)",
            rollout.candidate
        );
        return None;
    };
    if agreement.window_compared < gates.min_shadow_compared.max(1) {
        readings.waiting_for = format!(
            "{} of {} shadow comparisons in the last {} s",
            agreement.window_compared, gates.min_shadow_compared, agreement.window_seconds
        );
        return None;
    }
    match agreement.window_agreement {
        Some(rate) if rate < min => failure(None, "shadow_agreement", rate, min),
        _ => Some(Decision::Advance { from_step: None }),
    }
}

/// During a step: fail as soon as a gate cannot hold; advance once the interval
/// has passed, the candidate has enough requests, and every gate holds.
fn step_gates(rollout: &Rollout, m: &Measured<'_>, readings: &mut Readings) -> Option<Decision> {
    let (plan, gates) = (&rollout.plan, &rollout.plan.gates);
    let enough = m.candidate.requests >= plan.min_requests;
    if let Some(max) = gates.max_error_rate {
        // Past this many errors the rate cannot come back under the limit at
        // min_requests, so there is no point waiting for them.
        let hopeless = m.candidate.errors as f64 > max * plan.min_requests as f64;
        if let Some(rate) = readings
            .error_rate
            .filter(|r| *r > max && (enough || hopeless))
        {
            return failure(Some(rollout.step), "error_rate", rate, max);
        }
    }
    if let (Some(max), Some(ratio), true) = (gates.max_p99_ratio, readings.p99_ratio, enough)
        && ratio > max
    {
        return failure(Some(rollout.step), "p99_ratio", ratio, max);
    }
    if let (Some(min), Some(shadow)) = (gates.min_shadow_agreement, m.shadow)
        && shadow.window_compared >= gates.min_shadow_compared
        && let Some(rate) = shadow.window_agreement.filter(|r| *r < min)
    {
        return failure(Some(rollout.step), "shadow_agreement", rate, min);
    }
    let interval = Duration::from_secs_f64(plan.step_interval_s);
    // The latency gate must have been judged before a step passes: with no stable
    // p99 at all (no earlier step to borrow one from) the step waits for one.
    let latency_unjudged =
        gates.max_p99_ratio.is_some() && readings.p99_ratio.is_none() && rollout.weight() < 100.0;
    readings.waiting_for = if m.elapsed < interval {
        format!(
            "step interval: {:.1} of {} s",
            m.elapsed.as_secs_f64(),
            plan.step_interval_s
        )
    } else if !enough {
        format!(
            "{} of {} candidate requests",
            m.candidate.requests, plan.min_requests
        )
    } else if latency_unjudged {
        format!(
            "{} of {MIN_STABLE_FOR_LATENCY} stable requests to compare latency",
            m.stable.requests
        )
    } else {
        return Some(Decision::Advance {
            from_step: Some(rollout.step),
        });
    };
    None
}

#[cfg(test)]
#[path = "gates_tests.rs"]
mod tests;
