//! Per-model policies: how production traffic is mirrored to staging versions
//! ([`ShadowPolicy`]) and how their answers are compared ([`ComparePolicy`]).
//!
//! The config seeds them (`[models.shadow]`, `[models.compare]`); a change through
//! the admin API is journaled, and from then on the journal owns the model's policy.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vocab::{HeaderNameText, MethodName, PathPattern, Step};

use super::rollout::{DEFAULT_CONFIDENCE, DEFAULT_LATENCY_QUANTILE, Gates, OnFailure, Plan};

pub mod defaults {
    pub const STEPS: [f64; 4] = [5.0, 25.0, 50.0, 100.0];
    pub const STEP_INTERVAL_S: f64 = 60.0;
    pub const MIN_REQUESTS: u64 = 200;
    pub const MAX_ERROR_RATE: f64 = 0.01;
    pub const MAX_P99_RATIO: f64 = 1.5;
    /// The median at most 50% slower: a uniformly slower candidate shows in a
    /// few hundred requests, where the p99 needs thousands.
    pub const MAX_LATENCY_INCREASE: f64 = 0.5;
    pub const MIN_SHADOW_COMPARED: u64 = 200;
    pub const TIMEOUT_MS: u64 = 2_000;
    pub const MAX_IN_FLIGHT: usize = 256;
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    pub const METHODS: [crate::vocab::MethodName; 2] = [
        crate::vocab::MethodName::POST,
        crate::vocab::MethodName::GET,
    ];
    pub const ABS_TOL: f64 = 1e-6;
    pub const REL_TOL: f64 = 1e-3;
    pub const LABEL_PATH: &str = "predictions[*]";
}

/// Mirroring of production traffic to staging versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPolicy {
    /// Share of eligible production requests mirrored, 0 to 100; 0 is off.
    pub percent: f64,
    /// Staging versions mirrored to; empty means every staging version.
    #[serde(default)]
    pub versions: Vec<String>,
    pub timeout_ms: u64,
    /// Mirrored requests in flight for the model; past it mirrors are dropped.
    pub max_in_flight: usize,
    /// Larger request bodies are not mirrored; larger answers are not compared.
    pub max_body_bytes: usize,
    /// HTTP methods that are mirrored.
    pub methods: Vec<MethodName>,
    pub compare: ComparePolicy,
    /// Send each sampled request to production a second time and compare the
    /// two production answers too: the noise floor the staging versions'
    /// agreement is read against (a sampled LLM generation differs from itself).
    #[serde(default)]
    pub replay_primary: bool,
}

/// How a staging version's answer is compared with production's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparePolicy {
    pub mode: CompareMode,
    pub abs_tol: f64,
    pub rel_tol: f64,
    /// JSON paths left out of the comparison, e.g. `id`, `outputs[*].parameters`.
    #[serde(default)]
    pub ignore: Vec<PathPattern>,
    /// Where the labels are, for `label` mode: e.g. `predictions[*]`.
    pub label_path: PathPattern,
    /// How `llm` mode compares generated answers.
    #[serde(default)]
    pub llm: LlmCompare,
}

/// `llm` mode's rules for generated answers (OpenAI-style chat completions,
/// completions, responses, embeddings). The finish reason, the tool calls'
/// names and the output length ratio are always compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmCompare {
    pub text: TextMatch,
    /// `similarity`: the least ROUGE-L F1 (over words) that agrees.
    pub min_similarity: f64,
    /// Where production's text (or a tool call's arguments) is JSON, compare
    /// both as JSON by the `json` rules (tolerances, `ignore`).
    pub json_output: bool,
    /// The longer output over the shorter, in words, at most.
    pub max_length_ratio: f64,
    /// Embeddings: the least cosine similarity of each pair of vectors.
    pub min_cosine: f64,
}

/// How generated texts are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextMatch {
    /// Equal once runs of whitespace are one space and the ends trimmed.
    Exact,
    /// ROUGE-L F1 over words at least `min_similarity`.
    Similarity,
}

