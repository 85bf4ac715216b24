//! `decode-dns` and `encode-dns`: DNS messages from and to UDP datagrams and TCP streams.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use flowgate_dns::types::rcode;
use flowgate_dns::{
    Header, Limits, WireInfo, answer_code, error_response, formerr, truncate, validate,
};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::server::Datagram;
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Side, StreamError, Tail, Transform,
    TransformStream,
};
use futures_core::Stream;
use serde::{Deserialize, Serialize};

use super::{DnsQuery, Gather, Transport, emit};

// === DecodeDns ===

/// Configuration of [`DecodeDns`] (`decode-dns:` in YAML).
///
/// ```yaml
/// - decode-dns: { max_records: 64, tcp_idle_timeout: 10s, tcp_message_timeout: 5s }
/// ```
///
/// The two TCP timeouts close connections that hold a socket without asking anything (RFC
/// 7766 §6.2.3): one that sends nothing, and one that sends part of a message (a length
/// prefix announcing more bytes than ever come, or a message dribbled a byte at a time).
/// Answers still being resolved are sent before the connection closes. UDP sessions are
/// ended by the listener's `udp_idle_timeout` instead; the number of TCP clients at once is
/// the listener's `max_connections`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeDnsConfig {
    /// The largest query accepted, in bytes. Default 4096 (a query is a few dozen bytes;
    /// anything near this is not a query a resolver sends).
    #[serde(default = "default_max_query")]
    pub max_query: usize,
    /// The most records in a query (OPT, TSIG, a few EDNS-carrying extras). Default 8.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Over TCP: a connection that starts no message for this long — from when it opened,
    /// or from the last whole message it sent — is closed. Default 10 s.
    #[serde(
        default = "default_tcp_idle",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub tcp_idle_timeout: Duration,
    /// Over TCP: once the first byte of a message has arrived, the whole message must
    /// arrive within this, or the connection is closed (more bytes do not extend it).
    /// Default 5 s.
    #[serde(
        default = "default_tcp_message",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub tcp_message_timeout: Duration,
}

fn default_max_query() -> usize {
    4096
}
fn default_max_records() -> usize {
    8
}
fn default_tcp_idle() -> Duration {
    Duration::from_secs(10)
}
fn default_tcp_message() -> Duration {
    Duration::from_secs(5)
}

impl Default for DecodeDnsConfig {
    fn default() -> Self {
        DecodeDnsConfig {
            max_query: default_max_query(),
            max_records: default_max_records(),
            tcp_idle_timeout: default_tcp_idle(),
            tcp_message_timeout: default_tcp_message(),
        }
    }
}

impl FilterConfig for DecodeDnsConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_query < 17 {
            return Err(ConfigError::new("max_query", "must be at least 17 bytes"));
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "tcp_idle_timeout",
                "must be more than zero",
            ));
        }
        if self.tcp_message_timeout.is_zero() {
            return Err(ConfigError::new(
                "tcp_message_timeout",
                "must be more than zero",
            ));
        }
        Ok(Arc::new(DecodeDns::new(*self)))
    }
}

/// Turns UDP datagrams or TCP bytes into DNS query messages.
///
/// Every query passes the `flowgate-dns` validation pass (limits, pointer loops, label and
/// name lengths, counts). Bytes that fail it are answered FORMERR (as an answered message,
/// so later filters pass it through) when they carry a query header, and dropped otherwise;
/// responses are always dropped; opcodes other than QUERY get NOTIMP. The stream goes on
/// either way, so one bad datagram does not cost a client its session.
///
/// Over TCP the stream ends (with an `IdleTimeout` error) when the client starts no
/// message for `tcp_idle_timeout`, or does not finish one within `tcp_message_timeout`.
/// UDP sessions (`ConnInfo::datagram`) take the synchronous path, without a timer.
#[derive(Clone, Debug, Default)]
pub struct DecodeDns {
    config: DecodeDnsConfig,
}

