//! IP prefixes and their NLRI encoding (RFC 4271 §4.3, RFC 4760 §5).
//!
//! ```text
//! +---------------------------+
//! |   Length (1 octet)        |   prefix length in bits
//! +---------------------------+
//! |   Prefix (variable)       |   ceil(length / 8) octets, trailing bits ignored
//! +---------------------------+
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use super::reader::Reader;

/// An address family and subsequent address family this crate speaks (RFC 4760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AFI 1, SAFI 1.
    Ipv4Unicast,
    /// AFI 2, SAFI 1.
    Ipv6Unicast,
}

impl Family {
    /// The AFI and SAFI code points.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    /// The family for an AFI/SAFI pair, if this crate speaks it.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Self> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }
}

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix length longer than the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length exceeds 32 (IPv4) or 128 (IPv6).
    #[error("prefix length {len} is too long for the address family")]
    TooLong {
        /// The offending length.
        len: u8,
    },
    /// The text is not `address` or `address/length`.
    #[error("cannot parse {text:?} as a prefix")]
    Syntax {
        /// The input.
        text: String,
    },
}

impl Prefix {
    /// A prefix of `len` bits; host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return Err(PrefixError::TooLong { len }),
        };
        Ok(Self { addr, len })
    }

    /// The host route for one address: a /32 or a /128.
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the zero-length default route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The family this prefix belongs to.
    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::Ipv4Unicast
        } else {
            Family::Ipv6Unicast
        }
    }

    /// Bytes this prefix takes as NLRI.
    pub fn encoded_len(&self) -> usize {
        1 + usize::from(self.len).div_ceil(8)
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        let n = usize::from(self.len).div_ceil(8);
        dst.put_u8(self.len);
        match self.addr {
            IpAddr::V4(a) => dst.put_slice(&a.octets()[..n]),
            IpAddr::V6(a) => dst.put_slice(&a.octets()[..n]),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax { text: s.to_owned() };
        match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| syntax())?;
                let len: u8 = l.parse().map_err(|_| syntax())?;
                Prefix::new(addr, len)
            }
            None => s.parse().map(Prefix::host).map_err(|_| syntax()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why an NLRI field could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NlriError {
    TooLong,
    Truncated,
}

/// Decodes a whole NLRI field of one family.
pub(crate) fn decode_nlri(bytes: &[u8], family: Family) -> Result<Vec<Prefix>, NlriError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::with_capacity(bytes.len() / 4);
    while !r.is_empty() {
        let len = r.u8().ok_or(NlriError::Truncated)?;
        let (max, width) = match family {
            Family::Ipv4Unicast => (32, 4),
            Family::Ipv6Unicast => (128, 16),
        };
        if len > max {
            return Err(NlriError::TooLong);
        }
        let n = usize::from(len).div_ceil(8);
        let raw = r.take(n).ok_or(NlriError::Truncated)?;
        let mut full = [0u8; 16];
        full[..n].copy_from_slice(raw);
        let addr = if width == 4 {
            IpAddr::V4(Ipv4Addr::new(full[0], full[1], full[2], full[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(full))
        };
        out.push(Prefix::new(addr, len).map_err(|_| NlriError::TooLong)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nlri_vectors_round_trip() {
        let cases: &[(&str, &[u8])] = &[
            ("10.0.0.0/8", &[8, 10]),
            ("192.0.2.10/32", &[32, 192, 0, 2, 10]),
            ("0.0.0.0/0", &[0]),
            ("10.1.128.0/17", &[17, 10, 1, 128]),
        ];
        for (text, bytes) in cases {
            let p: Prefix = text.parse().unwrap();
            let mut b = BytesMut::new();
            p.encode(&mut b);
            assert_eq!(&b[..], *bytes, "{text}");
            assert_eq!(decode_nlri(bytes, Family::Ipv4Unicast).unwrap(), vec![p]);
        }
        let v6: Prefix = "2001:db8::1/128".parse().unwrap();
        let mut b = BytesMut::new();
        v6.encode(&mut b);
        assert_eq!(b.len(), 17);
        assert_eq!(decode_nlri(&b, Family::Ipv6Unicast).unwrap(), vec![v6]);
    }

    #[test]
    fn host_bits_are_cleared_and_bad_lengths_rejected() {
        assert_eq!(
            "10.1.2.3/8".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            decode_nlri(&[33, 1, 2, 3, 4, 5], Family::Ipv4Unicast),
            Err(NlriError::TooLong)
        );
        assert_eq!(
            decode_nlri(&[24, 1, 2], Family::Ipv4Unicast),
            Err(NlriError::Truncated)
        );
        // Trailing bits beyond the length are ignored and cleared.
        assert_eq!(
            decode_nlri(&[4, 0xff], Family::Ipv4Unicast).unwrap()[0].to_string(),
            "240.0.0.0/4"
        );
    }
}
