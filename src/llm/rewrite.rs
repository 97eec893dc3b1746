//! Rewriting an OpenAI-style request body for the model server it goes to: its
//! `model` set to the served name of the version chosen, and, for a streamed
//! request whose answer the gateway measures or compares, a final usage event
//! asked for (`stream_options.include_usage`). Only the bytes of those values
//! change (a `stream_options` object is written anew, its keys in sorted
//! order); the rest of the body is copied as it came.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::fields::{Fields, asks_for_usage};

/// What to change in a body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite<'a> {
    /// The model name the server serves, when it is not the one asked for.
    pub model: Option<&'a str>,
    /// Ask a streamed answer to end with a usage event.
    pub request_usage: bool,
}

/// The body as `rewrite` says, and whether a usage event was asked for that the
/// client had not asked for; `None` when nothing changes.
pub fn rewrite(body: &[u8], fields: &Fields, rewrite: Rewrite<'_>) -> Option<(Bytes, bool)> {
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    if let Some(name) = rewrite.model.filter(|name| *name != fields.model.get(body)) {
        edits.push((fields.model_span.clone(), quoted(name)));
    }
    let usage_edit = (rewrite.request_usage && fields.stream && !asks_usage(body, fields))
        .then(|| usage_edit(body, fields))
        .flatten();
    let usage_added = usage_edit.is_some();
    edits.extend(usage_edit);
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(span, _)| span.start);
    let grown: usize = edits.iter().map(|(_, with)| with.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grown);
    let mut copied = 0;
    for (span, with) in edits {
        out.put_slice(&body[copied..span.start]);
        out.put_slice(&with);
        copied = span.end;
    }
    out.put_slice(&body[copied..]);
    Some((out.freeze(), usage_added))
}

fn asks_usage(body: &[u8], fields: &Fields) -> bool {
    fields
        .stream_options
        .as_ref()
        .is_some_and(|span| asks_for_usage(body, span))
}

/// `include_usage: true` set in the request's `stream_options`, or the object
/// added as its first field when there is none. `None` when the request's own
/// `stream_options` cannot be read: it is left as it is (a second one would
/// be a duplicate key a server might read instead).
fn usage_edit(body: &[u8], fields: &Fields) -> Option<(Range<usize>, Vec<u8>)> {
    let Some(span) = fields.stream_options.as_ref() else {
        let at = fields.first_key_at;
        let added = br#""stream_options":{"include_usage":true},"#.to_vec();
        return Some((at..at, added));
    };
    let mut options: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body.get(span.clone())?).ok()?;
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    Some((span.clone(), serde_json::to_vec(&options).ok()?))
}

/// `text` as a JSON string.
fn quoted(text: &str) -> Vec<u8> {
    // Serializing a str cannot fail.
    serde_json::to_vec(text).unwrap_or_else(|_| b"\"\"".to_vec())
}
