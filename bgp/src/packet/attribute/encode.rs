//! Path attribute encoding. MP_REACH/MP_UNREACH go first (RFC 7606 §5.1), then the rest by
//! type code, then unrecognised attributes in the order received.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use super::{PathAttributes, SegmentKind, flags, types};
use crate::packet::error::EncodeError;
use crate::packet::open::AS_TRANS;

fn put_attr(dst: &mut BytesMut, fl: u8, code: u8, value: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(value.len())
        .map_err(|_| EncodeError::AttributeTooLong { type_code: code })?;
    if len > 255 {
        dst.put_u8(fl | flags::EXTENDED_LENGTH);
        dst.put_u8(code);
        dst.put_u16(len);
    } else {
        dst.put_u8(fl & !flags::EXTENDED_LENGTH);
        dst.put_u8(code);
        dst.put_u8(len as u8);
    }
    dst.put_slice(value);
    Ok(())
}

const WELL_KNOWN: u8 = flags::TRANSITIVE;
const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
const OPT: u8 = flags::OPTIONAL;

/// Appends every attribute of `a`.
pub(crate) fn encode_attributes(
    a: &PathAttributes,
    four_octet_as: bool,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut v = BytesMut::new();
    if let Some(mp) = &a.mp_reach {
        let (afi, safi) = mp.family.afi_safi();
        v.put_u16(afi);
        v.put_u8(safi);
        match (mp.next_hop, mp.link_local) {
            (IpAddr::V4(nh), _) => {
                v.put_u8(4);
                v.put_slice(&nh.octets());
            }
            (IpAddr::V6(nh), None) => {
                v.put_u8(16);
                v.put_slice(&nh.octets());
            }
            (IpAddr::V6(nh), Some(ll)) => {
                v.put_u8(32);
                v.put_slice(&nh.octets());
                v.put_slice(&ll.octets());
            }
        }
        v.put_u8(0);
        for p in &mp.nlri {
            p.encode(&mut v);
        }
        put_attr(dst, OPT, types::MP_REACH, &v)?;
    }
    if let Some(mp) = &a.mp_unreach {
        v.clear();
        let (afi, safi) = mp.family.afi_safi();
        v.put_u16(afi);
        v.put_u8(safi);
        for p in &mp.withdrawn {
            p.encode(&mut v);
        }
        put_attr(dst, OPT, types::MP_UNREACH, &v)?;
    }
    if let Some(o) = a.origin {
        put_attr(dst, WELL_KNOWN, types::ORIGIN, &[o as u8])?;
    }
    if let Some(path) = &a.as_path {
        v.clear();
        for seg in &path.segments {
            let kind = match seg.kind {
                SegmentKind::Set => 1,
                SegmentKind::Sequence => 2,
                SegmentKind::ConfedSequence => 3,
                SegmentKind::ConfedSet => 4,
            };
            for chunk in seg.asns.chunks(255) {
                v.put_u8(kind);
                v.put_u8(chunk.len() as u8);
                for &asn in chunk {
                    if four_octet_as {
                        v.put_u32(asn);
                    } else {
                        v.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
                    }
                }
            }
        }
        put_attr(dst, WELL_KNOWN, types::AS_PATH, &v)?;
    }
    if let Some(nh) = a.next_hop {
        put_attr(dst, WELL_KNOWN, types::NEXT_HOP, &nh.octets())?;
    }
    if let Some(med) = a.med {
        put_attr(dst, OPT, types::MED, &med.to_be_bytes())?;
    }
    if let Some(lp) = a.local_pref {
        put_attr(dst, WELL_KNOWN, types::LOCAL_PREF, &lp.to_be_bytes())?;
    }
    if a.atomic_aggregate {
        put_attr(dst, WELL_KNOWN, types::ATOMIC_AGGREGATE, &[])?;
    }
    if let Some(agg) = a.aggregator {
        v.clear();
        if four_octet_as {
            v.put_u32(agg.asn);
        } else {
            v.put_u16(u16::try_from(agg.asn).unwrap_or(AS_TRANS));
        }
        v.put_slice(&agg.address.octets());
        put_attr(dst, OPT_TRANS, types::AGGREGATOR, &v)?;
    }
    if !a.communities.is_empty() {
        v.clear();
        for c in &a.communities {
            v.put_u32(c.0);
        }
        put_attr(dst, OPT_TRANS, types::COMMUNITIES, &v)?;
    }
    if !a.large_communities.is_empty() {
        v.clear();
        for c in &a.large_communities {
            v.put_u32(c.global);
            v.put_u32(c.local1);
            v.put_u32(c.local2);
        }
        put_attr(dst, OPT_TRANS, types::LARGE_COMMUNITIES, &v)?;
    }
    for raw in &a.other {
        put_attr(dst, raw.flags, raw.type_code, &raw.value)?;
    }
    Ok(())
}
