//! The simulated model servers: seeded latency and error distributions for the
//! stable version and for each kind of candidate.

use std::time::Duration;

use fastrand::Rng;

/// What latency a version's requests take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// Lognormal around 20 ms (sigma 0.5), and 0.5% of requests ten times as
    /// long: a Python model server's garbage-collection pauses.
    Spiky,
    /// Two modes: 80% around 10 ms, 20% around 60 ms (cache hits and misses).
    Bimodal,
}

/// How a version differs from the stable one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Version {
    pub shape: Shape,
    /// Every request's latency times this.
    pub slowdown: f64,
    /// Requests slower than the shape's 95th percentile, times this.
    pub tail_slowdown: f64,
    pub error_rate: f64,
    /// From the middle of each step interval on, latency times this.
    pub shift_mid_step: f64,
}

/// Error rate of every stable version: 0.1%.
pub const STABLE_ERROR_RATE: f64 = 0.001;

impl Version {
    pub fn stable(shape: Shape) -> Version {
        Version {
            shape,
            slowdown: 1.0,
            tail_slowdown: 1.0,
            error_rate: STABLE_ERROR_RATE,
            shift_mid_step: 1.0,
        }
    }

    /// One request: whether it failed and how long it took. `late` is whether
    /// the step is past the middle of its interval.
    pub fn request(&self, rng: &mut Rng, late: bool) -> (bool, Duration) {
        let (base, tail) = match self.shape {
            Shape::Spiky => {
                let base = lognormal(rng, 20.0, 0.5);
                let spike = rng.f64() < 0.005;
                (if spike { base * 10.0 } else { base }, spike || base > 45.5)
            }
            Shape::Bimodal => {
                let slow = rng.f64() < 0.2;
                let base = lognormal(rng, if slow { 60.0 } else { 10.0 }, 0.3);
                (base, slow && base > 60.0 * 1.224)
            }
        };
        let mut ms = base * self.slowdown;
        if tail {
            ms *= self.tail_slowdown;
        }
        if late {
            ms *= self.shift_mid_step;
        }
        (
            rng.f64() < self.error_rate,
            Duration::from_secs_f64(ms / 1000.0),
        )
    }
}

fn lognormal(rng: &mut Rng, median_ms: f64, sigma: f64) -> f64 {
    // Box-Muller: one standard normal from two uniforms.
    let (u, v) = (1.0 - rng.f64(), rng.f64());
    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
    median_ms * (sigma * z).exp()
}

/// A kind of rollout: the stable version and the candidate.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub stable: Version,
    pub candidate: Version,
    /// Whether a candidate like this one should be promoted.
    pub good: bool,
}

fn case(name: &'static str, shape: Shape, good: bool, change: impl Fn(&mut Version)) -> Case {
    let stable = Version::stable(shape);
    let mut candidate = stable;
    change(&mut candidate);
    Case {
        name,
        stable,
        candidate,
        good,
    }
}

/// Every case the harness runs, good candidates first.
pub fn all() -> Vec<Case> {
    let mut stable_slows = case(
        "identical, stable 1.3x slower mid-step",
        Shape::Spiky,
        true,
        |_| {},
    );
    stable_slows.stable.shift_mid_step = 1.3;
    // Stable getting faster is a candidate getting slower by comparison: 1.33x
    // for the rest of the step, within the 1.5x p99 limit but close to it.
    let mut stable_speeds = case(
        "stable 25% faster mid-step (1.33x by comparison)",
        Shape::Spiky,
        true,
        |_| {},
    );
    stable_speeds.stable.shift_mid_step = 0.75;
    let mut both_shift = case(
        "identical, both 1.5x slower mid-step",
        Shape::Spiky,
        true,
        |c| {
            c.shift_mid_step = 1.5;
        },
    );
    both_shift.stable.shift_mid_step = 1.5;
    vec![
        case("identical (lognormal, spikes)", Shape::Spiky, true, |_| {}),
        case("identical (bimodal)", Shape::Bimodal, true, |_| {}),
        stable_slows,
        stable_speeds,
        both_shift,
        case("1.2x slower", Shape::Spiky, true, |c| c.slowdown = 1.2),
        case("+0.5% errors", Shape::Spiky, true, |c| {
            c.error_rate += 0.005
        }),
        case("2x slower", Shape::Spiky, false, |c| c.slowdown = 2.0),
        case(
            "2x slower in the tail (above p95)",
            Shape::Spiky,
            false,
            |c| {
                c.tail_slowdown = 2.0;
            },
        ),
        case("+2% errors", Shape::Spiky, false, |c| c.error_rate += 0.02),
        case("+5% errors", Shape::Spiky, false, |c| c.error_rate += 0.05),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(version: &Version, q: f64) -> f64 {
        let mut rng = Rng::with_seed(1);
        let mut samples: Vec<f64> = (0..100_000)
            .map(|_| version.request(&mut rng, false).1.as_secs_f64())
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[(q * samples.len() as f64) as usize]
    }

    #[test]
    fn the_tail_slowdown_starts_near_the_95th_percentile() {
        for shape in [Shape::Spiky, Shape::Bimodal] {
            let stable = Version::stable(shape);
            let tail = Version {
                tail_slowdown: 2.0,
                ..stable
            };
            let ratio = |q| p(&tail, q) / p(&stable, q);
            assert!(
                (ratio(0.5) - 1.0).abs() < 0.01,
                "{shape:?}: the median is untouched"
            );
            assert!(
                (ratio(0.99) - 2.0).abs() < 0.2,
                "{shape:?}: p99 {}",
                ratio(0.99)
            );
        }
    }
}
