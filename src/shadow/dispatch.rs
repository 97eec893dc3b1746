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
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::ModelShadow;
use super::capture::{self, CaptureReceiver, CaptureSender, Captured};
use super::compare::binary::HEADER_LENGTH as BINARY_HEADER_LENGTH;
use super::cpu_share::CpuShare;
use super::report::{DropReason, ErrorKind};
use super::runtime::ShadowRuntime;
use super::worker::{CompareQueue, Job};
use crate::config::ShadowThreads;
use crate::grpc::status::{Code, grpc_status, http_equivalent};
use crate::llm::{LlmCall, ModelRef};
use crate::telemetry::ShadowResult;
use crate::upstream::admission::Permit;
use crate::upstream::budget::Reservation;
use crate::upstream::client::{UpstreamClient, record_health, upstream_uri};
use crate::upstream::health::EjectionPolicy;
use crate::upstream::pool::PoolKind;
use crate::upstream::request_body::{Copied, RequestBody};
use crate::upstream::{EndpointGuard, UpstreamError};

/// Marks a mirrored request, so model servers can tell it from live traffic.
pub const X_STAGEGATE_SHADOW: HeaderName = HeaderName::from_static("x-stagegate-shadow");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// How soon a mirror that has its answer first looks again for production's,
/// doubling up to the last interval: comparisons are at most that late.
const FIRST_PRIMARY_POLL: Duration = Duration::from_millis(1);
const LAST_PRIMARY_POLL: Duration = Duration::from_millis(50);

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
    /// How long a mirror task waits for production's answer to be complete.
    primary_wait: Duration,
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
            primary_wait: self.primary_wait,
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

/// A shadow's answer.
struct Answered {
    status: u16,
    binary_header: Option<HeaderValue>,
    body: Bytes,
    latency: Duration,
    /// To the first body bytes (a streamed answer's first event).
    first_frame: Option<Duration>,
}

enum Outcome {
    Answered(Answered),
    Failed(ErrorKind),
    TooLarge,
}

