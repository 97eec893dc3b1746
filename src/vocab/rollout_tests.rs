//! Plans, weights and what old journals hold.

use super::*;

fn plan(steps: Vec<f64>) -> Plan {
    Plan {
        steps,
        step_interval_s: 60.0,
        min_requests: 100,
        max_step_duration_s: None,
        confidence: DEFAULT_CONFIDENCE,
        gates: Gates {
            max_error_rate: Some(0.01),
            max_p99_ratio: Some(1.5),
            max_latency_increase: None,
            latency_quantile: DEFAULT_LATENCY_QUANTILE,
            max_ttft_p99_ratio: None,
            max_tpot_p99_ratio: None,
            min_shadow_agreement: None,
            min_shadow_compared: 0,
        },
        on_failure: OnFailure::Rollback,
    }
}

#[test]
fn weights_become_buckets() {
    assert_eq!(weight_buckets(0.0), 0);
    assert_eq!(weight_buckets(12.34), 1234);
    assert_eq!(weight_buckets(100.0), BUCKETS);
    assert_eq!(weight_buckets(150.0), BUCKETS);
}

#[test]
fn plans_are_checked() {
    assert!(plan(vec![5.0, 25.0, 50.0, 100.0]).problems().is_empty());
    let fields = |p: Plan| p.problems().into_iter().map(|(f, _)| f).collect::<Vec<_>>();
    assert_eq!(fields(plan(vec![])), ["steps"]);
    assert_eq!(fields(plan(vec![50.0, 25.0])), ["steps"]);
    assert_eq!(fields(plan(vec![0.0, 101.0])), ["steps"]);
    let mut bad = plan(vec![10.0]);
    bad.step_interval_s = 0.0;
    bad.gates.max_error_rate = Some(2.0);
    assert_eq!(fields(bad), ["step_interval_s", "max_error_rate"]);
    let mut bad = plan(vec![10.0]);
    bad.max_step_duration_s = Some(30.0);
    bad.confidence = 1.0;
    bad.gates.latency_quantile = 1.0;
    bad.gates.max_latency_increase = Some(-0.1);
    assert_eq!(
        fields(bad),
        [
            "max_step_duration_s",
            "confidence",
            "latency_quantile",
            "max_latency_increase"
        ]
    );
    let mut bounded = plan(vec![10.0]);
    assert_eq!(bounded.max_step_duration_s(), 600.0, "ten intervals");
    bounded.max_step_duration_s = Some(90.0);
    assert_eq!(bounded.max_step_duration_s(), 90.0);
}

#[test]
fn plans_journaled_before_the_statistical_gates_still_read() {
    let old = serde_json::json!({
        "steps": [10.0], "step_interval_s": 5.0, "min_requests": 10,
        "gates": { "max_error_rate": 0.01, "max_p99_ratio": 1.5,
                   "min_shadow_agreement": null, "min_shadow_compared": 0 },
        "on_failure": "rollback"
    });
    let plan: Plan = serde_json::from_value(old).unwrap();
    assert_eq!(
        (
            plan.confidence,
            plan.gates.latency_quantile,
            plan.max_step_duration_s
        ),
        (DEFAULT_CONFIDENCE, DEFAULT_LATENCY_QUANTILE, None)
    );
}

#[test]
fn only_a_progressing_rollout_has_weight() {
    let mut rollout = Rollout {
        id: 1,
        candidate: "3".into(),
        plan: plan(vec![5.0, 50.0]),
        phase: Phase::Progressing,
        step: 1,
        reason: String::new(),
        failed_gate: None,
        evidence: Vec::new(),
        held: false,
        progressed: true,
        salt: 7,
    };
    assert_eq!(
        rollout.canary(),
        Some(Canary {
            version: "3".into(),
            weight: 50.0,
            salt: 7
        })
    );
    for phase in [
        Phase::WaitingForShadow,
        Phase::Paused,
        Phase::Succeeded,
        Phase::RolledBack,
    ] {
        rollout.phase = phase;
        assert_eq!(rollout.canary(), None, "{phase}");
    }
    rollout.phase = Phase::Paused;
    rollout.held = true;
    assert_eq!(rollout.weight(), 50.0, "a person's pause holds the weight");
    rollout.progressed = false;
    assert_eq!(
        rollout.weight(),
        0.0,
        "a pause before the first step gives the candidate nothing"
    );
}