impl DecodeDns {
    /// A decoder with `config`.
    pub fn new(config: DecodeDnsConfig) -> Self {
        DecodeDns { config }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_message: self.config.max_query,
            max_records: self.config.max_records,
            ..Limits::default()
        }
    }
}

impl Filter for DecodeDns {
    fn describe(&self) -> Description {
        Description::filter("decode-dns").options(&self.config)
    }

    fn transform(&self, cx: &Context) -> Option<Box<dyn Transform>> {
        // Datagram sessions need no timer: the synchronous path, fused with the filters
        // around it. A TCP stream gets `attach`, with its deadlines.
        let (datagram, peer) = cx.update_conn(|c| (c.datagram, c.peer));
        datagram.then(|| Box::new(self.decoding(peer)) as Box<dyn Transform>)
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let (datagram, peer) = cx.update_conn(|c| (c.datagram, c.peer));
        let decoding = self.decoding(peer);
        if datagram {
            return Box::pin(TransformStream::new(input, vec![Box::new(decoding)]));
        }
        Box::pin(TcpDecoding {
            input,
            decoding,
            out: VecDeque::new(),
            idle: self.config.tcp_idle_timeout,
            message: self.config.tcp_message_timeout,
            deadline: tokio::time::Instant::now() + self.config.tcp_idle_timeout,
            timer: None,
            datagrams: false,
            input_done: false,
            finished: false,
        })
    }
}

impl DecodeDns {
    fn decoding(&self, peer: Option<std::net::SocketAddr>) -> Decoding {
        Decoding {
            limits: self.limits(),
            peer,
            datagram: None,
            udp_first: None,
            udp_more: Vec::new(),
            tcp: BytesMut::new(),
            tcp_messages: 0,
        }
    }
}

struct Decoding {
    limits: Limits,
    peer: Option<std::net::SocketAddr>,
    datagram: Option<Datagram>,
    udp_first: Option<Bytes>,
    udp_more: Vec<u8>,
    tcp: BytesMut,
    /// Whole TCP messages received so far (the deadlines restart at each).
    tcp_messages: u64,
}

impl Decoding {
    fn query(&self, wire: Bytes, info: WireInfo, transport: Transport) -> Arc<DnsQuery> {
        Arc::new(DnsQuery {
            wire,
            info,
            transport,
            peer: self.datagram.map(|d| d.peer).or(self.peer),
            renamed: None,
        })
    }

    fn message(&self, wire: Bytes, transport: Transport, out: &mut dyn FnMut(Event)) {
        let answer = |code: u8, this: &Self, wire: Bytes, out: &mut dyn FnMut(Event)| {
            let Some(resp) = error_response(&wire, code) else {
                return;
            };
            let Some(header) = Header::read(&wire) else {
                return;
            };
            let info = WireInfo {
                header,
                question: None,
                question_end: 12,
                opt: None,
                len: wire.len(),
            };
            emit(
                out,
                this.query(wire, info, transport),
                true,
                Bytes::from(resp),
            );
        };
        match validate(&wire, &self.limits) {
            Ok(info) if info.header.is_response() => {
                tracing::debug!(peer = ?self.peer, "dns: a response where a query belongs; dropped");
            }
            Ok(info) if info.header.opcode() != 0 => answer(rcode::NOTIMP, self, wire, out),
            Ok(info) if info.question.is_none() => answer(rcode::FORMERR, self, wire, out),
            Ok(info) => {
                // Queries travel with their bytes as the message data, so a `dump` shows them.
                let data = wire.clone();
                emit(out, self.query(wire, info, transport), false, data);
            }
            Err(e) => {
                tracing::debug!(peer = ?self.peer, error = %e, "dns: malformed query");
                if formerr(&wire).is_some() {
                    answer(rcode::FORMERR, self, wire, out);
                }
            }
        }
    }
}

