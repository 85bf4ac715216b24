//! Weighted random: a uniform draw, or a draw over cumulative weights.

use crate::random::{below, next_u64};

pub(crate) struct WeightedRandom {
    /// Cumulative weights; empty when all weights are equal (uniform draw).
    cumulative: Vec<u64>,
    len: usize,
}

impl WeightedRandom {
    pub(crate) fn new(weights: &[u32]) -> Self {
        Self {
            cumulative: cumulative(weights),
            len: weights.len(),
        }
    }

    #[inline]
    pub(crate) fn pick(&self) -> usize {
        weighted_index(&self.cumulative, self.len)
    }
}

/// Cumulative sums of `weights`, or nothing when they are all equal.
pub(crate) fn cumulative(weights: &[u32]) -> Vec<u64> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return Vec::new();
    }
    let mut sum = 0u64;
    weights
        .iter()
        .map(|&w| {
            sum += u64::from(w);
            sum
        })
        .collect()
}

/// A random index, uniform when `cumulative` is empty, else proportional to the weights.
#[inline]
pub(crate) fn weighted_index(cumulative: &[u64], len: usize) -> usize {
    match cumulative.last() {
        None => below(len),
        Some(&total) => {
            let r = ((u128::from(next_u64()) * u128::from(total)) >> 64) as u64;
            cumulative.partition_point(|&c| c <= r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_draw_follows_weights() {
        let p = WeightedRandom::new(&[1, 3]);
        let mut hits = [0u32; 2];
        for _ in 0..40_000 {
            hits[p.pick()] += 1;
        }
        // Expect 10 000 / 30 000; 5 sigma is about 430.
        assert!((9_500..10_500).contains(&hits[0]), "{hits:?}");
    }
}
