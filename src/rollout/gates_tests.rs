//! Each gate's three answers on samples drawn from seeded distributions.

use super::*;
use crate::rollout::samples::{gates, plan, requests};

fn risk() -> Risk {
    Risk::of(&plan(vec![25.0, 50.0, 100.0], gates()))
}

const P99: LatencyLimit = LatencyLimit {
    gate: "p99_ratio",
    quantile: 0.99,
    max_ratio: 1.5,
    as_increase: false,
};

#[test]
fn the_error_budget_is_split_over_every_gate_at_every_step() {
    // Two gates at three steps: 1% over six looks.
    assert!((risk().per_gate - 0.01 / 6.0).abs() < 1e-12);
    let mut shadowed = gates();
    shadowed.min_shadow_agreement = Some(0.99);
    shadowed.max_latency_increase = Some(0.2);
    // Four gates at three steps, and the shadow gate before the first.
    let risk = Risk::of(&plan(vec![25.0, 50.0, 100.0], shadowed));
    assert!((risk.per_gate - 0.01 / 13.0).abs() < 1e-12);
}

#[test]
fn the_error_gate_fails_fast_on_overwhelming_evidence_and_not_on_one_error() {
    let healthy = requests(30, 0, 10.0, 1);
    let failing = error_rate(0.01, &requests(10, 10, 10.0, 2), &healthy, 100, risk());
    assert_eq!(failing.verdict, Verdict::Fail, "{}", failing.summary());
    assert!(failing.lower.unwrap() > 0.01);
    let one = error_rate(
        0.01,
        &requests(40, 1, 10.0, 3),
        &requests(120, 0, 10.0, 4),
        40,
        risk(),
    );
    assert_eq!(one.verdict, Verdict::Wait, "{}", one.summary());
    assert_eq!(one.reading, Some(0.025));
}

#[test]
fn the_error_gate_passes_only_when_shown_within_the_limit() {
    let stable = requests(6_000, 6, 10.0, 5);
    let thin = error_rate(0.01, &requests(300, 0, 10.0, 6), &stable, 100, risk());
    assert_eq!(thin.verdict, Verdict::Wait, "{}", thin.summary());
    let shown = error_rate(0.01, &requests(2_000, 2, 10.0, 7), &stable, 100, risk());
    assert_eq!(shown.verdict, Verdict::Pass, "{}", shown.summary());
    assert!(shown.upper.unwrap() <= 0.01 && shown.lower.unwrap() < 0.0);
    // Below min_requests it never passes, however clean.
    let early = error_rate(0.01, &requests(2_000, 0, 10.0, 8), &stable, 5_000, risk());
    assert_eq!(early.verdict, Verdict::Wait);
    assert!(
        early.detail.contains("5000 requests on each side"),
        "{}",
        early.detail
    );
    // Five points worse than stable: caught within several hundred requests.
    let bad = error_rate(0.01, &requests(800, 40, 10.0, 9), &stable, 100, risk());
    assert_eq!(bad.verdict, Verdict::Fail, "{}", bad.summary());
}

#[test]
fn the_error_gate_judges_the_difference_from_stable() {
    // Both at 3%: the candidate is no worse than stable, which takes more
    // requests to show than at 0%, as each side's rate is less certain.
    let stable = requests(40_000, 1_200, 10.0, 10);
    let same = error_rate(0.01, &requests(20_000, 600, 10.0, 11), &stable, 100, risk());
    assert_eq!(same.verdict, Verdict::Pass, "{}", same.summary());
    let early = error_rate(0.01, &requests(2_000, 60, 10.0, 11), &stable, 100, risk());
    assert_eq!(early.verdict, Verdict::Wait, "{}", early.summary());
}

#[test]
fn the_latency_gate_fails_a_slower_candidate_and_passes_an_equal_one() {
    let stable = requests(6_000, 0, 10.0, 12);
    // A p99 is a tail figure: 600 requests at twice the latency are not
    // enough to be sure it is over 1.5 times stable's, 4,000 are.
    let early = latency(P99, &requests(600, 0, 20.0, 13), &stable, 100, risk());
    assert_eq!(early.verdict, Verdict::Wait, "{}", early.summary());
    let slow = latency(P99, &requests(4_000, 0, 20.0, 13), &stable, 100, risk());
    assert_eq!(slow.verdict, Verdict::Fail, "{}", slow.summary());
    assert!(slow.lower.unwrap() > 1.5 && (1.7..2.4).contains(&slow.reading.unwrap()));
    let equal = latency(P99, &requests(4_000, 0, 10.0, 14), &stable, 100, risk());
    assert_eq!(equal.verdict, Verdict::Pass, "{}", equal.summary());
    assert!(equal.upper.unwrap() <= 1.5);
}

#[test]
fn the_latency_gate_waits_while_a_p99_cannot_be_bounded() {
    let stable = requests(6_000, 0, 10.0, 15);
    // 400 samples cannot bound a p99 from above: neither pass nor (for an
    // equal candidate) fail.
    let thin = latency(P99, &requests(400, 0, 10.0, 16), &stable, 100, risk());
    assert_eq!(thin.verdict, Verdict::Wait, "{}", thin.summary());
    assert_eq!(thin.upper, None);
    assert!(
        thin.detail.contains("too few samples to bound the p99"),
        "{}",
        thin.detail
    );
    // Too few on a side for the plan's minimum: not judged at all, even when
    // the candidate is far slower.
    let early = latency(P99, &requests(50, 0, 100.0, 17), &stable, 100, risk());
    assert_eq!(early.verdict, Verdict::Wait);
    assert!(early.detail.contains("100 requests"), "{}", early.detail);
}

#[test]
fn a_median_gate_reads_as_an_increase() {
    let limit = LatencyLimit {
        gate: "latency_increase",
        quantile: 0.5,
        max_ratio: 1.2,
        as_increase: true,
    };
    let stable = requests(3_000, 0, 10.0, 18);
    let slower = latency(limit, &requests(1_000, 0, 16.0, 19), &stable, 100, risk());
    assert_eq!(slower.verdict, Verdict::Fail, "{}", slower.summary());
    assert!((slower.threshold - 0.2).abs() < 1e-12);
    assert!(
        (0.45..0.75).contains(&slower.reading.unwrap()),
        "{}",
        slower.summary()
    );
    // 30% slower against a 20% allowance: too close to tell from 1,000.
    let close = latency(limit, &requests(1_000, 0, 13.0, 19), &stable, 100, risk());
    assert_eq!(close.verdict, Verdict::Wait, "{}", close.summary());
    assert!(slower.detail.contains("candidate p50"), "{}", slower.detail);
    let equal = latency(limit, &requests(1_000, 0, 10.0, 20), &stable, 100, risk());
    assert_eq!(equal.verdict, Verdict::Pass, "{}", equal.summary());
}

#[test]
fn the_shadow_gate_passes_on_its_lower_bound_and_fails_on_its_upper() {
    let check = |agreed, judged| shadow_agreement(0.99, 50, agreed, judged, risk());
    assert_eq!(check(40, 40).verdict, Verdict::Wait);
    assert_eq!(check(2_000, 2_000).verdict, Verdict::Pass);
    let disagreeing = check(90, 100);
    assert_eq!(
        disagreeing.verdict,
        Verdict::Fail,
        "{}",
        disagreeing.summary()
    );
    assert!(disagreeing.upper.unwrap() < 0.99);
    // 99.3% of 1,000 is not yet shown to be at least 99%.
    assert_eq!(check(993, 1_000).verdict, Verdict::Wait);
    assert_eq!(check(0, 0).reading, None);
}
