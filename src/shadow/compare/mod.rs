//! Comparators: whether a staging version's answer agrees with production's, and
//! where it does not. Pure functions of the two answers and the model's
//! [`ComparePolicy`]; they run on the comparison thread, off the request path.
//!
//! Status codes are always compared. `json`, `oip` and `label` parse the bodies;
//! when either is not JSON they fall back to `bytes`. An answer in the Open
//! Inference Protocol's binary data extension is read as the JSON answer it
//! stands for ([`binary`]), its tensors decoded; one that is malformed is a
//! difference.

pub mod binary;
mod grpc_answer;
mod json;
mod label;
pub mod llm;
mod oip;

use serde_json::Value;

use crate::vocab::path::{JsonPath, Step};
use crate::vocab::policy::{CompareMode, ComparePolicy, LlmCompare};
pub use llm::LlmFacts;

/// Differences kept per comparison; past this only the count grows.
pub const MAX_DIFFERENCES: usize = 32;

/// One side of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// The `Inference-Header-Content-Length` header's value, if the answer had
    /// one: the body is a JSON header of that length and binary tensor data.
    pub binary_header: Option<&'a [u8]>,
    /// The body is a gRPC `ModelInferResponse` message, read as the JSON
    /// answer it stands for.
    pub grpc: bool,
}

impl<'a> Answer<'a> {
    /// An answer without the binary data extension.
    pub fn plain(status: u16, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status,
            body,
            binary_header: None,
            grpc: false,
        }
    }

    /// A gRPC `ModelInferResponse` answer; `status` is its gRPC outcome as
    /// an HTTP status.
    pub fn grpc(status: u16, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status,
            body,
            binary_header: None,
            grpc: true,
        }
    }
}

/// Where and how two answers differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub path: Vec<Step>,
    pub detail: String,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    pub matched: bool,
    /// At most [`MAX_DIFFERENCES`] of them.
    pub differences: Vec<Difference>,
    /// All differences found, kept or not.
    pub difference_count: usize,
    /// `label` mode: (labels that agree, labels compared).
    pub labels: Option<(u64, u64)>,
    /// `llm` mode: the similarity and token counts measured.
    pub llm: Option<LlmFacts>,
}

/// A compiled [`ComparePolicy`].
#[derive(Debug, Clone)]
pub struct Comparator {
    mode: CompareMode,
    abs_tol: f64,
    rel_tol: f64,
    ignore: Vec<JsonPath>,
    label_path: JsonPath,
    llm: LlmCompare,
}

/// Collects differences up to the cap.
#[derive(Default)]
struct Findings {
    kept: Vec<Difference>,
    count: usize,
}

impl Findings {
    fn add(&mut self, path: &[Step], detail: String) {
        self.count += 1;
        if self.kept.len() < MAX_DIFFERENCES {
            self.kept.push(Difference {
                path: path.to_vec(),
                detail,
            });
        }
    }
}

impl Comparator {
    /// The comparator of a (validated) policy: its paths are parsed already.
    pub fn new(policy: &ComparePolicy) -> Comparator {
        Comparator {
            mode: policy.mode,
            abs_tol: policy.abs_tol,
            rel_tol: policy.rel_tol,
            ignore: policy.ignore.iter().map(|p| p.path().clone()).collect(),
            label_path: policy.label_path.path().clone(),
            llm: policy.llm,
        }
    }

