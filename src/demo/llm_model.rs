//! A small deterministic OpenAI-compatible model server for the demo and the
//! tests: chat completions and completions (streamed as server-sent events, one
//! word per event, or whole), embeddings, the responses API and the model list,
//! answering only for the model name it serves (as vLLM does, so a gateway that
//! forgets to rewrite `model` is caught). Its text follows from the prompt; a
//! [`Voice`] makes a staging version differ from production in a few words, or
//! ramble.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::proxy::Handler;

const MAX_REQUEST_BYTES: usize = 1 << 20;

/// How a version words its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    Plain,
    /// A few words differ from [`Voice::Plain`] (a close candidate).
    Reworded,
    /// Says the same, then goes on at length (a candidate that rambles).
    Rambling,
}

/// One version of the demo LLM.
pub struct DemoLlm {
    /// The model name it serves (its `upstream_model` behind the gateway).
    pub served: String,
    pub voice: Voice,
    /// Before the first event of a streamed answer.
    pub first_token_delay: Duration,
    /// Between events.
    pub token_delay: Duration,
    /// When set, every event after the first waits for a permit (tests hold a
    /// stream open at its first event this way).
    pub hold: Option<Arc<Semaphore>>,
    /// Streams whose client went away before the end.
    pub cancelled: Arc<AtomicUsize>,
    /// Request bodies received, for tests.
    pub received: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl DemoLlm {
    pub fn new(served: &str, voice: Voice) -> DemoLlm {
        DemoLlm {
            served: served.to_string(),
            voice,
            first_token_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            hold: None,
            cancelled: Arc::default(),
            received: Arc::default(),
        }
    }

    /// The words of the answer to `prompt`.
    pub fn words(&self, prompt: &str) -> Vec<String> {
        let echo: Vec<&str> = prompt.split_whitespace().take(8).collect();
        let mut text = format!(
            "Stagegate routes each request by the stage of the model version behind it. You asked: {}.",
            echo.join(" ")
        );
        match self.voice {
            Voice::Plain => {}
            Voice::Reworded => {
                text = text
                    .replace("routes each", "sends every")
                    .replace("behind", "serving");
            }
            Voice::Rambling => {
                text.push_str(&" And there is so much more to say about it.".repeat(6))
            }
        }
        text.split_whitespace().map(str::to_string).collect()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<LlmBody> {
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        if method == Method::GET && path == "/v1/models" {
            let data =
                json!([{ "id": self.served, "object": "model", "created": 0, "owned_by": "demo" }]);
            return json_ok(json!({ "object": "list", "data": data }));
        }
        if method != Method::POST {
            return error(StatusCode::NOT_FOUND, &format!("no such route: {path}"));
        }
        let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
        };
        let Ok(body) = serde_json::from_slice::<Value>(&body) else {
            return error(StatusCode::BAD_REQUEST, "the body is not JSON");
        };
        if let Ok(mut received) = self.received.lock() {
            received.push(body.clone());
        }
        if body["model"] != self.served.as_str() {
            let message = format!("The model `{}` does not exist.", body["model"]);
            return error(StatusCode::NOT_FOUND, &message);
        }
        match path.as_str() {
            "/v1/chat/completions" | "/v1/completions" => self.generate(&path, &body),
            "/v1/embeddings" => json_ok(self.embeddings(&body)),
            "/v1/responses" => json_ok(self.response(&body)),
            _ => error(StatusCode::NOT_FOUND, &format!("no such route: {path}")),
        }
    }

    fn generate(&self, path: &str, body: &Value) -> Response<LlmBody> {
        let chat = path == "/v1/chat/completions";
        let prompt = if chat {
            last_user_message(body)
        } else {
            text_of(&body["prompt"])
        };
        let mut words = self.words(&prompt);
        let limit = body["max_tokens"]
            .as_u64()
            .map_or(usize::MAX, |n| n as usize);
        let finish = if words.len() > limit {
            "length"
        } else {
            "stop"
        };
        words.truncate(limit);
        let usage = json!({
            "prompt_tokens": prompt.split_whitespace().count(),
            "completion_tokens": words.len(),
            "total_tokens": prompt.split_whitespace().count() + words.len(),
        });
        let tool = body
            .pointer("/tools/0/function/name")
            .and_then(Value::as_str);
        let turn = Turn {
            chat,
            model: &self.served,
            words: &words,
            finish,
            tool,
        };
        if body["stream"] == true {
            let usage = (body.pointer("/stream_options/include_usage") == Some(&json!(true)))
                .then_some(usage);
            return self.stream(turn.events(usage));
        }
        json_ok(turn.whole(usage))
    }

    fn stream(&self, events: Vec<Value>) -> Response<LlmBody> {
        let (sender, receiver) = mpsc::channel(4);
        let (first, gap, hold) = (self.first_token_delay, self.token_delay, self.hold.clone());
        let cancelled = Arc::clone(&self.cancelled);
        tokio::spawn(async move {
            tokio::time::sleep(first).await;
            let lines = events
                .iter()
                .map(|e| format!("data: {e}\n\n"))
                .chain(["data: [DONE]\n\n".to_string()]);
            for (k, line) in lines.enumerate() {
                if k > 0 {
                    tokio::time::sleep(gap).await;
                    if let Some(hold) = &hold {
                        tokio::select! {
                            permit = hold.acquire() => permit.map(|p| p.forget()).unwrap_or(()),
                            () = sender.closed() => {}
                        }
                    }
                }
                if sender.send(Bytes::from(line)).await.is_err() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        });
        let mut response = Response::new(LlmBody::Stream(receiver));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    }

    fn embeddings(&self, body: &Value) -> Value {
        let inputs: Vec<String> = match &body["input"] {
            Value::Array(items) => items.iter().map(text_of).collect(),
            other => vec![text_of(other)],
        };
        let drift = match self.voice {
            Voice::Plain => 0.0,
            Voice::Reworded => 0.01,
            Voice::Rambling => 0.5,
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": vector(text, drift) }))
            .collect();
        let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
        json!({ "object": "list", "model": self.served, "data": data,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens } })
    }

    fn response(&self, body: &Value) -> Value {
        let prompt = text_of(&body["input"]);
        let text = self.words(&prompt).join(" ");
        json!({
            "id": "resp-demo", "object": "response", "created_at": 0, "model": self.served,
            "status": "completed",
            "output": [{ "type": "message", "id": "msg-demo", "role": "assistant", "status": "completed",
                         "content": [{ "type": "output_text", "text": text, "annotations": [] }] }],
            "usage": { "input_tokens": prompt.split_whitespace().count(),
                       "output_tokens": text.split_whitespace().count(),
                       "total_tokens": prompt.split_whitespace().count() + text.split_whitespace().count() },
        })
    }
}

/// One generated answer, as a whole or as events.
struct Turn<'a> {
    chat: bool,
    model: &'a str,
    words: &'a [String],
    finish: &'static str,
    /// The first tool the request offers: the answer calls it.
    tool: Option<&'a str>,
}

impl Turn<'_> {
    fn whole(&self, usage: Value) -> Value {
        let text = self.words.join(" ");
        let choice = match (self.chat, self.tool) {
            (true, Some(name)) => json!({ "index": 0, "finish_reason": "tool_calls",
                "message": { "role": "assistant", "content": null, "tool_calls": [tool_call(name)] } }),
            (true, None) => json!({ "index": 0, "finish_reason": self.finish,
                "message": { "role": "assistant", "content": text } }),
            (false, _) => json!({ "index": 0, "finish_reason": self.finish, "text": text }),
        };
        json!({ "id": "cmpl-demo", "object": self.object(false), "created": 0, "model": self.model,
                "choices": [choice], "usage": usage })
    }

