//! `json` mode: a structural diff by JSON path.

use serde_json::Value;

use super::{Comparator, Findings, short};
use crate::vocab::path::Step;

pub(super) fn diff(
    comparator: &Comparator,
    a: &Value,
    b: &Value,
    path: &mut Vec<Step>,
    findings: &mut Findings,
) {
    if comparator.ignored(path) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, left) in x {
                path.push(Step::Key(key.clone()));
                match y.get(key) {
                    Some(right) => diff(comparator, left, right, path, findings),
                    None if !comparator.ignored(path) => {
                        findings.add(path, "missing in the shadow answer".into())
                    }
                    None => {}
                }
                path.pop();
            }
            for key in y.keys().filter(|k| !x.contains_key(*k)) {
                path.push(Step::Key(key.clone()));
                if !comparator.ignored(path) {
                    findings.add(path, "extra in the shadow answer".into());
                }
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                findings.add(path, format!("array length {} vs {}", x.len(), y.len()));
            }
            for (i, (left, right)) in x.iter().zip(y).enumerate() {
                path.push(Step::Index(i));
                diff(comparator, left, right, path, findings);
                path.pop();
            }
        }
        // Integers (class ids, counts) must be equal; tolerance is for measurements.
        (Value::Number(x), Value::Number(y)) if !x.is_f64() && !y.is_f64() && x != y => {
            findings.add(path, format!("{x} vs {y}"));
        }
        (Value::Number(x), Value::Number(y)) if !x.is_f64() && !y.is_f64() => {}
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            if !comparator.close(x, y) {
                findings.add(path, format!("{x} vs {y}"));
            }
        }
        (x, y) if std::mem::discriminant(x) != std::mem::discriminant(y) => {
            findings.add(
                path,
                format!("type changed: {} vs {}", type_name(x), type_name(y)),
            );
        }
        (x, y) if x != y => findings.add(path, format!("{} vs {}", short(x), short(y))),
        _ => {}
    }
}

pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
