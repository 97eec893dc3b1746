//! The load generator. One worker task per connection, each owning one keep-alive
//! HTTP/1 connection (hyper's low-level `client::conn`, so there is no pool to hide
//! how many connections are really open) and its own [`Recorder`].
//!
//! Closed loop: each worker sends its next request as soon as the previous response
//! has been read. Open loop (`rate`): requests follow the timetable of
//! [`crate::schedule`], and latency is measured from the *scheduled* time, so a
//! stalled server is charged for the requests it kept waiting (the coordinated
//! omission correction of wrk2).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Method, Uri};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep, timeout_at};

use crate::conn::{Conn, RequestTemplate, connect, send};
use crate::report::{ErrorKind, Recorder, Report, ReportError};
use crate::schedule::{Bounds, Pacer, Schedule};

/// Pause after a failed connect in a closed loop, so a dead server is not hammered
/// with connects as fast as the kernel can refuse them.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Longest accepted warmup, duration or timeout: far beyond any real run, and short
/// enough that no instant computed from them can overflow.
const MAX_SPAN: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unsupported URL {0}: only http:// is supported")]
    Scheme(Uri),
    #[error("URL {0} has no host")]
    NoHost(Uri),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} resolved to no address")]
    NoAddress(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("invalid Host header for {0}")]
    HostHeader(Uri),
    #[error("at least one connection is needed")]
    NoConnections,
    #[error("the rate must be a positive number of requests per second, not {0}")]
    Rate(f64),
    #[error("the {0} is too long (at most a year)")]
    TooLong(&'static str),
    #[error("cannot start the pacing thread: {0}")]
    Pacer(#[source] io::Error),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("a load worker failed: {0}")]
    Worker(#[from] JoinError),
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long (warmup not included).
    Duration(Duration),
    /// After this many measured requests, successful or not.
    Requests(u64),
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub url: Uri,
    pub method: Method,
    /// Sent as given, plus `Host` and a JSON `Content-Type` when they are missing.
    pub headers: HeaderMap,
    /// Headers set to a fresh random value on every request (a user id for sticky
    /// canary routing, say), replacing any of the same name in `headers`.
    pub random_headers: Vec<HeaderName>,
    pub body: Bytes,
    pub connections: usize,
    pub stop: Stop,
    /// Requests sent (or scheduled) before this are not recorded.
    pub warmup: Duration,
    /// Total requests per second for an open loop; `None` for a closed loop.
    pub rate: Option<f64>,
    /// Per request, from sending to the end of the response body.
    pub timeout: Duration,
}

impl LoadOptions {
    /// The command line's defaults.
    pub fn new(url: Uri) -> Self {
        LoadOptions {
            url,
            method: Method::POST,
            headers: HeaderMap::new(),
            random_headers: Vec::new(),
            body: default_body(),
            connections: 64,
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(2),
            rate: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A ~1 KB inference request in the KServe V1 shape, `{"instances": [[...]]}`.
pub fn default_body() -> Bytes {
    let features: Vec<String> = (0..126u32)
        .map(|i| format!("{:.4}", f64::from((i * 37) % 1000) / 1000.0))
        .collect();
    Bytes::from(format!("{{\"instances\": [[{}]]}}", features.join(", ")))
}

/// Runs the load described by `options` and reports what it measured.
pub async fn run(options: LoadOptions) -> Result<Report, LoadError> {
    validate(&options)?;
    let addr = resolve(&options.url).await?;
    let request = RequestTemplate::new(&options)?;
    // Connect before the clock starts, so the first requests are not charged for it;
    // a failure here is retried (and counted) by the worker's first request.
    let connections = preconnect(addr, options.connections, options.timeout).await?;
    let start = Instant::now();
    let measured_from = start + options.warmup;
    let (run_end, limit) = match options.stop {
        Stop::Duration(duration) => (Some(measured_from + duration), None),
        Stop::Requests(count) => (None, Some(count)),
    };
    let pacing = options
        .rate
        .map(|rate| start_pacing(rate, &options, start))
        .transpose()?;
    let shared = Arc::new(Shared {
        request,
        addr,
        timeout: options.timeout,
        start,
        warmup: options.warmup,
        run_end,
        limit,
        claimed: AtomicU64::new(0),
        pacing,
    });
    // A JoinSet, so that dropping this future stops the workers too.
    let mut workers = JoinSet::new();
    for (index, conn) in connections.into_iter().enumerate() {
        let worker = Worker {
            shared: Arc::clone(&shared),
            conn,
            recorder: Recorder::new()?,
        };
        workers.spawn(worker.run(index));
    }
    let mut recorded = Recorder::new()?;
    let mut last_finish = measured_from;
    while let Some(joined) = workers.join_next().await {
        let (recorder, finished) = joined?;
        recorded.merge(&recorder)?;
        last_finish = last_finish.max(finished);
    }
    let end = run_end.unwrap_or(last_finish);
    Ok(Report {
        recorded,
        duration: end.saturating_duration_since(measured_from),
        connections: options.connections,
        rate: options.rate,
    })
}

fn validate(options: &LoadOptions) -> Result<(), LoadError> {
    if options.connections == 0 {
        return Err(LoadError::NoConnections);
    }
    if let Some(rate) = options
        .rate
        .filter(|rate| !(rate.is_finite() && *rate > 0.0))
    {
        return Err(LoadError::Rate(rate));
    }
    let duration = match options.stop {
        Stop::Duration(duration) => duration,
        Stop::Requests(_) => Duration::ZERO,
    };
    let spans = [
        ("warmup", options.warmup),
        ("duration", duration),
        ("timeout", options.timeout),
    ];
    match spans.into_iter().find(|&(_, span)| span > MAX_SPAN) {
        Some((name, _)) => Err(LoadError::TooLong(name)),
        None => Ok(()),
    }
}

async fn resolve(url: &Uri) -> Result<SocketAddr, LoadError> {
    if url.scheme_str() != Some("http") {
        return Err(LoadError::Scheme(url.clone()));
    }
    let host = url.host().ok_or_else(|| LoadError::NoHost(url.clone()))?;
    let host = format!("{host}:{}", url.port_u16().unwrap_or(80));
    let first = tokio::net::lookup_host(&host)
        .await
        .map_err(|source| LoadError::Resolve {
            host: host.clone(),
            source,
        })?
        .next();
    first.ok_or(LoadError::NoAddress(host))
}

async fn preconnect(
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Option<Conn>>, LoadError> {
    let mut pending = JoinSet::new();
    for index in 0..count {
        pending.spawn(async move {
            let conn = tokio::time::timeout(timeout, connect(addr)).await;
            (index, conn.ok().flatten())
        });
    }
    let mut connections: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
    while let Some(joined) = pending.join_next().await {
        let (index, conn) = joined?;
        connections[index] = conn;
    }
    Ok(connections)
}

/// What every worker reads; only `claimed` is written, once per request, and only
/// in a closed loop with a request count.
struct Shared {
    request: RequestTemplate,
    addr: SocketAddr,
    timeout: Duration,
    start: Instant,
    warmup: Duration,
    run_end: Option<Instant>,
    limit: Option<u64>,
    claimed: AtomicU64,
    /// Present in an open loop.
    pacing: Option<Pacing>,
}

impl Shared {
    fn past_end(&self, at: Instant) -> bool {
        self.run_end.is_some_and(|end| at >= end)
    }

    /// Takes one of the measured requests of a request-count run.
    fn claim(&self) -> bool {
        self.limit
            .is_none_or(|limit| self.claimed.fetch_add(1, Ordering::Relaxed) < limit)
    }

    /// The instant a request sent `now` is given up at: its timeout, or the end of
    /// the run if that comes first.
    fn cutoff(&self, now: Instant) -> Cutoff {
        let timeout = now + self.timeout;
        match self.run_end {
            Some(end) if end < timeout => Cutoff {
                at: end,
                run_ends: true,
            },
            _ => Cutoff {
                at: timeout,
                run_ends: false,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cutoff {
    at: Instant,
    run_ends: bool,
}

impl Cutoff {
    /// A request cut off by the end of the run is not the server's fault: it is
    /// dropped, not counted as an error.
    fn elapsed(self, kind: ErrorKind) -> Outcome {
        if self.run_ends {
            Outcome::Abandoned
        } else {
            Outcome::Failed(kind)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failed(ErrorKind),
    Abandoned,
}

/// An open loop's timetable and the pacer releasing it.
struct Pacing {
    schedule: Schedule,
    pacer: Arc<Pacer>,
    /// Slots before this one fall in the warmup.
    first_measured: u64,
}

impl Drop for Pacing {
    fn drop(&mut self) {
        // The run is over (or was abandoned): the pacing thread need not finish
        // the timetable.
        self.pacer.stop();
    }
}

fn start_pacing(rate: f64, options: &LoadOptions, start: Instant) -> Result<Pacing, LoadError> {
    let schedule = Schedule {
        rate,
        connections: options.connections,
    };
    // Slots are numbered globally, so the warmup and a request count are slot ranges.
    let first_measured = schedule.first_slot_after(options.warmup);
    let bounds = match options.stop {
        Stop::Duration(duration) => Bounds {
            end_slot: None,
            end: Some(options.warmup + duration),
        },
        Stop::Requests(count) => Bounds {
            end_slot: Some(first_measured.saturating_add(count)),
            end: None,
        },
    };
    let pacer = Arc::new(Pacer::new(options.connections));
    let thread_pacer = Arc::clone(&pacer);
    let start = start.into_std();
    thread::Builder::new()
        .name("loadtest-pacer".to_string())
        .spawn(move || thread_pacer.run(schedule, start, bounds))
        .map_err(LoadError::Pacer)?;
    Ok(Pacing {
        schedule,
        pacer,
        first_measured,
    })
}

struct Worker {
    shared: Arc<Shared>,
    conn: Option<Conn>,
    recorder: Recorder,
}

impl Worker {
    async fn run(mut self, index: usize) -> (Recorder, Instant) {
        let shared = Arc::clone(&self.shared);
        match &shared.pacing {
            None => self.closed_loop().await,
            Some(pacing) => self.open_loop(index, pacing).await,
        }
        (self.recorder, Instant::now())
    }

    async fn closed_loop(&mut self) {
        let measured_from = self.shared.start + self.shared.warmup;
        loop {
            let sent = Instant::now();
            if self.shared.past_end(sent) {
                return;
            }
            let measured = sent >= measured_from;
            if measured && !self.shared.claim() {
                return;
            }
            let outcome = self.exchange().await;
            if measured {
                self.record(outcome, sent);
            }
            if outcome == Outcome::Failed(ErrorKind::Connect) {
                sleep(CONNECT_BACKOFF).await;
            }
        }
    }

    async fn open_loop(&mut self, index: usize, pacing: &Pacing) {
        for nth in 0u64.. {
            // Once a slot is released it is sent at once, however late: a slow
            // previous response shows up in this request's latency, as it should.
            if !pacing.pacer.wait(index, nth).await {
                return;
            }
            let schedule = pacing.schedule;
            let Some((slot, offset)) = schedule
                .slot(index, nth)
                .and_then(|slot| Some((slot, schedule.offset(slot)?)))
            else {
                return;
            };
            let outcome = self.exchange().await;
            if slot >= pacing.first_measured {
                self.record(outcome, self.shared.start + offset);
            }
        }
    }

    fn record(&mut self, outcome: Outcome, since: Instant) {
        match outcome {
            Outcome::Success => self.recorder.success(since.elapsed()),
            Outcome::Failed(kind) => self.recorder.error(kind),
            Outcome::Abandoned => {}
        }
    }

    /// One request on this worker's connection, (re)connecting first if needed.
    async fn exchange(&mut self) -> Outcome {
        let cutoff = self.shared.cutoff(Instant::now());
        let mut conn = match self.ready_connection(cutoff).await {
            Ok(conn) => conn,
            Err(outcome) => return outcome,
        };
        match timeout_at(cutoff.at, send(&mut conn, self.shared.request.build())).await {
            Ok(Ok(status)) => {
                self.conn = Some(conn);
                ErrorKind::from_status(status).map_or(Outcome::Success, Outcome::Failed)
            }
            // The connection's state is unknown after an error or a timeout: drop it.
            Ok(Err(kind)) => Outcome::Failed(kind),
            Err(_) => cutoff.elapsed(ErrorKind::Timeout),
        }
    }

    async fn ready_connection(&mut self, cutoff: Cutoff) -> Result<Conn, Outcome> {
        if let Some(mut conn) = self.conn.take() {
            // A keep-alive connection the server has since closed fails here, before a
            // request is spent on it: that is a reconnect, not an error.
            if let Ok(Ok(())) = timeout_at(cutoff.at, conn.sender.ready()).await {
                return Ok(conn);
            }
        }
        match timeout_at(cutoff.at, connect(self.shared.addr)).await {
            Ok(Some(conn)) => Ok(conn),
            Ok(None) => Err(Outcome::Failed(ErrorKind::Connect)),
            Err(_) => Err(cutoff.elapsed(ErrorKind::Connect)),
        }
    }
}

/// The recorders of a closed loop's workers merged into its report.
pub(crate) async fn closed_loop_report(
    mut workers: tokio::task::JoinSet<Result<Recorder, LoadError>>,
    duration: std::time::Duration,
    connections: usize,
) -> Result<Report, LoadError> {
    let mut recorded = Recorder::new()?;
    while let Some(joined) = workers.join_next().await {
        recorded.merge(&joined??)?;
    }
    Ok(Report {
        recorded,
        duration,
        connections,
        rate: None,
    })
}

/// A TCP connection to `addr` with Nagle off, for a generator's client.
pub(crate) async fn connect_tcp(
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpStream, LoadError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| refused(addr, &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The error of a connection to `addr` that could not be made.
pub(crate) fn refused(addr: std::net::SocketAddr, error: &dyn std::fmt::Display) -> LoadError {
    LoadError::Connect {
        addr: addr.to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_body_is_a_kilobyte_of_json() {
        let body = default_body();
        assert!((900..=1100).contains(&body.len()), "{}", body.len());
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["instances"][0].as_array().unwrap().len(), 126);
    }

    #[test]
    fn nonsense_options_are_refused() {
        let url: Uri = "http://127.0.0.1:9000/".parse().unwrap();
        let zero_rate = LoadOptions {
            rate: Some(0.0),
            ..LoadOptions::new(url.clone())
        };
        assert!(matches!(validate(&zero_rate), Err(LoadError::Rate(_))));
        let no_connections = LoadOptions {
            connections: 0,
            ..LoadOptions::new(url.clone())
        };
        assert!(matches!(
            validate(&no_connections),
            Err(LoadError::NoConnections)
        ));
        let forever = LoadOptions {
            timeout: Duration::MAX,
            ..LoadOptions::new(url.clone())
        };
        assert!(matches!(
            validate(&forever),
            Err(LoadError::TooLong("timeout"))
        ));
        assert!(validate(&LoadOptions::new(url)).is_ok());
    }

    #[tokio::test]
    async fn https_is_refused() {
        let options = LoadOptions::new("https://127.0.0.1:9000/".parse().unwrap());
        assert!(matches!(run(options).await, Err(LoadError::Scheme(_))));
    }
}
