//! One look at a running rollout: the gates' verdicts on what was measured in
//! the current window, and what follows from them.
//!
//! - a step advances once its interval has passed and every gate passes;
//! - any gate's fail rolls the candidate back (or pauses it, by `on_failure`);
//! - a step that reaches `max_step_duration_s` with a gate still waiting is
//!   held: paused with the reason, the weight kept; it never passes by default.
//!
//! Before the first step only the shadow gate is judged. During steps the
//! shadow gate watches for a fail but does not hold a step back: at 100%
//! nothing is mirrored, so it could never pass there.

use std::time::Duration;

use serde::Serialize;

use crate::registry::{Decision, GateReading, Phase, Rollout, Verdict};
use crate::routing::stats::StatsSnapshot;

use super::gates::{self, LatencyLimit, Risk};

/// Which of stable's requests a look compares the candidate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StableWindow {
    /// Stable's requests in the same step, on the same clock.
    ThisStep,
    /// At 100% stable serves nothing: its record from before the rollout, when
    /// it served all traffic as the candidate now does.
    BeforeRollout,
    /// At 100%, when that record is the shorter: stable's requests in the step
    /// before.
    EarlierStep,
}

/// Shadow comparisons of the candidate in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShadowCounts {
    pub agreed: u64,
    pub judged: u64,
}

/// What was measured for one look.
pub struct Evidence<'a> {
    /// Since the window (step, wait, hold) began.
    pub elapsed: Duration,
    /// The canary route's requests in the window.
    pub candidate: &'a StatsSnapshot,
    /// Stable's requests in `stable_window`.
    pub stable: &'a StatsSnapshot,
    pub stable_window: StableWindow,
    /// `None` when the candidate is not mirrored to.
    pub shadow: Option<ShadowCounts>,
}

/// The readings behind a verdict, as `GET .../rollout` shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readings {
    pub elapsed_s: f64,
    pub step_interval_s: f64,
    pub max_step_duration_s: f64,
    pub candidate_requests: u64,
    pub candidate_errors: u64,
    pub stable_requests: u64,
    pub stable_errors: u64,
    pub stable_window: StableWindow,
    /// The plan's confidence; each gate's own (its share) is in its reading.
    pub confidence: f64,
    pub gates: Vec<GateReading>,
    /// Why the rollout is not moving on yet (empty when it is).
    pub waiting_for: String,
}

/// The next decision (if any) and the readings it rests on.
pub fn judge(rollout: &Rollout, evidence: &Evidence<'_>) -> (Option<Decision>, Readings) {
    let plan = &rollout.plan;
    let mut readings = Readings {
        elapsed_s: evidence.elapsed.as_secs_f64(),
        step_interval_s: plan.step_interval_s,
        max_step_duration_s: plan.max_step_duration_s(),
        candidate_requests: evidence.candidate.requests,
        candidate_errors: evidence.candidate.errors,
        stable_requests: evidence.stable.requests,
        stable_errors: evidence.stable.errors,
        stable_window: evidence.stable_window,
        confidence: plan.confidence,
        gates: Vec::new(),
        waiting_for: String::new(),
    };
    let decision = match rollout.phase {
        Phase::WaitingForShadow => before_first_step(rollout, evidence, &mut readings),
        Phase::Progressing => during_step(rollout, evidence, &mut readings),
        // Paused by a person or held: the candidate keeps its share (once its
        // first step began), so its gates stay armed; only a fail acts.
        Phase::Paused if rollout.held => {
            let decision = if rollout.progressed {
                during_step(rollout, evidence, &mut readings)
            } else {
                before_first_step(rollout, evidence, &mut readings)
            };
            readings.waiting_for = "a person to resume, promote or abort".into();
            decision.filter(|d| matches!(d, Decision::Fail { .. }))
        }
        _ => None,
    };
    (decision, readings)
}

fn shadow_gate(rollout: &Rollout, shadow: ShadowCounts, risk: Risk) -> Option<GateReading> {
    let gates = &rollout.plan.gates;
    let min = gates.min_shadow_agreement?;
    Some(gates::shadow_agreement(
        min,
        gates.min_shadow_compared.max(1),
        shadow.agreed,
        shadow.judged,
        risk,
    ))
}

