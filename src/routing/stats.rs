//! [`RouteStats`]: what the data plane measured on a route (requests, errors, a
//! latency histogram), kept in atomics so the request path never locks, and read
//! by the rollout controller as snapshots to compare a canary with production.
//!
//! Latency buckets are logarithmic with four sub-buckets per power of two (at
//! most 25% wide), from 1 µs to about an hour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 128;

#[derive(Debug)]
pub struct RouteStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// Counts at one moment; subtract two to get what happened in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    latency: Vec<u64>,
}

impl Default for RouteStats {
    fn default() -> RouteStats {
        RouteStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RouteStats {
    /// Records one answered request. `error` is a 5xx or a transport failure.
    pub fn record(&self, error: bool, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request already recorded as answered whose body then failed.
    pub fn count_late_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl StatsSnapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .zip(&earlier.latency)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// The latency below which `q` of the requests fell (a bucket's upper edge).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(upper_edge(index)));
            }
        }
        None
    }
}

fn bucket(elapsed: Duration) -> usize {
    let micros = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let msb = 63 - micros.leading_zeros() as usize;
    let sub = if msb >= 2 {
        ((micros >> (msb - 2)) & 3) as usize
    } else {
        0
    };
    (msb * 4 + sub).min(BUCKETS - 1)
}

/// The largest value in bucket `index`, in microseconds.
fn upper_edge(index: usize) -> u64 {
    let (msb, sub) = (index / 4, (index % 4) as u64);
    if msb < 2 {
        return (1 << (msb + 1)) - 1;
    }
    let base = 1u64 << msb;
    base + (sub + 1) * (base >> 2) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_at_most_a_quarter_wide() {
        for micros in [1u64, 3, 7, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let edge = upper_edge(bucket(Duration::from_micros(micros)));
            assert!(
                edge >= micros && (edge as f64) <= micros as f64 * 1.25 + 1.0,
                "{micros} -> {edge}"
            );
        }
    }

    #[test]
    fn quantiles_and_error_rates_over_a_step() {
        let stats = RouteStats::default();
        stats.record(false, Duration::from_millis(1));
        let start = stats.snapshot();
        for i in 0..100u64 {
            stats.record(
                i < 5,
                Duration::from_micros(if i < 99 { 1_000 } else { 50_000 }),
            );
        }
        let step = stats.snapshot().since(&start);
        assert_eq!((step.requests, step.errors), (100, 5));
        assert_eq!(step.error_rate(), Some(0.05));
        let p50 = step.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(1_000) && p50 < Duration::from_micros(1_250),
            "{p50:?}"
        );
        let p999 = step.quantile(0.999).unwrap();
        assert!(p999 >= Duration::from_millis(50), "{p999:?}");
        assert_eq!(
            StatsSnapshot {
                requests: 0,
                errors: 0,
                latency: vec![0; BUCKETS]
            }
            .quantile(0.99),
            None
        );
    }
}
