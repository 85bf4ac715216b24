//! Reason codes (MQTT 5 §2.4) and, in MQTT 3.1.1, CONNACK and SUBACK return codes.

use std::fmt;

use crate::MqttError;
use crate::packet::PacketType;

/// A reason code. In MQTT 3.1.1 the same type carries CONNACK return codes (0–5) and
/// SUBACK return codes (0, 1, 2, 0x80).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $v:expr;)*) => {
        impl ReasonCode { $($(#[$doc])* pub const $name: ReasonCode = ReasonCode($v);)* }
    };
}

codes! {
    /// 0x00 Success (also Normal disconnection, Granted QoS 0).
    SUCCESS = 0x00;
    /// 0x01 Granted QoS 1.
    GRANTED_QOS_1 = 0x01;
    /// 0x02 Granted QoS 2.
    GRANTED_QOS_2 = 0x02;
    /// 0x04 Disconnect with Will Message.
    DISCONNECT_WITH_WILL = 0x04;
    /// 0x10 No matching subscribers.
    NO_MATCHING_SUBSCRIBERS = 0x10;
    /// 0x11 No subscription existed.
    NO_SUBSCRIPTION_EXISTED = 0x11;
    /// 0x18 Continue authentication.
    CONTINUE_AUTHENTICATION = 0x18;
    /// 0x19 Re-authenticate.
    REAUTHENTICATE = 0x19;
    /// 0x80 Unspecified error (and the 3.1.1 SUBACK failure code).
    UNSPECIFIED_ERROR = 0x80;
    /// 0x81 Malformed Packet.
    MALFORMED_PACKET = 0x81;
    /// 0x82 Protocol Error.
    PROTOCOL_ERROR = 0x82;
    /// 0x83 Implementation specific error.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83;
    /// 0x84 Unsupported Protocol Version.
    UNSUPPORTED_PROTOCOL_VERSION = 0x84;
    /// 0x87 Not authorized.
    NOT_AUTHORIZED = 0x87;
    /// 0x8F Topic Filter invalid.
    TOPIC_FILTER_INVALID = 0x8F;
    /// 0x90 Topic Name invalid.
    TOPIC_NAME_INVALID = 0x90;
    /// 0x91 Packet Identifier in use.
    PACKET_ID_IN_USE = 0x91;
    /// 0x92 Packet Identifier not found.
    PACKET_ID_NOT_FOUND = 0x92;
    /// 0x95 Packet too large.
    PACKET_TOO_LARGE = 0x95;
    /// 0x97 Quota exceeded.
    QUOTA_EXCEEDED = 0x97;
}

impl ReasonCode {
    /// Whether this code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)
    }
}

const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_V5: &[u8] = &[0x00, 0x92];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];
const CONNACK_V311: &[u8] = &[0, 1, 2, 3, 4, 5];
const SUBACK_V311: &[u8] = &[0, 1, 2, 0x80];

/// Checks that `packet` may carry `code` (`v5`: MQTT 5 reason codes, else 3.1.1 return codes).
pub(crate) fn check(packet: PacketType, v5: bool, code: u8) -> Result<ReasonCode, MqttError> {
    let allowed = match (packet, v5) {
        (PacketType::ConnAck, true) => CONNACK_V5,
        (PacketType::ConnAck, false) => CONNACK_V311,
        (PacketType::PubAck | PacketType::PubRec, _) => PUBACK_V5,
        (PacketType::PubRel | PacketType::PubComp, _) => PUBREL_V5,
        (PacketType::SubAck, true) => SUBACK_V5,
        (PacketType::SubAck, false) => SUBACK_V311,
        (PacketType::UnsubAck, _) => UNSUBACK_V5,
        (PacketType::Disconnect, _) => DISCONNECT_V5,
        (PacketType::Auth, _) => AUTH_V5,
        _ => &[],
    };
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(MqttError::InvalidReasonCode { packet, code })
    }
}
