//! Table-driven round-trip vectors `(message, bytes)` checked both ways, and chunked decoding.

use std::net::{IpAddr, Ipv4Addr};

use bytes::{Bytes, BytesMut};

use super::*;

pub(super) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((body.len() + 19) as u16).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

pub(super) fn decode_one(bytes: &[u8], options: Options) -> Result<Message, DecodeError> {
    let mut codec = Codec::with_options(options);
    let mut buf = BytesMut::from(bytes);
    let msg = codec.decode(&mut buf)?;
    assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    Ok(msg.expect("a whole message"))
}

fn encode(msg: &Message, options: Options) -> Vec<u8> {
    let mut b = BytesMut::new();
    Codec::with_options(options).encode(msg, &mut b).unwrap();
    b.to_vec()
}

fn vip_update() -> Update {
    Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence([65001])),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..Default::default()
        },
        nlri: vec!["192.0.2.10/32".parse().unwrap()],
        ..Default::default()
    }
}

#[test]
fn byte_vectors_round_trip_both_ways() {
    let o = Options::default();
    let open = Open::new(
        65001,
        90,
        Ipv4Addr::new(10, 0, 0, 1),
        vec![
            Capability::MultiProtocol { afi: 1, safi: 1 },
            Capability::RouteRefresh,
        ],
    );
    let cases: Vec<(Message, Vec<u8>)> = vec![
        (Message::Keepalive, frame(4, &[])),
        (
            Message::Open(open),
            frame(
                1,
                &[
                    4, 0xfd, 0xe9, 0, 90, 10, 0, 0, 1, 16, // version, AS, hold, id, opt len
                    2, 14, // capabilities parameter
                    1, 4, 0, 1, 0, 1, // MP IPv4 unicast
                    2, 0, // route refresh
                    65, 4, 0, 0, 0xfd, 0xe9, // 4-octet AS
                ],
            ),
        ),
        (
            Message::Update(vip_update()),
            frame(
                2,
                &[
                    0, 0, 0, 20, // no withdrawn, 20 bytes of attributes
                    0x40, 1, 1, 0, // ORIGIN IGP
                    0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, // AS_PATH SEQ [65001]
                    0x40, 3, 4, 10, 0, 0, 1, // NEXT_HOP
                    32, 192, 0, 2, 10, // 192.0.2.10/32
                ],
            ),
        ),
        (
            Message::Update(Update {
                withdrawn: vec!["10.0.0.0/8".parse().unwrap()],
                ..Default::default()
            }),
            frame(2, &[0, 2, 8, 10, 0, 0]),
        ),
        (
            Message::Notification(Notification::cease()),
            frame(3, &[6, 2]),
        ),
        (
            Message::RouteRefresh(RouteRefresh::request(Family::Ipv4Unicast)),
            frame(5, &[0, 1, 0, 1]),
        ),
    ];
    for (msg, bytes) in cases {
        assert_eq!(encode(&msg, o), bytes, "encode {msg:?}");
        assert_eq!(decode_one(&bytes, o).unwrap(), msg, "decode {bytes:02x?}");
    }
}

fn everything_update() -> Update {
    let v6 = |s: &str| -> Prefix { s.parse().unwrap() };
    Update {
        withdrawn: vec!["10.9.0.0/16".parse().unwrap()],
        attributes: PathAttributes {
            origin: Some(Origin::Incomplete),
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment {
                        kind: SegmentKind::Sequence,
                        asns: vec![4_200_000_001, 65002],
                    },
                    AsSegment {
                        kind: SegmentKind::Set,
                        asns: vec![1, 2, 3],
                    },
                ],
            }),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            med: Some(100),
            local_pref: Some(200),
            atomic_aggregate: true,
            aggregator: Some(Aggregator {
                asn: 4_200_000_001,
                address: Ipv4Addr::new(1, 1, 1, 1),
            }),
            // 70 communities: 280 bytes, so the extended-length flag is exercised.
            communities: (0..70).map(|i| Community::new(65001, i)).collect(),
            large_communities: vec![LargeCommunity {
                global: 4_200_000_001,
                local1: 1,
                local2: 2,
            }],
            mp_reach: Some(MpReach {
                family: Family::Ipv6Unicast,
                next_hop: IpAddr::V6("2001:db8::1".parse().unwrap()),
                link_local: Some("fe80::1".parse().unwrap()),
                nlri: vec![v6("2001:db8:1::/48"), v6("2001:db8::10/128")],
            }),
            mp_unreach: Some(MpUnreach {
                family: Family::Ipv6Unicast,
                withdrawn: vec![v6("2001:db8:2::/48")],
            }),
            other: vec![RawAttribute {
                flags: 0xc0,
                type_code: 99,
                value: Bytes::from_static(b"opaque"),
            }],
        },
        nlri: vec!["198.51.100.0/24".parse().unwrap()],
        errors: vec![],
    }
}

