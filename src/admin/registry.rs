//! The external registry's endpoints: `GET /api/v1/registry` (the sync's state),
//! `POST /api/v1/registry/sync` (poll now), and `POST /api/v1/registry/webhook`,
//! which MLflow calls: it needs no bearer token, its signature is the auth.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::proxy::{json_error, json_response};
use crate::sync::webhook::{self, WebhookError};
use crate::sync::{SyncError, SyncHandle};

pub const WEBHOOK_PATH: &str = "/api/v1/registry/webhook";
/// MLflow's deliveries are small JSON documents, like admin request bodies.
const MAX_DELIVERY_BYTES: usize = 64 * 1024;

/// The answer when no `[registry]` is configured.
pub fn not_configured() -> Response<Bytes> {
    json_error(
        StatusCode::NOT_FOUND,
        "no external registry is configured (add a [registry] section)",
        "no_registry",
    )
}

pub fn status(sync: &SyncHandle) -> Response<Bytes> {
    json_response(StatusCode::OK, &sync.status().to_json(SystemTime::now()))
}

pub async fn sync_now(sync: &SyncHandle) -> Response<Bytes> {
    match sync.sync_now().await {
        Ok(status) => json_response(StatusCode::OK, &status.to_json(SystemTime::now())),
        Err(error @ SyncError::Stopped) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &error.to_string(),
            "shutting_down",
        ),
        Err(error) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &error.to_string(),
            "internal",
        ),
    }
}

/// A webhook delivery: checked, then a poll is asked for. The event itself is
/// not read: the poll that follows reads the registry as it is.
pub async fn webhook(sync: Option<&SyncHandle>, request: Request<Incoming>) -> Response<Bytes> {
    let Some((sync, secret)) = sync.and_then(|s| Some((s, s.webhook_secret()?))) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "the registry webhook is off: set [registry] webhook_secret_env to turn it on",
            "not_found",
        );
    };
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_DELIVERY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let message =
                format!("the delivery is not readable or over {MAX_DELIVERY_BYTES} bytes");
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, &message, "body_too_large");
        }
    };
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match webhook::verify(secret, &parts.headers, &body, now_s) {
        Ok(()) => {
            sync.poke();
            json_response(
                StatusCode::OK,
                &json!({"accepted": true, "sync": "requested"}),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "registry webhook refused");
            let code = match error {
                WebhookError::Stale { .. } => "stale_delivery",
                _ => "bad_signature",
            };
            json_error(StatusCode::UNAUTHORIZED, &error.to_string(), code)
        }
    }
}
