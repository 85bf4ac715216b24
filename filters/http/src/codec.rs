//! The codec transforms: HTTP/1 bytes ↔ messages whose heads are `http` parts.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flowgate_http::h1::{
    Frame, H1Error, Limits, RequestDecoder, encode_chunk, encode_last_chunk, encode_response_head,
};
use flowgate_pipeline::Events;

use super::access_log::AccessLog;
use super::tunnel::{self, Special, Switch, UpgradeConfig, Verdict};
use flowgate_http::h1::Framing;
use flowgate_http::hop;
use flowgate_pipeline::joint::{Continued, Interim};
use flowgate_pipeline::{ErrorKind, Event, Head, Side, StreamError, Tail, Transform};
use futures_core::Stream;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, StatusCode, Version, request, response};
use std::sync::Arc;
use tokio::time::{Instant, Sleep};

/// Trailers travel in the `MessageEnd` tail as this type.
pub type Trailers = HeaderMap;

/// Whether a response with `status` is interim: 1xx other than 101 (which switches
/// protocols and is the final answer to its request). An interim response travels as a
/// bodiless message of its own, `MessageStart(response::Parts) MessageEnd(Interim)`, before
/// the request's final response.
pub(crate) fn is_interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

/// Whether `head` is an interim response head (see [`is_interim`]).
pub(crate) fn is_interim_head(head: &Head) -> bool {
    head.get::<response::Parts>()
        .is_some_and(|p| is_interim(p.status))
}

/// Whether `tail` ends an interim response.
pub(crate) fn ends_interim(tail: &Tail) -> bool {
    tail.get::<Interim>().is_some()
}

/// The end of an interim response message.
pub(crate) fn interim_end() -> Event {
    Event::MessageEnd(Tail::new(Interim))
}

/// How many interim (1xx) responses an upstream may send before the final response to one
/// request; more is an upstream protocol error ([`TooManyInterim`]).
pub(crate) const MAX_INTERIM: usize = 16;

/// An upstream sent more interim (1xx) responses to one request than `mux-http` takes
/// (16) before the final one.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent more than {MAX_INTERIM} interim (1xx) responses to one request")]
pub struct TooManyInterim;

/// A decoder failure as a stream error whose cause is the [`H1Error`].
pub(crate) fn protocol_error(e: H1Error, side: Side) -> Event {
    Event::StreamEnd(Some(
        StreamError::new(ErrorKind::Protocol, side).with_cause(e),
    ))
}

fn tail(trailers: Option<HeaderMap>) -> Tail {
    match trailers {
        Some(t) => Tail::new(t),
        None => Tail::none(),
    }
}

/// Whether the client asked to close the connection after this request.
pub(crate) fn wants_close(head: &request::Parts) -> bool {
    let has = |token: &str| hop::has_token(&head.headers, CONNECTION, token);
    match head.version {
        Version::HTTP_10 => !has("keep-alive"),
        _ => has("close"),
    }
}

/// Server side: request bytes in, request messages out. After a request that asks to close
/// the connection, further input is ignored; a malformed request ends the stream with a
/// `Protocol` error carrying the [`H1Error`].
///
/// An upgrade request ends with a [`Continued`] tail and the decoder waits for its
/// response ([`Switch`]): after a 101 the client's bytes pass as raw `Data`, otherwise
/// decoding goes on. A CONNECT's body is the tunnel (the decoder's own framing).
pub(crate) struct DecodeRequests {
    decoder: RequestDecoder,
    buf: BytesMut,
    closing: bool,
    /// The listener drains: the next request is the connection's last.
    draining: bool,
    done: bool,
    log: Option<AccessLog>,
    switch: Arc<Switch>,
    upgrade: Arc<UpgradeConfig>,
    /// Requests decoded so far.
    requests: u64,
    mode: Mode,
}

/// Where [`DecodeRequests`] is with respect to protocol switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Decoding HTTP/1 requests.
    Http,
    /// The head of an upgrade request went out; its end is next.
    UpgradeHead,
    /// Waiting for the response to the upgrade request.
    Await,
    /// Upgraded: the client's bytes pass raw.
    Raw,
}

/// Timeouts of the server side while it waits for a request head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadTimeouts {
    /// From the first byte of a head to its end.
    pub(crate) header: Duration,
    /// With no request in progress (between keep-alive requests, or before the first).
    pub(crate) idle: Duration,
}