fn before_first_step(
    rollout: &Rollout,
    evidence: &Evidence<'_>,
    readings: &mut Readings,
) -> Option<Decision> {
    let Some(shadow) = evidence.shadow else {
        readings.waiting_for = format!(
            "shadow comparisons of version {:?} (it is not mirrored to)",
            rollout.candidate
        );
        return held_after_max(rollout, evidence, None);
    };
    let gate = shadow_gate(rollout, shadow, Risk::of(&rollout.plan))?;
    let verdict = gate.verdict;
    readings.waiting_for = match verdict {
        Verdict::Wait => format!("shadow_agreement: {}", gate.detail),
        _ => String::new(),
    };
    readings.gates.push(gate.clone());
    match verdict {
        Verdict::Pass => Some(Decision::Advance { from_step: None }),
        Verdict::Fail => Some(Decision::Fail {
            failure: gate,
            at_step: None,
        }),
        Verdict::Wait => held_after_max(rollout, evidence, None),
    }
}

/// The step gates the plan turns on, judged on this look's evidence.
fn step_readings(rollout: &Rollout, evidence: &Evidence<'_>) -> Vec<GateReading> {
    let (plan, gates) = (&rollout.plan, &rollout.plan.gates);
    let risk = Risk::of(plan);
    let (candidate, stable) = (evidence.candidate, evidence.stable);
    let min = plan.min_requests;
    let mut readings = Vec::new();
    if let Some(max) = gates.max_error_rate {
        readings.push(gates::error_rate(max, candidate, stable, min, risk));
    }
    let limits = [
        gates.max_p99_ratio.map(|max| LatencyLimit {
            gate: "p99_ratio",
            quantile: 0.99,
            max_ratio: max,
            as_increase: false,
        }),
        gates.max_latency_increase.map(|increase| LatencyLimit {
            gate: "latency_increase",
            quantile: gates.latency_quantile,
            max_ratio: 1.0 + increase,
            as_increase: true,
        }),
    ];
    for limit in limits.into_iter().flatten() {
        readings.push(gates::latency(limit, candidate, stable, min, risk));
    }
    let token_limits = [
        (
            gates.max_ttft_p99_ratio,
            "ttft_p99_ratio",
            StatsSnapshot::time_to_first_token as fn(&StatsSnapshot) -> StatsSnapshot,
        ),
        (
            gates.max_tpot_p99_ratio,
            "tpot_p99_ratio",
            StatsSnapshot::time_per_output_token,
        ),
    ];
    for (max, gate, times) in token_limits {
        if let Some(max) = max {
            let limit = LatencyLimit {
                gate,
                quantile: 0.99,
                max_ratio: max,
                as_increase: false,
            };
            readings.push(gates::latency(
                limit,
                &times(candidate),
                &times(stable),
                min,
                risk,
            ));
        }
    }
    readings.extend(
        evidence
            .shadow
            .and_then(|shadow| shadow_gate(rollout, shadow, risk)),
    );
    readings
}

fn during_step(
    rollout: &Rollout,
    evidence: &Evidence<'_>,
    readings: &mut Readings,
) -> Option<Decision> {
    let plan = &rollout.plan;
    readings.gates = step_readings(rollout, evidence);
    if let Some(failed) = readings.gates.iter().find(|g| g.verdict == Verdict::Fail) {
        return Some(Decision::Fail {
            failure: failed.clone(),
            at_step: Some(rollout.step),
        });
    }
    let waiting: Vec<String> = readings
        .gates
        .iter()
        .filter(|g| g.verdict == Verdict::Wait && g.gate != "shadow_agreement")
        .map(|g| format!("{}: {}", g.gate, g.detail))
        .collect();
    let interval = Duration::from_secs_f64(plan.step_interval_s);
    readings.waiting_for = if evidence.elapsed < interval {
        format!(
            "step interval: {:.1} of {} s",
            evidence.elapsed.as_secs_f64(),
            plan.step_interval_s
        )
    } else if evidence.candidate.requests < plan.min_requests {
        format!(
            "{} of {} candidate requests",
            evidence.candidate.requests, plan.min_requests
        )
    } else if !waiting.is_empty() {
        format!("evidence: {}", waiting.join("; "))
    } else {
        return Some(Decision::Advance {
            from_step: Some(rollout.step),
        });
    };
    held_after_max(rollout, evidence, Some(rollout.step))
}

/// Holds a window that has waited its longest.
fn held_after_max(
    rollout: &Rollout,
    evidence: &Evidence<'_>,
    at_step: Option<usize>,
) -> Option<Decision> {
    let longest = Duration::from_secs_f64(rollout.plan.max_step_duration_s());
    (evidence.elapsed >= longest).then_some(Decision::Hold { at_step })
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
