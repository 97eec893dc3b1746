//! Plans and seeded samples for the rollout module's tests.

use std::time::Duration;

use crate::registry::{DEFAULT_CONFIDENCE, Gates, OnFailure, Plan};
use crate::routing::stats::{RouteStats, StatsSnapshot};

pub fn plan(steps: Vec<f64>, gates: Gates) -> Plan {
    Plan {
        steps,
        step_interval_s: 10.0,
        min_requests: 100,
        max_step_duration_s: None,
        confidence: DEFAULT_CONFIDENCE,
        gates,
        on_failure: OnFailure::Rollback,
    }
}

pub fn gates() -> Gates {
    Gates {
        max_error_rate: Some(0.01),
        max_p99_ratio: Some(1.5),
        max_latency_increase: None,
        latency_quantile: 0.5,
        max_ttft_p99_ratio: None,
        max_tpot_p99_ratio: None,
        min_shadow_agreement: None,
        min_shadow_compared: 50,
    }
}

/// `n` requests, the first `errors` failed, with lognormal latencies around
/// `median_ms` (sigma 0.5), drawn from `seed`.
pub fn requests(n: u64, errors: u64, median_ms: f64, seed: u64) -> StatsSnapshot {
    let stats = RouteStats::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..n {
        stats.record(i < errors, lognormal(&mut rng, median_ms));
    }
    stats.snapshot()
}

pub fn lognormal(rng: &mut fastrand::Rng, median_ms: f64) -> Duration {
    // Box-Muller: one standard normal from two uniforms.
    let (u, v) = (1.0 - rng.f64(), rng.f64());
    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
    Duration::from_secs_f64(median_ms / 1000.0 * (0.5 * z).exp())
}
