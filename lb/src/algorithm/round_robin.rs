//! Round robin: each eligible backend in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared turn counter, started at a random offset so that proxies do not all begin on
/// the first backend after a table rebuild.
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new() -> Self {
        Self {
            next: AtomicUsize::new(crate::random::next_u64() as usize),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len
    }
}
