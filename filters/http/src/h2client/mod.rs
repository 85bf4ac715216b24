//! The HTTP/2 client side of `mux-http`: requests as streams multiplexed over pooled
//! upstream connections.
//!
//! ```text
//!  request stream ─┐  (polled inline in the downstream connection's task)
//!  request stream ─┼─ pick: a connection with a free stream slot, or a new one
//!  request stream ─┘        │
//!                           ▼  SendRequest (h2)            one task per upstream connection
//!                ┌────────────────────────────────┐    ┌──────────────────────────────────┐
//!                │ h2 streams: HEADERS, DATA as   │◀──▶│ h2 Connection over EventIo:       │
//!                │ the window allows, trailers    │    │ writes → sub-pipeline input feed │
//!                └────────────────────────────────┘    │ reads  ← sub-pipeline output     │
//!                                                      │ idle close, PING, SETTINGS limit │
//!                                                      └──────────────────────────────────┘
//! ```
//!
//! The `h2` crate does the protocol. One upstream connection is one instance of the
//! sub-pipeline (`[connect]`, or `[connect-tls → connect]` with ALPN `h2`) driven by an
//! `h2::client::Connection` in its own task on the current worker, like a `Mux` session;
//! `EventIo` turns the sub-pipeline's events into the `AsyncRead + AsyncWrite` h2 wants
//! and keeps the sub-pipeline's own error (a refused connect, a TLS failure) so requests
//! fail with it rather than with h2's bare I/O error. Connections are pooled per worker
//! thread; each carries up to `min(max_concurrent_streams, the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS)` requests at once, and a new one is opened when all
//! are full.
//!
//! A request stream is one future, polled inline by the `mux-http` stream that owns it (no
//! task per request): it sends the head (one HEADERS frame with END_STREAM when there is no
//! body), uploads the body as the stream's send window allows and reads the next event
//! only then, and hands the response on, releasing receive window only as the pipeline
//! takes the data. So both directions follow the pipeline's back-pressure. Interim
//! responses (103 Early Hints, 100 Continue; h2's `poll_informational`) are handed on as
//! they arrive, before the final head; a 101, which HTTP/2 does not have, fails the
//! request.
//!
//! Failures: a connection that is going away (GOAWAY) or broken takes no new requests; a
//! request that could not be started on it is started on another connection (up to three
//! tries) and then fails as retry-safe. A stream the server refused (REFUSED_STREAM, or
//! above the last stream id of a graceful GOAWAY) was not processed: a request without a
//! body is sent again at once (up to six sends), one with a body fails retry-safe so that
//! `retry` can send it again. Any other reset is a plain upstream failure: a 502 before the
//! response head, an aborted response after. One stream's failure never touches the
//! connection's others.
//!
//! Servers that retire connections after so many requests: the streams sent in the round
//! trip before their GOAWAY arrives are refused, so the pool learns the limit (the same
//! accepted count on two connections in a row, see [`Budget`]) and then stops each
//! connection there. hypercorn (0.18, python-h2) breaks its own GOAWAY: it answers none of
//! the streams in flight, even those the GOAWAY says it took, and fails the connection on
//! any frame after it; a PING sent on every GOAWAY (see [`Pinger`]) makes that happen at
//! once, and idempotent requests without a body that it dropped are sent again.
//!
//! By concern: this file has the configuration (`protocol:`, `http2:`, whose HTTP/2
//! settings take their defaults and ranges from [`flowgate_http::h2::Settings`]) and the
//! request head conversion; `pool` the per-worker connections and stream slots, `conn`
//! one connection's task, `ping` keep-alive and GOAWAY probes, `request` sending a
//! request (and sending it again), `response` handing the response on, `error` the
//! failures and which of them are safe to retry.
//!
//! [`Budget`]: pool::Budget
//! [`Pinger`]: ping::Pinger

mod conn;
mod error;
mod ping;
mod pool;
mod request;
mod response;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use flowgate_http::h2::{Settings, SettingsError, request_to_h2};
use http::Request;
use http::uri::Scheme;
use serde::{Deserialize, Serialize};

pub use error::H2ClientError;
pub(crate) use pool::H2Pool;

/// The HTTP version `mux-http` speaks to its upstreams (`protocol:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 keep-alive connections, one request at a time each (the default).
    #[default]
    Http1,
    /// HTTP/2: h2c with prior knowledge over `connect`, or h2 over `connect-tls` (give it
    /// `alpn: [h2]`); many requests share a connection.
    Http2,
    /// Chosen by TLS ALPN: HTTP/2 when the upstream picks `h2`, HTTP/1.1 when it picks
    /// `http/1.1` or nothing, and HTTP/1.1 over plain TCP (h2c needs prior knowledge).
    /// Give `connect-tls` `alpn: [h2, http/1.1]`. Decided once per filter, by the first
    /// connection (a probe that sends no request), and kept until the configuration is
    /// replaced.
    Auto,
}

