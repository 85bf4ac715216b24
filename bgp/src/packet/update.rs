//! The UPDATE message (RFC 4271 §4.3).

use bytes::{BufMut, BytesMut};

use super::Options;
use super::attribute::{MpUnreach, PathAttributes, decode_attributes, encode_attributes};
use super::error::{Action, AttributeError, DecodeError, EncodeError};
use super::prefix::{Family, Prefix, decode_nlri};
use super::reader::Reader;

/// An UPDATE: routes withdrawn, and routes announced with their path attributes.
///
/// ```text
/// +-----------------------------------------------------+
/// |   Withdrawn Routes Length (2 octets)                |
/// +-----------------------------------------------------+
/// |   Withdrawn Routes (variable)                       |
/// +-----------------------------------------------------+
/// |   Total Path Attribute Length (2 octets)            |
/// +-----------------------------------------------------+
/// |   Path Attributes (variable)                        |
/// +-----------------------------------------------------+
/// |   Network Layer Reachability Information (variable) |
/// +-----------------------------------------------------+
/// ```
///
/// IPv6 routes travel in [`PathAttributes::mp_reach`] and [`PathAttributes::mp_unreach`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 unicast prefixes.
    pub withdrawn: Vec<Prefix>,
    /// Path attributes (empty for a withdraw-only UPDATE).
    pub attributes: PathAttributes,
    /// Announced IPv4 unicast prefixes.
    pub nlri: Vec<Prefix>,
    /// Malformed attributes the decoder handled under RFC 7606. If any of them is
    /// [`Action::TreatAsWithdraw`], the decoder has already moved every announced prefix to
    /// the withdrawals and cleared the attributes.
    pub errors: Vec<AttributeError>,
}

