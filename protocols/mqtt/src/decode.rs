//! The decoder: bytes in, [`Frame`]s out.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::PacketType;
use crate::publish::{self, PublishHead, head_len};
use crate::wire::decode_varint;
use crate::{Limits, MqttError, Packet, ProtocolVersion, QoS};

/// One decoded step: a whole packet, or a piece of a streamed PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // made once per packet and moved once
pub enum Frame {
    /// A complete packet other than PUBLISH.
    Packet(Packet),
    /// The head of a PUBLISH; `payload_len` bytes of [`Frame::PayloadChunk`] follow.
    PublishStart(PublishHead),
    /// A piece of the PUBLISH payload (shares the read buffer; never copied).
    PayloadChunk(Bytes),
    /// The end of the PUBLISH payload.
    PublishEnd,
}

/// Where the decoder is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a fixed header.
    Header,
    /// Waiting for the whole body of a packet other than PUBLISH.
    Body { ty: PacketType, remaining: usize },
    /// Waiting for the head of a PUBLISH (its fixed header is consumed).
    PublishHead {
        flags: u8,
        header_len: usize,
        remaining: usize,
    },
    /// Inside a PUBLISH payload; bytes still to come.
    Payload { left: usize },
    /// After an error: nothing more is decoded.
    Failed(MqttError),
}

/// A sans-IO MQTT decoder (tokio-util style): [`Decoder::decode`] takes what it can from
/// the read buffer and returns `Ok(None)` when it needs more bytes.
///
/// A server's decoder ([`Decoder::new`]) expects CONNECT first and speaks the version that
/// CONNECT asks for; a client's ([`Decoder::for_version`]) speaks the version it sent.
#[derive(Clone, Debug)]
pub struct Decoder {
    limits: Limits,
    version: Option<ProtocolVersion>,
    state: State,
}

impl Decoder {
    /// A server-side decoder: the first packet must be CONNECT.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            version: None,
            state: State::Header,
        }
    }

    /// A decoder for a connection that speaks `version` (a client's, or a server's after
    /// CONNECT was handled elsewhere).
    pub fn for_version(version: ProtocolVersion, limits: Limits) -> Self {
        Decoder {
            version: Some(version),
            ..Decoder::new(limits)
        }
    }

    /// The protocol version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes the next frame from `buf`, consuming its bytes; `Ok(None)` when `buf` holds
    /// no complete frame yet. After an error every call returns that error again: close
    /// the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MqttError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let r = self.step(buf);
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MqttError> {
        loop {
            match self.state {
                State::Header => {
                    if !self.header(buf)? {
                        return Ok(None);
                    }
                }
                State::Body { ty, remaining } => {
                    if buf.len() < remaining {
                        return Ok(None);
                    }
                    let body = buf.split_to(remaining);
                    let version = self.version.unwrap_or(ProtocolVersion::V311);
                    let packet = Packet::decode(ty, &body, version, &self.limits)?;
                    if let Packet::Connect(c) = &packet {
                        self.version = Some(c.version);
                    }
                    self.state = State::Header;
                    return Ok(Some(Frame::Packet(packet)));
                }
                State::PublishHead {
                    flags,
                    header_len,
                    remaining,
                } => return self.publish_head(buf, flags, header_len, remaining),
                State::Payload { left: 0 } => {
                    self.state = State::Header;
                    return Ok(Some(Frame::PublishEnd));
                }
                State::Payload { left } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len());
                    self.state = State::Payload { left: left - n };
                    return Ok(Some(Frame::PayloadChunk(buf.split_to(n).freeze())));
                }
                State::Failed(ref e) => return Err(e.clone()),
            }
        }
    }

    /// Reads a fixed header; `false` when it is not all there yet.
    fn header(&mut self, buf: &mut BytesMut) -> Result<bool, MqttError> {
        let Some(&first) = buf.first() else {
            return Ok(false);
        };
        let ty = PacketType::from_byte(first).ok_or(MqttError::ReservedPacketType { value: 0 })?;
        if ty == PacketType::Auth && self.version == Some(ProtocolVersion::V311) {
            return Err(MqttError::ReservedPacketType { value: 15 });
        }
        let flags = first & 0x0F;
        if ty == PacketType::Publish {
            publish::flags(flags)?;
        } else if flags != ty.fixed_flags() {
            return Err(MqttError::ReservedFlags { packet: ty, flags });
        }
        if self.version.is_none() && ty != PacketType::Connect {
            return Err(MqttError::ExpectedConnect { got: ty });
        }
        let Some((remaining, n)) = decode_varint(&buf[1..])? else {
            return Ok(false);
        };
        let (remaining, header_len) = (remaining as usize, 1 + n);
        // The whole packet, PUBLISH payload included (MQTT 5 §3.1.2.11.4), is refused here,
        // from its fixed header, before any of it is handed on.
        let max = self.limits.max_packet_size;
        if header_len + remaining > max {
            return Err(MqttError::PacketTooLarge {
                size: header_len + remaining,
                max,
            });
        }
        buf.advance(header_len);
        self.state = if ty == PacketType::Publish {
            State::PublishHead {
                flags,
                header_len,
                remaining,
            }
        } else {
            State::Body { ty, remaining }
        };
        Ok(true)
    }

    fn publish_head(
        &mut self,
        buf: &mut BytesMut,
        flags: u8,
        header_len: usize,
        remaining: usize,
    ) -> Result<Option<Frame>, MqttError> {
        let v5 = self.version == Some(ProtocolVersion::V5);
        let qos = QoS::from_bits((flags >> 1) & 0x03)?;
        let max_head = self.limits.max_packet_size.saturating_sub(header_len);
        let Some(len) = head_len(buf, remaining, qos, v5, max_head)? else {
            return Ok(None);
        };
        let payload_len = remaining - len;
        if payload_len > self.limits.max_publish_payload {
            return Err(MqttError::PayloadTooLarge {
                size: payload_len,
                max: self.limits.max_publish_payload,
            });
        }
        if buf.len() < len {
            return Ok(None);
        }
        let head = buf.split_to(len);
        let head = PublishHead::decode(&head, flags, v5, payload_len, &self.limits)?;
        self.state = State::Payload { left: payload_len };
        Ok(Some(Frame::PublishStart(head)))
    }
}
