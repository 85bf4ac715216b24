//! Path attribute decoding with the error handling of RFC 7606 §3 and §7.
//!
//! | attribute | malformed when | outcome |
//! |---|---|---|
//! | any | header or length overruns the list (§4) | treat-as-withdraw |
//! | any but MP | repeated (§3.g) | later copies discarded |
//! | MP_REACH / MP_UNREACH | repeated (§3.g), truncated, bad NLRI, next-hop length wrong for the family (§7.11) | session reset |
//! | MP_REACH / MP_UNREACH | Optional/Transitive flags (§3.c) | treat-as-withdraw |
//! | unknown, Optional bit clear | always (RFC 4271 §6.3) | session reset |
//! | ORIGIN | length ≠ 1, value > 2, flags (§7.1) | treat-as-withdraw |
//! | AS_PATH | bad segment type, zero-length segment, overrun, odd octet, flags (§7.2) | treat-as-withdraw |
//! | NEXT_HOP | length ≠ 4, flags (§7.3); not a unicast host (checked per UPDATE) | treat-as-withdraw |
//! | MULTI_EXIT_DISC | length ≠ 4, flags (§7.4) | treat-as-withdraw |
//! | LOCAL_PREF | from an external peer (§7.5) | attribute discard |
//! | LOCAL_PREF | length ≠ 4, flags (§7.5) | treat-as-withdraw |
//! | ATOMIC_AGGREGATE | length ≠ 0, flags (§7.6) | attribute discard |
//! | AGGREGATOR | length ≠ 6 / 8 by AS width, flags (§7.7) | attribute discard |
//! | COMMUNITIES | length not a non-zero multiple of 4, flags (§7.8) | treat-as-withdraw |
//! | ORIGINATOR_ID | from an external peer (§7.9) | attribute discard |
//! | ORIGINATOR_ID | length ≠ 4, flags (§7.9) | treat-as-withdraw |
//! | CLUSTER_LIST | from an external peer (§7.10) | attribute discard |
//! | CLUSTER_LIST | length not a non-zero multiple of 4, flags (§7.10) | treat-as-withdraw |
//! | EXTENDED COMMUNITIES | length not a non-zero multiple of 8, flags (§7.14) | treat-as-withdraw |
//! | IPv6 EXTENDED COMMUNITIES | length not a non-zero multiple of 20, flags (§7.15) | treat-as-withdraw |
//! | LARGE_COMMUNITY | length not a non-zero multiple of 12, flags (RFC 8092 §6) | treat-as-withdraw |
//! | AS4_PATH / AS4_AGGREGATOR | on a 4-octet session (RFC 6793 §6) | attribute discard |
//! | AS4_PATH | as AS_PATH, or a confederation segment, flags (RFC 6793 §6) | attribute discard |
//! | AS4_AGGREGATOR | length ≠ 8, flags (RFC 6793 §6) | attribute discard |
//!
//! Flags: only the Optional and Transitive bits are judged (§3.c); Partial and Extended
//! Length are accepted as sent. A malformed ATOMIC_AGGREGATE or AGGREGATOR, flags
//! included, is discarded: §7.6 and §7.7 set that handling for the attribute, and neither
//! affects route selection. Several errors in one UPDATE: the strongest wins (§3), which
//! [`Update`](crate::packet::Update) applies.

use std::net::IpAddr;

use bytes::Bytes;

use super::{
    Aggregator, AsPath, AsSegment, Community, LargeCommunity, MpReach, MpUnreach, Origin,
    PathAttributes, RawAttribute, SegmentKind, flags, types,
};
use crate::packet::Options;
use crate::packet::error::{Action, AttributeError, DecodeError};
use crate::packet::prefix::{Family, NlriError, decode_nlri};
use crate::packet::reader::Reader;

/// Collects the outcome of one attribute list.
struct Ctx<'e> {
    four_octet_as: bool,
    ebgp: bool,
    errors: &'e mut Vec<AttributeError>,
}

