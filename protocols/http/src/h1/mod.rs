//! HTTP/1.x, sans-IO: [`RequestDecoder`] / [`ResponseDecoder`] turn bytes into [`Frame`]s
//! (head, body pieces, end with trailers), the `encode_*` functions turn heads and bodies
//! back into bytes.
//!
//! The decoders are strict where leniency lets two parties disagree on where a message ends
//! (request smuggling): Content-Length together with Transfer-Encoding, duplicate or
//! non-numeric Content-Length, any Transfer-Encoding but a single `chunked` on a request,
//! obs-fold, bare LF line endings in the head and in chunk lines, malformed chunk sizes and
//! missing CRLF after chunk data are all errors, and after an error the decoder decodes
//! nothing more: the connection must close. Every input is bounded by [`Limits`].
//! A head's framing fields are left in canonical form (one `Content-Length` in decimal
//! without leading zeros, one lower-case `Transfer-Encoding` list; chunk extensions are
//! dropped with the chunks they came in), so a proxy forwards what it parsed, never the
//! sender's spelling: see [`canonical_content_length`].
//!
//! Heads are `http::request::Parts` / `http::response::Parts` (one head type for HTTP/1 and
//! HTTP/2); header values share the read buffer instead of being copied.

mod decode;
mod encode;
mod error;
mod head;

pub use decode::{Frame, RequestDecoder, ResponseDecoder};
pub use encode::{encode_chunk, encode_last_chunk, encode_request_head, encode_response_head};
pub use error::H1Error;
pub use head::{Framing, canonical_content_length};

/// Bounds on what a decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest head (request/status line and fields), and trailer section. Default 64 KiB.
    pub max_head_bytes: usize,
    /// The most header fields (at most 128). Default 100.
    pub max_headers: usize,
    /// The longest field line or chunk-size line. Default 16 KiB.
    pub max_line: usize,
    /// The largest body; `None` for no limit (the default: a proxy streams bodies).
    pub max_body: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_line: 16 * 1024,
            max_body: None,
        }
    }
}

impl Limits {
    /// Caps `max_headers` to what the parser can hold.
    #[must_use]
    pub fn normalized(mut self) -> Self {
        self.max_headers = self.max_headers.min(head::MAX_HEADERS);
        self
    }
}
