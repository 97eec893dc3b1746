use super::*;
use crate::shadow::compare::Difference;
use crate::vocab::path::Step;

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
