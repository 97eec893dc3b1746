//! What a load run measured: per-worker recorders (a latency histogram and error
//! counters each, so the hot path shares nothing), their merge into a [`Report`],
//! and the report as a human summary or as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::StatusCode;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 us to 60 s.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot create latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("cannot merge latency histograms: {0}")]
    Merge(#[from] hdrhistogram::AdditionError),
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connect (or the HTTP/1 handshake) failed or timed out.
    Connect,
    /// No complete response within the per-request timeout.
    Timeout,
    /// The server closed or reset the connection before the response was complete.
    Reset,
    /// Any other I/O or protocol error.
    Io,
    Status1xx,
    Status3xx,
    Status4xx,
    Status5xx,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Io,
        ErrorKind::Status1xx,
        ErrorKind::Status3xx,
        ErrorKind::Status4xx,
        ErrorKind::Status5xx,
    ];

    /// The error a response status counts as, or `None` for a 2xx.
    pub fn from_status(status: StatusCode) -> Option<ErrorKind> {
        match status.as_u16() {
            200..=299 => None,
            300..=399 => Some(ErrorKind::Status3xx),
            400..=499 => Some(ErrorKind::Status4xx),
            500..=599 => Some(ErrorKind::Status5xx),
            _ => Some(ErrorKind::Status1xx),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Io => "io",
            ErrorKind::Status1xx => "status_1xx",
            ErrorKind::Status3xx => "status_3xx",
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// What one worker measured; merged with the others once the run is over.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of successful (2xx) responses, in microseconds.
    latency: Histogram<u64>,
    successes: u64,
    errors: [u64; ErrorKind::ALL.len()],
}

impl Recorder {
    pub fn new() -> Result<Self, ReportError> {
        Ok(Recorder {
            latency: Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)?,
            successes: 0,
            errors: [0; ErrorKind::ALL.len()],
        })
    }

    pub fn success(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Anything over the top bound lands in the top bucket rather than being lost.
        self.latency.saturating_record(micros);
        self.successes += 1;
    }

    pub fn error(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] += 1;
    }

    pub fn merge(&mut self, other: &Recorder) -> Result<(), ReportError> {
        self.latency.add(&other.latency)?;
        self.successes += other.successes;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        Ok(())
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub recorded: Recorder,
    /// The measured part of the run (warmup excluded).
    pub duration: Duration,
    pub connections: usize,
    /// Requests per second in open-loop mode; `None` for a closed loop.
    pub rate: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The JSON form of a [`Report`]; `errors` always lists every kind, so the shape is
/// the same from run to run.
#[derive(Debug, Clone, Serialize)]
pub struct JsonReport {
    pub requests: u64,
    pub successes: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub latency_ms: LatencySummary,
    pub errors: BTreeMap<&'static str, u64>,
    pub connections: usize,
    pub rate: Option<f64>,
}

impl Report {
    /// Requests that finished, successfully or not.
    pub fn requests(&self) -> u64 {
        self.successes() + self.errors().values().sum::<u64>()
    }

    pub fn successes(&self) -> u64 {
        self.recorded.successes
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.recorded.errors[kind as usize]
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        ErrorKind::ALL
            .iter()
            .map(|&kind| (kind.name(), self.error_count(kind)))
            .collect()
    }

    pub fn rps(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.requests() as f64 / secs
        } else {
            0.0
        }
    }

    pub fn latency(&self) -> LatencySummary {
        let hist = &self.recorded.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            p50: ms(hist.value_at_quantile(0.5)),
            p90: ms(hist.value_at_quantile(0.9)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
            mean: hist.mean() / 1000.0,
        }
    }

    pub fn to_json(&self) -> JsonReport {
        JsonReport {
            requests: self.requests(),
            successes: self.successes(),
            duration_s: self.duration.as_secs_f64(),
            rps: self.rps(),
            latency_ms: self.latency(),
            errors: self.errors(),
            connections: self.connections,
            rate: self.rate,
        }
    }
}