impl ShadowService {
    /// Starts the shadow threads (see [`super::runtime`]); they also run
    /// `reap_pools`, which closes idle shadow connections of the current
    /// endpoints (the shadow pools' sockets belong to those threads).
    pub fn start(
        threads: ShadowThreads,
        reap_pools: impl Fn() + Send + 'static,
        connect_timeout: Duration,
        primary_wait: Duration,
        ejection: EjectionPolicy,
    ) -> io::Result<ShadowService> {
        let cpu = Arc::new(CpuShare::new(threads.cpu_share.get()));
        let runtime = ShadowRuntime::start(threads, Arc::clone(&cpu), reap_pools)?;
        Ok(ShadowService {
            client: UpstreamClient::new(PoolKind::Shadow, connect_timeout),
            queue: CompareQueue::start(threads.priority, Arc::clone(&cpu))?,
            runtime,
            cpu,
            threads_gone: AtomicBool::new(false),
            primary_wait,
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

pub(super) struct MirrorTask {
    pub(super) shadow: Arc<ModelShadow>,
    pub(super) client: UpstreamClient,
    pub(super) queue: CompareQueue,
    pub(super) request_id: String,
    pub(super) path: String,
    pub(super) primary_wait: Duration,
    pub(super) ejection: EjectionPolicy,
    /// Mirrors of a gRPC call: sent over HTTP/2, answers read as gRPC.
    pub(super) grpc: bool,
    /// An OpenAI-style call, whose body each mirror gets rewritten for its
    /// version's served model name (and asking for a final usage event).
    pub(super) llm: Option<Arc<LlmCall>>,
}

impl MirrorTask {
    /// Sends the mirrors, waits for production's answer, settles each pair. The
    /// in-flight slots are held to the end, so `max_in_flight` bounds everything
    /// a mirror holds, its answer included.
    /// `body` is `None` when every request has its own already.
    pub(super) async fn run(
        self,
        mut requests: Vec<Prepared>,
        body: Option<MirrorBody>,
        primary: CaptureReceiver,
    ) {
        // The body's hold on the budget lasts until the mirrors are done.
        let mut _held = None;
        if let Some(body) = body {
            let (bytes, held) = match self.body(body).await {
                Ok(body) => body,
                Err(reason) => {
                    for (index, _permit, _request) in requests {
                        super::dropped(&self.shadow.versions[index], reason);
                    }
                    return;
                }
            };
            _held = Some(held);
            for (index, _, (request, _)) in &mut requests {
                let body = match &self.llm {
                    Some(call) => self.llm_body(call, *index, request.headers_mut()),
                    None => bytes.clone(),
                };
                *request.body_mut() = RequestBody::whole(body, None);
            }
        }
        let (outcomes, _permits) = self.exchange_all(requests).await;
        let primary = wait_for(primary, self.primary_wait).await;
        for (index, outcome) in outcomes {
            self.settle(index, outcome, primary.as_ref());
        }
    }

    /// The body to send, once the request's has ended; why not otherwise.
    async fn body(&self, body: MirrorBody) -> Result<(Bytes, Reservation), DropReason> {
        let copy = match body {
            MirrorBody::Whole { bytes, held } => return Ok((bytes, held)),
            MirrorBody::Copy(copy) => copy,
        };
        match wait_for(copy, self.primary_wait).await {
            Some(Copied::Whole { bytes, held }) => Ok((bytes, held)),
            Some(Copied::TooLarge) => Err(DropReason::BodyTooLarge),
            Some(Copied::OverBudget) => Err(DropReason::BodyBudget),
            // The request failed or took too long to arrive: production's answer
            // will not be complete either.
            None => Err(DropReason::PrimaryIncomplete),
        }
    }

    /// Sends every mirror at once; returns the outcomes and the slots they hold.
    async fn exchange_all(
        &self,
        mut requests: Vec<Prepared>,
    ) -> (Vec<(usize, Outcome)>, Vec<Permit>) {
        if requests.len() == 1 {
            let Some((index, permit, (request, endpoint))) = requests.pop() else {
                return (Vec::new(), Vec::new());
            };
            let outcome = self.exchange(index, request, &endpoint).await;
            return (vec![(index, outcome)], vec![permit]);
        }
        let mut set = JoinSet::new();
        for (index, permit, (request, endpoint)) in requests {
            let task = self.clone_for();
            set.spawn(async move {
                let outcome = task.exchange(index, request, &endpoint).await;
                (index, outcome, permit)
            });
        }
        let (mut outcomes, mut permits) = (Vec::new(), Vec::new());
        while let Some(done) = set.join_next().await {
            if let Ok((index, outcome, permit)) = done {
                outcomes.push((index, outcome));
                permits.push(permit);
            }
        }
        (outcomes, permits)
    }

    /// An OpenAI-style call's body for the staging version at `index`, with
    /// `Content-Length` to match.
    fn llm_body(&self, call: &LlmCall, index: usize, headers: &mut HeaderMap) -> Bytes {
        let model = ModelRef::parse(call.model()).model;
        let served = self.shadow.versions[index].served_model(model);
        // The headers are production's, whose body may have been rewritten to
        // another length: the mirror's length is always set from its own body.
        let body = call
            .body_for(served, true)
            .map_or_else(|| call.body.clone(), |(body, _)| body);
        if headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        body
    }

    fn clone_for(&self) -> MirrorTask {
        MirrorTask {
            shadow: Arc::clone(&self.shadow),
            client: self.client.clone(),
            queue: self.queue.clone(),
            request_id: self.request_id.clone(),
            path: self.path.clone(),
            primary_wait: self.primary_wait,
            ejection: self.ejection,
            grpc: self.grpc,
            llm: self.llm.clone(),
        }
    }

    /// The status an answer is compared by: the HTTP status, or for gRPC the
    /// HTTP status its `grpc-status` stands for (in the trailers, or in the head
    /// of a trailers-only answer).
    fn status_of(&self, http: StatusCode, head: Option<Code>, trailers: Option<&HeaderMap>) -> u16 {
        let code = self
            .grpc
            .then(|| trailers.and_then(grpc_status).or(head))
            .flatten();
        code.map_or(http, |code| http_equivalent(code, http))
            .as_u16()
    }

    async fn exchange(
        &self,
        index: usize,
        request: Request<RequestBody>,
        endpoint: &EndpointGuard,
    ) -> Outcome {
        let policy = self.shadow.policy();
        let timeout = Duration::from_millis(policy.timeout_ms);
        let started = Instant::now();
        let exchange = async {
            let target = Arc::clone(endpoint.endpoint());
            let sent = if self.grpc {
                self.client.send_multiplexed(target, request).await
            } else {
                self.client.send(target, request).await
            };
            // A dead staging endpoint is ejected like a production one, so mirrors
            // to it are dropped cheaply instead of paying a failed connect each.
            if is_health_evidence(&sent) {
                record_health(endpoint.endpoint(), &sent, &self.ejection);
            }
            let response = sent.map_err(error_kind)?;
            let http_status = response.status();
            let head_status = grpc_status(response.headers());
            let binary_header = response.headers().get(BINARY_HEADER_LENGTH).cloned();
            let first_frame = std::sync::OnceLock::new();
            let body = Limited::new(response.into_body(), policy.max_body_bytes)
                .map_frame(|frame| {
                    if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                        first_frame.get_or_init(|| started.elapsed());
                    }
                    frame
                })
                .collect()
                .await;
            match body {
                Ok(collected) => Ok(Outcome::Answered(Answered {
                    status: self.status_of(http_status, head_status, collected.trailers()),
                    binary_header,
                    body: collected.to_bytes(),
                    latency: started.elapsed(),
                    first_frame: first_frame.get().copied(),
                })),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    Ok(Outcome::TooLarge)
                }
                Err(_) => Err(ErrorKind::Protocol),
            }
        };
        let outcome = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(kind)) => Outcome::Failed(kind),
            Err(_elapsed) => Outcome::Failed(ErrorKind::Timeout),
        };
        let version = &self.shadow.versions[index];
        if let Outcome::Answered(answered) = &outcome {
            version
                .metrics
                .latency
                .record(answered.latency.as_secs_f64());
        }
        outcome
    }

