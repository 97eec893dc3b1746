//! One request's mirrors, run on the shadow threads: each sent to its staging
//! endpoint (an OpenAI-style call's body rewritten for the version's served
//! model), its answer read whole within the mirror's time limits, production's
//! captured answer awaited, and each pair queued for comparison or counted as
//! dropped. The in-flight slots are held to the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::ModelShadow;
use super::capture::{CaptureReceiver, Captured, Frames};
use super::compare::binary::HEADER_LENGTH as BINARY_HEADER_LENGTH;
use super::dispatch::{MirrorBody, Prepared};
use super::report::{DropReason, ErrorKind};
use super::worker::{CompareQueue, Job};
use crate::grpc::status::{Code, grpc_status, http_equivalent};
use crate::llm::{LlmCall, ModelRef};
use crate::telemetry::ShadowResult;
use crate::upstream::admission::Permit;
use crate::upstream::budget::Reservation;
use crate::upstream::client::{HeadDeadline, UpstreamClient, record_health};
use crate::upstream::health::EjectionPolicy;
use crate::upstream::request_body::{Copied, RequestBody};
use crate::upstream::{EndpointGuard, UpstreamError};

/// How soon a mirror that has its answer first looks again for production's,
/// doubling up to the last interval: comparisons are at most that late.
const FIRST_PRIMARY_POLL: Duration = Duration::from_millis(1);
const LAST_PRIMARY_POLL: Duration = Duration::from_millis(50);

/// How long mirrors may take, the same for every model; one per gateway.
#[derive(Debug, Clone, Copy)]
pub struct MirrorTimeouts {
    /// To connect to a staging endpoint.
    pub connect: Duration,
    /// How long a mirror that has its answer waits for production's to be
    /// complete (and a mirror of a streamed body for the body's end).
    pub primary_wait: Duration,
    /// An OpenAI-style call's mirror: to its answer's head, and then the
    /// longest gap in its body, as for production (instead of the shadow's
    /// `timeout_ms` for the whole exchange: a generation takes as long as it
    /// needs).
    pub llm_first_byte: Duration,
    pub llm_idle: Duration,
}

/// When one exchange stops waiting.
#[derive(Debug, Clone, Copy)]
enum Patience {
    /// Head and body by one deadline.
    Whole(tokio::time::Instant),
    /// The head by a deadline, then each body frame within `idle` of the last.
    Generation {
        head: tokio::time::Instant,
        idle: Duration,
    },
}

impl Patience {
    fn head(self) -> tokio::time::Instant {
        match self {
            Patience::Whole(deadline) => deadline,
            Patience::Generation { head, .. } => head,
        }
    }

    fn next_frame(self) -> tokio::time::Instant {
        match self {
            Patience::Whole(deadline) => deadline,
            Patience::Generation { idle, .. } => tokio::time::Instant::now() + idle,
        }
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

pub(super) struct MirrorTask {
    pub(super) shadow: Arc<ModelShadow>,
    pub(super) client: UpstreamClient,
    pub(super) queue: CompareQueue,
    pub(super) request_id: String,
    pub(super) path: String,
    pub(super) timeouts: MirrorTimeouts,
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
            let mut held = held;
            requests.retain_mut(|(index, _permit, (request, _))| {
                let body = match &self.llm {
                    Some(call) => self.llm_body(call, *index, request.headers_mut(), &mut held),
                    None => Some(bytes.clone()),
                };
                let Some(body) = body else {
                    super::dropped(&self.shadow.versions[*index], DropReason::BodyBudget);
                    return false;
                };
                *request.body_mut() = RequestBody::whole(body, None);
                true
            });
            _held = Some(held);
        }
        let (outcomes, _permits) = self.exchange_all(requests).await;
        let primary = wait_for(primary, self.timeouts.primary_wait).await;
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
        match wait_for(copy, self.timeouts.primary_wait).await {
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
    /// `Content-Length` to match; a rewritten copy is added to `held`, and
    /// `None` when the body budget has no room for it.
    fn llm_body(
        &self,
        call: &LlmCall,
        index: usize,
        headers: &mut HeaderMap,
        held: &mut Reservation,
    ) -> Option<Bytes> {
        let model = ModelRef::parse(call.model()).model;
        let served = self.shadow.versions[index].served_model(model);
        let body = match call.body_for(served, true) {
            Some((rewritten, _)) => held.grow(rewritten.len()).then_some(rewritten)?,
            None => call.body.clone(),
        };
        // The headers are production's, whose body may have been rewritten to
        // another length: the mirror's length is always set from its own body.
        if headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Some(body)
    }

    fn clone_for(&self) -> MirrorTask {
        MirrorTask {
            shadow: Arc::clone(&self.shadow),
            client: self.client.clone(),
            queue: self.queue.clone(),
            request_id: self.request_id.clone(),
            path: self.path.clone(),
            timeouts: self.timeouts,
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
        let started = Instant::now();
        let patience = self.patience(started);
        let outcome = match self.answer(request, endpoint, started, patience).await {
            Ok(outcome) => outcome,
            Err(kind) => Outcome::Failed(kind),
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

    fn patience(&self, started: Instant) -> Patience {
        let started = tokio::time::Instant::from_std(started);
        match self.llm {
            Some(_) => Patience::Generation {
                head: started + self.timeouts.llm_first_byte,
                idle: self.timeouts.llm_idle,
            },
            None => {
                Patience::Whole(started + Duration::from_millis(self.shadow.policy().timeout_ms))
            }
        }
    }

    /// Sends one mirror and reads its answer whole, as `patience` allows.
    async fn answer(
        &self,
        request: Request<RequestBody>,
        endpoint: &EndpointGuard,
        started: Instant,
        patience: Patience,
    ) -> Result<Outcome, ErrorKind> {
        let target = Arc::clone(endpoint.endpoint());
        let head = patience.head();
        let sent = match self.grpc {
            true => tokio::time::timeout_at(head, self.client.send_multiplexed(target, request))
                .await
                .map_err(|_elapsed| ErrorKind::Timeout)?,
            false => {
                let timeout = head.saturating_duration_since(started.into());
                let deadline = HeadDeadline { at: head, timeout };
                self.client.send(target, request, deadline).await
            }
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
        let limit = self.shadow.policy().max_body_bytes;
        let mut body = Limited::new(response.into_body(), limit);
        let (mut frames, mut trailers, mut first_frame) = (Frames::default(), None, None);
        loop {
            let frame = match tokio::time::timeout_at(patience.next_frame(), body.frame()).await {
                Err(_elapsed) => return Err(ErrorKind::Timeout),
                Ok(None) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(error))) if error.is::<http_body_util::LengthLimitError>() => {
                    return Ok(Outcome::TooLarge);
                }
                Ok(Some(Err(_))) => return Err(ErrorKind::Protocol),
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    first_frame.get_or_insert_with(|| started.elapsed());
                    frames.0.push(data);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok(Outcome::Answered(Answered {
            status: self.status_of(http_status, head_status, trailers.as_ref()),
            binary_header,
            body: frames.join(),
            latency: started.elapsed(),
            first_frame,
        }))
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
