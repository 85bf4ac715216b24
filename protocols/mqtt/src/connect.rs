//! CONNECT (§3.1) and CONNACK (§3.2).
//!
//! ```text
//! CONNECT  | 0x10 | remaining length |
//!          | 00 04 'M' 'Q' 'T' 'T' | level 4/5 | flags | keep alive (2) |
//!          | [v5 properties] | client id | [v5 will properties, will topic, will payload]
//!          | [user name] | [password]
//! flags:   username(7) password(6) will retain(5) will QoS(4-3) will(2) clean(1) reserved(0)
//!
//! CONNACK  | 0x20 | remaining length | ack flags (session present) | reason code |
//!          | [v5 properties] |
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::PacketType;
use crate::properties::{Context, Properties};
use crate::wire::{Reader, put_binary, put_string};
use crate::{Limits, MqttError, ProtocolVersion, QoS, ReasonCode, reason, validate_topic_name};

/// A client's request to open a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The protocol level it asks for; the decoder speaks it from then on.
    pub version: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean_start: bool,
    /// Keep alive, seconds; 0 turns it off.
    pub keep_alive: u16,
    /// MQTT 5 properties (empty in 3.1.1).
    pub properties: Properties,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// The will message, published if the connection ends without DISCONNECT.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password (binary data).
    pub password: Option<Bytes>,
}

/// A will message carried by CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Where it is published (a topic name).
    pub topic: String,
    /// What is published.
    pub payload: Bytes,
    /// At which QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
    /// MQTT 5 will properties (empty in 3.1.1).
    pub properties: Properties,
}

/// The server's answer to CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumes a session it held.
    pub session_present: bool,
    /// Reason code (MQTT 5) or return code 0–5 (3.1.1).
    pub reason_code: ReasonCode,
    /// MQTT 5 properties.
    pub properties: Properties,
}

// === impl Connect ===

impl Connect {
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, MqttError> {
        let name = r.string("protocol name")?;
        let level = r.u8()?;
        let version = match (name.as_str(), level) {
            ("MQTT", 4) => ProtocolVersion::V311,
            ("MQTT", 5) => ProtocolVersion::V5,
            _ => return Err(MqttError::UnsupportedProtocol { name, level }),
        };
        let v5 = version == ProtocolVersion::V5;
        let flags = r.u8()?;
        let bad_flags = MqttError::InvalidConnectFlags { flags };
        let has_will = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let has_password = flags & 0x40 != 0;
        let has_username = flags & 0x80 != 0;
        if flags & 0x01 != 0
            || (!has_will && (will_qos != 0 || will_retain))
            || (!v5 && has_password && !has_username)
        {
            return Err(bad_flags);
        }
        let will_qos = QoS::from_bits(will_qos)?;
        let keep_alive = r.u16()?;
        let properties = if v5 {
            Properties::decode(r, Context::Packet(PacketType::Connect), limits)?
        } else {
            Properties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if has_will {
            let properties = if v5 {
                Properties::decode(r, Context::Will, limits)?
            } else {
                Properties::default()
            };
            let topic = r.string("will topic")?;
            validate_topic_name(&topic, limits.max_topic_len)
                .map_err(MqttError::InvalidTopicName)?;
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = has_username.then(|| r.string("user name")).transpose()?;
        let password = has_password.then(|| r.binary()).transpose()?;
        r.finish()?;
        Ok(Connect {
            version,
            clean_start: flags & 0x02 != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Writes the variable header and payload (the version is `self.version`).
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), MqttError> {
        let v5 = self.version == ProtocolVersion::V5;
        put_string(dst, "protocol name", "MQTT")?;
        dst.put_u8(self.version.level());
        let mut flags = u8::from(self.clean_start) << 1;
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
        }
        flags |= u8::from(self.password.is_some()) << 6 | u8::from(self.username.is_some()) << 7;
        dst.put_u8(flags);
        dst.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(dst)?;
        }
        put_string(dst, "client identifier", &self.client_id)?;
        if let Some(w) = &self.will {
            if v5 {
                w.properties.encode(dst)?;
            }
            put_string(dst, "will topic", &w.topic)?;
            put_binary(dst, "will payload", &w.payload)?;
        }
        if let Some(u) = &self.username {
            put_string(dst, "user name", u)?;
        }
        if let Some(p) = &self.password {
            put_binary(dst, "password", p)?;
        }
        Ok(())
    }
}

// === impl ConnAck ===

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        let flags = r.u8()?;
        let reason_code = reason::check(PacketType::ConnAck, v5, r.u8()?)?;
        if flags & 0xFE != 0 || (flags != 0 && reason_code != ReasonCode::SUCCESS) {
            return Err(MqttError::InvalidConnAckFlags { flags });
        }
        let properties = if v5 {
            Properties::decode(r, Context::Packet(PacketType::ConnAck), limits)?
        } else {
            Properties::default()
        };
        r.finish()?;
        Ok(ConnAck {
            session_present: flags == 1,
            reason_code,
            properties,
        })
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        dst.put_u8(u8::from(self.session_present));
        dst.put_u8(self.reason_code.0);
        if v5 {
            self.properties.encode(dst)?;
        }
        Ok(())
    }
}