impl Update {
    /// True if the decoder applied treat-as-withdraw to this UPDATE.
    pub fn treated_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.action == Action::TreatAsWithdraw)
    }

    /// The family this UPDATE marks as End-of-RIB (RFC 4724 §2), if it is such a marker.
    pub fn end_of_rib(&self) -> Option<Family> {
        let a = &self.attributes;
        let only_unreach = a.mp_unreach.is_some()
            && PathAttributes {
                mp_unreach: None,
                ..a.clone()
            } == PathAttributes::default();
        match &a.mp_unreach {
            _ if self.withdrawn.is_empty()
                && self.nlri.is_empty()
                && *a == PathAttributes::default() =>
            {
                Some(Family::Ipv4Unicast)
            }
            Some(u)
                if only_unreach
                    && u.withdrawn.is_empty()
                    && self.withdrawn.is_empty()
                    && self.nlri.is_empty() =>
            {
                Some(u.family)
            }
            _ => None,
        }
    }

    /// An End-of-RIB marker for `family`.
    pub fn end_of_rib_marker(family: Family) -> Self {
        let mut u = Update::default();
        if family != Family::Ipv4Unicast {
            u.attributes.mp_unreach = Some(MpUnreach {
                family,
                withdrawn: Vec::new(),
            });
        }
        u
    }

    pub(crate) fn decode(body: &[u8], options: Options) -> Result<Self, DecodeError> {
        let list = |reason| DecodeError::MalformedAttributeList { reason };
        let mut r = Reader::new(body);
        let wlen = r.u16().ok_or(list("short"))?;
        let wbytes = r
            .take(usize::from(wlen))
            .ok_or(list("withdrawn routes length"))?;
        let alen = r.u16().ok_or(list("short"))?;
        let abytes = r
            .take(usize::from(alen))
            .ok_or(list("total path attribute length"))?;
        let withdrawn = decode_nlri(wbytes, Family::Ipv4Unicast)
            .map_err(|_| DecodeError::InvalidNetworkField)?;
        let nlri = decode_nlri(r.rest(), Family::Ipv4Unicast)
            .map_err(|_| DecodeError::InvalidNetworkField)?;
        let mut errors = Vec::new();
        let attributes = decode_attributes(abytes, options, &mut errors)?;
        let mut u = Update {
            withdrawn,
            attributes,
            nlri,
            errors,
        };
        u.check_mandatory();
        if u.treated_as_withdraw() {
            u.apply_treat_as_withdraw();
        }
        Ok(u)
    }

    /// RFC 7606 §3.d: announced routes without ORIGIN, AS_PATH (or NEXT_HOP) are withdrawn.
    /// RFC 7606 §7.3 (RFC 4271 §6.3): so are IPv4 routes whose NEXT_HOP cannot be a
    /// unicast host (0/8, multicast, 240/4 and broadcast). The NEXT_HOP of an UPDATE that
    /// only carries MP_REACH_NLRI is not used (RFC 4760 §3), so it is not judged.
    fn check_mandatory(&mut self) {
        use super::attribute::types;
        let a = &self.attributes;
        let announces =
            !self.nlri.is_empty() || a.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
        if !announces {
            return;
        }
        let missing = |type_code| (type_code, "missing well-known attribute");
        let error = if a.origin.is_none() {
            Some(missing(types::ORIGIN))
        } else if a.as_path.is_none() {
            Some(missing(types::AS_PATH))
        } else if self.nlri.is_empty() {
            None
        } else {
            match a.next_hop {
                None => Some(missing(types::NEXT_HOP)),
                Some(nh) if nh.octets()[0] == 0 || nh.is_multicast() || nh.octets()[0] >= 240 => {
                    Some((types::NEXT_HOP, "NEXT_HOP is not a unicast host address"))
                }
                Some(_) => None,
            }
        };
        if let Some((type_code, reason)) = error {
            self.errors.push(AttributeError {
                type_code,
                action: Action::TreatAsWithdraw,
                reason,
            });
        }
    }

    /// Moves every announced prefix to the withdrawals and drops the other attributes.
    fn apply_treat_as_withdraw(&mut self) {
        let reach = self.attributes.mp_reach.take();
        let mut unreach = self.attributes.mp_unreach.take();
        self.attributes = PathAttributes::default();
        self.withdrawn.append(&mut self.nlri);
        if let Some(reach) = reach {
            match (reach.family, unreach.as_mut()) {
                (Family::Ipv4Unicast, _) => self.withdrawn.extend(reach.nlri),
                (f, Some(u)) if u.family == f => u.withdrawn.extend(reach.nlri),
                (f, Some(u)) => {
                    // An IPv4 MP_UNREACH beside IPv6 MP_REACH: IPv4 fits the classic field.
                    self.withdrawn.append(&mut u.withdrawn);
                    *u = MpUnreach {
                        family: f,
                        withdrawn: reach.nlri,
                    };
                }
                (f, None) => {
                    unreach = Some(MpUnreach {
                        family: f,
                        withdrawn: reach.nlri,
                    })
                }
            }
        }
        self.attributes.mp_unreach = unreach;
    }

    pub(crate) fn encode_body(
        &self,
        four_octet_as: bool,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let start = dst.len();
        dst.put_u16(0);
        for p in &self.withdrawn {
            p.encode(dst);
        }
        let wlen = dst.len() - start - 2;
        let alen_at = dst.len();
        dst.put_u16(0);
        encode_attributes(&self.attributes, four_octet_as, dst)?;
        let alen = dst.len() - alen_at - 2;
        for p in &self.nlri {
            p.encode(dst);
        }
        let too_large = |length| EncodeError::TooLarge {
            length,
            max: usize::from(u16::MAX),
        };
        let wlen = u16::try_from(wlen).map_err(|_| too_large(wlen))?;
        let alen = u16::try_from(alen).map_err(|_| too_large(alen))?;
        dst[start..start + 2].copy_from_slice(&wlen.to_be_bytes());
        dst[alen_at..alen_at + 2].copy_from_slice(&alen.to_be_bytes());
        Ok(())
    }
}
