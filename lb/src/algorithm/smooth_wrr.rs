//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`).
//!
//! Every pick adds each backend's weight to its *current* value, takes the largest, and
//! subtracts the total from the winner. Over any `sum(weights)` consecutive picks each
//! backend is picked exactly `weight` times, and heavy backends are spread out:
//! weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`.

use std::sync::Mutex;

use super::round_robin::RoundRobin;

pub(crate) enum SmoothWrr {
    /// All weights equal: plain round robin, lock-free.
    Equal(RoundRobin, usize),
    Weighted(Weighted),
}

pub(crate) struct Weighted {
    weights: Vec<i64>,
    total: i64,
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub(crate) fn new(weights: &[u32]) -> Self {
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self::Equal(RoundRobin::new(), weights.len());
        }
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        Self::Weighted(Weighted {
            total: weights.iter().sum(),
            current: Mutex::new(vec![0; weights.len()]),
            weights,
        })
    }

    #[inline]
    pub(crate) fn pick(&self) -> usize {
        match self {
            Self::Equal(rr, len) => rr.pick(*len),
            Self::Weighted(w) => w.pick(),
        }
    }
}

impl Weighted {
    fn pick(&self) -> usize {
        // A poisoned lock only means another picker panicked mid-update; the
        // current values are still integers, so keep going with them.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut best = 0;
        let mut max = i64::MIN;
        for (i, (c, w)) in current.iter_mut().zip(&self.weights).enumerate() {
            *c += w;
            // Strictly greater: the first backend wins a tie, as in nginx.
            if *c > max {
                max = *c;
                best = i;
            }
        }
        if let Some(c) = current.get_mut(best) {
            *c -= self.total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let p = SmoothWrr::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| p.pick()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    /// Property: on 200 seeded random weight vectors, every one of three consecutive
    /// cycles of `sum(weights)` picks gives each backend exactly its weight.
    #[test]
    fn exact_over_every_cycle() {
        let mut seed = 0x1234_5678_u64;
        for _case in 0..200 {
            seed = crate::hash::mix64(seed);
            let n = 1 + (seed % 12) as usize;
            let weights: Vec<u32> = (0..n)
                .map(|i| 1 + (crate::hash::mix64(seed ^ i as u64) % 20) as u32)
                .collect();
            let total: u32 = weights.iter().sum();
            let p = SmoothWrr::new(&weights);
            for _cycle in 0..3 {
                let mut counts = vec![0u32; n];
                for _ in 0..total {
                    counts[p.pick()] += 1;
                }
                assert_eq!(counts, weights, "weights {weights:?}");
            }
        }
    }
}
