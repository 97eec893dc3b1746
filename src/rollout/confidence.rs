//! Confidence bounds that stay valid however often they are looked at.
//!
//! A gate looks at its evidence every controller tick. A bound that is right 99%
//! of the time at one fixed sample size (Wilson's, a t-interval) is wrong far
//! more often than 1% when it is recomputed as every request arrives and the
//! first crossing is acted on. These bounds are *confidence sequences*: with
//! probability at least `1 - alpha` they hold at every sample size at once, so a
//! gate may look as often as it likes.
//!
//! The construction (Robbins 1970; Howard, Ramdas, McAuliffe and Sekhon 2021):
//! for `hits` of `trials` Bernoulli events, the ratio of the marginal likelihood
//! under a mixture of Beta priors to the likelihood under the true rate `p` is a
//! nonnegative martingale starting at 1, so by Ville's inequality it exceeds
//! `1 / alpha` at any time with probability at most `alpha`. The bounds are the
//! rates whose likelihood is at least `alpha` times the mixture's. For rates
//! the mixture's components sit on a grid from 0.1% to 99.9% at concentrations
//! from 10 to 100,000 prior observations, so some component fits the evidence
//! wherever the rate is and however much there is; a uniform component keeps
//! far-off rates (every request failing) quick to show.
//!
//! Quantiles use the same bound on a count: the number of samples at or below
//! the true `q`-quantile is Binomial(n, q), so the counts it plausibly took name
//! the order statistics that bracket the quantile (Howard and Ramdas 2022). No
//! assumption is made about the latency distribution.

/// Concentrations (prior sample sizes) of the mixture's components: from a
/// prior worth ten observations to one worth a hundred thousand, so some
/// component matches the evidence at any sample size.
const CONCENTRATIONS: [f64; 5] = [10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
/// Where the rate mixture puts its components: both tails on a log scale, so a
/// rate of 0.1% (errors) is bounded as tightly as one of 99.9% (agreement).
const RATE_GRID: [f64; 13] = [
    0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999,
];
/// Centres closer to 0 or 1 than this are moved in, so every prior is proper.
const CENTRE_MARGIN: f64 = 1e-4;
/// Halvings of the search interval: 2^-60 is far below any rate that matters.
const BISECTIONS: usize = 60;

/// A mixture of Beta priors, equally weighted and fixed before any data is seen.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// `(a, b, ln B(a, b))` of each component.
    components: Vec<(f64, f64, f64)>,
}

/// A rate's bounds: `lower <= p <= upper`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBounds {
    pub lower: f64,
    pub upper: f64,
}

/// The 1-based ranks of the order statistics that bracket a quantile: the
/// `lower`-th smallest sample is at or below it and the `upper`-th is above it.
/// `None` when there are too few samples for that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantileRanks {
    pub lower: Option<u64>,
    pub upper: Option<u64>,
}

static RATES: std::sync::LazyLock<Mixture> =
    std::sync::LazyLock::new(|| Mixture::around(&RATE_GRID));

