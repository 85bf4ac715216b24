//! Sans-IO BGP-4 messages (RFC 4271) with multiprotocol (RFC 4760), 4-octet AS (RFC 6793),
//! extended message (RFC 8654) and revised error handling (RFC 7606).
//!
//! [`Codec`] follows tokio-util's decoder shape: [`Codec::decode`] takes bytes from a
//! `BytesMut` and returns `Ok(None)` until a whole message is there. It does no I/O, so the
//! speaker, tests and the fuzz target all drive it the same way.
//!
//! ```
//! use bytes::BytesMut;
//! use flowgate_bgp::packet::{Codec, Message};
//!
//! let mut codec = Codec::new();
//! let mut wire = BytesMut::new();
//! codec.encode(&Message::Keepalive, &mut wire)?;
//! assert_eq!(wire.len(), 19);
//!
//! let mut half = wire.split_to(10);
//! assert_eq!(codec.decode(&mut half)?, None); // need more bytes
//! half.unsplit(wire);
//! assert_eq!(codec.decode(&mut half)?, Some(Message::Keepalive));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every message starts with the same header:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                           Marker (16 octets of 0xff)          +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

pub mod attribute;
mod capability;
mod error;
mod notification;
mod open;
mod prefix;
mod reader;
#[cfg(test)]
mod rfc7606_vectors;
mod route_refresh;
mod update;
#[cfg(test)]
mod vectors;

use bytes::{Buf, BufMut, BytesMut};

pub use attribute::{
    Aggregator, AsPath, AsSegment, Community, LargeCommunity, MpReach, MpUnreach, Origin,
    PathAttributes, RawAttribute, SegmentKind,
};
pub use capability::{AddPathFamily, Capability, RestartFamily};
pub use error::{Action, AttributeError, DecodeError, EncodeError};
pub use notification::{Notification, codes};
pub use open::{AS_TRANS, Open};
pub use prefix::{Family, Prefix, PrefixError};
pub use route_refresh::RouteRefresh;
pub use update::Update;

/// Length of the message header.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended message capability.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Largest message with the extended message capability (RFC 8654).
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;

/// A BGP message.
// UPDATE is most of the traffic and the largest variant: boxing it would add an allocation
// per message to save stack space on the rare small ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2).
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4): the header alone.
    Keepalive,
    /// ROUTE-REFRESH (type 5).
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The type code in the header.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Open(_) => 1,
            Message::Update(_) => 2,
            Message::Notification(_) => 3,
            Message::Keepalive => 4,
            Message::RouteRefresh(_) => 5,
        }
    }
}

/// What was negotiated for a session and changes how messages are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// AS numbers in AS_PATH and AGGREGATOR are 4 octets (both sides sent the capability).
    pub four_octet_as: bool,
    /// Messages may be up to 65535 bytes (both sides sent the capability).
    pub extended_message: bool,
    /// The peer is in another AS. RFC 7606 §7.5, §7.9 and §7.10: LOCAL_PREF, ORIGINATOR_ID
    /// and CLUSTER_LIST from an external peer are discarded instead of checked.
    pub ebgp: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            four_octet_as: true,
            extended_message: false,
            ebgp: false,
        }
    }
}

impl Options {
    /// The hard maximum message length these options allow.
    pub fn max_message_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_MESSAGE_LEN
        } else {
            MAX_MESSAGE_LEN
        }
    }
}

/// Where the decoder is inside the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Waiting for a 19-byte header.
    Head,
    /// Header read; waiting for `length` body bytes.
    Body { kind: u8, length: usize },
}

/// Encodes and decodes BGP messages for one session.
#[derive(Debug, Clone)]
pub struct Codec {
    options: Options,
    state: DecodeState,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// A codec with [`Options::default`]: 4-octet AS, 4096-byte messages, iBGP rules.
    pub fn new() -> Self {
        Self::with_options(Options::default())
    }

    /// A codec with explicit options.
    pub fn with_options(options: Options) -> Self {
        Self {
            options,
            state: DecodeState::Head,
        }
    }

    /// The current options.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Changes the options, as done once OPEN messages have been exchanged.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// Takes one message off the front of `src`; `Ok(None)` means more bytes are needed.
    /// After an error the stream is out of sync and the session must be closed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if let DecodeState::Head = self.state {
            if src.len() >= 16 && src[..16].iter().any(|&b| b != 0xff) {
                return Err(DecodeError::BadMarker);
            }
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let length = u16::from_be_bytes([src[16], src[17]]);
            let kind = src[18];
            let bad_length = DecodeError::BadLength { length };
            let min = match kind {
                1 => 29,
                2 => 23,
                3 => 21,
                4 | 5 => HEADER_LEN,
                _ => return Err(DecodeError::BadType { kind }),
            };
            let len = usize::from(length);
            if len < min || len > self.options.max_message_len() || (kind == 4 && len != HEADER_LEN)
            {
                return Err(bad_length);
            }
            if kind == 5 && len != 23 {
                return Err(DecodeError::BadRouteRefreshLength { length });
            }
            src.advance(HEADER_LEN);
            self.state = DecodeState::Body {
                kind,
                length: len - HEADER_LEN,
            };
        }
        let DecodeState::Body { kind, length } = self.state else {
            return Ok(None);
        };
        if src.len() < length {
            src.reserve(length - src.len());
            return Ok(None);
        }
        let body = src.split_to(length);
        self.state = DecodeState::Head;
        let msg = match kind {
            1 => Message::Open(Open::decode(&body)?),
            2 => Message::Update(Update::decode(&body, self.options)?),
            3 => Message::Notification(Notification::decode(&body).ok_or(
                DecodeError::BadLength {
                    length: length as u16,
                },
            )?),
            4 => Message::Keepalive,
            _ => Message::RouteRefresh(RouteRefresh::decode(&body).ok_or(
                DecodeError::BadRouteRefreshLength {
                    length: length as u16,
                },
            )?),
        };
        Ok(Some(msg))
    }

    /// Called when the stream ends: an error if a message was cut short.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match self.decode(src)? {
            Some(m) => Ok(Some(m)),
            None if src.is_empty() && self.state == DecodeState::Head => Ok(None),
            None => Err(DecodeError::Truncated {
                buffered: src.len(),
            }),
        }
    }

    /// Appends `msg` to `dst`; on error `dst` is left as it was.
    pub fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        dst.put_slice(&[0xff; 16]);
        dst.put_u16(0);
        dst.put_u8(msg.kind());
        let body = match msg {
            Message::Open(o) => {
                o.encode_body(dst);
                Ok(())
            }
            Message::Update(u) => u.encode_body(self.options.four_octet_as, dst),
            Message::Notification(n) => {
                n.encode_body(dst);
                Ok(())
            }
            Message::Keepalive => Ok(()),
            Message::RouteRefresh(r) => {
                r.encode_body(dst);
                Ok(())
            }
        };
        let length = dst.len() - start;
        let max = self.options.max_message_len();
        match body {
            Err(e) => {
                dst.truncate(start);
                Err(e)
            }
            Ok(()) if length > max => {
                dst.truncate(start);
                Err(EncodeError::TooLarge { length, max })
            }
            Ok(()) => {
                dst[start + 16..start + 18].copy_from_slice(&(length as u16).to_be_bytes());
                Ok(())
            }
        }
    }
}
