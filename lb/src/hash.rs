//! Hashing used by the consistent-hash algorithms: a fast 64-bit key hash and MD5 for
//! ketama-compatible ring points.
//!
//! [`hash_key`] is stable across releases and platforms (FNV-1a followed by the
//! MurmurHash3 finaliser), so a key maps to the same slot on every proxy of a fleet.
//! [`md5`] is a small, dependency-free RFC 1321 implementation; it is used for ring points
//! only, never for anything that needs collision resistance.
//!
//! ```
//! use flowgate_lb::hash::{hash_key, md5};
//! assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
//! assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
//! let d = md5(b"abc");
//! assert_eq!(d[..4], [0x90, 0x01, 0x50, 0x98]);
//! ```

/// Hashes a request key (a session id, a client address, a header value) to 64 bits.
///
/// Pass the result to [`Balancer::pick`](crate::Balancer::pick).
pub fn hash_key(bytes: &[u8]) -> u64 {
    hash_with_seed(bytes, 0)
}

/// Hashes `bytes` with a seed; different seeds give independent hashes.
pub fn hash_with_seed(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The MurmurHash3 64-bit finaliser: spreads every input bit over every output bit.
#[inline]
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ketama key hash: the first four bytes of `md5(key)`, little-endian.
///
/// Pass `u64::from(ketama_key_hash(key))` to a ring-hash balancer to find the same server
/// libketama would.
pub fn ketama_key_hash(key: &[u8]) -> u32 {
    let d = md5(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9,
    14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15,
    21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// MD5 (RFC 1321) of `input`.
pub fn md5(input: &[u8]) -> [u8; 16] {
    let mut k = [0u32; 64];
    for (i, slot) in k.iter_mut().enumerate() {
        // K[i] = floor(abs(sin(i + 1)) * 2^32), as the RFC defines it.
        *slot = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32;
    }
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    for block in msg.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (i, w) in block.chunks_exact(4).enumerate() {
            m[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        state[0] = state[0].wrapping_add(a);
        state[1] = state[1].wrapping_add(b);
        state[2] = state[2].wrapping_add(c);
        state[3] = state[3].wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, s) in state.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_rfc1321_vectors() {
        let vectors: [(&[u8], &str); 5] = [
            (b"", "d41d8cd98f00b204e9800998ecf8427e"),
            (b"a", "0cc175b9c0f1b6a831c399e269772661"),
            (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in vectors {
            assert_eq!(hex(md5(input)), want);
        }
    }

    #[test]
    fn key_hash_spreads_low_bits() {
        let mut buckets = [0u32; 16];
        for i in 0u32..16_000 {
            buckets[(hash_key(&i.to_le_bytes()) & 15) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }
}