/// [`DecodeRequests`] as a stream with its timers: a head that does not complete within
/// `header` (a slowloris client) is answered with 408 and the connection closed; a
/// connection idle for `idle` between requests is closed.
pub(crate) struct RequestStream {
    input: Events,
    decoder: DecodeRequests,
    out: VecDeque<Event>,
    timeouts: HeadTimeouts,
    timer: Pin<Box<Sleep>>,
    /// What the timer is armed for: `Some(true)` a head in progress, `Some(false)` idle.
    armed_for: Option<bool>,
    /// When that state times out. The timer may be set earlier (it is moved only when the
    /// new deadline is sooner): when it fires early it is moved here.
    deadline: Instant,
    finished: bool,
    /// Resolves when the connection's listener drains (see [`Self::drain_on`]).
    drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Draining: the input ends at the next point between requests.
    draining: bool,
}

impl RequestStream {
    pub(crate) fn new(input: Events, decoder: DecodeRequests, timeouts: HeadTimeouts) -> Self {
        RequestStream {
            input,
            decoder,
            out: VecDeque::new(),
            timeouts,
            timer: Box::pin(tokio::time::sleep(timeouts.idle)),
            armed_for: None,
            deadline: Instant::now() + timeouts.idle,
            finished: false,
            drain: None,
            draining: false,
        }
    }

    /// Once `drain` starts, the connection ends gracefully: the next request is its last
    /// (its response says `Connection: close`, see [`EncodeResponses::drain_on`]), and an
    /// idle connection is closed after [`DRAIN_IDLE`] without one (a clean end, as a
    /// client closing would). Its client reconnects to the configuration in force.
    pub(crate) fn drain_on(mut self, drain: Option<flowgate_pipeline::Drain>) -> Self {
        if drain.as_ref().is_some_and(|d| d.is_draining()) {
            self.start_draining();
        } else {
            self.drain = drain.map(|d| d.wait());
        }
        self
    }

    fn start_draining(&mut self) {
        self.draining = true;
        self.drain = None;
        self.decoder.draining = true;
        // Idle from now on closes after the grace period.
        self.timeouts.idle = self.timeouts.idle.min(DRAIN_IDLE);
        if self.armed_for == Some(false) {
            self.armed_for = None;
        }
        self.rearm();
    }

    /// Whether the armed state's deadline has passed (the timer is polled, and moved to the
    /// deadline when it fired early).
    fn timer_expired(&mut self, cx: &mut TaskCx<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                return true;
            }
            self.timer.as_mut().reset(self.deadline);
        }
        false
    }

    /// Arms the timer for the state the decoder is in, when that state changed.
    fn rearm(&mut self) {
        let waiting = self.decoder.mode == Mode::Http && self.decoder.decoder.is_idle();
        let want = waiting.then(|| !self.decoder.buf.is_empty());
        if want != self.armed_for {
            self.armed_for = want;
            if let Some(in_head) = want {
                let d = if in_head {
                    self.timeouts.header
                } else {
                    self.timeouts.idle
                };
                self.deadline = Instant::now() + d;
                // A keep-alive connection goes idle after every response: moving the timer
                // each time would take the timer wheel's lock twice per request.
                if self.timer.deadline() > self.deadline {
                    self.timer.as_mut().reset(self.deadline);
                }
            }
        }
    }
}

