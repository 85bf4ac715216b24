//! Capabilities advertised in OPEN (RFC 5492), each a TLV inside optional parameter 2.
//!
//! ```text
//! +------------------------------+
//! | Capability Code (1 octet)    |
//! +------------------------------+
//! | Capability Length (1 octet)  |
//! +------------------------------+
//! | Capability Value (variable)  |
//! +------------------------------+
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::reader::Reader;

/// One address family in a graceful-restart capability (RFC 4724 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartFamily {
    /// Address family identifier.
    pub afi: u16,
    /// Subsequent address family identifier.
    pub safi: u8,
    /// Flags for this family (bit 0x80: forwarding state preserved).
    pub flags: u8,
}

/// One address family in an add-path capability (RFC 7911 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddPathFamily {
    /// Address family identifier.
    pub afi: u16,
    /// Subsequent address family identifier.
    pub safi: u8,
    /// 1 = receive, 2 = send, 3 = both.
    pub send_receive: u8,
}

/// A BGP capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for one AFI/SAFI (RFC 4760, code 1).
    MultiProtocol {
        /// Address family identifier.
        afi: u16,
        /// Subsequent address family identifier.
        safi: u8,
    },
    /// Route refresh (RFC 2918, code 2).
    RouteRefresh,
    /// Extended message: messages up to 65535 bytes (RFC 8654, code 6).
    ExtendedMessage,
    /// Graceful restart (RFC 4724, code 64).
    GracefulRestart {
        /// Restart flags (the upper 4 bits of the first octet, shifted down).
        flags: u8,
        /// Restart time in seconds (12 bits).
        time: u16,
        /// Families whose forwarding state is described.
        families: Vec<RestartFamily>,
    },
    /// Support for 4-octet AS numbers and the speaker's AS (RFC 6793, code 65).
    FourOctetAs {
        /// The speaker's AS number.
        asn: u32,
    },
    /// Add-path (RFC 7911, code 69).
    AddPath {
        /// The families and directions.
        families: Vec<AddPathFamily>,
    },
    /// Enhanced route refresh (RFC 7313, code 70).
    EnhancedRouteRefresh,
    /// Any other capability, kept as received.
    Unknown {
        /// The capability code.
        code: u8,
        /// The raw value.
        value: Bytes,
    },
}

fn malformed(reason: &'static str) -> DecodeError {
    DecodeError::MalformedOpen { reason }
}

impl Capability {
    /// Decodes every capability in one optional parameter's value.
    pub(crate) fn decode_all(bytes: &[u8], out: &mut Vec<Capability>) -> Result<(), DecodeError> {
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            let code = r.u8().ok_or(malformed("capability header"))?;
            let len = r.u8().ok_or(malformed("capability header"))?;
            let value = r
                .take(usize::from(len))
                .ok_or(malformed("capability overruns"))?;
            out.push(Self::decode_one(code, value)?);
        }
        Ok(())
    }

    fn decode_one(code: u8, value: &[u8]) -> Result<Capability, DecodeError> {
        let mut r = Reader::new(value);
        let cap = match code {
            1 if value.len() == 4 => {
                let afi = r.u16().ok_or(malformed("mp"))?;
                let _reserved = r.u8();
                let safi = r.u8().ok_or(malformed("mp"))?;
                Capability::MultiProtocol { afi, safi }
            }
            2 if value.is_empty() => Capability::RouteRefresh,
            6 if value.is_empty() => Capability::ExtendedMessage,
            64 if value.len() >= 2 && (value.len() - 2).is_multiple_of(4) => {
                let head = r.u16().ok_or(malformed("gr"))?;
                let mut families = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16().ok_or(malformed("gr"))?;
                    let safi = r.u8().ok_or(malformed("gr"))?;
                    let flags = r.u8().ok_or(malformed("gr"))?;
                    families.push(RestartFamily { afi, safi, flags });
                }
                Capability::GracefulRestart {
                    flags: (head >> 12) as u8,
                    time: head & 0x0fff,
                    families,
                }
            }
            65 if value.len() == 4 => Capability::FourOctetAs {
                asn: r.u32().ok_or(malformed("as4"))?,
            },
            69 if value.len().is_multiple_of(4) => {
                let mut families = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16().ok_or(malformed("add-path"))?;
                    let safi = r.u8().ok_or(malformed("add-path"))?;
                    let send_receive = r.u8().ok_or(malformed("add-path"))?;
                    families.push(AddPathFamily {
                        afi,
                        safi,
                        send_receive,
                    });
                }
                Capability::AddPath { families }
            }
            70 if value.is_empty() => Capability::EnhancedRouteRefresh,
            1 | 2 | 6 | 64 | 65 | 69 | 70 => return Err(malformed("capability length")),
            _ => Capability::Unknown {
                code,
                value: Bytes::copy_from_slice(value),
            },
        };
        Ok(cap)
    }

    /// Appends code, length and value.
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        let mut v = BytesMut::new();
        let code = match self {
            Capability::MultiProtocol { afi, safi } => {
                v.put_u16(*afi);
                v.put_u8(0);
                v.put_u8(*safi);
                1
            }
            Capability::RouteRefresh => 2,
            Capability::ExtendedMessage => 6,
            Capability::GracefulRestart {
                flags,
                time,
                families,
            } => {
                v.put_u16((u16::from(*flags & 0x0f) << 12) | (time & 0x0fff));
                for f in families {
                    v.put_u16(f.afi);
                    v.put_u8(f.safi);
                    v.put_u8(f.flags);
                }
                64
            }
            Capability::FourOctetAs { asn } => {
                v.put_u32(*asn);
                65
            }
            Capability::AddPath { families } => {
                for f in families {
                    v.put_u16(f.afi);
                    v.put_u8(f.safi);
                    v.put_u8(f.send_receive);
                }
                69
            }
            Capability::EnhancedRouteRefresh => 70,
            Capability::Unknown { code, value } => {
                v.put_slice(value);
                *code
            }
        };
        dst.put_u8(code);
        // Values longer than 255 cannot be expressed; truncate rather than corrupt framing.
        let len = v.len().min(255);
        dst.put_u8(len as u8);
        dst.put_slice(&v[..len]);
    }
}
