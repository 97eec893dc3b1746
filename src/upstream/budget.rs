//! The gateway-wide budget for request-body bytes held in memory
//! (`server.max_buffered_body_bytes`): the read-ahead of bodies before they are
//! forwarded, and the copies kept for mirrors. Every byte the gateway holds for a
//! body is reserved here first; a reservation that does not fit is refused at
//! once, and the caller streams instead of holding (see `proxy`'s request path).
//! Bytes passing through (one chunk at a time, from client to model server) are
//! not held and not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicUsize,
    /// The most ever held at once, for `stagegate_buffered_body_bytes_peak`.
    peak: AtomicUsize,
    /// Reservations refused, for `stagegate_body_budget_refusals_total`.
    refusals: AtomicU64,
    limit: usize,
}

/// Bytes held under the budget; they are given back when it is dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
            limit,
        })
    }

    /// An empty reservation, to grow with [`Reservation::grow`].
    pub fn empty(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Whether `bytes` more fit; takes them if so. Never goes over the limit,
    /// even for a moment, so the gauge never shows more than the limit.
    fn take(&self, bytes: usize) -> bool {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let Some(after) = held.checked_add(bytes).filter(|&after| after <= self.limit) else {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match self
                .held
                .compare_exchange_weak(held, after, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(after, Ordering::Relaxed);
                    return true;
                }
                Err(now) => held = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

impl Reservation {
    /// Reserves `bytes` more; `false` (and nothing taken) when they do not fit.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let fits = self.budget.take(bytes);
        if fits {
            self.bytes += bytes;
        }
        fits
    }

    /// The limit of the budget it is held in.
    pub fn budget_limit(&self) -> usize {
        self.budget.limit()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back what is over `bytes`; `None` when nothing is left held.
    pub fn shrunk_to(mut self, bytes: usize) -> Option<Reservation> {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
        (self.bytes > 0).then_some(self)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_the_limit_and_gives_back_on_drop() {
        let budget = BodyBudget::new(100);
        let mut a = budget.empty();
        assert!(a.grow(60));
        let mut b = budget.empty();
        assert!(!b.grow(41), "60 + 41 is over the limit");
        assert!(b.grow(40));
        assert_eq!(
            (budget.held(), budget.peak(), budget.refusals()),
            (100, 100, 1)
        );
        drop(a);
        assert_eq!(budget.held(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!((budget.held(), budget.peak()), (0, 100));
    }

    #[test]
    fn an_overflowing_request_is_refused() {
        let budget = BodyBudget::new(usize::MAX);
        let mut a = budget.empty();
        assert!(a.grow(usize::MAX));
        assert!(!budget.empty().grow(1));
    }
}
