//! `ConnectTls`: originates TLS over a sub-pipeline that carries the ciphertext.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use flowgate_pipeline::feed::{FeedSender, feed};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Side, StreamError, SubPipeline,
    error_stream,
};
use futures_core::Stream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use serde_json::{Value, json};
use tokio::time::Sleep;

use super::DEFAULT_MAX_FEED;
use super::session::{Session, TlsError};

/// Originates TLS: encrypts its input (plaintext) into its sub-pipeline, usually
/// `[connect]`, and decrypts what the sub-pipeline outputs.
///
/// The handshake starts when the stream does; input is read once it is done. The end of the
/// input sends `close_notify` and ends the sub-pipeline's input; the stream ends when the
/// sub-pipeline's output does. A failed handshake (an untrusted certificate, a wrong name,
/// bad bytes) or one that does not finish within the handshake timeout ends the stream with
/// an [`ErrorKind::Tls`] error on the [`Side::Upstream`]. The stream's context is shared with
/// the sub-pipeline and left as it is: its TLS facts stay those of the downstream side.
pub struct ConnectTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    sub: SubPipeline,
    handshake_timeout: Duration,
    max_feed: usize,
    options: Option<Value>,
}

impl ConnectTls {
    /// Connects with `config` to the server called `server_name` (sent as SNI when it is a
    /// DNS name, and checked against the server's certificate) over `sub`.
    pub fn new(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        sub: impl Into<SubPipeline>,
    ) -> Self {
        ConnectTls {
            config,
            server_name,
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

impl Filter for ConnectTls {
    fn describe(&self) -> Description {
        let options = self.options.clone().unwrap_or_else(|| {
            json!({
                "sni": self.server_name.to_str(),
                "handshake_timeout": flowgate_pipeline::serde_duration::format(self.handshake_timeout),
                "max_feed": self.max_feed,
            })
        });
        Description::filter("connect-tls")
            .options(options)
            .with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let conn = match ClientConnection::new(self.config.clone(), self.server_name.clone()) {
            Ok(c) => c,
            Err(e) => {
                return error_stream(
                    StreamError::new(ErrorKind::Tls, Side::Internal).with_cause(TlsError::Setup(e)),
                );
            }
        };
        let negotiated = cx.get::<crate::Negotiated>();
        if let Some(n) = &negotiated {
            n.tls_started();
        }
        let mut tls = Session::new(conn, Side::Upstream);
        let (feed, rx) = feed();
        if let Some(hello) = tls.take_outgoing() {
            feed.push(Event::Data(hello));
        }
        let sub_out = self.sub.attach(Box::pin(rx), cx);
        Box::pin(ConnectStream {
            input,
            input_open: true,
            tls,
            feed,
            sub_out,
            out: VecDeque::new(),
            timer: None,
            timeout: self.handshake_timeout,
            max_feed: self.max_feed,
            done: false,
            negotiated,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

struct ConnectStream {
    input: Events,
    input_open: bool,
    tls: Session,
    feed: FeedSender,
    sub_out: Events,
    out: VecDeque<Event>,
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    max_feed: usize,
    done: bool,
    /// Told the ALPN result when the handshake is done, if someone asked.
    negotiated: Option<crate::Negotiated>,
}

impl ConnectStream {
    /// Sends pending ciphertext (handshake messages, alerts) to the upstream.
    fn flush(&mut self) {
        if let Some(b) = self.tls.take_outgoing() {
            self.feed.push(Event::Data(b));
        }
    }

    fn finish(&mut self, end: Option<StreamError>) {
        if let Some(e) = &end {
            self.flush();
            self.feed.push(Event::StreamEnd(Some(e.clone())));
        }
        self.out.push_back(Event::StreamEnd(end));
        self.done = true;
    }

    fn fail(&mut self, e: TlsError) {
        let e = self.tls.error(e);
        self.finish(Some(e));
    }

    /// Polls the sub-pipeline's output (ciphertext from the upstream) once.
    fn poll_upstream(&mut self, task: &mut TaskCx<'_>) -> bool {
        let ev = match self.sub_out.as_mut().poll_next(task) {
            Poll::Pending => return false,
            Poll::Ready(ev) => ev.unwrap_or(Event::END),
        };
        match ev {
            Event::Data(b) => match self.tls.receive(&b) {
                Ok(r) => {
                    self.flush();
                    if !r.plain.is_empty() {
                        self.out.push_back(Event::Data(r.plain));
                    }
                    if !self.tls.is_handshaking() {
                        self.timer = None;
                        if let Some(n) = self.negotiated.take() {
                            n.tls_done(self.tls.info().alpn);
                        }
                    }
                }
                Err(e) => self.fail(e),
            },
            Event::StreamEnd(None) if self.tls.is_handshaking() => {
                self.fail(TlsError::ClosedInHandshake);
            }
            Event::StreamEnd(None) => match self.tls.receive_eof() {
                Ok(r) => {
                    if !r.plain.is_empty() {
                        self.out.push_back(Event::Data(r.plain));
                    }
                    if !r.closed {
                        tracing::debug!("TLS upstream closed without close_notify");
                    }
                    self.finish(None);
                }
                Err(e) => self.fail(e),
            },
            Event::StreamEnd(Some(e)) => self.finish(Some(e)),
            Event::MessageStart(_) | Event::MessageEnd(_) => {}
        }
        true
    }

    /// Reads one input event once the handshake is done and the upstream has room.
    fn poll_input(&mut self, task: &mut TaskCx<'_>) -> bool {
        if !self.input_open || self.tls.is_handshaking() || self.feed.len() >= self.max_feed {
            return false;
        }
        match self.input.as_mut().poll_next(task) {
            Poll::Pending => return false,
            Poll::Ready(Some(Event::Data(b))) => match self.tls.send(&b) {
                Ok(c) if !c.is_empty() => {
                    self.feed.push(Event::Data(c));
                }
                Ok(_) => {}
                Err(e) => self.fail(e),
            },
            Poll::Ready(Some(Event::StreamEnd(None)) | None) => {
                self.input_open = false;
                if let Some(b) = self.tls.close() {
                    self.feed.push(Event::Data(b));
                }
                self.feed.push(Event::END);
            }
            Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                self.input_open = false;
                self.finish(Some(e));
            }
            Poll::Ready(Some(_)) => {}
        }
        true
    }

    fn poll_timer(&mut self, task: &mut TaskCx<'_>) -> bool {
        if !self.tls.is_handshaking() {
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

impl Stream for ConnectStream {
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
            if this.poll_upstream(task) || this.poll_input(task) || this.poll_timer(task) {
                continue;
            }
            return Poll::Pending;
        }
    }
}
