//! Least request by the power of two choices: draw two distinct backends at random and
//! keep the one with fewer requests in flight per unit of weight.
//!
//! Two choices are almost as good as scanning every backend (the maximum load drops from
//! `log n / log log n` to `log log n`) at a constant cost, and they avoid the herd effect of
//! every proxy sending to the same "least loaded" backend.

use std::sync::Arc;

use crate::endpoint::Endpoint;
use crate::random::below;

pub(crate) struct LeastRequest {
    /// Weights, or empty when they are all equal.
    weights: Vec<u32>,
}

impl LeastRequest {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        Self {
            weights: if equal { Vec::new() } else { weights.to_vec() },
        }
    }

    #[inline]
    pub(crate) fn pick(&self, eps: &[Arc<Endpoint>]) -> usize {
        let (a, b) = two_distinct(eps.len());
        let (la, lb) = (u64::from(eps[a].in_flight()), u64::from(eps[b].in_flight()));
        let a_wins = match (self.weights.get(a), self.weights.get(b)) {
            // la / wa <= lb / wb  <=>  la * wb <= lb * wa
            (Some(&wa), Some(&wb)) => la * u64::from(wb) <= lb * u64::from(wa),
            _ => la <= lb,
        };
        if a_wins { a } else { b }
    }
}

/// Two distinct indices in `0..len` (the same one twice when `len == 1`).
#[inline]
pub(crate) fn two_distinct(len: usize) -> (usize, usize) {
    if len < 2 {
        return (0, 0);
    }
    let a = below(len);
    let mut b = below(len - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_pairs_cover_all_indices() {
        let mut seen = [0u32; 5];
        for _ in 0..5_000 {
            let (a, b) = two_distinct(5);
            assert_ne!(a, b);
            seen[a] += 1;
            seen[b] += 1;
        }
        assert!(seen.iter().all(|&s| s > 1_500), "{seen:?}");
    }
}
