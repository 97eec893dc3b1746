//! The shadow's own threads. Mirror exchanges run on a Tokio runtime of their own
//! and comparisons on a thread of their own, apart from the workers that serve
//! production. At `idle` priority (the default) those threads are in Linux's
//! `SCHED_IDLE` class: they get CPU time only when no production thread wants it.
//! When the gateway is saturated the mirrors wait, the model's in-flight budget
//! fills, and further mirrors are dropped and counted (`in_flight`) instead of
//! taking CPU from production.
//!
//! A production thread must never wait for a shadow thread, which may sit
//! preempted for a long time, so the two share no lock on the way in: mirrors are
//! handed over through a lock-free channel that a feeder task on the shadow
//! runtime drains, napping between batches while there is traffic. Only when it
//! has been idle for a while does it sleep until the next mirror wakes it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Duration;

use tokio::runtime::Builder;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{ShadowPriority, ShadowThreads};

/// A mirror's work, as the shadow threads run it.
pub type ShadowJob = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The feeder's nap between batches; a mirror starts at most this late.
const NAP: Duration = Duration::from_millis(1);
/// Empty naps in a row before the feeder sleeps until the next mirror.
const NAPS_BEFORE_SLEEPING: u32 = 100;
/// How often the feeder runs the upkeep it was given.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The shadow threads; they stop, cancelling what runs on them, when this is
/// dropped.
pub struct ShadowRuntime {
    jobs: Sender<ShadowJob>,
    feeder: Arc<Feeder>,
    priority: ShadowPriority,
}

/// What the producers and the feeder share besides the channel.
#[derive(Default)]
struct Feeder {
    sleeping: AtomicBool,
    stopped: AtomicBool,
    wake: Notify,
}

