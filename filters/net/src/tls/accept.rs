//! `AcceptTls`: terminates TLS and runs a sub-pipeline on the plaintext.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::Bytes;
use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Side, StreamError, SubPipeline,
    error_stream,
};
use futures_core::Stream;
use rustls::{ServerConfig, ServerConnection};
use serde_json::{Value, json};
use tokio::time::Sleep;

use super::DEFAULT_MAX_FEED;
use super::session::{Session, TlsError};

/// Terminates TLS: decrypts its input (ciphertext from a client), runs its sub-pipeline on
/// the plaintext, and encrypts the sub-pipeline's output back to the client.
///
/// The sub-pipeline starts when the handshake is done, sharing the stream's context, in
/// which [`ConnInfo::tls`](flowgate_pipeline::ConnInfo) then holds the SNI, the ALPN
/// protocol, the TLS version and the client certificate's identity. When the sub-pipeline's
/// output ends, `close_notify` is sent and the stream ends. A `close_notify` from the client,
/// or the end of the input after the handshake, ends the sub-pipeline's input. A handshake
/// that fails (bad bytes, a rejected client certificate) or does not finish within the
/// handshake timeout sends the alert rustls produced, if any, and ends the stream with an
/// [`ErrorKind::Tls`] error on the [`Side::Downstream`].
pub struct AcceptTls {
    config: Arc<ServerConfig>,
    sub: SubPipeline,
    handshake_timeout: Duration,
    max_feed: usize,
    options: Option<Value>,
}

impl AcceptTls {
    /// Terminates TLS with `config` and runs `sub` on the plaintext.
    pub fn new(config: Arc<ServerConfig>, sub: impl Into<SubPipeline>) -> Self {
        AcceptTls {
            config,
            sub: sub.into(),
            handshake_timeout: Duration::from_secs(10),
            max_feed: DEFAULT_MAX_FEED,
            options: None,
        }
    }

    /// How long the handshake may take (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Stop reading input while `n` events wait for the sub-pipeline (default 64).
    #[must_use]
    pub fn max_feed(mut self, n: usize) -> Self {
        self.max_feed = n.max(1);
        self
    }

    /// Describes the filter by its configuration.
    pub(super) fn described_by(mut self, config: &impl serde::Serialize) -> Self {
        self.options = serde_json::to_value(config).ok();
        self
    }
}

