//! What a comparison measured (also its `--out-json` form) and the arithmetic
//! over it: medians of runs, ratios and their formatting.

use std::collections::BTreeMap;

use serde::Serialize;

use super::cases::Case;
use super::measure::Sample;
use super::proxies::ProxyKind;

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub command: String,
    pub machine: Machine,
    /// How processes were placed on cores, in words.
    pub pinning: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub runs: usize,
    /// Each proxy's program and version, or why it cannot take part.
    pub tools: Vec<String>,
    pub results: Vec<ThreadResults>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

/// The cases run with one thread count for every proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadResults {
    pub threads: usize,
    pub cases: Vec<CaseResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: Case,
    pub series: Vec<Series>,
    /// Proxies skipped, and anything else worth saying under the table.
    pub notes: Vec<String>,
    /// fixed-rate only.
    pub fixed_rate: Option<FixedRate>,
    /// swap-loop only: the weight flips made during the swapping runs.
    pub admin_calls: Option<AdminCalls>,
}

impl CaseResult {
    pub fn new(case: Case, series: Vec<Series>, notes: Vec<String>) -> Self {
        CaseResult {
            case,
            series,
            notes,
            fixed_rate: None,
            admin_calls: None,
        }
    }

    /// The summary of the series for `proxy` (the first, if there are several).
    pub fn summary(&self, proxy: ProxyKind) -> Option<Summary> {
        self.series
            .iter()
            .find(|series| series.proxy == proxy)
            .and_then(Series::summary)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FixedRate {
    /// Whose plain-64 throughput set the rate.
    pub reference: ProxyKind,
    pub reference_rps: f64,
    /// The share of it sent.
    pub share: f64,
    pub rate: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AdminCalls {
    pub made: u64,
    pub failed: u64,
}

impl AdminCalls {
    pub fn add(&mut self, other: AdminCalls) {
        self.made += other.made;
        self.failed += other.failed;
    }
}

/// The runs of one proxy (in one variant) in one case.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub proxy: ProxyKind,
    pub label: String,
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn new(proxy: ProxyKind, label: &str) -> Self {
        Series {
            proxy,
            label: label.to_string(),
            samples: Vec::new(),
        }
    }

    /// Medians over the runs; errors are totals; RSS is the largest peak seen.
    pub fn summary(&self) -> Option<Summary> {
        let samples = &self.samples;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for (kind, count) in samples.iter().flat_map(|s| &s.errors) {
            *errors.entry(kind.clone()).or_default() += count;
        }
        Some(Summary {
            rps: median(samples.iter().map(|s| s.rps))?,
            p50_ms: median(samples.iter().map(|s| s.p50_ms))?,
            p99_ms: median(samples.iter().map(|s| s.p99_ms))?,
            cpu_us_per_request: median(samples.iter().filter_map(|s| s.cpu_us_per_request)),
            peak_rss_kib: samples.iter().filter_map(|s| s.peak_rss_kib).max(),
            mirrored_share: median(samples.iter().filter_map(Sample::mirrored_share)),
            errors,
        })
    }
}

/// A series reduced to one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_request: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// Median share of requests mirrored (stagegate with mirroring on only).
    pub mirrored_share: Option<f64>,
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The median (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// `value / base` as `1.23x`; a dash when either is missing or the base is zero.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 && value.is_finite() => {
            format!("{:.2}x", value / base)
        }
        _ => "—".to_string(),
    }
}

/// A number with `decimals` places, or a dash.
pub fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{v:.decimals$}"))
}

/// `0`, or the total with its kinds: `12 (timeout 10, status_5xx 2)`.
pub fn errors_cell(errors: &BTreeMap<String, u64>) -> String {
    let total: u64 = errors.values().sum();
    if total == 0 {
        return "0".to_string();
    }
    let kinds: Vec<String> = errors
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    format!("{total} ({})", kinds.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(rps: f64, cpu: Option<f64>, rss: Option<u64>) -> Sample {
        Sample {
            rps,
            p50_ms: rps / 1000.0,
            p99_ms: rps / 100.0,
            requests: rps as u64,
            errors: BTreeMap::new(),
            cpu_us_per_request: cpu,
            peak_rss_kib: rss,
            mirrored: None,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([7.0]), Some(7.0));
        assert_eq!(median([f64::NAN, 1.0]), Some(1.0));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn ratios_and_numbers() {
        assert_eq!(ratio(Some(1500.0), Some(1000.0)), "1.50x");
        assert_eq!(ratio(Some(1.0), Some(3.0)), "0.33x");
        assert_eq!(ratio(Some(1.0), None), "—");
        assert_eq!(ratio(None, Some(1.0)), "—");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "—");
        assert_eq!(number(Some(1.23456), 2), "1.23");
        assert_eq!(number(None, 2), "—");
    }

    #[test]
    fn error_cells() {
        assert_eq!(errors_cell(&BTreeMap::new()), "0");
        let errors = BTreeMap::from([
            ("status_5xx".to_string(), 2),
            ("timeout".to_string(), 10),
            ("connect".to_string(), 0),
        ]);
        assert_eq!(errors_cell(&errors), "12 (status_5xx 2, timeout 10)");
    }

    #[test]
    fn series_summary_takes_medians_totals_and_peaks() {
        let mut series = Series::new(ProxyKind::Nginx, "nginx");
        assert!(series.summary().is_none());
        series.samples.push(sample(1000.0, Some(30.0), Some(1024)));
        series.samples.push(sample(3000.0, Some(10.0), Some(4096)));
        let mut third = sample(2000.0, None, Some(2048));
        third.errors.insert("reset".to_string(), 3);
        series.samples.push(third);
        let summary = series.summary().unwrap();
        assert_eq!(summary.rps, 2000.0);
        assert_eq!(summary.p50_ms, 2.0);
        assert_eq!(summary.cpu_us_per_request, Some(20.0));
        assert_eq!(summary.peak_rss_kib, Some(4096));
        assert_eq!(summary.error_total(), 3);
    }
}