impl Stream for RequestStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.out.pop_front() {
                if ev.is_end() {
                    this.finished = true;
                    this.out.clear();
                }
                return Poll::Ready(Some(ev));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if this.decoder.mode == Mode::Await {
                // The socket is not read until the upgrade is decided.
                match this.decoder.switch.poll_upgraded(cx) {
                    Poll::Ready(up) => {
                        let out = &mut this.out;
                        this.decoder.resume(up, &mut |e| out.push_back(e));
                        this.rearm();
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match this.input.as_mut().poll_next(cx) {
                Poll::Ready(ev) => {
                    let out = &mut this.out;
                    this.decoder
                        .on_event(ev.unwrap_or(Event::END), &mut |e| out.push_back(e));
                    this.rearm();
                    continue;
                }
                Poll::Pending => {}
            }
            this.rearm();
            if !this.draining
                && let Some(d) = this.drain.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                this.start_draining();
            }
            if let Some(in_head) = this.armed_for
                && this.timer_expired(cx)
            {
                this.armed_for = None;
                if this.draining && !in_head {
                    // Drained and idle: a clean end.
                    this.out.push_back(Event::END);
                    continue;
                }
                let kind = if in_head {
                    ErrorKind::IdleTimeout
                } else {
                    ErrorKind::Cancelled
                };
                let e = StreamError::new(kind, Side::Downstream).with_cause(HeadTimedOut(in_head));
                this.out.push_back(Event::StreamEnd(Some(e)));
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// The request head did not arrive in time (`true`: it had started), as a stream error cause.
#[derive(Debug, thiserror::Error)]
#[error("{}", if *.0 { "request head not completed in time" } else { "idle connection closed" })]
pub(crate) struct HeadTimedOut(pub(crate) bool);

impl DecodeRequests {
    pub(crate) fn new(
        limits: Limits,
        log: Option<AccessLog>,
        switch: Arc<Switch>,
        upgrade: Arc<UpgradeConfig>,
    ) -> Self {
        DecodeRequests {
            decoder: RequestDecoder::new(limits),
            buf: BytesMut::new(),
            closing: false,
            draining: false,
            done: false,
            log,
            switch,
            upgrade,
            requests: 0,
            mode: Mode::Http,
        }
    }

    /// The upgrade request's response is known: tunnel (`true`) or go on decoding.
    pub(crate) fn resume(&mut self, upgraded: bool, out: &mut dyn FnMut(Event)) {
        if upgraded {
            self.mode = Mode::Raw;
            if !self.buf.is_empty() {
                out(Event::Data(self.buf.split().freeze()));
            }
        } else if self.closing {
            // `Connection: close, upgrade` refused: the connection ends after the response.
            self.mode = Mode::Http;
            self.done = true;
            out(Event::END);
        } else {
            self.mode = Mode::Http;
            self.drain(out, false);
        }
    }

    /// Marks a CONNECT or a passable upgrade request; strips a refused upgrade.
    fn classify(&mut self, parts: &mut request::Parts, framing: Framing) {
        self.requests += 1;
        if parts.version == Version::HTTP_10 {
            self.switch.mark_http10(!wants_close(parts));
        }
        if parts.method == Method::CONNECT {
            self.switch.mark(self.requests, Special::Connect);
        } else if tunnel::wants_upgrade(parts) {
            if framing == Framing::Empty && self.upgrade.allows(parts) {
                self.switch.mark(self.requests, Special::Upgrade);
                self.mode = Mode::UpgradeHead;
            } else {
                // Not passed on: an ordinary request (RFC 9110 §7.8 lets a server ignore it).
                parts.headers.remove(UPGRADE);
            }
        }
    }

    fn drain(&mut self, out: &mut dyn FnMut(Event), eof: bool) {
        loop {
            let r = if eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            match r {
                Ok(Some(Frame::Head(mut parts, framing))) => {
                    self.closing = wants_close(&parts) || self.draining;
                    self.classify(&mut parts, framing);
                    if let Some(l) = &self.log {
                        l.request(&parts);
                    }
                    out(Event::MessageStart(Head::new(parts)));
                }
                Ok(Some(Frame::Data(b))) => out(Event::Data(b)),
                Ok(Some(Frame::End(_))) if self.mode == Mode::UpgradeHead => {
                    // The request's child keeps its input for the tunnel's bytes.
                    self.mode = Mode::Await;
                    out(Event::MessageEnd(Tail::new(Continued)));
                    return;
                }
                Ok(Some(Frame::End(t))) => {
                    out(Event::MessageEnd(tail(t)));
                    if self.closing {
                        self.done = true;
                        out(Event::END);
                        return;
                    }
                }
                Ok(None) => {
                    if eof {
                        self.done = true;
                        out(Event::END);
                    }
                    return;
                }
                Err(e) => {
                    self.done = true;
                    out(protocol_error(e, Side::Downstream));
                    return;
                }
            }
        }
    }
}

impl Transform for DecodeRequests {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        if self.done {
            return;
        }
        match (self.mode, ev) {
            (Mode::Raw, Event::Data(b)) => out(Event::Data(b)),
            (Mode::Raw, Event::StreamEnd(e)) => {
                self.done = true;
                out(Event::StreamEnd(e));
            }
            (Mode::Await | Mode::UpgradeHead, Event::Data(b)) => self.buf.extend_from_slice(&b),
            (_, ev) => self.on_http_event(ev, out),
        }
    }
}

impl DecodeRequests {
    fn on_http_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        match ev {
            Event::Data(b) => {
                self.buf.extend_from_slice(&b);
                self.drain(out, false);
            }
            Event::StreamEnd(None) => self.drain(out, true),
            Event::StreamEnd(Some(e)) => {
                self.done = true;
                out(Event::StreamEnd(Some(e)));
            }
            _ => {}
        }
    }
}

/// How the body of an outgoing message is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    Raw,
    Chunked,
    None,
}

/// Server side: response messages in, bytes out. A response without Content-Length gets a
/// chunked body. A `Protocol` error whose cause is an [`H1Error`] becomes the matching error
/// response (400, 413, 431, 501, 505) with `connection: close`, then the end.
///
/// The response to a CONNECT or upgrade request is checked against the [`Switch`]: one
/// that opens a tunnel (101, or 2xx to CONNECT) has its body written raw and the stream
/// ends with it; a refused CONNECT gets `connection: close` and the stream ends after it.
///
/// Interim responses (1xx other than 101, see [`is_interim`]) are written as they come,
/// head only, before the final response; they are not counted as the request's response
/// (the switch and the access log see only the final one), and a client that spoke
/// HTTP/1.0 gets none (RFC 9110 §15.2).
pub(crate) struct EncodeResponses {
    /// The listener's drain signal: responses started while it drains say
    /// `Connection: close`.
    drain: Option<flowgate_pipeline::Drain>,
    mode: BodyMode,
    out: BytesMut,
    /// Between a response's head and its end.
    in_response: bool,
    /// Between an interim response's head and its end.
    in_interim: bool,
    log: Option<AccessLog>,
    switch: Arc<Switch>,
    /// Responses started so far.
    responses: u64,
    verdict: Verdict,
}

/// How long a drained HTTP/1 connection may stay idle before it is closed: a client that
/// was about to send gets its answer (with `Connection: close`) rather than a closed
/// connection.
pub(crate) const DRAIN_IDLE: Duration = Duration::from_secs(1);

impl EncodeResponses {
    /// Responses started once `drain` drains say `Connection: close`.
    pub(crate) fn drain_on(mut self, drain: Option<flowgate_pipeline::Drain>) -> Self {
        self.drain = drain;
        self
    }

