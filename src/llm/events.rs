//! Reading a streamed OpenAI-style answer (server-sent events) as it passes
//! through, for the measurements the gateway takes of it: which events carry
//! generated content (the first is the first token), the finish reason, and
//! the final usage event. Each event is looked at with a few substring
//! searches, not decoded; only the usage event, once per answer, is. A usage
//! event the gateway asked for and the client did not can be left out of what
//! the client gets.
//!
//! Events end with a blank line. An event split across frames is carried to
//! the next frame; when usage events are left out, only whole events are
//! passed on (the rest of a split one follows with the next frame), so a left
//! out event is never half sent. An event longer than [`MAX_EVENT_BYTES`]
//! is passed on unread as it comes (no OpenAI server sends one; the bound
//! keeps a server that never ends an event from growing the carry).

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    /// Anything else a server says.
    Other,
}

impl FinishReason {
    pub const ALL: [FinishReason; 5] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::ToolCalls,
        FinishReason::ContentFilter,
        FinishReason::Other,
    ];

    pub fn parse(text: &str) -> FinishReason {
        match text {
            "stop" | "end_turn" | "eos" => FinishReason::Stop,
            "length" | "max_tokens" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other => "other",
        }
    }
}

/// The longest event read; the rest of a longer one passes unread.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Token counts a server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

/// What the events read so far said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub content_events: u64,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
}

/// Reads one streamed answer, frame by frame.
#[derive(Debug, Default)]
pub struct EventReader {
    /// The start of an event whose end has not arrived.
    carry: BytesMut,
    /// Leave usage events out of what is passed on.
    strip_usage: bool,
    /// Inside an event past [`MAX_EVENT_BYTES`]: passed on until it ends.
    skipping: bool,
    pub seen: Seen,
}

/// What one frame held.
pub struct Read {
    /// The bytes to pass on.
    pub pass: Bytes,
    /// Events carrying generated content that ended in this frame.
    pub content_events: u64,
}

impl EventReader {
    /// A reader that leaves usage events out when `strip_usage`.
    pub fn new(strip_usage: bool) -> EventReader {
        EventReader {
            strip_usage,
            ..EventReader::default()
        }
    }

    pub fn read(&mut self, frame: Bytes) -> Read {
        let before = self.seen.content_events;
        let pass = if self.skipping {
            match event_end(&frame) {
                Some(end) => {
                    self.skipping = false;
                    let whole = self.events_in(&frame, end);
                    self.pass_on(frame, whole)
                }
                None => frame,
            }
        } else if self.carry.is_empty() {
            let whole = self.events_in(&frame, 0);
            self.pass_on(frame, whole)
        } else {
            // Joined with the start carried over (a copy, only for split events).
            self.carry.extend_from_slice(&frame);
            let joined = std::mem::take(&mut self.carry).freeze();
            let whole = self.events_in(&joined, 0);
            match self.strip_usage {
                // The carried start was held back, so it goes out now.
                true => self.pass_on(joined, whole),
                // The carried start went out with its own frame.
                false => frame,
            }
        };
        Read {
            pass,
            content_events: self.seen.content_events - before,
        }
    }

    /// At the answer's end: the bytes held back after the last complete event
    /// (only when usage events are left out; a stream that ends without a
    /// blank line still reaches the client whole).
    pub fn rest(&mut self) -> Bytes {
        match self.strip_usage {
            true => std::mem::take(&mut self.carry).freeze(),
            false => Bytes::new(),
        }
    }

    /// Reads every complete event of `bytes` from `start`, carries the
    /// incomplete rest, and answers the spans of the events to leave out and
    /// where the whole ones end (the bytes before `start` are passed on).
    fn events_in(&mut self, bytes: &[u8], mut start: usize) -> Whole {
        let mut whole = Whole::default();
        while let Some(end) = event_end(&bytes[start..]) {
            let event = &bytes[start..start + end];
            let usage_only = self.note(event);
            if self.strip_usage && usage_only {
                whole.dropped.push(start..start + end);
            }
            start += end;
        }
        let unended = bytes.len() - start;
        if unended > MAX_EVENT_BYTES {
            self.skipping = true;
            whole.end = bytes.len();
        } else {
            whole.end = start;
            self.carry.extend_from_slice(&bytes[start..]);
        }
        whole
    }

    /// The bytes of `bytes` to send now: all of them, unless events are left
    /// out (then only whole events, without the dropped ones).
    fn pass_on(&mut self, bytes: Bytes, whole: Whole) -> Bytes {
        if !self.strip_usage {
            // Passed on as they came; the carry is only for reading.
            return bytes;
        }
        if whole.dropped.is_empty() {
            return bytes.slice(..whole.end);
        }
        let mut kept = BytesMut::with_capacity(whole.end);
        let mut from = 0;
        for span in whole.dropped {
            kept.extend_from_slice(&bytes[from..span.start]);
            from = span.end;
        }
        kept.extend_from_slice(&bytes[from..whole.end]);
        kept.freeze()
    }

