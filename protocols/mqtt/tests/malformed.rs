//! Malformed and over-limit input: each vector gives the right error and reason code, the
//! same however the input is split.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use flowgate_mqtt::{
    Limits, MqttError as E, PacketType as T, ProtocolVersion as V, ReasonCode as R, TopicError,
};
use support::decode_split;

/// Decoder version (None: server), limits, input, error, reason code.
type Case = (Option<V>, Limits, &'static [u8], E, R);

#[test]
fn malformed_vectors() {
    let small = Limits {
        max_packet_size: 16,
        max_publish_payload: 4,
        ..Limits::default()
    };
    let d = Limits::default();
    #[rustfmt::skip]
    let table: Vec<Case> = vec![
        // Remaining length: longer than the fields, shorter, five bytes, not minimal.
        (Some(V::V311), d, b"\x40\x03\x00\x0a\x00", E::TrailingBytes { packet: T::PubAck, extra: 1 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x40\x01\x00", E::Truncated { packet: T::PubAck }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x30\x02\x00\x05abcde", E::Truncated { packet: T::Publish }, R::MALFORMED_PACKET),
        (Some(V::V5), d, b"\x30\xff\xff\xff\xff\x7f", E::VarIntTooLong, R::MALFORMED_PACKET),
        (Some(V::V5), d, b"\xc0\x80\x00", E::VarIntNotMinimal, R::MALFORMED_PACKET),
        // Over the limits: a packet; a PUBLISH, whole (a long head, or a short head and a
        // long payload: the payload counts), known from the fixed header alone; a PUBLISH
        // payload over the payload limit in a packet within the packet limit.
        (Some(V::V5), small, b"\x82\x64", E::PacketTooLarge { size: 102, max: 16 }, R::PACKET_TOO_LARGE),
        (Some(V::V311), small, b"\x30\x20\x00\x1e", E::PacketTooLarge { size: 34, max: 16 }, R::PACKET_TOO_LARGE),
        (Some(V::V311), Limits { max_publish_payload: 1 << 20, ..small }, b"\x30\x0f", E::PacketTooLarge { size: 17, max: 16 }, R::PACKET_TOO_LARGE),
        (Some(V::V311), small, b"\x30\x08\x00\x01tabcde", E::PayloadTooLarge { size: 5, max: 4 }, R::PACKET_TOO_LARGE),
        // Topics.
        (Some(V::V311), d, b"\x30\x05\x00\x03a\xffb", E::InvalidUtf8 { field: "topic name" }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x30\x05\x00\x03a\x00b", E::NullCharacter { field: "topic name" }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x30\x05\x00\x03a/+", E::InvalidTopicName(TopicError::Wildcard), R::TOPIC_NAME_INVALID),
        (Some(V::V311), d, b"\x30\x03\x00\x01#", E::InvalidTopicName(TopicError::Wildcard), R::TOPIC_NAME_INVALID),
        (Some(V::V311), d, b"\x30\x02\x00\x00", E::InvalidTopicName(TopicError::Empty), R::TOPIC_NAME_INVALID),
        (Some(V::V5), d, b"\x30\x03\x00\x00\x00", E::EmptyTopicWithoutAlias, R::TOPIC_NAME_INVALID),
        (Some(V::V311), d, b"\x82\x08\x00\x01\x00\x03#/a\x00", E::InvalidTopicFilter(TopicError::MisplacedWildcard), R::TOPIC_FILTER_INVALID),
        (Some(V::V5), d, b"\x82\x0e\x00\x01\x00\x00\x08$share/a\x00", E::InvalidTopicFilter(TopicError::BadShare), R::TOPIC_FILTER_INVALID),
        // Reserved flags and bits.
        (Some(V::V311), d, b"\x41\x02\x00\x0a", E::ReservedFlags { packet: T::PubAck, flags: 1 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x80\x06\x00\x01\x00\x01a\x00", E::ReservedFlags { packet: T::Subscribe, flags: 0 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x36\x03\x00\x01a", E::InvalidQos { value: 3 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x38\x03\x00\x01a", E::DupAtQos0, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x00\x00", E::ReservedPacketType { value: 0 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\xf0\x00", E::ReservedPacketType { value: 15 }, R::MALFORMED_PACKET),
        (None, d, b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c", E::InvalidConnectFlags { flags: 3 }, R::MALFORMED_PACKET),
        (None, d, b"\x10\x0d\x00\x04MQTT\x04\x42\x00\x3c\x00\x01c", E::InvalidConnectFlags { flags: 0x42 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x20\x02\x02\x00", E::InvalidConnAckFlags { flags: 2 }, R::MALFORMED_PACKET),
        (Some(V::V311), d, b"\x82\x06\x00\x01\x00\x01a\x04", E::InvalidSubscriptionOptions { options: 4 }, R::MALFORMED_PACKET),
        (Some(V::V5), d, b"\x82\x07\x00\x01\x00\x00\x01a\x30", E::InvalidSubscriptionOptions { options: 0x30 }, R::MALFORMED_PACKET),
        // Properties.
        (Some(V::V5), d, b"\x30\x0a\x00\x01t\x06\x23\x00\x01\x23\x00\x02", E::DuplicateProperty { id: 0x23 }, R::PROTOCOL_ERROR),
        (Some(V::V5), d, b"\x40\x07\x00\x0a\x00\x03\x23\x00\x01", E::PropertyNotAllowed { id: 0x23, packet: T::PubAck }, R::PROTOCOL_ERROR),
        (Some(V::V5), d, b"\x30\x06\x00\x01t\x02\x01\x02", E::InvalidPropertyValue { id: 0x01 }, R::PROTOCOL_ERROR),
        (Some(V::V5), d, b"\x30\x06\x00\x01t\x02\x7f\x00", E::UnknownProperty { id: 0x7f }, R::MALFORMED_PACKET),
        (Some(V::V5), Limits { max_properties: 1, ..d }, b"\x30\x08\x00\x01t\x04\x0b\x01\x0b\x02", E::TooManyProperties { max: 1 }, R::IMPLEMENTATION_SPECIFIC_ERROR),
        // Packet identifiers, reason codes, protocol.
        (Some(V::V311), d, b"\x32\x07\x00\x03a/b\x00\x00", E::PacketIdZero { packet: T::Publish }, R::PROTOCOL_ERROR),
        (Some(V::V311), d, b"\x82\x02\x00\x01", E::NoTopicFilters { packet: T::Subscribe }, R::PROTOCOL_ERROR),
        (Some(V::V5), d, b"\x40\x03\x00\x0a\x92", E::InvalidReasonCode { packet: T::PubAck, code: 0x92 }, R::MALFORMED_PACKET),
        (None, d, b"\xc0\x00", E::ExpectedConnect { got: T::PingReq }, R::PROTOCOL_ERROR),
        (None, d, b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c", E::UnsupportedProtocol { name: "MQIsdp".into(), level: 3 }, R::UNSUPPORTED_PROTOCOL_VERSION),
    ];
    for (version, limits, input, err, code) in table {
        let (_, got) = decode_split(version, limits, input);
        assert_eq!(got.as_ref(), Some(&err), "{input:02x?}");
        assert_eq!(err.reason_code(), code, "{err}");
    }
}
