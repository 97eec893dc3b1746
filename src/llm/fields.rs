//! The few top-level fields of an OpenAI-style request body the gateway acts on
//! (`model`, `user`, `stream`, `stream_options`), found in one pass over the
//! body without decoding the rest: other values are skipped by their structure,
//! strings with `memchr`, so a long conversation costs little more than a
//! search for its quotes.
//!
//! The pass checks the structure the gateway relies on (one JSON object, keys
//! and values in order, nothing after it) but not every token of every value:
//! a malformed number deep inside `messages` is the model server's to refuse.
//! A field the gateway acts on given twice is refused, since a model server
//! that reads the other one would be sent somewhere the gateway did not mean.

use std::borrow::Cow;
use std::ops::Range;

/// Why the fields could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("the body is not a JSON object (at byte {0})")]
    NotAnObject(usize),
    #[error("the body is not valid JSON (at byte {0})")]
    Malformed(usize),
    #[error("the body has no \"model\" field")]
    MissingModel,
    #[error("field {0:?} must be a string")]
    NotAString(&'static str),
    #[error("field {0:?} must be true or false")]
    NotABool(&'static str),
    #[error("field {0:?} must be an object")]
    NotAnObjectField(&'static str),
    #[error("field {0:?} is given more than once")]
    Duplicate(&'static str),
}

impl FieldError {
    /// The field the error is about, for the error body's `param`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            FieldError::NotAnObject(_) | FieldError::Malformed(_) => None,
            FieldError::MissingModel => Some("model"),
            FieldError::NotAString(field)
            | FieldError::NotABool(field)
            | FieldError::NotAnObjectField(field)
            | FieldError::Duplicate(field) => Some(field),
        }
    }
}

/// The fields found, as positions in the body (so they travel with it without
/// borrowing it) and the values read from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// The `model` value, quotes included (what a rewrite replaces).
    pub model_span: Range<usize>,
    pub model: Text,
    /// OpenAI's end-user id, a sticky key for canaries.
    pub user: Option<Text>,
    pub stream: bool,
    /// The `stream_options` object, braces included.
    pub stream_options: Option<Range<usize>>,
    /// Just after the body's opening brace (where a field can be added).
    pub first_key_at: usize,
}

/// A string value of the body: where it is, or, when it has escapes, its
/// decoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// The contents between its quotes, valid UTF-8 without escapes.
    Span(Range<usize>),
    Decoded(Box<str>),
}

impl Text {
    /// The text, read from the `body` it was found in.
    pub fn get<'a>(&'a self, body: &'a [u8]) -> &'a str {
        match self {
            // Checked when scanned; a different body yields "".
            Text::Span(span) => body
                .get(span.clone())
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .unwrap_or_default(),
            Text::Decoded(text) => text,
        }
    }
}

/// Reads the fields of `body`.
pub fn scan(body: &[u8]) -> Result<Fields, FieldError> {
    let mut s = Scanner { body, at: 0 };
    s.skip_ws();
    if s.peek() != Some(b'{') {
        return Err(FieldError::NotAnObject(s.at));
    }
    s.at += 1;
    let first_key_at = s.at;
    let mut found = Found::default();
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.at += 1;
    } else {
        loop {
            s.member(&mut found)?;
            s.skip_ws();
            match s.bump() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(FieldError::Malformed(s.at.saturating_sub(1))),
            }
        }
    }
    s.skip_ws();
    if s.at != body.len() {
        return Err(FieldError::Malformed(s.at));
    }
    let (model_span, model) = found.model.ok_or(FieldError::MissingModel)?;
    Ok(Fields {
        model_span,
        model,
        user: found.user,
        stream: found.stream.unwrap_or(false),
        stream_options: found.stream_options,
        first_key_at,
    })
}

