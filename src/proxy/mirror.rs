//! [`Mirror`]: shadow testing's step on the request path. A production request
//! of a model with active mirroring is sampled (its methods, percentage, body
//! size and the shadow's CPU share decide); a sampled one is handed to the
//! shadow threads, which send it once its body is known and compare the answers.
//! The body is split here: forwarded whole, or streamed on with a copy kept for
//! the mirror (up to the shadow's `max_body_bytes`), every byte held reserved in
//! the body budget. Production's answer is captured for the comparison as it
//! streams back to the client.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::Body;
use tower::{Layer, Service};

use super::read_ahead::Ahead;
use super::stack::{Answer, Attach, Refusal, Routed, Step, Target, always_ready};
use crate::llm::LlmCall;
use crate::routing;
use crate::shadow::capture::CaptureSender;
use crate::shadow::compare::binary::HEADER_LENGTH as BINARY_HEADER_LENGTH;
use crate::shadow::{self, DropReason, MirrorBody, MirrorRewrite, ShadowService};
use crate::upstream::budget::BodyBudget;
use crate::upstream::request_body::{BodyCopy, Progress, RequestBody};

/// A request body as it goes to the model server.
pub struct Outgoing {
    pub body: RequestBody,
    /// How far a streamed body has come, to tell whose fault a failure was.
    pub progress: Option<Arc<Progress>>,
}

pub struct MirrorLayer {
    shadow: Arc<ShadowService>,
    budget: Arc<BodyBudget>,
    max_body_bytes: usize,
}

impl MirrorLayer {
    pub fn new(
        shadow: Arc<ShadowService>,
        budget: Arc<BodyBudget>,
        max_body_bytes: usize,
    ) -> MirrorLayer {
        MirrorLayer {
            shadow,
            budget,
            max_body_bytes,
        }
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, next: S) -> Mirror<S> {
        Mirror {
            shadow: Arc::clone(&self.shadow),
            budget: Arc::clone(&self.budget),
            max_body_bytes: self.max_body_bytes,
            next,
        }
    }
}

pub struct Mirror<S> {
    shadow: Arc<ShadowService>,
    budget: Arc<BodyBudget>,
    max_body_bytes: usize,
    next: S,
}

impl<S> Mirror<S> {
    /// The request with the body it forwards, and the capture of production's
    /// answer when a mirror was handed over.
    fn split(
        &self,
        routed: Routed<Ahead, Target>,
    ) -> (Routed<Outgoing, Target>, Option<CaptureSender>) {
        let (ahead, mut routed) = routed.take_body();
        let mirror = routed.shadow.as_ref().and_then(|model| {
            model.sample(&routed.parts.method, ahead.known_len(), self.shadow.cpu())
        });
        let Some(mirror) = mirror else {
            return (routed.with_body(self.unmirrored(ahead)), None);
        };
        let handing_over = Instant::now();
        let (outgoing, mirror) = self.bodies(ahead, mirror, routed.llm.as_ref().map(|l| &*l.call));
        let capture = mirror.and_then(|(mirror, body)| {
            // Taken out for the call (an empty URI costs nothing), put back after.
            let uri = std::mem::take(&mut routed.parts.uri);
            let rewrite = MirrorRewrite {
                strip: routed.strip,
                repin: routing::path::repin,
                llm: routed.llm.as_ref().map(|l| Arc::clone(&l.call)),
            };
            let capture = self
                .shadow
                .dispatch(mirror, &mut routed.parts, &uri, body, rewrite);
            routed.parts.uri = uri;
            capture
        });
        // Time on a production thread, spent on mirroring: it counts against
        // the shadow's CPU share.
        self.shadow.cpu().charge(handing_over.elapsed());
        (routed.with_body(outgoing), capture)
    }

    fn unmirrored(&self, ahead: Ahead) -> Outgoing {
        match ahead {
            Ahead::Whole { bytes, held } => Outgoing {
                body: RequestBody::whole(bytes, held),
                progress: None,
            },
            Ahead::Partial { head, held, rest } => {
                let (body, progress) =
                    RequestBody::streamed(head, held, rest, self.max_body_bytes, None);
                Outgoing {
                    body,
                    progress: Some(progress),
                }
            }
        }
    }

    /// The body to forward, and the mirror with the body it sends. A mirror
    /// whose body the budget has no room for is dropped.
    /// An OpenAI-style call's mirrors are rewritten from the client's body
    /// (`llm`), not from production's rewritten one.
    fn bodies(
        &self,
        ahead: Ahead,
        mirror: shadow::Mirror,
        llm: Option<&LlmCall>,
    ) -> (Outgoing, Option<(shadow::Mirror, MirrorBody)>) {
        match ahead {
            Ahead::Whole { bytes, held } => {
                let mirrored = llm.map_or(&bytes, |call| &call.body).clone();
                let mut mirror_held = self.budget.empty();
                let mirror = if mirror_held.grow(mirrored.len()) {
                    let body = MirrorBody::Whole {
                        bytes: mirrored,
                        held: mirror_held,
                    };
                    Some((mirror, body))
                } else {
                    mirror.abandon(DropReason::BodyBudget);
                    None
                };
                let outgoing = Outgoing {
                    body: RequestBody::whole(bytes, held),
                    progress: None,
                };
                (outgoing, mirror)
            }
            Ahead::Partial { head, held, rest } => {
                let expected = head.len() + usize::try_from(rest.size_hint().lower()).unwrap_or(0);
                let limit = mirror.body_limit();
                let (copy, copied) = BodyCopy::start(&head, limit, self.budget.empty(), expected);
                let (body, progress) =
                    RequestBody::streamed(head, held, rest, self.max_body_bytes, copy);
                let outgoing = Outgoing {
                    body,
                    progress: Some(progress),
                };
                (outgoing, Some((mirror, MirrorBody::Copy(copied))))
            }
        }
    }
}

impl<'a, S> Service<Routed<Ahead, Target>> for &'a Mirror<S>
where
    &'a S: Service<Routed<Outgoing, Target>, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Step<<&'a S as Service<Routed<Outgoing, Target>>>::Future, Option<CaptureSender>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, routed: Routed<Ahead, Target>) -> Self::Future {
        let this: &'a Mirror<S> = self;
        let (routed, capture) = this.split(routed);
        let mut next = &this.next;
        Step::calling(next.call(routed), capture)
    }
}

impl Attach for CaptureSender {
    fn attach(self, answer: &mut Answer) {
        let binary_header = answer.headers().get(BINARY_HEADER_LENGTH).cloned();
        let capture = self.start(answer.status().as_u16(), binary_header);
        answer.body_mut().capture(capture);
    }
}