/// The human summary.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        writeln!(f, "connections  {} ({mode})", self.connections)?;
        writeln!(
            f,
            "requests     {} in {:.2}s, {:.1} req/s, {} ok",
            self.requests(),
            self.duration.as_secs_f64(),
            self.rps(),
            self.successes()
        )?;
        let l = self.latency();
        writeln!(
            f,
            "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        let errors: Vec<String> = self
            .errors()
            .into_iter()
            .filter(|&(_, count)| count > 0)
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        if errors.is_empty() {
            writeln!(f, "errors       none")
        } else {
            writeln!(f, "errors       {}", errors.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1..=1000 ms, one request each, plus a 5xx and a timeout.
    fn known_report() -> Report {
        let mut a = Recorder::new().unwrap();
        let mut b = Recorder::new().unwrap();
        for ms in 1..=1000u64 {
            let recorder = if ms % 2 == 0 { &mut a } else { &mut b };
            recorder.success(Duration::from_millis(ms));
        }
        a.error(ErrorKind::Status5xx);
        b.error(ErrorKind::Timeout);
        a.merge(&b).unwrap();
        Report {
            recorded: a,
            duration: Duration::from_secs(2),
            connections: 2,
            rate: None,
        }
    }

    /// Within the histogram's 3 significant digits.
    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 1e-3
    }

    #[test]
    fn percentiles_of_a_known_histogram() {
        let report = known_report();
        let l = report.latency();
        assert!(close(l.p50, 500.0), "p50 {}", l.p50);
        assert!(close(l.p90, 900.0), "p90 {}", l.p90);
        assert!(close(l.p99, 990.0), "p99 {}", l.p99);
        assert!(close(l.p999, 999.0), "p999 {}", l.p999);
        assert!(close(l.max, 1000.0), "max {}", l.max);
        assert!(close(l.mean, 500.5), "mean {}", l.mean);
    }

    #[test]
    fn merge_adds_counts() {
        let report = known_report();
        assert_eq!(report.successes(), 1000);
        assert_eq!(report.requests(), 1002);
        assert_eq!(report.error_count(ErrorKind::Status5xx), 1);
        assert_eq!(report.error_count(ErrorKind::Timeout), 1);
        assert!((report.rps() - 501.0).abs() < 1e-9);
    }

    #[test]
    fn latencies_past_the_top_bound_saturate() {
        let mut recorder = Recorder::new().unwrap();
        recorder.success(Duration::from_secs(3600));
        let report = Report {
            recorded: recorder,
            duration: Duration::from_secs(1),
            connections: 1,
            rate: None,
        };
        assert!(close(report.latency().max, 60_000.0));
    }

    #[test]
    fn json_shape() {
        let value = serde_json::to_value(known_report().to_json()).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "connections",
                "duration_s",
                "errors",
                "latency_ms",
                "rate",
                "requests",
                "rps",
                "successes"
            ]
        );
        assert_eq!(value["requests"], 1002);
        assert_eq!(value["duration_s"], 2.0);
        assert_eq!(value["connections"], 2);
        assert!(value["rate"].is_null());
        for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(value["latency_ms"][field].is_f64(), "{field}");
        }
        let errors = value["errors"].as_object().unwrap();
        assert_eq!(errors.len(), ErrorKind::ALL.len());
        assert_eq!(errors["status_5xx"], 1);
        assert_eq!(errors["timeout"], 1);
        assert_eq!(errors["connect"], 0);
    }

    #[test]
    fn status_classes() {
        assert_eq!(ErrorKind::from_status(StatusCode::OK), None);
        assert_eq!(ErrorKind::from_status(StatusCode::NO_CONTENT), None);
        assert_eq!(
            ErrorKind::from_status(StatusCode::NOT_FOUND),
            Some(ErrorKind::Status4xx)
        );
        assert_eq!(
            ErrorKind::from_status(StatusCode::SERVICE_UNAVAILABLE),
            Some(ErrorKind::Status5xx)
        );
    }

    #[test]
    fn human_summary_lists_only_errors_that_happened() {
        let text = known_report().to_string();
        assert!(text.contains("1002 in 2.00s"), "{text}");
        assert!(
            text.lines()
                .any(|line| line == "errors       status_5xx 1, timeout 1"),
            "{text}"
        );
    }
}
