//! What can be wrong with a packet, and the MQTT 5 reason code each failure maps to.

use crate::packet::PacketType;
use crate::reason::ReasonCode;

/// Why a topic name or topic filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Zero length (allowed for a topic name only in MQTT 5 with a Topic Alias).
    #[error("empty")]
    Empty,
    /// Longer than [`Limits::max_topic_len`](crate::Limits::max_topic_len).
    #[error("{len} bytes, more than {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `+` or `#` in a topic name.
    #[error("wildcard in a topic name")]
    Wildcard,
    /// `#` not alone in the last level, or `+` not alone in its level.
    #[error("misplaced wildcard")]
    MisplacedWildcard,
    /// A `$share/` filter without a share name, with a wildcard in it, or without a filter.
    #[error("malformed shared subscription")]
    BadShare,
}

/// A decoding or encoding failure. After a decoding error the connection must close; in
/// MQTT 5 a DISCONNECT (or CONNACK) carrying [`MqttError::reason_code`] may be sent first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// A variable byte integer with a continuation bit on its fourth byte.
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    /// A variable byte integer using more bytes than needed (MQTT-1.5.5-1).
    #[error("variable byte integer not minimally encoded")]
    VarIntNotMinimal,
    /// The whole packet would be larger than the limit.
    #[error("packet of {size} bytes, more than {max}")]
    PacketTooLarge {
        /// The packet's size as its fixed header announces it: fixed header, variable
        /// header and payload (a PUBLISH's included).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A PUBLISH payload larger than the limit.
    #[error("PUBLISH payload of {size} bytes, more than {max}")]
    PayloadTooLarge {
        /// The payload's length.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Packet type 0, or 15 (AUTH) outside MQTT 5.
    #[error("reserved packet type {value}")]
    ReservedPacketType {
        /// The type nibble.
        value: u8,
    },
    /// Flag bits of the fixed header that must have a fixed value do not.
    #[error("{packet}: reserved flag bits {flags:#06b}")]
    ReservedFlags {
        /// The packet.
        packet: PacketType,
        /// The flag nibble received.
        flags: u8,
    },
    /// QoS 3.
    #[error("QoS {value} does not exist")]
    InvalidQos {
        /// The QoS bits.
        value: u8,
    },
    /// PUBLISH with DUP set at QoS 0 (MQTT-3.3.1-2).
    #[error("PUBLISH with DUP at QoS 0")]
    DupAtQos0,
    /// A field runs past the end of the packet.
    #[error("{packet}: truncated")]
    Truncated {
        /// The packet.
        packet: PacketType,
    },
    /// Bytes left over after the last field.
    #[error("{packet}: {extra} bytes after the last field")]
    TrailingBytes {
        /// The packet.
        packet: PacketType,
        /// How many.
        extra: usize,
    },
    /// A string that is not well-formed UTF-8.
    #[error("{field}: not UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A string containing U+0000 (MQTT-1.5.4-2).
    #[error("{field}: contains U+0000")]
    NullCharacter {
        /// Which field.
        field: &'static str,
    },
    /// A string or binary field longer than 65 535 bytes (when encoding).
    #[error("{field}: {len} bytes, more than 65535")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// An invalid topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// An invalid topic filter.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// CONNECT with a protocol name or level other than "MQTT" 4 or 5.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name.
        name: String,
        /// The protocol level.
        level: u8,
    },
    /// CONNECT flags that contradict each other or set the reserved bit.
    #[error("invalid CONNECT flags {flags:#010b}")]
    InvalidConnectFlags {
        /// The flags byte.
        flags: u8,
    },
    /// CONNACK acknowledge flags with reserved bits, or session present on a refusal.
    #[error("invalid CONNACK flags {flags:#010b}")]
    InvalidConnAckFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A server-side decoder got something other than CONNECT first (MQTT-3.1.0-1).
    #[error("expected CONNECT first, got {got}")]
    ExpectedConnect {
        /// What came instead.
        got: PacketType,
    },
    /// A packet identifier of 0 where a non-zero one is required.
    #[error("{packet}: packet identifier 0")]
    PacketIdZero {
        /// The packet.
        packet: PacketType,
    },
    /// SUBSCRIBE or UNSUBSCRIBE without a topic filter (MQTT-3.8.3-3, MQTT-3.10.3-2).
    #[error("{packet}: no topic filters")]
    NoTopicFilters {
        /// The packet.
        packet: PacketType,
    },
    /// Subscription options with reserved bits or retain handling 3.
    #[error("invalid subscription options {options:#010b}")]
    InvalidSubscriptionOptions {
        /// The options byte.
        options: u8,
    },
    /// A reason (or return) code that this packet cannot carry.
    #[error("{packet}: reason code {code:#04x} not allowed")]
    InvalidReasonCode {
        /// The packet.
        packet: PacketType,
        /// The code.
        code: u8,
    },
    /// An MQTT 5 property identifier that does not exist.
    #[error("unknown property {id:#04x}")]
    UnknownProperty {
        /// The identifier.
        id: u32,
    },
    /// A property that this packet (or a will) cannot carry.
    #[error("{packet}: property {id:#04x} not allowed")]
    PropertyNotAllowed {
        /// The identifier.
        id: u8,
        /// The packet.
        packet: PacketType,
    },
    /// A property present twice that may appear only once.
    #[error("property {id:#04x} more than once")]
    DuplicateProperty {
        /// The identifier.
        id: u8,
    },
    /// A property value out of its range (a boolean above 1, a zero Receive Maximum, ...).
    #[error("property {id:#04x}: invalid value")]
    InvalidPropertyValue {
        /// The identifier.
        id: u8,
    },
    /// More properties in one packet than [`Limits::max_properties`](crate::Limits::max_properties).
    #[error("more than {max} properties")]
    TooManyProperties {
        /// The limit.
        max: usize,
    },
    /// An MQTT 5 PUBLISH with an empty topic name and no Topic Alias.
    #[error("PUBLISH with an empty topic name and no topic alias")]
    EmptyTopicWithoutAlias,
    /// A payload chunk given to the encoder does not match the announced length.
    #[error("PUBLISH head announces {announced} payload bytes, got {given}")]
    PayloadLengthMismatch {
        /// `PublishHead::payload_len`.
        announced: usize,
        /// The payload given.
        given: usize,
    },
}

