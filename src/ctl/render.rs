//! Human-readable tables of admin API answers.

use serde_json::Value;

/// Left-aligned columns, two spaces apart.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

pub(super) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        // 25.0 reads as 25.
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub(super) fn list(values: &Value) -> String {
    let items: Vec<String> = values.as_array().into_iter().flatten().map(text).collect();
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

pub fn status(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|model| {
            let in_stage = |stage: &str| {
                let ids: Vec<String> = model["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["stage"] == stage)
                    .map(|v| text(&v["version"]))
                    .collect();
                if ids.is_empty() {
                    "-".to_string()
                } else {
                    ids.join(",")
                }
            };
            vec![
                text(&model["name"]),
                in_stage("production"),
                in_stage("staging"),
                in_stage("archived"),
            ]
        })
        .collect();
    format!(
        "{}\n\nrouting revision {}, registry revision {}",
        table(&["MODEL", "PRODUCTION", "STAGING", "ARCHIVED"], &rows),
        text(&answer["routing_revision"]),
        text(&answer["registry_revision"]),
    )
}

pub fn model(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                text(&v["version"]),
                text(&v["stage"]),
                text(&v["stage_owner"]),
                list(&v["endpoints"]),
                list(&v["grpc_endpoints"]),
            ]
        })
        .collect();
    format!(
        "model {}  production {}  rollback target {}\nhealth path {}  routing revision {}  registry revision {}\n\n{}",
        text(&answer["name"]),
        text(&answer["production"]),
        text(&answer["rollback_target"]),
        text(&answer["health_path"]),
        text(&answer["routing_revision"]),
        text(&answer["registry_revision"]),
        table(
            &[
                "VERSION",
                "STAGE",
                "STAGE FROM",
                "ENDPOINTS",
                "GRPC ENDPOINTS"
            ],
            &rows
        ),
    )
}

fn describe_record(record: &Value) -> String {
    let mut parts = Vec::new();
    if !record["to"].is_null() {
        let from = if record["from"].is_null() {
            "(new)".to_string()
        } else {
            text(&record["from"])
        };
        parts.push(format!(
            "{} {from} -> {}",
            text(&record["version"]),
            text(&record["to"])
        ));
    }
    for also in record["also"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{} {} -> {}",
            text(&also["version"]),
            text(&also["from"]),
            text(&also["to"])
        ));
    }
    let canary = &record["canary"];
    if canary.is_object() {
        parts.push(format!(
            "canary {} at {}%",
            text(&canary["version"]),
            text(&canary["weight"])
        ));
    }
    let rollout = &record["rollout"];
    if rollout.is_object() {
        let step = rollout["step"].as_u64().unwrap_or(0) as usize;
        let weight = rollout["plan"]["steps"]
            .get(step)
            .map_or_else(|| "-".to_string(), text);
        parts.push(format!(
            "rollout of {} {} at step {} ({weight}%)",
            text(&rollout["candidate"]),
            text(&rollout["phase"]),
            step + 1
        ));
    }
    let observed = &record["observed"];
    if observed.is_object() {
        parts.push(format!(
            "{} {} {} -> {}",
            text(&observed["source"]),
            text(&observed["slot"]),
            text(&observed["from"]),
            text(&observed["to"])
        ));
    }
    if record["shadow"].is_object() {
        parts.push(format!(
            "shadow {}% compare {}",
            text(&record["shadow"]["percent"]),
            text(&record["shadow"]["compare"]["mode"])
        ));
    }
    parts.join(", ")
}

pub fn change(answer: &Value) -> String {
    let record = &answer["record"];
    let mut out = format!(
        "revision {}: {} {} {} by {} (routing revision {})",
        text(&record["revision"]),
        text(&record["action"]),
        text(&record["model"]),
        describe_record(record),
        text(&record["actor"]),
        text(&answer["routing_revision"]),
    );
    if let Some(reason) = record["reason"].as_str().filter(|r| !r.is_empty()) {
        out.push_str(&format!("\nreason: {reason}"));
    }
    out
}

