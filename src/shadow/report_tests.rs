use super::*;
use crate::shadow::compare::Difference;

fn verdict(matched: bool, path: &str) -> Verdict {
    let differences = if matched {
        vec![]
    } else {
        vec![Difference {
            path: vec![
                Step::Key("predictions".into()),
                Step::Index(3),
                Step::Key(path.into()),
            ],
            detail: "1 vs 2".into(),
        }]
    };
    Verdict {
        matched,
        difference_count: differences.len(),
        differences,
        labels: None,
        llm: None,
    }
}

fn compared(v: &Verdict) -> Compared<'_> {
    Compared {
        request_id: "r1",
        path: "/v2/models/m/infer",
        primary: b"{}",
        shadow: b"{}",
        primary_latency: Duration::from_millis(2),
        shadow_latency: Duration::from_millis(5),
        first_frames: (None, None),
        verdict: v,
    }
}

#[test]
fn counts_agreement_paths_and_samples() {
    let report = VersionReport::new("m", "3");
    report.count_mirrored();
    report.count_dropped(DropReason::InFlight);
    report.count_error(ErrorKind::Timeout);
    let (good, bad) = (verdict(true, ""), verdict(false, "score"));
    for _ in 0..3 {
        report.record(&compared(&good));
    }
    report.record(&compared(&bad));
    let view = report.view();
    assert_eq!(
        (
            view["compared"].as_u64(),
            view["matched"].as_u64(),
            view["mismatched"].as_u64()
        ),
        (Some(4), Some(3), Some(1))
    );
    assert_eq!(view["agreement"]["agreement"], 0.75);
    assert_eq!(view["agreement"]["window_compared"], 4);
    assert_eq!(view["dropped"]["in_flight"], 1);
    assert_eq!(view["errors"]["timeout"], 1);
    assert_eq!(
        view["top_mismatch_paths"][0]["path"],
        "predictions[*].score"
    );
    assert_eq!(
        view["samples"][0]["differences"][0],
        "predictions[3].score: 1 vs 2"
    );
    assert_eq!(
        view["samples"][0]["difference_paths"],
        serde_json::json!([["predictions", 3, "score"]])
    );
    assert!(view["latency_ms"]["shadow"]["p50"].as_f64().unwrap() >= 4.9);

    report.reset();
    let fresh = report.view();
    assert_eq!(
        (fresh["compared"].as_u64(), fresh["mirrored"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(fresh["samples"].as_array().unwrap().is_empty());
    assert_eq!(report.agreement().agreement, None);
}

#[test]
fn samples_and_windows_are_bounded() {
    let mut details = Details::new();
    let bad = verdict(false, "x");
    for _ in 0..(SAMPLES + 5) {
        details.record(&compared(&bad));
    }
    assert_eq!(details.samples.len(), SAMPLES);
    let later = now_secs() + WINDOW_BUCKETS as u64 * BUCKET_SECS + 1;
    let aged = details.agreement(later);
    assert_eq!(
        (aged.compared, aged.window_compared),
        (SAMPLES as u64 + 5, 0)
    );
}

#[test]
fn agreement_per_minute_keeps_the_last_hour_oldest_first() {
    let mut minutes: Ring<MINUTES> = Ring::new(60);
    let start = 1_800_000_000 / 60 * 60;
    minutes.add(start, 1, 1);
    minutes.add(start + 61, 0, 1);
    minutes.add(start + 62, 1, 1);
    let series = minutes.series(start + 120);
    assert_eq!(
        series,
        serde_json::json!([
            { "start_ms": start * 1000, "compared": 1, "agreement": 1.0 },
            { "start_ms": (start + 60) * 1000, "compared": 2, "agreement": 0.5 },
        ])
    );
    // An hour on, the first minute has left the series; the slot it shared is reused.
    minutes.add(start + 3600, 0, 1);
    let later = minutes.series(start + 3600);
    let starts: Vec<u64> = later
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start_ms"].as_u64().unwrap() / 1000)
        .collect();
    assert_eq!(starts, [start + 60, start + 3600]);
}

#[test]
fn latency_distributions_are_shown_as_cdf_points() {
    let report = VersionReport::new("m", "3");
    assert_eq!(
        report.view()["latency_cdf_ms"]["shadow"],
        serde_json::json!([])
    );
    let good = verdict(true, "");
    report.record(&compared(&good));
    let view = report.view();
    let points = view["latency_cdf_ms"]["shadow"].as_array().unwrap();
    assert_eq!(points.len(), CDF_QUANTILES.len());
    assert_eq!(points[0][0], 0.0);
    assert!((points[0][1].as_f64().unwrap() - 5.0).abs() < 0.1);
    assert_eq!(view["agreement_per_minute"][0]["compared"], 1);
}

#[test]
fn shares_of_several_reports_merge_into_one() {
    let (good, bad) = (verdict(true, ""), verdict(false, "score"));
    let (a, b) = (VersionReport::new("m", "3"), VersionReport::new("m", "3"));
    for _ in 0..3 {
        a.count_mirrored();
        a.record(&compared(&good));
    }
    b.count_mirrored();
    b.count_dropped(DropReason::CpuShare);
    b.record(&Compared {
        shadow_latency: Duration::from_millis(50),
        ..compared(&bad)
    });
    let share = b.share();
    // Through JSON, as the replicas exchange it.
    let share: ReportShare = serde_json::from_str(&serde_json::to_string(&share).unwrap()).unwrap();
    let view = a.view_with(std::slice::from_ref(&share));
    assert_eq!(view["replicas"], 2);
    assert_eq!(
        (
            view["mirrored"].as_u64(),
            view["compared"].as_u64(),
            view["mismatched"].as_u64()
        ),
        (Some(4), Some(4), Some(1))
    );
    assert_eq!(view["dropped"]["cpu_share"], 1);
    assert_eq!(view["agreement"]["agreement"], 0.75);
    assert_eq!(view["agreement"]["window_compared"], 4);
    assert_eq!(view["top_mismatch_paths"][0]["count"], 1);
    assert_eq!(view["samples"].as_array().unwrap().len(), 1);
    // Percentiles of every answer, not of each report: a's three at 5 ms, b's
    // one at 50 ms.
    let p50 = view["latency_ms"]["shadow"]["p50"].as_f64().unwrap();
    assert!((4.9..5.1).contains(&p50), "{p50}");
    assert!(view["latency_ms"]["shadow"]["p99"].as_f64().unwrap() >= 49.0);
    let agreement = a.agreement_with(&[share]);
    assert_eq!((agreement.agreed, agreement.judged), (3, 4));
    // Alone, a report is what it was.
    assert_eq!(a.view()["compared"], 3);
    assert_eq!(a.view()["replicas"], 1);
}

#[test]
fn a_merged_report_counts_from_the_newest_start() {
    let a = VersionReport::new("m", "3");
    let mut share = a.share();
    share.since_ms += 60_000;
    let merged = a.agreement_with(std::slice::from_ref(&share));
    assert_eq!(merged.since_ms, share.since_ms);
    // The basis stands for the set of starts: a report that joins, leaves or
    // restarts changes it, so a gate never subtracts across that.
    let alone = a.agreement();
    assert_eq!(alone.basis, alone.since_ms);
    assert_ne!(merged.basis, alone.basis);
    assert_eq!(
        a.agreement_with(std::slice::from_ref(&share)).basis,
        merged.basis
    );
    let mut restarted = share.clone();
    restarted.since_ms += 1;
    assert_ne!(a.agreement_with(&[restarted]).basis, merged.basis);
    assert_ne!(
        a.agreement_with(&[share.clone(), share]).basis,
        merged.basis
    );
}