impl MqttError {
    /// The MQTT 5 reason code to send in the DISCONNECT (or CONNACK) that closes the
    /// connection for this error.
    ///
    /// ```
    /// use flowgate_mqtt::{MqttError, ReasonCode};
    /// assert_eq!(MqttError::VarIntTooLong.reason_code(), ReasonCode::MALFORMED_PACKET);
    /// assert_eq!(
    ///     MqttError::PacketTooLarge { size: 2_000_000, max: 1 << 20 }.reason_code(),
    ///     ReasonCode::PACKET_TOO_LARGE,
    /// );
    /// ```
    pub fn reason_code(&self) -> ReasonCode {
        use MqttError as E;
        match self {
            E::PacketTooLarge { .. } | E::PayloadTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            E::InvalidTopicName(_) | E::EmptyTopicWithoutAlias => ReasonCode::TOPIC_NAME_INVALID,
            E::InvalidTopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            E::UnsupportedProtocol { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            E::TooManyProperties { .. } => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            E::ExpectedConnect { .. }
            | E::PacketIdZero { .. }
            | E::NoTopicFilters { .. }
            | E::PropertyNotAllowed { .. }
            | E::DuplicateProperty { .. }
            | E::InvalidPropertyValue { .. } => ReasonCode::PROTOCOL_ERROR,
            E::VarIntTooLong
            | E::VarIntNotMinimal
            | E::ReservedPacketType { .. }
            | E::ReservedFlags { .. }
            | E::InvalidQos { .. }
            | E::DupAtQos0
            | E::Truncated { .. }
            | E::TrailingBytes { .. }
            | E::InvalidUtf8 { .. }
            | E::NullCharacter { .. }
            | E::FieldTooLong { .. }
            | E::InvalidConnectFlags { .. }
            | E::InvalidConnAckFlags { .. }
            | E::InvalidSubscriptionOptions { .. }
            | E::InvalidReasonCode { .. }
            | E::UnknownProperty { .. }
            | E::PayloadLengthMismatch { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }
}
