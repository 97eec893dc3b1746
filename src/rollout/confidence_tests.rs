//! The bounds hold as often as they promise under continuous monitoring, where a
//! fixed-sample interval does not; and the figures the README quotes.

use super::*;

/// Draws of a seeded generator, so coverage figures are the same on every run.
fn bernoulli_runs(rate: f64, runs: usize, trials: u64, seed: u64) -> Vec<Vec<bool>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..runs)
        .map(|_| (0..trials).map(|_| rng.f64() < rate).collect())
        .collect()
}

/// The share of runs in which `excluded` is ever true, looking after each of
/// the first 100 events and then every 2% more (a gate looks every tick; this
/// keeps the test quick in debug builds).
fn ever_excluded(runs: &[Vec<bool>], excluded: impl Fn(u64, u64) -> bool) -> f64 {
    let missed = runs
        .iter()
        .filter(|run| {
            let (mut hits, mut next_look) = (0, 1);
            run.iter().enumerate().any(|(i, hit)| {
                hits += u64::from(*hit);
                let trials = i as u64 + 1;
                if trials < next_look {
                    return false;
                }
                next_look = (trials + 1).max(trials * 51 / 50);
                excluded(hits, trials)
            })
        })
        .count();
    missed as f64 / runs.len() as f64
}

/// Wilson's score interval at one fixed sample size.
fn wilson_excludes(rate: f64, hits: u64, trials: u64, z: f64) -> bool {
    let (n, p) = (trials as f64, hits as f64 / trials as f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    rate < centre - half || rate > centre + half
}

#[test]
fn rate_bounds_hold_at_every_look_as_often_as_promised() {
    let alpha = 0.05;
    for (rate, seed) in [(0.01, 1), (0.2, 2), (0.5, 3), (0.99, 4)] {
        let runs = bernoulli_runs(rate, 400, 3_000, seed);
        let mixture = Mixture::rates();
        let missed = ever_excluded(&runs, |h, n| mixture.excludes(rate, h, n, alpha));
        // 400 runs: a true miss rate of 5% would show above 8.3% less than
        // once in a thousand tests.
        assert!(missed <= 0.083, "rate {rate}: missed in {missed} of runs");
    }
}

#[test]
fn a_fixed_sample_interval_looked_at_every_request_misses_far_more_often() {
    // Why the gates do not use Wilson's bound as it is: at 95% per look it
    // excludes the true rate somewhere in a large share of long runs.
    let runs = bernoulli_runs(0.2, 400, 3_000, 5);
    let wilson = ever_excluded(&runs, |h, n| wilson_excludes(0.2, h, n, 1.96));
    let mixture = Mixture::rates();
    let sequence = ever_excluded(&runs, |h, n| mixture.excludes(0.2, h, n, 0.05));
    assert!(wilson > 0.3, "per-look Wilson missed in {wilson} of runs");
    assert!(sequence < wilson / 5.0, "{sequence} vs {wilson}");
}

#[test]
fn rate_bounds_bracket_the_estimate_and_tighten_with_evidence() {
    let mixture = Mixture::rates();
    let none = mixture.rate_bounds(0, 0, 0.01);
    assert_eq!((none.lower, none.upper), (0.0, 1.0));
    let mut previous = 1.0;
    for trials in [100, 1_000, 10_000, 100_000] {
        let bounds = mixture.rate_bounds(trials / 100, trials, 0.01);
        assert!(bounds.lower <= 0.01 && 0.01 <= bounds.upper, "{bounds:?}");
        let width = bounds.upper - bounds.lower;
        assert!(width < previous, "{trials}: {width} after {previous}");
        previous = width;
    }
    let stricter = mixture.rate_bounds(10, 1_000, 0.0001);
    let looser = mixture.rate_bounds(10, 1_000, 0.1);
    assert!(stricter.lower < looser.lower && stricter.upper > looser.upper);
}

#[test]
fn the_figures_the_readme_quotes() {
    let alpha = 0.01 / 9.0 / 2.0;
    let errors = Mixture::rates();
    // Ten failures in ten requests: the failure rate is surely above 30%.
    assert!(errors.rate_bounds(10, 10, alpha).lower > 0.3);
    // One failure in the first forty says nothing either way.
    assert!(errors.rate_bounds(1, 40, alpha).lower < 0.001);
    // No failure in 1,000 requests bounds the rate below 1%; in 300 it does not.
    assert!(errors.rate_bounds(0, 1_000, alpha).upper < 0.01);
    assert!(errors.rate_bounds(0, 300, alpha).upper > 0.01);
}

#[test]
fn quantile_ranks_match_a_scan_of_every_count() {
    for (q, n, alpha) in [
        (0.5, 1, 0.05),
        (0.5, 37, 0.05),
        (0.99, 500, 0.001),
        (0.9, 2_000, 0.01),
    ] {
        let mixture = Mixture::centred(q);
        let plausible: Vec<u64> = (0..=n)
            .filter(|s| !mixture.excludes(q, *s, n, alpha))
            .collect();
        let (fewest, most) = (plausible[0], *plausible.last().unwrap_or(&n));
        assert_eq!(
            plausible.len() as u64,
            most - fewest + 1,
            "one interval of counts"
        );
        let ranks = mixture.quantile_ranks(n, q, alpha);
        assert_eq!(ranks.lower, (fewest >= 1).then_some(fewest), "q {q} n {n}");
        assert_eq!(ranks.upper, (most < n).then_some(most + 1), "q {q} n {n}");
    }
    assert_eq!(
        Mixture::centred(0.99).quantile_ranks(0, 0.99, 0.01),
        QuantileRanks {
            lower: None,
            upper: None
        }
    );
}

#[test]
fn a_p99_needs_about_a_thousand_samples_before_it_has_an_upper_bound() {
    let mixture = Mixture::centred(0.99);
    let alpha = 0.01 / 9.0 / 2.0;
    assert_eq!(mixture.quantile_ranks(500, 0.99, alpha).upper, None);
    let ranks = mixture.quantile_ranks(3_000, 0.99, alpha);
    let (lower, upper) = (ranks.lower.unwrap(), ranks.upper.unwrap());
    assert!(
        lower < 2_970 && 2_970 < upper && upper <= 3_000,
        "{ranks:?}"
    );
}

#[test]
fn order_statistics_bracket_the_true_quantile_at_every_look() {
    // Exponential samples: the true p90 is ln(10). Sorting is kept incremental
    // by looking every 50 samples.
    let (q, alpha) = (0.9, 0.05);
    let truth = 10f64.ln();
    let mixture = Mixture::centred(q);
    let mut rng = fastrand::Rng::with_seed(9);
    let mut missed = 0;
    let runs = 200;
    for _ in 0..runs {
        let mut samples = Vec::new();
        let mut miss = false;
        for _ in 0..40 {
            samples.extend((0..50).map(|_| -(1.0 - rng.f64()).ln()));
            samples.sort_by(f64::total_cmp);
            let ranks = mixture.quantile_ranks(samples.len() as u64, q, alpha);
            let at = |rank: u64| samples[rank as usize - 1];
            miss |= ranks.lower.is_some_and(|r| at(r) > truth);
            miss |= ranks.upper.is_some_and(|r| at(r) <= truth);
        }
        missed += usize::from(miss);
    }
    // A true 5% would show above 11% about once in a thousand tests.
    assert!(
        missed * 100 <= runs * 11,
        "missed in {missed} of {runs} runs"
    );
}
