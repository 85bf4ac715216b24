//! `decode-mqtt` and `encode-mqtt`: MQTT bytes ⇄ message events, for pipelines that work
//! on MQTT messages themselves (inspect, route, rewrite, answer) instead of using the
//! whole [`MqttProxy`](super::MqttProxy).
//!
//! Each packet becomes one message: `MessageStart` with an [`MqttHead`], then — for a
//! PUBLISH only — its payload as `Data` events as it arrives (never buffered whole), then
//! `MessageEnd`. `encode-mqtt` turns such messages back into bytes. A malformed packet
//! ends the stream with a `Protocol` (or `LimitExceeded`) error whose cause is the
//! [`MqttError`], so the connection closes and nothing else is affected.
//!
//! ```yaml
//! - decode-mqtt: { max_packet_size: 64KiB }   # server side: CONNECT first, its version after
//! - encode-mqtt: {}
//! ```

use std::sync::Arc;

use bytes::BytesMut;
use flowgate_mqtt::{Decoder, Frame, MqttError, Packet, ProtocolVersion, PublishHead};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Filter, Head, Side, StreamError, Tail, Transform,
};
use serde::{Deserialize, Serialize};

use flowgate_pipeline::Size;

/// The head of one MQTT message event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttHead {
    /// The protocol version of the connection (3.1.1 until a CONNECT says otherwise on a
    /// server-side decoder that has not seen one).
    pub version: ProtocolVersion,
    /// The packet.
    pub message: MqttMessage,
}

/// A packet: whole, or a PUBLISH head whose payload follows as `Data`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per message, moved once
pub enum MqttMessage {
    /// Any packet but PUBLISH.
    Packet(Packet),
    /// A PUBLISH; `payload_len` bytes of `Data` follow before `MessageEnd`.
    Publish(PublishHead),
}

/// Which end of a connection a decoder sits at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads what clients send: CONNECT first; the version follows CONNECT.
    #[default]
    Server,
    /// Reads what a broker sends to a 3.1.1 client.
    Client311,
    /// Reads what a broker sends to an MQTT 5 client.
    Client5,
}

/// Configuration of [`DecodeMqtt`] (`decode-mqtt:` in YAML).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeMqttConfig {
    /// Which side's bytes are decoded (default `server`).
    #[serde(default)]
    pub role: Role,
    /// The largest packet, whole: fixed header, variable header and payload, a PUBLISH's
    /// payload included (MQTT 5's Maximum Packet Size). A larger one ends the stream with a
    /// `LimitExceeded` error as soon as its fixed header is read, before any of it is
    /// passed on. At most 256 MiB. Default 1 MiB.
    #[serde(default = "d_packet")]
    pub max_packet_size: Size,
    /// A tighter bound for PUBLISH payloads; not larger than `max_packet_size`. Default:
    /// none beyond `max_packet_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_size: Option<Size>,
}

fn d_packet() -> Size {
    Size(1 << 20)
}

impl Default for DecodeMqttConfig {
    fn default() -> Self {
        DecodeMqttConfig {
            role: Role::Server,
            max_packet_size: d_packet(),
            max_payload_size: None,
        }
    }
}

impl FilterConfig for DecodeMqttConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        super::check_packet_limits(self.max_packet_size, self.max_payload_size)?;
        Ok(Arc::new(DecodeMqtt { config: *self }))
    }
}

/// Bytes in, MQTT message events out (see the crate documentation).
pub struct DecodeMqtt {
    config: DecodeMqttConfig,
}

impl DecodeMqtt {
    /// A decoder with `config`.
    pub fn new(config: DecodeMqttConfig) -> Self {
        DecodeMqtt { config }
    }
}

