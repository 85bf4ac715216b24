//! RFC 7606 outcomes for malformed UPDATEs, one hand-built byte vector per rule: every
//! attribute the codec knows (§7.1–§7.15, RFC 6793 §6, RFC 8092 §6), flag errors (§3.c),
//! repeats (§3.g), list overruns (§4), missing attributes (§3.d) and the session resets
//! that remain.

use std::net::{IpAddr, Ipv6Addr};

use super::attribute::types;
use super::vectors::{decode_one, frame};
use super::*;

const VIP: &str = "192.0.2.10/32";

/// An attribute TLV; the Extended Length flag in `fl` selects a two-octet length.
fn tlv(fl: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![fl, code];
    if fl & attribute::flags::EXTENDED_LENGTH != 0 {
        v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        v.push(value.len() as u8);
    }
    v.extend_from_slice(value);
    v
}

fn origin() -> Vec<u8> {
    tlv(0x40, types::ORIGIN, &[0])
}

/// AS_PATH [65001] in the session's AS width.
fn as_path(o: Options) -> Vec<u8> {
    if o.four_octet_as {
        tlv(0x40, types::AS_PATH, &[2, 1, 0, 0, 0xfd, 0xe9])
    } else {
        tlv(0x40, types::AS_PATH, &[2, 1, 0xfd, 0xe9])
    }
}

fn next_hop() -> Vec<u8> {
    tlv(0x40, types::NEXT_HOP, &[10, 0, 0, 1])
}

/// ORIGIN, AS_PATH and NEXT_HOP, well formed, followed by `extra`.
fn good_and(o: Options, extra: &[u8]) -> Vec<u8> {
    [origin(), as_path(o), next_hop(), extra.to_vec()].concat()
}

/// An UPDATE announcing 192.0.2.10/32 with this attribute field.
fn update(attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(&[32, 192, 0, 2, 10]);
    frame(2, &body)
}

/// MP_REACH_NLRI value: IPv6 unicast, next hop of `nh_len` octets, 2001:db8:1::/48.
fn mp_reach_v6(nh_len: u8) -> Vec<u8> {
    let mut v = vec![0, 2, 1, nh_len];
    v.extend((0..nh_len).map(|i| if i == 0 { 0x20 } else { i }));
    v.push(0);
    v.extend_from_slice(&[48, 0x20, 1, 0x0d, 0xb8, 0, 1]);
    v
}

fn decode_update(bytes: &[u8], o: Options) -> Result<Update, DecodeError> {
    match decode_one(bytes, o)? {
        Message::Update(u) => Ok(u),
        other => panic!("not an update: {other:?}"),
    }
}

