//! # flowgate-filters-dns
//!
//! Flowgate's DNS filters, on the `flowgate-dns` codec: a DNS server and caching forwarder
//! built from small steps. YAML configurations reach them through [`register`]:
//!
//! ```
//! let mut registry = flowgate_pipeline::registry::Registry::new();
//! flowgate_filters_dns::register(&mut registry);
//! let names: Vec<&str> = registry.names().collect();
//! assert!(names.contains(&"dns-forward") && names.contains(&"decode-dns"));
//! ```
//!
//! ```text
//!  UDP datagrams / TCP bytes
//!        │
//!   decode-dns ── bad bytes ──▶ FORMERR (answered) ─────────────────────────┐
//!        │ query messages                                                    │
//!   dns-block ── blocked ──▶ NXDOMAIN / REFUSED / 0.0.0.0 (answered) ─────────┤
//!   dns-rewrite (renames the query; encode-dns renames the answer back)      │
//!   dns-respond ── a name of the zone ──▶ answer from the service registry ──┤
//!   dns-forward ── cache hit, or an upstream's answer ───────────────────────┤
//!        │                                                                   ▼
//!   encode-dns ◀──────────────────── answered messages pass every later step
//!        │  UDP: one datagram, TC=1 when over the client's payload size
//!        ▼  TCP: two-byte length prefix
//! ```
//!
//! A DNS message is `MessageStart(Head(DnsMessage)) Data(wire) MessageEnd`. The head says
//! whether the message is still a query or already an answer; every filter passes answers
//! through untouched and acts on queries, so the first filter that answers wins.
//! `decode-dns` learns the transport from its input (datagram messages from a UDP listener,
//! plain bytes from TCP), so the same pipeline serves both.
//!
//! Over TCP, `decode-dns` closes a client that starts no query for `tcp_idle_timeout` (10 s)
//! or leaves one unfinished for `tcp_message_timeout` (5 s), after sending the answers still
//! being resolved (RFC 7766 §6.2.3); the TCP listener's `max_connections` bounds the clients
//! at once (beyond it a connection is closed at once; UDP is another listener and answers
//! on).
//!
//! ```yaml
//! listeners:
//!   - { listen: 127.0.0.1:5300, protocol: udp, pipeline: dns }
//!   - { listen: 127.0.0.1:5300, pipeline: dns, max_connections: 10000 }
//! pipelines:
//!   dns:
//!     - decode-dns
//!     - dns-block: { names: [ads.example] }
//!     - dns-respond:
//!         zone: svc.test
//!         services:
//!           - { name: api, endpoints: ["10.0.0.1:8080", "10.0.0.2:8080"] }
//!     - dns-forward: { endpoints: ["127.0.0.1:5353"] }
//!     - encode-dns
//! ```

mod codec;
mod forward;
mod policy;
mod respond;

pub use codec::{DecodeDns, DecodeDnsConfig, EncodeDns, EncodeDnsConfig, Unanswered};
pub use forward::{CacheSettings, DnsForward, DnsForwardConfig};
pub use policy::{
    BlockAction, DnsBlock, DnsBlockConfig, DnsRewrite, DnsRewriteConfig, RewriteRule,
};
pub use respond::{DnsRespond, DnsRespondConfig, GeoRule, ServiceRegistry, ServiceSpec};

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_dns::{NameKey, WireInfo};
use flowgate_pipeline::registry::Registry;
use flowgate_pipeline::{Event, Head, Tail};

/// Registers the DNS filters.
pub fn register(r: &mut Registry) {
    r.register::<DecodeDnsConfig>("decode-dns");
    r.register::<EncodeDnsConfig>("encode-dns");
    r.register::<DnsRespondConfig>("dns-respond");
    r.register::<DnsForwardConfig>("dns-forward");
    r.register::<DnsBlockConfig>("dns-block");
    r.register::<DnsRewriteConfig>("dns-rewrite");
}

/// How a query arrived, and so how its answer leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per message; answers larger than the client's payload size are
    /// truncated (TC=1).
    Udp,
    /// A two-byte length before each message (RFC 1035 §4.2.2).
    Tcp,
}