impl Default for LlmCompare {
    fn default() -> LlmCompare {
        LlmCompare {
            text: TextMatch::Similarity,
            min_similarity: 0.8,
            json_output: false,
            max_length_ratio: 2.0,
            min_cosine: 0.99,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareMode {
    /// Structural JSON diff with numeric tolerance.
    Json,
    /// Open Inference Protocol outputs by name: shape, datatype, data within tolerance.
    Oip,
    /// Classification agreement at `label_path`.
    Label,
    /// Status codes only.
    Status,
    /// Exact bodies.
    Bytes,
    /// Generated answers of OpenAI-style calls, by [`LlmCompare`]'s rules.
    Llm,
}

impl fmt::Display for CompareMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CompareMode::Json => "json",
            CompareMode::Oip => "oip",
            CompareMode::Label => "label",
            CompareMode::Status => "status",
            CompareMode::Bytes => "bytes",
            CompareMode::Llm => "llm",
        };
        f.write_str(name)
    }
}

impl Default for ShadowPolicy {
    /// Mirroring off, every other setting at its default.
    fn default() -> ShadowPolicy {
        ShadowPolicy {
            percent: 0.0,
            versions: Vec::new(),
            timeout_ms: defaults::TIMEOUT_MS,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            methods: defaults::METHODS.to_vec(),
            compare: ComparePolicy::default(),
            replay_primary: false,
        }
    }
}

impl Default for ComparePolicy {
    fn default() -> ComparePolicy {
        ComparePolicy {
            mode: CompareMode::Json,
            abs_tol: defaults::ABS_TOL,
            rel_tol: defaults::REL_TOL,
            ignore: Vec::new(),
            label_path: default_label_path(),
            llm: LlmCompare::default(),
        }
    }
}

impl ShadowPolicy {
    pub fn is_enabled(&self) -> bool {
        self.percent > 0.0
    }

    /// Every invalid setting as `(field, message)`; empty when valid.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(0.0..=100.0).contains(&self.percent) || self.percent.is_nan() {
            problems.push((
                "percent",
                format!("must be between 0 and 100, got {}", self.percent),
            ));
        }
        for (field, value) in [
            ("timeout_ms", self.timeout_ms),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
        ] {
            if value == 0 {
                problems.push((field, "must be greater than 0".to_string()));
            }
        }
        if self.methods.is_empty() {
            problems.push(("methods", "needs at least one HTTP method".to_string()));
        }
        for version in &self.versions {
            if !super::names::is_valid_identifier(version) {
                problems.push(("versions", format!("{version:?} is not a version id")));
            }
        }
        problems.extend(self.compare.problems());
        problems
    }
}

impl ShadowPolicy {
    /// These settings with `patch` (a JSON object of settings) laid over them;
    /// `compare` is merged field by field, methods are upper-cased. Unknown fields
    /// and wrong types are errors.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<ShadowPolicy, String> {
        use serde_json::Value;
        let Value::Object(changes) = patch else {
            return Err("the body must be a JSON object of shadow settings".into());
        };
        let mut merged = serde_json::to_value(self).map_err(|e| e.to_string())?;
        for (key, value) in changes {
            match (key.as_str(), value, merged.get_mut(key)) {
                ("compare", Value::Object(fields), Some(Value::Object(compare))) => {
                    compare.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                (_, value, _) => merged[key] = value.clone(),
            }
        }
        if let Some(Value::Array(methods)) = merged.get_mut("methods") {
            for method in methods.iter_mut() {
                if let Value::String(m) = method {
                    *m = m.to_ascii_uppercase();
                }
            }
        }
        serde_json::from_value(merged).map_err(|e| format!("invalid shadow settings: {e}"))
    }
}

impl ComparePolicy {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("compare.abs_tol", self.abs_tol),
            ("compare.rel_tol", self.rel_tol),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                problems.push((field, format!("must be a finite number >= 0, got {value}")));
            }
        }
        let llm = &self.llm;
        for (field, value, range) in [
            ("compare.min_similarity", llm.min_similarity, 0.0..=1.0),
            ("compare.min_cosine", llm.min_cosine, -1.0..=1.0),
            (
                "compare.max_length_ratio",
                llm.max_length_ratio,
                1.0..=f64::MAX,
            ),
        ] {
            if !range.contains(&value) {
                let (low, high) = (range.start(), range.end());
                let bound = if *high == f64::MAX {
                    format!(">= {low}")
                } else {
                    format!("between {low} and {high}")
                };
                problems.push((field, format!("must be {bound}, got {value}")));
            }
        }
        problems
    }
}

/// Where the sticky key of a canary split comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyPolicy {
    /// Request header holding the key, e.g. `x-user-id`.
    pub header: Option<HeaderNameText>,
    /// Cookie holding the key, when the header is absent.
    pub cookie: Option<String>,
    /// An OpenAI-style call's `user` (its end-user id) is the key when neither
    /// the header nor the cookie gives one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub openai_user: bool,
}