    pub(crate) fn new(log: Option<AccessLog>, switch: Arc<Switch>) -> Self {
        EncodeResponses {
            drain: None,
            mode: BodyMode::Raw,
            out: BytesMut::new(),
            in_response: false,
            in_interim: false,
            log,
            switch,
            responses: 0,
            verdict: Verdict::Plain,
        }
    }
}

/// The status a failed stream is answered with, when no response has started yet: the
/// decoder's own status for a malformed request, 504 for upstream timeouts, 502 for a
/// malformed upstream response, `failure` for other upstream failures.
fn status_for(e: &StreamError, failure: u16) -> Option<u16> {
    if let Some(t) = e.cause().and_then(|c| c.downcast_ref::<HeadTimedOut>()) {
        return t.0.then_some(408);
    }
    if e.cause()
        .is_some_and(|c| c.is::<flowgate_filters_net::InternalTarget>())
    {
        return Some(403);
    }
    if let Some(h1) = e.cause().and_then(|c| c.downcast_ref::<H1Error>()) {
        return Some(if e.side() == Side::Downstream {
            h1.status()
        } else {
            502
        });
    }
    match (e.side(), e.kind()) {
        (Side::Upstream, ErrorKind::ConnectTimeout | ErrorKind::IdleTimeout) => Some(504),
        (Side::Upstream, _) => Some(failure),
        (Side::Internal, ErrorKind::NoRoute) => Some(404),
        (Side::Internal, _) => Some(500),
        (Side::Downstream, _) => None,
    }
}

/// Turns a per-request stream that fails before its response started into an error
/// response (502, 504…), so one failed request does not close a keep-alive connection. A
/// failure after the head has gone out (a truncated body) passes on and closes it.
///
/// Interim responses do not count as the start: after a 103 or a 100 the client still
/// waits for the final response, and the error response is that (a 1xx followed by a 502
/// is a well-formed exchange in both HTTP versions).
pub(crate) struct AnswerFailures {
    started: bool,
    /// The status of an upstream failure other than a timeout or a malformed response.
    failure: u16,
}

impl AnswerFailures {
    pub(crate) fn new(failure: u16) -> Self {
        AnswerFailures {
            started: false,
            failure,
        }
    }
}

impl Transform for AnswerFailures {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        match ev {
            Event::MessageStart(ref h) => {
                self.started |= !is_interim_head(h);
                out(ev);
            }
            Event::StreamEnd(Some(e)) if !self.started && e.side() != Side::Downstream => {
                match status_for(&e, self.failure) {
                    Some(status) => {
                        // A 5xx the proxy makes itself is an operator's business: say why.
                        if status >= 500 {
                            tracing::warn!(error = %e, status, "request failed; answered with an error response");
                        } else {
                            tracing::debug!(error = %e, status, "request failed; answered with an error response");
                        }
                        let (mut parts, ()) = http::Response::new(()).into_parts();
                        parts.status =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                        parts
                            .headers
                            .insert(CONTENT_LENGTH, http::HeaderValue::from_static("0"));
                        out(Event::MessageStart(Head::new(parts)));
                        out(Event::MessageEnd(Tail::none()));
                        out(Event::END);
                    }
                    None => out(Event::StreamEnd(Some(e))),
                }
            }
            other => out(other),
        }
    }
}