impl Transform for Decoding {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        match ev {
            Event::MessageStart(h) => {
                self.datagram = h.get::<Datagram>().copied();
                self.udp_first = None;
                self.udp_more.clear();
            }
            Event::Data(b) if self.datagram.is_some() => match &self.udp_first {
                // A datagram is one `Data`: keep it without a copy.
                None => self.udp_first = Some(b),
                Some(_) => self.udp_more.extend_from_slice(&b),
            },
            Event::MessageEnd(_) => {
                if self.datagram.is_some() {
                    let first = self.udp_first.take().unwrap_or_default();
                    let wire = if self.udp_more.is_empty() {
                        first
                    } else {
                        let mut v = first.to_vec();
                        v.append(&mut self.udp_more);
                        Bytes::from(v)
                    };
                    self.message(wire, Transport::Udp, out);
                }
            }
            Event::Data(b) => {
                self.tcp.extend_from_slice(&b);
                while self.tcp.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([self.tcp[0], self.tcp[1]]));
                    if self.tcp.len() < 2 + n {
                        break;
                    }
                    self.tcp.advance(2);
                    let wire = self.tcp.split_to(n).freeze();
                    self.tcp_messages += 1;
                    self.message(wire, Transport::Tcp, out);
                }
            }
            end @ Event::StreamEnd(_) => out(end),
        }
    }
}

/// `decode-dns` on a TCP stream: [`Decoding`] plus the idle and message deadlines.
///
/// The deadline is a plain instant moved as messages arrive; the timer is reset to it when
/// it fires early (the deadline moved later) or when the deadline moved earlier than the
/// timer (a message started on an idle connection), so a busy connection costs a clock read
/// per message, not a timer update.
struct TcpDecoding {
    input: Events,
    decoding: Decoding,
    out: VecDeque<Event>,
    idle: Duration,
    message: Duration,
    deadline: tokio::time::Instant,
    /// Made at the first poll (a timer needs the runtime, which `attach` may run outside).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The input turned out to be datagrams: no deadlines.
    datagrams: bool,
    input_done: bool,
    finished: bool,
}

impl TcpDecoding {
    /// Moves the deadline after an input event that took the buffer from `before` bytes
    /// and `messages` whole messages to what it holds now.
    fn track(&mut self, before: usize, messages: u64) {
        let now_partial = !self.decoding.tcp.is_empty();
        if self.decoding.tcp_messages != messages {
            // A whole message came: the idle clock starts again, or the next message's
            // clock when part of it came along.
            let d = if now_partial { self.message } else { self.idle };
            self.deadline = tokio::time::Instant::now() + d;
        } else if before == 0 && now_partial {
            self.deadline = tokio::time::Instant::now() + self.message;
        }
    }

    /// True once the deadline has passed; otherwise the timer is armed for it.
    fn expired(&mut self, cx: &mut TaskCx<'_>) -> bool {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The deadline moved earlier (a message started on an idle connection: the message
        // clock is shorter than the idle one): the timer must not wait for the old one.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if tokio::time::Instant::now() >= self.deadline {
                return true;
            }
            timer.as_mut().reset(self.deadline);
        }
    }
}

impl Stream for TcpDecoding {
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
            if this.input_done {
                this.finished = true;
                return Poll::Ready(Some(Event::END));
            }
            match this.input.as_mut().poll_next(cx) {
                Poll::Ready(ev) => {
                    let ev = ev.unwrap_or(Event::END);
                    this.input_done = ev.is_end();
                    if let Event::MessageStart(h) = &ev
                        && h.get::<Datagram>().is_some()
                    {
                        this.datagrams = true;
                    }
                    let (before, messages) = (this.decoding.tcp.len(), this.decoding.tcp_messages);
                    let out = &mut this.out;
                    this.decoding.on_event(ev, &mut |e| out.push_back(e));
                    if !this.datagrams {
                        this.track(before, messages);
                    }
                }
                Poll::Pending => {
                    if this.datagrams || !this.expired(cx) {
                        return Poll::Pending;
                    }
                    let partial = !this.decoding.tcp.is_empty();
                    tracing::debug!(
                        peer = ?this.decoding.peer,
                        partial,
                        "dns: tcp client idle or too slow; closing"
                    );
                    // Answers still being resolved leave before the end (later filters
                    // finish their work first); what was read of a message is dropped.
                    this.input_done = true;
                    this.out.push_back(Event::StreamEnd(Some(StreamError::new(
                        ErrorKind::IdleTimeout,
                        Side::Downstream,
                    ))));
                }
            }
        }
    }
}

