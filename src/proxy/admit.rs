//! [`Admit`]: gateway-wide admission and load shedding. At most
//! `max_concurrent_requests` are in flight; past that a request is refused at
//! once with 503 `overloaded`, never queued. The slot is held until the answer's
//! last byte is sent (see [`super::stack`] for why this is not tower's
//! `ConcurrencyLimit`).

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ProxyError;
use super::stack::{Answer, Attach, Inbound, Refusal, Step, always_ready};
use crate::upstream::admission::{Admission, Permit};

pub struct AdmitLayer {
    admission: Arc<Admission>,
}

impl AdmitLayer {
    pub fn new(admission: Arc<Admission>) -> AdmitLayer {
        AdmitLayer { admission }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, next: S) -> Admit<S> {
        Admit {
            admission: Arc::clone(&self.admission),
            next,
        }
    }
}

pub struct Admit<S> {
    admission: Arc<Admission>,
    next: S,
}

impl<'a, S> Service<Inbound> for &'a Admit<S>
where
    &'a S: Service<Inbound, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Step<<&'a S as Service<Inbound>>::Future, Permit>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this: &'a Admit<S> = self;
        let Some(permit) = this.admission.try_admit() else {
            let limit = this.admission.limit();
            return Step::refused(Refusal::unrouted(ProxyError::Overloaded { limit }));
        };
        let mut next = &this.next;
        Step::calling(next.call(inbound), permit)
    }
}

impl Attach for Permit {
    fn attach(self, answer: &mut Answer) {
        answer.body_mut().hold(self);
    }
}