/// Whether the last transfer coding over all `Transfer-Encoding` fields is `chunked`.
fn ends_chunked(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked"))
}

/// The bytes of a bodiless error response.
pub(crate) fn error_response(status: u16) -> Bytes {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Error")
    ))
}

impl Transform for EncodeResponses {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        match ev {
            Event::MessageStart(head) => {
                let Some(parts) = head.get::<response::Parts>() else {
                    out(Event::StreamEnd(Some(StreamError::new(
                        ErrorKind::Internal,
                        Side::Internal,
                    ))));
                    return;
                };
                if is_interim(parts.status) {
                    // Written at its end, at once; nothing of it for an HTTP/1.0 client.
                    self.in_interim = true;
                    self.mode = BodyMode::None;
                    if !self.switch.is_http10() {
                        encode_response_head(parts, &mut self.out);
                    }
                    return;
                }
                self.in_interim = false;
                self.responses += 1;
                self.verdict = self.switch.on_response(self.responses, parts.status);
                let bodiless = parts.status.is_informational()
                    || parts.status == StatusCode::NO_CONTENT
                    || parts.status == StatusCode::NOT_MODIFIED;
                self.mode = if self.verdict == Verdict::Tunnel {
                    BodyMode::Raw
                } else if bodiless {
                    BodyMode::None
                } else if parts.headers.contains_key(CONTENT_LENGTH) {
                    BodyMode::Raw
                } else if self.switch.is_http10() {
                    // An HTTP/1.0 client cannot read chunks: the body runs until the
                    // connection closes.
                    if self.verdict == Verdict::Plain {
                        self.verdict = Verdict::Close;
                    }
                    BodyMode::Raw
                } else {
                    BodyMode::Chunked
                };
                self.in_response = true;
                if let Some(l) = &self.log {
                    l.status(parts.status.as_u16());
                }
                let draining = self.drain.as_ref().is_some_and(|d| d.is_draining())
                    && self.verdict == Verdict::Plain
                    && !parts.status.is_informational();
                if self.verdict == Verdict::Close || draining {
                    let mut closing = parts.clone();
                    closing
                        .headers
                        .insert(CONNECTION, http::HeaderValue::from_static("close"));
                    encode_response_head(&closing, &mut self.out);
                } else {
                    encode_response_head(parts, &mut self.out);
                    if self.verdict == Verdict::Plain
                        && self.switch.is_keep_alive10()
                        && !parts.headers.contains_key(CONNECTION)
                    {
                        // An HTTP/1.0 client keeps the connection only when the response
                        // says so: the field goes in before the empty line.
                        self.out.truncate(self.out.len() - 2);
                        self.out
                            .extend_from_slice(b"connection: keep-alive\r\n\r\n");
                    }
                }
                if self.mode == BodyMode::Chunked && !ends_chunked(&parts.headers) {
                    // Put the framing in before the empty line. A second field line joins
                    // the codings the body already has (an upstream's `gzip` read until
                    // close becomes `gzip, chunked`), so the client reads the chunks and
                    // still knows the codings.
                    self.out.truncate(self.out.len() - 2);
                    self.out
                        .extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                }
                if self.verdict == Verdict::Tunnel {
                    // The peer waits for this head before it speaks the new protocol.
                    out(Event::Data(self.out.split().freeze()));
                }
            }
            Event::Data(_) if self.in_interim => {}
            Event::Data(b) => {
                if let Some(l) = &self.log {
                    l.bytes(b.len());
                }
                match self.mode {
                    BodyMode::Raw => {
                        if !self.out.is_empty() {
                            out(Event::Data(self.out.split().freeze()));
                        }
                        out(Event::Data(b));
                    }
                    BodyMode::Chunked => encode_chunk(&b, &mut self.out),
                    BodyMode::None => {}
                }
            }
            Event::MessageEnd(_) if std::mem::take(&mut self.in_interim) => {
                if !self.out.is_empty() {
                    out(Event::Data(self.out.split().freeze()));
                }
            }
            Event::MessageEnd(t) => {
                self.in_response = false;
                if let Some(l) = &self.log {
                    l.done();
                }
                if self.mode == BodyMode::Chunked {
                    encode_last_chunk(t.get::<Trailers>(), &mut self.out);
                }
                if !self.out.is_empty() {
                    out(Event::Data(self.out.split().freeze()));
                }
                if self.verdict != Verdict::Plain {
                    // A tunnel closed, or a refused CONNECT: nothing more on this connection.
                    out(Event::END);
                }
            }
            Event::StreamEnd(Some(e)) => {
                if !self.out.is_empty() {
                    out(Event::Data(self.out.split().freeze()));
                }
                if let (false, Some(status)) = (self.in_response, status_for(&e, 502)) {
                    if let Some(l) = &self.log {
                        l.status(status);
                        l.done();
                    }
                    out(Event::Data(error_response(status)));
                }
                out(Event::StreamEnd(Some(e)));
            }
            Event::StreamEnd(None) => {
                if !self.out.is_empty() {
                    out(Event::Data(self.out.split().freeze()));
                }
                out(Event::END);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn decoder(switch: &Arc<Switch>, upgrade: UpgradeConfig) -> DecodeRequests {
        DecodeRequests::new(Limits::default(), None, switch.clone(), Arc::new(upgrade))
    }

    fn feed(d: &mut DecodeRequests, bytes: &'static [u8]) -> Vec<Event> {
        let mut out = Vec::new();
        d.on_event(Event::Data(Bytes::from_static(bytes)), &mut |e| out.push(e));
        out
    }

    fn upgraded(switch: &Switch) -> Poll<bool> {
        switch.poll_upgraded(&mut TaskCx::from_waker(Waker::noop()))
    }

    const WS: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn an_upgrade_request_waits_for_its_response_then_goes_raw() {
        let switch = Arc::new(Switch::default());
        let mut d = decoder(&switch, UpgradeConfig::default());
        let mut req = WS.to_vec();
        req.extend_from_slice(b"\x81\x05early");
        let out = feed(&mut d, Box::leak(req.into_boxed_slice()));
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(&out[1], Event::MessageEnd(t) if t.get::<Continued>().is_some()));
        assert_eq!(d.mode, Mode::Await);
        assert!(upgraded(&switch).is_pending());
        // Bytes that arrive meanwhile wait; they are not parsed as a request.
        assert!(feed(&mut d, b"GET / HTTP/1.1\r\n\r\n").is_empty());
        assert_eq!(
            switch.on_response(1, StatusCode::SWITCHING_PROTOCOLS),
            Verdict::Tunnel
        );
        assert_eq!(upgraded(&switch), Poll::Ready(true));
        let mut out = Vec::new();
        d.resume(true, &mut |e| out.push(e));
        assert!(
            matches!(&out[..], [Event::Data(b)] if &b[..] == b"\x81\x05earlyGET / HTTP/1.1\r\n\r\n")
        );
        assert!(matches!(&feed(&mut d, b"more")[..], [Event::Data(b)] if b == "more"));
        let mut out = Vec::new();
        d.on_event(Event::END, &mut |e| out.push(e));
        assert_eq!(flowgate_pipeline::testing::kinds_of(&out), ["StreamEnd"]);
    }

