//! A 1 MiB PUBLISH payload arriving in 4 KiB pieces is handed on piece by piece: the
//! decoder never holds more than the piece it was given.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::BytesMut;
use flowgate_mqtt::{Decoder, Frame, Limits, ProtocolVersion, PublishHead, QoS};

#[test]
fn one_mib_payload_streams_in_4_kib_pieces() {
    const LEN: usize = 1 << 20;
    const PIECE: usize = 4096;
    let head = PublishHead::new("big/file", QoS::AtLeastOnce, LEN);
    let mut wire = BytesMut::new();
    head.encode(ProtocolVersion::V5, &mut wire).unwrap();
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    wire.extend_from_slice(&payload);

    let mut d = Decoder::for_version(ProtocolVersion::V5, Limits::default());
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
