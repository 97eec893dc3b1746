//! Which model (and, for a V2 version pin, which version) a request path names,
//! and what path the model server should see.
//!
//! | path | model | forwarded as |
//! | --- | --- | --- |
//! | `/v1/models/{m}:predict`, `:explain`, `/v1/models/{m}` | `m` | unchanged |
//! | `/v2/models/{m}[/infer, /ready, ...]` | `m` | unchanged |
//! | `/v2/models/{m}/versions/{v}[/...]` | `m`, pinned to `v` | unchanged |
//! | `/models/{m}/{rest}` | `m` | `/{rest}` |

/// What a request path says about routing. Borrows from the path: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPath<'a> {
    pub model: &'a str,
    /// The version named by `/v2/models/{m}/versions/{v}`.
    pub version: Option<&'a str>,
    /// How many leading bytes of the path the model server must not see.
    pub strip: usize,
    /// A readiness or metadata call (`/v2/models/{m}[/versions/{v}][/ready]`,
    /// KServe V1's `/v1/models/{m}`): about the model server, not a prediction.
    pub status_call: bool,
}

const KSERVE_V1: &str = "/v1/models/";
const OIP_V2: &str = "/v2/models/";
const GENERIC: &str = "/models/";
const VERSIONS: &str = "/versions/";

/// Parses the path part of a request URI (no query string).
pub fn parse(path: &str) -> Option<ModelPath<'_>> {
    if let Some(rest) = path.strip_prefix(KSERVE_V1) {
        let model = segment(rest, |b| b == b'/' || b == b':')?;
        return Some(ModelPath {
            model,
            version: None,
            strip: 0,
            status_call: matches!(&rest[model.len()..], "" | "/"),
        });
    }
    if let Some(rest) = path.strip_prefix(OIP_V2) {
        let model = segment(rest, |b| b == b'/')?;
        let after_model = &rest[model.len()..];
        let (version, call) = match after_model.strip_prefix(VERSIONS) {
            Some(tail) => {
                let version = segment(tail, |b| b == b'/')?;
                (Some(version), &tail[version.len()..])
            }
            None => (None, after_model),
        };
        return Some(ModelPath {
            model,
            version,
            strip: 0,
            status_call: matches!(call, "" | "/" | "/ready"),
        });
    }
    if let Some(rest) = path.strip_prefix(GENERIC) {
        let model = segment(rest, |b| b == b'/')?;
        return Some(ModelPath {
            model,
            version: None,
            strip: GENERIC.len() + model.len(),
            status_call: false,
        });
    }
    None
}

/// `path_and_query` with the version of its `/v2/models/{m}/versions/{v}` pin
/// replaced by `version`, the query kept; `None` when it pins no version. A
/// mirror of a request pinned to the production version must name the staging
/// version it goes to, or a server holding both would answer it as production.
pub fn repin(path_and_query: &str, version: &str) -> Option<String> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let parsed = parse(path)?;
    let pinned = parsed.version?;
    // Only `/v2/models/{m}/versions/{v}` pins a version.
    let start = OIP_V2.len() + parsed.model.len() + VERSIONS.len();
    let end = start + pinned.len();
    Some(format!(
        "{}{version}{}",
        &path_and_query[..start],
        &path_and_query[end..]
    ))
}

/// Whether `path` is in the plain form the gateway routes by: no `.` or `..`
/// segments, no backslashes, and no percent-encoded `.`, `/` or `\`. A model
/// server that normalizes paths could otherwise be sent, through a path the
/// gateway routed to one version, to a route of another.
pub fn is_plain(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return false,
            b'%' => {
                let code = bytes
                    .get(i + 1..i + 3)
                    .map(|c| (c[0], c[1].to_ascii_lowercase()));
                if matches!(code, Some((b'2', b'e' | b'f') | (b'5', b'c'))) {
                    return false;
                }
            }
            b'/' => {
                if is_dots(&bytes[segment_start..i]) {
                    return false;
                }
                segment_start = i + 1;
            }
            _ => {}
        }
    }
    !is_dots(&bytes[segment_start..])
}

/// `.` or `..`.
fn is_dots(segment: &[u8]) -> bool {
    matches!(segment, b"." | b"..")
}