    #[test]
    fn a_refused_upgrade_goes_back_to_http() {
        let switch = Arc::new(Switch::default());
        let mut d = decoder(&switch, UpgradeConfig::default());
        feed(&mut d, WS);
        assert!(feed(&mut d, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n").is_empty());
        assert_eq!(switch.on_response(1, StatusCode::OK), Verdict::Plain);
        assert_eq!(upgraded(&switch), Poll::Ready(false));
        let mut out = Vec::new();
        d.resume(false, &mut |e| out.push(e));
        let Some(Event::MessageStart(h)) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(h.get::<request::Parts>().unwrap().uri.path(), "/next");
        assert_eq!(d.mode, Mode::Http);
    }

    #[test]
    fn an_upgrade_not_allowed_loses_its_upgrade_field() {
        let switch = Arc::new(Switch::default());
        let mut d = decoder(
            &switch,
            UpgradeConfig {
                enabled: true,
                protocols: vec!["h2c".into()],
            },
        );
        let out = feed(&mut d, WS);
        let Some(Event::MessageStart(h)) = out.first() else {
            panic!("{out:?}")
        };
        assert!(
            !h.get::<request::Parts>()
                .unwrap()
                .headers
                .contains_key(UPGRADE)
        );
        assert!(matches!(&out[1], Event::MessageEnd(t) if t.get::<Continued>().is_none()));
        assert_eq!(d.mode, Mode::Http);
        // Its response is an ordinary one.
        assert_eq!(
            switch.on_response(1, StatusCode::SWITCHING_PROTOCOLS),
            Verdict::Plain
        );
    }

    fn encode(switch: &Arc<Switch>, evs: Vec<Event>) -> (Vec<u8>, Vec<&'static str>) {
        let mut e = EncodeResponses::new(None, switch.clone());
        let mut out = Vec::new();
        for ev in evs {
            e.on_event(ev, &mut |x| out.push(x));
        }
        (
            flowgate_pipeline::testing::data_of(&out),
            flowgate_pipeline::testing::kinds_of(&out),
        )
    }

    fn head(status: StatusCode) -> Event {
        super::tunnel::response(status)
    }

    #[test]
    fn an_http10_client_gets_a_body_until_close_not_chunks() {
        let switch = Arc::new(Switch::default());
        switch.mark_http10(false);
        let (bytes, kinds) = encode(
            &switch,
            vec![
                head(StatusCode::OK),
                "abc".into(),
                Event::MessageEnd(Tail::none()),
            ],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
        assert_eq!(
            kinds.last(),
            Some(&"StreamEnd"),
            "the connection ends the body"
        );
        // With a length, nothing changes for it.
        let with_length = |switch: &Arc<Switch>| {
            let (mut parts, ()) = http::Response::new(()).into_parts();
            parts
                .headers
                .insert(CONTENT_LENGTH, http::HeaderValue::from_static("3"));
            encode(
                switch,
                vec![
                    Event::MessageStart(Head::new(parts)),
                    "abc".into(),
                    Event::MessageEnd(Tail::none()),
                ],
            )
        };
        let (bytes, kinds) = with_length(&switch);
        assert!(
            !String::from_utf8(bytes)
                .unwrap()
                .contains("connection: close")
        );
        assert_ne!(kinds.last(), Some(&"StreamEnd"));
        // A client that asked to keep the connection is told it is kept.
        switch.mark_http10(true);
        let (bytes, kinds) = with_length(&switch);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert_ne!(kinds.last(), Some(&"StreamEnd"));
    }

    #[test]
    fn a_body_read_until_close_with_codings_gets_chunked_after_them() {
        let plain = Arc::new(Switch::default());
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts
            .headers
            .insert(TRANSFER_ENCODING, http::HeaderValue::from_static("gzip"));
        let (bytes, _) = encode(
            &plain,
            vec![
                Event::MessageStart(Head::new(parts.clone())),
                "zz".into(),
                Event::MessageEnd(Tail::none()),
            ],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(
                "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n2\r\nzz\r\n"
            ),
            "{text}"
        );
        // Already chunked last: nothing added.
        parts.headers.insert(
            TRANSFER_ENCODING,
            http::HeaderValue::from_static("gzip, Chunked"),
        );
        let (bytes, _) = encode(
            &plain,
            vec![
                Event::MessageStart(Head::new(parts)),
                Event::MessageEnd(Tail::none()),
            ],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.matches("transfer-encoding").count(), 1, "{text}");
    }

    #[test]
    fn connect_responses_tunnel_or_close() {
        let switch = Arc::new(Switch::default());
        switch.mark(1, Special::Connect);
        let (bytes, kinds) = encode(
            &switch,
            vec![
                head(StatusCode::OK),
                "raw".into(),
                Event::MessageEnd(Tail::none()),
            ],
        );
        assert_eq!(bytes, b"HTTP/1.1 200 OK\r\n\r\nraw");
        // The head goes out at once (the client waits for it before it speaks), and the
        // stream ends with the tunnel.
        assert_eq!(kinds, ["Data", "Data", "StreamEnd"]);
        switch.mark(1, Special::Connect);
        let (bytes, kinds) = encode(
            &switch,
            vec![head(StatusCode::FORBIDDEN), Event::MessageEnd(Tail::none())],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert_eq!(kinds.last(), Some(&"StreamEnd"));
        // An ordinary response on a connection with no special request: chunked, no end.
        let plain = Arc::new(Switch::default());
        let (bytes, kinds) = encode(
            &plain,
            vec![
                head(StatusCode::OK),
                "x".into(),
                Event::MessageEnd(Tail::none()),
            ],
        );
        assert!(
            String::from_utf8(bytes)
                .unwrap()
                .contains("transfer-encoding: chunked")
        );
        assert!(!kinds.contains(&"StreamEnd"));
    }

    fn early_hints() -> Event {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = StatusCode::EARLY_HINTS;
        parts.headers.insert(
            http::header::LINK,
            http::HeaderValue::from_static("</a.css>; rel=preload"),
        );
        Event::MessageStart(Head::new(parts))
    }

    #[test]
    fn interim_responses_are_written_before_the_final_one() {
        let switch = Arc::new(Switch::default());
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts
            .headers
            .insert(CONTENT_LENGTH, http::HeaderValue::from_static("2"));
        let mut e = EncodeResponses::new(None, switch.clone());
        let mut out = Vec::new();
        // The interim head leaves at its end, before anything of the final response.
        for ev in [early_hints(), interim_end()] {
            e.on_event(ev, &mut |x| out.push(x));
        }
        assert_eq!(
            flowgate_pipeline::testing::data_of(&out),
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );
        out.clear();
        for ev in [
            Event::MessageStart(Head::new(parts.clone())),
            "ok".into(),
            Event::MessageEnd(Tail::none()),
        ] {
            e.on_event(ev, &mut |x| out.push(x));
        }
        assert_eq!(
            flowgate_pipeline::testing::data_of(&out),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        );
        // An HTTP/1.0 client gets no 1xx (RFC 9110 §15.2), only the final response.
        let old = Arc::new(Switch::default());
        old.mark_http10(true);
        let (bytes, kinds) = encode(
            &old,
            vec![
                early_hints(),
                interim_end(),
                Event::MessageStart(Head::new(parts)),
                "ok".into(),
                Event::MessageEnd(Tail::none()),
            ],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(!text.contains("103"), "{text}");
        assert!(!kinds.contains(&"StreamEnd"));
    }

    #[test]
    fn an_interim_response_does_not_decide_an_upgrade() {
        let switch = Arc::new(Switch::default());
        switch.mark(1, Special::Upgrade);
        let (bytes, kinds) = encode(
            &switch,
            vec![
                early_hints(),
                interim_end(),
                head(StatusCode::SWITCHING_PROTOCOLS),
                "raw".into(),
                Event::MessageEnd(Tail::none()),
            ],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{text}");
        assert!(text.contains("\r\n\r\nHTTP/1.1 101 "), "{text}");
        // The 101 opened the tunnel: raw body, then the end.
        assert!(text.ends_with("\r\n\r\nraw"), "{text}");
        assert_eq!(kinds.last(), Some(&"StreamEnd"));
    }

    #[test]
    fn upstream_failures_get_the_chosen_status_and_timeouts_504() {
        let status = |failure: u16, e: StreamError| {
            let mut a = AnswerFailures::new(failure);
            let mut out = Vec::new();
            a.on_event(Event::StreamEnd(Some(e)), &mut |x| out.push(x));
            out.iter().find_map(|e| match e {
                Event::MessageStart(h) => h.get::<response::Parts>().map(|p| p.status.as_u16()),
                _ => None,
            })
        };
        let refused = || StreamError::new(ErrorKind::ConnectFailed, Side::Upstream);
        let timed_out = || StreamError::new(ErrorKind::IdleTimeout, Side::Upstream);
        assert_eq!(status(502, refused()), Some(502));
        assert_eq!(status(503, refused()), Some(503));
        assert_eq!(status(503, timed_out()), Some(504));
        assert_eq!(
            status(
                503,
                StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)
            ),
            Some(503)
        );
    }

    #[test]
    fn a_failure_after_an_interim_response_still_gets_an_error_response() {
        let run = |evs: Vec<Event>| {
            let mut a = AnswerFailures::new(502);
            let mut out = Vec::new();
            for ev in evs {
                a.on_event(ev, &mut |x| out.push(x));
            }
            out
        };
        let failed = StreamError::new(ErrorKind::ConnectionReset, Side::Upstream);
        let out = run(vec![
            early_hints(),
            interim_end(),
            Event::StreamEnd(Some(failed.clone())),
        ]);
        // The 103 went on; the client still waits for a final response, and gets 502.
        let statuses: Vec<u16> = out
            .iter()
            .filter_map(|e| match e {
                Event::MessageStart(h) => h.get::<response::Parts>().map(|p| p.status.as_u16()),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [103, 502]);
        assert!(
            matches!(out.last(), Some(Event::StreamEnd(None))),
            "{out:?}"
        );
        // After a final head the failure passes on (a truncated response).
        let out = run(vec![head(StatusCode::OK), Event::StreamEnd(Some(failed))]);
        assert!(
            matches!(out.last(), Some(Event::StreamEnd(Some(_)))),
            "{out:?}"
        );
    }
}