/// `predictions[*]`, built directly: a constant need not be parsed.
fn default_label_path() -> PathPattern {
    let steps = vec![Step::Key("predictions".to_string()), Step::AnyIndex];
    PathPattern::from_parts(defaults::LABEL_PATH, crate::vocab::JsonPath(steps))
}

/// The rollout plan used when a rollout does not give its own.
pub fn default_plan() -> Plan {
    Plan {
        steps: defaults::STEPS.to_vec(),
        step_interval_s: defaults::STEP_INTERVAL_S,
        min_requests: defaults::MIN_REQUESTS,
        max_step_duration_s: None,
        confidence: DEFAULT_CONFIDENCE,
        gates: Gates {
            max_error_rate: Some(defaults::MAX_ERROR_RATE),
            max_p99_ratio: Some(defaults::MAX_P99_RATIO),
            max_latency_increase: Some(defaults::MAX_LATENCY_INCREASE),
            latency_quantile: DEFAULT_LATENCY_QUANTILE,
            // Off unless asked for: only models serving streamed answers have
            // anything for them to judge.
            max_ttft_p99_ratio: None,
            max_tpot_p99_ratio: None,
            min_shadow_agreement: None,
            min_shadow_compared: defaults::MIN_SHADOW_COMPARED,
        },
        on_failure: OnFailure::Rollback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_patch_changes_only_what_it_names() {
        let current = ShadowPolicy {
            percent: 100.0,
            ..ShadowPolicy::default()
        };
        let patch =
            serde_json::json!({ "percent": 10, "compare": { "mode": "oip" }, "methods": ["post"] });
        let policy = current.patched(&patch).unwrap();
        assert_eq!(policy.percent, 10.0);
        assert_eq!(policy.compare.mode, CompareMode::Oip);
        assert_eq!(policy.compare.rel_tol, current.compare.rel_tol);
        assert_eq!(policy.methods, ["POST"]);
        assert_eq!(policy.timeout_ms, current.timeout_ms);
        for bad in [
            serde_json::json!({ "percnt": 1 }),
            serde_json::json!({ "percent": "all" }),
            serde_json::json!({ "compare": { "mod": "oip" } }),
            serde_json::json!([1]),
        ] {
            assert!(current.patched(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_and_off() {
        let policy = ShadowPolicy::default();
        assert!(policy.problems().is_empty());
        assert!(!policy.is_enabled());
    }

    #[test]
    fn every_bad_setting_is_reported() {
        let policy = ShadowPolicy {
            percent: 101.0,
            versions: vec!["a/b".into()],
            timeout_ms: 0,
            max_in_flight: 0,
            max_body_bytes: 0,
            methods: Vec::new(),
            compare: ComparePolicy {
                abs_tol: -1.0,
                rel_tol: f64::NAN,
                ..ComparePolicy::default()
            },
            replay_primary: false,
        };
        let fields: Vec<&str> = policy.problems().iter().map(|(field, _)| *field).collect();
        assert_eq!(
            fields,
            [
                "percent",
                "timeout_ms",
                "max_in_flight",
                "max_body_bytes",
                "methods",
                "versions",
                "compare.abs_tol",
                "compare.rel_tol",
            ]
        );
    }

    #[test]
    fn methods_and_paths_that_do_not_parse_are_refused_when_read() {
        let current = ShadowPolicy::default();
        for (bad, message) in [
            (
                serde_json::json!({ "methods": ["PO ST"] }),
                "is not an upper-case HTTP method",
            ),
            (
                serde_json::json!({ "compare": { "ignore": ["a["] } }),
                "bad path \"a[\"",
            ),
            (
                serde_json::json!({ "compare": { "label_path": "" } }),
                "bad path \"\"",
            ),
        ] {
            let error = current.patched(&bad).unwrap_err();
            assert!(error.contains(message), "{bad}: {error}");
        }
        let journaled = serde_json::to_value(&current).unwrap();
        assert_eq!(journaled["methods"], serde_json::json!(["POST", "GET"]));
        assert_eq!(journaled["compare"]["label_path"], "predictions[*]");
        let read: ShadowPolicy = serde_json::from_value(journaled).unwrap();
        assert_eq!(read, current);
    }
}
