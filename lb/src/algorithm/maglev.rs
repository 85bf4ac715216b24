//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as in Envoy.
//!
//! Every backend walks its own permutation of the `M` table slots
//! (`offset + k × skip mod M`, both from hashes of its name); in turns, each backend claims
//! the next free slot of its permutation until the table is full. A backend of weight `w`
//! takes a turn only every `max_weight / w` rounds. Each backend ends up with its share of
//! slots to within one slot, a lookup is one table read, and removing one of `n` backends
//! moves little more than its own `1/n` of the keys.

use crate::hash::{hash_with_seed, mix64};

/// The default table size: a prime, as the algorithm requires, big enough for ~650
/// backends at 1 % imbalance.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

pub(crate) struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub(crate) fn build(names: &[&str], weights: &[u32], size: u32) -> Self {
        Self {
            table: build_table(names, weights, size),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, key: u64) -> usize {
        let len = self.table.len() as u128;
        let slot = ((u128::from(mix64(key)) * len) >> 64) as usize;
        self.table.get(slot).copied().unwrap_or(0) as usize
    }

    #[cfg(test)]
    pub(crate) fn table(&self) -> &[u32] {
        &self.table
    }
}

/// Fills an `m`-slot table with backend indices.
pub(crate) fn build_table(names: &[&str], weights: &[u32], m: u32) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    let n = names.len();
    let mut table = vec![EMPTY; m as usize];
    if n == 0 || m == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    // Per backend: the next slot of its permutation and its skip.
    let mut next: Vec<u64> = Vec::with_capacity(n);
    let mut skip: Vec<u64> = Vec::with_capacity(n);
    for name in names {
        next.push(hash_with_seed(name.as_bytes(), 0x6d61_676c) % m64);
        skip.push(hash_with_seed(name.as_bytes(), 0x736b_6970) % (m64 - 1).max(1) + 1);
    }
    let w: Vec<u64> = (0..n)
        .map(|i| u64::from(weights.get(i).copied().unwrap_or(1).max(1)))
        .collect();
    let max_w = w.iter().copied().max().unwrap_or(1);
    let mut target = vec![0u64; n];
    let mut filled = 0u32;
    let mut round = 0u64;
    loop {
        for i in 0..n {
            if round * w[i] < target[i] {
                continue;
            }
            target[i] += max_w;
            let mut c = next[i];
            while table[c as usize] != EMPTY {
                c += skip[i];
                if c >= m64 {
                    c -= m64;
                }
            }
            table[c as usize] = i as u32;
            c += skip[i];
            if c >= m64 {
                c -= m64;
            }
            next[i] = c;
            filled += 1;
            if filled == m {
                return table;
            }
        }
        round += 1;
    }
}

/// Trial division; table sizes are small enough.
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}:80", i / 250, i % 250 + 1))
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut c = vec![0u64; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / table.len() as f64).collect()
    }

    /// Measured on the whole key space (every slot): with 65537 slots, each of 10 / 100 /
    /// 500 / 1000 backends owns its ideal share within 1 % (relative), and removing one
    /// backend moves at most 1/N + 1 % of the keys.
    #[test]
    fn balance_and_disruption_at_65537() {
        for &n in &[10usize, 100, 500, 1000] {
            let names = names(n);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let full = build_table(&refs, &vec![1; n], DEFAULT_TABLE_SIZE);
            let ideal = 1.0 / n as f64;
            let worst = shares(&full, n)
                .iter()
                .map(|s| (s - ideal).abs() / ideal)
                .fold(0.0, f64::max);
            assert!(worst <= 0.01, "n={n}: worst relative deviation {worst}");

            // Remove a backend from the middle; indices above it shift down by one.
            let gone = n / 2;
            let mut rest = refs.clone();
            rest.remove(gone);
            let smaller = build_table(&rest, &vec![1; n - 1], DEFAULT_TABLE_SIZE);
            let moved = full
                .iter()
                .zip(&smaller)
                .filter(|&(&a, &b)| {
                    let a = a as usize;
                    let remapped = if a > gone { a - 1 } else { a };
                    a == gone || remapped != b as usize
                })
                .count() as f64
                / f64::from(DEFAULT_TABLE_SIZE);
            assert!(
                moved <= ideal + 0.01,
                "n={n}: moved {moved} > {}",
                ideal + 0.01
            );
        }
    }

    #[test]
    fn weights_give_proportional_slots() {
        let names = names(3);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let t = build_table(&refs, &[1, 2, 5], DEFAULT_TABLE_SIZE);
        let s = shares(&t, 3);
        for (got, want) in s.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0]) {
            assert!((got - want).abs() / want < 0.01, "{s:?}");
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(251));
        assert!(!is_prime(65_536));
        assert!(!is_prime(1));
    }

    #[test]
    fn lookup_is_stable() {
        let names = names(7);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let a = Maglev::build(&refs, &[1; 7], 251);
        let b = Maglev::build(&refs, &[1; 7], 251);
        assert_eq!(a.table(), b.table());
        for k in 0..1000u64 {
            assert_eq!(a.pick(k), b.pick(k));
        }
    }
}
