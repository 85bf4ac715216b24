//! Table-driven `(packet, bytes)` vectors for every packet type in MQTT 3.1.1 and 5.0,
//! written by hand from the specification, checked both ways; every input is also fed
//! 1 and 3 bytes at a time.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use bytes::{Bytes, BytesMut};
use flowgate_mqtt::{
    Auth, ConnAck, Connect, Disconnect, Limits, Packet, Properties, ProtocolVersion as V,
    PubResponse, PublishHead, QoS, ReasonCode, SubAck, Subscribe, Subscription, UnsubAck,
    Unsubscribe, Will,
};
use support::{Item, decode_split};

fn props(f: impl FnOnce(&mut Properties)) -> Properties {
    let mut p = Properties::default();
    f(&mut p);
    p
}

fn ack(id: u16, code: u8, p: Properties) -> PubResponse {
    PubResponse {
        packet_id: id,
        reason_code: ReasonCode(code),
        properties: p,
    }
}

fn connect(version: V, client_id: &str) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

fn publish(topic: &str, qos: QoS, id: Option<u16>, p: Properties, len: usize) -> PublishHead {
    PublishHead {
        topic: topic.into(),
        qos,
        retain: false,
        dup: false,
        packet_id: id,
        properties: p,
        payload_len: len,
    }
}

fn v311() -> Vec<(Item, &'static [u8])> {
    use Item::Packet as P;
    let full = Connect {
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"by"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        keep_alive: 10,
        ..connect(V::V311, "id")
    };
    vec![
        (
            P(Packet::Connect(Box::new(connect(V::V311, "c")))),
            b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c",
        ),
        (
            P(Packet::Connect(Box::new(full))),
            b"\x10\x1b\x00\x04MQTT\x04\xee\x00\x0a\x00\x02id\x00\x01w\x00\x02by\x00\x01u\x00\x01p",
        ),
        (
            P(Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode(0),
                properties: Properties::default(),
            })),
            b"\x20\x02\x01\x00",
        ),
        (
            P(Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode(5),
                properties: Properties::default(),
            })),
            b"\x20\x02\x00\x05",
        ),
        (
            Item::Publish(
                publish("a/b", QoS::AtLeastOnce, Some(10), Properties::default(), 2),
                b"hi".to_vec(),
            ),
            b"\x32\x09\x00\x03a/b\x00\x0ahi",
        ),
        (
            Item::Publish(
                publish("a", QoS::AtMostOnce, None, Properties::default(), 0),
                vec![],
            ),
            b"\x30\x03\x00\x01a",
        ),
        (P(Packet::PubAck(PubResponse::new(10))), b"\x40\x02\x00\x0a"),
        (P(Packet::PubRec(PubResponse::new(10))), b"\x50\x02\x00\x0a"),
        (P(Packet::PubRel(PubResponse::new(10))), b"\x62\x02\x00\x0a"),
        (
            P(Packet::PubComp(PubResponse::new(10))),
            b"\x70\x02\x00\x0a",
        ),
        (
            P(Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                subscriptions: vec![
                    Subscription::new("a/+", QoS::AtLeastOnce),
                    Subscription::new("#", QoS::ExactlyOnce),
                ],
            })),
            b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x02",
        ),
        (
            P(Packet::SubAck(SubAck {
                packet_id: 1,
                properties: Properties::default(),
                reason_codes: vec![ReasonCode(1), ReasonCode(0x80)],
            })),
            b"\x90\x04\x00\x01\x01\x80",
        ),
        (
            P(Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                properties: Properties::default(),
                filters: vec!["a/b".into()],
            })),
            b"\xa2\x07\x00\x02\x00\x03a/b",
        ),
        (
            P(Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                properties: Properties::default(),
                reason_codes: vec![],
            })),
            b"\xb0\x02\x00\x02",
        ),
        (P(Packet::PingReq), b"\xc0\x00"),
        (P(Packet::PingResp), b"\xd0\x00"),
        (P(Packet::Disconnect(Disconnect::default())), b"\xe0\x00"),
    ]
}

