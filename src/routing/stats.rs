//! [`RouteStats`]: what the data plane measured on a route (requests, errors, a
//! latency histogram, and for OpenAI-style streamed answers histograms of the
//! time to the first token and per output token), kept in atomics so the
//! request path never locks, and read by the rollout controller as snapshots to
//! compare a canary with production.
//!
//! Latency buckets are log-linear: 32 sub-buckets per power of two (each at most
//! 1/32 = 3.1% wide), from 1 µs to about 70 minutes, so the rollout gates' bounds
//! on a quantile lose at most that much to bucketing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two, as a shift.
const SUB_BITS: u32 = 5;
const SUBS: usize = 1 << SUB_BITS;
/// Powers of two covered above the linear first ones: up to 2^32 µs.
const OCTAVES: usize = 32 - SUB_BITS as usize + 1;
const BUCKETS: usize = SUBS * OCTAVES;

#[derive(Debug)]
pub struct RouteStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    time_to_first_token: [AtomicU64; BUCKETS],
    time_per_output_token: [AtomicU64; BUCKETS],
}

/// Counts at one moment; subtract two to get what happened in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    latency: Vec<u64>,
    time_to_first_token: Vec<u64>,
    time_per_output_token: Vec<u64>,
}

impl Default for RouteStats {
    fn default() -> RouteStats {
        let buckets = || std::array::from_fn(|_| AtomicU64::new(0));
        RouteStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: buckets(),
            time_to_first_token: buckets(),
            time_per_output_token: buckets(),
        }
    }
}