/// The `:scheme` sent to an HTTP/2 upstream for requests that came without one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamScheme {
    /// `http` (the default; h2c).
    #[default]
    Http,
    /// `https` (h2 over `connect-tls`).
    Https,
}

/// HTTP/2 settings and limits of `mux-http` towards its upstreams (`http2:`), used when
/// `protocol: http2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2UpstreamConfig {
    /// Requests one connection carries at once; the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS lowers it. Default 100.
    #[serde(default = "crate::http2::d_streams")]
    pub max_concurrent_streams: u32,
    /// Largest decoded response header list in bytes (RFC 9113 accounting); a bigger one
    /// fails the request (502). Default 64 KiB.
    #[serde(default = "crate::http2::d_header_list")]
    pub max_header_list_size: u32,
    /// Each stream's receive window in bytes. Default 1 MiB.
    #[serde(default = "crate::http2::d_window")]
    pub initial_window_size: u32,
    /// The connection's receive window in bytes. Default 4 MiB.
    #[serde(default = "crate::http2::d_conn_window")]
    pub initial_connection_window_size: u32,
    /// Largest frame payload the server may send (16 KiB to 16 MiB). Default 16 KiB.
    #[serde(default = "crate::http2::d_frame")]
    pub max_frame_size: u32,
    /// `:scheme` for requests whose URI has none: `http` (default) or `https`.
    #[serde(default)]
    pub scheme: UpstreamScheme,
    /// Send a PING this often and close the connection when no answer comes within
    /// `keepalive_timeout`. Default off.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "flowgate_pipeline::serde_duration::option"
    )]
    pub keepalive_interval: Option<Duration>,
    /// How long a PING answer may take. Default 20 s.
    #[serde(default = "d_ping_timeout", with = "flowgate_pipeline::serde_duration")]
    pub keepalive_timeout: Duration,
    /// Connections each worker keeps to the upstream at most. When all of them carry
    /// their `max_concurrent_streams`, a request waits for a stream to end (or a
    /// connection to close) instead of opening another. Default 64.
    #[serde(default = "d_max_conns")]
    pub max_connections: u32,
}

fn d_ping_timeout() -> Duration {
    Duration::from_secs(20)
}
fn d_max_conns() -> u32 {
    64
}

impl Default for Http2UpstreamConfig {
    fn default() -> Self {
        Http2UpstreamConfig {
            max_concurrent_streams: crate::http2::d_streams(),
            max_header_list_size: crate::http2::d_header_list(),
            initial_window_size: crate::http2::d_window(),
            initial_connection_window_size: crate::http2::d_conn_window(),
            max_frame_size: crate::http2::d_frame(),
            scheme: UpstreamScheme::Http,
            keepalive_interval: None,
            keepalive_timeout: d_ping_timeout(),
            max_connections: d_max_conns(),
        }
    }
}

impl Http2UpstreamConfig {
    /// The HTTP/2 settings this configuration sets (`max_concurrent_streams` caps the
    /// requests of one connection; it is not sent).
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            max_concurrent_streams: self.max_concurrent_streams,
            max_header_list_size: self.max_header_list_size,
            initial_window_size: self.initial_window_size,
            initial_connection_window_size: self.initial_connection_window_size,
            max_frame_size: self.max_frame_size,
        }
    }

    /// Checks the values against what HTTP/2 allows ([`Settings::validate`]) and the
    /// pool's own bounds.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        self.settings().validate().map_err(SettingsError::as_str)?;
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1");
        }
        if self.keepalive_interval.is_some_and(|d| d.is_zero()) || self.keepalive_timeout.is_zero()
        {
            return Err("keepalive_interval and keepalive_timeout must be more than zero");
        }
        Ok(())
    }

    fn builder(&self) -> h2::client::Builder {
        let s = self.settings();
        let mut b = h2::client::Builder::new();
        b.max_header_list_size(s.max_header_list_size)
            .initial_window_size(s.initial_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .max_frame_size(s.max_frame_size)
            // We never accept pushed streams.
            .enable_push(false);
        b
    }
}

impl UpstreamScheme {
    fn scheme(self) -> Scheme {
        match self {
            UpstreamScheme::Http => Scheme::HTTP,
            UpstreamScheme::Https => Scheme::HTTPS,
        }
    }
}

/// The HTTP/2 form of a pipeline request head ([`request_to_h2`]), with `scheme` for a URI
/// that has none.
fn h2_request(parts: &http::request::Parts, scheme: UpstreamScheme) -> Request<()> {
    request_to_h2(parts, &scheme.scheme())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
