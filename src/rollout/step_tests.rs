//! What a look decides, and which window it measures, on hand-made counters.

use std::time::Duration;

use crate::registry::{Decision, Gates, Phase, Rollout, Verdict};
use crate::rollout::samples::{gates, plan, requests};
use crate::rollout::step::{Evidence, ShadowCounts, StableWindow, judge};
use crate::rollout::window::{Counters, Windows};
use crate::routing::stats::StatsSnapshot;
use crate::shadow::Agreement;

fn rollout(phase: Phase, gates: Gates) -> Rollout {
    Rollout {
        id: 1,
        candidate: "3".into(),
        plan: plan(vec![10.0, 50.0, 100.0], gates),
        phase,
        step: 1,
        reason: String::new(),
        failed_gate: None,
        evidence: Vec::new(),
        held: false,
        progressed: true,
        salt: 1,
    }
}

fn look(
    rollout: &Rollout,
    elapsed_s: u64,
    candidate: &StatsSnapshot,
    stable: &StatsSnapshot,
    shadow: Option<ShadowCounts>,
) -> (Option<Decision>, crate::rollout::Readings) {
    judge(
        rollout,
        &Evidence {
            elapsed: Duration::from_secs(elapsed_s),
            candidate,
            stable,
            stable_window: StableWindow::ThisStep,
            shadow,
        },
    )
}

fn failed_gate(decision: &Option<Decision>) -> Option<&str> {
    match decision {
        Some(Decision::Fail { failure, .. }) => Some(&failure.gate),
        _ => None,
    }
}

#[test]
fn a_step_advances_once_its_interval_has_passed_and_every_gate_passes() {
    let r = rollout(Phase::Progressing, gates());
    let (good, stable) = (requests(5_000, 2, 10.0, 1), requests(10_000, 5, 10.0, 2));
    let (early, readings) = look(&r, 5, &good, &stable, None);
    assert_eq!(early, None);
    assert!(
        readings.waiting_for.starts_with("step interval"),
        "{readings:?}"
    );
    assert!(
        readings.gates.iter().all(|g| g.verdict == Verdict::Pass),
        "{readings:?}"
    );
    let (advance, readings) = look(&r, 10, &good, &stable, None);
    assert_eq!(advance, Some(Decision::Advance { from_step: Some(1) }));
    let names: Vec<&str> = readings.gates.iter().map(|g| g.gate.as_str()).collect();
    assert_eq!(names, ["error_rate", "p99_ratio"]);
    assert_eq!(
        (readings.candidate_requests, readings.stable_requests),
        (5_000, 10_000)
    );
}

#[test]
fn a_step_waits_while_a_gate_has_too_little_evidence_and_holds_at_its_longest() {
    let r = rollout(Phase::Progressing, gates());
    // 300 requests cannot bound a p99 (or an error rate below 1%) yet.
    let (thin, stable) = (requests(300, 0, 10.0, 3), requests(900, 0, 10.0, 4));
    let (waiting, readings) = look(&r, 20, &thin, &stable, None);
    assert_eq!(waiting, None);
    assert!(
        readings.waiting_for.starts_with("evidence: error_rate"),
        "{readings:?}"
    );
    assert!(readings.waiting_for.contains("p99_ratio"), "{readings:?}");
    let (held, _) = look(&r, 100, &thin, &stable, None);
    assert_eq!(
        held,
        Some(Decision::Hold { at_step: Some(1) }),
        "ten intervals"
    );
    let mut longer = r.clone();
    longer.plan.max_step_duration_s = Some(500.0);
    assert_eq!(look(&longer, 100, &thin, &stable, None).0, None);
}

#[test]
fn any_failing_gate_fails_the_step_at_once() {
    let r = rollout(Phase::Progressing, gates());
    let stable = requests(10_000, 0, 10.0, 5);
    let failing = look(&r, 1, &requests(20, 20, 10.0, 6), &stable, None).0;
    assert_eq!(failed_gate(&failing), Some("error_rate"));
    let slow = look(&r, 1, &requests(5_000, 0, 25.0, 7), &stable, None).0;
    assert_eq!(failed_gate(&slow), Some("p99_ratio"));
    assert!(matches!(
        slow,
        Some(Decision::Fail {
            at_step: Some(1),
            ..
        })
    ));
}

