//! The comparison thread: a plain OS thread (at the shadow threads' priority) fed
//! through a bounded queue, so the CPU work of diffing answers never runs on the
//! async workers that serve production, and a burst of mirrors cannot queue
//! without bound (a full queue drops the pair and counts it).
//!
//! Under load the thread drains the queue in batches and naps between them, so a
//! submission never has to wake it: waking a thread per pair (a futex call and a
//! context switch on a busy core) cost more than the comparison itself. After a
//! while with nothing to do it blocks instead, and the next pair wakes it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use super::ModelShadow;
use super::capture::Frames;
use super::compare::Answer;
use super::cpu_share::CpuShare;
use super::report::Compared;
use super::runtime::set_priority;
use crate::config::ShadowPriority;

/// Pairs waiting for the comparison thread.
const QUEUE_DEPTH: usize = 4096;
/// The nap between batches; comparisons are a few milliseconds late at most.
const NAP: Duration = Duration::from_millis(2);
/// Empty naps in a row before the thread blocks until the next pair.
const NAPS_BEFORE_BLOCKING: u32 = 50;
/// Answer bytes the queue may hold at once.
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// One production/shadow pair to compare.
pub struct Job {
    pub shadow: Arc<ModelShadow>,
    pub target: usize,
    pub request_id: String,
    pub path: String,
    pub primary_status: u16,
    pub primary_binary_header: Option<HeaderValue>,
    pub primary_body: Frames,
    pub primary_latency: Duration,
    pub primary_first_frame: Option<Duration>,
    pub shadow_status: u16,
    pub shadow_binary_header: Option<HeaderValue>,
    pub shadow_body: Bytes,
    pub shadow_latency: Duration,
    pub shadow_first_frame: Option<Duration>,
    /// Both answers are gRPC `ModelInferResponse` messages.
    pub grpc: bool,
}

/// The sending side; the thread ends when every clone is dropped.
#[derive(Clone)]
pub struct CompareQueue {
    jobs: SyncSender<Job>,
    /// Answer bytes queued now.
    bytes: Arc<ByteBudget>,
}

impl CompareQueue {
    /// Starts the comparison thread at `priority`, its CPU metered by `cpu`.
    pub fn start(priority: ShadowPriority, cpu: Arc<CpuShare>) -> io::Result<CompareQueue> {
        let (sender, receiver) = sync_channel(QUEUE_DEPTH);
        let bytes = Arc::new(ByteBudget::new(QUEUE_BYTES));
        let queued = Arc::clone(&bytes);
        std::thread::Builder::new()
            .name("stagegate-compare".into())
            .spawn(move || {
                set_priority(priority);
                cpu.meter_current_thread();
                run(receiver, &queued)
            })?;
        Ok(CompareQueue {
            jobs: sender,
            bytes,
        })
    }

    /// Queues a pair; `false` if the queue is full, in pairs or in bytes (or the
    /// thread is gone).
    pub fn submit(&self, job: Job) -> bool {
        let size = job.size();
        if !self.bytes.try_take(size) {
            return false;
        }
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.bytes.release(size);
                false
            }
        }
    }
}

impl Job {
    fn size(&self) -> usize {
        self.primary_body.len() + self.shadow_body.len()
    }
}

fn run(jobs: Receiver<Job>, queued: &ByteBudget) {
    let mut idle = 0;
    let take = |job: Job| {
        queued.release(job.size());
        compare(job);
    };
    loop {
        match jobs.try_recv() {
            Ok(job) => {
                idle = 0;
                take(job);
            }
            Err(TryRecvError::Empty) if idle < NAPS_BEFORE_BLOCKING => {
                idle += 1;
                std::thread::sleep(NAP);
            }
            Err(TryRecvError::Empty) => match jobs.recv() {
                Ok(job) => {
                    idle = 0;
                    take(job);
                }
                Err(_) => return,
            },
            Err(TryRecvError::Disconnected) => return,
        }
    }
}

/// Bytes that may be held at once.
pub struct ByteBudget {
    held: AtomicUsize,
    limit: usize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> ByteBudget {
        ByteBudget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `size` bytes of the budget, or nothing if that would exceed it.
    pub fn try_take(&self, size: usize) -> bool {
        if self.held.fetch_add(size, Ordering::AcqRel) + size > self.limit {
            self.held.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release(&self, size: usize) {
        self.held.fetch_sub(size, Ordering::AcqRel);
    }
}

fn compare(job: Job) {
    let version = &job.shadow.versions[job.target];
    let primary_body = job.primary_body.join();
    let verdict = job.shadow.comparator.compare(
        Answer {
            status: job.primary_status,
            body: &primary_body,
            binary_header: job
                .primary_binary_header
                .as_ref()
                .map(HeaderValue::as_bytes),
            grpc: job.grpc,
        },
        Answer {
            status: job.shadow_status,
            body: &job.shadow_body,
            binary_header: job.shadow_binary_header.as_ref().map(HeaderValue::as_bytes),
            grpc: job.grpc,
        },
    );
    version.metrics.comparison(verdict.matched);
    version.report.record(&Compared {
        request_id: &job.request_id,
        path: &job.path,
        primary: &primary_body,
        shadow: &job.shadow_body,
        primary_latency: job.primary_latency,
        shadow_latency: job.shadow_latency,
        first_frames: (job.primary_first_frame, job.shadow_first_frame),
        verdict: &verdict,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_refuses_what_does_not_fit_and_frees_on_release() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(50), "60 + 50 is over 100");
        assert!(budget.try_take(40));
        assert!(!budget.try_take(1));
        budget.release(60);
        assert!(budget.try_take(50));
    }
}
