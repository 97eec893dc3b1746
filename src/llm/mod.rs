//! The vocabulary of OpenAI-compatible serving (vLLM, SGLang, TGI, llama.cpp,
//! Ollama, Triton's OpenAI frontend), independent of the rest of the crate: the
//! calls ([`Call`]), the request body's few fields the gateway routes by
//! ([`fields`]) and rewriting them for a version's served model name
//! ([`rewrite`]), and the model name with a version pin in it ([`ModelRef`]).

pub mod fields;
pub mod rewrite;

pub use fields::{FieldError, Fields, scan};
pub use rewrite::{Rewrite, rewrite};

/// The OpenAI-compatible calls routed by the body's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Call {
    /// The call a `POST` to `path` makes, if it is one of them.
    pub fn of_path(path: &str) -> Option<Call> {
        match path {
            "/v1/chat/completions" => Some(Call::ChatCompletions),
            "/v1/completions" => Some(Call::Completions),
            "/v1/embeddings" => Some(Call::Embeddings),
            "/v1/responses" => Some(Call::Responses),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Call::ChatCompletions => "chat_completions",
            Call::Completions => "completions",
            Call::Embeddings => "embeddings",
            Call::Responses => "responses",
        }
    }
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
