//! Consistent hashing on a ketama-compatible continuum.
//!
//! For backend `i` with share `p_i = w_i / Σw` of `n` backends, libketama computes
//! `floor(p_i × H × n)` MD5 digests of `"<addr>-<k>"` and takes four little-endian
//! 32-bit points from each (H = 40: 160 points per backend at equal weights). A key goes
//! to the first point at or after its 32-bit hash, wrapping around. With
//! [`hash::ketama_key_hash`](crate::hash::ketama_key_hash) as the key hash, the mapping
//! is the one libketama and the memcached clients that follow it compute.
//!
//! Removing a backend moves only the keys it owned; the price is variance: a backend's
//! share deviates by about `1/sqrt(points)` from its ideal, so raise `hashes_per_backend`
//! where balance matters more than compatibility.

use crate::hash::md5;

const BUCKETS: usize = 1 << 16;

pub(crate) struct Ring {
    points: Vec<u32>,
    owners: Vec<u32>,
    /// `index[b]` = the first point whose top 16 bits are `>= b` (65537 entries): a lookup
    /// scans only the few points of one bucket instead of binary-searching the ring.
    index: Vec<u32>,
}

impl Ring {
    pub(crate) fn build(names: &[&str], weights: &[u32], hashes: u32) -> Self {
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let n = names.len() as f64;
        let mut ring: Vec<(u32, u32)> = Vec::new();
        for (i, (name, &w)) in names.iter().zip(weights).enumerate() {
            let share = if total > 0.0 {
                f64::from(w) / total
            } else {
                0.0
            };
            // libketama computes this product in single precision; so do we.
            let ks = ((share as f32) * (hashes as f32) * (n as f32)).floor() as u32;
            for k in 0..ks.max(1) {
                let d = md5(format!("{name}-{k}").as_bytes());
                for h in 0..4 {
                    let p =
                        u32::from_le_bytes([d[h * 4], d[h * 4 + 1], d[h * 4 + 2], d[h * 4 + 3]]);
                    ring.push((p, i as u32));
                }
            }
        }
        ring.sort_unstable();
        let points: Vec<u32> = ring.iter().map(|&(p, _)| p).collect();
        let mut index = Vec::with_capacity(BUCKETS + 1);
        let mut at = 0usize;
        for b in 0..=BUCKETS as u64 {
            let start = b << 16;
            while at < points.len() && u64::from(points[at]) < start {
                at += 1;
            }
            index.push(at as u32);
        }
        Self {
            owners: ring.iter().map(|&(_, o)| o).collect(),
            points,
            index,
        }
    }

    /// The owner of the first point at or after `key as u32`, wrapping.
    #[inline]
    pub(crate) fn pick(&self, key: u64) -> usize {
        let h = key as u32;
        let b = (h >> 16) as usize;
        let lo = self.index.get(b).copied().unwrap_or(0) as usize;
        let hi = self.index.get(b + 1).copied().unwrap_or(0) as usize;
        // The first point >= h is in this bucket, or is the next bucket's first point.
        let i = match self.points.get(lo..hi) {
            Some(bucket) => lo + bucket.partition_point(|&p| p < h),
            None => self.points.partition_point(|&p| p < h),
        };
        let i = if i == self.points.len() { 0 } else { i };
        self.owners.get(i).copied().unwrap_or(0) as usize
    }

    /// The fraction of the 32-bit key space each backend owns.
    #[cfg(test)]
    pub(crate) fn shares(&self, n: usize) -> Vec<f64> {
        let mut owned = vec![0u64; n];
        let len = self.points.len();
        for i in 0..len {
            let prev = if i == 0 {
                u64::from(self.points[len - 1])
            } else {
                u64::from(self.points[i - 1])
            };
            let here = u64::from(self.points[i]);
            let arc = if i == 0 {
                here + (1u64 << 32) - prev
            } else {
                here - prev
            };
            owned[self.owners[i] as usize] += arc;
        }
        owned
            .iter()
            .map(|&o| o as f64 / (1u64 << 32) as f64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:11211", i / 250, i % 250 + 1))
            .collect()
    }

    #[test]
    fn ketama_point_count_and_order() {
        let names = names(3);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ring = Ring::build(&refs, &[1, 1, 1], 40);
        assert_eq!(ring.points.len(), 3 * 160);
        assert!(ring.points.windows(2).all(|w| w[0] <= w[1]));
        // The first digest of the first server is one of its points.
        let d = md5(b"10.0.0.1:11211-0");
        let p = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        let at = ring.points.partition_point(|&x| x < p);
        assert_eq!(ring.points[at], p);
        assert_eq!(ring.pick(u64::from(p)), 0);
    }

    /// Measured: with 1024 points per backend, each of 10 / 50 / 100 backends owns its
    /// ideal share within ±15 %, and removing one backend moves only its own keys, at most
    /// 1/N + 1 % of the key space.
    #[test]
    fn balance_and_disruption() {
        for &n in &[10usize, 50, 100] {
            let names = names(n);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let ring = Ring::build(&refs, &vec![1; n], 256);
            let shares = ring.shares(n);
            let ideal = 1.0 / n as f64;
            let worst = shares
                .iter()
                .map(|s| (s - ideal).abs() / ideal)
                .fold(0.0, f64::max);
            assert!(worst < 0.15, "n={n}: worst relative deviation {worst}");

            let smaller = Ring::build(&refs[1..], &vec![1; n - 1], 256);
            let moved = moved_fraction(&ring, &smaller, |old| old.checked_sub(1));
            assert!(moved <= ideal + 0.01, "n={n}: moved {moved}");
            // The keys that moved are exactly the removed backend's.
            assert!(
                (moved - shares[0]).abs() < 1e-3,
                "n={n}: {moved} vs {}",
                shares[0]
            );
        }
    }

    /// Samples the key space on 2^20 evenly spaced hashes.
    fn moved_fraction(a: &Ring, b: &Ring, remap: impl Fn(usize) -> Option<usize>) -> f64 {
        let samples = 1u64 << 20;
        let step = (1u64 << 32) / samples;
        let moved = (0..samples)
            .filter(|s| {
                let key = s * step;
                remap(a.pick(key)) != Some(b.pick(key))
            })
            .count();
        moved as f64 / samples as f64
    }
}
