//! The shadow part of the admin API: the report, settings changes (merged onto
//! the current settings, so `{"percent": 10}` is a whole request), and resets.

use serde_json::{Value, json};

use crate::registry::ShadowPolicy;
use crate::routing::RoutingTable;

/// `GET /api/v1/models/{m}/shadow`, or `None` for an unknown model.
pub fn report(table: &RoutingTable, model: &str) -> Option<Value> {
    let shadow = table.model(model)?.shadow();
    let versions: Vec<Value> = shadow
        .versions()
        .iter()
        .map(|v| {
            let mut view = v.report.view();
            view["targeted"] = Value::Bool(v.targeted);
            view
        })
        .collect();
    Some(json!({
        "model": model,
        "active": shadow.is_active(),
        "policy": shadow.policy(),
        "versions": versions,
    }))
}

/// The settings a `POST .../shadow` body asks for: its fields over the current
/// ones (`compare` merged field by field), plus the optional `reason`.
pub fn merged_policy(
    current: &ShadowPolicy,
    body: Value,
) -> Result<(ShadowPolicy, String), String> {
    let Value::Object(mut changes) = body else {
        return Err("the body must be a JSON object of shadow settings".into());
    };
    let reason = match changes.remove("reason") {
        Some(Value::String(reason)) => reason,
        None => String::new(),
        Some(_) => return Err("reason must be a string".into()),
    };
    let mut merged = serde_json::to_value(current).map_err(|e| e.to_string())?;
    for (key, value) in changes {
        match (key.as_str(), value, merged.get_mut(&key)) {
            ("compare", Value::Object(fields), Some(Value::Object(compare))) => {
                compare.extend(fields)
            }
            (_, value, _) => {
                merged[key] = value;
            }
        }
    }
    if let Some(Value::Array(methods)) = merged.get_mut("methods") {
        for method in methods.iter_mut() {
            if let Value::String(m) = method {
                *m = m.to_ascii_uppercase();
            }
        }
    }
    let policy =
        serde_json::from_value(merged).map_err(|e| format!("invalid shadow settings: {e}"))?;
    Ok((policy, reason))
}

/// Resets the reports of `version` (or of every staging version); returns the
/// versions reset, or `None` for an unknown model or version.
pub fn reset(table: &RoutingTable, model: &str, version: Option<&str>) -> Option<Vec<String>> {
    let shadow = table.model(model)?.shadow();
    let chosen: Vec<_> = shadow
        .versions()
        .iter()
        .filter(|v| version.is_none_or(|wanted| v.route.version() == wanted))
        .collect();
    if version.is_some() && chosen.is_empty() {
        return None;
    }
    chosen.iter().for_each(|v| v.report.reset());
    Some(
        chosen
            .iter()
            .map(|v| v.route.version().to_string())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_body_changes_only_what_it_names() {
        let current = ShadowPolicy {
            percent: 100.0,
            ..ShadowPolicy::default()
        };
        let body = json!({ "percent": 10, "compare": { "mode": "oip" }, "methods": ["post"], "reason": "less load" });
        let (policy, reason) = merged_policy(&current, body).unwrap();
        assert_eq!(policy.percent, 10.0);
        assert_eq!(policy.compare.mode, crate::registry::CompareMode::Oip);
        assert_eq!(policy.compare.rel_tol, current.compare.rel_tol);
        assert_eq!(policy.methods, ["POST"]);
        assert_eq!(policy.timeout_ms, current.timeout_ms);
        assert_eq!(reason, "less load");
    }

    #[test]
    fn unknown_fields_and_bad_types_are_refused() {
        let current = ShadowPolicy::default();
        for body in [
            json!({ "percnt": 1 }),
            json!({ "percent": "all" }),
            json!({ "compare": { "mod": "oip" } }),
            json!([1]),
        ] {
            assert!(merged_policy(&current, body.clone()).is_err(), "{body}");
        }
    }
}
