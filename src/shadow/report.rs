//! [`VersionReport`]: what mirroring to one staging version has shown so far.
//!
//! Counters the request path touches (mirrored, dropped, errors) are atomics.
//! Everything the comparison thread computes (agreement, latencies, disagreeing
//! paths, samples) sits behind one mutex that only that thread and admin readers
//! take, never a request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::compare::Verdict;
use super::llm_report::{LlmDetails, Side};
use crate::vocab::path::{Display, Step, normalized};

mod share;

use share::Counts;
pub use share::ReportShare;

/// Mismatch samples kept, newest last.
pub const SAMPLES: usize = 20;
/// Disagreeing paths listed in a report.
pub const TOP_PATHS: usize = 10;
/// Distinct paths counted; past this, new paths are not tracked (a pathological
/// answer cannot grow the report without bound).
const MAX_TRACKED_PATHS: usize = 1000;
/// Bytes of each answer kept in a sample.
const SAMPLE_BODY_BYTES: usize = 1024;
/// The agreement window used as a promotion gate: 30 buckets of 10 s.
const WINDOW_BUCKETS: usize = 30;
const BUCKET_SECS: u64 = 10;
/// Agreement over time, as the status page plots it: the last hour per minute.
const MINUTES: usize = 60;
/// Quantiles at which the latency distributions are shown (a CDF's points).
const CDF_QUANTILES: [f64; 24] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0,
];

/// Why a request was not mirrored, or a pair not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The model's `max_in_flight` mirrors were already out.
    InFlight,
    /// The request body is over the shadow `max_body_bytes`.
    BodyTooLarge,
    /// Production's answer failed or was not completely sent.
    PrimaryIncomplete,
    /// An answer is over `max_body_bytes`, too large to compare.
    AnswerTooLarge,
    /// The comparison thread is behind; the pair was skipped.
    CompareQueueFull,
    /// Every endpoint of the staging version is ejected by passive health.
    NoHealthyEndpoint,
    /// The gateway's `max_buffered_body_bytes` had no room for the body's copy.
    BodyBudget,
    /// The shadow threads had used up their `shadow_cpu_share`.
    CpuShare,
}

/// How a mirrored request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Protocol,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::InFlight,
        DropReason::BodyTooLarge,
        DropReason::PrimaryIncomplete,
        DropReason::AnswerTooLarge,
        DropReason::CompareQueueFull,
        DropReason::NoHealthyEndpoint,
        DropReason::BodyBudget,
        DropReason::CpuShare,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InFlight => "in_flight",
            DropReason::BodyTooLarge => "body_too_large",
            DropReason::PrimaryIncomplete => "primary_incomplete",
            DropReason::AnswerTooLarge => "answer_too_large",
            DropReason::CompareQueueFull => "compare_queue_full",
            DropReason::NoHealthyEndpoint => "no_healthy_endpoint",
            DropReason::BodyBudget => "body_budget",
            DropReason::CpuShare => "cpu_share",
        }
    }
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 3] = [ErrorKind::Connect, ErrorKind::Timeout, ErrorKind::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
        }
    }
}

pub struct VersionReport {
    model: String,
    version: String,
    /// The report of production replayed against itself.
    replay: bool,
    mirrored: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    errors: [AtomicU64; ErrorKind::ALL.len()],
    details: Mutex<Details>,
}

struct Details {
    since: SystemTime,
    compared: u64,
    matched: u64,
    labels_agreed: u64,
    labels_total: u64,
    units_agreed: u64,
    units_judged: u64,
    primary_latency: Histogram<u64>,
    shadow_latency: Histogram<u64>,
    paths: HashMap<String, u64>,
    samples: VecDeque<Sample>,
    window: Ring<WINDOW_BUCKETS>,
    minutes: Ring<MINUTES>,
    /// Once an `llm` comparison was made.
    llm: Option<LlmDetails>,
    /// A merged report's [`Agreement::basis`] (a report's own is its start).
    basis: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Bucket {
    slot: u64,
    compared: u64,
    agreed: u64,
    total: u64,
}

/// Agreement counted per time slot of `secs`, the last `N` slots.
struct Ring<const N: usize> {
    secs: u64,
    buckets: [Bucket; N],
}

/// One compared pair, for the report.
pub struct Compared<'a> {
    pub request_id: &'a str,
    pub path: &'a str,
    pub primary: &'a [u8],
    pub shadow: &'a [u8],
    pub primary_latency: Duration,
    pub shadow_latency: Duration,
    /// To each answer's first body bytes, production's then the shadow's.
    pub first_frames: (Option<Duration>, Option<Duration>),
    pub verdict: &'a Verdict,
}

