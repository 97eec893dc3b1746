//! Entry points of the fuzz targets (`fuzz/`), here so the committed corpora also
//! run as ordinary regression tests (`tests/fuzz_corpus.rs`) through exactly the
//! same code. Each takes arbitrary bytes and must return without panicking.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::proxy::framing::{ConflictingRequest, HeadScanner};
use crate::registry::{Canary, CompareMode, ComparePolicy};
use crate::routing::{self, Router};
use crate::shadow::{Answer, Comparator};
use crate::telemetry::Telemetry;
use crate::vocab::PathPattern;

/// The framing scanner on an arbitrary byte stream, read whole and in pieces of
/// the size the first byte gives: both must find the same conflicting request.
pub fn framing(data: &[u8]) {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let found = |pieces: usize| {
        let conflict = Arc::new(ConflictingRequest::default());
        let mut scanner = HeadScanner::new(16 * 1024, Arc::clone(&conflict));
        stream
            .chunks(pieces)
            .for_each(|chunk| scanner.observe(chunk));
        conflict.index()
    };
    let whole = found(stream.len().max(1));
    let pieces = found(usize::from(piece).max(1));
    assert_eq!(whole, pieces, "read whole and in pieces of {piece}");
}

/// The config loader on arbitrary text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "fuzz");
    }
}

/// The resolver: the first line is the path, the others `name: value` headers.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let table = router().load();
    if let Ok(resolved) = routing::resolve(&table, path, &headers) {
        let _ = resolved.route.pick_endpoint();
        let _ = routing::path::parse(&path[resolved.strip..]);
    }
}

/// Every comparator: the bytes before the first 0xFF are production's answer,
/// the rest the shadow's; the first byte picks the status codes.
pub fn compare(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0xFF).unwrap_or(data.len());
    let (primary, shadow) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let status = |b: Option<&u8>| {
        if b.is_some_and(|b| b % 7 == 0) {
            500
        } else {
            200
        }
    };
    for comparator in comparators() {
        let verdict = comparator.compare(
            Answer::plain(status(primary.first()), primary),
            Answer::plain(status(shadow.first()), shadow),
        );
        assert!(verdict.differences.len() <= crate::shadow::compare::MAX_DIFFERENCES);
        assert!(!verdict.matched || verdict.difference_count == 0);
    }
}

/// The binary data extension's reader on an arbitrary answer: the first line is
/// the `Inference-Header-Content-Length` value, the rest the body. It must
/// return an answer or an error; and an answer it reads compares, in `json`
/// mode, as equal to the plain JSON it was read as.
pub fn binary_answer(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (length, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(document) = crate::shadow::compare::binary::inline(body, length) else {
        return;
    };
    let json = Comparator::new(&ComparePolicy {
        mode: CompareMode::Json,
        ..ComparePolicy::default()
    });
    let plain = serde_json::to_vec(&document).unwrap_or_default();
    let binary = Answer {
        status: 200,
        body,
        binary_header: Some(length),
        grpc: false,
    };
    let verdict = json.compare(binary, Answer::plain(200, &plain));
    assert!(verdict.matched, "{verdict:?}");
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let text = "[[models]]\nname = \"m\"\n[models.canary]\nsticky_header = \"x-user-id\"\n\
            [[models.versions]]\nversion = \"1\"\nstage = \"archived\"\nendpoints = [\"http://127.0.0.1:1\"]\n\
            [[models.versions]]\nversion = \"2\"\nstage = \"production\"\nendpoints = [\"http://127.0.0.1:2\", \"http://127.0.0.1:3/p\"]\n\
            [[models.versions]]\nversion = \"3\"\nstage = \"staging\"\nendpoints = [\"http://127.0.0.1:4\"]\n";
        let mut models = Config::parse(text, "fuzz").map(|c| c.models).unwrap_or_default();
        for model in &mut models {
            model.canary = Some(Canary { version: "3".into(), weight: 30.0, salt: 7 });
        }
        Router::new(&models, Telemetry::new())
    })
}

fn comparators() -> &'static [Comparator] {
    static COMPARATORS: OnceLock<Vec<Comparator>> = OnceLock::new();
    COMPARATORS.get_or_init(|| {
        [
            CompareMode::Json,
            CompareMode::Oip,
            CompareMode::Label,
            CompareMode::Status,
            CompareMode::Bytes,
        ]
        .into_iter()
        .filter_map(|mode| {
            let pattern = |text| PathPattern::parse(text).ok();
            let policy = ComparePolicy {
                mode,
                ignore: vec![pattern("id")?, pattern("outputs[*].parameters")?],
                label_path: pattern("predictions[*]")?,
                ..ComparePolicy::default()
            };
            Some(Comparator::new(&policy))
        })
        .collect()
    })
}
