//! [`Route`]: which version a request goes to. Applies the header limit,
//! resolves the request against the routing table current when it arrived (one
//! `ArcSwap` load) and takes a slot of the version's own admission limit if it
//! has one. Production requests of a model with active mirroring carry its
//! shadow along. Which of the version's endpoints is [`super::balance`]'s
//! choice, once the body has been read ahead.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use tower::{Layer, Service};

use super::ProxyError;
use super::stack::{Answer, Inbound, Refusal, Routed, Step, always_ready};
use crate::routing::{self, Router, ServedStage};
use crate::upstream::admission::Permit;
use hyper::body::Incoming;

pub struct RouteLayer {
    router: Arc<Router>,
    max_header_bytes: usize,
}

impl RouteLayer {
    pub fn new(router: Arc<Router>, max_header_bytes: usize) -> RouteLayer {
        RouteLayer {
            router,
            max_header_bytes,
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, next: S) -> Route<S> {
        Route {
            router: Arc::clone(&self.router),
            max_header_bytes: self.max_header_bytes,
            next,
        }
    }
}

pub struct Route<S> {
    router: Arc<Router>,
    max_header_bytes: usize,
    next: S,
}

impl<S> Route<S> {
    /// The routed request and the version's admission slot, if it has a limit.
    fn route(&self, inbound: Inbound) -> Result<(Routed<Incoming>, Option<Permit>), Refusal> {
        let Inbound {
            request,
            peer,
            started,
        } = inbound;
        check_header_size(request.headers(), self.max_header_bytes).map_err(Refusal::unrouted)?;
        let table = self.router.load();
        let resolved = routing::resolve(&table, request.uri().path(), request.headers())
            .map_err(|e| Refusal::unrouted(e.into()))?;
        let route = Arc::clone(resolved.route);
        let version_permit = match &route.admission {
            Some(admission) => match admission.try_admit() {
                Some(permit) => Some(permit),
                None => {
                    let error = ProxyError::VersionOverloaded {
                        limit: admission.limit(),
                    };
                    return Err(Refusal::on(route, error));
                }
            },
            None => None,
        };
        let shadow = resolved.model.shadow();
        // Readiness and metadata calls say nothing about a candidate's answers,
        // and clients often read only their status, which leaves production's
        // answer incomplete for a comparison.
        let mirrored =
            route.stage() == ServedStage::Production && shadow.is_active() && !resolved.status_call;
        let (parts, body) = request.into_parts();
        let routed = Routed {
            parts,
            body,
            target: (),
            peer,
            started,
            route,
            strip: resolved.strip,
            shadow: mirrored.then(|| Arc::clone(shadow)),
        };
        Ok((routed, version_permit))
    }
}

impl<'a, S> Service<Inbound> for &'a Route<S>
where
    &'a S: Service<Routed<Incoming>, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Step<<&'a S as Service<Routed<Incoming>>>::Future, Option<Permit>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this: &'a Route<S> = self;
        match this.route(inbound) {
            Ok((routed, version_permit)) => {
                let mut next = &this.next;
                Step::calling(next.call(routed), version_permit)
            }
            Err(refusal) => Step::refused(refusal),
        }
    }
}

/// hyper bounds the header buffer; this applies the configured limit exactly, on
/// HTTP/1.1 and HTTP/2 alike.
fn check_header_size(headers: &HeaderMap, limit: usize) -> Result<(), ProxyError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return Err(ProxyError::HeadersTooLarge { limit });
    }
    Ok(())
}
