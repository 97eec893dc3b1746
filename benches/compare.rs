//! Comparator cost per pair of ~1 KB JSON answers, for each mode, when the answers
//! agree (the common case) and when one number differs.
//!
//! Run: `cargo bench --bench compare`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use stagegate::registry::{CompareMode, ComparePolicy};
use stagegate::shadow::{Answer, Comparator};
use stagegate::vocab::PathPattern;

fn pattern(text: &str) -> PathPattern {
    PathPattern::parse(text).unwrap_or_else(|error| panic!("bench pattern: {error}"))
}

/// An Open Inference Protocol answer of about 1 KB: 64 scores and 64 labels.
fn answer(bump: f64) -> Vec<u8> {
    let scores: Vec<f64> = (0..64)
        .map(|i| f64::from(i) / 64.0 + if i == 7 { bump } else { 0.0 })
        .collect();
    let labels: Vec<&str> = (0..64)
        .map(|i| if i % 3 == 0 { "fraud" } else { "ok" })
        .collect();
    let value: Value = json!({
        "model_name": "fraud",
        "model_version": "2",
        "id": "req-1",
        "outputs": [
            { "name": "score", "shape": [64], "datatype": "FP64", "data": scores },
            { "name": "label", "shape": [64], "datatype": "BYTES", "data": labels },
        ],
        "predictions": labels,
    });
    value.to_string().into_bytes()
}

fn compare(c: &mut Criterion) {
    let (same, changed) = (answer(0.0), answer(0.5));
    eprintln!("answer size: {} bytes", same.len());
    let mut group = c.benchmark_group("compare_1kb");
    for mode in [
        CompareMode::Json,
        CompareMode::Oip,
        CompareMode::Label,
        CompareMode::Status,
        CompareMode::Bytes,
    ] {
        let policy = ComparePolicy {
            mode,
            ignore: vec![pattern("id"), pattern("model_version")],
            label_path: pattern("predictions[*]"),
            ..ComparePolicy::default()
        };
        let comparator = Comparator::new(&policy);
        for (case, other) in [("agree", &same), ("differ", &changed)] {
            group.bench_function(format!("{mode}/{case}"), |b| {
                b.iter(|| {
                    let verdict = comparator.compare(
                        Answer::plain(200, black_box(&same)),
                        Answer::plain(200, black_box(other)),
                    );
                    black_box(verdict.matched)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, compare);
criterion_main!(benches);
