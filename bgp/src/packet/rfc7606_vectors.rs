//! RFC 7606 outcomes for malformed UPDATEs: treat-as-withdraw, attribute discard and
//! session reset, each from hand-built bytes.

use std::net::{IpAddr, Ipv6Addr};

use super::vectors::{decode_one, frame};
use super::*;

/// An UPDATE body announcing 192.0.2.10/32 with the given extra attribute bytes.
fn update_with(extra: &[u8], keep_next_hop: bool) -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
    if keep_next_hop {
        attrs.extend_from_slice(&[0x40, 3, 4, 10, 0, 0, 1]);
    }
    attrs.extend_from_slice(extra);
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend(attrs);
    body.extend_from_slice(&[32, 192, 0, 2, 10]);
    frame(2, &body)
}

fn decode_update(bytes: &[u8]) -> Result<Update, DecodeError> {
    match decode_one(bytes, Options::default())? {
        Message::Update(u) => Ok(u),
        other => panic!("not an update: {other:?}"),
    }
}

#[test]
fn rfc7606_treat_as_withdraw_and_discard() {
    let vip: Prefix = "192.0.2.10/32".parse().unwrap();
    // (extra attribute bytes, keep NEXT_HOP, expected action)
    let cases: &[(&[u8], bool, Action)] = &[
        (&[0x80, 4, 3, 0, 0, 1], true, Action::TreatAsWithdraw), // MED of 3 bytes
        (&[0x40, 5, 2, 0, 1], true, Action::TreatAsWithdraw),    // LOCAL_PREF of 2 bytes
        (&[0xc0, 8, 3, 1, 2, 3], true, Action::TreatAsWithdraw), // COMMUNITIES not 4n
        (
            &[0xc0, 32, 8, 0, 0, 0, 1, 0, 0, 0, 2],
            true,
            Action::TreatAsWithdraw,
        ), // LARGE not 12n
        (&[0x00, 4, 4, 0, 0, 0, 1], true, Action::TreatAsWithdraw), // MED flagged well-known
        (&[], false, Action::TreatAsWithdraw),                   // NEXT_HOP missing
        (&[0x80, 4, 9, 0], true, Action::TreatAsWithdraw),       // overruns the list
        (&[0x40, 6, 1, 0], true, Action::AttributeDiscard),      // ATOMIC_AGGREGATE len 1
        (&[0xc0, 7, 5, 0, 1, 2, 3, 4], true, Action::AttributeDiscard), // AGGREGATOR len 5
        (&[0x40, 1, 1, 2], true, Action::AttributeDiscard),      // repeated ORIGIN
    ];
    for (extra, nh, action) in cases {
        let u = decode_update(&update_with(extra, *nh)).unwrap();
        assert_eq!(
            u.errors.first().map(|e| e.action),
            Some(*action),
            "{extra:02x?}"
        );
        if *action == Action::TreatAsWithdraw {
            assert!(
                u.nlri.is_empty() && u.withdrawn == vec![vip],
                "{extra:02x?}: {u:?}"
            );
            assert_eq!(u.attributes, PathAttributes::default());
        } else {
            assert_eq!(u.nlri, vec![vip], "{extra:02x?}");
            assert_eq!(u.attributes.origin, Some(Origin::Igp));
        }
    }
    // A bad ORIGIN value: the route is withdrawn.
    let mut bytes = update_with(&[], true);
    bytes[26] = 7;
    assert!(decode_update(&bytes).unwrap().treated_as_withdraw());
}

#[test]
fn rfc7606_session_resets() {
    // Unrecognized well-known attribute.
    assert_eq!(
        decode_update(&update_with(&[0x40, 99, 0], true)),
        Err(DecodeError::UnrecognizedWellKnown { type_code: 99 })
    );
    // Two MP_UNREACH attributes.
    let unreach = [0x80, 15, 3, 0, 2, 1];
    assert!(matches!(
        decode_update(&update_with(&[unreach, unreach].concat(), true)),
        Err(DecodeError::MalformedAttributeList { .. })
    ));
    // Withdrawn Routes Length beyond the message.
    assert!(matches!(
        decode_update(&frame(2, &[0, 9, 0, 0])),
        Err(DecodeError::MalformedAttributeList { .. })
    ));
    // NLRI with a /33.
    assert_eq!(
        decode_update(&frame(2, &[0, 0, 0, 0, 33, 1, 2, 3, 4, 5])),
        Err(DecodeError::InvalidNetworkField)
    );
    // MP_REACH with truncated NLRI.
    let reach = [
        0x80, 14, 22, 0, 2, 1, 16, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 64,
    ];
    assert!(matches!(
        decode_update(&update_with(&reach, true)),
        Err(DecodeError::MalformedMultiprotocol { type_code: 14, .. })
    ));
}

#[test]
fn rfc7606_mp_reach_with_bad_next_hop_withdraws_ipv6_routes() {
    let mut reach = vec![0x80, 14, 0, 0, 2, 1, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    reach.extend_from_slice(&[
        128, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ]);
    reach[2] = (reach.len() - 3) as u8;
    let u = decode_update(&update_with(&reach, true)).unwrap();
    assert!(u.treated_as_withdraw());
    let unreach = u.attributes.mp_unreach.unwrap();
    assert_eq!(unreach.family, Family::Ipv6Unicast);
    assert_eq!(
        unreach.withdrawn,
        vec![Prefix::host(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10
        )))]
    );
    assert_eq!(u.withdrawn, vec!["192.0.2.10/32".parse().unwrap()]);
}