/// True if the decoded attributes hold attribute `code`.
fn present(a: &PathAttributes, code: u8) -> bool {
    match code {
        types::ORIGIN => a.origin.is_some(),
        types::AS_PATH => a.as_path.is_some(),
        types::NEXT_HOP => a.next_hop.is_some(),
        types::MED => a.med.is_some(),
        types::LOCAL_PREF => a.local_pref.is_some(),
        types::ATOMIC_AGGREGATE => a.atomic_aggregate,
        types::AGGREGATOR => a.aggregator.is_some(),
        types::COMMUNITIES => !a.communities.is_empty(),
        types::MP_REACH => a.mp_reach.is_some(),
        types::MP_UNREACH => a.mp_unreach.is_some(),
        types::LARGE_COMMUNITIES => !a.large_communities.is_empty(),
        c => a.other.iter().any(|r| r.type_code == c),
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Decoded without error; the attribute is kept.
    Accept(u8),
    /// The route is withdrawn; an error names this attribute.
    Withdraw(u8),
    /// The route stays; this attribute is dropped and recorded.
    Discard(u8),
    /// The session is reset with this NOTIFICATION (code, subcode).
    Reset(u8, u8),
}

use Outcome::*;

const I4: Options = Options {
    four_octet_as: true,
    extended_message: false,
    ebgp: false,
};
const I2: Options = Options {
    four_octet_as: false,
    ..I4
};
const E4: Options = Options { ebgp: true, ..I4 };

/// (what, session options, attribute field, outcome)
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, Options, Vec<u8>, Outcome)> {
    let o4 = I4;
    let ap = as_path(o4);
    let ext = [0x00, 0x02, 0xfd, 0xea, 0, 0, 0, 1]; // route target 65002:1
    let mp_ok = mp_reach_v6(16);
    let as4_path = [2, 1, 0, 0, 0xfd, 0xe9];
    let as4_aggr = [0, 0, 0xfd, 0xe9, 1, 1, 1, 1];
    let w = |extra: Vec<u8>| good_and(o4, &extra);
    vec![
        // §7.1 ORIGIN
        ("ORIGIN length 2", o4, [tlv(0x40, 1, &[0, 0]), ap.clone(), next_hop()].concat(), Withdraw(1)),
        ("ORIGIN value 3", o4, [tlv(0x40, 1, &[3]), ap.clone(), next_hop()].concat(), Withdraw(1)),
        ("ORIGIN flagged optional", o4, [tlv(0xc0, 1, &[0]), ap.clone(), next_hop()].concat(), Withdraw(1)),
        ("ORIGIN missing", o4, [ap.clone(), next_hop()].concat(), Withdraw(1)),
        // §7.2 AS_PATH
        ("AS_PATH segment overruns", o4, [origin(), tlv(0x40, 2, &[2, 2, 0, 0, 0xfd, 0xe9]), next_hop()].concat(), Withdraw(2)),
        ("AS_PATH zero-length segment", o4, [origin(), tlv(0x40, 2, &[2, 0]), next_hop()].concat(), Withdraw(2)),
        ("AS_PATH segment type 5", o4, [origin(), tlv(0x40, 2, &[5, 1, 0, 0, 0xfd, 0xe9]), next_hop()].concat(), Withdraw(2)),
        ("AS_PATH one octet left over", o4, [origin(), tlv(0x40, 2, &[2, 1, 0, 0, 0xfd, 0xe9, 2]), next_hop()].concat(), Withdraw(2)),
        ("AS_PATH 2-octet path on a 4-octet session", o4, [origin(), as_path(I2), next_hop()].concat(), Withdraw(2)),
        ("AS_PATH flagged optional", o4, [origin(), tlv(0xc0, 2, &[2, 1, 0, 0, 0xfd, 0xe9]), next_hop()].concat(), Withdraw(2)),
        ("AS_PATH missing", o4, [origin(), next_hop()].concat(), Withdraw(2)),
        // §7.3 NEXT_HOP
        ("NEXT_HOP length 3", o4, [origin(), ap.clone(), tlv(0x40, 3, &[10, 0, 0])].concat(), Withdraw(3)),
        ("NEXT_HOP flagged optional", o4, [origin(), ap.clone(), tlv(0xc0, 3, &[10, 0, 0, 1])].concat(), Withdraw(3)),
        ("NEXT_HOP 0.0.0.0", o4, [origin(), ap.clone(), tlv(0x40, 3, &[0, 0, 0, 0])].concat(), Withdraw(3)),
        ("NEXT_HOP multicast", o4, [origin(), ap.clone(), tlv(0x40, 3, &[224, 0, 0, 5])].concat(), Withdraw(3)),
        ("NEXT_HOP broadcast", o4, [origin(), ap.clone(), tlv(0x40, 3, &[255; 4])].concat(), Withdraw(3)),
        ("NEXT_HOP missing", o4, [origin(), ap.clone()].concat(), Withdraw(3)),
        // §7.4 MULTI_EXIT_DISC
        ("MED length 3", o4, w(tlv(0x80, 4, &[0, 0, 1])), Withdraw(4)),
        ("MED flagged well-known", o4, w(tlv(0x40, 4, &[0, 0, 0, 1])), Withdraw(4)),
        ("MED", o4, w(tlv(0x80, 4, &[0, 0, 0, 1])), Accept(4)),
        // §7.5 LOCAL_PREF
        ("LOCAL_PREF length 2", o4, w(tlv(0x40, 5, &[0, 1])), Withdraw(5)),
        ("LOCAL_PREF flagged optional", o4, w(tlv(0x80, 5, &[0, 0, 0, 100])), Withdraw(5)),
        ("LOCAL_PREF from iBGP", o4, w(tlv(0x40, 5, &[0, 0, 0, 100])), Accept(5)),
        ("LOCAL_PREF from eBGP", E4, w(tlv(0x40, 5, &[0, 0, 0, 100])), Discard(5)),
        ("LOCAL_PREF length 2 from eBGP", E4, w(tlv(0x40, 5, &[0, 1])), Discard(5)),
        // §7.6 ATOMIC_AGGREGATE
        ("ATOMIC_AGGREGATE length 1", o4, w(tlv(0x40, 6, &[0])), Discard(6)),
        ("ATOMIC_AGGREGATE flagged optional", o4, w(tlv(0xc0, 6, &[])), Discard(6)),
        ("ATOMIC_AGGREGATE", o4, w(tlv(0x40, 6, &[])), Accept(6)),
        // §7.7 AGGREGATOR
        ("AGGREGATOR length 5", o4, w(tlv(0xc0, 7, &[0, 1, 2, 3, 4])), Discard(7)),
        ("AGGREGATOR length 8 on a 2-octet session", I2, good_and(I2, &tlv(0xc0, 7, &as4_aggr)), Discard(7)),
        ("AGGREGATOR flagged well-known", o4, w(tlv(0x40, 7, &as4_aggr)), Discard(7)),
        ("AGGREGATOR", o4, w(tlv(0xc0, 7, &as4_aggr)), Accept(7)),
        ("AGGREGATOR length 6 on a 2-octet session", I2, good_and(I2, &tlv(0xc0, 7, &[0xfd, 0xe9, 1, 1, 1, 1])), Accept(7)),
        // §7.8 COMMUNITIES
        ("COMMUNITIES length 3", o4, w(tlv(0xc0, 8, &[1, 2, 3])), Withdraw(8)),
        ("COMMUNITIES empty", o4, w(tlv(0xc0, 8, &[])), Withdraw(8)),
        ("COMMUNITIES flagged non-transitive", o4, w(tlv(0x80, 8, &[0, 1, 0, 2])), Withdraw(8)),
        ("COMMUNITIES with extended length", o4, w(tlv(0xd0, 8, &[0, 1, 0, 2])), Accept(8)),
        // §7.9 ORIGINATOR_ID
        ("ORIGINATOR_ID length 3", o4, w(tlv(0x80, 9, &[1, 2, 3])), Withdraw(9)),
        ("ORIGINATOR_ID flagged transitive", o4, w(tlv(0xc0, 9, &[1, 2, 3, 4])), Withdraw(9)),
        ("ORIGINATOR_ID from iBGP", o4, w(tlv(0x80, 9, &[1, 2, 3, 4])), Accept(9)),
        ("ORIGINATOR_ID length 3 from eBGP", E4, w(tlv(0x80, 9, &[1, 2, 3])), Discard(9)),
        // §7.10 CLUSTER_LIST
        ("CLUSTER_LIST length 6", o4, w(tlv(0x80, 10, &[1, 2, 3, 4, 5, 6])), Withdraw(10)),
        ("CLUSTER_LIST empty", o4, w(tlv(0x80, 10, &[])), Withdraw(10)),
        ("CLUSTER_LIST flagged transitive", o4, w(tlv(0xc0, 10, &[1, 2, 3, 4])), Withdraw(10)),
        ("CLUSTER_LIST from iBGP", o4, w(tlv(0x80, 10, &[1, 2, 3, 4, 5, 6, 7, 8])), Accept(10)),
        ("CLUSTER_LIST from eBGP", E4, w(tlv(0x80, 10, &[1, 2, 3, 4])), Discard(10)),
        // §7.11 MP_REACH_NLRI, §7.12 MP_UNREACH_NLRI
        ("MP_REACH", o4, w(tlv(0x80, 14, &mp_ok)), Accept(14)),
        ("MP_REACH flagged well-known", o4, w(tlv(0x40, 14, &mp_ok)), Withdraw(14)),
        ("MP_REACH IPv6 next hop of 8 octets", o4, w(tlv(0x80, 14, &mp_reach_v6(8))), Reset(3, 9)),
        ("MP_REACH IPv6 next hop of 4 octets", o4, w(tlv(0x80, 14, &mp_reach_v6(4))), Reset(3, 9)),
        ("MP_REACH IPv4 next hop of 6 octets", o4, w(tlv(0x80, 14, &[0, 1, 1, 6, 10, 0, 0, 1, 0, 0, 0, 24, 10, 1, 2])), Reset(3, 9)),
        ("MP_REACH next hop overruns", o4, w(tlv(0x80, 14, &[0, 2, 1, 16, 0x20, 1])), Reset(3, 9)),
        ("MP_REACH NLRI truncated", o4, w(tlv(0x80, 14, &mp_reach_v6(16)[..mp_ok.len() - 1])), Reset(3, 9)),
        ("MP_REACH shorter than AFI/SAFI", o4, w(tlv(0x80, 14, &[0, 2])), Reset(3, 9)),
        ("MP_REACH repeated", o4, w([tlv(0x80, 14, &mp_ok), tlv(0x80, 14, &mp_ok)].concat()), Reset(3, 1)),
        ("MP_UNREACH", o4, w(tlv(0x80, 15, &[0, 2, 1, 48, 0x20, 1, 0x0d, 0xb8, 0, 2])), Accept(15)),
        ("MP_UNREACH flagged transitive", o4, w(tlv(0xc0, 15, &[0, 2, 1])), Withdraw(15)),
        ("MP_UNREACH /129", o4, w(tlv(0x80, 15, &[0, 2, 1, 129, 0])), Reset(3, 9)),
        ("MP_UNREACH repeated", o4, w([tlv(0x80, 15, &[0, 2, 1]), tlv(0x80, 15, &[0, 2, 1])].concat()), Reset(3, 1)),
        // §7.14 EXTENDED COMMUNITIES
        ("EXTENDED COMMUNITIES length 7", o4, w(tlv(0xc0, 16, &ext[..7])), Withdraw(16)),
        ("EXTENDED COMMUNITIES length 12", o4, w(tlv(0xc0, 16, &[&ext[..], &ext[..4]].concat())), Withdraw(16)),
        ("EXTENDED COMMUNITIES empty", o4, w(tlv(0xc0, 16, &[])), Withdraw(16)),
        ("EXTENDED COMMUNITIES flagged non-transitive", o4, w(tlv(0x80, 16, &ext)), Withdraw(16)),
        ("EXTENDED COMMUNITIES length 7 from eBGP", E4, w(tlv(0xc0, 16, &ext[..7])), Withdraw(16)),
        ("EXTENDED COMMUNITIES", o4, w(tlv(0xc0, 16, &ext)), Accept(16)),
        ("EXTENDED COMMUNITIES, two, Partial", o4, w(tlv(0xe0, 16, &[ext, ext].concat())), Accept(16)),
        // §7.15 IPv6 Address Specific Extended Community
        ("IPv6 EXTENDED COMMUNITIES length 19", o4, w(tlv(0xc0, 25, &[0; 19])), Withdraw(25)),
        ("IPv6 EXTENDED COMMUNITIES empty", o4, w(tlv(0xc0, 25, &[])), Withdraw(25)),
        ("IPv6 EXTENDED COMMUNITIES flagged non-transitive", o4, w(tlv(0x80, 25, &[0; 20])), Withdraw(25)),
        ("IPv6 EXTENDED COMMUNITIES", o4, w(tlv(0xc0, 25, &[0; 40])), Accept(25)),
        // RFC 8092 §6 LARGE_COMMUNITY
        ("LARGE_COMMUNITY length 8", o4, w(tlv(0xc0, 32, &[0, 0, 0, 1, 0, 0, 0, 2])), Withdraw(32)),
        ("LARGE_COMMUNITY empty", o4, w(tlv(0xc0, 32, &[])), Withdraw(32)),
        ("LARGE_COMMUNITY flagged non-transitive", o4, w(tlv(0x80, 32, &[0; 12])), Withdraw(32)),
        ("LARGE_COMMUNITY", o4, w(tlv(0xc0, 32, &[0; 12])), Accept(32)),
        // RFC 6793 §6 AS4_PATH, AS4_AGGREGATOR
        ("AS4_PATH on a 4-octet session", o4, w(tlv(0xc0, 17, &as4_path)), Discard(17)),
        ("AS4_AGGREGATOR on a 4-octet session", o4, w(tlv(0xc0, 18, &as4_aggr)), Discard(18)),
        ("AS4_PATH", I2, good_and(I2, &tlv(0xc0, 17, &as4_path)), Accept(17)),
        ("AS4_PATH segment overruns", I2, good_and(I2, &tlv(0xc0, 17, &[2, 2, 0, 0, 0xfd, 0xe9])), Discard(17)),
        ("AS4_PATH zero-length segment", I2, good_and(I2, &tlv(0xc0, 17, &[2, 0])), Discard(17)),
        ("AS4_PATH confederation segment", I2, good_and(I2, &tlv(0xc0, 17, &[3, 1, 0, 0, 0xfd, 0xe9])), Discard(17)),
        ("AS4_PATH flagged non-transitive", I2, good_and(I2, &tlv(0x80, 17, &as4_path)), Discard(17)),
        ("AS4_AGGREGATOR", I2, good_and(I2, &tlv(0xc0, 18, &as4_aggr)), Accept(18)),
        ("AS4_AGGREGATOR length 6", I2, good_and(I2, &tlv(0xc0, 18, &as4_aggr[2..])), Discard(18)),
        ("AS4_AGGREGATOR flagged well-known", I2, good_and(I2, &tlv(0x40, 18, &as4_aggr)), Discard(18)),
        // §3.g repeats, §4 list overruns, unknown attributes
        ("ORIGIN repeated", o4, w(tlv(0x40, 1, &[2])), Discard(1)),
        ("EXTENDED COMMUNITIES repeated", o4, w([tlv(0xc0, 16, &ext), tlv(0xc0, 16, &ext)].concat()), Discard(16)),
        ("attribute overruns the list", o4, w(vec![0x80, 4, 9, 0]), Withdraw(4)),
        ("extended length overruns the list", o4, w(vec![0x90, 4, 0, 5, 0, 0, 0, 1]), Withdraw(4)),
        ("one octet after the last attribute", o4, w(vec![0x80]), Withdraw(0)),
        ("unknown optional attribute", o4, w(tlv(0xc0, 99, b"opaque")), Accept(99)),
        ("unknown well-known attribute", o4, w(tlv(0x40, 99, &[])), Reset(3, 2)),
        // §3: the strongest action wins.
        ("discard and withdraw together", o4, w([tlv(0x40, 6, &[0]), tlv(0xc0, 16, &ext[..7])].concat()), Withdraw(16)),
    ]
}

