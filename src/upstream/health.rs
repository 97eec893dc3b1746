//! Passive health: an endpoint that keeps failing is ejected from its version's
//! set for a back-off period, then let back in by a single probe request.
//!
//! Failures are transport failures (refused, reset, timed out) and gateway-class
//! statuses from the server (502, 503, 504); a model's own 500 is an answer. After
//! `failures` in a row the endpoint is ejected for `base`, doubling with every
//! ejection in a row up to `max`. When the back-off ends, the first pick takes it
//! as a probe (others keep skipping it for another back-off); the probe's success
//! restores it, its failure ejects it again for longer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When an endpoint is ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    pub failures: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> EjectionPolicy {
        EjectionPolicy {
            failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// Ejections in a row (the back-off doubles with each).
    ejections: AtomicU32,
    /// Milliseconds on [`now_ms`]'s clock until which the endpoint is out; 0 when in.
    ejected_until: AtomicU64,
    /// The current back-off, used to hold others off while a probe runs.
    backoff_ms: AtomicU64,
}

impl Health {
    /// Whether a request may go here now. Past a back-off, the first caller becomes
    /// the probe and everyone else keeps waiting.
    pub fn admits(&self) -> bool {
        self.admits_at(now_ms())
    }

    /// Whether the endpoint would take a request now (not ejected, or past its
    /// back-off), without claiming the probe as [`Health::admits`] does.
    pub fn would_admit(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until == 0 || now_ms() >= until
    }

    /// [`Health::admits`] at `now` on [`now_ms`]'s clock.
    fn admits_at(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        let hold = now + self.backoff_ms.load(Ordering::Relaxed).max(1);
        self.ejected_until
            .compare_exchange(until, hold, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) != 0
    }

    pub fn record_success(&self) {
        // Read first: the common case writes nothing, so busy endpoints do not
        // bounce a cache line between cores.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Release);
        }
    }

    /// Counts a failure; returns whether it ejected the endpoint.
    pub fn record_failure(&self, policy: &EjectionPolicy) -> bool {
        self.record_failure_at(policy, now_ms())
    }

    /// [`Health::record_failure`] at `now` on [`now_ms`]'s clock.
    fn record_failure_at(&self, policy: &EjectionPolicy, now: u64) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < policy.failures.max(1) {
            return false;
        }
        let round = self.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let backoff = policy.base.saturating_mul(1 << round).min(policy.max);
        let backoff_ms = u64::try_from(backoff.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.backoff_ms.store(backoff_ms, Ordering::Relaxed);
        self.ejected_until
            .store(now + backoff_ms, Ordering::Release);
        // Back in, one more failure ejects it again.
        self.consecutive_failures
            .store(policy.failures.saturating_sub(1), Ordering::Relaxed);
        true
    }
}

/// Milliseconds since the first call, never 0.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base_ms: u64) -> EjectionPolicy {
        EjectionPolicy {
            failures: 3,
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(base_ms * 4),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let health = Health::default();
        let p = policy(60_000);
        assert!(!health.record_failure(&p));
        assert!(!health.record_failure(&p));
        health.record_success();
        assert!(!health.record_failure(&p));
        assert!(!health.record_failure(&p));
        assert!(health.admits());
        assert!(
            health.record_failure(&p),
            "the third failure in a row ejects"
        );
        assert!(!health.admits());
        assert!(health.is_ejected());
    }

    #[test]
    fn after_the_back_off_one_probe_goes_through_and_its_result_decides() {
        // Time is passed in, in milliseconds: base back-off 10, doubling up to 40.
        let health = Health::default();
        let p = policy(10);
        let start = 1_000;
        for _ in 0..3 {
            health.record_failure_at(&p, start);
        }
        assert!(!health.admits_at(start + 9), "still backing off");
        assert!(
            health.admits_at(start + 10),
            "the first pick after the back-off is the probe"
        );
        assert!(!health.admits_at(start + 10), "others wait for the probe");
        assert!(
            !health.admits_at(start + 19),
            "others wait for the probe for another back-off"
        );
        assert!(
            health.record_failure_at(&p, start + 12),
            "a failed probe ejects again at once"
        );
        assert!(
            !health.admits_at(start + 31),
            "the second ejection in a row lasts twice as long"
        );
        assert!(health.admits_at(start + 32));
        health.record_success();
        assert!(!health.is_ejected());
        assert!(health.admits() && health.admits());
    }
}
