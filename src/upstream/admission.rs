//! Admission control: at most `max_concurrent_requests` in flight; past that, a
//! request is refused at once (503) instead of queueing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicUsize,
    limit: usize,
}

/// One admitted request; releases its slot when dropped.
#[derive(Debug)]
pub struct Permit(Arc<Admission>);

impl Admission {
    pub fn new(limit: usize) -> Arc<Admission> {
        Arc::new(Admission {
            in_flight: AtomicUsize::new(0),
            limit,
        })
    }

    /// A permit, or `None` when the limit is reached.
    pub fn try_admit(self: &Arc<Self>) -> Option<Permit> {
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if previous >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit(Arc::clone(self)))
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_frees_on_drop() {
        let admission = Admission::new(2);
        let a = admission.try_admit().unwrap();
        let _b = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        assert_eq!(admission.in_flight(), 2);
        drop(a);
        assert!(admission.try_admit().is_some());
    }
}
