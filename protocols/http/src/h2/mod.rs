//! HTTP/2 without the protocol engine: the [`Settings`] both of Flowgate's HTTP/2 sides
//! start from, with their defaults and the ranges RFC 9113 allows, and the conversion of
//! heads between the HTTP/1 shape the pipeline carries and HTTP/2 ([`request_to_h2`],
//! [`request_from_h2`], [`response_to_h2`]).
//!
//! Framing, HPACK and flow control are the `h2` crate's, used by the HTTP filters; this
//! module does not depend on it.

mod convert;
mod settings;

pub use convert::{request_from_h2, request_to_h2, response_to_h2};
pub use settings::{
    MAX_FRAME_SIZE_LIMIT, MAX_WINDOW_SIZE, MIN_FRAME_SIZE, MIN_HEADER_LIST_SIZE, Settings,
    SettingsError,
};
