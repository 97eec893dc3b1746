//! `label` mode: classification agreement at a path. A label is a scalar (class
//! name or id), or the argmax of a vector of scores. Agreement is counted per
//! label, so a batch of ten predictions with one disagreement is 9 of 10.

use serde_json::Value;

use super::{Findings, short};
use crate::vocab::path::{JsonPath, Step};

/// Whether either answer has anything at the label path.
pub(super) fn has_labels(label_path: &JsonPath, a: &Value, b: &Value) -> bool {
    !label_path.select(a).is_empty() || !label_path.select(b).is_empty()
}

/// Returns (labels that agree, labels compared).
pub(super) fn compare(
    label_path: &JsonPath,
    a: &Value,
    b: &Value,
    findings: &mut Findings,
) -> (u64, u64) {
    let (left, right) = (label_path.select(a), label_path.select(b));
    let total = left.len().max(right.len());
    let mut agreed = 0;
    for i in 0..total {
        let (x, y) = (
            left.get(i).map(|v| label(v)),
            right.get(i).map(|v| label(v)),
        );
        if x.is_some() && x == y {
            agreed += 1;
            continue;
        }
        let mut path = label_path.0.clone();
        match path.last_mut() {
            Some(last @ Step::AnyIndex) => *last = Step::Index(i),
            _ => path.push(Step::Index(i)),
        }
        let show = |l: Option<String>| l.unwrap_or_else(|| "none".into());
        findings.add(&path, format!("label {} vs {}", show(x), show(y)));
    }
    (agreed, total as u64)
}

/// The class a value stands for.
fn label(value: &Value) -> String {
    match value {
        Value::Array(scores) if !scores.is_empty() && scores.iter().all(Value::is_number) => {
            let argmax = scores
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.as_f64().unwrap_or(f64::NEG_INFINITY)))
                .fold((0, f64::NEG_INFINITY), |best, (i, s)| {
                    if s > best.1 { (i, s) } else { best }
                })
                .0;
            format!("argmax {argmax}")
        }
        Value::String(s) => s.clone(),
        other => short(other),
    }
}
