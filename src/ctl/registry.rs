//! `stagegate ctl registry [sync]`: the external registry's sync state, and the
//! registry part of `ctl model`.

use serde_json::Value;

use super::render::{list, table, text};

/// `ctl registry` and `ctl registry sync`.
pub fn status(answer: &Value) -> String {
    let age = match &answer["last_success_age_s"] {
        Value::Null => "never".to_string(),
        age => format!("{} s ago", text(age)),
    };
    let writes = &answer["write_backs"];
    let mut out = format!(
        "registry {} at {}  state {}  last sync {age}  syncs {}  failures in a row {}\n\
         write-back {}  written {}  failed {}  webhook {}",
        text(&answer["kind"]),
        text(&answer["url"]),
        text(&answer["state"]),
        text(&answer["syncs"]),
        text(&answer["consecutive_failures"]),
        on_off(&answer["write_back"]),
        text(&writes["succeeded"]),
        text(&writes["failed"]),
        on_off(&answer["webhook"]),
    );
    if !answer["last_error"].is_null() {
        out.push_str(&format!("\nlast error: {}", text(&answer["last_error"])));
    }
    if !writes["last_error"].is_null() {
        out.push_str(&format!(
            "\nlast failed write-back: {}",
            text(&writes["last_error"])
        ));
    }
    for model in answer["models"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n\nmodel {}", text(&model["model"])));
        out.push_str(&followed(model));
    }
    out
}

/// A followed model's registry state: what MLflow names, what serves, and which
/// versions cannot be served and why. Empty for a model that follows no registry.
pub fn followed(model: &Value) -> String {
    if model.is_null() {
        return String::new();
    }
    let mut out = format!(
        "\nfollows MLflow model {:?} ({} {:?})  MLflow production {}  serving {}",
        text(&model["registered_model"]),
        text(&model["follows"]),
        text(&model["production_slot"]),
        text(&model["registry_production"]),
        text(&model["serving"]),
    );
    if !model["waiting_for"].is_null() {
        out.push_str(&format!("\nwaiting: {}", text(&model["waiting_for"])));
    }
    if !model["error"].is_null() {
        out.push_str(&format!("\nerror: {}", text(&model["error"])));
    }
    let rows: Vec<Vec<String>> = model["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let servable = match v["servable"].as_bool() {
                Some(true) => "yes".to_string(),
                _ => format!("no: {}", text(&v["reason"])),
            };
            vec![
                text(&v["version"]),
                list(&v["named_by"]),
                text(&v["mlflow_status"]),
                text(&v["stage"]),
                servable,
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(
            &["VERSION", "NAMED BY", "MLFLOW STATUS", "STAGE", "SERVABLE"],
            &rows,
        ));
    }
    out
}

fn on_off(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "on"
    } else {
        "off"
    }
}
