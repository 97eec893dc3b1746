//! Sending mirrors. [`ShadowService::dispatch`] builds one request per target from
//! the already prepared production request (same method, path, headers; the
//! same body `Bytes`, or a copy of a streamed body once it has ended), then
//! hands one task to the shadow threads that sends them on the endpoints' shadow
//! pools, waits for production's captured answer, and queues the pairs for
//! comparison.
//!
//! Isolation: the task is detached from the request; every shadow exchange has
//! its own timeout; a slot of the model's in-flight budget is held until the pair
//! is queued or dropped; shadow connections live in a pool of their own, and only
//! what the staging server did (an answer, a refused or broken connection), not a
//! timeout, counts towards its endpoint's health.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Uri};
use tokio::sync::oneshot;

use super::ModelShadow;
use super::capture::{self, CaptureReceiver, CaptureSender};
use super::cpu_share::CpuShare;
use super::mirror_task::{MirrorTask, MirrorTimeouts};
use super::report::DropReason;
use super::runtime::ShadowRuntime;
use super::worker::CompareQueue;
use crate::config::ShadowThreads;
use crate::llm::LlmCall;
use crate::upstream::EndpointGuard;
use crate::upstream::admission::Permit;
use crate::upstream::budget::Reservation;
use crate::upstream::client::{UpstreamClient, upstream_uri};
use crate::upstream::health::EjectionPolicy;
use crate::upstream::pool::PoolKind;
use crate::upstream::request_body::{Copied, RequestBody};

/// Marks a mirrored request, so model servers can tell it from live traffic.
pub const X_STAGEGATE_SHADOW: HeaderName = HeaderName::from_static("x-stagegate-shadow");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request chosen for mirroring, holding its in-flight slots.
pub struct Mirror {
    pub(super) shadow: Arc<ModelShadow>,
    pub(super) targets: Vec<(usize, Permit)>,
}

/// The body a mirror sends.
pub enum MirrorBody {
    /// The request's whole body, shared with production's request; `held`
    /// counts the mirror's hold on it in the gateway's body budget.
    Whole { bytes: Bytes, held: Reservation },
    /// The copy of a streamed body, sent when the body has ended.
    Copy(oneshot::Receiver<Copied>),
}

impl Mirror {
    pub(super) fn new(shadow: Arc<ModelShadow>, targets: Vec<(usize, Permit)>) -> Mirror {
        Mirror { shadow, targets }
    }

    /// The most body bytes a mirror may carry (the shadow's `max_body_bytes`).
    pub fn body_limit(&self) -> usize {
        self.shadow.policy().max_body_bytes
    }

    /// Gives the mirror up before anything is sent, counting why.
    pub fn abandon(self, reason: DropReason) {
        for (index, _permit) in self.targets {
            super::dropped(&self.shadow.versions[index], reason);
        }
    }
}

/// What the data plane needs to mirror: the shadow threads, the client of the
/// endpoints' shadow connection pools and the comparison queue. One per gateway.
pub struct ShadowService {
    runtime: ShadowRuntime,
    cpu: Arc<CpuShare>,
    /// Set once a mirror found the shadow threads gone, to say so once.
    threads_gone: AtomicBool,
    client: UpstreamClient,
    queue: CompareQueue,
    timeouts: MirrorTimeouts,
    ejection: EjectionPolicy,
}

impl ShadowService {
    /// A mirror task for `shadow`'s targets, to run on the shadow threads.
    pub(super) fn task(
        &self,
        shadow: Arc<ModelShadow>,
        request_id: String,
        path: &str,
        grpc: bool,
    ) -> MirrorTask {
        MirrorTask {
            shadow,
            client: self.client.clone(),
            queue: self.queue.clone(),
            request_id,
            path: path.to_string(),
            timeouts: self.timeouts,
            ejection: self.ejection,
            grpc,
            llm: None,
        }
    }

    /// Hands `task` to the shadow threads; whether they took it.
    pub(super) fn submit(
        &self,
        task: MirrorTask,
        requests: Vec<Prepared>,
        body: Option<MirrorBody>,
        primary: CaptureReceiver,
    ) -> bool {
        if self
            .runtime
            .submit(Box::pin(task.run(requests, body, primary)))
            .is_ok()
        {
            return true;
        }
        // Only if the shadow thread died (it ends with the gateway otherwise):
        // the mirror is lost, though counted as mirrored; say so once.
        if !self.threads_gone.swap(true, Ordering::Relaxed) {
            tracing::error!("the shadow threads are gone; no more mirrors are sent");
        }
        false
    }
}

