//! PUBLISH (§3.3), streamed, and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP
//! (§3.4–3.7).
//!
//! ```text
//! PUBLISH  | 0x3_ dup(3) QoS(2-1) retain(0) | remaining length |
//!          | topic name | [packet id, QoS > 0] | [v5 properties] | payload ...
//!
//! PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70
//!          | remaining length | packet id | [v5 reason code] | [v5 properties] |
//! ```
//!
//! The head (everything before the payload) is decoded whole; the payload is handed on
//! as it arrives. In MQTT 5 an acknowledgement may stop after the packet identifier
//! (reason Success, no properties) or after the reason code; the encoder writes the
//! shortest form.

use bytes::{BufMut, BytesMut};

use crate::packet::PacketType;
use crate::properties::{Context, Properties};
use crate::wire::{Reader, decode_varint, put_prefixed_plus, put_string};
use crate::{Limits, MqttError, ProtocolVersion, QoS, ReasonCode, reason, validate_topic_name};

/// Everything of a PUBLISH but its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishHead {
    /// The topic name (empty in MQTT 5 when a Topic Alias stands for it).
    pub topic: String,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag: a redelivery (QoS > 0 only).
    pub dup: bool,
    /// The packet identifier, present exactly when QoS > 0.
    pub packet_id: Option<u16>,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// How many payload bytes follow the head.
    pub payload_len: usize,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (which one is the [`Packet`](crate::Packet) variant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResponse {
    /// The PUBLISH (or PUBREL) acknowledged.
    pub packet_id: u16,
    /// Reason code (always Success in 3.1.1).
    pub reason_code: ReasonCode,
    /// MQTT 5 properties.
    pub properties: Properties,
}

impl PubResponse {
    /// A successful acknowledgement without properties.
    pub fn new(packet_id: u16) -> Self {
        PubResponse {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        let packet_id = r.packet_id()?;
        let mut ack = PubResponse::new(packet_id);
        if v5 && !r.is_empty() {
            ack.reason_code = reason::check(r.packet, true, r.u8()?)?;
            if !r.is_empty() {
                ack.properties = Properties::decode(r, Context::Packet(r.packet), limits)?;
            }
        }
        r.finish()?;
        Ok(ack)
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        dst.put_u16(self.packet_id);
        if v5 && (self.reason_code != ReasonCode::SUCCESS || !self.properties.is_empty()) {
            dst.put_u8(self.reason_code.0);
            if !self.properties.is_empty() {
                self.properties.encode(dst)?;
            }
        }
        Ok(())
    }
}

/// QoS, DUP and retain from the flags of a PUBLISH fixed header.
pub(crate) fn flags(flags: u8) -> Result<(QoS, bool, bool), MqttError> {
    let qos = QoS::from_bits((flags >> 1) & 0x03)?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(MqttError::DupAtQos0);
    }
    Ok((qos, dup, flags & 0x01 != 0))
}

/// The length of a PUBLISH head whose first bytes are `buf`, for a packet of `remaining`
/// bytes: `Ok(None)` while the bytes seen do not tell yet. Fails when the head would run
/// past the packet, or (`max` bytes) past the limit.
pub(crate) fn head_len(
    buf: &[u8],
    remaining: usize,
    qos: QoS,
    v5: bool,
    max: usize,
) -> Result<Option<usize>, MqttError> {
    let truncated = MqttError::Truncated {
        packet: PacketType::Publish,
    };
    let within = |pos: usize| -> Result<usize, MqttError> {
        if pos > remaining {
            Err(truncated.clone())
        } else if pos > max {
            Err(MqttError::PacketTooLarge { size: pos, max })
        } else {
            Ok(pos)
        }
    };
    within(2)?;
    let [a, b, ..] = *buf else { return Ok(None) };
    let mut pos = within(2 + usize::from(u16::from_be_bytes([a, b])))?;
    if qos != QoS::AtMostOnce {
        pos = within(pos + 2)?;
    }
    if v5 {
        let avail = buf.get(pos..buf.len().min(remaining)).unwrap_or(&[]);
        match decode_varint(avail)? {
            Some((len, n)) => pos = within(pos + n + len as usize)?,
            None if buf.len() >= remaining => return Err(truncated),
            None => return Ok(None),
        }
    }
    Ok(Some(pos))
}

// === impl PublishHead ===

impl PublishHead {
    /// Decodes the head from exactly its bytes (see [`head_len`]).
    pub(crate) fn decode(
        head: &[u8],
        flag_bits: u8,
        v5: bool,
        payload_len: usize,
        limits: &Limits,
    ) -> Result<Self, MqttError> {
        let (qos, dup, retain) = flags(flag_bits)?;
        let mut r = Reader::new(head, PacketType::Publish);
        let topic = r.string("topic name")?;
        let packet_id = (qos != QoS::AtMostOnce)
            .then(|| r.packet_id())
            .transpose()?;
        let properties = if v5 {
            Properties::decode(&mut r, Context::Packet(PacketType::Publish), limits)?
        } else {
            Properties::default()
        };
        r.finish()?;
        if topic.is_empty() && v5 {
            if properties.topic_alias.is_none() {
                return Err(MqttError::EmptyTopicWithoutAlias);
            }
        } else {
            validate_topic_name(&topic, limits.max_topic_len)
                .map_err(MqttError::InvalidTopicName)?;
        }
        Ok(PublishHead {
            topic,
            qos,
            retain,
            dup,
            packet_id,
            properties,
            payload_len,
        })
    }

    /// Writes the fixed header and the head of this PUBLISH; the caller appends exactly
    /// `payload_len` payload bytes after it (at once or piece by piece).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use flowgate_mqtt::{ProtocolVersion, PublishHead, QoS};
    ///
    /// let head = PublishHead::new("a/b", QoS::AtMostOnce, 2);
    /// let mut buf = BytesMut::new();
    /// head.encode(ProtocolVersion::V311, &mut buf).unwrap();
    /// buf.extend_from_slice(b"hi");
    /// assert_eq!(&buf[..], b"\x30\x07\x00\x03a/bhi");
    /// ```
    pub fn encode(&self, version: ProtocolVersion, dst: &mut BytesMut) -> Result<(), MqttError> {
        let v5 = version == ProtocolVersion::V5;
        let qos0 = self.qos == QoS::AtMostOnce;
        let first =
            0x30 | u8::from(self.dup && !qos0) << 3 | (self.qos as u8) << 1 | u8::from(self.retain);
        dst.put_u8(first);
        let start = dst.len() - 1;
        let r = put_prefixed_plus(dst, self.payload_len, |dst| {
            put_string(dst, "topic name", &self.topic)?;
            if !qos0 {
                match self.packet_id {
                    Some(id) if id != 0 => dst.put_u16(id),
                    _ => {
                        return Err(MqttError::PacketIdZero {
                            packet: PacketType::Publish,
                        });
                    }
                }
            }
            if v5 {
                self.properties.encode(dst)?;
            }
            Ok(())
        });
        if r.is_err() {
            dst.truncate(start);
        }
        r
    }

    /// A head without properties (packet identifier 1 when `qos` needs one).
    pub fn new(topic: impl Into<String>, qos: QoS, payload_len: usize) -> Self {
        PublishHead {
            topic: topic.into(),
            qos,
            retain: false,
            dup: false,
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: Properties::default(),
            payload_len,
        }
    }
}