impl Mixture {
    /// The mixture for rates that could be anywhere (error rates, agreement).
    pub fn rates() -> &'static Mixture {
        &RATES
    }

    /// A mixture centred on one known rate, for counts around a quantile `q`.
    pub fn centred(q: f64) -> Mixture {
        Mixture::around(&[q])
    }

    /// Components at every concentration around each centre, plus a uniform one.
    fn around(centres: &[f64]) -> Mixture {
        let mut components = vec![(1.0, 1.0, 0.0)];
        for centre in centres {
            let mu = centre.clamp(CENTRE_MARGIN, 1.0 - CENTRE_MARGIN);
            for c in CONCENTRATIONS {
                let (a, b) = (c * mu, c * (1.0 - mu));
                components.push((a, b, ln_beta(a, b)));
            }
        }
        Mixture { components }
    }

    /// The log of the mixture's marginal likelihood of this sequence.
    fn log_marginal(&self, hits: f64, misses: f64) -> f64 {
        // One pass of log-sum-exp: the running sum is kept relative to the
        // largest term so far.
        let (mut top, mut sum) = (f64::NEG_INFINITY, 0.0);
        for &(a, b, prior) in &self.components {
            let term = ln_beta(a + hits, b + misses) - prior;
            if term > top {
                sum = sum * (top - term).exp() + 1.0;
                top = term;
            } else {
                sum += (term - top).exp();
            }
        }
        top + sum.ln() - (self.components.len() as f64).ln()
    }

    /// Bounds on the rate behind `hits` of `trials`, valid at every `trials` at
    /// once with probability `1 - alpha`.
    pub fn rate_bounds(&self, hits: u64, trials: u64, alpha: f64) -> RateBounds {
        if trials == 0 {
            return RateBounds {
                lower: 0.0,
                upper: 1.0,
            };
        }
        let (h, m) = (hits.min(trials) as f64, (trials - hits.min(trials)) as f64);
        let floor = self.log_marginal(h, m) + alpha.ln();
        let plausible = |p: f64| log_likelihood(p, h, m) > floor;
        let estimate = h / (h + m);
        let lower = if plausible(0.0) {
            0.0
        } else {
            bisect(0.0, estimate, plausible)
        };
        let upper = if plausible(1.0) {
            1.0
        } else {
            bisect(estimate, 1.0, |p| !plausible(p))
        };
        RateBounds { lower, upper }
    }

    /// Whether `rate` lies outside [`Mixture::rate_bounds`] (cheaper than both
    /// bounds, for checking coverage).
    pub fn excludes(&self, rate: f64, hits: u64, trials: u64, alpha: f64) -> bool {
        let (h, m) = (hits.min(trials) as f64, (trials - hits.min(trials)) as f64);
        trials > 0 && log_likelihood(rate, h, m) <= self.log_marginal(h, m) + alpha.ln()
    }

    /// Which order statistics of `n` samples bracket their `q`-quantile, valid at
    /// every `n` at once with probability `1 - alpha`. Use a mixture centred on `q`.
    pub fn quantile_ranks(&self, n: u64, q: f64, alpha: f64) -> QuantileRanks {
        if n == 0 {
            return QuantileRanks {
                lower: None,
                upper: None,
            };
        }
        // How plausible it is that `s` samples fell at or below the quantile; a
        // linear term minus a log-sum-exp of convex terms, so concave in `s` and
        // plausible on one interval of counts.
        let fit = |s: u64| {
            let (h, m) = (s as f64, (n - s) as f64);
            log_likelihood(q, h, m) - self.log_marginal(h, m) - alpha.ln()
        };
        let peak = concave_peak(0, n, fit);
        if fit(peak) <= 0.0 {
            // Cannot happen for alpha < 1: the binomial likelihood at q and the
            // mixture's both sum to 1 over the counts (times their binomial
            // coefficients), so at some count the first is at least the second.
            // Should rounding say otherwise, a bound that claims nothing is safe.
            return QuantileRanks {
                lower: None,
                upper: None,
            };
        }
        // The fewest and the most samples that plausibly fell at or below it.
        let fewest = first_true(0, peak, |s| fit(s) > 0.0);
        let most = first_true(peak, n + 1, |s| fit(s) <= 0.0) - 1;
        QuantileRanks {
            lower: (fewest >= 1).then_some(fewest),
            upper: (most < n).then_some(most + 1),
        }
    }
}

fn log_likelihood(p: f64, hits: f64, misses: f64) -> f64 {
    let term = |count: f64, rate: f64| {
        if count == 0.0 { 0.0 } else { count * rate.ln() }
    };
    term(hits, p) + term(misses, 1.0 - p)
}

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// The point in `[lo, hi]` where `flips` turns from false to true.
fn bisect(mut lo: f64, mut hi: f64, flips: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..BISECTIONS {
        let mid = 0.5 * (lo + hi);
        if flips(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The smallest integer in `[lo, hi]` where the monotone `test` holds (`hi` if none).
fn first_true(mut lo: u64, mut hi: u64, test: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if test(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Where the concave `f` is largest on `[lo, hi]`.
fn concave_peak(lo: u64, hi: u64, f: impl Fn(u64) -> f64) -> u64 {
    first_true(lo, hi, |s| f(s) >= f(s + 1))
}

#[cfg(test)]
#[path = "confidence_tests.rs"]
mod tests;
