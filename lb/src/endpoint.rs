//! The runtime state of one backend, shared by every table that lists it and every lease.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::clock::Clock;

/// What ejects an endpoint when its outlier detection trips (the balancer's core; a trait so
/// endpoints do not depend on the balancer that owns them).
pub(crate) trait Eject: Send + Sync {
    /// Ejects `ep` if the balancer's budget allows.
    fn eject(&self, ep: &Arc<Endpoint>);
}

/// Settings every endpoint of one balancer reads on the lease path.
pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) epoch: Instant,
    /// Consecutive 5xx before ejection (0 = off).
    pub(crate) max_5xx: u32,
    /// Consecutive connect failures before ejection (0 = off).
    pub(crate) max_connect_failures: u32,
    /// Peak-EWMA decay time constant in nanoseconds.
    pub(crate) decay_nanos: f64,
    /// Who ejects an endpoint whose outlier detection tripped (the balancer).
    pub(crate) core: Weak<dyn Eject>,
}

impl Shared {
    pub(crate) fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One backend plus its counters. Counters are lossy-but-atomic: no lock on the pick path.
pub(crate) struct Endpoint {
    pub(crate) backend: Backend,
    /// `addr` as text: the name hashed by the ring and Maglev.
    pub(crate) name: String,
    /// Holders of this endpoint that are not leases: the registry entry and every live
    /// table listing it. `strong_count - holders` is the number of leases in flight.
    pub(crate) holders: AtomicU32,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_connect: AtomicU32,
    /// Peak-EWMA round-trip time in nanoseconds (f64 bits); 0 = no sample yet.
    rtt_bits: AtomicU64,
    /// When `rtt_bits` was last updated, in nanoseconds since `Shared::epoch`.
    rtt_stamp: AtomicU64,
    pub(crate) shared: Arc<Shared>,
}

impl Endpoint {
    pub(crate) fn new(backend: Backend, shared: Arc<Shared>) -> Self {
        Self {
            name: backend.addr.to_string(),
            backend,
            holders: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            rtt_bits: AtomicU64::new(0),
            rtt_stamp: AtomicU64::new(0),
            shared,
        }
    }

    /// Leases in flight: every `Arc` that is not a holder is a lease, so a lease costs one
    /// reference-count increment and no counter of its own. While a table is being
    /// published or dropped the figure can be off by one for an instant.
    #[inline]
    pub(crate) fn in_flight(self: &Arc<Self>) -> u32 {
        let strong = u32::try_from(Arc::strong_count(self)).unwrap_or(u32::MAX);
        strong.saturating_sub(self.holders.load(Ordering::Relaxed))
    }

    /// The peak-EWMA estimate in nanoseconds, or `None` before the first sample.
    pub(crate) fn rtt_nanos(&self) -> Option<f64> {
        let v = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    /// Folds one round-trip sample into the peak-EWMA: a slower sample is taken at once,
    /// a faster one decays the estimate with time constant `decay`.
    pub(crate) fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let now_ns = self.shared.nanos_since_epoch(now);
        let prev = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        let last = self.rtt_stamp.swap(now_ns, Ordering::Relaxed);
        let next = if sample >= prev {
            sample
        } else {
            let elapsed = now_ns.saturating_sub(last) as f64;
            let w = (-elapsed / self.shared.decay_nanos).exp();
            prev * w + sample * (1.0 - w)
        };
        self.rtt_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn reset_failures(&self) {
        if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
        if self.consecutive_connect.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect.store(0, Ordering::Relaxed);
        }
    }
}

/// A non-lease reference to an endpoint (the registry's), counted in `holders`.
pub(crate) struct Held(Arc<Endpoint>);

impl Held {
    pub(crate) fn new(ep: Arc<Endpoint>) -> Self {
        ep.holders.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }
}

impl std::ops::Deref for Held {
    type Target = Arc<Endpoint>;
    fn deref(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.holders.fetch_sub(1, Ordering::Relaxed);
    }
}