    /// Takes note of one event; whether it is a usage event without choices.
    fn note(&mut self, event: &[u8]) -> bool {
        if let Some(reason) = finish_reason(event) {
            self.seen.finish_reason = Some(reason);
        }
        if has_content(event) {
            self.seen.content_events += 1;
        }
        if !values_of(event, b"\"usage\"").any(|value| value.starts_with(b"{")) {
            return false;
        }
        let Some(data) = data_of(event) else {
            return false;
        };
        match serde_json::from_slice::<WithUsage>(data) {
            Ok(parsed) => {
                let usage = parsed.usage.or(parsed.response.and_then(|r| r.usage));
                self.seen.usage = usage.or(self.seen.usage);
                parsed.usage.is_some() && parsed.choices.is_empty()
            }
            Err(_) => false,
        }
    }
}

/// An event that may carry usage: chat and completions give it at the top
/// level (with no choices when it was asked for by `include_usage`), the
/// responses API in its `response.completed` event's response.
#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
    response: Option<ResponseUsage>,
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    usage: Option<Usage>,
}

#[derive(Default)]
struct Whole {
    end: usize,
    dropped: Vec<std::ops::Range<usize>>,
}

/// Where the first event in `bytes` ends (after its blank line), if it does.
fn event_end(bytes: &[u8]) -> Option<usize> {
    let lf = memmem::find(bytes, b"\n\n").map(|at| at + 2);
    let crlf = memmem::find(bytes, b"\r\n\r\n").map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The values of `key` (written with its quotes) in `event`, each from its
/// first byte to the event's end: JSON whitespace around the colon is allowed,
/// so compact and pretty-printed servers read alike. The event is searched as
/// text, not parsed; a key right after a backslash is inside a string and
/// skipped.
fn values_of<'e>(event: &'e [u8], key: &'static [u8]) -> impl Iterator<Item = &'e [u8]> + 'e {
    memmem::find_iter(event, key).filter_map(move |at| {
        if at > 0 && event[at - 1] == b'\\' {
            return None;
        }
        let after = event[at + key.len()..].trim_ascii_start();
        Some(after.strip_prefix(b":")?.trim_ascii_start())
    })
}

/// The text of a JSON string value that has no escapes before its end quote
/// (the values looked at here are names and reasons, not generated text).
fn string_value(value: &[u8]) -> Option<&[u8]> {
    let inner = value.strip_prefix(b"\"")?;
    Some(&inner[..memchr::memchr(b'"', inner)?])
}

/// Whether an event carries generated text or a tool call: for the responses
/// API, a text or arguments delta event; otherwise a non-empty `content` or
/// `text`, or `tool_calls` with a call in it.
fn has_content(event: &[u8]) -> bool {
    if let Some(kind) = values_of(event, b"\"type\"")
        .filter_map(string_value)
        .find(|kind| kind.starts_with(b"response."))
    {
        return matches!(
            kind,
            b"response.output_text.delta" | b"response.function_call_arguments.delta"
        );
    }
    let non_empty_string = |value: &[u8]| value.starts_with(b"\"") && value.get(1) != Some(&b'"');
    values_of(event, b"\"content\"").any(non_empty_string)
        || values_of(event, b"\"text\"").any(non_empty_string)
        || values_of(event, b"\"tool_calls\"").any(|value| {
            value
                .strip_prefix(b"[")
                .is_some_and(|calls| calls.trim_ascii_start().starts_with(b"{"))
        })
}

/// The `finish_reason` of an event, if it gives one that is not null.
fn finish_reason(event: &[u8]) -> Option<FinishReason> {
    let text = values_of(event, b"\"finish_reason\"").find_map(string_value)?;
    Some(FinishReason::parse(std::str::from_utf8(text).ok()?))
}

/// The data of an event's `data:` lines (one line, as OpenAI servers send).
fn data_of(event: &[u8]) -> Option<&[u8]> {
    let at = memmem::find(event, b"data:")? + 5;
    let rest = &event[at..];
    let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    Some(rest[..end].trim_ascii())
}

/// What a whole (not streamed) answer says: its usage and finish reason.
pub fn whole_answer(body: &[u8]) -> Seen {
    #[derive(Deserialize)]
    struct Choice {
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct Whole {
        usage: Option<Usage>,
        #[serde(default)]
        choices: Vec<Choice>,
    }
    match serde_json::from_slice::<Whole>(body) {
        Ok(whole) => Seen {
            content_events: 0,
            finish_reason: whole
                .choices
                .first()
                .and_then(|c| c.finish_reason.as_deref())
                .map(FinishReason::parse),
            usage: whole.usage,
        },
        Err(_) => Seen::default(),
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