/// A mismatch, as kept in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub request_id: String,
    pub path: String,
    pub time: String,
    pub primary: String,
    pub shadow: String,
    pub differences: Vec<String>,
    /// Each difference's place as JSON keys and indices (`null` for a wildcard),
    /// so the status page marks what the comparator found, not every byte that
    /// differs (ignored fields, numbers within tolerance).
    pub difference_paths: Vec<Vec<serde_json::Value>>,
}

/// Agreement as a promotion gate reads it. In `label` mode agreement is per label,
/// otherwise per answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Comparisons since the report was (re)started.
    pub compared: u64,
    pub agreement: Option<f64>,
    /// What the gates count, since the report was (re)started: answers (labels
    /// in `label` mode) that agreed, of all judged.
    pub agreed: u64,
    pub judged: u64,
    /// When the report was (re)started, in milliseconds since the epoch (of a
    /// merged report: the newest start among those merged).
    pub since_ms: u64,
    /// Which counting these counts continue: counts of different bases cannot
    /// be subtracted. A report's own start; for a merged report, one value for
    /// the set of starts merged, so a report that joins, leaves or restarts
    /// changes it.
    pub basis: u64,
    /// Comparisons in the last `window_seconds`.
    pub window_compared: u64,
    pub window_agreement: Option<f64>,
    pub window_seconds: u64,
}

impl VersionReport {
    pub fn new(model: &str, version: &str) -> VersionReport {
        VersionReport {
            model: model.to_string(),
            version: version.to_string(),
            replay: false,
            mirrored: AtomicU64::new(0),
            dropped: Default::default(),
            errors: Default::default(),
            details: Mutex::new(Details::new()),
        }
    }

