//! The admin listener: liveness (`/healthz`), readiness (`/readyz`) and
//! Prometheus metrics (`/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::proxy::{Handler, json_error};
use crate::routing::Router;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin API's shared state.
pub struct Admin {
    router: Arc<Router>,
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// `ready` is true while the gateway accepts traffic and false once it drains.
    pub fn new(router: Arc<Router>, ready: Arc<AtomicBool>) -> Admin {
        Admin { router, ready }
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Bytes> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Bytes::from(self.router.telemetry().render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(PROMETHEUS_TEXT),
                );
                response
            }
            (_, "/healthz" | "/readyz" | "/metrics") => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is allowed here",
                "method_not_allowed",
            ),
            (_, path) => json_error(
                StatusCode::NOT_FOUND,
                &format!("no admin endpoint at {path}"),
                "not_found",
            ),
        }
    }

    fn readiness(&self) -> Response<Bytes> {
        if self.ready.load(Ordering::Acquire) {
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
        self.answer(&request).map(Full::new)
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
