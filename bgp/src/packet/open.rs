//! The OPEN message (RFC 4271 §4.2) with capabilities in optional parameters (RFC 5492).

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::capability::Capability;
use super::error::DecodeError;
use super::reader::Reader;

/// The 2-octet AS number a 4-octet speaker puts in OPEN when its AS does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// An OPEN message: the first message each side sends.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+
/// |    Version    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     My Autonomous System      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Hold Time           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         BGP Identifier                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Opt Parm Len  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |             Optional Parameters (variable)                    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Protocol version: 4.
    pub version: u8,
    /// The 2-octet AS field ([`AS_TRANS`] when the real AS needs 4 octets).
    pub asn: u16,
    /// Proposed hold time in seconds: 0 or at least 3.
    pub hold_time: u16,
    /// The sender's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities, flattened from every capabilities parameter.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn` that advertises `capabilities` plus the 4-octet AS capability.
    pub fn new(
        asn: u32,
        hold_time: u16,
        router_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Self {
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs { .. }))
        {
            capabilities.push(Capability::FourOctetAs { asn });
        }
        Self {
            version: 4,
            asn: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            router_id,
            capabilities,
        }
    }

    /// The sender's AS: from the 4-octet AS capability if present, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs { asn } => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.asn))
    }

    /// True if the sender advertised `cap` (compared by variant and value).
    pub fn has(&self, cap: &Capability) -> bool {
        self.capabilities.contains(cap)
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let short = DecodeError::MalformedOpen { reason: "short" };
        let mut r = Reader::new(body);
        let version = r.u8().ok_or(short.clone())?;
        if version != 4 {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let asn = r.u16().ok_or(short.clone())?;
        let hold_time = r.u16().ok_or(short.clone())?;
        let router_id = r.ipv4().ok_or(short.clone())?;
        let opt_len = r.u8().ok_or(short)?;
        if usize::from(opt_len) != r.remaining() {
            return Err(DecodeError::MalformedOpen {
                reason: "optional parameters length",
            });
        }
        let mut capabilities = Vec::new();
        while !r.is_empty() {
            let bad = DecodeError::MalformedOpen {
                reason: "optional parameter overruns",
            };
            let kind = r.u8().ok_or(bad.clone())?;
            let len = r.u8().ok_or(bad.clone())?;
            let value = r.take(usize::from(len)).ok_or(bad)?;
            if kind != 2 {
                return Err(DecodeError::UnsupportedParameter { kind });
            }
            Capability::decode_all(value, &mut capabilities)?;
        }
        Ok(Self {
            version,
            asn,
            hold_time,
            router_id,
            capabilities,
        })
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u8(self.version);
        dst.put_u16(self.asn);
        dst.put_u16(self.hold_time);
        dst.put_slice(&self.router_id.octets());
        // One capabilities parameter per 255 bytes of capabilities.
        let mut params = BytesMut::new();
        let mut current = BytesMut::new();
        for cap in &self.capabilities {
            let mut one = BytesMut::new();
            cap.encode(&mut one);
            if current.len() + one.len() > 255 {
                params.put_u8(2);
                params.put_u8(current.len() as u8);
                params.put_slice(&current);
                current.clear();
            }
            current.put_slice(&one);
        }
        if !current.is_empty() {
            params.put_u8(2);
            params.put_u8(current.len() as u8);
            params.put_slice(&current);
        }
        dst.put_u8(params.len().min(255) as u8);
        dst.put_slice(&params[..params.len().min(255)]);
    }
}