    pub fn compare(&self, primary: Answer<'_>, shadow: Answer<'_>) -> Verdict {
        // Identical answers agree in every mode; only `label` and `llm` need to
        // parse them anyway, to count the labels and measure the answers.
        if primary.status == shadow.status
            && primary.body == shadow.body
            && primary.binary_header == shadow.binary_header
            && !matches!(self.mode, CompareMode::Label | CompareMode::Llm)
        {
            return Verdict {
                matched: true,
                ..Verdict::default()
            };
        }
        let mut findings = Findings::default();
        if primary.status != shadow.status {
            let detail = format!("status {} vs {}", primary.status, shadow.status);
            findings.add(&[Step::Key("$status".into())], detail);
        }
        let mut llm = None;
        let labels = match self.mode {
            CompareMode::Status => None,
            // Error answers are compared by their status alone.
            CompareMode::Llm if primary.status >= 400 || shadow.status >= 400 => None,
            CompareMode::Llm => {
                llm = Some(llm::compare(self, primary.body, shadow.body, &mut findings));
                None
            }
            CompareMode::Bytes => {
                compare_bytes(primary.body, shadow.body, &mut findings);
                None
            }
            mode => match (document(primary), document(shadow)) {
                (Ok(Some(a)), Ok(Some(b))) => self.compare_json(mode, &a, &b, &mut findings),
                (Err(error), _) => {
                    findings.add(&[Step::Key("$body".into())], format!("production: {error}"));
                    None
                }
                (_, Err(error)) => {
                    findings.add(&[Step::Key("$body".into())], format!("shadow: {error}"));
                    None
                }
                _ => {
                    compare_bytes(primary.body, shadow.body, &mut findings);
                    None
                }
            },
        };
        let labels_agree = labels.is_none_or(|(agreed, total)| agreed == total);
        Verdict {
            matched: findings.count == 0 && labels_agree,
            differences: findings.kept,
            difference_count: findings.count,
            labels,
            llm,
        }
    }

    fn compare_json(
        &self,
        mode: CompareMode,
        a: &Value,
        b: &Value,
        findings: &mut Findings,
    ) -> Option<(u64, u64)> {
        match mode {
            // Answers without outputs on either side (errors, metadata) are not OIP
            // inference answers: compare them as plain JSON.
            CompareMode::Oip if oip::has_outputs(a) || oip::has_outputs(b) => {
                oip::diff(self, a, b, findings);
                None
            }
            // Likewise without labels on either side; `(0, 0)` keeps such pairs out
            // of the label agreement.
            CompareMode::Label if label::has_labels(&self.label_path, a, b) => {
                Some(label::compare(&self.label_path, a, b, findings))
            }
            CompareMode::Label => {
                json::diff(self, a, b, &mut Vec::new(), findings);
                Some((0, 0))
            }
            _ => {
                json::diff(self, a, b, &mut Vec::new(), findings);
                None
            }
        }
    }

    fn ignored(&self, path: &[Step]) -> bool {
        self.ignore.iter().any(|pattern| pattern.covers(path))
    }

    /// Numbers agree within the absolute or the relative tolerance. A few ulps of
    /// slack keep `1.0` vs `1.01` within `abs_tol = 0.01`, as a person reads it.
    fn close(&self, a: f64, b: f64) -> bool {
        let (diff, scale) = ((a - b).abs(), a.abs().max(b.abs()));
        let slack = 4.0 * f64::EPSILON * scale;
        a == b || diff <= self.abs_tol + slack || diff <= self.rel_tol * scale + slack
    }
}

/// The most a compressed gRPC answer may decompress to for a comparison.
const MAX_GRPC_ANSWER: usize = 64 << 20;

/// The answer as JSON: `None` if it is not JSON, an error if it says it uses the
/// binary extension or gRPC and does not follow it.
fn document(answer: Answer<'_>) -> Result<Option<Value>, String> {
    if answer.grpc {
        if answer.body.is_empty() {
            // A gRPC error answer has no message; its status says it all.
            return Ok(Some(Value::Null));
        }
        return grpc_answer::document(answer.body, MAX_GRPC_ANSWER)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    match answer.binary_header {
        Some(length) => binary::inline(answer.body, length)
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(serde_json::from_slice(answer.body).ok()),
    }
}

fn compare_bytes(a: &[u8], b: &[u8], findings: &mut Findings) {
    if a != b {
        let detail = format!("bodies differ ({} vs {} bytes)", a.len(), b.len());
        findings.add(&[Step::Key("$body".into())], detail);
    }
}

/// A short rendering of a JSON value for difference details.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 64 {
        return text;
    }
    let cut = (0..=61)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &text[..cut])
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