    fn events(&self, usage: Option<Value>) -> Vec<Value> {
        let chunk = |choice: Value| {
            json!({ "id": "cmpl-demo", "object": self.object(true), "created": 0,
                    "model": self.model, "choices": [choice] })
        };
        let mut events = Vec::new();
        if self.chat {
            events.push(chunk(json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null })));
        }
        for (k, word) in self.words.iter().enumerate() {
            let piece = if k == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            let delta = if self.chat {
                json!({ "index": 0, "delta": { "content": piece }, "finish_reason": null })
            } else {
                json!({ "index": 0, "text": piece, "finish_reason": null })
            };
            events.push(chunk(delta));
        }
        let last = if self.chat {
            json!({ "index": 0, "delta": {}, "finish_reason": self.finish })
        } else {
            json!({ "index": 0, "text": "", "finish_reason": self.finish })
        };
        events.push(chunk(last));
        if let Some(usage) = usage {
            let mut event = chunk(json!(null));
            event["choices"] = json!([]);
            event["usage"] = usage;
            events.push(event);
        }
        events
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.chat, streamed) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }
}

fn tool_call(name: &str) -> Value {
    json!({ "id": "call-demo", "type": "function",
            "function": { "name": name, "arguments": "{\"city\": \"Paris\"}" } })
}

fn last_user_message(body: &Value) -> String {
    let mut messages = body["messages"].as_array().into_iter().flatten();
    messages
        .rfind(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default()
}

/// A string value, or the text parts of a content array.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| text_of(p.get("text").unwrap_or(p)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A unit vector of 8 numbers that follows from `text`, turned by `drift`.
fn vector(text: &str, drift: f64) -> Vec<f64> {
    let seed = text
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let raw: Vec<f64> = (0..8u64)
        .map(|i| {
            ((seed.rotate_left(i as u32 * 8) % 1000) as f64 / 1000.0 - 0.5)
                + if i == 0 { drift } else { 0.0 }
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    raw.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect()
}

fn json_ok(value: Value) -> Response<LlmBody> {
    let mut response = Response::new(LlmBody::Whole(Full::new(Bytes::from(value.to_string()))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error in OpenAI's shape.
fn error(status: StatusCode, message: &str) -> Response<LlmBody> {
    let kind = if status == StatusCode::NOT_FOUND {
        "NotFoundError"
    } else {
        "BadRequestError"
    };
    let mut response = json_ok(
        json!({ "error": { "message": message, "type": kind, "param": null, "code": status.as_u16() } }),
    );
    *response.status_mut() = status;
    response
}

/// The demo LLM's response body: whole, or events as the task sends them.
pub enum LlmBody {
    Whole(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for LlmBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            LlmBody::Whole(full) => Pin::new(full).poll_frame(cx),
            LlmBody::Stream(receiver) => receiver
                .poll_recv(cx)
                .map(|event| event.map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LlmBody::Whole(full) => full.is_end_stream(),
            LlmBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LlmBody::Whole(full) => full.size_hint(),
            LlmBody::Stream(_) => SizeHint::default(),
        }
    }
}

impl Handler for DemoLlm {
    type Body = LlmBody;

    async fn handle(&self, request: Request<Incoming>, _peer: &HeaderValue) -> Response<LlmBody> {
        self.answer(request).await
    }

    fn local_response(&self, response: Response<Bytes>) -> Response<LlmBody> {
        response.map(|body| LlmBody::Whole(Full::new(body)))
    }
}
