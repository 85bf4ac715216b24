//! Why an HTTP/1 message was refused.

/// A malformed or over-limit HTTP/1 message. Every variant ends the connection: after a
/// framing error the byte stream can no longer be trusted (request smuggling).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum H1Error {
    /// The head is larger than the limit.
    #[error("message head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The head has more header fields than the limit.
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    /// One header field line is longer than the limit.
    #[error("a header field line is longer than {0} bytes")]
    LineTooLong(usize),
    /// The head does not parse (bad request line, bad field name or value, obs-fold…).
    #[error("malformed message head: {0}")]
    BadHead(&'static str),
    /// A line of the head ends in LF without CR.
    #[error("bare LF line ending in the message head")]
    BareLf,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("unsupported HTTP version")]
    Version,
    /// An HTTP/1.1 request without exactly one Host header field.
    #[error("an HTTP/1.1 request needs exactly one Host header field")]
    Host,
    /// Both Content-Length and Transfer-Encoding: a request-smuggling pattern.
    #[error("both Content-Length and Transfer-Encoding are present")]
    LengthAndChunked,
    /// More than one Content-Length field (even with equal values).
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    /// Content-Length is not a plain decimal number.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A Transfer-Encoding other than a single final `chunked` (or any in HTTP/1.0).
    #[error("unsupported Transfer-Encoding")]
    BadTransferEncoding,
    /// A malformed chunk (size line, extension, missing CRLF, trailers).
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    /// The body is larger than the limit.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The connection ended in the middle of a message.
    #[error("the connection closed in the middle of a message")]
    Incomplete,
}

impl H1Error {
    /// The status a server answers this error with (then it closes the connection).
    ///
    /// ```
    /// use flowgate_http::h1::H1Error;
    /// assert_eq!(H1Error::HeadTooLarge(65536).status(), 431);
    /// assert_eq!(H1Error::LengthAndChunked.status(), 400);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            H1Error::HeadTooLarge(_) | H1Error::TooManyHeaders(_) | H1Error::LineTooLong(_) => 431,
            H1Error::BodyTooLarge(_) => 413,
            H1Error::BadTransferEncoding => 501,
            H1Error::Version => 505,
            _ => 400,
        }
    }
}