    /// Counts the outcome and queues the pair for comparison when both answers are
    /// there.
    fn settle(&self, index: usize, outcome: Outcome, primary: Option<&Captured>) {
        let version = &self.shadow.versions[index];
        let drop_pair = |reason| {
            version.report.count_dropped(reason);
            version.metrics.request(ShadowResult::Ok);
        };
        let answered = match outcome {
            Outcome::Failed(kind) => {
                version.report.count_error(kind);
                let result = if kind == ErrorKind::Timeout {
                    ShadowResult::Timeout
                } else {
                    ShadowResult::Error
                };
                version.metrics.request(result);
                return;
            }
            Outcome::TooLarge => return drop_pair(DropReason::AnswerTooLarge),
            Outcome::Answered(answered) => answered,
        };
        let Some(primary) = primary else {
            return drop_pair(DropReason::PrimaryIncomplete);
        };
        let Some(primary_body) = primary.body.clone() else {
            return drop_pair(DropReason::AnswerTooLarge);
        };
        version.metrics.request(ShadowResult::Ok);
        let job = Job {
            shadow: Arc::clone(&self.shadow),
            target: index,
            request_id: self.request_id.clone(),
            path: self.path.clone(),
            primary_status: primary.status,
            primary_binary_header: primary.binary_header.clone(),
            primary_body,
            primary_latency: primary.latency,
            primary_first_frame: primary.first_frame,
            shadow_status: answered.status,
            shadow_binary_header: answered.binary_header,
            shadow_body: answered.body,
            shadow_latency: answered.latency,
            shadow_first_frame: answered.first_frame,
            grpc: self.grpc,
        };
        if !self.queue.submit(job) {
            version.report.count_dropped(DropReason::CompareQueueFull);
        }
    }
}

/// Whether a mirror's exchange says something about its endpoint's health: an
/// answer, or a refused or broken connection, does. A timeout does not: on a
/// saturated gateway the idle-priority shadow threads can be held off between
/// connecting and sending, so a healthy server can miss a mirror's deadline, and
/// that must not eject an endpoint whose version also takes canary traffic (whose
/// own requests still judge it).
fn is_health_evidence<B>(sent: &Result<Response<B>, UpstreamError>) -> bool {
    !matches!(
        sent,
        Err(UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. })
    )
}

/// What a production thread sends (its captured answer, a streamed body's copy),
/// once sent; `None` if it was dropped unsent or took longer than `wait`. Polled
/// with a growing interval rather than awaited, so a production thread never has
/// to wake a task on the shadow threads (that would go through a lock they share).
async fn wait_for<T>(mut primary: oneshot::Receiver<T>, wait: Duration) -> Option<T> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut interval = FIRST_PRIMARY_POLL;
    loop {
        match primary.try_recv() {
            Ok(captured) => return Some(captured),
            Err(oneshot::error::TryRecvError::Closed) => return None,
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep_until((now + interval).min(deadline)).await;
        interval = (interval * 2).min(LAST_PRIMARY_POLL);
    }
}

fn error_kind(error: UpstreamError) -> ErrorKind {
    match error {
        UpstreamError::Unreachable { .. } | UpstreamError::ConnectTimeout { .. } => {
            ErrorKind::Connect
        }
        UpstreamError::Timeout { .. } => ErrorKind::Timeout,
        UpstreamError::Failed { .. } => ErrorKind::Protocol,
    }
}
