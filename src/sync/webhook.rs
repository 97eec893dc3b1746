//! MLflow webhook deliveries: the signature and the timestamp are checked, and a
//! good delivery only triggers a poll (deliveries are unordered and may be lost,
//! so their content is never applied).
//!
//! MLflow signs `{delivery_id}.{timestamp}.{body}` with HMAC-SHA256 and sends
//! `X-MLflow-Signature: v1,<base64>`; the timestamp is in seconds.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::config::registry::Secret;

pub const SIGNATURE_HEADER: &str = "x-mlflow-signature";
pub const TIMESTAMP_HEADER: &str = "x-mlflow-timestamp";
pub const DELIVERY_ID_HEADER: &str = "x-mlflow-delivery-id";
/// Deliveries older (or further in the future) than this are refused as replays.
pub const MAX_AGE_S: i64 = 300;
const VERSION_PREFIX: &str = "v1,";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {TIMESTAMP_HEADER} is not a number of seconds: {0:?}")]
    BadTimestamp(String),
    #[error(
        "the delivery's timestamp is {age_s} s from now, more than {MAX_AGE_S} s: refused as a replay"
    )]
    Stale { age_s: i64 },
    #[error("the signature does not match the configured webhook secret")]
    BadSignature,
}

/// Checks a delivery received at `now_s` (seconds since the epoch).
pub fn verify(
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
    now_s: i64,
) -> Result<(), WebhookError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(WebhookError::MissingHeader(name))
    };
    let signatures = header(SIGNATURE_HEADER)?;
    let delivery_id = header(DELIVERY_ID_HEADER)?;
    let timestamp = header(TIMESTAMP_HEADER)?;
    let sent_s: i64 = timestamp
        .parse()
        .map_err(|_| WebhookError::BadTimestamp(timestamp.to_string()))?;
    let age_s = now_s.saturating_sub(sent_s);
    if age_s.abs() > MAX_AGE_S {
        return Err(WebhookError::Stale { age_s });
    }
    // Several signatures may be sent while a secret is being rotated.
    let matches = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix(VERSION_PREFIX))
        .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .any(|signature| {
            signer(secret, delivery_id, timestamp, body)
                .verify_slice(&signature)
                .is_ok()
        });
    if matches {
        Ok(())
    } else {
        Err(WebhookError::BadSignature)
    }
}

/// The `X-MLflow-Signature` value MLflow would send (for tests and tools).
pub fn sign(secret: &Secret, delivery_id: &str, timestamp: &str, body: &[u8]) -> String {
    let tag = signer(secret, delivery_id, timestamp, body)
        .finalize()
        .into_bytes();
    format!(
        "{VERSION_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

fn signer(secret: &Secret, delivery_id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(signature: &str, timestamp: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
        headers.insert(TIMESTAMP_HEADER, timestamp.parse().unwrap());
        headers.insert(DELIVERY_ID_HEADER, "d-1".parse().unwrap());
        headers
    }

    #[test]
    fn good_signatures_pass_and_everything_else_is_refused() {
        let secret = Secret::new("s3cret".into());
        let body = br#"{"entity":"model_version_alias","action":"created"}"#;
        let good = sign(&secret, "d-1", "1000", body);
        assert_eq!(verify(&secret, &headers(&good, "1000"), body, 1010), Ok(()));
        // With a second, unknown signature beside it (rotation).
        let both = format!("v1,AAAA {good}");
        assert_eq!(verify(&secret, &headers(&both, "1000"), body, 1000), Ok(()));

        let other = Secret::new("other".into());
        let forged = sign(&other, "d-1", "1000", body);
        assert_eq!(
            verify(&secret, &headers(&forged, "1000"), body, 1000),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(&secret, &headers(&good, "1000"), b"{}", 1000),
            Err(WebhookError::BadSignature),
            "a changed body"
        );
        assert_eq!(
            verify(&secret, &headers(&good, "1000"), body, 1000 + MAX_AGE_S + 1),
            Err(WebhookError::Stale {
                age_s: MAX_AGE_S + 1
            })
        );
        assert_eq!(
            verify(&secret, &headers(&good, "soon"), body, 1000),
            Err(WebhookError::BadTimestamp("soon".into()))
        );
        let mut missing = headers(&good, "1000");
        missing.remove(DELIVERY_ID_HEADER);
        assert_eq!(
            verify(&secret, &missing, body, 1000),
            Err(WebhookError::MissingHeader(DELIVERY_ID_HEADER))
        );
    }
}