/// The leading run of `text` up to the first byte matching `end`; `None` if empty.
fn segment(text: &str, end: impl Fn(u8) -> bool) -> Option<&str> {
    let len = text.bytes().position(end).unwrap_or(text.len());
    (len > 0).then(|| &text[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(path: &str) -> Option<(&str, Option<&str>, &str)> {
        parse(path).map(|p| (p.model, p.version, &path[p.strip..]))
    }

    #[test]
    fn kserve_v1_paths() {
        assert_eq!(
            model("/v1/models/fraud:predict"),
            Some(("fraud", None, "/v1/models/fraud:predict"))
        );
        assert_eq!(
            model("/v1/models/fraud:explain"),
            Some(("fraud", None, "/v1/models/fraud:explain"))
        );
        assert_eq!(
            model("/v1/models/fraud"),
            Some(("fraud", None, "/v1/models/fraud"))
        );
    }

    #[test]
    fn open_inference_protocol_paths() {
        assert_eq!(
            model("/v2/models/fraud/infer"),
            Some(("fraud", None, "/v2/models/fraud/infer"))
        );
        assert_eq!(
            model("/v2/models/fraud"),
            Some(("fraud", None, "/v2/models/fraud"))
        );
        assert_eq!(
            model("/v2/models/fraud/ready"),
            Some(("fraud", None, "/v2/models/fraud/ready"))
        );
        assert_eq!(
            model("/v2/models/fraud/versions/3/infer"),
            Some(("fraud", Some("3"), "/v2/models/fraud/versions/3/infer"))
        );
        assert_eq!(
            model("/v2/models/fraud/versions/3"),
            Some(("fraud", Some("3"), "/v2/models/fraud/versions/3"))
        );
    }

    #[test]
    fn generic_paths_forward_the_rest() {
        assert_eq!(
            model("/models/fraud/invocations"),
            Some(("fraud", None, "/invocations"))
        );
        assert_eq!(
            model("/models/fraud/predictions/x/1"),
            Some(("fraud", None, "/predictions/x/1"))
        );
        assert_eq!(model("/models/fraud"), Some(("fraud", None, "")));
    }

    #[test]
    fn paths_without_a_model() {
        for path in [
            "/",
            "",
            "/v1/models/",
            "/v1/models/:predict",
            "/v2/models//infer",
            "/v2/models/m/versions/",
            "/v2/models/m/versions//infer",
            "/models/",
            "/v2/health/ready",
            "/predict",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn dot_segments_and_encoded_separators_are_not_plain() {
        for path in [
            "/v2/models/m/infer",
            "/models/m/a.b/c..d",
            "/v1/models/m:predict?x=../y",
        ] {
            assert!(is_plain(path.split('?').next().unwrap()), "{path}");
        }
        for path in [
            "/v2/models/m/ready/../versions/1/infer",
            "/v2/models/m/./infer",
            "/models/m/..",
            "/v2/models/m%2Fversions%2F1/infer",
            "/v2/models/m/%2e%2e/x",
            "/models/m\\..\\x",
            "/models/m/%5C",
        ] {
            assert!(!is_plain(path), "{path}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_names_a_real_segment(path in "\\PC{0,64}") {
            if let Some(p) = parse(&path) {
                prop_assert!(!p.model.is_empty());
                prop_assert!(!p.model.contains('/'));
                prop_assert!(path.contains(p.model));
                prop_assert!(p.strip <= path.len());
                prop_assert!(path.is_char_boundary(p.strip));
            }
        }

        #[test]
        fn every_path_style_finds_the_model(m in "[a-zA-Z0-9._-]{1,20}", v in "[a-zA-Z0-9]{1,5}") {
            let v1 = format!("/v1/models/{m}:predict");
            let pinned = format!("/v2/models/{m}/versions/{v}/infer");
            let generic = format!("/models/{m}/invocations");
            prop_assert_eq!(model(&v1), Some((m.as_str(), None, v1.as_str())));
            prop_assert_eq!(model(&pinned), Some((m.as_str(), Some(v.as_str()), pinned.as_str())));
            prop_assert_eq!(model(&generic), Some((m.as_str(), None, "/invocations")));
        }
    }

    #[test]
    fn a_version_pin_is_rewritten_and_the_rest_kept() {
        assert_eq!(
            repin("/v2/models/adder/versions/1/infer?x=1", "3").as_deref(),
            Some("/v2/models/adder/versions/3/infer?x=1")
        );
        assert_eq!(
            repin("/v2/models/adder/versions/1", "10").as_deref(),
            Some("/v2/models/adder/versions/10")
        );
        assert_eq!(repin("/v2/models/adder/infer", "3"), None);
        assert_eq!(repin("/v1/models/adder:predict", "3"), None);
    }

    #[test]
    fn readiness_and_metadata_calls_are_status_calls_and_predictions_are_not() {
        let status_call = |path| parse(path).map(|p| p.status_call);
        for path in [
            "/v2/models/adder",
            "/v2/models/adder/ready",
            "/v2/models/adder/versions/1",
            "/v2/models/adder/versions/1/ready",
            "/v1/models/adder",
        ] {
            assert_eq!(status_call(path), Some(true), "{path}");
        }
        for path in [
            "/v2/models/adder/infer",
            "/v2/models/adder/versions/1/infer",
            "/v2/models/adder/generate",
            "/v1/models/adder:predict",
            "/models/adder/ready",
        ] {
            assert_eq!(status_call(path), Some(false), "{path}");
        }
    }
}
