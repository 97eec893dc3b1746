//! [`ReportShare`]: one replica's shadow report in a form the others can add to
//! their own. With several replicas behind a load balancer each mirrors only the
//! requests it served, so a report read from any one of them is merged from all
//! of theirs: counts are summed, latency histograms added bucket by bucket (so
//! percentiles are of every replica's answers, not averages of percentiles),
//! agreement slots summed per time slot, disagreeing paths summed, and the
//! newest mismatch samples of all kept.
//!
//! A share is an absolute snapshot of its report, not a delta: a merged report
//! is this replica's report plus the others' latest shares, and a replica that
//! stops publishing drops out of it.

use std::hash::{Hash, Hasher};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Bucket, Details, MAX_TRACKED_PATHS, Ring, SAMPLES, Sample};

/// Disagreeing paths a share carries (the most frequent).
const SHARED_PATHS: usize = 50;
/// Mismatch samples a share carries (the newest).
const SHARED_SAMPLES: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportShare {
    pub(super) since_ms: u64,
    pub(super) mirrored: u64,
    pub(super) dropped: Vec<u64>,
    pub(super) errors: Vec<u64>,
    pub(super) compared: u64,
    pub(super) matched: u64,
    pub(super) labels_agreed: u64,
    pub(super) labels_total: u64,
    pub(super) units_agreed: u64,
    pub(super) units_judged: u64,
    /// `(microseconds, count)` of every non-empty histogram bucket.
    pub(super) primary_latency: Vec<(u64, u64)>,
    pub(super) shadow_latency: Vec<(u64, u64)>,
    pub(super) paths: Vec<(String, u64)>,
    pub(super) window: Vec<Bucket>,
    pub(super) minutes: Vec<Bucket>,
    pub(super) samples: Vec<Sample>,
}

/// The request-path counters of a report, as numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counts {
    pub mirrored: u64,
    pub dropped: Vec<u64>,
    pub errors: Vec<u64>,
}

impl Counts {
    fn add(&mut self, mirrored: u64, dropped: &[u64], errors: &[u64]) {
        self.mirrored = self.mirrored.saturating_add(mirrored);
        add_slices(&mut self.dropped, dropped);
        add_slices(&mut self.errors, errors);
    }
}

fn add_slices(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    into.iter_mut()
        .zip(from)
        .for_each(|(sum, n)| *sum = sum.saturating_add(*n));
}

impl Details {
    /// This report's share for the other replicas, with `counts` from the
    /// request path: its most frequent paths and newest samples only.
    pub(super) fn share(&self, counts: Counts, now: u64) -> ReportShare {
        self.share_within(counts, now, SHARED_PATHS, SHARED_SAMPLES)
    }

    /// This report whole, to merge the others' shares into.
    pub(super) fn share_whole(&self, counts: Counts, now: u64) -> ReportShare {
        self.share_within(counts, now, MAX_TRACKED_PATHS, SAMPLES)
    }

    fn share_within(&self, counts: Counts, now: u64, paths: usize, samples: usize) -> ReportShare {
        let mut top: Vec<(String, u64)> = self.paths.iter().map(|(p, n)| (p.clone(), *n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(paths);
        let skip = self.samples.len().saturating_sub(samples);
        ReportShare {
            since_ms: millis_since_epoch(self),
            mirrored: counts.mirrored,
            dropped: counts.dropped,
            errors: counts.errors,
            compared: self.compared,
            matched: self.matched,
            labels_agreed: self.labels_agreed,
            labels_total: self.labels_total,
            units_agreed: self.units_agreed,
            units_judged: self.units_judged,
            primary_latency: buckets(&self.primary_latency),
            shadow_latency: buckets(&self.shadow_latency),
            paths: top,
            window: self.window.live(now).copied().collect(),
            minutes: self.minutes.live(now).copied().collect(),
            samples: self.samples.iter().skip(skip).cloned().collect(),
        }
    }

    /// A report made of `shares` added together. Its start is the newest of
    /// theirs, and its basis stands for the set of their starts, so a gate
    /// reading it does not subtract counts across a report that joined, left or
    /// restarted.
    pub(super) fn merged<'a>(
        shares: impl IntoIterator<Item = &'a ReportShare>,
    ) -> (Details, Counts) {
        let mut details = Details::new();
        let mut counts = Counts::default();
        let mut starts = Vec::new();
        let mut samples = Vec::new();
        for share in shares {
            starts.push(share.since_ms);
            counts.add(share.mirrored, &share.dropped, &share.errors);
            details.absorb(share);
            samples.extend(share.samples.iter().cloned());
        }
        let newest = starts.iter().copied().max().unwrap_or(0);
        details.since = UNIX_EPOCH + Duration::from_millis(newest);
        starts.sort_unstable();
        let mut basis = std::collections::hash_map::DefaultHasher::new();
        starts.hash(&mut basis);
        details.basis = Some(basis.finish());
        // RFC 3339 times of one precision sort as text.
        samples.sort_by(|a, b| a.time.cmp(&b.time));
        let skip = samples.len().saturating_sub(SAMPLES);
        details.samples = samples.into_iter().skip(skip).collect();
        (details, counts)
    }

    fn absorb(&mut self, share: &ReportShare) {
        // Saturating: a share is another process's word, not to panic on.
        let add = |sum: &mut u64, n: u64| *sum = sum.saturating_add(n);
        add(&mut self.compared, share.compared);
        add(&mut self.matched, share.matched);
        add(&mut self.labels_agreed, share.labels_agreed);
        add(&mut self.labels_total, share.labels_total);
        add(&mut self.units_agreed, share.units_agreed);
        add(&mut self.units_judged, share.units_judged);
        for &(micros, count) in &share.primary_latency {
            self.primary_latency.saturating_record_n(micros, count);
        }
        for &(micros, count) in &share.shadow_latency {
            self.shadow_latency.saturating_record_n(micros, count);
        }
        for (path, count) in &share.paths {
            let tracked = self.paths.len() < MAX_TRACKED_PATHS || self.paths.contains_key(path);
            if tracked {
                let sum = self.paths.entry(path.clone()).or_default();
                *sum = sum.saturating_add(*count);
            }
        }
        share.window.iter().for_each(|b| self.window.absorb(b));
        share.minutes.iter().for_each(|b| self.minutes.absorb(b));
    }
}

impl<const N: usize> Ring<N> {
    /// Adds another report's slot: summed with the same slot here, replacing an
    /// older one, ignored if this ring has moved past it.
    fn absorb(&mut self, other: &Bucket) {
        let bucket = &mut self.buckets[(other.slot % N as u64) as usize];
        if bucket.slot == other.slot {
            bucket.compared = bucket.compared.saturating_add(other.compared);
            bucket.agreed = bucket.agreed.saturating_add(other.agreed);
            bucket.total = bucket.total.saturating_add(other.total);
        } else if bucket.slot < other.slot || bucket.compared == 0 {
            *bucket = *other;
        }
    }
}

fn buckets(histogram: &hdrhistogram::Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub(super) fn millis_since_epoch(details: &Details) -> u64 {
    details
        .since
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
