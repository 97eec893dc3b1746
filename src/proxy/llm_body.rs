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
use std::task::{Context, Poll, ready};

use http::Method;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::ProxyError;
use super::read_ahead::BodyLimits;
use super::stack::{Answer, ClientBody, Inbound, Refusal, always_ready};
use crate::llm::{self, Api, LlmCall};

pub struct LlmBodyLayer {
    limits: BodyLimits,
}

impl LlmBodyLayer {
    pub fn new(limits: BodyLimits) -> LlmBodyLayer {
        LlmBodyLayer { limits }
    }
}

impl<S> Layer<S> for LlmBodyLayer {
    type Service = LlmBody<S>;

    fn layer(&self, next: S) -> LlmBody<S> {
        LlmBody {
            limits: self.limits.clone(),
            next,
        }
    }
}

pub struct LlmBody<S> {
    limits: BodyLimits,
    next: S,
}

/// Reads a call's body (with limits of its own, owned by the future) and
/// finds its fields.
async fn read(
    api: Api,
    limits: BodyLimits,
    body: Incoming,
    started: std::time::Instant,
) -> Result<ClientBody, ProxyError> {
    let (body, held) = limits.reader(started).read_whole(body).await?;
    let fields = llm::scan(&body).map_err(|e| ProxyError::BadField {
        field: e.field(),
        message: e.to_string(),
    })?;
    Ok(ClientBody::Call {
        call: LlmCall { api, body, fields },
        held,
    })
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
        let api = Api::at(request.uri().path());
        let (parts, body) = request.into_parts();
        let mut next = &this.next;
        match (api, parts.method == Method::POST) {
            (Some(api), true) => {
                // One Arc clone per OpenAI-style call, so the boxed read owns
                // what it needs.
                let limits = this.limits.clone();
                Reading::Body {
                    read: Box::pin(read(api, limits, body, started)),
                    head: Some((parts, peer, started)),
                    next,
                }
            }
            (Some(_), false) => Reading::Refused {
                refusal: Some(Refusal::unrouted(ProxyError::MethodNotAllowed("POST"))),
            },
            (None, _) => {
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
