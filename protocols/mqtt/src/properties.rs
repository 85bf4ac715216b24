//! MQTT 5 properties (§2.2.2): one typed struct for every property, read with the rules of
//! the packet that carries it: which identifiers it may hold, which may repeat (only User
//! Property, and Subscription Identifier in PUBLISH), and the range of each value.
//!
//! Properties are written in identifier order, user properties last in the order given.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::PacketType;
use crate::wire::{Reader, put_binary, put_prefixed, put_string, put_varint};
use crate::{Limits, MqttError, QoS, validate_topic_name};

/// The properties of one packet (or of a will). Every field is `None` / empty when absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator: `true` for UTF-8 payload (PUBLISH, will).
    pub payload_is_utf8: Option<bool>,
    /// 0x02 Message Expiry Interval, seconds (PUBLISH, will).
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type (PUBLISH, will).
    pub content_type: Option<String>,
    /// 0x08 Response Topic, a topic name (PUBLISH, will).
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s), 1..=268 435 455 (several in PUBLISH, one in SUBSCRIBE).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier (CONNACK).
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive, seconds (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method (CONNECT, CONNACK, AUTH).
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data (CONNECT, CONNACK, AUTH).
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (CONNECT).
    pub request_problem_information: Option<bool>,
    /// 0x18 Will Delay Interval, seconds (will).
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information (CONNECT).
    pub request_response_information: Option<bool>,
    /// 0x1A Response Information (CONNACK).
    pub response_information: Option<String>,
    /// 0x1C Server Reference (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F Reason String (acknowledgements, DISCONNECT, AUTH).
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum, non-zero (CONNECT, CONNACK).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias, non-zero (PUBLISH).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS, 0 or 1 (CONNACK).
    pub maximum_qos: Option<QoS>,
    /// 0x25 Retain Available (CONNACK).
    pub retain_available: Option<bool>,
    /// 0x26 User Properties, in order (every packet).
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size, non-zero (CONNECT, CONNACK).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (CONNACK).
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available (CONNACK).
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A Shared Subscription Available (CONNACK).
    pub shared_subscription_available: Option<bool>,
}

/// Where a property list sits: a packet, or the will inside CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    Packet(PacketType),
    Will,
}

impl Context {
    fn bit(self) -> u16 {
        use PacketType as T;
        match self {
            Context::Will => W,
            Context::Packet(T::Connect) => CONNECT,
            Context::Packet(T::ConnAck) => CONNACK,
            Context::Packet(T::Publish) => PUBLISH,
            Context::Packet(T::PubAck | T::PubRec | T::PubRel | T::PubComp) => ACKS,
            Context::Packet(T::Subscribe) => SUBSCRIBE,
            Context::Packet(T::SubAck | T::UnsubAck) => ACKS,
            Context::Packet(T::Unsubscribe) => UNSUBSCRIBE,
            Context::Packet(T::Disconnect) => DISCONNECT,
            Context::Packet(T::Auth) => AUTH,
            Context::Packet(T::PingReq | T::PingResp) => 0,
        }
    }

    fn packet(self) -> PacketType {
        match self {
            Context::Packet(p) => p,
            Context::Will => PacketType::Connect,
        }
    }
}

const W: u16 = 1;
const CONNECT: u16 = 1 << 1;
const CONNACK: u16 = 1 << 2;
const PUBLISH: u16 = 1 << 3;
const ACKS: u16 = 1 << 4;
const SUBSCRIBE: u16 = 1 << 5;
const UNSUBSCRIBE: u16 = 1 << 6;
const DISCONNECT: u16 = 1 << 7;
const AUTH: u16 = 1 << 8;

