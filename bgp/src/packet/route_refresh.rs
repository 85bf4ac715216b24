//! The ROUTE-REFRESH message (RFC 2918, subtypes from RFC 7313).

use bytes::{BufMut, BytesMut};

use super::prefix::Family;

/// A request to re-send the adj-RIB-out of one family.
///
/// ```text
///  0       7      15      23      31
/// +-------+-------+-------+-------+
/// |      AFI      | Subtype | SAFI |
/// +-------+-------+-------+-------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// Address family identifier.
    pub afi: u16,
    /// 0: normal request; 1: begin (BoRR); 2: end (EoRR) of an enhanced refresh.
    pub subtype: u8,
    /// Subsequent address family identifier.
    pub safi: u8,
}

impl RouteRefresh {
    /// A plain request for `family`.
    pub fn request(family: Family) -> Self {
        let (afi, safi) = family.afi_safi();
        Self {
            afi,
            subtype: 0,
            safi,
        }
    }

    /// The family asked for, if this crate speaks it.
    pub fn family(&self) -> Option<Family> {
        Family::from_afi_safi(self.afi, self.safi)
    }

    pub(crate) fn decode(body: &[u8]) -> Option<Self> {
        match body {
            [a, b, subtype, safi] => Some(Self {
                afi: u16::from_be_bytes([*a, *b]),
                subtype: *subtype,
                safi: *safi,
            }),
            _ => None,
        }
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16(self.afi);
        dst.put_u8(self.subtype);
        dst.put_u8(self.safi);
    }
}