impl Ctx<'_> {
    fn withdraw(&mut self, type_code: u8, reason: &'static str) {
        self.errors.push(AttributeError {
            type_code,
            action: Action::TreatAsWithdraw,
            reason,
        });
    }

    fn discard(&mut self, type_code: u8, reason: &'static str) {
        self.errors.push(AttributeError {
            type_code,
            action: Action::AttributeDiscard,
            reason,
        });
    }
}

/// True if the Optional and Transitive bits are what the attribute's definition says.
fn flags_ok(fl: u8, optional: bool, transitive: bool) -> bool {
    let want =
        if optional { flags::OPTIONAL } else { 0 } | if transitive { flags::TRANSITIVE } else { 0 };
    fl & (flags::OPTIONAL | flags::TRANSITIVE) == want
}

/// Decodes the path attribute field of an UPDATE. Fatal problems are returned as errors;
/// survivable ones are pushed to `errors` (the caller applies treat-as-withdraw).
pub(crate) fn decode_attributes(
    bytes: &[u8],
    options: Options,
    errors: &mut Vec<AttributeError>,
) -> Result<PathAttributes, DecodeError> {
    let mut cx = Ctx {
        four_octet_as: options.four_octet_as,
        ebgp: options.ebgp,
        errors,
    };
    let mut a = PathAttributes::default();
    let mut seen = [false; 256];
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let (Some(fl), Some(code)) = (r.u8(), r.u8()) else {
            cx.withdraw(0, "attribute header truncated");
            break;
        };
        let len = if fl & flags::EXTENDED_LENGTH != 0 {
            r.u16()
        } else {
            r.u8().map(u16::from)
        };
        let Some(value) = len.and_then(|l| r.take(usize::from(l))) else {
            // RFC 7606 §4: an attribute overrunning the attribute field.
            cx.withdraw(code, "attribute length overruns the attribute list");
            break;
        };
        if seen[usize::from(code)] {
            if code == types::MP_REACH || code == types::MP_UNREACH {
                return Err(DecodeError::MalformedAttributeList {
                    reason: "repeated MP attribute",
                });
            }
            cx.discard(code, "repeated attribute"); // RFC 7606 §3.g
            continue;
        }
        seen[usize::from(code)] = true;
        decode_one(&mut cx, &mut a, fl, code, value)?;
    }
    Ok(a)
}

