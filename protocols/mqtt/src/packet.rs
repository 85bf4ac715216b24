//! The packet types (§2.1.2), the [`Packet`] enum of everything but PUBLISH, and the
//! fixed header around each.
//!
//! ```text
//! | type (7-4) | flags (3-0) | remaining length: 1-4 bytes, 7 bits each, LSB first |
//! ```

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::wire::{Reader, put_prefixed};
use crate::{
    Auth, ConnAck, Connect, Disconnect, Limits, MqttError, ProtocolVersion, PubResponse, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};

/// The fifteen MQTT control packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the spec's
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type of a fixed header's first byte; `None` for the reserved type 0.
    pub fn from_byte(first: u8) -> Option<Self> {
        use PacketType as T;
        Some(match first >> 4 {
            1 => T::Connect,
            2 => T::ConnAck,
            3 => T::Publish,
            4 => T::PubAck,
            5 => T::PubRec,
            6 => T::PubRel,
            7 => T::PubComp,
            8 => T::Subscribe,
            9 => T::SubAck,
            10 => T::Unsubscribe,
            11 => T::UnsubAck,
            12 => T::PingReq,
            13 => T::PingResp,
            14 => T::Disconnect,
            15 => T::Auth,
            _ => return None,
        })
    }

    /// The flag nibble this type must carry (PUBLISH excepted: its flags are variable).
    pub fn fixed_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PacketType as T;
        f.write_str(match self {
            T::Connect => "CONNECT",
            T::ConnAck => "CONNACK",
            T::Publish => "PUBLISH",
            T::PubAck => "PUBACK",
            T::PubRec => "PUBREC",
            T::PubRel => "PUBREL",
            T::PubComp => "PUBCOMP",
            T::Subscribe => "SUBSCRIBE",
            T::SubAck => "SUBACK",
            T::Unsubscribe => "UNSUBSCRIBE",
            T::UnsubAck => "UNSUBACK",
            T::PingReq => "PINGREQ",
            T::PingResp => "PINGRESP",
            T::Disconnect => "DISCONNECT",
            T::Auth => "AUTH",
        })
    }
}

/// A complete MQTT packet other than PUBLISH, which travels as
/// [`PublishHead`](crate::PublishHead) + payload (see [`Frame`](crate::Frame)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is its packet
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

impl Packet {
    /// This packet's type.
    pub fn packet_type(&self) -> PacketType {
        use PacketType as T;
        match self {
            Packet::Connect(_) => T::Connect,
            Packet::ConnAck(_) => T::ConnAck,
            Packet::PubAck(_) => T::PubAck,
            Packet::PubRec(_) => T::PubRec,
            Packet::PubRel(_) => T::PubRel,
            Packet::PubComp(_) => T::PubComp,
            Packet::Subscribe(_) => T::Subscribe,
            Packet::SubAck(_) => T::SubAck,
            Packet::Unsubscribe(_) => T::Unsubscribe,
            Packet::UnsubAck(_) => T::UnsubAck,
            Packet::PingReq => T::PingReq,
            Packet::PingResp => T::PingResp,
            Packet::Disconnect(_) => T::Disconnect,
            Packet::Auth(_) => T::Auth,
        }
    }

    /// Appends this packet to `dst` as `version` speaks it (CONNECT always as its own
    /// `version`). MQTT 5 fields are left out in 3.1.1. On error `dst` is unchanged.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use flowgate_mqtt::{Packet, ProtocolVersion, PubResponse};
    ///
    /// let mut buf = BytesMut::new();
    /// Packet::PubAck(PubResponse::new(10)).encode(ProtocolVersion::V5, &mut buf).unwrap();
    /// assert_eq!(&buf[..], [0x40, 0x02, 0x00, 0x0A]);
    /// ```
    pub fn encode(&self, version: ProtocolVersion, dst: &mut BytesMut) -> Result<(), MqttError> {
        let v5 = version == ProtocolVersion::V5;
        let ty = self.packet_type();
        if ty == PacketType::Auth && !v5 {
            return Err(MqttError::ReservedPacketType { value: 15 });
        }
        let start = dst.len();
        dst.put_u8((ty as u8) << 4 | ty.fixed_flags());
        let r = put_prefixed(dst, |dst| match self {
            Packet::Connect(c) => c.encode_body(dst),
            Packet::ConnAck(c) => c.encode_body(v5, dst),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                a.encode_body(v5, dst)
            }
            Packet::Subscribe(s) => s.encode_body(v5, dst),
            Packet::SubAck(s) => s.encode_body(v5, dst),
            Packet::Unsubscribe(u) => u.encode_body(v5, dst),
            Packet::UnsubAck(u) => u.encode_body(v5, dst),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(d) => d.encode_body(v5, dst),
            Packet::Auth(a) => a.encode_body(dst),
        });
        if r.is_err() {
            dst.truncate(start);
        }
        r
    }

    /// Decodes the complete body of a packet of type `ty` (never PUBLISH).
    pub(crate) fn decode(
        ty: PacketType,
        body: &[u8],
        version: ProtocolVersion,
        limits: &Limits,
    ) -> Result<Packet, MqttError> {
        let v5 = version == ProtocolVersion::V5;
        let r = &mut Reader::new(body, ty);
        let ack = |r: &mut Reader<'_>| PubResponse::decode(r, v5, limits);
        Ok(match ty {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode(r, limits)?)),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, v5, limits)?),
            PacketType::PubAck => Packet::PubAck(ack(r)?),
            PacketType::PubRec => Packet::PubRec(ack(r)?),
            PacketType::PubRel => Packet::PubRel(ack(r)?),
            PacketType::PubComp => Packet::PubComp(ack(r)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, v5, limits)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(r, v5, limits)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, v5, limits)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, v5, limits)?),
            PacketType::PingReq => {
                r.finish()?;
                Packet::PingReq
            }
            PacketType::PingResp => {
                r.finish()?;
                Packet::PingResp
            }
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, v5, limits)?),
            PacketType::Auth => Packet::Auth(Auth::decode(r, limits)?),
            PacketType::Publish => return Err(MqttError::ReservedPacketType { value: 3 }),
        })
    }
}
