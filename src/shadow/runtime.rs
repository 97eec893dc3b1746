//! The shadow's own threads. Mirror exchanges run on a Tokio runtime of their own
//! and comparisons on a thread of their own, apart from the workers that serve
//! production. At `normal` priority (the default) they compete for CPU like any
//! thread, within their metered share ([`super::cpu_share`]), which the feeder
//! below keeps up to date. At `idle` priority they are in Linux's `SCHED_IDLE`
//! class and get CPU time only when nothing else on the host wants it.
//!
//! A production thread must never wait for a shadow thread, which may sit
//! preempted for a long time, so handing a mirror over takes no lock and wakes no
//! thread: mirrors go through a lock-free channel that a feeder task on the shadow
//! runtime drains, napping between drains (1 ms while mirrors arrive, growing to
//! 50 ms while none do).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Duration;

use std::sync::Arc;

use tokio::time::Instant;

use super::cpu_share::CpuShare;
use crate::config::{ShadowPriority, ShadowThreads};

/// A mirror's work, as the shadow threads run it.
pub type ShadowJob = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The feeder's nap between drains while mirrors arrive; a mirror starts at
/// most this late under traffic.
const SHORTEST_NAP: Duration = Duration::from_millis(1);
/// The nap it grows to, doubling, while none do.
const LONGEST_NAP: Duration = Duration::from_millis(50);
/// How often the feeder runs the upkeep it was given.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The shadow threads; they stop, cancelling what runs on them, when this is
/// dropped (the feeder sees the channel close).
pub struct ShadowRuntime {
    jobs: Sender<ShadowJob>,
}

impl ShadowRuntime {
    /// Starts the threads, their CPU metered by `cpu`. `upkeep` runs on them
    /// every few seconds (reaping the shadow connection pools, whose sockets
    /// belong to this runtime).
    pub fn start(
        threads: ShadowThreads,
        cpu: Arc<CpuShare>,
        upkeep: impl Fn() + Send + 'static,
    ) -> io::Result<ShadowRuntime> {
        let (jobs, receiver) = mpsc::channel::<ShadowJob>();
        let (ready, started) = mpsc::sync_channel::<io::Result<()>>(1);
        // The runtime is built on its own thread, so a failure to start leaves
        // nothing behind that would have to be dropped in an async context. The
        // thread lowers its priority only once it has reported back: the caller
        // waits for that, and must not wait for an idle-priority thread.
        std::thread::Builder::new()
            .name("stagegate-shadow".into())
            .spawn(move || {
                let runtime = match build_runtime(threads, &cpu) {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                set_priority(threads.priority);
                cpu.meter_current_thread();
                runtime.block_on(feed(receiver, &cpu, upkeep));
            })?;
        started.recv().map_err(|_| {
            io::Error::other("the shadow thread ended before its runtime started")
        })??;
        tracing::info!(
            threads = threads.count,
            priority = threads.priority.as_str(),
            "shadow threads started"
        );
        Ok(ShadowRuntime { jobs })
    }

    /// Hands `job` to the shadow threads: no lock, no wake-up. Gives the job
    /// back if the threads are gone.
    pub fn submit(&self, job: ShadowJob) -> Result<(), ShadowJob> {
        self.jobs.send(job).map_err(|returned| returned.0)
    }
}

fn build_runtime(
    threads: ShadowThreads,
    cpu: &Arc<CpuShare>,
) -> io::Result<tokio::runtime::Runtime> {
    let priority = threads.priority;
    let cpu = Arc::clone(cpu);
    crate::runtime::builder(threads.count)
        .enable_all()
        .thread_name("stagegate-shadow")
        .on_thread_start(move || {
            set_priority(priority);
            cpu.meter_current_thread();
        })
        .build()
}

/// Spawns every job handed over, and meters the CPU share, until the runtime is
/// dropped.
async fn feed(jobs: Receiver<ShadowJob>, cpu: &CpuShare, upkeep: impl Fn()) {
    let mut nap = SHORTEST_NAP;
    let mut next_upkeep = Instant::now() + UPKEEP_INTERVAL;
    loop {
        cpu.sample();
        nap = match spawn_waiting(&jobs) {
            None => return,
            Some(0) => (nap * 2).min(LONGEST_NAP),
            Some(_) => SHORTEST_NAP,
        };
        if Instant::now() >= next_upkeep {
            upkeep();
            next_upkeep = Instant::now() + UPKEEP_INTERVAL;
        }
        tokio::time::sleep(nap).await;
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
        let threads = ShadowThreads {
            count,
            priority,
            cpu_share: crate::config::CpuShareOfCore::DEFAULT,
        };
        ShadowRuntime::start(threads, Arc::new(CpuShare::new(0.2)), || {}).unwrap()
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