/// Whether the `stream_options` object asks for a final usage event.
pub fn asks_for_usage(body: &[u8], stream_options: &Range<usize>) -> bool {
    let Some(object) = body.get(stream_options.clone()) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(object)
        .ok()
        .and_then(|v| v.get("include_usage").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// How deeply values may nest inside the body's object.
const MAX_DEPTH: u32 = 128;

#[derive(Default)]
struct Found {
    model: Option<(Range<usize>, Text)>,
    user: Option<Text>,
    stream: Option<bool>,
    stream_options: Option<Range<usize>>,
}

struct Scanner<'b> {
    body: &'b [u8],
    at: usize,
}

impl<'b> Scanner<'b> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// One `"key": value` of the top-level object.
    fn member(&mut self, found: &mut Found) -> Result<(), FieldError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(FieldError::Malformed(self.at));
        }
        let key = self.string()?;
        self.skip_ws();
        if self.bump() != Some(b':') {
            return Err(FieldError::Malformed(self.at.saturating_sub(1)));
        }
        self.skip_ws();
        let start = self.at;
        self.value()?;
        let span = start..self.at;
        let raw = &self.body[span.clone()];
        match decoded(&self.body[key], start)?.as_ref() {
            "model" => {
                let name = string_value(raw, &span, "model")?;
                set(&mut found.model, (span, name), "model")
            }
            "user" => set(&mut found.user, string_value(raw, &span, "user")?, "user"),
            "stream" => {
                let stream = match raw {
                    b"true" => true,
                    b"false" => false,
                    _ => return Err(FieldError::NotABool("stream")),
                };
                set(&mut found.stream, stream, "stream")
            }
            "stream_options" => {
                if raw.first() != Some(&b'{') {
                    return Err(FieldError::NotAnObjectField("stream_options"));
                }
                set(&mut found.stream_options, span, "stream_options")
            }
            _ => Ok(()),
        }
    }

    /// Skips one value of any kind.
    fn value(&mut self) -> Result<(), FieldError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => self.nested(),
            Some(_) => self.scalar(),
            None => Err(FieldError::Malformed(self.at)),
        }
    }

    /// A string, from its opening quote; answers its contents' range. Only
    /// quotes stop the search: a quote ends the string unless an odd number of
    /// backslashes precede it, so escapes such as `\n` cost nothing.
    fn string(&mut self) -> Result<Range<usize>, FieldError> {
        let start = self.at + 1;
        let mut from = start;
        loop {
            let rest = self.body.get(from..).unwrap_or_default();
            let quote =
                from + memchr::memchr(b'"', rest).ok_or(FieldError::Malformed(self.body.len()))?;
            let escapes = self.body[start..quote]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            if escapes % 2 == 0 {
                self.at = quote + 1;
                return Ok(start..quote);
            }
            from = quote + 1;
        }
    }

    /// An object or an array and everything in it, from its opening bracket.
    /// The open brackets are bits of one word (1: a brace), so skipping a
    /// value allocates nothing; past [`MAX_DEPTH`] levels the body is refused,
    /// as `serde_json` refuses it.
    fn nested(&mut self) -> Result<(), FieldError> {
        let (mut open, mut depth) = (0u128, 0u32);
        loop {
            match self.peek() {
                Some(opener @ (b'{' | b'[')) => {
                    if depth == MAX_DEPTH {
                        return Err(FieldError::Malformed(self.at));
                    }
                    open = open << 1 | u128::from(opener == b'{');
                    depth += 1;
                    self.at += 1;
                }
                Some(closer @ (b'}' | b']')) => {
                    if depth == 0 || (open & 1 == 1) != (closer == b'}') {
                        return Err(FieldError::Malformed(self.at));
                    }
                    open >>= 1;
                    depth -= 1;
                    self.at += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(_) => self.at += 1,
                None => return Err(FieldError::Malformed(self.at)),
            }
        }
    }

    /// A number, `true`, `false` or `null`: up to the next delimiter.
    fn scalar(&mut self) -> Result<(), FieldError> {
        let start = self.at;
        while let Some(byte) = self.peek() {
            if matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.at += 1;
        }
        let token = &self.body[start..self.at];
        let number = token
            .first()
            .is_some_and(|b| *b == b'-' || b.is_ascii_digit())
            && token
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        if number || matches!(token, b"true" | b"false" | b"null") {
            Ok(())
        } else {
            Err(FieldError::Malformed(start))
        }
    }
}

fn set<T>(slot: &mut Option<T>, value: T, field: &'static str) -> Result<(), FieldError> {
    if slot.is_some() {
        return Err(FieldError::Duplicate(field));
    }
    *slot = Some(value);
    Ok(())
}

/// A string value (`raw`, quotes included, found at `span`) as [`Text`].
fn string_value(raw: &[u8], span: &Range<usize>, field: &'static str) -> Result<Text, FieldError> {
    let [b'"', contents @ .., b'"'] = raw else {
        return Err(FieldError::NotAString(field));
    };
    Ok(match decoded(contents, span.start)? {
        Cow::Borrowed(_) => Text::Span(span.start + 1..span.end - 1),
        Cow::Owned(text) => Text::Decoded(text.into_boxed_str()),
    })
}

/// A string's contents (between its quotes) as text: borrowed unless it has
/// escapes. Control characters must be escaped, as JSON says.
fn decoded(contents: &[u8], at: usize) -> Result<Cow<'_, str>, FieldError> {
    if contents.iter().any(|b| *b < 0x20) {
        return Err(FieldError::Malformed(at));
    }
    if !contents.contains(&b'\\') {
        return std::str::from_utf8(contents)
            .map(Cow::Borrowed)
            .map_err(|_| FieldError::Malformed(at));
    }
    let mut quoted = Vec::with_capacity(contents.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(contents);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .map(Cow::Owned)
        .map_err(|_| FieldError::Malformed(at))
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
