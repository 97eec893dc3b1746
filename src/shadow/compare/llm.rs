//! `llm` mode: generated answers of OpenAI-style calls, streamed or not, read
//! into what they generated ([`crate::llm::answer`]) and compared by
//! [`LlmCompare`]'s rules:
//!
//! - always: the finish reason, the tool calls' names, and the output length
//!   ratio (words of the longer text over the shorter) within
//!   `max_length_ratio` (unless the texts were compared as JSON);
//! - the text: `exact` (equal once whitespace is normalised) or `similarity`
//!   (ROUGE-L F1 over whitespace-separated words, case kept, at least
//!   `min_similarity`); with `json_output`, a production text (or tool-call
//!   arguments) that is JSON is compared as JSON by the `json` rules;
//! - embeddings: each pair of vectors' cosine similarity at least `min_cosine`.
//!
//! ROUGE-L F1 is `2PR / (P + R)` with `P = LCS / shadow words` and
//! `R = LCS / production words`, LCS the longest common subsequence of words:
//! 1 for identical texts, 0 for texts without a word in order in common;
//! deterministic, no model, no network. Texts are compared on their first
//! [`MAX_WORDS`] words.

use serde_json::Value;

use super::{Comparator, Findings, json};
use crate::llm::answer::{self, Generated};
use crate::vocab::path::Step;
use crate::vocab::policy::{LlmCompare, TextMatch};

/// Words of each text the similarity looks at.
pub const MAX_WORDS: usize = 4096;

/// What an `llm` comparison measured, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LlmFacts {
    /// ROUGE-L F1 of the texts, or the least cosine of embeddings.
    pub similarity: Option<f64>,
    /// Output tokens each side's server reported (usage).
    pub primary_tokens: Option<u64>,
    pub shadow_tokens: Option<u64>,
}

pub(super) fn compare(
    comparator: &Comparator,
    primary: &[u8],
    shadow: &[u8],
    findings: &mut Findings,
) -> LlmFacts {
    let (p, s) = match (answer::read(primary), answer::read(shadow)) {
        (Some(p), Some(s)) => (p, s),
        (None, _) => {
            findings.add(
                &key("$body"),
                "production: not an OpenAI-style answer".into(),
            );
            return LlmFacts::default();
        }
        (_, None) => {
            findings.add(&key("$body"), "shadow: not an OpenAI-style answer".into());
            return LlmFacts::default();
        }
    };
    let rules = &comparator.llm;
    let similarity = match (&p.embeddings, &s.embeddings) {
        (Some(a), Some(b)) => embeddings(a, b, rules, findings),
        (Some(_), None) | (None, Some(_)) => {
            findings.add(
                &key("$embeddings"),
                "only one side is an embeddings answer".into(),
            );
            None
        }
        (None, None) => Some(generated(comparator, &p, &s, findings)),
    };
    LlmFacts {
        similarity,
        primary_tokens: p.usage.map(|u| u.completion_tokens),
        shadow_tokens: s.usage.map(|u| u.completion_tokens),
    }
}

