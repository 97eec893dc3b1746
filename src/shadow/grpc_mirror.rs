//! Mirrors of gRPC `ModelInfer` calls: the call's message goes to a gRPC
//! endpoint of each staging version over its shared HTTP/2 connection, with
//! `model_version` naming the staging version where the call pinned one (a
//! mirror never names the production version to a staging server). Production's
//! answer is captured as an HTTP one is, its `grpc-status` read from the
//! trailers; both answers are compared as `ModelInferResponse` messages read as
//! OIP JSON ([`super::compare`]).

use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Version};

use super::ShadowService;
use super::capture::{self, CaptureSender};
use super::dispatch::{Mirror, Prepared, X_STAGEGATE_SHADOW, request_id};
use super::report::DropReason;
use crate::grpc::{frame, wire};
use crate::upstream::request_body::RequestBody;

/// `model_version`, field 2 of `ModelInferRequest`.
const MODEL_VERSION: u64 = 2;

impl ShadowService {
    /// Mirrors the prepared gRPC call `parts` whose first (and only) message,
    /// framed, is `message`; `pinned` says whether it names a version. Returns
    /// the sender of production's answer, or `None` when nothing was sent.
    pub fn dispatch_grpc(
        &self,
        mirror: Mirror,
        parts: &mut Parts,
        message: &Bytes,
        pinned: bool,
    ) -> Option<CaptureSender> {
        let Mirror { shadow, targets } = mirror;
        // Before the mirrors copy the headers, so both sides carry the same id.
        let request_id = request_id(parts);
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok());
        let limit = shadow.policy().max_body_bytes;
        let mut requests: Vec<Prepared> = Vec::with_capacity(targets.len());
        for (index, permit) in targets {
            let version = &shadow.versions[index];
            let Some(endpoint) = version.pick_grpc_endpoint().map(|e| e.begin()) else {
                super::dropped(version, DropReason::NoHealthyEndpoint);
                continue;
            };
            let body = if pinned {
                match repinned(message, encoding, limit, &version.version) {
                    Some(body) => body,
                    None => {
                        super::dropped(version, DropReason::BodyTooLarge);
                        continue;
                    }
                }
            } else {
                message.clone()
            };
            version.report.count_mirrored();
            let mut request = Request::new(RequestBody::whole(body, None));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = Version::HTTP_2;
            *request.headers_mut() = parts.headers.clone();
            request
                .headers_mut()
                .insert(X_STAGEGATE_SHADOW, HeaderValue::from_static("1"));
            requests.push((index, permit, (request, endpoint)));
        }
        if requests.is_empty() {
            return None;
        }
        let (sender, receiver) = capture::channel(limit, Instant::now());
        let task = self.task(shadow, request_id, parts.uri.path(), true);
        self.submit(task, requests, None, receiver)
            .then_some(sender)
    }
}

/// `message` (framed, maybe compressed) with its `model_version` set to
/// `version`, framed uncompressed; `None` if it cannot be read within `limit`.
fn repinned(message: &Bytes, encoding: Option<&str>, limit: usize, version: &str) -> Option<Bytes> {
    let head = frame::head(message, limit).ok()??;
    let body = message.get(frame::PREFIX..frame::PREFIX + head.length)?;
    let decoded = frame::decoded(head, body, encoding, limit).ok()?;
    let rewritten = wire::with_string(&decoded, MODEL_VERSION, version).ok()?;
    Some(Bytes::from(frame::framed(&rewritten)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::grpc::wire::Writer;

    fn infer_request(version: &str) -> Vec<u8> {
        Writer::new()
            .string(1, "adder")
            .string(MODEL_VERSION, version)
            .bytes(7, b"raw")
            .finish()
    }

    #[test]
    fn a_pinned_call_is_repinned_to_the_staging_version_even_when_compressed() {
        let plain = Bytes::from(frame::framed(&infer_request("1")));
        let repinned_plain = repinned(&plain, None, 1 << 20, "3").unwrap();
        let message = &repinned_plain[frame::PREFIX..];
        assert_eq!(wire::last_string(message, MODEL_VERSION), Ok(Some("3")));
        assert_eq!(wire::last_string(message, 1), Ok(Some("adder")));

        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&infer_request("1")).unwrap();
        let compressed = gzip.finish().unwrap();
        let mut framed = vec![1];
        framed.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        framed.extend_from_slice(&compressed);
        let repinned_gzip = repinned(&Bytes::from(framed), Some("gzip"), 1 << 20, "3").unwrap();
        assert_eq!(repinned_gzip[0], 0, "sent uncompressed");
        assert_eq!(
            wire::last_string(&repinned_gzip[frame::PREFIX..], MODEL_VERSION),
            Ok(Some("3"))
        );
    }
}