/// A renamed query (by `dns-rewrite`): how to rename its answer back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The question section as the client sent it.
    pub original_question: Bytes,
    /// The name the client asked for.
    pub from: NameKey,
    /// The name asked upstream instead.
    pub to: NameKey,
}

/// A query as `decode-dns` received it.
#[derive(Clone, Debug)]
pub struct DnsQuery {
    /// The query bytes (after any rewrite).
    pub wire: Bytes,
    /// What the validation pass learnt about them.
    pub info: WireInfo,
    /// How it arrived.
    pub transport: Transport,
    /// Who sent it.
    pub peer: Option<SocketAddr>,
    /// Set when `dns-rewrite` renamed it.
    pub renamed: Option<Arc<Renamed>>,
}

/// The head of a DNS message event.
#[derive(Clone, Debug)]
pub struct DnsMessage {
    /// The query this message is, or answers.
    pub query: Arc<DnsQuery>,
    /// Whether the message is an answer (its `Data` is the response).
    pub answered: bool,
}

/// Emits a DNS message as its three events.
pub(crate) fn emit(out: &mut dyn FnMut(Event), query: Arc<DnsQuery>, answered: bool, wire: Bytes) {
    out(Event::MessageStart(Head::new(DnsMessage {
        query,
        answered,
    })));
    out(Event::Data(wire));
    out(Event::MessageEnd(Tail::none()));
}

/// A whole DNS message, as [`Gather`] hands it over.
pub(crate) struct Msg {
    /// The head it came with (re-emitted as is when the message passes unchanged).
    pub(crate) head: Head,
    /// The query it is or answers.
    pub(crate) query: Arc<DnsQuery>,
    /// Whether it is an answer.
    pub(crate) answered: bool,
    /// Its bytes.
    pub(crate) wire: Bytes,
}

impl Msg {
    /// Sends the message on unchanged (no new head).
    pub(crate) fn pass(self, out: &mut dyn FnMut(Event)) {
        out(Event::MessageStart(self.head));
        out(Event::Data(self.wire));
        out(Event::MessageEnd(Tail::none()));
    }

    /// Sends `response` as the answer to this message's query.
    pub(crate) fn answer(self, response: Bytes, out: &mut dyn FnMut(Event)) {
        emit(out, self.query, true, response);
    }
}

/// What [`Gather`] calls with each whole message.
pub(crate) type OnMessage<'a> = dyn FnMut(Msg, &mut dyn FnMut(Event)) + 'a;

/// Gathers the events of DNS messages and hands each whole message to a handler; other
/// events pass through.
#[derive(Default)]
pub(crate) struct Gather {
    head: Option<(Head, Arc<DnsQuery>, bool)>,
    first: Option<Bytes>,
    more: Vec<u8>,
}

impl Gather {
    /// Feeds one event; calls `f(message, out)` at the end of each DNS message.
    pub(crate) fn on_event(
        &mut self,
        ev: Event,
        out: &mut dyn FnMut(Event),
        f: &mut OnMessage<'_>,
    ) {
        match ev {
            Event::MessageStart(h) if self.head.is_none() => match h.get::<DnsMessage>() {
                Some(m) => {
                    let (q, a) = (m.query.clone(), m.answered);
                    self.head = Some((h, q, a));
                }
                None => out(Event::MessageStart(h)),
            },
            Event::Data(b) if self.head.is_some() => match &self.first {
                None => self.first = Some(b),
                Some(_) => self.more.extend_from_slice(&b),
            },
            Event::MessageEnd(t) => match self.head.take() {
                Some((head, query, answered)) => {
                    let first = self.first.take().unwrap_or_default();
                    let wire = if self.more.is_empty() {
                        first
                    } else {
                        let mut v = first.to_vec();
                        v.append(&mut self.more);
                        Bytes::from(v)
                    };
                    f(
                        Msg {
                            head,
                            query,
                            answered,
                            wire,
                        },
                        out,
                    );
                }
                None => out(Event::MessageEnd(t)),
            },
            other => out(other),
        }
    }
}

#[cfg(test)]
mod tests;
