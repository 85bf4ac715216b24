//! The four events every stream is made of.
//!
//! A stream is a sequence of [`Event`]s. Bytes read from a socket are `Data* StreamEnd`;
//! a decoder adds message boundaries (`MessageStart Data* MessageEnd`) and an encoder takes
//! them away again, so one pipe carries L4 bytes and L7 messages with streamed bodies.
//!
//! Events are cheap to clone: payloads are [`Bytes`], heads and tails are reference counted.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// One step of a stream.
#[derive(Clone, Debug)]
pub enum Event {
    /// A chunk of payload bytes (a socket read, or a piece of a message body).
    Data(Bytes),
    /// The start of a message, carrying its head (an HTTP request head, a datagram's peer…).
    MessageStart(Head),
    /// The end of a message, with an optional tail (HTTP trailers, for example).
    MessageEnd(Tail),
    /// The end of the stream: `None` for a clean end, `Some` for an error.
    ///
    /// It is the last event of every stream; a filter that sees it forwards it (or its own
    /// error) and produces nothing afterwards.
    StreamEnd(Option<StreamError>),
}

impl Event {
    /// A clean end of stream.
    pub const END: Event = Event::StreamEnd(None);

    /// Whether this is a [`Event::StreamEnd`].
    pub fn is_end(&self) -> bool {
        matches!(self, Event::StreamEnd(_))
    }

    /// A short name of the event kind, for logs and dumps.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::Data(_) => "Data",
            Event::MessageStart(_) => "MessageStart",
            Event::MessageEnd(_) => "MessageEnd",
            Event::StreamEnd(None) => "StreamEnd",
            Event::StreamEnd(Some(_)) => "StreamEnd(error)",
        }
    }
}

impl From<Bytes> for Event {
    fn from(b: Bytes) -> Self {
        Event::Data(b)
    }
}

impl From<&'static str> for Event {
    fn from(s: &'static str) -> Self {
        Event::Data(Bytes::from_static(s.as_bytes()))
    }
}

// === impl Head ===

/// The head of a message: any protocol's head type, shared by reference count.
///
/// The pipeline does not know protocols; a decoder puts its own head type in and the filters
/// that understand that protocol take it out again with [`Head::get`].
///
/// ```
/// use flowgate_pipeline::Head;
/// #[derive(Debug, PartialEq)]
/// struct Request { path: String }
/// let head = Head::new(Request { path: "/".into() });
/// assert_eq!(head.get::<Request>().map(|r| r.path.as_str()), Some("/"));
/// assert!(head.get::<u32>().is_none());
/// ```
#[derive(Clone)]
pub struct Head(Arc<dyn Any + Send + Sync>);

impl Head {
    /// Wraps a protocol head.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Head(Arc::new(value))
    }

    /// An empty head, for messages that need no metadata.
    pub fn empty() -> Self {
        Head(Arc::new(()))
    }

    /// The head as `T`, if it is one.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// Whether the head is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.0.is::<T>()
    }
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Head(..)")
    }
}

// === impl Tail ===

/// The tail of a message (trailers, a status), or nothing.
#[derive(Clone, Default)]
pub struct Tail(Option<Arc<dyn Any + Send + Sync>>);

impl Tail {
    /// A tail that carries no data.
    pub fn none() -> Self {
        Tail(None)
    }

    /// Wraps a protocol tail.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Tail(Some(Arc::new(value)))
    }

    /// The tail as `T`, if it is one.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_ref().and_then(|v| v.downcast_ref::<T>())
    }
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Tail(..)"),
            None => f.write_str("Tail(none)"),
        }
    }
}

// === impl StreamError ===

/// Which side of the proxy a failure came from (pingora's habit: a proxy needs to know).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The client side: the peer that opened the stream towards us.
    Downstream,
    /// The server side: a peer we connected to.
    Upstream,
    /// Ourselves: a limit, a configuration problem, a filter's own failure.
    Internal,
}

/// What went wrong, as a closed set of kinds a proxy can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection was refused or could not be established.
    ConnectFailed,
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// No bytes moved for longer than the idle timeout.
    IdleTimeout,
    /// A read from a socket failed.
    ReadFailed,
    /// A write to a socket failed.
    WriteFailed,
    /// The peer reset the connection.
    ConnectionReset,
    /// A TLS handshake or record failed.
    Tls,
    /// The peer sent bytes that break the protocol.
    Protocol,
    /// An input exceeded a configured limit.
    LimitExceeded,
    /// A throttle or admission limit refused the stream.
    Overloaded,
    /// No sub-pipeline, route or upstream was available for the stream.
    NoRoute,
    /// The stream was cancelled (shutdown, a lost race, a dropped session).
    Cancelled,
    /// A failure inside a filter.
    Internal,
}

impl ErrorKind {
    /// A stable lower-case name, as used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::ReadFailed => "read_failed",
            ErrorKind::WriteFailed => "write_failed",
            ErrorKind::ConnectionReset => "connection_reset",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error that ends a stream: its kind, the failing side, whether a retry is safe, and the
/// underlying cause.
///
/// ```
/// use flowgate_pipeline::{ErrorKind, Side, StreamError};
/// let e = StreamError::new(ErrorKind::ConnectFailed, Side::Upstream).retry_safe(true);
/// assert!(e.is_retry_safe());
/// assert_eq!(e.to_string(), "upstream connect_failed (retry safe)");
/// ```
#[derive(Clone)]
pub struct StreamError {
    kind: ErrorKind,
    side: Side,
    retry_safe: bool,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StreamError {
    /// An error of `kind` on `side`, not safe to retry, without a cause.
    pub fn new(kind: ErrorKind, side: Side) -> Self {
        StreamError {
            kind,
            side,
            retry_safe: false,
            cause: None,
        }
    }

    /// Marks whether the failed work may be retried without side effects.
    #[must_use]
    pub fn retry_safe(mut self, safe: bool) -> Self {
        self.retry_safe = safe;
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_cause<E: std::error::Error + Send + Sync + 'static>(mut self, cause: E) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The failing side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether a retry is safe.
    pub fn is_retry_safe(&self) -> bool {
        self.retry_safe
    }

    /// The underlying cause, if any.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }
}

impl fmt::Debug for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamError")
            .field("kind", &self.kind)
            .field("side", &self.side)
            .field("retry_safe", &self.retry_safe)
            .field("cause", &self.cause.as_ref().map(|c| c.to_string()))
            .finish()
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        };
        write!(f, "{side} {}", self.kind.as_str())?;
        if self.retry_safe {
            f.write_str(" (retry safe)")?;
        }
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}
