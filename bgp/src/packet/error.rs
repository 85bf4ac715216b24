//! Decode and encode errors. Every [`DecodeError`] is fatal to the session and names the
//! NOTIFICATION to send ([`DecodeError::notification`]); errors RFC 7606 lets a session
//! survive are not errors here but [`AttributeError`]s recorded on the decoded UPDATE.

use bytes::Bytes;

use super::notification::{Notification, codes};

/// A message that cannot be accepted: the session must be reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 16-octet marker is not all ones.
    #[error("message header: marker is not all ones")]
    BadMarker,
    /// The length field is out of range for the message type or the session.
    #[error("message header: bad length {length}")]
    BadLength {
        /// The length field as received.
        length: u16,
    },
    /// The type field is unknown.
    #[error("message header: unknown type {kind}")]
    BadType {
        /// The type field as received.
        kind: u8,
    },
    /// The stream ended in the middle of a message.
    #[error("connection closed inside a message ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes received of the incomplete message.
        buffered: usize,
    },
    /// OPEN with a version other than 4.
    #[error("OPEN: unsupported version {version}")]
    UnsupportedVersion {
        /// The version received.
        version: u8,
    },
    /// OPEN with an optional parameter other than capabilities.
    #[error("OPEN: unsupported optional parameter {kind}")]
    UnsupportedParameter {
        /// The parameter type.
        kind: u8,
    },
    /// OPEN fields that do not add up.
    #[error("OPEN: malformed ({reason})")]
    MalformedOpen {
        /// What was wrong.
        reason: &'static str,
    },
    /// UPDATE whose lengths do not add up, or with a duplicate MP attribute.
    #[error("UPDATE: malformed attribute list ({reason})")]
    MalformedAttributeList {
        /// What was wrong.
        reason: &'static str,
    },
    /// UPDATE with a well-known attribute this speaker does not know.
    #[error("UPDATE: unrecognized well-known attribute {type_code}")]
    UnrecognizedWellKnown {
        /// The attribute type.
        type_code: u8,
    },
    /// UPDATE whose MP_REACH_NLRI / MP_UNREACH_NLRI cannot be parsed (RFC 7606 §7.11).
    #[error("UPDATE: malformed multiprotocol attribute {type_code} ({reason})")]
    MalformedMultiprotocol {
        /// 14 or 15.
        type_code: u8,
        /// What was wrong.
        reason: &'static str,
    },
    /// UPDATE with an NLRI field that cannot be parsed.
    #[error("UPDATE: invalid network field")]
    InvalidNetworkField,
    /// ROUTE-REFRESH of the wrong length.
    #[error("ROUTE-REFRESH: invalid length {length}")]
    BadRouteRefreshLength {
        /// The length field.
        length: u16,
    },
}

impl DecodeError {
    /// The NOTIFICATION to send before closing the session.
    pub fn notification(&self) -> Notification {
        use DecodeError::*;
        match self {
            BadMarker | Truncated { .. } => {
                Notification::new(codes::MESSAGE_HEADER, codes::HEADER_NOT_SYNCHRONIZED)
            }
            BadLength { length } => Notification::with_data(
                codes::MESSAGE_HEADER,
                codes::HEADER_BAD_LENGTH,
                Bytes::copy_from_slice(&length.to_be_bytes()),
            ),
            BadType { kind } => Notification::with_data(
                codes::MESSAGE_HEADER,
                codes::HEADER_BAD_TYPE,
                Bytes::copy_from_slice(&[*kind]),
            ),
            UnsupportedVersion { .. } => Notification::with_data(
                codes::OPEN,
                codes::OPEN_UNSUPPORTED_VERSION,
                Bytes::from_static(&[0, 4]),
            ),
            UnsupportedParameter { .. } => {
                Notification::new(codes::OPEN, codes::OPEN_UNSUPPORTED_PARAMETER)
            }
            MalformedOpen { .. } => Notification::new(codes::OPEN, 0),
            MalformedAttributeList { .. } => {
                Notification::new(codes::UPDATE, codes::UPDATE_MALFORMED_ATTRIBUTE_LIST)
            }
            UnrecognizedWellKnown { type_code } => Notification::with_data(
                codes::UPDATE,
                codes::UPDATE_UNRECOGNIZED_WELL_KNOWN,
                Bytes::copy_from_slice(&[*type_code]),
            ),
            MalformedMultiprotocol { .. } => {
                Notification::new(codes::UPDATE, codes::UPDATE_OPTIONAL_ATTRIBUTE)
            }
            InvalidNetworkField => {
                Notification::new(codes::UPDATE, codes::UPDATE_INVALID_NETWORK_FIELD)
            }
            BadRouteRefreshLength { .. } => {
                Notification::new(codes::ROUTE_REFRESH, codes::ROUTE_REFRESH_INVALID_LENGTH)
            }
        }
    }
}

/// A message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message exceeds the session's maximum message size.
    #[error("message of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The encoded length.
        length: usize,
        /// 4096, or 65535 with the extended message capability.
        max: usize,
    },
    /// An attribute value exceeds 65535 bytes.
    #[error("attribute {type_code} is too long to encode")]
    AttributeTooLong {
        /// The attribute type.
        type_code: u8,
    },
}

/// What RFC 7606 makes of a malformed attribute the session can survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The UPDATE's routes are withdrawn instead of announced (RFC 7606 §2).
    TreatAsWithdraw,
    /// The attribute is dropped and the rest of the UPDATE is used.
    AttributeDiscard,
}

/// A malformed attribute handled without resetting the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("attribute {type_code}: {reason} ({action:?})")]
pub struct AttributeError {
    /// The attribute type code.
    pub type_code: u8,
    /// What was done about it.
    pub action: Action,
    /// What was wrong.
    pub reason: &'static str,
}
