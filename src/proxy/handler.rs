//! One request, start to finish: admit, route, read the body ahead, forward
//! (the rest of the body streaming), answer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use tokio::time::timeout_at;

use super::body::ResponseBody;
use super::headers::{prepare_upstream_request, strip_hop_by_hop};
use super::read_ahead::{Ahead, ReadAhead};
use super::{Handler, Limits, ProxyError};
use crate::config::ShadowThreads;
use crate::routing::{self, EndpointGuard, Router, ServedStage, VersionRoute};
use crate::shadow::capture::CaptureSender;
use crate::shadow::{DropReason, Mirror, MirrorBody, ModelShadow, ShadowService};
use crate::telemetry::BodyBudgetMetrics;
use crate::upstream::UpstreamError;
use crate::upstream::admission::{Admission, Permit};
use crate::upstream::budget::BodyBudget;
use crate::upstream::client::{UpstreamClient, record_health, upstream_uri};
use crate::upstream::pool::{PoolKind, UpstreamBody};
use crate::upstream::request_body::{BodyCopy, BodyStage, Progress, RequestBody};

/// The data plane's shared state; one per gateway, behind an `Arc`.
pub struct Proxy {
    router: Arc<Router>,
    client: UpstreamClient,
    shadow: ShadowService,
    admission: Arc<Admission>,
    budget: Arc<BodyBudget>,
    limits: Limits,
}

/// Where a request goes: the route, how much of the path to strip, and the
/// model's mirroring when this request may be mirrored.
struct Routed {
    route: Arc<VersionRoute>,
    strip: usize,
    shadow: Option<Arc<ModelShadow>>,
}

/// The model server's response head and body, and what to release or feed as
/// the body streams.
struct Exchanged {
    parts: http::response::Parts,
    body: UpstreamBody,
    endpoint: EndpointGuard,
    capture: Option<CaptureSender>,
}

pub const X_STAGEGATE_MODEL: HeaderName = HeaderName::from_static("x-stagegate-model");
pub const X_STAGEGATE_VERSION: HeaderName = HeaderName::from_static("x-stagegate-version");
pub const X_STAGEGATE_STAGE: HeaderName = HeaderName::from_static("x-stagegate-stage");

/// An error, and the route it happened on if one was chosen.
type Failure = (ProxyError, Option<Arc<VersionRoute>>);