fn v5() -> Vec<(Item, &'static [u8])> {
    use Item::Packet as P;
    let c = Connect {
        properties: props(|p| {
            p.session_expiry_interval = Some(120);
            p.receive_maximum = Some(10);
        }),
        ..connect(V::V5, "c")
    };
    let will = Connect {
        keep_alive: 0,
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: props(|p| {
                p.payload_is_utf8 = Some(true);
                p.user_properties.push(("k".into(), "v".into()));
            }),
        }),
        password: Some(Bytes::from_static(b"p")),
        ..connect(V::V5, "")
    };
    let mut retained = publish(
        "",
        QoS::ExactlyOnce,
        Some(7),
        props(|p| p.topic_alias = Some(1)),
        0,
    );
    retained.retain = true;
    retained.dup = true;
    let none = Properties::default;
    vec![
        (P(Packet::Connect(Box::new(c))), b"\x10\x16\x00\x04MQTT\x05\x02\x00\x3c\x08\x11\x00\x00\x00\x78\x21\x00\x0a\x00\x01c"),
        (P(Packet::Connect(Box::new(will))), b"\x10\x1f\x00\x04MQTT\x05\x46\x00\x00\x00\x00\x00\x09\x01\x01\x26\x00\x01k\x00\x01v\x00\x01w\x00\x00\x00\x01p"),
        (P(Packet::ConnAck(ConnAck { session_present: false, reason_code: ReasonCode(0), properties: props(|p| { p.server_keep_alive = Some(30); p.maximum_qos = Some(QoS::AtLeastOnce); }) })), b"\x20\x08\x00\x00\x05\x13\x00\x1e\x24\x01"),
        (P(Packet::ConnAck(ConnAck { session_present: false, reason_code: ReasonCode::NOT_AUTHORIZED, properties: none() })), b"\x20\x03\x00\x87\x00"),
        (Item::Publish(publish("a/b", QoS::AtMostOnce, None, props(|p| { p.payload_is_utf8 = Some(true); p.topic_alias = Some(5); }), 2), b"hi".to_vec()), b"\x30\x0d\x00\x03a/b\x05\x01\x01\x23\x00\x05hi"),
        (Item::Publish(retained, vec![]), b"\x3d\x08\x00\x00\x00\x07\x03\x23\x00\x01"),
        (Item::Publish(publish("t", QoS::AtMostOnce, None, props(|p| p.subscription_identifiers = vec![1, 2]), 0), vec![]), b"\x30\x08\x00\x01t\x04\x0b\x01\x0b\x02"),
        (P(Packet::PubAck(PubResponse::new(10))), b"\x40\x02\x00\x0a"),
        (P(Packet::PubAck(ack(10, 0x10, none()))), b"\x40\x03\x00\x0a\x10"),
        (P(Packet::PubRec(ack(10, 0x80, props(|p| p.reason_string = Some("no".into()))))), b"\x50\x09\x00\x0a\x80\x05\x1f\x00\x02no"),
        (P(Packet::PubRel(ack(10, 0x92, none()))), b"\x62\x03\x00\x0a\x92"),
        (P(Packet::PubComp(PubResponse::new(10))), b"\x70\x02\x00\x0a"),
        (P(Packet::Subscribe(Subscribe { packet_id: 1, properties: props(|p| p.subscription_identifiers = vec![7]), subscriptions: vec![Subscription { filter: "a/#".into(), qos: QoS::AtLeastOnce, no_local: true, retain_as_published: true, retain_handling: 2 }] })), b"\x82\x0b\x00\x01\x02\x0b\x07\x00\x03a/#\x2d"),
        (P(Packet::Subscribe(Subscribe { packet_id: 2, properties: none(), subscriptions: vec![Subscription::new("$share/g/a", QoS::AtMostOnce)] })), b"\x82\x10\x00\x02\x00\x00\x0a$share/g/a\x00"),
        (P(Packet::SubAck(SubAck { packet_id: 1, properties: none(), reason_codes: vec![ReasonCode(1), ReasonCode::TOPIC_FILTER_INVALID] })), b"\x90\x05\x00\x01\x00\x01\x8f"),
        (P(Packet::Unsubscribe(Unsubscribe { packet_id: 2, properties: props(|p| p.user_properties.push(("k".into(), "v".into()))), filters: vec!["x".into()] })), b"\xa2\x0d\x00\x02\x07\x26\x00\x01k\x00\x01v\x00\x01x"),
        (P(Packet::UnsubAck(UnsubAck { packet_id: 2, properties: none(), reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED] })), b"\xb0\x04\x00\x02\x00\x11"),
        (P(Packet::PingReq), b"\xc0\x00"),
        (P(Packet::PingResp), b"\xd0\x00"),
        (P(Packet::Disconnect(Disconnect::default())), b"\xe0\x00"),
        (P(Packet::Disconnect(Disconnect { reason_code: ReasonCode::DISCONNECT_WITH_WILL, properties: none() })), b"\xe0\x01\x04"),
        (P(Packet::Disconnect(Disconnect { reason_code: ReasonCode(0x8e), properties: props(|p| p.reason_string = Some("x".into())) })), b"\xe0\x06\x8e\x04\x1f\x00\x01x"),
        (P(Packet::Auth(Auth::default())), b"\xf0\x00"),
        (P(Packet::Auth(Auth { reason_code: ReasonCode::CONTINUE_AUTHENTICATION, properties: props(|p| { p.authentication_method = Some("abc".into()); p.authentication_data = Some(Bytes::from_static(b"\xff")); }) })), b"\xf0\x0c\x18\x0a\x15\x00\x03abc\x16\x00\x01\xff"),
    ]
}

