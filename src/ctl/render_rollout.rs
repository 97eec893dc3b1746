//! `stagegate ctl rollout status`: the rollout, its plan, and each gate's
//! verdict with its interval, as text.

use serde_json::Value;

use super::render::{list, text};

pub fn rollout(answer: &Value) -> String {
    let Some(rollout) = answer["rollout"].as_object() else {
        return format!("model {}: no rollout on record", text(&answer["model"]));
    };
    let plan = &rollout["plan"];
    let mut out = format!(
        "model {}  candidate {}  phase {}  step {} of {}  weight {}%\nplan: steps {}  every {} s  min {} requests  on failure {}",
        text(&answer["model"]),
        text(&rollout["candidate"]),
        text(&answer["phase"]),
        text(&answer["step"]),
        text(&answer["steps"]),
        text(&answer["weight"]),
        list(&plan["steps"]),
        text(&plan["step_interval_s"]),
        text(&plan["min_requests"]),
        text(&plan["on_failure"]),
    );
    if let Some(reason) = rollout
        .get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        out.push_str(&format!("\nreason: {reason}"));
    }
    let readings = &answer["readings"];
    if readings.is_object() {
        out.push_str(&format!(
            "\nthis window: {} of {} s (held after {} s), candidate {} requests ({} errors), stable {} ({} errors, {}), confidence {}",
            seconds(&readings["elapsed_s"]),
            text(&readings["step_interval_s"]),
            text(&readings["max_step_duration_s"]),
            text(&readings["candidate_requests"]),
            text(&readings["candidate_errors"]),
            text(&readings["stable_requests"]),
            text(&readings["stable_errors"]),
            text(&readings["stable_window"]).replace('_', " "),
            text(&readings["confidence"]),
        ));
        for gate in readings["gates"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n  {}", gate_line(gate)));
        }
        if let Some(waiting) = readings["waiting_for"].as_str().filter(|w| !w.is_empty()) {
            out.push_str(&format!("\nwaiting for: {waiting}"));
        }
    }
    out
}

/// One line per gate reading (as JSON): `p99_ratio  wait 1.0213 in [0.8120, ?]
/// <= 1.5 at 0.9983 (812 / 2410): detail`.
pub fn gate_line(gate: &Value) -> String {
    let figure = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "?".to_string(), |v| format!("{v:.4}"))
    };
    let samples = match gate["stable_n"].as_u64() {
        Some(stable) => format!("{} / {stable}", text(&gate["candidate_n"])),
        None => text(&gate["candidate_n"]),
    };
    let limit = if gate["gate"] == "shadow_agreement" {
        ">="
    } else {
        "<="
    };
    format!(
        "{:<17} {:<4} {} in [{}, {}] {limit} {} at {} ({samples}): {}",
        text(&gate["gate"]),
        text(&gate["verdict"]),
        figure(&gate["reading"]),
        figure(&gate["lower"]),
        figure(&gate["upper"]),
        text(&gate["threshold"]),
        text(&gate["confidence"]),
        text(&gate["detail"]),
    )
}

fn seconds(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| text(value), |s| format!("{s:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_gate_shows_its_verdict_interval_confidence_and_samples() {
        let answer = json!({
            "model": "fraud", "phase": "progressing", "step": 1, "steps": 3, "weight": 25.0,
            "rollout": { "candidate": "3", "reason": "",
                         "plan": { "steps": [25.0, 50.0, 100.0], "step_interval_s": 60.0,
                                   "min_requests": 200, "on_failure": "rollback" } },
            "readings": {
                "elapsed_s": 12.345, "step_interval_s": 60.0, "max_step_duration_s": 600.0,
                "candidate_requests": 812, "candidate_errors": 1, "stable_requests": 2410,
                "stable_errors": 2, "stable_window": "this_step", "confidence": 0.99,
                "waiting_for": "step interval: 12.3 of 60 s",
                "gates": [{ "gate": "p99_ratio", "verdict": "wait", "reading": 1.02,
                            "lower": 0.81, "upper": null, "threshold": 1.5,
                            "confidence": 0.9983, "candidate_n": 812, "stable_n": 2410,
                            "detail": "too few samples to bound the p99 from above yet" }]
            }
        });
        let text = rollout(&answer);
        assert!(
            text.contains("this window: 12.3 of 60 s (held after 600 s), candidate 812 requests (1 errors), stable 2410 (2 errors, this step), confidence 0.99"),
            "{text}"
        );
        assert!(
            text.contains("  p99_ratio         wait 1.0200 in [0.8100, ?] <= 1.5 at 0.9983 (812 / 2410): too few samples"),
            "{text}"
        );
        assert!(
            text.ends_with("waiting for: step interval: 12.3 of 60 s"),
            "{text}"
        );
    }
}
