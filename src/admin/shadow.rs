//! The shadow part of the admin API: the report, settings changes (merged onto
//! the current settings, so `{"percent": 10}` is a whole request), and resets.

use serde_json::{Value, json};

use crate::rollout::RemoteStats;
use crate::routing::RoutingTable;

/// `GET /api/v1/models/{m}/shadow`, or `None` for an unknown model: each
/// report merged with the other replicas' (`remote`; none with one replica).
pub fn report(table: &RoutingTable, model: &str, remote: &RemoteStats) -> Option<Value> {
    let shadow = table.model(model)?.shadow();
    let view = |version: &crate::shadow::ShadowVersion, replay: bool| {
        let others = remote.shadow_shares(model, &version.version, replay);
        version.report.view_with(&others)
    };
    let versions: Vec<Value> = shadow
        .versions()
        .iter()
        .map(|v| {
            let mut view = view(v, false);
            view["targeted"] = Value::Bool(v.targeted);
            view
        })
        .collect();
    // Production's agreement with itself, the staging versions' noise floor.
    let replay = shadow.replay().map(|v| view(v, true));
    Some(json!({
        "model": model,
        "active": shadow.is_active(),
        "policy": shadow.policy(),
        "versions": versions,
        "production_replay": replay,
    }))
}

/// Splits a `POST .../shadow` body into the settings patch and the `reason`.
pub fn patch_and_reason(body: Value) -> Result<(Value, String), String> {
    let Value::Object(mut changes) = body else {
        return Err("the body must be a JSON object of shadow settings".into());
    };
    let reason = match changes.remove("reason") {
        Some(Value::String(reason)) => reason,
        None => String::new(),
        Some(_) => return Err("reason must be a string".into()),
    };
    Ok((Value::Object(changes), reason))
}

/// Resets the reports of `version` (or of every staging version); returns the
/// versions reset, or `None` for an unknown model or version.
pub fn reset(table: &RoutingTable, model: &str, version: Option<&str>) -> Option<Vec<String>> {
    let shadow = table.model(model)?.shadow();
    let chosen: Vec<_> = shadow
        .versions()
        .iter()
        .filter(|v| version.is_none_or(|wanted| v.version == wanted))
        .collect();
    if version.is_some() && chosen.is_empty() {
        return None;
    }
    chosen.iter().for_each(|v| v.report.reset());
    if version.is_none()
        && let Some(replay) = shadow.replay()
    {
        replay.report.reset();
    }
    Some(chosen.iter().map(|v| v.version.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_taken_out_of_the_patch() {
        let (patch, reason) =
            patch_and_reason(json!({ "percent": 10, "reason": "less load" })).unwrap();
        assert_eq!(
            (patch, reason.as_str()),
            (json!({ "percent": 10 }), "less load")
        );
        assert!(patch_and_reason(json!({ "reason": 1 })).is_err());
        assert!(patch_and_reason(json!([1])).is_err());
    }
}