impl ShadowRuntime {
    /// Starts the threads. `upkeep` runs on them every few seconds (reaping the
    /// shadow connection pools, whose sockets belong to this runtime).
    pub fn start(
        threads: ShadowThreads,
        upkeep: impl Fn() + Send + 'static,
    ) -> io::Result<ShadowRuntime> {
        let (jobs, receiver) = mpsc::channel::<ShadowJob>();
        let feeder = Arc::new(Feeder::default());
        let (ready, started) = mpsc::sync_channel::<io::Result<()>>(1);
        let shared = Arc::clone(&feeder);
        // The runtime is built on its own thread, so a failure to start leaves
        // nothing behind that would have to be dropped in an async context.
        std::thread::Builder::new()
            .name("stagegate-shadow".into())
            .spawn(move || {
                set_priority(threads.priority);
                let runtime = match build_runtime(threads) {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                runtime.block_on(feed(receiver, shared, upkeep));
            })?;
        started.recv().map_err(|_| {
            io::Error::other("the shadow thread ended before its runtime started")
        })??;
        tracing::info!(
            threads = threads.count,
            priority = threads.priority.as_str(),
            "shadow threads started"
        );
        Ok(ShadowRuntime {
            jobs,
            feeder,
            priority: threads.priority,
        })
    }

    pub fn priority(&self) -> ShadowPriority {
        self.priority
    }

    /// Hands `job` to the shadow threads without blocking or taking a lock the
    /// shadow threads also take (except to wake a feeder that went to sleep).
    /// Gives the job back if the threads are gone.
    pub fn submit(&self, job: ShadowJob) -> Result<(), ShadowJob> {
        self.jobs.send(job).map_err(|returned| returned.0)?;
        // Pairs with the fence in `feed`: either the feeder sees this job when it
        // looks once more before sleeping, or this sees it sleeping.
        fence(Ordering::SeqCst);
        if self.feeder.sleeping.load(Ordering::Relaxed) {
            self.feeder.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for ShadowRuntime {
    fn drop(&mut self) {
        self.feeder.stopped.store(true, Ordering::Release);
        self.feeder.wake.notify_one();
    }
}

fn build_runtime(threads: ShadowThreads) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads.count <= 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(threads.count);
        builder
    };
    let priority = threads.priority;
    builder
        .enable_all()
        .thread_name("stagegate-shadow")
        .on_thread_start(move || set_priority(priority))
        .build()
}

/// Spawns every job handed over, until the runtime is dropped.
async fn feed(jobs: Receiver<ShadowJob>, feeder: Arc<Feeder>, upkeep: impl Fn()) {
    let mut empty_naps = 0;
    let mut next_upkeep = Instant::now() + UPKEEP_INTERVAL;
    while !feeder.stopped.load(Ordering::Acquire) {
        match spawn_waiting(&jobs) {
            Some(0) => empty_naps += 1,
            Some(_) => empty_naps = 0,
            None => return,
        }
        if Instant::now() >= next_upkeep {
            upkeep();
            next_upkeep = Instant::now() + UPKEEP_INTERVAL;
        }
        if empty_naps < NAPS_BEFORE_SLEEPING {
            tokio::time::sleep(NAP).await;
            continue;
        }
        feeder.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if spawn_waiting(&jobs) == Some(0) {
            tokio::select! {
                () = feeder.wake.notified() => {}
                () = tokio::time::sleep_until(next_upkeep) => {}
            }
        }
        feeder.sleeping.store(false, Ordering::Relaxed);
        empty_naps = 0;
    }
}

/// Spawns the jobs waiting in the channel; how many, or `None` once every sender
/// is gone.
fn spawn_waiting(jobs: &Receiver<ShadowJob>) -> Option<usize> {
    let mut spawned = 0;
    loop {
        match jobs.try_recv() {
            Ok(job) => {
                tokio::spawn(job);
                spawned += 1;
            }
            Err(TryRecvError::Empty) => return Some(spawned),
            Err(TryRecvError::Disconnected) => return None,
        }
    }
}

/// Puts the calling thread at `priority`. Where that is not possible it keeps the
/// priority it has, and says so.
pub fn set_priority(priority: ShadowPriority) {
    if priority == ShadowPriority::Normal {
        return;
    }
    if let Err(error) = enter_idle_class() {
        tracing::warn!(
            %error,
            "cannot lower a shadow thread's priority; mirrors compete with production for CPU"
        );
    }
}

#[cfg(target_os = "linux")]
fn enter_idle_class() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread, and `param` is a valid sched_param
    // that outlives the call.
    let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn enter_idle_class() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "idle scheduling needs Linux's SCHED_IDLE",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn start(count: usize, priority: ShadowPriority) -> ShadowRuntime {
        ShadowRuntime::start(ShadowThreads { count, priority }, || {}).unwrap()
    }

    /// The scheduling policy of the thread a job of `runtime` runs on.
    fn policy_on(runtime: &ShadowRuntime) -> i32 {
        let (sender, receiver) = mpsc::channel();
        let job = Box::pin(async move {
            // SAFETY: pid 0 names the calling thread.
            let _ = sender.send(unsafe { libc::sched_getscheduler(0) });
        });
        assert!(runtime.submit(job).is_ok());
        receiver.recv().expect("the shadow threads run jobs")
    }

    #[test]
    fn idle_priority_runs_mirrors_in_the_idle_class_and_normal_does_not() {
        for count in [1, 2] {
            let idle = start(count, ShadowPriority::Idle);
            assert_eq!(policy_on(&idle), libc::SCHED_IDLE, "{count} thread(s)");
            let normal = start(count, ShadowPriority::Normal);
            assert_eq!(policy_on(&normal), libc::SCHED_OTHER, "{count} thread(s)");
        }
    }

    #[test]
    fn a_sleeping_feeder_is_woken_by_the_next_job() {
        let runtime = start(1, ShadowPriority::Normal);
        // Wait until the feeder has gone to sleep, so the next job must wake it.
        while !runtime.feeder.sleeping.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(policy_on(&runtime), libc::SCHED_OTHER);
    }

    #[test]
    fn dropping_the_runtime_stops_its_jobs() {
        let runtime = start(1, ShadowPriority::Idle);
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let (running, is_running) = mpsc::channel();
        let job = Box::pin(async move {
            let _held = sender;
            let _ = running.send(());
            std::future::pending::<()>().await;
        });
        assert!(runtime.submit(job).is_ok());
        is_running.recv().unwrap();
        drop(runtime);
        // The job, and the sender it held, are dropped when the runtime stops.
        assert!(receiver.blocking_recv().is_err());
    }
}
