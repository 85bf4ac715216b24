//! A time window of ten buckets: counts age out a bucket at a time.

use std::time::{Duration, Instant};

pub(crate) const BUCKETS: usize = 10;

pub(crate) struct Sliding<T> {
    buckets: [T; BUCKETS],
    head: usize,
    head_start: Instant,
    bucket_len: Duration,
}

impl<T: Default + Copy> Sliding<T> {
    /// A window of `len` (at least 10 ms) starting at `now`.
    pub(crate) fn new(len: Duration, now: Instant) -> Self {
        Self {
            buckets: [T::default(); BUCKETS],
            head: 0,
            head_start: now,
            bucket_len: (len / BUCKETS as u32).max(Duration::from_millis(1)),
        }
    }

    /// Drops the buckets that fell out of the window by `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        let mut steps = 0;
        while now.saturating_duration_since(self.head_start) >= self.bucket_len {
            steps += 1;
            if steps > BUCKETS {
                self.clear(now);
                return;
            }
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = T::default();
            self.head_start += self.bucket_len;
        }
    }

    /// Empties the window.
    pub(crate) fn clear(&mut self, now: Instant) {
        self.buckets = [T::default(); BUCKETS];
        self.head_start = now;
    }

    /// The current bucket.
    pub(crate) fn head_mut(&mut self) -> &mut T {
        &mut self.buckets[self.head]
    }

    /// Every bucket.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.buckets.iter()
    }
}
