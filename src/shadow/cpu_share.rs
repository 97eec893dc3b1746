//! The shadow's share of CPU (`server.shadow_cpu_share`, a fraction of one core).
//! Mirrors and comparisons run on threads of normal priority, so they get CPU
//! time even when other processes keep every core busy; what they use is metered
//! from the threads' own CPU clocks, and once they have used up their share new
//! mirrors are dropped (counted as `cpu_share`) until the share has refilled. So
//! shadow work neither starves nor takes more than its share from production.
//!
//! Mirroring also costs production's threads some work (building the mirror
//! requests and handing them over); that time is charged to the share too
//! ([`CpuShare::charge`]), so the share bounds what mirroring takes from
//! production, not only what the shadow threads use.
//!
//! The meter is a token bucket in CPU nanoseconds, refilled at `share` per
//! wall-clock nanosecond, holding at most [`BURST`] worth of refill, and read by
//! the shadow threads themselves ([`CpuShare::sample`]); the request path only
//! loads one flag ([`CpuShare::allows`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much unused share may be saved up: mirrors may burst at full speed for
/// `share x BURST` of CPU after an idle spell.
const BURST: Duration = Duration::from_millis(100);

pub struct CpuShare {
    share: f64,
    over: AtomicBool,
    /// Nanoseconds of mirroring done on production's threads (handing mirrors
    /// over), charged to the share as well.
    charged: AtomicU64,
    meter: Mutex<Meter>,
}

struct Meter {
    /// Each shadow thread's CPU clock and its reading at the last sample.
    clocks: Vec<(ThreadClock, Duration)>,
    tokens: f64,
    last_sample: Instant,
}

impl CpuShare {
    pub fn new(share: f64) -> CpuShare {
        CpuShare {
            share,
            over: AtomicBool::new(false),
            charged: AtomicU64::new(0),
            meter: Mutex::new(Meter {
                clocks: Vec::new(),
                tokens: share * BURST.as_nanos() as f64,
                last_sample: Instant::now(),
            }),
        }
    }

    /// Whether a new mirror may start: the request path's only question.
    pub fn allows(&self) -> bool {
        !self.over.load(Ordering::Relaxed)
    }

    /// Charges `spent` of a production thread's time on mirroring to the share.
    pub fn charge(&self, spent: Duration) {
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.charged.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts the calling thread's CPU time from now on (a shadow thread, at its
    /// start).
    pub fn meter_current_thread(&self) {
        match ThreadClock::current() {
            Some(clock) => {
                let now = clock.read().unwrap_or_default();
                self.lock().clocks.push((clock, now));
            }
            None => tracing::warn!(
                "cannot read a shadow thread's CPU clock; its CPU time is not metered"
            ),
        }
    }

    /// Charges the CPU time used since the last sample, refills for the time
    /// passed, and decides whether mirrors may start.
    pub fn sample(&self) {
        let mut meter = self.lock();
        let now = Instant::now();
        let passed = now.duration_since(meter.last_sample);
        meter.last_sample = now;
        let mut used = Duration::from_nanos(self.charged.swap(0, Ordering::Relaxed));
        // A thread that ended has no clock any more; it is forgotten.
        meter.clocks.retain_mut(|(clock, last)| match clock.read() {
            Some(reading) => {
                used += reading.saturating_sub(*last);
                *last = reading;
                true
            }
            None => false,
        });
        let burst = self.share * BURST.as_nanos() as f64;
        let refill = self.share * passed.as_nanos() as f64;
        meter.tokens = (meter.tokens + refill).min(burst) - used.as_nanos() as f64;
        self.over.store(meter.tokens <= 0.0, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Meter> {
        // Only the shadow threads take this lock, never the request path.
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread's CPU-time clock, readable from any thread of the process.
#[derive(Debug, Clone, Copy)]
struct ThreadClock(libc::clockid_t);

impl ThreadClock {
    #[cfg(target_os = "linux")]
    fn current() -> Option<ThreadClock> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is always valid for the calling thread, and
        // `clock` is a valid place for the result.
        let status = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        (status == 0).then_some(ThreadClock(clock))
    }

    #[cfg(not(target_os = "linux"))]
    fn current() -> Option<ThreadClock> {
        None
    }

    /// CPU time the thread has used; `None` once it has ended.
    fn read(self) -> Option<Duration> {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `time` is a valid timespec to write into; an invalid clock id
        // only makes the call fail.
        let status = unsafe { libc::clock_gettime(self.0, &mut time) };
        if status != 0 {
            return None;
        }
        let secs = u64::try_from(time.tv_sec).ok()?;
        let nanos = u32::try_from(time.tv_nsec).ok()?;
        Some(Duration::new(secs, nanos))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn burn(for_cpu: Duration) {
        let clock = ThreadClock::current().unwrap();
        let start = clock.read().unwrap();
        while clock.read().unwrap() - start < for_cpu {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn mirrors_stop_once_the_share_is_used_and_start_again_once_it_refilled() {
        let share = CpuShare::new(0.2);
        share.meter_current_thread();
        share.sample();
        assert!(share.allows(), "a fresh share allows mirrors");
        // More than the whole burst (0.2 x 100 ms), in CPU time.
        burn(Duration::from_millis(40));
        share.sample();
        assert!(!share.allows(), "the share is used up");
        // Idle, the share refills at 0.2 CPU-seconds per second.
        let refilled = std::iter::repeat_with(|| {
            std::thread::sleep(Duration::from_millis(10));
            share.sample();
            share.allows()
        })
        .take(200)
        .any(|allows| allows);
        assert!(refilled, "the share never refilled");
    }

    #[test]
    fn time_charged_from_production_threads_uses_the_share_up_too() {
        let share = CpuShare::new(0.2);
        share.sample();
        assert!(share.allows());
        share.charge(Duration::from_millis(40));
        share.sample();
        assert!(
            !share.allows(),
            "charged time counts like the shadow threads' own"
        );
    }

    #[test]
    fn an_ended_thread_is_forgotten() {
        let share = std::sync::Arc::new(CpuShare::new(0.2));
        let metered = std::sync::Arc::clone(&share);
        std::thread::spawn(move || metered.meter_current_thread())
            .join()
            .unwrap();
        share.sample();
        assert!(share.lock().clocks.is_empty());
    }
}