#[test]
fn rfc7606_every_attribute_rule() {
    let vip: Prefix = VIP.parse().unwrap();
    for (what, o, attrs, outcome) in cases() {
        let got = decode_update(&update(&attrs), o);
        let u = match (outcome, got) {
            (Reset(code, subcode), Err(e)) => {
                let n = e.notification();
                assert_eq!((n.code, n.subcode), (code, subcode), "{what}: {e}");
                continue;
            }
            (Reset(..), Ok(u)) => panic!("{what}: decoded, expected a session reset: {u:?}"),
            (_, Err(e)) => panic!("{what}: session reset {e}, expected {outcome:?}"),
            (_, Ok(u)) => u,
        };
        // What survived decodes again, unchanged and without errors (the fuzz invariant).
        let again = Message::Update(Update {
            errors: vec![],
            ..u.clone()
        });
        let mut wire = bytes::BytesMut::new();
        Codec::with_options(o).encode(&again, &mut wire).unwrap();
        assert_eq!(decode_one(&wire, o), Ok(again), "{what}: re-encoded");
        match outcome {
            Accept(code) => {
                assert!(u.errors.is_empty(), "{what}: {:?}", u.errors);
                assert_eq!(u.nlri, vec![vip], "{what}");
                assert!(present(&u.attributes, code), "{what}: {u:?}");
            }
            Withdraw(code) => {
                assert!(
                    u.errors
                        .iter()
                        .any(|e| e.type_code == code && e.action == Action::TreatAsWithdraw),
                    "{what}: {:?}",
                    u.errors
                );
                assert!(u.treated_as_withdraw(), "{what}");
                assert!(u.nlri.is_empty(), "{what}: {u:?}");
                assert_eq!(u.withdrawn, vec![vip], "{what}");
                let rest = PathAttributes {
                    mp_unreach: None,
                    ..u.attributes.clone()
                };
                assert_eq!(rest, PathAttributes::default(), "{what}");
            }
            Discard(code) => {
                assert!(!u.errors.is_empty(), "{what}");
                assert!(
                    u.errors
                        .iter()
                        .all(|e| e.type_code == code && e.action == Action::AttributeDiscard),
                    "{what}: {:?}",
                    u.errors
                );
                assert_eq!(u.nlri, vec![vip], "{what}: the route stays");
                assert_eq!(u.attributes.origin, Some(Origin::Igp), "{what}");
                assert!(u.attributes.as_path.is_some() && u.attributes.next_hop.is_some());
                if code != types::ORIGIN && code != types::EXTENDED_COMMUNITIES {
                    assert!(!present(&u.attributes, code), "{what}: not discarded");
                }
            }
            Reset(..) => unreachable!(),
        }
    }
}

