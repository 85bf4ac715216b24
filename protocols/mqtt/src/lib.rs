//! # flowgate-mqtt
//!
//! MQTT 3.1.1 and 5.0 for Flowgate, with no I/O: a strict, bounded, sans-IO codec for
//! every packet type and every MQTT 5 property.
//!
//! - [`Decoder::decode`] turns bytes into [`Frame`]s: a whole [`Packet`] for everything but
//!   PUBLISH; a PUBLISH arrives as [`Frame::PublishStart`] (its [`PublishHead`]), then
//!   [`Frame::PayloadChunk`]s as the bytes come in, then [`Frame::PublishEnd`], so a large
//!   payload is never buffered whole.
//! - [`Packet::encode`] and [`PublishHead::encode`] (followed by the raw payload) write.
//! - Everything read is bounded by [`Limits`] and checked: remaining lengths (at most four
//!   bytes, minimally encoded), reserved flag bits, UTF-8 strings, topic names and filters,
//!   non-zero packet identifiers, which properties each packet may carry and which may
//!   repeat, reason codes. After an error the decoder stops; [`MqttError::reason_code`]
//!   gives the MQTT 5 reason code to close with.
//!
//! ```
//! use bytes::BytesMut;
//! use flowgate_mqtt::{Decoder, Frame, Limits, Packet, ProtocolVersion, PublishHead, QoS};
//!
//! // A server: CONNECT (3.1.1, client id "c") then a PUBLISH of "hi" to a/b.
//! let mut d = Decoder::new(Limits::default());
//! let mut buf = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"[..]);
//! buf.extend_from_slice(b"\x30\x07\x00\x03a/bhi");
//!
//! let Some(Frame::Packet(Packet::Connect(c))) = d.decode(&mut buf)? else { panic!() };
//! assert_eq!((c.client_id.as_str(), c.keep_alive), ("c", 60));
//! assert_eq!(d.version(), Some(ProtocolVersion::V311));
//!
//! let Some(Frame::PublishStart(head)) = d.decode(&mut buf)? else { panic!() };
//! assert_eq!((head.topic.as_str(), head.qos, head.payload_len), ("a/b", QoS::AtMostOnce, 2));
//! assert_eq!(d.decode(&mut buf)?, Some(Frame::PayloadChunk("hi".into())));
//! assert_eq!(d.decode(&mut buf)?, Some(Frame::PublishEnd));
//! assert_eq!(d.decode(&mut buf)?, None);
//!
//! // And back.
//! let mut out = BytesMut::new();
//! head.encode(ProtocolVersion::V311, &mut out)?;
//! out.extend_from_slice(b"hi");
//! assert_eq!(&out[..], b"\x30\x07\x00\x03a/bhi");
//! # Ok::<(), flowgate_mqtt::MqttError>(())
//! ```
//!
//! Malformed input gives a typed error and a reason code:
//!
//! ```
//! use bytes::BytesMut;
//! use flowgate_mqtt::{Decoder, Limits, MqttError, ProtocolVersion, ReasonCode, TopicError};
//!
//! let mut d = Decoder::for_version(ProtocolVersion::V5, Limits::default());
//! let mut buf = BytesMut::from(&b"\x30\x06\x00\x03a/+\x00"[..]); // wildcard in a topic name
//! let err = d.decode(&mut buf).unwrap_err();
//! assert_eq!(err, MqttError::InvalidTopicName(TopicError::Wildcard));
//! assert_eq!(err.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
//! ```

mod connect;
mod control;
mod decode;
mod error;
mod packet;
mod properties;
mod publish;
mod reason;
mod subscribe;
mod topic;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use decode::{Decoder, Frame};
pub use error::{MqttError, TopicError};
pub use packet::{Packet, PacketType};
pub use properties::Properties;
pub use publish::{PubResponse, PublishHead};
pub use reason::ReasonCode;
pub use subscribe::{SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe};
pub use topic::{validate_topic_filter, validate_topic_name};

/// The protocol level a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// 1: acknowledged by PUBACK.
    AtLeastOnce = 1,
    /// 2: PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of two bits; 3 is an error.
    pub fn from_bits(bits: u8) -> Result<QoS, MqttError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            value => Err(MqttError::InvalidQos { value }),
        }
    }
}

/// The largest packet the wire can carry: a type byte, four bytes of remaining length
/// and the 268 435 455 bytes they can announce.
pub const MAX_PACKET_SIZE: usize = 1 + 4 + 268_435_455;

/// Bounds on what a decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest packet, whole: fixed header, variable header and payload, a PUBLISH's
    /// payload included — MQTT 5's Maximum Packet Size (§3.1.2.11.4). A packet over it is
    /// refused from its fixed header, before any of it is decoded. Every packet but
    /// PUBLISH is buffered whole, so this also bounds the memory one packet takes. Default
    /// 1 MiB.
    pub max_packet_size: usize,
    /// The largest PUBLISH payload (it is streamed, not buffered): a tighter bound than
    /// `max_packet_size` for PUBLISH, or none when it is larger. Default 256 MiB.
    pub max_publish_payload: usize,
    /// The longest topic name or filter, in bytes. Default 65 535 (the wire's limit).
    pub max_topic_len: usize,
    /// The most MQTT 5 properties in one property list. Default 128.
    pub max_properties: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1 << 20,
            max_publish_payload: 256 << 20,
            max_topic_len: 65_535,
            max_properties: 128,
        }
    }
}