impl ShadowService {
    /// Starts the shadow threads (see [`super::runtime`]); they also run
    /// `reap_pools`, which closes idle shadow connections of the current
    /// endpoints (the shadow pools' sockets belong to those threads).
    pub fn start(
        threads: ShadowThreads,
        reap_pools: impl Fn() + Send + 'static,
        timeouts: MirrorTimeouts,
        ejection: EjectionPolicy,
    ) -> io::Result<ShadowService> {
        let cpu = Arc::new(CpuShare::new(threads.cpu_share.get()));
        let runtime = ShadowRuntime::start(threads, Arc::clone(&cpu), reap_pools)?;
        Ok(ShadowService {
            client: UpstreamClient::new(PoolKind::Shadow, timeouts.connect),
            queue: CompareQueue::start(threads.priority, Arc::clone(&cpu))?,
            runtime,
            cpu,
            threads_gone: AtomicBool::new(false),
            timeouts,
            ejection,
        })
    }

    /// The shadow threads' CPU share, which [`ModelShadow::sample`] asks.
    pub fn cpu(&self) -> &CpuShare {
        &self.cpu
    }

    /// Mirrors the prepared production request `parts` (whose URI is still the
    /// client's `original`) to the mirror's targets. Gives the request an
    /// `x-request-id` if it has none, so both sides' logs can be matched. Returns
    /// the sender of production's answer, to attach to its response body, or
    /// `None` when no target has an endpoint to take the mirror (nothing is sent,
    /// and production's answer need not be captured).
    pub fn dispatch(
        &self,
        mirror: Mirror,
        parts: &mut Parts,
        original: &Uri,
        body: MirrorBody,
        rewrite: MirrorRewrite,
    ) -> Option<CaptureSender> {
        let MirrorRewrite { strip, repin, llm } = rewrite;
        let shadow = mirror.shadow;
        let reachable: Vec<_> = mirror
            .targets
            .into_iter()
            .filter_map(|(index, permit)| {
                let version = &shadow.versions[index];
                let endpoint = version.pick_endpoint().map(|e| e.begin());
                // The production request's URI was built from the same path, so
                // a failure here is not expected; it drops the mirror all the same.
                let uri = endpoint.as_ref().and_then(|e| {
                    let uri = mirror_uri(original, &version.version, repin)?;
                    upstream_uri(e.endpoint(), &uri, strip).ok()
                });
                match (endpoint, uri) {
                    (Some(endpoint), Some(uri)) => Some((index, permit, endpoint, uri)),
                    _ => {
                        super::dropped(version, DropReason::NoHealthyEndpoint);
                        None
                    }
                }
            })
            .collect();
        if reachable.is_empty() {
            return None;
        }
        let request_id = request_id(parts);
        let started = Instant::now();
        let policy = shadow.policy();
        let (sender, receiver) = capture::channel(policy.max_body_bytes, started);
        let requests: Vec<Prepared> = reachable
            .into_iter()
            .map(|(index, permit, endpoint, uri)| {
                // Counted when handed over: the shadow threads send it as soon as
                // they get CPU, holding its in-flight slot until then.
                shadow.versions[index].report.count_mirrored();
                let request = shadow_request(&endpoint, parts, uri);
                (index, permit, (request, endpoint))
            })
            .collect();
        let mut task = self.task(shadow, request_id, original.path(), false);
        task.llm = llm;
        self.submit(task, requests, Some(body), receiver)
            .then_some(sender)
    }
}

/// The client's URI with its version pin naming `version` instead, if it pins
/// one; `None` if the rewritten URI is invalid.
fn mirror_uri(original: &Uri, version: &str, repin: Repin) -> Option<Uri> {
    let repinned = original
        .path_and_query()
        .and_then(|pq| repin(pq.as_str(), version));
    match repinned {
        Some(repinned) => Uri::try_from(repinned).ok(),
        None => Some(original.clone()),
    }
}

/// How each mirror differs from the production request, besides its endpoint.
pub struct MirrorRewrite {
    /// Leading path bytes the model server does not see.
    pub strip: usize,
    pub repin: Repin,
    /// An OpenAI-style call, whose `model` each mirror names its version's
    /// served name in.
    pub llm: Option<Arc<LlmCall>>,
}

/// Rewrites a request's path and query to pin `version` instead of the one it
/// pins; `None` when it pins none. Routing knows the path forms, so the data
/// plane passes its own (`routing::path::repin`) in.
pub type Repin = fn(&str, &str) -> Option<String>;

pub(super) fn request_id(parts: &mut Parts) -> String {
    if let Some(id) = parts
        .headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
    {
        return id.to_string();
    }
    let id = format!("sg-{:016x}", rand::random::<u64>());
    if let Ok(value) = HeaderValue::from_str(&id) {
        parts.headers.insert(X_REQUEST_ID, value);
    }
    id
}

/// The mirror of one request for the staging endpoint `endpoint`, at `uri`; its
/// body is set once it is known.
fn shadow_request(endpoint: &EndpointGuard, parts: &Parts, uri: Uri) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
        .headers_mut()
        .insert(HOST, endpoint.endpoint().host_header().clone());
    request
        .headers_mut()
        .insert(X_STAGEGATE_SHADOW, HeaderValue::from_static("1"));
    request
}

pub(super) type Prepared = (usize, Permit, (Request<RequestBody>, EndpointGuard));
