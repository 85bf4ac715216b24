//! The MQTT decoder on arbitrary bytes, as a server (version from CONNECT) and as 3.1.1 and
//! 5.0 clients, fed whole and split at input-chosen points: it must never panic, reach the
//! same verdict however the input is split, and every packet it decodes must encode again
//! and decode to the same packet.
#![no_main]

use bytes::BytesMut;
use flowgate_mqtt::{Decoder, Frame, Limits, MqttError, Packet, ProtocolVersion, PublishHead};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Item {
    Packet(Packet),
    Publish(PublishHead, Vec<u8>),
}

fn decoder(version: Option<ProtocolVersion>) -> Decoder {
    let limits = Limits {
        max_packet_size: 4096,
        max_publish_payload: 8192,
        ..Limits::default()
    };
    match version {
        Some(v) => Decoder::for_version(v, limits),
        None => Decoder::new(limits),
    }
}

/// Decodes `data` given in the pieces that `cuts` choose.
type Verdict = (Vec<Item>, Option<MqttError>);

fn run(version: Option<ProtocolVersion>, data: &[u8], cuts: &[u8]) -> Verdict {
    let mut d = decoder(version);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut open: Option<(PublishHead, Vec<u8>)> = None;
    let (mut pos, mut cut) = (0, 0);
    loop {
        match d.decode(&mut buf) {
            Ok(Some(Frame::Packet(p))) => items.push(Item::Packet(p)),
            Ok(Some(Frame::PublishStart(h))) => {
                assert!(open.is_none());
                open = Some((h, Vec::new()));
            }
            Ok(Some(Frame::PayloadChunk(c))) => {
                assert!(!c.is_empty());
                open.as_mut().expect("chunk inside a PUBLISH").1.extend_from_slice(&c);
            }
            Ok(Some(Frame::PublishEnd)) => {
                let (h, p) = open.take().expect("end of an open PUBLISH");
                assert_eq!(h.payload_len, p.len());
                items.push(Item::Publish(h, p));
            }
            Ok(None) => {
                if pos == data.len() {
                    return (items, None);
                }
                let n = cuts.get(cut).map_or(data.len() - pos, |&c| usize::from(c) + 1);
                cut += 1;
                let end = (pos + n).min(data.len());
                buf.extend_from_slice(&data[pos..end]);
                pos = end;
            }
            Err(e) => return (items, Some(e)),
        }
    }
}

fn roundtrip(item: &Item, version: ProtocolVersion) {
    let mut wire = BytesMut::new();
    match item {
        Item::Packet(p) => p.encode(version, &mut wire).expect("a decoded packet re-encodes"),
        Item::Publish(h, payload) => {
            h.encode(version, &mut wire).expect("a decoded head re-encodes");
            wire.extend_from_slice(payload);
        }
    }
    let bytes = wire.to_vec();
    let (again, err) = run(Some(version), &bytes, &[]);
    assert_eq!(err, None, "our own encoding decodes: {bytes:02x?}");
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0], item);
}

fuzz_target!(|input: &[u8]| {
    // First byte: how many cut bytes follow; then the cuts; then the data.
    let Some((&n, rest)) = input.split_first() else { return };
    let (cuts, data) = rest.split_at(usize::from(n % 32).min(rest.len()));
    for version in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        let whole = run(version, data, &[]);
        assert_eq!(run(version, data, cuts), whole, "split changed the verdict");
        let bytewise = vec![0u8; data.len()];
        assert_eq!(run(version, data, &bytewise), whole, "byte at a time changed the verdict");
        // Every CONNECT decoded switches the decoder to its version.
        let mut speak = version.unwrap_or(ProtocolVersion::V311);
        for item in &whole.0 {
            if let Item::Packet(Packet::Connect(c)) = item {
                speak = c.version;
            }
            roundtrip(item, speak);
        }
    }
});
