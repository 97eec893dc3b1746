//! Every gate, passing and failing, on measurements made by hand.

use super::*;
use crate::registry::{Gates, OnFailure, Plan};
use crate::routing::stats::RouteStats;

fn rollout(phase: Phase, gates: Gates) -> Rollout {
    Rollout {
        id: 1,
        candidate: "3".into(),
        plan: Plan {
            steps: vec![10.0, 50.0, 100.0],
            step_interval_s: 10.0,
            min_requests: 100,
            gates,
            on_failure: OnFailure::Rollback,
        },
        phase,
        step: 1,
        reason: String::new(),
        failed_gate: None,
        held: false,
        progressed: true,
        salt: 1,
    }
}

fn gates() -> Gates {
    Gates {
        max_error_rate: Some(0.05),
        max_p99_ratio: Some(1.5),
        min_shadow_agreement: None,
        min_shadow_compared: 50,
    }
}

/// `n` requests, `errors` of them failed, all taking `millis`.
fn stats(n: u64, errors: u64, millis: u64) -> StatsSnapshot {
    let stats = RouteStats::default();
    for i in 0..n {
        stats.record(i < errors, Duration::from_millis(millis));
    }
    stats.snapshot()
}

fn agreement(compared: u64, rate: f64) -> Agreement {
    Agreement {
        compared,
        agreement: Some(rate),
        window_compared: compared,
        window_agreement: Some(rate),
        window_seconds: 300,
    }
}

fn decide(
    rollout: &Rollout,
    elapsed_s: u64,
    candidate: &StatsSnapshot,
    stable: &StatsSnapshot,
    shadow: Option<Agreement>,
) -> (Option<Decision>, Readings) {
    evaluate(
        rollout,
        &Measured {
            elapsed: Duration::from_secs(elapsed_s),
            candidate,
            stable,
            shadow,
            stable_p99_before: None,
        },
    )
}

fn failed_gate(decision: Option<Decision>) -> Option<String> {
    match decision {
        Some(Decision::Fail { failure, .. }) => Some(failure.gate),
        _ => None,
    }
}

#[test]
fn a_healthy_step_advances_only_after_its_interval_and_enough_requests() {
    let r = rollout(Phase::Progressing, gates());
    let (good, stable) = (stats(150, 1, 10), stats(1000, 0, 10));
    let (early, readings) = decide(&r, 5, &good, &stable, None);
    assert_eq!(early, None);
    assert!(
        readings.waiting_for.contains("step interval"),
        "{readings:?}"
    );
    let (thin, readings) = decide(&r, 20, &stats(50, 0, 10), &stable, None);
    assert_eq!(thin, None);
    assert_eq!(readings.waiting_for, "50 of 100 candidate requests");
    assert_eq!(
        decide(&r, 20, &good, &stable, None).0,
        Some(Decision::Advance { from_step: Some(1) })
    );
}

#[test]
fn the_error_rate_gate_fails_the_step() {
    let r = rollout(Phase::Progressing, gates());
    let (decision, readings) = decide(&r, 1, &stats(100, 10, 10), &stats(100, 0, 10), None);
    assert_eq!(failed_gate(decision), Some("error_rate".into()));
    assert_eq!(readings.error_rate, Some(0.1));
    // Before min_requests, only a hopeless count of errors fails it early.
    assert_eq!(
        decide(&r, 1, &stats(10, 2, 10), &stats(100, 0, 10), None).0,
        None
    );
    assert_eq!(
        failed_gate(decide(&r, 1, &stats(10, 6, 10), &stats(100, 0, 10), None).0),
        Some("error_rate".into())
    );
}

#[test]
fn the_latency_gate_compares_candidate_and_stable_p99() {
    let r = rollout(Phase::Progressing, gates());
    let (decision, readings) = decide(&r, 20, &stats(200, 0, 40), &stats(200, 0, 10), None);
    assert_eq!(failed_gate(decision), Some("p99_ratio".into()));
    assert!(readings.p99_ratio.unwrap() > 3.0);
    // Within the ratio it passes; without enough stable traffic the step waits.
    assert!(matches!(
        decide(&r, 20, &stats(200, 0, 12), &stats(200, 0, 10), None).0,
        Some(Decision::Advance { .. })
    ));
    let (waiting, readings) = decide(&r, 20, &stats(200, 0, 40), &stats(5, 0, 10), None);
    assert_eq!(waiting, None);
    assert_eq!(
        readings.waiting_for,
        "5 of 20 stable requests to compare latency"
    );
}

#[test]
fn at_full_weight_the_latency_gate_uses_stable_from_an_earlier_step() {
    let mut r = rollout(Phase::Progressing, gates());
    r.step = 2; // 100%: stable gets no traffic
    let (candidate, stable) = (stats(200, 0, 40), stats(0, 0, 1));
    let measured = |before| Measured {
        elapsed: Duration::from_secs(20),
        candidate: &candidate,
        stable: &stable,
        shadow: None,
        stable_p99_before: before,
    };
    let (decision, _) = evaluate(&r, &measured(Some(Duration::from_millis(10))));
    assert_eq!(failed_gate(decision), Some("p99_ratio".into()));
    let unjudged = evaluate(&r, &measured(None)).0;
    assert!(
        matches!(unjudged, Some(Decision::Advance { .. })),
        "nothing to compare with: not judged"
    );
}

#[test]
fn the_shadow_gate_holds_the_first_step_and_fails_on_disagreement() {
    let mut g = gates();
    g.min_shadow_agreement = Some(0.99);
    let waiting = rollout(Phase::WaitingForShadow, g.clone());
    let none = stats(0, 0, 1);
    let (decision, readings) = decide(&waiting, 0, &none, &none, Some(agreement(10, 1.0)));
    assert_eq!(decision, None);
    assert_eq!(
        readings.waiting_for,
        "10 of 50 shadow comparisons in the last 300 s"
    );
    assert_eq!(
        decide(&waiting, 0, &none, &none, Some(agreement(60, 0.995))).0,
        Some(Decision::Advance { from_step: None })
    );
    assert_eq!(
        failed_gate(decide(&waiting, 0, &none, &none, Some(agreement(60, 0.9))).0),
        Some("shadow_agreement".into())
    );
    // During a step, the shadow window keeps being checked.
    let progressing = rollout(Phase::Progressing, g);
    let verdict = decide(
        &progressing,
        1,
        &stats(10, 0, 10),
        &stats(10, 0, 10),
        Some(agreement(80, 0.5)),
    )
    .0;
    assert_eq!(failed_gate(verdict), Some("shadow_agreement".into()));
}

#[test]
fn paused_and_finished_rollouts_are_left_alone() {
    for phase in [
        Phase::Paused,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Aborted,
    ] {
        let r = rollout(phase, gates());
        assert_eq!(
            decide(&r, 100, &stats(500, 500, 10), &stats(500, 0, 10), None).0,
            None,
            "{phase}"
        );
    }
}
