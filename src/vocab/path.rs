//! [`JsonPath`]: the small path language of `ignore` lists and `label_path`.
//!
//! `outputs[0].data`, `predictions[*]`, `[*].label`, `meta.*`: keys separated by
//! dots, array steps in brackets (`[N]` or `[*]` for any index), and `*` for any
//! key. Keys with dots or brackets in them are not expressible; inference answers
//! rarely have them.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One step from a JSON value to a child.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    Key(String),
    Index(usize),
    AnyKey,
    AnyIndex,
}

/// A parsed path or pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct JsonPath(pub Vec<Step>);

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err("empty path".into());
        }
        let mut first = true;
        while !rest.is_empty() {
            if !first && !rest.starts_with('[') {
                rest = rest
                    .strip_prefix('.')
                    .ok_or_else(|| format!("expected '.' or '[' at {rest:?}"))?;
            }
            first = false;
            if let Some(after) = rest.strip_prefix('[') {
                let (inside, tail) = after.split_once(']').ok_or("unclosed '['")?;
                steps.push(match inside {
                    "*" => Step::AnyIndex,
                    n => Step::Index(n.parse().map_err(|_| format!("bad index [{n}]"))?),
                });
                rest = tail;
                continue;
            }
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let key = &rest[..end];
            if key.is_empty() {
                return Err(format!("empty key at {rest:?}"));
            }
            steps.push(if key == "*" {
                Step::AnyKey
            } else {
                Step::Key(key.to_string())
            });
            rest = &rest[end..];
        }
        Ok(JsonPath(steps))
    }

    /// Whether this pattern covers `path`: it matches `path` or one of its ancestors.
    pub fn covers(&self, path: &[Step]) -> bool {
        self.0.len() <= path.len()
            && self
                .0
                .iter()
                .zip(path)
                .all(|(pattern, step)| match (pattern, step) {
                    (Step::AnyKey, Step::Key(_)) | (Step::AnyIndex, Step::Index(_)) => true,
                    (a, b) => a == b,
                })
    }

    /// Every value at this pattern in `root`, in document order.
    pub fn select<'v>(&self, root: &'v Value) -> Vec<&'v Value> {
        let mut current = vec![root];
        for step in &self.0 {
            current = current
                .into_iter()
                .flat_map(|value| -> Box<dyn Iterator<Item = &'v Value> + 'v> {
                    match (step, value) {
                        (Step::Key(key), Value::Object(map)) => Box::new(map.get(key).into_iter()),
                        (Step::AnyKey, Value::Object(map)) => Box::new(map.values()),
                        (Step::Index(i), Value::Array(items)) => {
                            Box::new(items.get(*i).into_iter())
                        }
                        (Step::AnyIndex, Value::Array(items)) => Box::new(items.iter()),
                        _ => Box::new(std::iter::empty()),
                    }
                })
                .collect();
        }
        current
    }
}

/// A path as a policy holds it: the text it was written as (what the journal
/// and the API show) and the parsed path (what comparisons use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern {
    text: String,
    path: JsonPath,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let path = JsonPath::parse(text).map_err(|e| format!("bad path {text:?}: {e}"))?;
        Ok(PathPattern {
            text: text.to_string(),
            path,
        })
    }

    /// A pattern from text and the path it parses to, for constants.
    pub fn from_parts(text: &str, path: JsonPath) -> PathPattern {
        debug_assert_eq!(JsonPath::parse(text).as_ref(), Ok(&path));
        PathPattern {
            text: text.to_string(),
            path,
        }
    }

    pub fn path(&self) -> &JsonPath {
        &self.path
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for PathPattern {
    type Error = String;
    fn try_from(text: String) -> Result<PathPattern, String> {
        PathPattern::parse(&text)
    }
}

impl From<PathPattern> for String {
    fn from(pattern: PathPattern) -> String {
        pattern.text
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Renders concrete paths as `outputs[0].data[3]` (`$` for the root).
pub struct Display<'a>(pub &'a [Step]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("$");
        }
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => f.write_str(key)?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::AnyKey if i == 0 => f.write_str("*")?,
                Step::AnyKey => f.write_str(".*")?,
                Step::Index(n) => write!(f, "[{n}]")?,
                Step::AnyIndex => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

/// The path with every index replaced by `[*]`: disagreements at
/// `predictions[3]` and `predictions[7]` count as one path in the report.
pub fn normalized(path: &[Step]) -> String {
    let steps: Vec<Step> = path
        .iter()
        .map(|s| {
            if matches!(s, Step::Index(_)) {
                Step::AnyIndex
            } else {
                s.clone()
            }
        })
        .collect();
    Display(&steps).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    #[test]
    fn parses_keys_indices_and_wildcards() {
        assert_eq!(
            JsonPath::parse("outputs[0].data").unwrap().0,
            [key("outputs"), Step::Index(0), key("data")]
        );
        assert_eq!(
            JsonPath::parse("[*].label").unwrap().0,
            [Step::AnyIndex, key("label")]
        );
        assert_eq!(
            JsonPath::parse("meta.*").unwrap().0,
            [key("meta"), Step::AnyKey]
        );
        for bad in ["", "a..b", "a[", "a[x]", ".a", "a."] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_cover_their_descendants() {
        let pattern = JsonPath::parse("outputs[*].parameters").unwrap();
        assert!(pattern.covers(&[key("outputs"), Step::Index(2), key("parameters"), key("ts")]));
        assert!(!pattern.covers(&[key("outputs"), Step::Index(2), key("data")]));
        assert!(!pattern.covers(&[key("outputs")]));
    }

    #[test]
    fn select_walks_wildcards_in_order() {
        let doc = json!({ "predictions": [{ "label": "a" }, { "label": "b" }] });
        let labels = JsonPath::parse("predictions[*].label")
            .unwrap()
            .select(&doc);
        assert_eq!(labels, [&json!("a"), &json!("b")]);
        assert!(JsonPath::parse("nope[*]").unwrap().select(&doc).is_empty());
    }

    #[test]
    fn display_and_normalization() {
        let path = [key("outputs"), Step::Index(0), key("data"), Step::Index(3)];
        assert_eq!(Display(&path).to_string(), "outputs[0].data[3]");
        assert_eq!(normalized(&path), "outputs[*].data[*]");
        assert_eq!(Display(&[]).to_string(), "$");
    }
}