/// The packets (bits above) that may carry property `id`; `None` for an unknown identifier.
fn allowed_in(id: u32) -> Option<u16> {
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => PUBLISH | W,
        0x0B => PUBLISH | SUBSCRIBE,
        0x11 => CONNECT | CONNACK | DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CONNACK,
        0x15 | 0x16 => CONNECT | CONNACK | AUTH,
        0x17 | 0x19 => CONNECT,
        0x18 => W,
        0x1C => CONNACK | DISCONNECT,
        0x1F => CONNACK | ACKS | DISCONNECT | AUTH,
        0x21 | 0x22 | 0x27 => CONNECT | CONNACK,
        0x23 => PUBLISH,
        0x26 => u16::MAX,
        _ => return None,
    })
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the properties after it.
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        ctx: Context,
        limits: &Limits,
    ) -> Result<Self, MqttError> {
        let len = r.varint()? as usize;
        let mut r = Reader::new(r.take(len)?, r.packet);
        let mut p = Properties::default();
        let mut seen = 0u64;
        let mut count = 0usize;
        while !r.is_empty() {
            count += 1;
            if count > limits.max_properties {
                return Err(MqttError::TooManyProperties {
                    max: limits.max_properties,
                });
            }
            let raw = r.varint()?;
            let mask = allowed_in(raw).ok_or(MqttError::UnknownProperty { id: raw })?;
            let id = raw as u8; // every known identifier is below 0x80
            if mask & ctx.bit() == 0 {
                return Err(MqttError::PropertyNotAllowed {
                    id,
                    packet: ctx.packet(),
                });
            }
            let repeatable =
                id == 0x26 || (id == 0x0B && ctx == Context::Packet(PacketType::Publish));
            if !repeatable {
                if seen & (1 << id) != 0 {
                    return Err(MqttError::DuplicateProperty { id });
                }
                seen |= 1 << id;
            }
            p.read_value(&mut r, id, limits)?;
        }
        Ok(p)
    }

    fn read_value(&mut self, r: &mut Reader<'_>, id: u8, limits: &Limits) -> Result<(), MqttError> {
        let bad = MqttError::InvalidPropertyValue { id };
        let flag = |r: &mut Reader<'_>| match r.u8()? {
            0 => Ok(Some(false)),
            1 => Ok(Some(true)),
            _ => Err(MqttError::InvalidPropertyValue { id }),
        };
        let non_zero = |v: u16| {
            if v == 0 {
                Err(MqttError::InvalidPropertyValue { id })
            } else {
                Ok(Some(v))
            }
        };
        match id {
            0x01 => self.payload_is_utf8 = flag(r)?,
            0x02 => self.message_expiry_interval = Some(r.u32()?),
            0x03 => self.content_type = Some(r.string("content type")?),
            0x08 => {
                let t = r.string("response topic")?;
                validate_topic_name(&t, limits.max_topic_len)
                    .map_err(MqttError::InvalidTopicName)?;
                self.response_topic = Some(t);
            }
            0x09 => self.correlation_data = Some(r.binary()?),
            0x0B => match r.varint()? {
                0 => return Err(bad),
                v => self.subscription_identifiers.push(v),
            },
            0x11 => self.session_expiry_interval = Some(r.u32()?),
            0x12 => self.assigned_client_identifier = Some(r.string("assigned client identifier")?),
            0x13 => self.server_keep_alive = Some(r.u16()?),
            0x15 => self.authentication_method = Some(r.string("authentication method")?),
            0x16 => self.authentication_data = Some(r.binary()?),
            0x17 => self.request_problem_information = flag(r)?,
            0x18 => self.will_delay_interval = Some(r.u32()?),
            0x19 => self.request_response_information = flag(r)?,
            0x1A => self.response_information = Some(r.string("response information")?),
            0x1C => self.server_reference = Some(r.string("server reference")?),
            0x1F => self.reason_string = Some(r.string("reason string")?),
            0x21 => self.receive_maximum = non_zero(r.u16()?)?,
            0x22 => self.topic_alias_maximum = Some(r.u16()?),
            0x23 => self.topic_alias = non_zero(r.u16()?)?,
            0x24 => {
                self.maximum_qos = match r.u8()? {
                    0 => Some(QoS::AtMostOnce),
                    1 => Some(QoS::AtLeastOnce),
                    _ => return Err(bad),
                }
            }
            0x25 => self.retain_available = flag(r)?,
            0x26 => {
                let k = r.string("user property name")?;
                let v = r.string("user property value")?;
                self.user_properties.push((k, v));
            }
            0x27 => match r.u32()? {
                0 => return Err(bad),
                v => self.maximum_packet_size = Some(v),
            },
            0x28 => self.wildcard_subscription_available = flag(r)?,
            0x29 => self.subscription_identifiers_available = flag(r)?,
            0x2A => self.shared_subscription_available = flag(r)?,
            _ => return Err(MqttError::UnknownProperty { id: id.into() }),
        }
        Ok(())
    }

    /// Writes the property length and the properties.
    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), MqttError> {
        put_prefixed(dst, |dst| self.encode_values(dst))
    }

    fn encode_values(&self, dst: &mut BytesMut) -> Result<(), MqttError> {
        fn flag(dst: &mut BytesMut, id: u8, v: Option<bool>) {
            if let Some(v) = v {
                dst.put_u8(id);
                dst.put_u8(u8::from(v));
            }
        }
        fn u16p(dst: &mut BytesMut, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                dst.put_u8(id);
                dst.put_u16(v);
            }
        }
        fn u32p(dst: &mut BytesMut, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                dst.put_u8(id);
                dst.put_u32(v);
            }
        }
        fn string(
            dst: &mut BytesMut,
            id: u8,
            field: &'static str,
            v: &Option<String>,
        ) -> Result<(), MqttError> {
            if let Some(v) = v {
                dst.put_u8(id);
                put_string(dst, field, v)?;
            }
            Ok(())
        }
        fn binary(
            dst: &mut BytesMut,
            id: u8,
            field: &'static str,
            v: &Option<Bytes>,
        ) -> Result<(), MqttError> {
            if let Some(v) = v {
                dst.put_u8(id);
                put_binary(dst, field, v)?;
            }
            Ok(())
        }
        flag(dst, 0x01, self.payload_is_utf8);
        u32p(dst, 0x02, self.message_expiry_interval);
        string(dst, 0x03, "content type", &self.content_type)?;
        string(dst, 0x08, "response topic", &self.response_topic)?;
        binary(dst, 0x09, "correlation data", &self.correlation_data)?;
        for &id in &self.subscription_identifiers {
            dst.put_u8(0x0B);
            put_varint(dst, id.min(crate::wire::VARINT_MAX) as usize);
        }
        u32p(dst, 0x11, self.session_expiry_interval);
        string(
            dst,
            0x12,
            "assigned client identifier",
            &self.assigned_client_identifier,
        )?;
        u16p(dst, 0x13, self.server_keep_alive);
        string(
            dst,
            0x15,
            "authentication method",
            &self.authentication_method,
        )?;
        binary(dst, 0x16, "authentication data", &self.authentication_data)?;
        flag(dst, 0x17, self.request_problem_information);
        u32p(dst, 0x18, self.will_delay_interval);
        flag(dst, 0x19, self.request_response_information);
        string(
            dst,
            0x1A,
            "response information",
            &self.response_information,
        )?;
        string(dst, 0x1C, "server reference", &self.server_reference)?;
        string(dst, 0x1F, "reason string", &self.reason_string)?;
        u16p(dst, 0x21, self.receive_maximum);
        u16p(dst, 0x22, self.topic_alias_maximum);
        u16p(dst, 0x23, self.topic_alias);
        if let Some(q) = self.maximum_qos {
            dst.put_u8(0x24);
            dst.put_u8(q as u8);
        }
        flag(dst, 0x25, self.retain_available);
        u32p(dst, 0x27, self.maximum_packet_size);
        flag(dst, 0x28, self.wildcard_subscription_available);
        flag(dst, 0x29, self.subscription_identifiers_available);
        flag(dst, 0x2A, self.shared_subscription_available);
        for (k, v) in &self.user_properties {
            dst.put_u8(0x26);
            put_string(dst, "user property name", k)?;
            put_string(dst, "user property value", v)?;
        }
        Ok(())
    }
}
