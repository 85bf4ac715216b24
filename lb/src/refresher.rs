//! Refreshing a balancer from a hot path without taking its lock on every call.

use std::sync::atomic::Ordering;

use crate::Balancer;

/// Calls [`Balancer::refresh`] (ending expired ejections) at most once a second, for hot
/// paths that would otherwise refresh on every pick: `refresh` takes a lock.
pub struct Refresher {
    epoch: std::time::Instant,
    /// When the balancer was last refreshed (ms since `epoch`).
    last: std::sync::atomic::AtomicU64,
}

impl Refresher {
    /// A refresher that has not refreshed yet.
    pub fn new() -> Self {
        Refresher {
            epoch: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Refreshes `lb` when a second has passed since the last refresh by this refresher
    /// (one caller wins when several tick at once).
    pub fn tick(&self, lb: &Balancer) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            lb.refresh();
        }
    }
}

impl Default for Refresher {
    fn default() -> Self {
        Self::new()
    }
}
