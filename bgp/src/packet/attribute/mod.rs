//! Path attributes (RFC 4271 §4.3, §5) and their RFC 7606 error handling.
//!
//! Each attribute is a TLV:
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Attr. Flags  |Attr. Type Code|   flags: Optional, Transitive, Partial, Extended Length
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Attr. Length (1, or 2 octets with Extended Length) | Value ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Decoding sorts malformed attributes into three outcomes (RFC 7606 §2): *session reset*
//! (a [`DecodeError`](super::DecodeError)), *treat-as-withdraw* and *attribute discard*
//! (both an [`AttributeError`](super::AttributeError) on the UPDATE, whose routes the decoder
//! has already turned into withdrawals where needed).

mod decode;
mod encode;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;

pub(crate) use decode::decode_attributes;
pub(crate) use encode::encode_attributes;

use super::prefix::{Family, Prefix};

/// Attribute type codes.
pub mod types {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456): checked, kept raw.
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456): checked, kept raw.
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH: u8 = 15;
    /// EXTENDED COMMUNITIES (RFC 4360): checked, kept raw.
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    /// AS4_PATH (RFC 6793): checked on 2-octet sessions, kept raw.
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793): checked on 2-octet sessions, kept raw.
    pub const AS4_AGGREGATOR: u8 = 18;
    /// IPv6 Address Specific Extended Community (RFC 5701): checked, kept raw.
    pub const IPV6_EXTENDED_COMMUNITIES: u8 = 25;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// Attribute flag bits.
pub mod flags {
    /// The attribute is optional.
    pub const OPTIONAL: u8 = 0x80;
    /// The attribute is transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Some speaker on the path did not recognise this optional transitive attribute.
    pub const PARTIAL: u8 = 0x20;
    /// The length field is two octets.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Learned from an interior protocol (or configured): the usual value for VIPs.
    #[default]
    Igp,
    /// Learned via EGP.
    Egp,
    /// Learned some other way.
    Incomplete,
}

/// The kind of an AS_PATH segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// AS_SET (1): unordered.
    Set,
    /// AS_SEQUENCE (2): ordered, nearest AS first.
    Sequence,
    /// AS_CONFED_SEQUENCE (3, RFC 5065).
    ConfedSequence,
    /// AS_CONFED_SET (4, RFC 5065).
    ConfedSet,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    /// Set or sequence.
    pub kind: SegmentKind,
    /// The AS numbers (1 to 255 of them on the wire).
    pub asns: Vec<u32>,
}

/// An AS_PATH, always held with 4-octet AS numbers.
///
/// ```text
/// +-----------------+------------------+------------------------------+
/// | segment type(1) | segment len(1)   | ASNs (2 or 4 octets each)    |  ... repeated
/// +-----------------+------------------+------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    /// The segments in wire order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path of one AS_SEQUENCE (empty for an empty list).
    pub fn sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let asns: Vec<u32> = asns.into_iter().collect();
        if asns.is_empty() {
            return Self::default();
        }
        Self {
            segments: vec![AsSegment {
                kind: SegmentKind::Sequence,
                asns,
            }],
        }
    }

    /// The path with `asn` prepended, as an eBGP speaker sends it (RFC 4271 §5.1.2).
    pub fn prepended(&self, asn: u32) -> Self {
        let mut segments = self.segments.clone();
        match segments.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => segments.insert(
                0,
                AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
        Self { segments }
    }

    /// The first AS of the path: the neighbour that sent it.
    pub fn first(&self) -> Option<u32> {
        self.segments.first().and_then(|s| s.asns.first().copied())
    }

    /// Path length for best-path selection: a set counts as one.
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                _ => 0,
            })
            .sum()
    }

    /// True for the empty path of a locally originated route.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// AGGREGATOR: the AS and router that formed an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// The aggregating AS.
    pub asn: u32,
    /// The aggregating router's identifier.
    pub address: Ipv4Addr,
}

/// A standard community (RFC 1997): `asn:value` in 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    /// `high:low`.
    pub fn new(high: u16, low: u16) -> Self {
        Self((u32::from(high) << 16) | u32::from(low))
    }
}

/// A large community (RFC 8092): three 32-bit numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// Global administrator (an AS number).
    pub global: u32,
    /// First local data part.
    pub local1: u32,
    /// Second local data part.
    pub local2: u32,
}

/// MP_REACH_NLRI (RFC 4760 §3): routes of a family with their next hop.
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// | Subsequent Address Family Identifier (1 octet)          |
/// | Length of Next Hop Network Address (1 octet)            |
/// | Network Address of Next Hop (variable)                  |
/// | Reserved (1 octet)                                      |
/// | Network Layer Reachability Information (variable)       |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// The family of `nlri`.
    pub family: Family,
    /// The next hop (IPv6 for IPv6 routes; IPv4 or IPv6 for IPv4 routes, RFC 8950).
    pub next_hop: IpAddr,
    /// The optional link-local IPv6 next hop (a 32-octet next-hop field).
    pub link_local: Option<Ipv6Addr>,
    /// The announced prefixes.
    pub nlri: Vec<Prefix>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4): withdrawn routes of a family.
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// | Subsequent Address Family Identifier (1 octet)          |
/// | Withdrawn Routes (variable)                             |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    /// The family of `withdrawn`.
    pub family: Family,
    /// The withdrawn prefixes (empty: End-of-RIB for the family).
    pub withdrawn: Vec<Prefix>,
}

/// An attribute this crate does not interpret, kept as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// Flags without the extended-length bit (the encoder chooses that).
    pub flags: u8,
    /// The type code.
    pub type_code: u8,
    /// The value.
    pub value: Bytes,
}

/// The path attributes of an UPDATE. `None` / empty means absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH.
    pub as_path: Option<AsPath>,
    /// NEXT_HOP for IPv4 routes in the UPDATE's NLRI field.
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR.
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES.
    pub communities: Vec<Community>,
    /// LARGE_COMMUNITY.
    pub large_communities: Vec<LargeCommunity>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// Other attributes, as received: the ones checked but not interpreted (ORIGINATOR_ID,
    /// CLUSTER_LIST, EXTENDED COMMUNITIES, AS4_PATH, AS4_AGGREGATOR, IPv6 extended
    /// communities, MP attributes of other families) and unknown optional ones.
    pub other: Vec<RawAttribute>,
}