impl RouteStats {
    /// Records one answered request. `error` is a 5xx or a transport failure;
    /// its latency is left out, so a candidate that fails fast does not look
    /// fast (the error gate judges failures).
    pub fn record(&self, error: bool, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.latency[bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request already recorded as answered whose body then failed.
    pub fn count_late_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a streamed answer's time to its first token and, when it had
    /// more than one, per output token after it.
    pub fn record_tokens(&self, first: Duration, per_token: Option<Duration>) {
        self.time_to_first_token[bucket(first)].fetch_add(1, Ordering::Relaxed);
        if let Some(per_token) = per_token {
            self.time_per_output_token[bucket(per_token)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let load =
            |buckets: &[AtomicU64]| buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: load(&self.latency),
            time_to_first_token: load(&self.time_to_first_token),
            time_per_output_token: load(&self.time_per_output_token),
        }
    }
}

impl Default for StatsSnapshot {
    /// No requests.
    fn default() -> StatsSnapshot {
        StatsSnapshot {
            requests: 0,
            errors: 0,
            latency: vec![0; BUCKETS],
            time_to_first_token: vec![0; BUCKETS],
            time_per_output_token: vec![0; BUCKETS],
        }
    }
}

/// Two histograms bucket by bucket.
fn combined(a: &[u64], b: &[u64], f: impl Fn(u64, u64) -> u64) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
}

impl StatsSnapshot {
    /// As JSON for other replicas: the counts, and each histogram's non-zero
    /// buckets as `[index, count]` pairs.
    pub fn to_json(&self) -> serde_json::Value {
        let sparse = |buckets: &[u64]| -> Vec<[u64; 2]> {
            let counted = buckets.iter().enumerate().filter(|(_, n)| **n > 0);
            counted.map(|(i, n)| [i as u64, *n]).collect()
        };
        serde_json::json!({
            "requests": self.requests, "errors": self.errors,
            "latency": sparse(&self.latency),
            "time_to_first_token": sparse(&self.time_to_first_token),
            "time_per_output_token": sparse(&self.time_per_output_token),
        })
    }

    /// What [`StatsSnapshot::to_json`] wrote, or `None` for anything else.
    pub fn from_json(value: &serde_json::Value) -> Option<StatsSnapshot> {
        let dense = |field: &str| -> Option<Vec<u64>> {
            let mut buckets = vec![0; BUCKETS];
            for pair in value[field].as_array()? {
                let index = usize::try_from(pair[0].as_u64()?).ok()?;
                *buckets.get_mut(index)? = pair[1].as_u64()?;
            }
            Some(buckets)
        };
        Some(StatsSnapshot {
            requests: value["requests"].as_u64()?,
            errors: value["errors"].as_u64()?,
            latency: dense("latency")?,
            time_to_first_token: dense("time_to_first_token")?,
            time_per_output_token: dense("time_per_output_token")?,
        })
    }

    /// Adds one request, as [`RouteStats::record`] does (for simulations).
    pub fn record(&mut self, error: bool, elapsed: Duration) {
        self.requests += 1;
        if error {
            self.errors += 1;
        } else {
            self.latency[bucket(elapsed)] += 1;
        }
    }

    /// Both snapshots' requests together.
    pub fn plus(&self, other: &StatsSnapshot) -> StatsSnapshot {
        self.with(other, u64::saturating_add)
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        self.with(earlier, u64::saturating_sub)
    }

    fn with(&self, other: &StatsSnapshot, f: impl Fn(u64, u64) -> u64 + Copy) -> StatsSnapshot {
        StatsSnapshot {
            requests: f(self.requests, other.requests),
            errors: f(self.errors, other.errors),
            latency: combined(&self.latency, &other.latency, f),
            time_to_first_token: combined(&self.time_to_first_token, &other.time_to_first_token, f),
            time_per_output_token: combined(
                &self.time_per_output_token,
                &other.time_per_output_token,
                f,
            ),
        }
    }

    /// The times to the first token as a snapshot of their own (one request
    /// per streamed answer, none failed), for the latency gates to judge.
    pub fn time_to_first_token(&self) -> StatsSnapshot {
        StatsSnapshot::of_latencies(&self.time_to_first_token)
    }

    /// Likewise the times per output token.
    pub fn time_per_output_token(&self) -> StatsSnapshot {
        StatsSnapshot::of_latencies(&self.time_per_output_token)
    }

    fn of_latencies(buckets: &[u64]) -> StatsSnapshot {
        StatsSnapshot {
            requests: buckets.iter().sum(),
            latency: buckets.to_vec(),
            ..StatsSnapshot::default()
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// Latency samples in the snapshot: the requests that did not fail.
    pub fn samples(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// Where the `rank`-th smallest latency lies (1-based): the edges of its
    /// bucket, or `None` past the last sample.
    pub fn rank_range(&self, rank: u64) -> Option<(Duration, Duration)> {
        let mut seen = 0;
        for (index, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank.max(1) {
                let (low, high) = edges(index);
                return Some((Duration::from_micros(low), Duration::from_micros(high)));
            }
        }
        None
    }

    /// The `q`-quantile's bucket, as its midpoint: an estimate, not a bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let rank = (q.clamp(0.0, 1.0) * self.samples() as f64).ceil() as u64;
        self.rank_range(rank).map(|(low, high)| (low + high) / 2)
    }
}

fn bucket(elapsed: Duration) -> usize {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if micros < SUBS as u64 {
        return micros as usize;
    }
    let msb = 63 - micros.leading_zeros();
    let octave = (msb - SUB_BITS + 1) as usize;
    let sub = ((micros >> (msb - SUB_BITS)) as usize) & (SUBS - 1);
    (octave * SUBS + sub).min(BUCKETS - 1)
}

/// The smallest and largest microseconds of bucket `index`.
fn edges(index: usize) -> (u64, u64) {
    let (octave, sub) = (index / SUBS, (index % SUBS) as u64);
    if octave == 0 {
        return (sub, sub);
    }
    let shift = octave as u32 - 1;
    let low = (SUBS as u64 + sub) << shift;
    (low, low + (1 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_travel_as_sparse_json() {
        let mut snapshot = StatsSnapshot::default();
        snapshot.record(false, Duration::from_millis(3));
        snapshot.record(false, Duration::from_millis(300));
        snapshot.record(true, Duration::from_millis(1));
        let json = snapshot.to_json();
        assert_eq!(json["latency"].as_array().unwrap().len(), 2);
        assert_eq!(StatsSnapshot::from_json(&json), Some(snapshot));
        assert_eq!(
            StatsSnapshot::from_json(&serde_json::json!({"requests": 1})),
            None
        );
        let past_the_end = serde_json::json!({ "requests": 1, "errors": 0,
            "latency": [[BUCKETS, 1]], "time_to_first_token": [], "time_per_output_token": [] });
        assert_eq!(StatsSnapshot::from_json(&past_the_end), None);
    }

    #[test]
    fn buckets_are_at_most_a_thirty_second_wide_and_cover_every_value() {
        let mut previous_high = None;
        for index in 0..BUCKETS {
            let (low, high) = edges(index);
            assert!(low <= high);
            if let Some(before) = previous_high {
                assert_eq!(
                    low,
                    before + 1,
                    "bucket {index} starts where the last ended"
                );
            }
            previous_high = Some(high);
            assert!(
                (high - low) as f64 <= low as f64 / 32.0,
                "{index}: {low}..{high}"
            );
        }
        for micros in [
            0u64, 1, 31, 32, 33, 100, 1_000, 12_345, 1_000_000, 60_000_000,
        ] {
            let (low, high) = edges(bucket(Duration::from_micros(micros)));
            assert!(low <= micros && micros <= high, "{micros} -> {low}..{high}");
        }
        let hour = bucket(Duration::from_secs(7_200));
        assert_eq!(hour, BUCKETS - 1, "past the range: the last bucket");
    }

    #[test]
    fn quantiles_ranks_and_error_rates_over_a_step() {
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
        assert_eq!((step.requests, step.errors, step.samples()), (100, 5, 95));
        assert_eq!(step.error_rate(), Some(0.05));
        let p50 = step.quantile(0.5).unwrap().as_micros();
        assert!((985..=1_016).contains(&p50), "{p50}");
        let (low, high) = step.rank_range(95).unwrap();
        assert!(low <= Duration::from_millis(50) && Duration::from_millis(50) <= high);
        assert_eq!(step.rank_range(96), None);
        let empty = RouteStats::default().snapshot();
        assert_eq!((empty.quantile(0.99), empty.rank_range(1)), (None, None));
    }
}