#[test]
fn rfc7606_kept_attributes_are_the_received_bytes() {
    let ext = [0x00, 0x02, 0xfd, 0xea, 0, 0, 0, 1];
    let attrs = good_and(
        I4,
        &[tlv(0xc0, 16, &ext), tlv(0xc0, 16, &[0xff; 8])].concat(),
    );
    let u = decode_update(&update(&attrs), I4).unwrap();
    assert_eq!(
        u.attributes.other,
        vec![RawAttribute {
            flags: 0xc0,
            type_code: types::EXTENDED_COMMUNITIES,
            value: bytes::Bytes::copy_from_slice(&ext),
        }],
        "the first copy is kept, the repeat discarded"
    );
    // Re-encoded, the attribute goes out as it came in.
    let mut wire = bytes::BytesMut::new();
    Codec::new()
        .encode(
            &Message::Update(Update {
                errors: vec![],
                ..u
            }),
            &mut wire,
        )
        .unwrap();
    assert!(
        wire.windows(11)
            .any(|w| w == [&[0xc0, 16, 8][..], &ext[..]].concat()),
        "{wire:02x?}"
    );
}

#[test]
fn rfc7606_session_resets_outside_the_attributes() {
    // Withdrawn Routes Length beyond the message.
    assert!(matches!(
        decode_update(&frame(2, &[0, 9, 0, 0]), I4),
        Err(DecodeError::MalformedAttributeList { .. })
    ));
    // Total Path Attribute Length beyond the message.
    assert!(matches!(
        decode_update(&frame(2, &[0, 0, 0, 9, 0x40, 1, 1, 0]), I4),
        Err(DecodeError::MalformedAttributeList { .. })
    ));
    // NLRI with a /33.
    assert_eq!(
        decode_update(&frame(2, &[0, 0, 0, 0, 33, 1, 2, 3, 4, 5]), I4),
        Err(DecodeError::InvalidNetworkField)
    );
}

