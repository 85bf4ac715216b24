//! Peak-EWMA (Finagle, linkerd): a latency-aware power of two choices.
//!
//! Each backend keeps an exponentially weighted moving average of its round-trip times
//! that jumps to any slower sample at once (the *peak*) and decays towards faster ones
//! with a time constant. The cost of a backend is `rtt × (in_flight + 1) / weight`; of two
//! random backends the cheaper wins. A backend that slows down sheds load immediately.

use std::sync::Arc;
use std::time::Duration;

use super::least_request::two_distinct;
use crate::endpoint::Endpoint;

pub(crate) struct PeakEwma {
    weights: Vec<u32>,
    default_rtt: f64,
}

impl PeakEwma {
    pub(crate) fn new(weights: &[u32], default_rtt: Duration) -> Self {
        Self {
            weights: weights.to_vec(),
            default_rtt: default_rtt.as_nanos().max(1) as f64,
        }
    }

    fn cost(&self, ep: &Arc<Endpoint>, i: usize) -> f64 {
        let rtt = ep.rtt_nanos().unwrap_or(self.default_rtt);
        let w = self.weights.get(i).copied().unwrap_or(1).max(1);
        rtt * (f64::from(ep.in_flight()) + 1.0) / f64::from(w)
    }

    #[inline]
    pub(crate) fn pick(&self, eps: &[Arc<Endpoint>]) -> usize {
        let (a, b) = two_distinct(eps.len());
        if self.cost(&eps[a], a) <= self.cost(&eps[b], b) {
            a
        } else {
            b
        }
    }
}
