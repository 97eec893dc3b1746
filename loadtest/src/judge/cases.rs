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
    /// From the middle of the first step interval on, latency times this.
    pub shift: f64,
    /// Stop-the-world pauses (a garbage collector) per second, each holding
    /// every request in flight for `stall_ms`: slow answers in bursts, not
    /// one at a time.
    pub stalls_per_s: f64,
    pub stall_ms: f64,
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
            shift: 1.0,
            stalls_per_s: 0.0,
            stall_ms: 0.0,
        }
    }

    /// One request: whether it failed and how long it took. `shifted` is
    /// whether the shift has begun, `stalled_ms` how long a pause in progress
    /// holds it, `cost` its user's factor.
    pub fn request(
        &self,
        rng: &mut Rng,
        shifted: bool,
        stalled_ms: f64,
        cost: f64,
    ) -> (bool, Duration) {
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
        let mut ms = base * self.slowdown * cost;
        if tail {
            ms *= self.tail_slowdown;
        }
        if shifted {
            ms *= self.shift;
        }
        ms += stalled_ms;
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

/// A fixed pool of users, each sending requests of its own cost: the canary's
/// sticky split then compares two groups of users, not two random halves of
/// the requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Users {
    pub count: usize,
    /// Each user's requests take a lognormal factor of this sigma.
    pub cost_sigma: f64,
}

/// A kind of rollout: the stable version and the candidate.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub stable: Version,
    pub candidate: Version,
    /// Whether a candidate like this one should be promoted.
    pub good: bool,
    /// `None`: every request from a new user.
    pub users: Option<Users>,
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
        users: None,
    }
}

/// Stop-the-world pauses of one version, as a Poisson process in time.
#[derive(Debug, Default)]
pub struct Stalls {
    /// Pauses that began in this tick or still last into it: `(start, end)` in
    /// seconds.
    current: Vec<(f64, f64)>,
}

impl Stalls {
    /// Draws the pauses beginning in `[start, start + tick)`.
    pub fn next_tick(&mut self, version: &Version, rng: &mut Rng, start: f64, tick: f64) {
        self.current.retain(|&(_, end)| end > start);
        if version.stalls_per_s <= 0.0 {
            return;
        }
        for _ in 0..super::poisson(rng, version.stalls_per_s * tick) {
            let at = start + rng.f64() * tick;
            self.current.push((at, at + version.stall_ms / 1000.0));
        }
    }

    /// How long a request arriving at `t` waits for a pause in progress, in ms.
    pub fn held_ms(&self, t: f64) -> f64 {
        self.current
            .iter()
            .filter(|&&(start, end)| start <= t && t < end)
            .map(|&(_, end)| (end - t) * 1000.0)
            .fold(0.0, f64::max)
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
    stable_slows.stable.shift = 1.3;
    let mut both_shift = case(
        "identical, both 1.5x slower mid-step",
        Shape::Spiky,
        true,
        |c| c.shift = 1.5,
    );
    both_shift.stable.shift = 1.5;
    let stalls = |v: &mut Version| {
        v.stalls_per_s = 0.5;
        v.stall_ms = 80.0;
    };
    let mut stalling = case(
        "identical, bursts: 80 ms pauses of all in flight, 0.5/s",
        Shape::Spiky,
        true,
        stalls,
    );
    stalls(&mut stalling.stable);
    let mut users = case(
        "identical, 300 sticky users of varying cost (sigma 0.3)",
        Shape::Spiky,
        true,
        |_| {},
    );
    users.users = Some(Users {
        count: 300,
        cost_sigma: 0.3,
    });
    // Stable getting faster is a candidate getting slower by comparison: 1.33x
    // from mid-step on, within the 1.5x p99 limit but close to it.
    let mut stable_speeds = case(
        "stable 25% faster mid-step (1.33x by comparison)",
        Shape::Spiky,
        true,
        |_| {},
    );
    stable_speeds.stable.shift = 0.75;
    vec![
        case("identical (lognormal, spikes)", Shape::Spiky, true, |_| {}),
        case("identical (bimodal)", Shape::Bimodal, true, |_| {}),
        stable_slows,
        both_shift,
        stalling,
        users,
        stable_speeds,
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

/// A user pool: each user's bucket in the sticky split (0-1) and cost factor.
pub fn user_pool(users: Users, rng: &mut Rng) -> Vec<(f64, f64)> {
    (0..users.count)
        .map(|_| (rng.f64(), lognormal(rng, 1.0, users.cost_sigma)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(version: &Version, q: f64) -> f64 {
        let mut rng = Rng::with_seed(1);
        let mut samples: Vec<f64> = (0..100_000)
            .map(|_| version.request(&mut rng, false, 0.0, 1.0).1.as_secs_f64())
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

    #[test]
    fn a_stall_holds_every_request_in_flight_until_it_ends() {
        let mut version = Version::stable(Shape::Spiky);
        version.stall_ms = 100.0;
        let mut stalls = Stalls {
            current: vec![(10.4, 10.5)],
        };
        assert!((stalls.held_ms(10.45) - 50.0).abs() < 1e-6);
        assert_eq!((stalls.held_ms(10.3), stalls.held_ms(10.5)), (0.0, 0.0));
        let mut rng = Rng::with_seed(2);
        version.stalls_per_s = 20.0;
        stalls.next_tick(&version, &mut rng, 11.0, 1.0);
        assert!(
            stalls
                .current
                .iter()
                .all(|&(start, end)| start >= 11.0 && end - start > 0.099)
        );
        assert!(!stalls.current.is_empty(), "about 20 pauses drawn");
    }
}