fn encode(item: &Item, version: V) -> Vec<u8> {
    let mut buf = BytesMut::new();
    match item {
        Item::Packet(p) => p.encode(version, &mut buf).unwrap(),
        Item::Publish(h, payload) => {
            h.encode(version, &mut buf).unwrap();
            buf.extend_from_slice(payload);
        }
    }
    buf.to_vec()
}

fn check(version: V, table: Vec<(Item, &'static [u8])>) {
    for (item, bytes) in &table {
        assert_eq!(encode(item, version), *bytes, "encoding {item:?}");
        let (items, err) = decode_split(Some(version), Limits::default(), bytes);
        assert_eq!(err, None, "decoding {bytes:02x?}");
        assert_eq!(items, vec![item.clone()], "decoding {bytes:02x?}");
    }
    // All of them back to back, as one stream.
    let stream: Vec<u8> = table.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let (items, err) = decode_split(Some(version), Limits::default(), &stream);
    assert_eq!(err, None);
    assert_eq!(items, table.into_iter().map(|(i, _)| i).collect::<Vec<_>>());
}

#[test]
fn mqtt_3_1_1_vectors() {
    check(V::V311, v311());
}

#[test]
fn mqtt_5_vectors() {
    check(V::V5, v5());
}

#[test]
fn server_learns_the_version_from_connect() {
    let input = b"\x10\x16\x00\x04MQTT\x05\x02\x00\x3c\x08\x11\x00\x00\x00\x78\x21\x00\x0a\x00\x01c\x40\x03\x00\x0a\x10";
    let (items, err) = decode_split(None, Limits::default(), input);
    assert_eq!(err, None);
    assert_eq!(
        items[1],
        Item::Packet(Packet::PubAck(ack(10, 0x10, Properties::default())))
    );
}

#[test]
fn v5_fields_are_left_out_in_3_1_1() {
    let mut buf = BytesMut::new();
    Packet::PubAck(ack(3, 0x80, Properties::default()))
        .encode(V::V311, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], b"\x40\x02\x00\x03");
}
