//! # flowgate-http
//!
//! HTTP for Flowgate, with no I/O and no dependency on the pipeline:
//!
//! - [`h1`]: a strict, bounded, zero-copy HTTP/1.x codec (heads parsed with `httparse`,
//!   bodies framed by Content-Length, chunked coding or the end of the connection,
//!   trailers, pipelining, CONNECT / Upgrade tunnels);
//! - [`hop`]: the one list of hop-by-hop and connection-specific fields, the `Connection`
//!   token parser, and stripping them from request and response heads;
//! - [`h2`]: the HTTP/2 [`Settings`](h2::Settings) with their defaults and RFC 9113 ranges,
//!   and head conversion between HTTP/1 and HTTP/2 (the protocol engine is the `h2`
//!   crate, in the HTTP filters, which bridge all of this to the pipeline).
//!
//! ```
//! use bytes::BytesMut;
//! use flowgate_http::h1::{Frame, H1Error, RequestDecoder};
//!
//! let mut d = RequestDecoder::default();
//! // A request-smuggling attempt: Content-Length and Transfer-Encoding together.
//! let mut buf = BytesMut::from(
//!     &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
//! );
//! let err = d.decode(&mut buf).unwrap_err();
//! assert_eq!(err, H1Error::LengthAndChunked);
//! assert_eq!(err.status(), 400);
//! ```

pub mod h1;
pub mod h2;
pub mod hop;