impl Filter for AcceptTls {
    fn describe(&self) -> Description {
        let options = self.options.clone().unwrap_or_else(|| {
            let alpn: Vec<String> = self
                .config
                .alpn_protocols
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            json!({
                "alpn": alpn,
                "handshake_timeout": flowgate_pipeline::serde_duration::format(self.handshake_timeout),
                "max_feed": self.max_feed,
            })
        });
        Description::filter("accept-tls")
            .options(options)
            .with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let conn = match ServerConnection::new(self.config.clone()) {
            Ok(c) => c,
            Err(e) => {
                return error_stream(
                    StreamError::new(ErrorKind::Tls, Side::Internal).with_cause(TlsError::Setup(e)),
                );
            }
        };
        Box::pin(AcceptStream {
            input,
            input_open: true,
            seen_bytes: false,
            tls: Session::new(conn, Side::Downstream),
            sub: self.sub.clone(),
            cx: cx.clone(),
            child: None,
            out: VecDeque::new(),
            timer: None,
            timeout: self.handshake_timeout,
            max_feed: self.max_feed,
            done: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

/// The running sub-pipeline.
struct Child {
    feed: FeedSender,
    out: Events,
}

struct AcceptStream {
    input: Events,
    input_open: bool,
    seen_bytes: bool,
    tls: Session,
    sub: SubPipeline,
    cx: Context,
    child: Option<Child>,
    out: VecDeque<Event>,
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    max_feed: usize,
    done: bool,
}

impl AcceptStream {
    /// Queues ciphertext for the client.
    fn flush(&mut self) {
        if let Some(b) = self.tls.take_outgoing() {
            self.out.push_back(Event::Data(b));
        }
    }

    /// Ends the stream: pending ciphertext (an alert, `close_notify`), then `end`.
    fn finish(&mut self, end: Option<StreamError>) {
        self.flush();
        if let (Some(e), Some(child)) = (&end, &self.child) {
            child.feed.push(Event::StreamEnd(Some(e.clone())));
        }
        self.out.push_back(Event::StreamEnd(end));
        self.done = true;
    }

    fn fail(&mut self, e: TlsError) {
        let e = self.tls.error(e);
        self.finish(Some(e));
    }

    fn on_ciphertext(&mut self, b: &Bytes) {
        self.seen_bytes |= !b.is_empty();
        match self.tls.receive(b) {
            Ok(r) => self.on_received(r.plain, r.closed),
            Err(e) => self.fail(e),
        }
    }

    fn on_input_end(&mut self) {
        self.input_open = false;
        if self.child.is_none() {
            if self.seen_bytes {
                self.fail(TlsError::ClosedInHandshake);
            } else {
                // A connection that closes without a byte (a port check) is no failure.
                self.finish(None);
            }
            return;
        }
        match self.tls.receive_eof() {
            Ok(r) => {
                if !r.closed {
                    tracing::debug!(peer = ?self.cx.conn().peer, "TLS client closed without close_notify");
                }
                self.on_received(r.plain, true);
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_received(&mut self, plain: Bytes, closed: bool) {
        self.flush();
        if self.child.is_none() && !self.tls.is_handshaking() {
            self.start_child();
        }
        let Some(child) = &self.child else {
            return;
        };
        if !plain.is_empty() {
            child.feed.push(Event::Data(plain));
        }
        if closed {
            child.feed.push(Event::END);
            self.input_open = false;
        }
    }

    /// Records the handshake's facts, then starts the sub-pipeline.
    fn start_child(&mut self) {
        self.timer = None;
        let info = Arc::new(self.tls.info());
        tracing::debug!(sni = ?info.sni, version = ?info.version, "TLS handshake done");
        self.cx.update_conn(|c| c.tls = Some(info));
        let (feed, rx) = feed();
        let out = self.sub.attach(Box::pin(rx), &self.cx);
        self.child = Some(Child { feed, out });
    }

    /// Polls the sub-pipeline's output once. Returns whether anything happened.
    fn poll_child(&mut self, task: &mut TaskCx<'_>) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        let ev = match child.out.as_mut().poll_next(task) {
            Poll::Pending => return false,
            Poll::Ready(ev) => ev.unwrap_or(Event::END),
        };
        match ev {
            Event::Data(b) => match self.tls.send(&b) {
                Ok(c) if !c.is_empty() => self.out.push_back(Event::Data(c)),
                Ok(_) => {}
                Err(e) => self.fail(e),
            },
            Event::StreamEnd(None) => {
                if let Some(b) = self.tls.close() {
                    self.out.push_back(Event::Data(b));
                }
                self.finish(None);
            }
            Event::StreamEnd(Some(e)) => self.finish(Some(e)),
            Event::MessageStart(_) | Event::MessageEnd(_) => {}
        }
        true
    }

    /// Reads one input event if the sub-pipeline has room. Returns whether one was read.
    fn poll_input(&mut self, task: &mut TaskCx<'_>) -> bool {
        if !self.input_open
            || self
                .child
                .as_ref()
                .is_some_and(|c| c.feed.len() >= self.max_feed)
        {
            return false;
        }
        match self.input.as_mut().poll_next(task) {
            Poll::Pending => return false,
            Poll::Ready(Some(Event::Data(b))) => self.on_ciphertext(&b),
            Poll::Ready(Some(Event::StreamEnd(None)) | None) => self.on_input_end(),
            Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                self.input_open = false;
                self.finish(Some(e));
            }
            Poll::Ready(Some(_)) => {}
        }
        true
    }

    /// Polls the handshake timer. Returns whether it fired.
    fn poll_timer(&mut self, task: &mut TaskCx<'_>) -> bool {
        if self.child.is_some() {
            return false;
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(task).is_pending() {
            return false;
        }
        self.fail(TlsError::HandshakeTimeout(timeout));
        true
    }
}

impl Stream for AcceptStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.out.pop_front() {
                return Poll::Ready(Some(ev));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.poll_child(task) || this.poll_input(task) || this.poll_timer(task) {
                continue;
            }
            return Poll::Pending;
        }
    }
}