#[test]
fn the_shadow_gate_decides_before_the_first_step_and_watches_during_steps() {
    let mut g = gates();
    g.min_shadow_agreement = Some(0.99);
    let waiting = rollout(Phase::WaitingForShadow, g.clone());
    let none = StatsSnapshot::default();
    let counts = |agreed, judged| Some(ShadowCounts { agreed, judged });
    let (decision, readings) = look(&waiting, 0, &none, &none, counts(30, 30));
    assert_eq!(decision, None);
    assert!(
        readings.waiting_for.contains("30 of 30 agreed"),
        "{readings:?}"
    );
    assert_eq!(
        look(&waiting, 0, &none, &none, counts(3_000, 3_000)).0,
        Some(Decision::Advance { from_step: None })
    );
    let disagreeing = look(&waiting, 0, &none, &none, counts(90, 100)).0;
    assert_eq!(failed_gate(&disagreeing), Some("shadow_agreement"));
    let unmirrored = look(&waiting, 0, &none, &none, None);
    assert!(unmirrored.1.waiting_for.contains("not mirrored"));
    assert_eq!(
        look(&waiting, 100, &none, &none, None).0,
        Some(Decision::Hold { at_step: None })
    );
    // During a step it can fail the rollout, but its wait holds nothing back.
    let progressing = rollout(Phase::Progressing, g);
    let (good, stable) = (requests(5_000, 0, 10.0, 8), requests(10_000, 0, 10.0, 9));
    let watched = look(&progressing, 20, &good, &stable, counts(90, 100)).0;
    assert_eq!(failed_gate(&watched), Some("shadow_agreement"));
    let unsure = look(&progressing, 20, &good, &stable, counts(10, 10)).0;
    assert_eq!(unsure, Some(Decision::Advance { from_step: Some(1) }));
}

#[test]
fn held_rollouts_keep_their_gates_armed_and_finished_ones_are_left_alone() {
    let mut held = rollout(Phase::Paused, gates());
    held.held = true;
    let stable = requests(10_000, 0, 10.0, 10);
    let failing = look(&held, 1, &requests(20, 20, 10.0, 11), &stable, None);
    assert_eq!(failed_gate(&failing.0), Some("error_rate"));
    let (good, readings) = look(&held, 1_000, &requests(5_000, 0, 10.0, 12), &stable, None);
    assert_eq!(good, None, "no advance and no second hold while held");
    assert!(readings.waiting_for.contains("a person"), "{readings:?}");
    for phase in [
        Phase::Paused,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Aborted,
    ] {
        let r = rollout(phase, gates());
        let bad = requests(500, 500, 10.0, 13);
        assert_eq!(look(&r, 100, &bad, &stable, None).0, None, "{phase}");
    }
}

fn counters<'a>(candidate: &'a StatsSnapshot, stable: &'a StatsSnapshot) -> Counters<'a> {
    Counters {
        candidate,
        stable_version: "2",
        stable,
        shadow: None,
    }
}

/// Adds `n` requests at `median_ms` to cumulative counters.
fn grow(total: &StatsSnapshot, n: u64, median_ms: f64, seed: u64) -> StatsSnapshot {
    total.plus(&requests(n, 0, median_ms, seed))
}

#[test]
fn windows_measure_each_step_from_its_start_and_at_full_weight_use_stables_record() {
    let mut windows = Windows::default();
    let at = Duration::from_secs;
    // Before the rollout stable served alone: two marks of its record, 30 s
    // apart, and 9,000 requests after the first.
    let mut stable = requests(2_000, 0, 10.0, 13);
    windows.remember("m", "2", at(0), || stable.clone());
    stable = grow(&stable, 9_000, 10.0, 14);
    windows.remember("m", "2", at(10), || panic!("no mark due yet"));
    windows.remember("m", "2", at(30), || stable.clone());
    let mut r = rollout(Phase::Progressing, gates());
    r.step = 0;
    let mut candidate = StatsSnapshot::default();
    let (_, first) = windows.look("m", &r, at(31), &counters(&candidate, &stable));
    assert_eq!(
        (first.stable_requests, first.elapsed_s),
        (0, 0.0),
        "the window starts empty"
    );
    candidate = grow(&candidate, 4_000, 10.0, 15);
    stable = grow(&stable, 9_000, 10.0, 16);
    let (decision, readings) = windows.look("m", &r, at(43), &counters(&candidate, &stable));
    assert_eq!(decision, Some(Decision::Advance { from_step: Some(0) }));
    assert_eq!(
        (readings.candidate_requests, readings.stable_requests),
        (4_000, 9_000)
    );
    // At 100% stable gets nothing: the candidate, now carrying all traffic, is
    // compared with stable's record from when it did.
    r.step = 2;
    let (_, full) = windows.look("m", &r, at(44), &counters(&candidate, &stable));
    assert_eq!(
        (full.stable_window, full.stable_requests),
        (StableWindow::BeforeRollout, 9_000)
    );
    assert_eq!((full.candidate_requests, full.elapsed_s), (0, 0.0));
    candidate = grow(&candidate, 5_000, 30.0, 17);
    let (decision, _) = windows.look("m", &r, at(50), &counters(&candidate, &stable));
    assert_eq!(failed_gate(&decision), Some("p99_ratio"));
    // With no record of the production version (a restart, a new version),
    // everything its route served stands in, unless the step before had more.
    windows.retain(|_| false, |_| false);
    let (_, fresh) = windows.look("m", &r, at(51), &counters(&candidate, &stable));
    assert_eq!(fresh.stable_requests, stable.requests);
    windows.retain(|_| false, |_| false);
    r.step = 1;
    let thin = requests(300, 0, 10.0, 18);
    windows.look("m", &r, at(60), &counters(&candidate, &thin));
    let busier = grow(&thin, 2_000, 10.0, 19);
    r.step = 2;
    let (_, earlier) = windows.look("m", &r, at(70), &counters(&candidate, &busier));
    assert_eq!(
        (earlier.stable_window, earlier.stable_requests),
        (StableWindow::EarlierStep, 2_000)
    );
    windows.remember("other", "2", at(52), || stable.clone());
    windows.remember("other", "3", at(53), StatsSnapshot::default);
    windows.retain(|_| false, |_| true);
    let mut other = r.clone();
    other.id = 2;
    let (_, renamed) = windows.look("other", &other, at(54), &counters(&candidate, &stable));
    assert_eq!(
        renamed.stable_requests, stable.requests,
        "the record was of another version"
    );
}

