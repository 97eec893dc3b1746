//! The request path as a stack of tower services, outermost first:
//!
//! | service | owns |
//! |---|---|
//! | [`Respond`](super::respond::Respond) | turns every refusal into a JSON answer, counted on its route or as unrouted |
//! | [`ServerCalls`](super::server_calls::ServerCalls) | the Open Inference Protocol's server-level calls (health, metadata, model list), answered by the gateway |
//! | [`Admit`](super::admit::Admit) | gateway-wide admission: past `max_concurrent_requests`, 503 `overloaded` at once (load shedding) |
//! | [`LlmBody`](super::llm_body::LlmBody) | an OpenAI-style call's body, read whole under the body budget to route by its `model` |
//! | [`Route`](super::route::Route) | the header limit, resolution against the current table (by path, or by an OpenAI-style call's `model`, rewritten for the version's served name), the version's own admission |
//! | [`ReadAhead`](super::read_ahead::ReadAhead) | the body's first bytes, under the body budget, before the deadline (408 if the client is slow) |
//! | [`Balance`](super::balance::Balance) | the endpoint, the URI there, the headers the model server (and any mirror) gets |
//! | [`Mirror`](super::mirror::Mirror) | sampling for shadow testing, handing the mirror over, the body split for it |
//! | [`Forward`](super::forward::Forward) | the model server's answer head before the deadline (504), the endpoint's health; an OpenAI-style answer's measurements ([`super::llm_meter`]) |
//!
//! Each request type carries what the services above learnt: [`Inbound`], then
//! [`Routed`] with its body as read so far and, once picked, its [`Target`]. Every service answers
//! `Result<Answer, Refusal>` below `Respond`, which answers everything.
//!
//! Hand-written where tower's middleware does something else:
//! - Admission: tower's `ConcurrencyLimit` frees its slot when the response
//!   future completes, but a request here holds its slot until the last byte of
//!   a streamed answer; with `LoadShed` it would also allocate a semaphore
//!   permit per request for what is one atomic add here.
//! - Timeouts: tower's `Timeout` knows only that time ran out. The step that
//!   waits knows whom to blame: a client slow to send its body (408, the
//!   endpoint's health untouched) or a model server slow to answer (504, counted
//!   against it). So read-ahead and forwarding each wait until the request's
//!   deadline, and the response body has its own idle timeout.
//!
//! The services are called by shared reference (`&Foo<S>` is the `Service`):
//! none keeps state per call, so the one stack a gateway builds serves every
//! request without cloning each layer's `Arc`s per request. Every service is
//! always ready, since refusals are immediate and nothing queues, so `call` is
//! made without `poll_ready`; the stack is closed (middleware that needs
//! readiness, such as a queue, does not belong in it). The futures are
//! hand-written; inside them two pieces of `async` code are boxed, which stable
//! Rust cannot name: reading a body ahead (skipped for a body that came
//! complete) and the client's exchange. The whole forwarding state boxed
//! instead (2.3 KB) was past glibc's per-thread cache and cost a slow
//! allocation per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::{ProxyError, ResponseBody};
use crate::llm::LlmCall;
use crate::routing::{EndpointGuard, VersionRoute};
use crate::shadow::ModelShadow;
use crate::upstream::budget::Reservation;

/// What every service of the stack answers.
pub type Answer = Response<ResponseBody>;

/// A request as the stack receives it; once an OpenAI-style call's body has
/// been read to route by it, with a [`ClientBody`].
pub struct Inbound<B = Incoming> {
    pub request: Request<B>,
    /// The client's IP address as a header value.
    pub peer: HeaderValue,
    pub started: Instant,
}

/// A request's body as routing gets it and passes it on.
pub enum ClientBody {
    /// Still with the client (read ahead later, or streamed).
    Unread(Incoming),
    /// An OpenAI-style call's body, read whole to route by the `model` it
    /// names; `held` reserves its bytes in the body budget.
    Call {
        call: LlmCall,
        held: Option<Reservation>,
    },
    /// Read whole: the bytes to forward (a call's body, rewritten for the
    /// version chosen) and their reservation.
    Read {
        bytes: Bytes,
        held: Option<Reservation>,
    },
}

/// Why a request was not forwarded, and the route it had, if it got one.
pub struct Refusal {
    pub error: ProxyError,
    pub route: Option<Arc<VersionRoute>>,
}

impl Refusal {
    pub fn unrouted(error: ProxyError) -> Refusal {
        Refusal { error, route: None }
    }

    pub fn on(route: Arc<VersionRoute>, error: ProxyError) -> Refusal {
        Refusal {
            error,
            route: Some(route),
        }
    }
}