/// Compares generated text and tool calls; answers the texts' similarity.
fn generated(
    comparator: &Comparator,
    p: &Generated,
    s: &Generated,
    findings: &mut Findings,
) -> f64 {
    let rules = &comparator.llm;
    if p.finish_reason != s.finish_reason {
        let detail = format!(
            "finish reason {:?} vs {:?}",
            p.finish_reason, s.finish_reason
        );
        findings.add(&key("$finish_reason"), detail);
    }
    let names = |g: &Generated| {
        g.tool_calls
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    if names(p) != names(s) {
        findings.add(
            &key("$tool_calls"),
            format!("tool calls {:?} vs {:?}", names(p), names(s)),
        );
    } else {
        for (index, (a, b)) in p.tool_calls.iter().zip(&s.tool_calls).enumerate() {
            let mut path = vec![
                Step::Key("$tool_calls".into()),
                Step::Index(index),
                Step::Key("arguments".into()),
            ];
            texts(comparator, &a.arguments, &b.arguments, &mut path, findings);
        }
    }
    let similarity = rouge_l(&p.text, &s.text);
    let mut path = key("$text");
    let as_json = rules.json_output && json_of(&p.text).is_some();
    if as_json {
        texts(comparator, &p.text, &s.text, &mut path, findings);
    } else {
        match rules.text {
            TextMatch::Exact if normalized(&p.text) != normalized(&s.text) => {
                findings.add(&path, format!("texts differ (similarity {similarity:.3})"));
            }
            TextMatch::Similarity if similarity < rules.min_similarity => {
                let detail = format!("similarity {similarity:.3} < {}", rules.min_similarity);
                findings.add(&path, detail);
            }
            _ => {}
        }
    }
    // JSON's length in words says nothing; its structure was compared.
    let ratio = length_ratio(&p.text, &s.text);
    if !as_json && ratio > rules.max_length_ratio {
        let (a, b) = (words(&p.text).count(), words(&s.text).count());
        findings.add(
            &key("$length"),
            format!(
                "{a} vs {b} words (ratio {ratio:.2} > {})",
                rules.max_length_ratio
            ),
        );
    }
    similarity
}

/// Two texts that should agree: as JSON when `json_output` and the first is
/// JSON, else exactly once whitespace is normalised.
fn texts(comparator: &Comparator, a: &str, b: &str, path: &mut Vec<Step>, findings: &mut Findings) {
    if comparator.llm.json_output
        && let Some(left) = json_of(a)
    {
        match json_of(b) {
            Some(right) => json::diff(comparator, &left, &right, path, findings),
            None => findings.add(path, "production's is JSON, the shadow's is not".into()),
        }
        return;
    }
    if normalized(a) != normalized(b) {
        findings.add(path, format!("{:?} vs {:?}", short(a), short(b)));
    }
}

/// Each pair of vectors' cosine; answers the least.
fn embeddings(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    rules: &LlmCompare,
    findings: &mut Findings,
) -> Option<f64> {
    if a.len() != b.len() {
        findings.add(
            &key("$embeddings"),
            format!("{} vs {} vectors", a.len(), b.len()),
        );
        return None;
    }
    let mut least: Option<f64> = None;
    for (index, (x, y)) in a.iter().zip(b).enumerate() {
        let cosine = cosine(x, y);
        least = Some(least.map_or(cosine, |l| l.min(cosine)));
        if cosine.is_nan() || cosine < rules.min_cosine {
            let path = [
                Step::Key("data".into()),
                Step::Index(index),
                Step::Key("embedding".into()),
            ];
            findings.add(&path, format!("cosine {cosine:.4} < {}", rules.min_cosine));
        }
    }
    least
}

/// The cosine similarity of two vectors (0 when either is zero or they differ
/// in length).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = norm(a) * norm(b);
    if scale == 0.0 { 0.0 } else { dot / scale }
}

/// ROUGE-L F1 of two texts over their words (see the module doc).
pub fn rouge_l(production: &str, shadow: &str) -> f64 {
    let a: Vec<&str> = words(production).take(MAX_WORDS).collect();
    let b: Vec<&str> = words(shadow).take(MAX_WORDS).collect();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        _ => {}
    }
    let lcs = lcs(&a, &b) as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / b.len() as f64, lcs / a.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// The length of the longest common subsequence, in two rows.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut previous = vec![0u32; b.len() + 1];
    let mut current = vec![0u32; b.len() + 1];
    for word in a {
        for (j, other) in b.iter().enumerate() {
            current[j + 1] = if word == other {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()] as usize
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
}

fn normalized(text: &str) -> String {
    words(text).collect::<Vec<_>>().join(" ")
}

/// The longer text's words over the shorter's (1 for two empty texts).
fn length_ratio(a: &str, b: &str) -> f64 {
    let (a, b) = (words(a).count() as f64, words(b).count() as f64);
    match (a == 0.0, b == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => f64::INFINITY,
        _ => a.max(b) / a.min(b),
    }
}

/// A text that is a JSON object or array (plain strings and numbers are text).
fn json_of(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    serde_json::from_str(trimmed).ok()
}

fn key(name: &str) -> Vec<Step> {
    vec![Step::Key(name.into())]
}

fn short(text: &str) -> String {
    let mut cut: String = text.chars().take(60).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

#[cfg(test)]
#[path = "llm_tests.rs"]
mod tests;
