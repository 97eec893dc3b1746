//! Open-loop pacing. The timetable is global: slot `k` is due `k / rate` seconds
//! after the start and belongs to connection `k % connections`, so the `nth` request
//! of connection `c` of `n` is slot `c + nth * n`.
//!
//! Slots are released by a [`Pacer`] on a thread of its own rather than by tokio's
//! timer: that timer has millisecond granularity and rounds deadlines up, which
//! added about a millisecond to every latency measured from the schedule, more
//! than a fast backend takes to answer. A blocking sleep is accurate to tens of
//! microseconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The open-loop timetable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second, all connections together; positive and finite.
    pub rate: f64,
    pub connections: usize,
}

impl Schedule {
    /// The global slot of the `nth` request of `connection`.
    pub fn slot(&self, connection: usize, nth: u64) -> Option<u64> {
        nth.checked_mul(self.connections as u64)?
            .checked_add(connection as u64)
    }

    /// The connection that sends `slot`.
    pub fn connection(&self, slot: u64) -> usize {
        // The remainder is below `connections`, so it fits back in a usize.
        (slot % self.connections as u64) as usize
    }

    /// When `slot` is due, from the start of the run.
    pub fn offset(&self, slot: u64) -> Option<Duration> {
        Duration::try_from_secs_f64(slot as f64 / self.rate).ok()
    }

    /// The first slot due at or after `elapsed`; with the warmup, the first one that
    /// is recorded.
    pub fn first_slot_after(&self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.rate).ceil() as u64
    }
}

/// Which slots the pacer releases: all those before `end_slot` and due before
/// `end` (from the start), whichever stops it first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    pub end_slot: Option<u64>,
    pub end: Option<Duration>,
}

/// Releases slots to the workers as they come due. Each worker waits on its own
/// counter and `Notify`, so releasing one slot wakes exactly one worker.
#[derive(Debug)]
pub struct Pacer {
    released: Vec<AtomicU64>,
    wakers: Vec<Notify>,
    done: AtomicBool,
    stopped: AtomicBool,
}

impl Pacer {
    pub fn new(connections: usize) -> Self {
        Pacer {
            released: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            wakers: (0..connections).map(|_| Notify::new()).collect(),
            done: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// Releases every slot within `bounds` at its time, then marks the pacer done.
    /// Blocks: run it on a thread of its own.
    pub fn run(&self, schedule: Schedule, start: Instant, bounds: Bounds) {
        for slot in 0u64.. {
            if self.stopped.load(Ordering::Relaxed)
                || bounds.end_slot.is_some_and(|end| slot >= end)
            {
                break;
            }
            let Some(offset) = schedule.offset(slot) else {
                break;
            };
            if bounds.end.is_some_and(|end| offset >= end) {
                break;
            }
            let Some(due) = start.checked_add(offset) else {
                break;
            };
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let connection = schedule.connection(slot);
            self.released[connection].fetch_add(1, Ordering::Release);
            // A stored permit if the worker is busy, so the release is never missed.
            self.wakers[connection].notify_one();
        }
        self.done.store(true, Ordering::Release);
        for waker in &self.wakers {
            waker.notify_one();
        }
    }

    /// Makes `run` finish early, as soon as its current sleep ends.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Waits until the `nth` slot of `connection` is released; `false` if the pacer
    /// finished without releasing it.
    pub async fn wait(&self, connection: usize, nth: u64) -> bool {
        loop {
            // `done` first: once it is seen, every release made before it is visible.
            let done = self.done.load(Ordering::Acquire);
            if self.released[connection].load(Ordering::Acquire) > nth {
                return true;
            }
            if done {
                return false;
            }
            self.wakers[connection].notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_ms(schedule: Schedule, connection: usize, nth: u64) -> u128 {
        let slot = schedule.slot(connection, nth).unwrap();
        schedule.offset(slot).unwrap().as_millis()
    }

    #[test]
    fn slots_interleave_across_connections() {
        // 100 req/s over 4 connections: a slot every 10 ms, connection c takes
        // slots c, c+4, c+8, ...
        let schedule = Schedule {
            rate: 100.0,
            connections: 4,
        };
        assert_eq!(offset_ms(schedule, 0, 0), 0);
        assert_eq!(offset_ms(schedule, 1, 0), 10);
        assert_eq!(offset_ms(schedule, 3, 0), 30);
        assert_eq!(offset_ms(schedule, 0, 1), 40);
        assert_eq!(offset_ms(schedule, 2, 5), 220);
        assert_eq!(schedule.connection(22), 2);
    }

    #[test]
    fn slots_cover_every_interval_once() {
        let schedule = Schedule {
            rate: 1000.0,
            connections: 3,
        };
        let mut slots: Vec<u64> = (0..3)
            .flat_map(|c| (0..10).map(move |nth| schedule.slot(c, nth).unwrap()))
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..30).collect::<Vec<u64>>());
        for slot in slots {
            assert_eq!(schedule.connection(slot), (slot % 3) as usize);
        }
    }

    #[test]
    fn warmup_ends_at_a_slot_boundary() {
        let schedule = Schedule {
            rate: 1000.0,
            connections: 8,
        };
        assert_eq!(schedule.first_slot_after(Duration::ZERO), 0);
        assert_eq!(schedule.first_slot_after(Duration::from_millis(2)), 2);
        assert_eq!(schedule.first_slot_after(Duration::from_micros(2500)), 3);
    }

    #[test]
    fn overflow_is_none() {
        let schedule = Schedule {
            rate: 1e-300,
            connections: 2,
        };
        assert_eq!(schedule.slot(0, u64::MAX), None);
        assert_eq!(schedule.offset(1_000_000), None);
    }

    #[tokio::test]
    async fn pacer_releases_each_connection_its_slots() {
        let pacer = Pacer::new(2);
        let schedule = Schedule {
            rate: 1e6,
            connections: 2,
        };
        let bounds = Bounds {
            end_slot: Some(5),
            end: None,
        };
        pacer.run(schedule, Instant::now(), bounds);
        // Slots 0, 2, 4 for connection 0; 1, 3 for connection 1.
        for nth in 0..3 {
            assert!(pacer.wait(0, nth).await);
        }
        assert!(!pacer.wait(0, 3).await);
        assert!(pacer.wait(1, 1).await);
        assert!(!pacer.wait(1, 2).await);
    }

    #[tokio::test]
    async fn pacer_stops_at_the_end_of_the_run() {
        let pacer = Pacer::new(1);
        let schedule = Schedule {
            rate: 1000.0,
            connections: 1,
        };
        let bounds = Bounds {
            end_slot: None,
            end: Some(Duration::from_millis(10)),
        };
        pacer.run(schedule, Instant::now(), bounds);
        assert!(pacer.wait(0, 9).await);
        assert!(!pacer.wait(0, 10).await);
    }
}
