//! The admin listener: liveness (`/healthz`), readiness (`/readyz`), Prometheus
//! metrics (`/metrics`), the JSON admin API under `/api/v1` ([`api`]), guarded
//! by bearer tokens ([`auth`]), and the status page for people at `/` ([`page`]),
//! which reads that API with the token the person gives it.
//!
//! Order of checks on `/api/v1`: where the call comes from ([`origin`]: 403 for a
//! page from another origin, or a tokenless API addressed by a non-loopback name),
//! authentication (401), then the path (404), then the method (405: changes are
//! POST only, reads GET only). The one exception is the
//! registry webhook, which MLflow calls and authenticates by its signature.

pub mod api;
pub mod auth;
mod origin;
mod page;
mod registry;
mod rollout;
mod routes;
mod shadow;
mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::proxy::{Handler, json_error, method_not_allowed};
use crate::registry::Published;
use crate::registry::Registry;
use crate::rollout::{RemoteStats, RolloutReadings};
use crate::sync::SyncHandle;
use api::Api;
use auth::Tokens;
pub use routes::{API_PREFIX, ApiRoute, Miss};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin listener's shared state.
pub struct Admin {
    published: Arc<Published>,
    ready: Arc<AtomicBool>,
    tokens: Arc<ArcSwap<Tokens>>,
    sync: Option<SyncHandle>,
    /// With a shared store: whether etcd answers (for `/readyz`).
    store_up: Option<tokio::sync::watch::Receiver<bool>>,
    api: Api,
}

impl Admin {
    /// `ready` is true while the gateway accepts traffic and false once it drains;
    /// `tokens` may be swapped by a config reload; `sync` is the external
    /// registry's sync, when one is configured.
    pub fn new(
        published: Arc<Published>,
        registry: Registry,
        readings: RolloutReadings,
        ready: Arc<AtomicBool>,
        tokens: Arc<ArcSwap<Tokens>>,
        sync: Option<SyncHandle>,
    ) -> Admin {
        Admin {
            api: Api::new(Arc::clone(&published), registry, readings, sync.clone()),
            published,
            ready,
            tokens,
            sync,
            store_up: None,
        }
    }

    /// Makes `/readyz` say "degraded" while `store_up` is false.
    pub fn with_store_health(
        mut self,
        store_up: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Admin {
        self.store_up = store_up;
        self
    }

    /// Merges the other replicas' shadow reports into the ones shown.
    pub fn with_remote(mut self, remote: RemoteStats) -> Admin {
        self.api.remote = remote;
        self
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Bytes> {
        let path = request.uri().path();
        // Authenticated by MLflow's signature, not by a bearer token.
        if path == registry::WEBHOOK_PATH {
            return match *request.method() {
                Method::POST => registry::webhook(self.sync.as_ref(), request).await,
                _ => method_not_allowed("POST"),
            };
        }
        if path == API_PREFIX || path.starts_with("/api/") {
            return self.api(request).await;
        }
        if let Some(file) = page::serve(path) {
            return match *request.method() {
                Method::GET => file,
                _ => method_not_allowed("GET"),
            };
        }
        match (request.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Bytes::from(self.published.telemetry().render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(PROMETHEUS_TEXT),
                );
                response
            }
            (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET"),
            (_, path) => json_error(
                StatusCode::NOT_FOUND,
                &format!("no admin endpoint at {path}"),
                "not_found",
            ),
        }
    }

    async fn api(&self, request: Request<Incoming>) -> Response<Bytes> {
        let tokens = self.tokens.load();
        if let Err(refused) = origin::check(request.headers(), tokens.is_empty()) {
            return json_error(StatusCode::FORBIDDEN, refused.message(), refused.code());
        }
        let Some(caller) = tokens.authenticate(request.headers().get(header::AUTHORIZATION)) else {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token: send Authorization: Bearer <token>",
                "unauthorized",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        };
        let path = request.uri().path();
        let route = match ApiRoute::parse(request.method(), path) {
            Ok(route) => route,
            Err(Miss::NotFound) => {
                let message = format!("no admin API endpoint at {path}");
                return json_error(StatusCode::NOT_FOUND, &message, "not_found");
            }
            Err(Miss::MethodNotAllowed(allowed)) => return method_not_allowed(allowed),
        };
        self.api.answer(route, &caller, request).await
    }

    fn readiness(&self) -> Response<Bytes> {
        let store_down = self.store_up.as_ref().is_some_and(|up| !*up.borrow());
        if self.ready.load(Ordering::Acquire) && store_down {
            // Still ready: the data plane serves the last table without etcd.
            text(
                StatusCode::OK,
                "ready\ndegraded: etcd does not answer; serving the last routing table, changes are refused\n",
            )
        } else if self.ready.load(Ordering::Acquire) {
            text(StatusCode::OK, "ready\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
    }
}

impl Handler for Admin {
    type Body = Full<Bytes>;

    async fn handle(
        &self,
        request: Request<Incoming>,
        _peer: &HeaderValue,
    ) -> Response<Full<Bytes>> {
        self.answer(request).await.map(Full::new)
    }

    fn local_response(&self, response: Response<Bytes>) -> Response<Full<Bytes>> {
        response.map(Full::new)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
