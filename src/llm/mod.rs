//! The vocabulary of OpenAI-compatible serving (vLLM, SGLang, TGI, llama.cpp,
//! Ollama, Triton's OpenAI frontend), independent of the rest of the crate: the
//! calls ([`is_call`]), the request body's few fields the gateway routes by
//! ([`fields`]) and rewriting them for a version's served model name
//! ([`rewrite`]), the model name with a version pin in it ([`ModelRef`]), and
//! what a streamed or whole answer says of itself ([`events`]).

pub mod answer;
pub mod events;
pub mod fields;
pub mod rewrite;

pub use fields::{FieldError, Fields, Text, scan};
pub use rewrite::{Rewrite, rewrite};

use bytes::Bytes;

/// An OpenAI-style request read whole: which call it is, its body as the
/// client sent it, and the fields found in it.
#[derive(Debug, Clone)]
pub struct LlmCall {
    pub api: Api,
    pub body: Bytes,
    pub fields: Fields,
}

impl LlmCall {
    /// The model name as the client wrote it (a pin included).
    pub fn model(&self) -> &str {
        self.fields.model.get(&self.body)
    }

    /// OpenAI's end-user id, if the request gives one.
    pub fn user(&self) -> Option<&str> {
        self.fields.user.as_ref().map(|user| user.get(&self.body))
    }

    /// The body for a server that serves the version as `served`, asking for a
    /// final usage event if `request_usage` and the call takes
    /// `stream_options`; `None` when the client's body does.
    pub fn body_for(&self, served: &str, request_usage: bool) -> Option<(Bytes, bool)> {
        let to = Rewrite {
            model: Some(served),
            request_usage: request_usage && self.api.takes_stream_options(),
        };
        rewrite(&self.body, &self.fields, to)
    }
}

/// The OpenAI-compatible calls routed by the body's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Api {
    /// The call served at `path`, if it is one.
    pub fn at(path: &str) -> Option<Api> {
        match path {
            "/v1/chat/completions" => Some(Api::ChatCompletions),
            "/v1/completions" => Some(Api::Completions),
            "/v1/embeddings" => Some(Api::Embeddings),
            "/v1/responses" => Some(Api::Responses),
            _ => None,
        }
    }

    /// Whether a streamed answer's final usage event can be asked for with
    /// `stream_options.include_usage` (the responses API always ends with
    /// its usage and refuses the option; embeddings do not stream).
    pub fn takes_stream_options(self) -> bool {
        matches!(self, Api::ChatCompletions | Api::Completions)
    }
}

/// Whether `path` is one of the OpenAI-compatible calls.
pub fn is_call(path: &str) -> bool {
    Api::at(path).is_some()
}

/// A model name as a client writes it: `chat`, or `chat@staging`, `chat@7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRef<'a> {
    pub model: &'a str,
    /// What follows the last `@`: a stage or a version id.
    pub pin: Option<&'a str>,
}

impl<'a> ModelRef<'a> {
    /// Model names cannot hold `@`, so the last one starts the pin.
    pub fn parse(name: &'a str) -> ModelRef<'a> {
        match name.rsplit_once('@') {
            Some((model, pin)) => ModelRef {
                model,
                pin: Some(pin),
            },
            None => ModelRef {
                model: name,
                pin: None,
            },
        }
    }
}
