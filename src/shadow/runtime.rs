//! The shadow's own threads. Mirror exchanges run on a Tokio runtime of their own
//! and comparisons on a thread of their own, apart from the workers that serve
//! production. At `idle` priority (the default) those threads are in Linux's
//! `SCHED_IDLE` class: they run only on CPU time no production thread wants. When
//! the gateway is saturated the mirrors wait, the model's in-flight budget fills,
//! and further mirrors are dropped and counted (`in_flight`) instead of taking CPU
//! from production.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::config::{ShadowPriority, ShadowThreads};

/// A Tokio runtime on dedicated threads; it stops, cancelling what runs on it,
/// when this is dropped.
pub struct ShadowRuntime {
    handle: Handle,
    priority: ShadowPriority,
    _stop: oneshot::Sender<()>,
}

impl ShadowRuntime {
    pub fn start(threads: ShadowThreads) -> io::Result<ShadowRuntime> {
        let priority = threads.priority;
        let mut builder = if threads.count <= 1 {
            Builder::new_current_thread()
        } else {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(threads.count);
            builder
        };
        let runtime = builder
            .enable_all()
            .thread_name("stagegate-shadow")
            .on_thread_start(move || set_priority(priority))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        // The current-thread runtime runs its tasks on this thread, inside
        // `block_on`; the multi-thread one on its workers.
        std::thread::Builder::new()
            .name("stagegate-shadow".into())
            .spawn(move || {
                set_priority(priority);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ShadowRuntime {
            handle,
            priority,
            _stop: stop,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn priority(&self) -> ShadowPriority {
        self.priority
    }
}

/// Puts the calling thread at `priority`. Where that is not possible it keeps the
/// priority it has, and says so once per thread.
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

    /// The scheduling policy of the thread a task of `runtime` runs on.
    fn policy_on(runtime: &ShadowRuntime) -> i32 {
        let (sender, receiver) = std::sync::mpsc::channel();
        runtime.handle().spawn(async move {
            // SAFETY: pid 0 names the calling thread.
            let _ = sender.send(unsafe { libc::sched_getscheduler(0) });
        });
        receiver.recv().expect("the shadow runtime runs tasks")
    }

    #[test]
    fn idle_priority_runs_mirrors_in_the_idle_class_and_normal_does_not() {
        for count in [1, 2] {
            let idle = ShadowRuntime::start(ShadowThreads {
                count,
                priority: ShadowPriority::Idle,
            })
            .unwrap();
            assert_eq!(policy_on(&idle), libc::SCHED_IDLE, "{count} thread(s)");
            let normal = ShadowRuntime::start(ShadowThreads {
                count,
                priority: ShadowPriority::Normal,
            })
            .unwrap();
            assert_eq!(policy_on(&normal), libc::SCHED_OTHER, "{count} thread(s)");
        }
    }

    #[test]
    fn dropping_the_runtime_stops_its_tasks() {
        let runtime = ShadowRuntime::start(ShadowThreads {
            count: 1,
            priority: ShadowPriority::Idle,
        })
        .unwrap();
        let (sender, receiver) = oneshot::channel::<()>();
        runtime.handle().spawn(async move {
            let _held = sender;
            std::future::pending::<()>().await;
        });
        drop(runtime);
        // The task, and the sender it held, are dropped when the runtime stops.
        assert!(receiver.blocking_recv().is_err());
    }
}