pub fn history(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let reason = r.get("reason").map_or_else(String::new, text);
            vec![
                text(&r["revision"]),
                text(&r["time"]),
                text(&r["actor"]),
                text(&r["action"]),
                describe_record(r),
                reason,
            ]
        })
        .collect();
    let mut out = table(
        &["REV", "TIME", "ACTOR", "ACTION", "CHANGE", "REASON"],
        &rows,
    );
    if let Some(next) = answer["next_before"].as_u64() {
        out.push_str(&format!("\n\nolder entries: --before {next}"));
    }
    out
}

pub fn reloaded(answer: &Value) -> String {
    let mut out = format!(
        "config reloaded; routing revision {}",
        text(&answer["routing_revision"])
    );
    for warning in answer["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nwarning: {}", text(warning)));
    }
    out
}

pub fn reset(answer: &Value) -> String {
    format!(
        "shadow reports of {} reset: {}",
        text(&answer["model"]),
        list(&answer["reset"])
    )
}

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_string(), |v| format!("{:.2}%", v * 100.0))
}

fn latency(report: &Value, side: &str) -> String {
    let l = &report["latency_ms"][side];
    if l.is_null() {
        return "-".into();
    }
    format!(
        "{}/{}/{}",
        text(&l["p50"]),
        text(&l["p95"]),
        text(&l["p99"])
    )
}

fn nonzero(counts: &Value) -> String {
    let parts: Vec<String> = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

pub fn shadow(answer: &Value) -> String {
    let policy = &answer["policy"];
    let mut out = format!(
        "model {}  mirroring {} ({}% of {}, to {})  compare {}\n\n",
        text(&answer["model"]),
        if answer["active"] == true {
            "on"
        } else {
            "off"
        },
        text(&policy["percent"]),
        list(&policy["methods"]),
        if policy["versions"].as_array().is_none_or(Vec::is_empty) {
            "every staging version".to_string()
        } else {
            list(&policy["versions"])
        },
        text(&policy["compare"]["mode"]),
    );
    let versions = answer["versions"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|r| {
            vec![
                text(&r["version"]),
                text(&r["mirrored"]),
                text(&r["compared"]),
                text(&r["matched"]),
                percent(&r["agreement"]["agreement"]),
                format!(
                    "{} ({})",
                    percent(&r["agreement"]["window_agreement"]),
                    text(&r["agreement"]["window_compared"])
                ),
                nonzero(&r["errors"]),
                nonzero(&r["dropped"]),
                latency(r, "primary"),
                latency(r, "shadow"),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "VERSION",
            "MIRRORED",
            "COMPARED",
            "MATCHED",
            "AGREEMENT",
            "LAST 5 MIN",
            "ERRORS",
            "DROPPED",
            "PROD P50/95/99 MS",
            "SHADOW P50/95/99 MS",
        ],
        &rows,
    ));
    for report in &versions {
        for path in report["top_mismatch_paths"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.push_str(&format!(
                "\n{} disagrees at {} ({} times)",
                text(&report["version"]),
                text(&path["path"]),
                text(&path["count"])
            ));
        }
        if let Some(sample) = report["samples"].as_array().and_then(|s| s.last()) {
            out.push_str(&format!(
                "\nlatest mismatch of {} (request {} {}):",
                text(&report["version"]),
                text(&sample["request_id"]),
                text(&sample["path"]),
            ));
            for difference in sample["differences"].as_array().into_iter().flatten() {
                out.push_str(&format!("\n  {}", text(difference)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let out = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(out, "A    LONGER\nxyz  1");
    }

    #[test]
    fn a_promotion_shows_both_moves() {
        let answer = json!({
            "routing_revision": 4,
            "record": { "revision": 3, "action": "transition", "model": "fraud", "version": "3",
                        "from": "staging", "to": "production", "actor": "alice",
                        "also": [{ "version": "2", "from": "production", "to": "archived" }] }
        });
        assert_eq!(
            change(&answer),
            "revision 3: transition fraud 3 staging -> production, 2 production -> archived by alice (routing revision 4)"
        );
    }
}
