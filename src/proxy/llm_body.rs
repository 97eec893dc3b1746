//! [`LlmBody`]: an OpenAI-compatible call (`POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/responses`) names its model in the
//! body, so its body is read whole before routing: up to `max_body_bytes`,
//! held in the gateway's body budget (503 `overloaded` at once when the budget
//! has no room, since such a body cannot be routed while it streams), before
//! the request's deadline (408). Its `model`, `user` and `stream` fields are
//! then found in one pass ([`crate::llm::fields`]); a body that is not a JSON
//! object, or whose `model` is missing or not a string, is refused with 400
//! naming the field. Every other request passes with its body unread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Method;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::ProxyError;
use super::read_ahead::Reader;
use super::stack::{Answer, ClientBody, Inbound, Refusal, always_ready};
use crate::llm::{self, LlmCall};
use crate::upstream::budget::BodyBudget;

pub struct LlmBodyLayer {
    budget: Arc<BodyBudget>,
    max_body_bytes: usize,
    request_timeout: Duration,
}

impl LlmBodyLayer {
    pub fn new(
        budget: Arc<BodyBudget>,
        max_body_bytes: usize,
        request_timeout: Duration,
    ) -> LlmBodyLayer {
        LlmBodyLayer {
            budget,
            max_body_bytes,
            request_timeout,
        }
    }
}

impl<S> Layer<S> for LlmBodyLayer {
    type Service = LlmBody<S>;

    fn layer(&self, next: S) -> LlmBody<S> {
        LlmBody {
            budget: Arc::clone(&self.budget),
            max_body_bytes: self.max_body_bytes,
            request_timeout: self.request_timeout,
            next,
        }
    }
}

pub struct LlmBody<S> {
    budget: Arc<BodyBudget>,
    max_body_bytes: usize,
    request_timeout: Duration,
    next: S,
}

/// What reading one call's body needs, owned by its future.
struct Limits {
    budget: Arc<BodyBudget>,
    max_body_bytes: usize,
    request_timeout: Duration,
    started: Instant,
}

impl Limits {
    /// Reads the call's body and finds its fields.
    async fn read(self, call: llm::Call, body: Incoming) -> Result<ClientBody, ProxyError> {
        let reader = Reader {
            budget: &self.budget,
            max_body_bytes: self.max_body_bytes,
            deadline: self.started + self.request_timeout,
            request_timeout: self.request_timeout,
        };
        let (body, held) = reader.read_whole(body).await?;
        let fields = llm::scan(&body).map_err(|e| ProxyError::BadField {
            field: e.field(),
            message: e.to_string(),
        })?;
        Ok(ClientBody::Call {
            call: LlmCall { call, body, fields },
            held,
        })
    }
}

impl<'a, S> Service<Inbound> for &'a LlmBody<S>
where
    &'a S: Service<Inbound<ClientBody>, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Reading<'a, S, <&'a S as Service<Inbound<ClientBody>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this: &'a LlmBody<S> = self;
        let Inbound {
            request,
            peer,
            started,
        } = inbound;
        let call = llm::Call::of_path(request.uri().path());
        let (parts, body) = request.into_parts();
        let mut next = &this.next;
        match call {
            Some(call) if parts.method == Method::POST => {
                let limits = Limits {
                    budget: Arc::clone(&this.budget),
                    max_body_bytes: this.max_body_bytes,
                    request_timeout: this.request_timeout,
                    started: Instant::from_std(started),
                };
                Reading::Body {
                    read: Box::pin(limits.read(call, body)),
                    head: Some((parts, peer, started)),
                    next,
                }
            }
            Some(_) => Reading::Refused {
                refusal: Some(Refusal::unrouted(ProxyError::MethodNotAllowed("POST"))),
            },
            None => {
                let request = http::Request::from_parts(parts, ClientBody::Unread(body));
                Reading::Calling {
                    next: next.call(Inbound {
                        request,
                        peer,
                        started,
                    }),
                }
            }
        }
    }
}

/// Reading the body, an `async` block, boxed (stable Rust cannot name it).
type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<ClientBody, ProxyError>> + Send + 'a>>;

type Head = (http::request::Parts, http::HeaderValue, std::time::Instant);

pin_project! {
    /// [`LlmBody`]'s future: the body, then the next service.
    #[project = ReadingProj]
    pub enum Reading<'a, S, F> {
        Body {
            read: ReadFuture<'a>,
            head: Option<Head>,
            next: &'a S,
        },
        Calling { #[pin] next: F },
        Refused { refusal: Option<Refusal> },
    }
}

impl<'a, S, F> Future for Reading<'a, S, F>
where
    &'a S: Service<Inbound<ClientBody>, Response = Answer, Error = Refusal, Future = F>,
    F: Future<Output = Result<Answer, Refusal>>,
{
    type Output = Result<Answer, Refusal>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ReadingProj::Calling { next } => return next.poll(cx),
                ReadingProj::Refused { refusal } => match refusal.take() {
                    Some(refusal) => return Poll::Ready(Err(refusal)),
                    None => panic!("Reading polled after it completed"),
                },
                ReadingProj::Body { read, head, next } => {
                    let read = ready!(read.as_mut().poll(cx));
                    let Some((parts, peer, started)) = head.take() else {
                        panic!("Reading polled after it completed");
                    };
                    let body = match read {
                        Ok(body) => body,
                        Err(error) => return Poll::Ready(Err(Refusal::unrouted(error))),
                    };
                    let request = http::Request::from_parts(parts, body);
                    let next = next.call(Inbound {
                        request,
                        peer,
                        started,
                    });
                    self.set(Reading::Calling { next });
                }
            }
        }
    }
}
