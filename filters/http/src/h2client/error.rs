//! Why HTTP/2 requests to an upstream fail, and how an h2 error becomes the request's
//! stream error (refused or lost to a GOAWAY: safe to send again; otherwise an upstream
//! failure, or the sub-pipeline's own error when that is what ended the connection).

use std::sync::atomic::Ordering;
use std::time::Duration;

use flowgate_pipeline::{ErrorKind, Side, StreamError};
use h2::Reason;

use super::pool::Conn;

/// Why an HTTP/2 request to an upstream failed, as the cause of its stream error.
#[derive(Debug, thiserror::Error)]
pub enum H2ClientError {
    /// The h2 protocol engine failed on this stream or its connection.
    #[error("HTTP/2 upstream: {0}")]
    Protocol(#[from] h2::Error),
    /// The HTTP/2 client could not start over the sub-pipeline.
    #[error("HTTP/2 upstream handshake did not start")]
    Handshake,
    /// A keep-alive PING got no answer in time.
    #[error("HTTP/2 upstream did not answer a PING within {0:?}")]
    KeepaliveTimeout(Duration),
    /// The request stream ended before its message did.
    #[error("the request ended before its body was complete")]
    TruncatedRequest,
    /// The request stream carried something other than a request head.
    #[error("expected an HTTP request head")]
    NotARequest,
    /// The upstream answered 101, which HTTP/2 does not have (RFC 9113 §8.6).
    #[error("HTTP/2 upstream answered 101 Switching Protocols")]
    SwitchingProtocols,
}

/// Whether the server said it did not process the stream (RFC 9113 §8.7): REFUSED_STREAM,
/// or a stream above the last one a graceful GOAWAY kept.
pub(super) fn is_refused(e: &h2::Error) -> bool {
    e.is_remote()
        && ((e.is_reset() && e.reason() == Some(Reason::REFUSED_STREAM))
            || (e.is_go_away() && e.reason() == Some(Reason::NO_ERROR)))
}

pub(super) fn upstream_error(e: h2::Error, conn: &Conn) -> StreamError {
    // Refused streams were never processed: safe to send again.
    let refused = is_refused(&e);
    if !refused && let Some(f) = conn.failure() {
        return f;
    }
    let kind = if e.is_io() || e.is_go_away() || e.is_reset() {
        ErrorKind::ConnectionReset
    } else {
        ErrorKind::Protocol
    };
    StreamError::new(kind, Side::Upstream)
        .retry_safe(refused)
        .with_cause(H2ClientError::Protocol(e))
}

/// Whether `e` says the connection (not the request) is unusable.
pub(super) fn is_connection_error(e: &h2::Error) -> bool {
    e.is_io() || e.is_go_away() || e.reason().is_some()
}

/// Whether the stream failed because the server retired its connection and then did not
/// finish it: a GOAWAY with an error, or the connection closing after a GOAWAY (hypercorn
/// does both, see [`Pinger`]). Not a reset of this one stream, nor a connection that
/// failed for another reason (a keep-alive timeout): those are left to `retry`.
///
/// [`Pinger`]: super::ping::Pinger
pub(super) fn is_lost_to_goaway(e: &h2::Error, conn: &Conn) -> bool {
    (e.is_go_away() && e.is_remote())
        || ((e.is_io() || e.is_go_away()) && conn.went_away.load(Ordering::Relaxed))
}

/// A stream refused because of a graceful GOAWAY: noted on its connection, whose server
/// then has shown how many streams it takes (see [`Budget`]).
///
/// [`Budget`]: super::pool::Budget
pub(super) fn note_refusal(e: &h2::Error, conn: &Conn, id: h2::StreamId) {
    if is_refused(e) && e.is_go_away() {
        conn.refused_by_goaway(id.as_u32());
    }
}
