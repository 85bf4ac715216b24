//! The NOTIFICATION message (RFC 4271 §4.5) with its error codes and subcodes.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A NOTIFICATION: the session is closed right after it is sent.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Error code    | Error subcode |   Data (variable)             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The error code (see [`codes`]).
    pub code: u8,
    /// The subcode, meaningful per code.
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Bytes,
}

/// Error codes and the most used subcodes (RFC 4271 §4.5, RFC 4486, RFC 7313).
pub mod codes {
    /// Message Header Error.
    pub const MESSAGE_HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;

    /// Header: Connection Not Synchronized.
    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    /// Header: Bad Message Length.
    pub const HEADER_BAD_LENGTH: u8 = 2;
    /// Header: Bad Message Type.
    pub const HEADER_BAD_TYPE: u8 = 3;

    /// OPEN: Unsupported Version Number.
    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    /// OPEN: Bad Peer AS.
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    /// OPEN: Bad BGP Identifier.
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    /// OPEN: Unsupported Optional Parameter.
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    /// OPEN: Unacceptable Hold Time.
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;

    /// UPDATE: Malformed Attribute List.
    pub const UPDATE_MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// UPDATE: Unrecognized Well-known Attribute.
    pub const UPDATE_UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    /// UPDATE: Optional Attribute Error.
    pub const UPDATE_OPTIONAL_ATTRIBUTE: u8 = 9;
    /// UPDATE: Invalid Network Field.
    pub const UPDATE_INVALID_NETWORK_FIELD: u8 = 10;

    /// Cease: Administrative Shutdown (RFC 4486).
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    /// Cease: Peer De-configured.
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    /// Cease: Connection Rejected.
    pub const CEASE_CONNECTION_REJECTED: u8 = 5;
    /// Cease: Connection Collision Resolution.
    pub const CEASE_COLLISION: u8 = 7;

    /// ROUTE-REFRESH: Invalid Message Length.
    pub const ROUTE_REFRESH_INVALID_LENGTH: u8 = 1;
}

impl Notification {
    /// A NOTIFICATION with no data.
    pub fn new(code: u8, subcode: u8) -> Self {
        Self {
            code,
            subcode,
            data: Bytes::new(),
        }
    }

    /// A NOTIFICATION carrying diagnostic data.
    pub fn with_data(code: u8, subcode: u8, data: impl Into<Bytes>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// Cease / Administrative Shutdown: what a speaker sends when it stops.
    pub fn cease() -> Self {
        Self::new(codes::CEASE, codes::CEASE_ADMIN_SHUTDOWN)
    }

    pub(crate) fn decode(body: &[u8]) -> Option<Self> {
        let (&code, rest) = body.split_first()?;
        let (&subcode, data) = rest.split_first()?;
        Some(Self {
            code,
            subcode,
            data: Bytes::copy_from_slice(data),
        })
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u8(self.code);
        dst.put_u8(self.subcode);
        dst.put_slice(&self.data);
    }

    fn code_name(&self) -> &'static str {
        match self.code {
            codes::MESSAGE_HEADER => "Message Header Error",
            codes::OPEN => "OPEN Message Error",
            codes::UPDATE => "UPDATE Message Error",
            codes::HOLD_TIMER_EXPIRED => "Hold Timer Expired",
            codes::FSM => "Finite State Machine Error",
            codes::CEASE => "Cease",
            codes::ROUTE_REFRESH => "ROUTE-REFRESH Message Error",
            _ => "unknown error code",
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.code_name(), self.code, self.subcode)?;
        if !self.data.is_empty() {
            write!(f, " data {:02x?}", &self.data[..self.data.len().min(16)])?;
        }
        Ok(())
    }
}