    /// This report as production's replayed against itself.
    pub fn replaying(self) -> VersionReport {
        VersionReport {
            replay: true,
            ..self
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn count_mirrored(&self) {
        self.mirrored.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a comparison (comparison thread only).
    pub fn record(&self, compared: &Compared<'_>) {
        let mut details = self.details();
        details.record(compared);
    }

    /// Starts counting afresh.
    pub fn reset(&self) {
        self.mirrored.store(0, Ordering::Relaxed);
        for counter in self.dropped.iter().chain(&self.errors) {
            counter.store(0, Ordering::Relaxed);
        }
        *self.details() = Details::new();
    }

    pub fn agreement(&self) -> Agreement {
        self.details().agreement(now_secs())
    }

    /// Agreement over this report and `others` (the other replicas' shares).
    pub fn agreement_with(&self, others: &[ReportShare]) -> Agreement {
        if others.is_empty() {
            return self.agreement();
        }
        let own = self.details().share_whole(self.counts(), now_secs());
        let (merged, _) = Details::merged(std::iter::once(&own).chain(others));
        merged.agreement(now_secs())
    }

    /// What this report has counted, for the other replicas to merge.
    pub fn share(&self) -> ReportShare {
        self.details().share(self.counts(), now_secs())
    }

    fn counts(&self) -> Counts {
        let load =
            |counters: &[AtomicU64]| counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        Counts {
            mirrored: self.mirrored.load(Ordering::Relaxed),
            dropped: load(&self.dropped),
            errors: load(&self.errors),
        }
    }

    /// The report as the admin API shows it.
    pub fn view(&self) -> serde_json::Value {
        self.view_with(&[])
    }

    /// The report merged with `others` (the other replicas' shares). The LLM
    /// figures are this replica's own.
    pub fn view_with(&self, others: &[ReportShare]) -> serde_json::Value {
        let details = self.details();
        let llm = details.llm.as_ref().map(LlmDetails::to_json);
        if others.is_empty() {
            return self.render(&details, &self.counts(), llm, 1);
        }
        let own = details.share_whole(self.counts(), now_secs());
        drop(details);
        let (merged, counts) = Details::merged(std::iter::once(&own).chain(others));
        self.render(&merged, &counts, llm, 1 + others.len())
    }

    fn render(
        &self,
        details: &Details,
        counts: &Counts,
        llm: Option<serde_json::Value>,
        replicas: usize,
    ) -> serde_json::Value {
        let count = |counters: &[u64],
                     names: Vec<&'static str>|
         -> serde_json::Map<String, serde_json::Value> {
            names
                .into_iter()
                .zip(counters)
                .map(|(name, n)| (name.to_string(), (*n).into()))
                .collect()
        };
        let mut paths: Vec<(&String, &u64)> = details.paths.iter().collect();
        paths.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<_> = paths
            .into_iter()
            .take(TOP_PATHS)
            .map(|(p, n)| serde_json::json!({ "path": p, "count": n }))
            .collect();
        serde_json::json!({
            "model": self.model,
            "version": self.version,
            "replay_of_production": self.replay,
            "since": humantime::format_rfc3339_seconds(details.since).to_string(),
            "replicas": replicas,
            "mirrored": counts.mirrored,
            "compared": details.compared,
            "matched": details.matched,
            "mismatched": details.compared.saturating_sub(details.matched),
            "labels": (details.labels_total > 0).then(|| serde_json::json!({ "agreed": details.labels_agreed, "compared": details.labels_total })),
            "agreement": details.agreement(now_secs()),
            "errors": count(&counts.errors, ErrorKind::ALL.map(ErrorKind::as_str).to_vec()),
            "dropped": count(&counts.dropped, DropReason::ALL.map(DropReason::as_str).to_vec()),
            "latency_ms": {
                "primary": percentiles(&details.primary_latency),
                "shadow": percentiles(&details.shadow_latency),
            },
            "latency_cdf_ms": {
                "primary": cdf(&details.primary_latency),
                "shadow": cdf(&details.shadow_latency),
            },
            "agreement_per_minute": details.minutes.series(now_secs()),
            "llm": llm,
            "top_mismatch_paths": top,
            "samples": details.samples,
        })
    }

    fn details(&self) -> std::sync::MutexGuard<'_, Details> {
        self.details.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Details {
    fn new() -> Details {
        let histogram = || {
            Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| unreachable!("valid bounds"))
        };
        Details {
            since: SystemTime::now(),
            compared: 0,
            matched: 0,
            labels_agreed: 0,
            labels_total: 0,
            units_agreed: 0,
            units_judged: 0,
            primary_latency: histogram(),
            shadow_latency: histogram(),
            paths: HashMap::new(),
            samples: VecDeque::with_capacity(SAMPLES),
            window: Ring::new(BUCKET_SECS),
            minutes: Ring::new(60),
            llm: None,
            basis: None,
        }
    }

    fn record(&mut self, c: &Compared<'_>) {
        self.compared += 1;
        self.matched += u64::from(c.verdict.matched);
        if let Some(facts) = &c.verdict.llm {
            let sides = [
                Side {
                    first_frame: c.first_frames.0,
                    whole: c.primary_latency,
                    tokens: facts.primary_tokens,
                },
                Side {
                    first_frame: c.first_frames.1,
                    whole: c.shadow_latency,
                    tokens: facts.shadow_tokens,
                },
            ];
            self.llm
                .get_or_insert_with(LlmDetails::new)
                .record(facts, sides);
        }
        let (agreed, total) = c
            .verdict
            .labels
            .unwrap_or((u64::from(c.verdict.matched), 1));
        if c.verdict.labels.is_some() {
            self.labels_agreed += agreed;
            self.labels_total += total;
        }
        self.primary_latency
            .saturating_record(micros(c.primary_latency));
        self.shadow_latency
            .saturating_record(micros(c.shadow_latency));
        // A label-mode pair without labels (an error, metadata) says nothing about
        // label agreement: it stays out of the window the gates read.
        if total > 0 {
            self.units_agreed += agreed;
            self.units_judged += total;
            let now = now_secs();
            self.window.add(now, agreed, total);
            self.minutes.add(now, agreed, total);
        }
        if c.verdict.matched {
            return;
        }
        for difference in &c.verdict.differences {
            let key = normalized(&difference.path);
            let tracked = self.paths.len() < MAX_TRACKED_PATHS || self.paths.contains_key(&key);
            if tracked {
                *self.paths.entry(key).or_default() += 1;
            }
        }
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            request_id: c.request_id.to_string(),
            path: c.path.to_string(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            primary: trimmed(c.primary),
            shadow: trimmed(c.shadow),
            differences: c
                .verdict
                .differences
                .iter()
                .map(|d| format!("{}: {}", Display(&d.path), d.detail))
                .collect(),
            difference_paths: c
                .verdict
                .differences
                .iter()
                .map(|d| d.path.iter().map(step_json).collect())
                .collect(),
        });
    }

    fn agreement(&self, now: u64) -> Agreement {
        let (compared, agreed, total) = self.window.live(now).fold((0, 0, 0), |(c, a, t), b| {
            (c + b.compared, a + b.agreed, t + b.total)
        });
        let (all_agreed, all_total) = if self.labels_total > 0 {
            (self.labels_agreed, self.labels_total)
        } else {
            (self.matched, self.compared)
        };
        Agreement {
            compared: self.compared,
            agreement: ratio(all_agreed, all_total),
            agreed: self.units_agreed,
            judged: self.units_judged,
            since_ms: share::millis_since_epoch(self),
            basis: self
                .basis
                .unwrap_or_else(|| share::millis_since_epoch(self)),
            window_compared: compared,
            window_agreement: ratio(agreed, total),
            window_seconds: WINDOW_BUCKETS as u64 * BUCKET_SECS,
        }
    }
}

impl<const N: usize> Ring<N> {
    fn new(secs: u64) -> Ring<N> {
        Ring {
            secs,
            buckets: [Bucket::default(); N],
        }
    }

    fn add(&mut self, now: u64, agreed: u64, total: u64) {
        let slot = now / self.secs;
        let bucket = &mut self.buckets[(slot % N as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        bucket.compared += 1;
        bucket.agreed += agreed;
        bucket.total += total;
    }

    /// The slots of the last `N` with comparisons in them, in no order.
    fn live(&self, now: u64) -> impl Iterator<Item = &Bucket> {
        let current = now / self.secs;
        self.buckets
            .iter()
            .filter(move |b| b.compared > 0 && b.slot.saturating_add(N as u64) > current)
    }

    /// Each live slot's start, comparisons and agreement, oldest first.
    fn series(&self, now: u64) -> serde_json::Value {
        let mut live: Vec<&Bucket> = self.live(now).collect();
        live.sort_by_key(|b| b.slot);
        let points = live.into_iter().map(|b| {
            serde_json::json!({
                "start_ms": b.slot.saturating_mul(self.secs).saturating_mul(1000),
                "compared": b.compared,
                "agreement": ratio(b.agreed, b.total),
            })
        });
        points.collect()
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn percentiles(histogram: &Histogram<u64>) -> serde_json::Value {
    if histogram.is_empty() {
        return serde_json::Value::Null;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({ "p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99) })
}

/// `[quantile, ms]` points of the distribution, or an empty list.
fn cdf(histogram: &Histogram<u64>) -> serde_json::Value {
    if histogram.is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    let point = |&q: &f64| serde_json::json!([q, histogram.value_at_quantile(q) as f64 / 1000.0]);
    CDF_QUANTILES.iter().map(point).collect()
}

fn step_json(step: &Step) -> serde_json::Value {
    match step {
        Step::Key(key) => serde_json::Value::from(key.as_str()),
        Step::Index(index) => serde_json::Value::from(*index),
        Step::AnyKey | Step::AnyIndex => serde_json::Value::Null,
    }
}

fn trimmed(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SAMPLE_BODY_BYTES)]).into_owned();
    if body.len() > SAMPLE_BODY_BYTES {
        format!("{text}... ({} bytes)", body.len())
    } else {
        text
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