#[test]
fn rfc7606_treat_as_withdraw_moves_mp_routes_to_mp_unreach() {
    // MP_REACH flagged well-known: its IPv6 route is withdrawn like the IPv4 one.
    let attrs = good_and(I4, &tlv(0x40, types::MP_REACH, &mp_reach_v6(16)));
    let u = decode_update(&update(&attrs), I4).unwrap();
    assert!(u.treated_as_withdraw());
    let unreach = u.attributes.mp_unreach.unwrap();
    assert_eq!(unreach.family, Family::Ipv6Unicast);
    assert_eq!(
        unreach.withdrawn,
        vec![
            Prefix::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0)),
                48
            )
            .unwrap()
        ]
    );
    assert_eq!(u.withdrawn, vec![VIP.parse().unwrap()]);
    // A malformed EXTENDED COMMUNITIES beside MP_REACH: same.
    let attrs = good_and(
        I4,
        &[
            tlv(0x80, types::MP_REACH, &mp_reach_v6(16)),
            tlv(0xc0, types::EXTENDED_COMMUNITIES, &[0; 7]),
        ]
        .concat(),
    );
    let u = decode_update(&update(&attrs), I4).unwrap();
    assert!(u.treated_as_withdraw());
    assert_eq!(u.attributes.mp_unreach.unwrap().withdrawn.len(), 1);
}