impl Proxy {
    /// The data plane, with its shadow threads started.
    pub fn start(
        router: Arc<Router>,
        limits: Limits,
        shadow_threads: ShadowThreads,
    ) -> std::io::Result<Proxy> {
        // A mirror task waits for production's answer at most as long as production
        // may take to give it.
        let primary_wait = limits.request_timeout + limits.request_timeout;
        let shadow_router = Arc::clone(&router);
        let shadow = ShadowService::start(
            shadow_threads,
            move || shadow_router.load().reap_idle_connections(PoolKind::Shadow),
            limits.connect_timeout,
            primary_wait,
            limits.ejection,
        )?;
        let budget = BodyBudget::new(limits.max_buffered_body_bytes);
        let metrics = BodyBudgetMetrics::new(router.telemetry());
        let sampled = Arc::clone(&budget);
        router.telemetry().sample_on_render(move || {
            let budget = &sampled;
            metrics.show(
                budget.held(),
                budget.peak(),
                budget.limit(),
                budget.refusals(),
            );
        });
        Ok(Proxy {
            router,
            client: UpstreamClient::new(PoolKind::Primary, limits.connect_timeout),
            shadow,
            admission: Admission::new(limits.max_concurrent_requests),
            budget,
            limits,
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Answers one request; never fails: errors become JSON error responses.
    pub async fn answer(
        &self,
        request: Request<Incoming>,
        peer: &HeaderValue,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let Some(permit) = self.admission.try_admit() else {
            let error = ProxyError::Overloaded {
                limit: self.admission.limit(),
            };
            return self.error_response(started, error, None);
        };
        match self.route_and_forward(started, request, peer, permit).await {
            Ok(response) => response,
            Err((error, route)) => self.error_response(started, error, route.as_ref()),
        }
    }

    async fn route_and_forward(
        &self,
        started: Instant,
        request: Request<Incoming>,
        peer: &HeaderValue,
        permit: Permit,
    ) -> Result<Response<ResponseBody>, Failure> {
        check_header_size(request.headers(), self.limits.max_header_bytes)
            .map_err(|e| (e, None))?;
        let routed = self.route(&request).map_err(|e| (e.into(), None))?;
        let version_permit = match &routed.route.admission {
            Some(admission) => match admission.try_admit() {
                Some(permit) => Some(permit),
                None => {
                    let error = ProxyError::VersionOverloaded {
                        limit: admission.limit(),
                    };
                    return Err((error, Some(routed.route)));
                }
            },
            None => None,
        };
        let exchanged = match self.exchange(started, &routed, request, peer).await {
            Ok(exchanged) => exchanged,
            Err(error) => return Err((error, Some(routed.route))),
        };
        let Exchanged {
            mut parts,
            body,
            endpoint,
            capture,
        } = exchanged;
        let route = routed.route;
        strip_hop_by_hop(&mut parts.headers);
        add_route_headers(&mut parts.headers, &route);
        record(&route, parts.status, started);
        let capture = capture.map(|sender| sender.start(parts.status.as_u16()));
        let idle = self.limits.request_timeout;
        let body = ResponseBody::upstream(
            body,
            [Some(permit), version_permit],
            endpoint,
            route,
            idle,
            capture,
        );
        Ok(Response::from_parts(parts, body))
    }

    /// Resolves the request against the current table. Production requests of a
    /// model with active mirroring carry its shadow along.
    fn route(&self, request: &Request<Incoming>) -> Result<Routed, routing::RouteError> {
        let table = self.router.load();
        let resolved = routing::resolve(&table, request.uri().path(), request.headers())?;
        let shadow = resolved.model.shadow();
        let mirrored = resolved.route.stage() == ServedStage::Production && shadow.is_active();
        Ok(Routed {
            route: Arc::clone(resolved.route),
            strip: resolved.strip,
            shadow: mirrored.then(|| Arc::clone(shadow)),
        })
    }

    /// Reads the request body ahead, sends the request to one of the route's
    /// endpoints (and its mirrors, if sampled) and waits for the response head,
    /// all before the request deadline; the rest of a long body streams on.
    async fn exchange(
        &self,
        started: Instant,
        routed: &Routed,
        request: Request<Incoming>,
        peer: &HeaderValue,
    ) -> Result<Exchanged, ProxyError> {
        let deadline = tokio::time::Instant::from_std(started + self.limits.request_timeout);
        let (mut parts, body) = request.into_parts();
        let ahead = ReadAhead {
            budget: &self.budget,
            max_body_bytes: self.limits.max_body_bytes,
            deadline,
            request_timeout: self.limits.request_timeout,
        }
        .read(body)
        .await?;
        let mirror = routed
            .shadow
            .as_ref()
            .and_then(|s| s.sample(&parts.method, ahead.known_len(), self.shadow.cpu()));

        let endpoint = routed
            .route
            .pick_endpoint()
            .ok_or_else(|| ProxyError::NoHealthyEndpoint {
                version: routed.route.version().to_string(),
            })?
            .begin();
        let client_authority = parts.uri.authority().cloned();
        let original = mirror.as_ref().map(|_| parts.uri.clone());
        parts.uri = upstream_uri(endpoint.endpoint(), &parts.uri, routed.strip).map_err(|e| {
            ProxyError::BadRequest(format!("request path cannot be forwarded: {e}"))
        })?;
        parts.version = Version::HTTP_11;
        let host = endpoint.endpoint().host_header();
        prepare_upstream_request(&mut parts.headers, host, peer, client_authority.as_ref());
        let handing_over = mirror.as_ref().map(|_| Instant::now());
        let (body, progress, mirror) = self.bodies(ahead, mirror);
        let capture = match (mirror, &original) {
            (Some((mirror, body)), Some(original)) => {
                self.shadow
                    .dispatch(mirror, &mut parts, original, routed.strip, body)
            }
            _ => None,
        };
        if let Some(started) = handing_over {
            // Time on a production thread, spent on mirroring: it counts against
            // the shadow's CPU share.
            self.shadow.cpu().charge(started.elapsed());
        }
        let upstream_request = Request::from_parts(parts, body);

        let sent = timeout_at(
            deadline,
            self.client.send(endpoint.endpoint(), upstream_request),
        )
        .await;
        let result = match sent {
            Ok(result) => result,
            Err(_elapsed) => Err(UpstreamError::Timeout {
                endpoint: endpoint.endpoint().url().to_string(),
                timeout: self.limits.request_timeout,
            }),
        };
        if result.is_err()
            && let Some(error) = progress.and_then(|p| self.client_fault(&p))
        {
            // The client's doing, not the model server's: its health is untouched.
            return Err(error);
        }
        record_health(endpoint.endpoint(), &result, &self.limits.ejection);
        let (parts, body) = result?.into_parts();
        Ok(Exchanged {
            parts,
            body,
            endpoint,
            capture,
        })
    }

    /// The body to forward, its progress if it streams, and the mirror with the
    /// body it sends. A mirror whose body the budget has no room for is dropped.
    fn bodies(
        &self,
        ahead: Ahead,
        mirror: Option<Mirror>,
    ) -> (
        RequestBody,
        Option<Arc<Progress>>,
        Option<(Mirror, MirrorBody)>,
    ) {
        match ahead {
            Ahead::Whole { bytes, held } => {
                let mirror = mirror.and_then(|mirror| {
                    let mut mirror_held = self.budget.empty();
                    if !mirror_held.grow(bytes.len()) {
                        mirror.abandon(DropReason::BodyBudget);
                        return None;
                    }
                    let body = MirrorBody::Whole {
                        bytes: bytes.clone(),
                        held: mirror_held,
                    };
                    Some((mirror, body))
                });
                (RequestBody::whole(bytes, held), None, mirror)
            }
            Ahead::Partial { head, held, rest } => {
                let expected = head.len() + usize::try_from(rest.size_hint().lower()).unwrap_or(0);
                let (copy, mirror) = match mirror {
                    Some(mirror) => {
                        let limit = mirror.body_limit();
                        let (copy, copied) =
                            BodyCopy::start(&head, limit, self.budget.empty(), expected);
                        (copy, Some((mirror, MirrorBody::Copy(copied))))
                    }
                    None => (None, None),
                };
                let max = self.limits.max_body_bytes;
                let (body, progress) = RequestBody::streamed(head, held, rest, max, copy);
                (body, Some(progress), mirror)
            }
        }
    }

    /// What the client did wrong, when a streamed body is why the exchange failed.
    fn client_fault(&self, progress: &Progress) -> Option<ProxyError> {
        match progress.stage() {
            BodyStage::TooLarge => Some(ProxyError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            }),
            BodyStage::ClientFailed => Some(ProxyError::BadRequest(
                "request body could not be read: the client stopped sending it".to_string(),
            )),
            BodyStage::WaitingForClient => {
                Some(ProxyError::ClientTimeout(self.limits.request_timeout))
            }
            BodyStage::Sending | BodyStage::Complete => None,
        }
    }

    fn error_response(
        &self,
        started: Instant,
        error: ProxyError,
        route: Option<&Arc<VersionRoute>>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = error.to_response().into_parts();
        match route {
            Some(route) => {
                if let Some(kind) = error.upstream_kind() {
                    route.metrics.upstream_error(kind);
                }
                add_route_headers(&mut parts.headers, route);
                record(route, parts.status, started);
            }
            None => self.router.telemetry().unrouted().record(parts.status),
        }
        Response::from_parts(parts, ResponseBody::local(body))
    }
}

impl Handler for Proxy {
    type Body = ResponseBody;

    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: &HeaderValue,
    ) -> Response<ResponseBody> {
        self.answer(request, peer).await
    }

    fn local_response(&self, response: Response<Bytes>) -> Response<ResponseBody> {
        self.router.telemetry().unrouted().record(response.status());
        response.map(ResponseBody::local)
    }
}

/// Counts an answered request on its route: metrics, and the live stats the
/// rollout gates read (a 5xx, the gateway's own 502/504 included, is an error).
fn record(route: &VersionRoute, status: StatusCode, started: Instant) {
    let elapsed = started.elapsed();
    route.metrics.requests.record(status);
    route.metrics.duration.record(elapsed.as_secs_f64());
    route.stats.record(status.is_server_error(), elapsed);
}

fn add_route_headers(headers: &mut HeaderMap, route: &VersionRoute) {
    headers.insert(X_STAGEGATE_MODEL, route.headers.model.clone());
    headers.insert(X_STAGEGATE_VERSION, route.headers.version.clone());
    headers.insert(X_STAGEGATE_STAGE, route.headers.stage.clone());
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