#[test]
fn every_attribute_round_trips_in_both_as_widths() {
    let msg = Message::Update(everything_update());
    let bytes = encode(&msg, Options::default());
    assert_eq!(decode_one(&bytes, Options::default()).unwrap(), msg);

    // 2-octet sessions: large ASNs become AS_TRANS, small ones survive.
    let two = Options {
        four_octet_as: false,
        ..Options::default()
    };
    let decoded = decode_one(&encode(&msg, two), two).unwrap();
    let Message::Update(u) = decoded else {
        panic!("not an update")
    };
    assert_eq!(
        u.attributes.as_path.unwrap().segments[0].asns,
        vec![u32::from(AS_TRANS), 65002]
    );
    assert_eq!(u.attributes.aggregator.unwrap().asn, u32::from(AS_TRANS));
}

#[test]
fn capabilities_round_trip() {
    let open = Message::Open(Open::new(
        4_200_000_001,
        9,
        Ipv4Addr::new(10, 0, 0, 2),
        vec![
            Capability::MultiProtocol { afi: 2, safi: 1 },
            Capability::ExtendedMessage,
            Capability::GracefulRestart {
                flags: 0x8,
                time: 120,
                families: vec![RestartFamily {
                    afi: 1,
                    safi: 1,
                    flags: 0x80,
                }],
            },
            Capability::AddPath {
                families: vec![AddPathFamily {
                    afi: 1,
                    safi: 1,
                    send_receive: 3,
                }],
            },
            Capability::EnhancedRouteRefresh,
            Capability::Unknown {
                code: 73,
                value: Bytes::from_static(b"\x04host\x00"),
            },
        ],
    ));
    let bytes = encode(&open, Options::default());
    let back = decode_one(&bytes, Options::default()).unwrap();
    assert_eq!(back, open);
    let Message::Open(o) = back else {
        panic!("not open")
    };
    assert_eq!((o.asn, o.asn()), (AS_TRANS, 4_200_000_001));
}

#[test]
fn chunked_input_decodes_deterministically() {
    let mut stream = Vec::new();
    for m in [
        Message::Keepalive,
        Message::Update(everything_update()),
        Message::Notification(Notification::cease()),
    ] {
        stream.extend(encode(&m, Options::default()));
    }
    for chunk in [1, 7, 19, 64, 1000] {
        let mut codec = Codec::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                got.push(m.kind());
            }
        }
        assert_eq!(got, vec![4, 2, 3], "chunk size {chunk}");
        assert_eq!(codec.decode_eof(&mut buf), Ok(None));
    }
    let mut codec = Codec::new();
    let mut partial = BytesMut::from(&stream[..10]);
    assert_eq!(codec.decode(&mut partial), Ok(None));
    assert_eq!(
        codec.decode_eof(&mut partial),
        Err(DecodeError::Truncated { buffered: 10 })
    );
}

#[test]
fn header_errors_reset_the_session() {
    let o = Options::default();
    let mut bad_marker = frame(4, &[]);
    bad_marker[3] = 0;
    assert_eq!(decode_one(&bad_marker, o), Err(DecodeError::BadMarker));
    let mut short = frame(4, &[]);
    short[17] = 18;
    let err = decode_one(&short, o).unwrap_err();
    assert_eq!(err, DecodeError::BadLength { length: 18 });
    assert_eq!(
        (err.notification().code, err.notification().subcode),
        (1, 2)
    );
    assert_eq!(
        decode_one(&frame(9, &[]), o),
        Err(DecodeError::BadType { kind: 9 })
    );
    assert_eq!(
        decode_one(&frame(4, &[0]), o),
        Err(DecodeError::BadLength { length: 20 })
    );
    assert_eq!(
        decode_one(&frame(5, &[0, 1, 0]), o),
        Err(DecodeError::BadRouteRefreshLength { length: 22 })
    );

    // The size limit follows the extended message capability.
    let mut big = vip_update();
    big.nlri = (0..1000u32)
        .map(|i| Prefix::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    let mut b = BytesMut::new();
    assert!(matches!(
        Codec::new().encode(&Message::Update(big.clone()), &mut b),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(b.is_empty());
    let ext = Options {
        extended_message: true,
        ..o
    };
    let bytes = encode(&Message::Update(big.clone()), ext);
    assert_eq!(decode_one(&bytes, ext).unwrap(), Message::Update(big));
    assert!(matches!(
        decode_one(&bytes, o),
        Err(DecodeError::BadLength { .. })
    ));
}

#[test]
fn end_of_rib_markers() {
    for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let m = Update::end_of_rib_marker(f);
        let Message::Update(back) = decode_one(
            &encode(&Message::Update(m), Options::default()),
            Options::default(),
        )
        .unwrap() else {
            panic!("not an update")
        };
        assert_eq!(back.end_of_rib(), Some(f));
    }
    assert_eq!(vip_update().end_of_rib(), None);
}
