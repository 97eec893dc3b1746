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

use http::HeaderValue;
use http::header::CONTENT_LENGTH;

use super::ProxyError;
use super::stack::{Answer, ClientBody, Inbound, LlmRoute, Refusal, Routed, Step, always_ready};
use crate::llm::LlmCall;
use crate::routing::{self, Resolved, RouteError, Router, RoutingTable, ServedStage, VersionRoute};
use crate::upstream::admission::Permit;
use crate::upstream::budget::Reservation;

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
    fn route(
        &self,
        inbound: Inbound<ClientBody>,
    ) -> Result<(Routed<ClientBody>, Option<Permit>), Refusal> {
        let Inbound {
            request,
            peer,
            started,
        } = inbound;
        check_header_size(request.headers(), self.max_header_bytes).map_err(Refusal::unrouted)?;
        let table = self.router.load();
        let (mut parts, body) = request.into_parts();
        let read = match &body {
            ClientBody::Call { call, .. } => Some(call),
            ClientBody::Unread(_) | ClientBody::Read { .. } => None,
        };
        let resolved = match read {
            Some(call) => resolve_llm(&table, call, &parts.headers),
            None => routing::resolve(&table, parts.uri.path(), &parts.headers),
        }
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
        let (body, llm) = match body {
            ClientBody::Call { call, held } => {
                let (body, call) = for_version(call, held, &route, &mut parts.headers)
                    .map_err(|e| Refusal::on(Arc::clone(&route), e))?;
                (body, Some(call))
            }
            other => (other, None),
        };
        let routed = Routed {
            parts,
            body,
            target: (),
            peer,
            started,
            route,
            strip: resolved.strip,
            shadow: mirrored.then(|| Arc::clone(shadow)),
            llm,
        };
        Ok((routed, version_permit))
    }
}

impl<'a, S> Service<Inbound<ClientBody>> for &'a Route<S>
where
    &'a S: Service<Routed<ClientBody>, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Step<<&'a S as Service<Routed<ClientBody>>>::Future, Option<Permit>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, inbound: Inbound<ClientBody>) -> Self::Future {
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

/// Resolves an OpenAI-style call by the model its body names.
fn resolve_llm<'t>(
    table: &'t RoutingTable,
    call: &LlmCall,
    headers: &HeaderMap,
) -> Result<Resolved<'t>, RouteError> {
    let (model, route) = routing::resolve_named(table, call.model(), headers, call.user())?;
    Ok(Resolved {
        model,
        route,
        strip: 0,
        status_call: false,
    })
}

/// The call's body for the version chosen: its `model` set to the name the
/// version is served under when that differs from what the client wrote (a pin
/// in the name always does), a streamed call asking for the final usage event
/// (to count tokens), `Content-Length` to match. The client's body is
/// kept with the call, for mirrors to be rewritten from, so the rewritten copy
/// is held in the budget beside it.
fn for_version(
    call: LlmCall,
    mut held: Option<Reservation>,
    route: &VersionRoute,
    headers: &mut HeaderMap,
) -> Result<(ClientBody, LlmRoute), ProxyError> {
    let mut usage_added = false;
    let bytes = match call.body_for(route.served_model(), true) {
        None => call.body.clone(),
        Some((rewritten, added)) => {
            usage_added = added;
            if let Some(held) = held.as_mut()
                && !held.grow(rewritten.len())
            {
                return Err(ProxyError::BodyBudgetFull {
                    limit: held.budget_limit(),
                });
            }
            if headers.contains_key(CONTENT_LENGTH) {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
            }
            rewritten
        }
    };
    let call = Arc::new(call);
    Ok((
        ClientBody::Read { bytes, held },
        LlmRoute { call, usage_added },
    ))
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
