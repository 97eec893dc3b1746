//! [`LlmMeter`]: the measurements of an OpenAI-style answer as it streams to
//! the client (see [`crate::llm::events`]), recorded on its route when it
//! ends: time to the first content event, time per output token after it,
//! tokens in and out from the server's usage, the finish reason. A whole
//! (not streamed) answer is kept, up to [`WHOLE_LIMIT`], and read at its end
//! for its usage and finish reason.

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::llm::events::{EventReader, Seen, whole_answer};
use crate::routing::VersionRoute;

/// How much of a whole answer is kept to read its usage from; a longer one is
/// passed on unmeasured.
pub const WHOLE_LIMIT: usize = 1 << 20;

pub struct LlmMeter {
    started: Instant,
    answer: Answer,
    first_content: Option<Instant>,
    last_content: Option<Instant>,
    recorded: bool,
}

enum Answer {
    Streamed(EventReader),
    Whole { frames: Vec<Bytes>, size: usize },
}

impl LlmMeter {
    /// A meter for an answer to a request made at `started`: streamed (server-
    /// sent events; the usage event is left out when `strip_usage`) or whole.
    pub fn new(started: std::time::Instant, streamed: bool, strip_usage: bool) -> LlmMeter {
        let answer = match streamed {
            true => Answer::Streamed(EventReader::new(strip_usage)),
            false => Answer::Whole {
                frames: Vec::new(),
                size: 0,
            },
        };
        LlmMeter {
            started: Instant::from_std(started),
            answer,
            first_content: None,
            last_content: None,
            recorded: false,
        }
    }

    /// Takes note of one frame of the answer; the bytes to pass on.
    pub fn frame(&mut self, data: Bytes) -> Bytes {
        match &mut self.answer {
            Answer::Streamed(reader) => {
                let read = reader.read(data);
                if read.content_events > 0 {
                    let now = Instant::now();
                    self.first_content.get_or_insert(now);
                    self.last_content = Some(now);
                }
                read.pass
            }
            Answer::Whole { frames, size } => {
                *size += data.len();
                if *size <= WHOLE_LIMIT {
                    frames.push(data.clone());
                } else {
                    frames.clear();
                }
                data
            }
        }
    }

    /// At the answer's end: bytes held back that still go to the client.
    pub fn rest(&mut self) -> Bytes {
        match &mut self.answer {
            Answer::Streamed(reader) => reader.rest(),
            Answer::Whole { .. } => Bytes::new(),
        }
    }

    /// Records the answer on `route` once it has ended in full.
    pub fn finish(&mut self, route: &VersionRoute) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let metrics = route.llm_metrics();
        let seen = match &mut self.answer {
            Answer::Streamed(reader) => reader.seen.clone(),
            Answer::Whole { frames, size } if *size <= WHOLE_LIMIT => {
                whole_answer(&joined(std::mem::take(frames)))
            }
            Answer::Whole { .. } => Seen::default(),
        };
        if let Some(first) = self.first_content {
            let to_first = first.duration_since(self.started);
            metrics.time_to_first_token.record(to_first.as_secs_f64());
            let tokens = seen
                .usage
                .map_or(seen.content_events, |u| u.completion_tokens);
            let per_token = match (self.last_content, tokens > 1) {
                (Some(last), true) => {
                    let per_token =
                        last.duration_since(first) / u32::try_from(tokens - 1).unwrap_or(u32::MAX);
                    metrics
                        .time_per_output_token
                        .record(per_token.as_secs_f64());
                    Some(per_token)
                }
                _ => None,
            };
            // What the rollout gates judge.
            route.stats.record_tokens(to_first, per_token);
        }
        if let Some(usage) = seen.usage {
            metrics.tokens(usage.prompt_tokens, usage.completion_tokens);
        }
        if let Some(reason) = seen.finish_reason {
            metrics.finished(reason);
        }
    }
}

fn joined(frames: Vec<Bytes>) -> Bytes {
    match frames.len() {
        1 => frames.into_iter().next().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::new();
            frames.iter().for_each(|f| all.extend_from_slice(f));
            all.freeze()
        }
    }
}