#[test]
fn the_wait_for_shadow_counts_the_whole_report_and_a_step_counts_from_its_start() {
    let mut windows = Windows::default();
    let mut g = gates();
    g.min_shadow_agreement = Some(0.99);
    let mut r = rollout(Phase::WaitingForShadow, g);
    r.step = 0;
    r.progressed = false;
    let none = StatsSnapshot::default();
    let report = |agreed, judged, since_ms| Agreement {
        compared: judged,
        agreement: None,
        agreed,
        judged,
        since_ms,
        basis: since_ms,
        window_compared: 0,
        window_agreement: None,
        window_seconds: 300,
    };
    let at = |shadow| Counters {
        candidate: &none,
        stable_version: "2",
        stable: &none,
        shadow: Some(shadow),
    };
    let second = Duration::from_secs;
    let (_, readings) = windows.look("m", &r, second(0), &at(report(500, 500, 1)));
    assert_eq!(
        readings.gates[0].candidate_n, 500,
        "comparisons from before the rollout count"
    );
    let (_, readings) = windows.look("m", &r, second(1), &at(report(40, 50, 2)));
    assert_eq!(
        readings.gates[0].candidate_n, 50,
        "after a reset, everything since it"
    );
    r.phase = Phase::Progressing;
    r.progressed = true;
    windows.look("m", &r, second(2), &at(report(100, 110, 2)));
    let (_, readings) = windows.look("m", &r, second(3), &at(report(180, 200, 2)));
    let shadow = readings
        .gates
        .iter()
        .find(|g| g.gate == "shadow_agreement")
        .unwrap();
    assert_eq!(shadow.candidate_n, 90, "a step counts from its start");
}

#[test]
fn a_hold_keeps_the_evidence_and_restarts_the_clock_but_a_resume_after_a_failure_starts_over() {
    let mut windows = Windows::default();
    let mut r = rollout(Phase::Progressing, gates());
    let stable = requests(9_000, 0, 10.0, 20);
    let mut candidate = requests(1_000, 0, 10.0, 21);
    windows.look("m", &r, Duration::ZERO, &counters(&candidate, &stable));
    candidate = grow(&candidate, 2_000, 10.0, 22);
    r.phase = Phase::Paused;
    r.held = true;
    let (_, held) = windows.look(
        "m",
        &r,
        Duration::from_secs(100),
        &counters(&candidate, &stable),
    );
    assert_eq!((held.candidate_requests, held.elapsed_s), (2_000, 0.0));
    r.phase = Phase::Progressing;
    r.held = false;
    let (_, resumed) = windows.look(
        "m",
        &r,
        Duration::from_secs(130),
        &counters(&candidate, &stable),
    );
    assert_eq!(
        (resumed.candidate_requests, resumed.elapsed_s),
        (2_000, 0.0)
    );
    // A failed gate took the share away: the resumed step starts over.
    r.phase = Phase::Paused;
    windows.look(
        "m",
        &r,
        Duration::from_secs(140),
        &counters(&candidate, &stable),
    );
    r.phase = Phase::Progressing;
    let (_, again) = windows.look(
        "m",
        &r,
        Duration::from_secs(150),
        &counters(&candidate, &stable),
    );
    assert_eq!(again.candidate_requests, 0);
}