fn decode_one(
    cx: &mut Ctx<'_>,
    a: &mut PathAttributes,
    fl: u8,
    code: u8,
    value: &[u8],
) -> Result<(), DecodeError> {
    let mut r = Reader::new(value);
    match code {
        types::ORIGIN => match (flags_ok(fl, false, true), value) {
            (true, [0]) => a.origin = Some(Origin::Igp),
            (true, [1]) => a.origin = Some(Origin::Egp),
            (true, [2]) => a.origin = Some(Origin::Incomplete),
            _ => cx.withdraw(code, "bad ORIGIN"),
        },
        types::AS_PATH => match decode_as_path(value, cx.four_octet_as) {
            Some(p) if flags_ok(fl, false, true) => a.as_path = Some(p),
            _ => cx.withdraw(code, "bad AS_PATH"),
        },
        types::NEXT_HOP => match r.ipv4() {
            Some(nh) if value.len() == 4 && flags_ok(fl, false, true) => a.next_hop = Some(nh),
            _ => cx.withdraw(code, "bad NEXT_HOP"),
        },
        types::MED => match r.u32() {
            Some(v) if value.len() == 4 && flags_ok(fl, true, false) => a.med = Some(v),
            _ => cx.withdraw(code, "bad MULTI_EXIT_DISC"),
        },
        types::LOCAL_PREF if cx.ebgp => cx.discard(code, "LOCAL_PREF from an external peer"),
        types::LOCAL_PREF => match r.u32() {
            Some(v) if value.len() == 4 && flags_ok(fl, false, true) => a.local_pref = Some(v),
            _ => cx.withdraw(code, "bad LOCAL_PREF"),
        },
        types::ATOMIC_AGGREGATE => {
            if value.is_empty() && flags_ok(fl, false, true) {
                a.atomic_aggregate = true;
            } else {
                cx.discard(code, "bad ATOMIC_AGGREGATE");
            }
        }
        types::AGGREGATOR => {
            let want = if cx.four_octet_as { 8 } else { 6 };
            let asn = if cx.four_octet_as {
                r.u32()
            } else {
                r.u16().map(u32::from)
            };
            match (asn, r.ipv4()) {
                (Some(asn), Some(address)) if value.len() == want && flags_ok(fl, true, true) => {
                    a.aggregator = Some(Aggregator { asn, address });
                }
                _ => cx.discard(code, "bad AGGREGATOR"),
            }
        }
        types::COMMUNITIES => {
            if !multiple_of(value, 4) || !flags_ok(fl, true, true) {
                cx.withdraw(code, "bad COMMUNITIES");
            } else {
                while let Some(c) = r.u32() {
                    a.communities.push(Community(c));
                }
            }
        }
        types::LARGE_COMMUNITIES => {
            if !multiple_of(value, 12) || !flags_ok(fl, true, true) {
                cx.withdraw(code, "bad LARGE_COMMUNITY");
            } else {
                while let (Some(global), Some(local1), Some(local2)) = (r.u32(), r.u32(), r.u32()) {
                    a.large_communities.push(LargeCommunity {
                        global,
                        local1,
                        local2,
                    });
                }
            }
        }
        types::ORIGINATOR_ID if cx.ebgp => cx.discard(code, "ORIGINATOR_ID from an external peer"),
        types::ORIGINATOR_ID => {
            if value.len() == 4 && flags_ok(fl, true, false) {
                a.other.push(raw(fl, code, value));
            } else {
                cx.withdraw(code, "bad ORIGINATOR_ID");
            }
        }
        types::CLUSTER_LIST if cx.ebgp => cx.discard(code, "CLUSTER_LIST from an external peer"),
        types::CLUSTER_LIST => {
            if multiple_of(value, 4) && flags_ok(fl, true, false) {
                a.other.push(raw(fl, code, value));
            } else {
                cx.withdraw(code, "bad CLUSTER_LIST");
            }
        }
        types::EXTENDED_COMMUNITIES => {
            if multiple_of(value, 8) && flags_ok(fl, true, true) {
                a.other.push(raw(fl, code, value));
            } else {
                cx.withdraw(code, "bad EXTENDED COMMUNITIES");
            }
        }
        types::IPV6_EXTENDED_COMMUNITIES => {
            if multiple_of(value, 20) && flags_ok(fl, true, true) {
                a.other.push(raw(fl, code, value));
            } else {
                cx.withdraw(code, "bad IPv6 EXTENDED COMMUNITIES");
            }
        }
        types::AS4_PATH | types::AS4_AGGREGATOR if cx.four_octet_as => {
            cx.discard(code, "AS4 attribute between 4-octet speakers");
        }
        types::AS4_PATH => match decode_as_path(value, true) {
            Some(p)
                if flags_ok(fl, true, true)
                    && p.segments
                        .iter()
                        .all(|s| matches!(s.kind, SegmentKind::Sequence | SegmentKind::Set)) =>
            {
                a.other.push(raw(fl, code, value));
            }
            _ => cx.discard(code, "bad AS4_PATH"),
        },
        types::AS4_AGGREGATOR => {
            if value.len() == 8 && flags_ok(fl, true, true) {
                a.other.push(raw(fl, code, value));
            } else {
                cx.discard(code, "bad AS4_AGGREGATOR");
            }
        }
        types::MP_REACH => {
            match decode_mp_reach(value)? {
                Some(mp) => a.mp_reach = Some(mp),
                None => a.other.push(raw(fl, code, value)),
            }
            if !flags_ok(fl, true, false) {
                cx.withdraw(code, "MP_REACH_NLRI flags");
            }
        }
        types::MP_UNREACH => {
            match decode_mp_unreach(value)? {
                Some(mp) => a.mp_unreach = Some(mp),
                None => a.other.push(raw(fl, code, value)),
            }
            if !flags_ok(fl, true, false) {
                cx.withdraw(code, "MP_UNREACH_NLRI flags");
            }
        }
        _ if fl & flags::OPTIONAL == 0 => {
            return Err(DecodeError::UnrecognizedWellKnown { type_code: code });
        }
        _ => a.other.push(raw(fl, code, value)),
    }
    Ok(())
}