impl Filter for DecodeMqtt {
    fn describe(&self) -> Description {
        Description::filter("decode-mqtt").options(&self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let limits =
            super::packet_limits(self.config.max_packet_size, self.config.max_payload_size);
        let decoder = match self.config.role {
            Role::Server => Decoder::new(limits),
            Role::Client311 => Decoder::for_version(ProtocolVersion::V311, limits),
            Role::Client5 => Decoder::for_version(ProtocolVersion::V5, limits),
        };
        Some(Box::new(Decoding {
            decoder,
            buf: BytesMut::new(),
            done: false,
        }))
    }
}

struct Decoding {
    decoder: Decoder,
    buf: BytesMut,
    done: bool,
}

fn error_event(e: MqttError, side: Side) -> Event {
    let kind = match e {
        MqttError::PacketTooLarge { .. } | MqttError::PayloadTooLarge { .. } => {
            ErrorKind::LimitExceeded
        }
        _ => ErrorKind::Protocol,
    };
    Event::StreamEnd(Some(StreamError::new(kind, side).with_cause(e)))
}

impl Transform for Decoding {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        if self.done {
            return;
        }
        match ev {
            Event::Data(b) => {
                self.buf.extend_from_slice(&b);
                loop {
                    let frame = match self.decoder.decode(&mut self.buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            self.done = true;
                            out(error_event(e, Side::Downstream));
                            return;
                        }
                    };
                    let version = self.decoder.version().unwrap_or(ProtocolVersion::V311);
                    let head =
                        |message| Event::MessageStart(Head::new(MqttHead { version, message }));
                    match frame {
                        Frame::Packet(p) => {
                            out(head(MqttMessage::Packet(p)));
                            out(Event::MessageEnd(Tail::none()));
                        }
                        Frame::PublishStart(h) => out(head(MqttMessage::Publish(h))),
                        Frame::PayloadChunk(b) => out(Event::Data(b)),
                        Frame::PublishEnd => out(Event::MessageEnd(Tail::none())),
                    }
                }
            }
            Event::StreamEnd(e) => {
                self.done = true;
                out(Event::StreamEnd(e));
            }
            _ => {}
        }
    }
}

/// Configuration of [`EncodeMqtt`] (`encode-mqtt:` in YAML); it has no options.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeMqttConfig {}

impl FilterConfig for EncodeMqttConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(EncodeMqtt))
    }
}

/// MQTT message events in, bytes out: each head is written in its own version, PUBLISH
/// payload `Data` passes as it is. A message head that is not an [`MqttHead`] ends the
/// stream with an `Internal` error.
pub struct EncodeMqtt;

impl Filter for EncodeMqtt {
    fn describe(&self) -> Description {
        Description::filter("encode-mqtt")
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        Some(Box::new(Encoding { done: false }))
    }
}

struct Encoding {
    done: bool,
}

