//! `oip` mode: Open Inference Protocol outputs matched by `name`; `shape` and
//! `datatype` must be equal, `data` agree element-wise within tolerance. Other
//! fields of the answer (`id`, `model_version`, ...) are not compared.

use serde_json::{Map, Value};

use super::{Comparator, Findings, json};
use crate::vocab::path::Step;

pub(super) fn diff(comparator: &Comparator, a: &Value, b: &Value, findings: &mut Findings) {
    let (Some(left), Some(right)) = (outputs(a), outputs(b)) else {
        let which = if outputs(a).is_none() {
            "production"
        } else {
            "shadow"
        };
        findings.add(
            &[],
            format!("the {which} answer has no Open Inference Protocol \"outputs\" array"),
        );
        return;
    };
    for (name, output) in &left {
        let mut path = vec![Step::Key("outputs".into()), Step::Key(name.to_string())];
        if comparator.ignored(&path) {
            continue;
        }
        match right.iter().find(|(n, _)| n == name) {
            Some((_, other)) => diff_output(comparator, output, other, &mut path, findings),
            None => findings.add(&path, "output missing in the shadow answer".into()),
        }
    }
    for (name, _) in right
        .iter()
        .filter(|(n, _)| !left.iter().any(|(m, _)| m == n))
    {
        let path = [Step::Key("outputs".into()), Step::Key(name.to_string())];
        if !comparator.ignored(&path) {
            findings.add(&path, "extra output in the shadow answer".into());
        }
    }
}

/// Whether the answer has an `outputs` array at all.
pub(super) fn has_outputs(answer: &Value) -> bool {
    answer.get("outputs").is_some_and(Value::is_array)
}

/// `(name, output object)` pairs, or `None` if this is not an OIP answer.
fn outputs(answer: &Value) -> Option<Vec<(&str, &Map<String, Value>)>> {
    answer
        .get("outputs")?
        .as_array()?
        .iter()
        .map(|o| Some((o.get("name")?.as_str()?, o.as_object()?)))
        .collect()
}

fn diff_output(
    comparator: &Comparator,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    path: &mut Vec<Step>,
    findings: &mut Findings,
) {
    for field in ["shape", "datatype"] {
        let (x, y) = (a.get(field), b.get(field));
        if x != y {
            path.push(Step::Key(field.into()));
            let show = |v: Option<&Value>| v.map_or_else(|| "none".to_string(), Value::to_string);
            findings.add(path, format!("{field} {} vs {}", show(x), show(y)));
            path.pop();
        }
    }
    path.push(Step::Key("data".into()));
    if !comparator.ignored(path) {
        let (x, y) = (flatten(a.get("data")), flatten(b.get("data")));
        if x.len() != y.len() {
            findings.add(path, format!("data length {} vs {}", x.len(), y.len()));
        }
        for (i, (left, right)) in x.iter().zip(&y).enumerate() {
            path.push(Step::Index(i));
            json::diff(comparator, left, right, path, findings);
            path.pop();
        }
    }
    path.pop();
}

/// Tensor data may be flat or nested by shape; compare it flat.
fn flatten(data: Option<&Value>) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = data.into_iter().collect();
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter().rev()),
            other => out.push(other),
        }
    }
    out
}
