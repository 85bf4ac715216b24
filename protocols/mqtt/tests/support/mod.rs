//! Shared by the test files: decode a whole input fed in pieces of a given size, with the
//! payload pieces of each PUBLISH joined.
#![allow(dead_code)]

use bytes::BytesMut;
use flowgate_mqtt::{Decoder, Frame, Limits, MqttError, Packet, ProtocolVersion, PublishHead};

/// A decoded packet, PUBLISH payloads joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Packet(Packet),
    Publish(PublishHead, Vec<u8>),
}

/// Decodes `input` fed `step` bytes at a time (0: all at once) until the decoder wants more
/// or fails. `version` None makes a server-side decoder.
pub fn decode_all(
    version: Option<ProtocolVersion>,
    limits: Limits,
    input: &[u8],
    step: usize,
) -> (Vec<Item>, Option<MqttError>) {
    let mut d = match version {
        Some(v) => Decoder::for_version(v, limits),
        None => Decoder::new(limits),
    };
    let step = if step == 0 { input.len().max(1) } else { step };
    let mut items = Vec::new();
    let mut open: Option<(PublishHead, Vec<u8>)> = None;
    let mut buf = BytesMut::new();
    let mut chunks = input.chunks(step);
    loop {
        match d.decode(&mut buf) {
            Ok(Some(Frame::Packet(p))) => items.push(Item::Packet(p)),
            Ok(Some(Frame::PublishStart(h))) => open = Some((h, Vec::new())),
            Ok(Some(Frame::PayloadChunk(c))) => open.as_mut().unwrap().1.extend_from_slice(&c),
            Ok(Some(Frame::PublishEnd)) => {
                let (h, p) = open.take().unwrap();
                assert_eq!(h.payload_len, p.len());
                items.push(Item::Publish(h, p));
            }
            Ok(None) => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => return (items, None),
            },
            Err(e) => {
                // The decoder stays failed.
                assert_eq!(d.decode(&mut buf), Err(e.clone()));
                return (items, Some(e));
            }
        }
    }
}

/// Decodes `input` whole, 1 and 3 bytes at a time, checks the three agree, returns one.
pub fn decode_split(
    version: Option<ProtocolVersion>,
    limits: Limits,
    input: &[u8],
) -> (Vec<Item>, Option<MqttError>) {
    let whole = decode_all(version, limits, input, 0);
    for step in [1, 3] {
        assert_eq!(
            decode_all(version, limits, input, step),
            whole,
            "fed {step} at a time"
        );
    }
    whole
}