impl Transform for Encoding {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        if self.done {
            return;
        }
        match ev {
            Event::MessageStart(h) => {
                let Some(m) = h.get::<MqttHead>() else {
                    self.done = true;
                    out(Event::StreamEnd(Some(StreamError::new(
                        ErrorKind::Internal,
                        Side::Internal,
                    ))));
                    return;
                };
                let mut b = BytesMut::new();
                let r = match &m.message {
                    MqttMessage::Packet(p) => p.encode(m.version, &mut b),
                    MqttMessage::Publish(p) => p.encode(m.version, &mut b),
                };
                match r {
                    Ok(()) => out(Event::Data(b.freeze())),
                    Err(e) => {
                        self.done = true;
                        out(Event::StreamEnd(Some(
                            StreamError::new(ErrorKind::Internal, Side::Internal).with_cause(e),
                        )));
                    }
                }
            }
            Event::MessageEnd(_) => {}
            Event::StreamEnd(e) => {
                self.done = true;
                out(Event::StreamEnd(e));
            }
            data => out(data),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use flowgate_pipeline::{Pipeline, testing};

    const CONNECT: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c";
    const PUBLISH: &[u8] = b"\x30\x07\x00\x03a/bhi";

    #[test]
    fn decode_then_encode_gives_the_same_bytes_whatever_the_chunking() {
        let mut wire = CONNECT.to_vec();
        wire.extend_from_slice(PUBLISH);
        wire.extend_from_slice(&[0xC0, 0x00]); // PINGREQ
        let p = Pipeline::builder("rt")
            .filter(DecodeMqtt::new(DecodeMqttConfig::default()))
            .filter(EncodeMqtt)
            .build()
            .unwrap();
        for chunk in [1, 3, wire.len()] {
            let mut input: Vec<Event> = wire
                .chunks(chunk)
                .map(|c| Event::Data(bytes::Bytes::copy_from_slice(c)))
                .collect();
            input.push(Event::END);
            let out = testing::run_blocking(&p, input);
            assert_eq!(testing::data_of(&out), wire, "chunks of {chunk}");
        }
    }

    #[test]
    fn messages_carry_heads_and_streamed_payloads() {
        let d = DecodeMqtt::new(DecodeMqttConfig::default());
        let mut input = vec![Event::Data(CONNECT.into()), Event::Data(PUBLISH.into())];
        input.push(Event::END);
        let out = testing::run_blocking(&d, input);
        assert_eq!(
            testing::kinds_of(&out),
            [
                "MessageStart",
                "MessageEnd",
                "MessageStart",
                "Data",
                "MessageEnd",
                "StreamEnd"
            ]
        );
        let Event::MessageStart(h) = &out[2] else {
            panic!()
        };
        let MqttMessage::Publish(p) = &h.get::<MqttHead>().unwrap().message else {
            panic!()
        };
        assert_eq!(p.topic, "a/b");
        assert_eq!(testing::data_of(&out), b"hi");
    }

    #[test]
    fn malformed_input_ends_the_stream_with_the_cause() {
        let d = DecodeMqtt::new(DecodeMqttConfig {
            max_packet_size: Size(64),
            ..DecodeMqttConfig::default()
        });
        // A PUBLISH before CONNECT, then an oversized one on a fresh stream.
        let out = testing::run_blocking(&d, vec![Event::Data(PUBLISH.into()), Event::END]);
        let Some(Event::StreamEnd(Some(e))) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(e.kind(), ErrorKind::Protocol);
        let mut big = CONNECT.to_vec();
        big.extend_from_slice(&[0x82, 0xC8, 0x01]); // SUBSCRIBE of 200 bytes
        let out = testing::run_blocking(&d, vec![Event::Data(big.into()), Event::END]);
        let Some(Event::StreamEnd(Some(e))) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert!(e.cause().unwrap().to_string().contains("more than 64"));
    }

    #[test]
    fn the_packet_limit_counts_the_publish_payload() {
        let d = DecodeMqtt::new(DecodeMqttConfig {
            max_packet_size: Size(64),
            ..DecodeMqttConfig::default()
        });
        // A PUBLISH of 64 bytes whole passes; one of 65 ends the stream from its fixed
        // header: no message of it comes out, not even its head.
        let publish = |payload: usize| {
            let mut w = vec![0x30, (5 + payload) as u8, 0x00, 0x03];
            w.extend_from_slice(b"a/b");
            w.extend(std::iter::repeat_n(b'x', payload));
            w
        };
        let mut ok = CONNECT.to_vec();
        ok.extend_from_slice(&publish(64 - 7));
        let out = testing::run_blocking(&d, vec![Event::Data(ok.into()), Event::END]);
        assert_eq!(testing::data_of(&out).len(), 64 - 7);
        assert!(
            matches!(out.last(), Some(Event::StreamEnd(None))),
            "{out:?}"
        );
        let mut big = CONNECT.to_vec();
        big.extend_from_slice(&publish(64 - 7 + 1)[..4]);
        let out = testing::run_blocking(&d, vec![Event::Data(big.into())]);
        assert_eq!(
            testing::kinds_of(&out),
            ["MessageStart", "MessageEnd", "StreamEnd(error)"]
        );
        let Some(Event::StreamEnd(Some(e))) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert!(
            e.cause()
                .unwrap()
                .to_string()
                .contains("65 bytes, more than 64")
        );
    }

    #[test]
    fn the_payload_limit_may_only_be_tighter() {
        let build = |packet: u64, payload: Option<u64>| {
            Box::new(DecodeMqttConfig {
                max_packet_size: Size(packet),
                max_payload_size: payload.map(Size),
                ..DecodeMqttConfig::default()
            })
            .build(&BuildContext::default())
        };
        assert!(build(1 << 20, None).is_ok());
        assert!(build(1 << 20, Some(1 << 10)).is_ok());
        let e = build(1 << 20, Some(16 << 20)).err().unwrap();
        assert_eq!(e.field, "max_payload_size");
        // Unset, it is the packet limit.
        let l = crate::packet_limits(Size(2 << 20), None);
        assert_eq!(
            (l.max_packet_size, l.max_publish_payload),
            (2 << 20, 2 << 20)
        );
        let l = crate::packet_limits(Size(u64::MAX), None);
        assert_eq!(l.max_packet_size, flowgate_mqtt::MAX_PACKET_SIZE);
    }
}