/// True if `value` is a non-zero multiple of `n` octets long.
fn multiple_of(value: &[u8], n: usize) -> bool {
    !value.is_empty() && value.len().is_multiple_of(n)
}

fn raw(fl: u8, code: u8, value: &[u8]) -> RawAttribute {
    RawAttribute {
        flags: fl & !flags::EXTENDED_LENGTH,
        type_code: code,
        value: Bytes::copy_from_slice(value),
    }
}

/// Parses an AS_PATH strictly: every segment well formed, the value consumed exactly.
fn decode_as_path(value: &[u8], four_octet_as: bool) -> Option<AsPath> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8()? {
            1 => SegmentKind::Set,
            2 => SegmentKind::Sequence,
            3 => SegmentKind::ConfedSequence,
            4 => SegmentKind::ConfedSet,
            _ => return None,
        };
        let n = r.u8()?;
        if n == 0 {
            return None; // RFC 7606 §7.2: a zero-length segment is malformed.
        }
        let mut asns = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            asns.push(if four_octet_as {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
        segments.push(AsSegment { kind, asns });
    }
    Some(AsPath { segments })
}

fn mp_error(type_code: u8, reason: &'static str) -> DecodeError {
    DecodeError::MalformedMultiprotocol { type_code, reason }
}

fn nlri(bytes: &[u8], family: Family, code: u8) -> Result<Vec<crate::packet::Prefix>, DecodeError> {
    decode_nlri(bytes, family).map_err(|e| match e {
        NlriError::TooLong => mp_error(code, "prefix length too long"),
        NlriError::Truncated => mp_error(code, "NLRI truncated"),
    })
}

/// `Ok(None)`: a family this crate does not speak (kept as a raw attribute).
fn decode_mp_reach(value: &[u8]) -> Result<Option<MpReach>, DecodeError> {
    let code = types::MP_REACH;
    let mut r = Reader::new(value);
    let afi = r.u16().ok_or(mp_error(code, "truncated"))?;
    let safi = r.u8().ok_or(mp_error(code, "truncated"))?;
    let Some(family) = Family::from_afi_safi(afi, safi) else {
        return Ok(None);
    };
    let nh_len = r.u8().ok_or(mp_error(code, "truncated"))?;
    let nh = r
        .take(usize::from(nh_len))
        .ok_or(mp_error(code, "next hop overruns"))?;
    r.u8().ok_or(mp_error(code, "truncated"))?; // reserved
    let nlri = nlri(r.rest(), family, code)?;
    let mut n = Reader::new(nh);
    let (next_hop, link_local) = match (family, nh.len()) {
        (Family::Ipv4Unicast, 4) => (n.ipv4().map(IpAddr::V4), None),
        (_, 16) => (n.ipv6().map(IpAddr::V6), None),
        (_, 32) => (n.ipv6().map(IpAddr::V6), n.ipv6()),
        _ => (None, None),
    };
    // RFC 7606 §7.11: a next-hop length the family does not allow means the NLRI cannot be
    // located reliably either, so the routes cannot be withdrawn: session reset.
    let next_hop = next_hop.ok_or(mp_error(code, "next-hop length wrong for the family"))?;
    Ok(Some(MpReach {
        family,
        next_hop,
        link_local,
        nlri,
    }))
}

fn decode_mp_unreach(value: &[u8]) -> Result<Option<MpUnreach>, DecodeError> {
    let code = types::MP_UNREACH;
    let mut r = Reader::new(value);
    let afi = r.u16().ok_or(mp_error(code, "truncated"))?;
    let safi = r.u8().ok_or(mp_error(code, "truncated"))?;
    let Some(family) = Family::from_afi_safi(afi, safi) else {
        return Ok(None);
    };
    Ok(Some(MpUnreach {
        family,
        withdrawn: nlri(r.rest(), family, code)?,
    }))
}
