//! # flowgate-http
//!
//! HTTP for Flowgate, with no I/O and no dependency on the pipeline: the [`h1`] module is a
//! strict, bounded, zero-copy HTTP/1.x codec (heads parsed with `httparse`, bodies framed by
//! Content-Length, chunked coding or the end of the connection, trailers, pipelining,
//! CONNECT / Upgrade tunnels). HTTP/2 and the HTTP filters come next (see the repository's
//! ARCHITECTURE.md).
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
