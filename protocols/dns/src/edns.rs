//! EDNS0 helpers: the OPT record we send, and the client subnet option (RFC 7871).
//!
//! ```text
//! OPT RR:  NAME = 0 (root) | TYPE = 41 | CLASS = UDP payload size
//!          TTL = ext-RCODE (8) | VERSION (8) | DO (1) | Z (15) | RDLEN | options
//! option:  CODE (16) | LENGTH (16) | DATA
//! ECS:     FAMILY (16) | SOURCE PREFIX (8) | SCOPE PREFIX (8) | ADDRESS (prefix bytes)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::rtype;

/// The option code of EDNS Client Subnet.
pub const OPTION_CLIENT_SUBNET: u16 = 8;

/// The payload size we advertise by default: 1232 bytes, the DNS flag day 2020 value that
/// avoids IP fragmentation on common paths.
pub const DEFAULT_PAYLOAD: u16 = 1232;

/// An EDNS Client Subnet option: the network the original client is in.
///
/// ```
/// use flowgate_dns::ClientSubnet;
/// let ecs = ClientSubnet::new("192.0.2.77".parse().unwrap(), 24);
/// let mut wire = Vec::new();
/// ecs.write_data(&mut wire);
/// assert_eq!(wire, [0, 1, 24, 0, 192, 0, 2]);
/// assert_eq!(ClientSubnet::parse(&wire), Some(ClientSubnet::new("192.0.2.0".parse().unwrap(), 24)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientSubnet {
    /// The address, with the bits past `source_prefix` cleared.
    pub addr: IpAddr,
    /// How many leading bits of `addr` are meaningful.
    pub source_prefix: u8,
    /// In a response: how many bits the answer depends on.
    pub scope_prefix: u8,
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl ClientSubnet {
    /// The subnet of `addr` with `source_prefix` bits (clamped to the family's width).
    pub fn new(addr: IpAddr, source_prefix: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let source_prefix = source_prefix.min(max);
        ClientSubnet {
            addr: mask(addr, source_prefix),
            source_prefix,
            scope_prefix: 0,
        }
    }

    /// Parses the option data; `None` when malformed (unknown family, a prefix wider than
    /// the family, an address of the wrong length or with bits set past the prefix).
    pub fn parse(data: &[u8]) -> Option<Self> {
        let family = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
        let source_prefix = *data.get(2)?;
        let scope_prefix = *data.get(3)?;
        let addr = data.get(4..)?;
        let nbytes = usize::from(source_prefix).div_ceil(8);
        if addr.len() != nbytes {
            return None;
        }
        let ip = match family {
            1 if source_prefix <= 32 && scope_prefix <= 32 => {
                let mut b = [0u8; 4];
                b[..nbytes].copy_from_slice(addr);
                IpAddr::V4(Ipv4Addr::from(b))
            }
            2 if source_prefix <= 128 && scope_prefix <= 128 => {
                let mut b = [0u8; 16];
                b[..nbytes].copy_from_slice(addr);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return None,
        };
        if mask(ip, source_prefix) != ip {
            return None;
        }
        Some(ClientSubnet {
            addr: ip,
            source_prefix,
            scope_prefix,
        })
    }

    /// Writes the option data (without code and length).
    pub fn write_data(&self, out: &mut Vec<u8>) {
        let (family, bytes): (u16, Vec<u8>) = match self.addr {
            IpAddr::V4(a) => (1, a.octets().to_vec()),
            IpAddr::V6(a) => (2, a.octets().to_vec()),
        };
        out.extend_from_slice(&family.to_be_bytes());
        out.push(self.source_prefix);
        out.push(self.scope_prefix);
        let n = usize::from(self.source_prefix).div_ceil(8);
        out.extend_from_slice(&bytes[..n.min(bytes.len())]);
    }

    /// Writes the whole option: code, length, data.
    pub fn write_option(&self, out: &mut Vec<u8>) {
        let n = usize::from(self.source_prefix).div_ceil(8);
        out.extend_from_slice(&OPTION_CLIENT_SUBNET.to_be_bytes());
        out.extend_from_slice(&((4 + n) as u16).to_be_bytes());
        self.write_data(out);
    }
}

/// Appends an OPT record advertising `payload`, with the DO bit and, when given, a client
/// subnet option. Returns its length. The caller bumps ARCOUNT.
pub fn write_opt(
    out: &mut Vec<u8>,
    payload: u16,
    dnssec_ok: bool,
    ecs: Option<&ClientSubnet>,
) -> usize {
    let start = out.len();
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    let ttl: u32 = if dnssec_ok { 0x8000 } else { 0 };
    out.extend_from_slice(&ttl.to_be_bytes());
    let rdlen_at = out.len();
    out.extend_from_slice(&[0, 0]);
    if let Some(e) = ecs {
        e.write_option(out);
    }
    let rdlen = (out.len() - rdlen_at - 2) as u16;
    out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    out.len() - start
}
