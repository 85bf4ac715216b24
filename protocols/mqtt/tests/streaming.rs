//! A 1 MiB PUBLISH payload arriving in 4 KiB pieces is handed on piece by piece: the
//! decoder never holds more than the piece it was given. The packet limit counts the
//! payload.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::BytesMut;
use flowgate_mqtt::{Decoder, Frame, Limits, MqttError, ProtocolVersion, PublishHead, QoS};

#[test]
fn one_mib_payload_streams_in_4_kib_pieces() {
    const LEN: usize = 1 << 20;
    const PIECE: usize = 4096;
    let head = PublishHead::new("big/file", QoS::AtLeastOnce, LEN);
    let mut wire = BytesMut::new();
    head.encode(ProtocolVersion::V5, &mut wire).unwrap();
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    wire.extend_from_slice(&payload);

    // The whole packet is a little over 1 MiB: above the default limit.
    let limits = Limits {
        max_packet_size: 2 << 20,
        ..Limits::default()
    };
    let mut d = Decoder::for_version(ProtocolVersion::V5, limits);
    let mut buf = BytesMut::new();
    let (mut got, mut started, mut ended) = (Vec::with_capacity(LEN), false, false);
    for piece in wire.chunks(PIECE) {
        buf.extend_from_slice(piece);
        while let Some(frame) = d.decode(&mut buf).unwrap() {
            match frame {
                Frame::PublishStart(h) => {
                    assert_eq!(h, head);
                    started = true;
                }
                Frame::PayloadChunk(c) => {
                    assert!(c.len() <= PIECE);
                    got.extend_from_slice(&c);
                }
                Frame::PublishEnd => ended = true,
                Frame::Packet(p) => panic!("unexpected {p:?}"),
            }
        }
        // Everything given was handed on: nothing waits in the buffer.
        assert!(buf.is_empty());
    }
    assert!(started && ended);
    assert_eq!(got, payload);
}

#[test]
fn the_packet_limit_counts_the_payload() {
    // mosquitto's `max_packet_size 2097152`: a PUBLISH of exactly 2 MiB, whole, passes;
    // one byte more is refused from its fixed header, before its head is handed on.
    const MAX: usize = 2 << 20;
    let limits = Limits {
        max_packet_size: MAX,
        ..Limits::default()
    };
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for extra in [0, 1] {
            let wire = |payload: usize| {
                let mut w = BytesMut::new();
                PublishHead::new("big/x", QoS::AtLeastOnce, payload)
                    .encode(v, &mut w)
                    .unwrap();
                w
            };
            // The payload that makes the packet MAX bytes (the head's size depends on
            // the remaining length's, so find it).
            let payload = (MAX - 64..MAX).find(|p| wire(*p).len() + p == MAX).unwrap() + extra;
            let head = wire(payload);
            let mut d = Decoder::for_version(v, limits);
            let mut buf = head.clone();
            let got = d.decode(&mut buf);
            if extra == 0 {
                assert!(
                    matches!(got, Ok(Some(Frame::PublishStart(_)))),
                    "{v:?}: {got:?}"
                );
            } else {
                assert_eq!(
                    got,
                    Err(MqttError::PacketTooLarge {
                        size: MAX + 1,
                        max: MAX
                    }),
                    "{v:?}"
                );
                // Refused from the fixed header alone.
                let mut first = BytesMut::from(&head[..4]);
                let mut d = Decoder::for_version(v, limits);
                assert!(d.decode(&mut first).is_err(), "{v:?}");
            }
        }
    }
}