// === EncodeDns ===

/// What `encode-dns` does with a query no filter answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unanswered {
    /// Answer REFUSED (the default).
    #[default]
    Refused,
    /// Answer SERVFAIL.
    Servfail,
    /// Send nothing.
    Drop,
}

/// Configuration of [`EncodeDns`] (`encode-dns:` in YAML).
///
/// ```yaml
/// - encode-dns: { max_udp: 1232, unanswered: refused }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeDnsConfig {
    /// The largest UDP answer we send, whatever the client advertises. Default 1232.
    #[serde(default = "default_max_udp")]
    pub max_udp: u16,
    /// What to do with queries nothing answered. Default `refused`.
    #[serde(default)]
    pub unanswered: Unanswered,
}

fn default_max_udp() -> u16 {
    1232
}

impl Default for EncodeDnsConfig {
    fn default() -> Self {
        EncodeDnsConfig {
            max_udp: default_max_udp(),
            unanswered: Unanswered::default(),
        }
    }
}

impl FilterConfig for EncodeDnsConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_udp < 512 {
            return Err(ConfigError::new("max_udp", "must be at least 512"));
        }
        Ok(Arc::new(EncodeDns::new(*self)))
    }
}

/// Turns answered DNS messages back into datagrams (truncated to the client's payload size
/// with TC=1, so it retries over TCP) or length-prefixed TCP bytes, and renames answers of
/// rewritten queries back to the name the client asked for.
#[derive(Clone, Debug, Default)]
pub struct EncodeDns {
    config: EncodeDnsConfig,
}

impl EncodeDns {
    /// An encoder with `config`.
    pub fn new(config: EncodeDnsConfig) -> Self {
        EncodeDns { config }
    }
}

impl Filter for EncodeDns {
    fn describe(&self) -> Description {
        Description::filter("encode-dns").options(&self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        Some(Box::new(Encoding {
            config: self.config.clone(),
            gather: Gather::default(),
        }))
    }
}

struct Encoding {
    config: EncodeDnsConfig,
    gather: Gather,
}

impl Transform for Encoding {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        let config = &self.config;
        self.gather.on_event(ev, out, &mut |m, out| {
            let super::Msg {
                head,
                query,
                answered,
                wire,
            } = m;
            let q = &query;
            let wire = if answered {
                match &q.renamed {
                    Some(r) => super::policy::rename_back(&wire, r).map_or(wire, Bytes::from),
                    None => wire,
                }
            } else {
                let code = match config.unanswered {
                    Unanswered::Refused => rcode::REFUSED,
                    Unanswered::Servfail => rcode::SERVFAIL,
                    Unanswered::Drop => return,
                };
                Bytes::from(answer_code(&q.wire, &q.info, code, false))
            };
            match q.transport {
                Transport::Udp => {
                    let max = usize::from(q.info.client_udp_payload().min(config.max_udp));
                    let wire = if wire.len() > max {
                        Bytes::from(truncate(&wire, max))
                    } else {
                        wire
                    };
                    // The UDP listener sends each message as one datagram; the head can
                    // stay the one the message came with.
                    out(Event::MessageStart(head));
                    out(Event::Data(wire));
                    out(Event::MessageEnd(Tail::none()));
                }
                Transport::Tcp => {
                    // A TCP message is at most 65 535 bytes: a longer answer is truncated
                    // (TC=1, whole records only), never cut.
                    let wire = match u16::try_from(wire.len()) {
                        Ok(_) => wire,
                        Err(_) => Bytes::from(truncate(&wire, usize::from(u16::MAX))),
                    };
                    let len = u16::try_from(wire.len()).unwrap_or(u16::MAX);
                    let mut b = BytesMut::with_capacity(2 + wire.len());
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend_from_slice(&wire);
                    out(Event::Data(b.freeze()));
                }
            }
        });
    }
}