/// A request resolved to a version; `B` is its body as far as it has been read,
/// `T` where it goes once an endpoint is picked ([`Target`]).
pub struct Routed<B, T = ()> {
    /// Its head; the URI stays the client's (mirrors are sent at their own).
    pub parts: Parts,
    pub body: B,
    pub target: T,
    /// The client's IP address as a header value.
    pub peer: HeaderValue,
    pub started: Instant,
    pub route: Arc<VersionRoute>,
    /// Leading path bytes the model server does not see.
    pub strip: usize,
    /// The model's mirroring, when this request may be mirrored.
    pub shadow: Option<Arc<ModelShadow>>,
    /// An OpenAI-style call (its body may be rewritten for the version's
    /// served model name; mirrors are rewritten from the client's).
    pub llm: Option<LlmRoute>,
}

/// An OpenAI-style call on its way.
pub struct LlmRoute {
    /// As the client sent it.
    pub call: Arc<LlmCall>,
    /// The gateway asked for the final usage event, to count tokens; the
    /// client did not, so it is left out of the answer.
    pub usage_added: bool,
}

/// The endpoint a request goes to, and the URI it is sent at there.
pub struct Target {
    pub endpoint: EndpointGuard,
    pub uri: Uri,
}

impl<B, T> Routed<B, T> {
    /// The body, and the request without it.
    pub fn take_body(self) -> (B, Routed<(), T>) {
        let Routed {
            parts,
            body,
            target,
            peer,
            started,
            route,
            strip,
            shadow,
            llm,
        } = self;
        let rest = Routed {
            parts,
            body: (),
            target,
            peer,
            started,
            route,
            strip,
            shadow,
            llm,
        };
        (body, rest)
    }
}

impl<T> Routed<(), T> {
    /// The request with its body read further.
    pub fn with_body<C>(self, body: C) -> Routed<C, T> {
        Routed {
            parts: self.parts,
            body,
            target: self.target,
            peer: self.peer,
            started: self.started,
            route: self.route,
            strip: self.strip,
            shadow: self.shadow,
            llm: self.llm,
        }
    }
}

impl<B> Routed<B> {
    /// The request with the endpoint it goes to.
    pub fn with_target(self, target: Target) -> Routed<B, Target> {
        Routed {
            parts: self.parts,
            body: self.body,
            target,
            peer: self.peer,
            started: self.started,
            route: self.route,
            strip: self.strip,
            shadow: self.shadow,
            llm: self.llm,
        }
    }
}

/// What a service puts into the answer once the services below it have given
/// one (a slot it holds until the body ends, a capture to feed).
pub trait Attach {
    fn attach(self, answer: &mut Answer);
}

pin_project! {
    /// The future of a service that answers or refuses at once, or calls the
    /// next one and attaches something to its answer.
    #[project = StepProj]
    pub enum Step<F, A> {
        Answered { answer: Option<Answer> },
        Refused { refusal: Option<Refusal> },
        Calling { #[pin] next: F, attach: Option<A> },
    }
}

impl<F, A> Step<F, A> {
    pub fn answered(answer: Answer) -> Step<F, A> {
        Step::Answered {
            answer: Some(answer),
        }
    }

    pub fn refused(refusal: Refusal) -> Step<F, A> {
        Step::Refused {
            refusal: Some(refusal),
        }
    }

    pub fn calling(next: F, attach: A) -> Step<F, A> {
        Step::Calling {
            next,
            attach: Some(attach),
        }
    }
}

impl<F, A> Future for Step<F, A>
where
    F: Future<Output = Result<Answer, Refusal>>,
    A: Attach,
{
    type Output = Result<Answer, Refusal>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StepProj::Answered { answer } => match answer.take() {
                Some(answer) => Poll::Ready(Ok(answer)),
                None => panic!("Step polled after it completed"),
            },
            StepProj::Refused { refusal } => match refusal.take() {
                Some(refusal) => Poll::Ready(Err(refusal)),
                None => panic!("Step polled after it completed"),
            },
            StepProj::Calling { next, attach } => {
                let mut answered = ready!(next.poll(cx));
                if let (Ok(answer), Some(attach)) = (answered.as_mut(), attach.take()) {
                    attach.attach(answer);
                }
                Poll::Ready(answered)
            }
        }
    }
}

/// Nothing to attach.
impl Attach for () {
    fn attach(self, _answer: &mut Answer) {}
}

impl<A: Attach> Attach for Option<A> {
    fn attach(self, answer: &mut Answer) {
        if let Some(attach) = self {
            attach.attach(answer);
        }
    }
}

/// Every service here is ready at all times; see the module doc.
pub fn always_ready(_cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
    Poll::Ready(Ok(()))
}
