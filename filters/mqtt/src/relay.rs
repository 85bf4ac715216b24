//! The relay of one accepted client: packets both ways, with the ACL, limits and prefix.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use flowgate_mqtt::{
    Connect, Decoder, Frame, Limits, Packet, ProtocolVersion, PubResponse, PublishHead, QoS,
    ReasonCode, SubAck,
};
use flowgate_pipeline::feed::FeedSender;
use flowgate_pipeline::{Event, Events};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;

use super::Shared;
use super::acl::{OnDeny, Subject};
use super::auth::Refusal;
use super::session::{End, emit, send};

/// The most topic aliases a client may set up through the proxy.
const MAX_ALIASES: usize = 1024;
/// 0x94 Topic Alias invalid.
const ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
/// A broker read buffer grows by this much at a time.
const READ_CHUNK: usize = 8 * 1024;

/// What happens to the payload of the PUBLISH being read from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    None,
    Forward,
    Drop,
}

/// A client token bucket for PUBLISHes.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: Option<u32>) -> Self {
        let burst = burst.map_or(rate.max(1.0), |b| f64::from(b.max(1)));
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token, or tells when one will be there.
    fn take(&mut self) -> Result<(), Instant> {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The state of one accepted client.
pub(super) struct Session {
    shared: Arc<Shared>,
    version: ProtocolVersion,
    pub(super) client_id: String,
    pub(super) username: Option<String>,
    /// The expanded topic prefix.
    prefix: Option<String>,
    /// The CONNECT to send to the broker.
    connect: Option<Box<Connect>>,
    dec: Decoder,
    /// Client bytes not decoded yet.
    buf: BytesMut,
    payload: Payload,
    /// A PUBLISH head waiting for a token or an in-flight slot.
    pending: Option<PublishHead>,
    /// When the rate limit lets the pending PUBLISH go.
    wake: Option<Instant>,
    bucket: Option<Bucket>,
    /// Client QoS 1/2 PUBLISHes the broker has not acknowledged yet.
    inflight: HashSet<u16>,
    /// QoS 2 PUBLISHes dropped by the ACL in 3.1.1, whose PUBREL the proxy answers.
    dropped_qos2: HashSet<u16>,
    /// SUBSCRIBEs with entries the ACL refused: packet id → (position, code).
    refused_subs: HashMap<u16, Vec<(usize, ReasonCode)>>,
    /// Client topic aliases (MQTT 5), to check aliased PUBLISHes against the ACL.
    aliases: HashMap<u16, String>,
    /// Bytes for the client produced while reading the client (local answers).
    to_client: BytesMut,
    client_disconnected: bool,
    pub(super) publishes_in: u64,
    pub(super) publishes_out: u64,
}

impl Session {
    /// Authenticates and checks a CONNECT; the refusal says which CONNACK code to send.
    pub(super) fn accept(
        shared: &Arc<Shared>,
        mut connect: Connect,
        tls_identity: Option<&str>,
        dec: Decoder,
        buf: BytesMut,
    ) -> Result<Session, (Refusal, &'static str)> {
        let username = shared
            .auth
            .check(
                connect.username.as_deref(),
                connect.password.as_deref(),
                tls_identity,
            )
            .map_err(|r| (r, "authentication"))?;
        let client_id = connect.client_id.clone();
        let prefix = match &shared.cfg.prefix {
            None => None,
            Some(p) => Some(expand_prefix(p, &client_id, username.as_deref()).ok_or((
                Refusal::NotAuthorized,
                "client id or user name unusable in the topic prefix",
            ))?),
        };
        let who = Subject {
            client_id: &client_id,
            username: username.as_deref(),
        };
        if let Some(will) = connect.will.as_mut() {
            if let Some(acl) = &shared.cfg.acl
                && !acl.may_publish(who, &will.topic)
            {
                shared.metrics.denied.fetch_add(1, Ordering::Relaxed);
                return Err((Refusal::NotAuthorized, "will topic denied"));
            }
            if let Some(p) = &prefix {
                will.topic.insert_str(0, p);
            }
        }
        let bucket = shared
            .cfg
            .limits
            .publish_rate
            .map(|r| Bucket::new(r, shared.cfg.limits.publish_burst));
        Ok(Session {
            shared: shared.clone(),
            version: connect.version,
            client_id,
            username,
            prefix,
            connect: Some(Box::new(connect)),
            dec,
            buf,
            payload: Payload::None,
            pending: None,
            wake: None,
            bucket,
            inflight: HashSet::new(),
            dropped_qos2: HashSet::new(),
            refused_subs: HashMap::new(),
            aliases: HashMap::new(),
            to_client: BytesMut::new(),
            client_disconnected: false,
            publishes_in: 0,
            publishes_out: 0,
        })
    }

    /// Relays until one side ends.
    pub(super) async fn relay(
        &mut self,
        input: &mut Events,
        broker: TcpStream,
        tx: &FeedSender,
    ) -> End {
        let (mut br, mut bw) = broker.into_split();
        // What the broker sends is bounded by what MQTT can carry (its PUBLISH payloads
        // are streamed); the client's own limit is the broker's to keep (MQTT 5 clients
        // tell it in CONNECT).
        let broker_limits = Limits {
            max_packet_size: flowgate_mqtt::MAX_PACKET_SIZE,
            ..Limits::default()
        };
        let mut bdec = Decoder::for_version(self.version, broker_limits);
        let mut bbuf = BytesMut::new();
        let mut out = BytesMut::new();
        if let Some(c) = self.connect.take()
            && let Err(e) = Packet::Connect(c).encode(self.version, &mut out)
        {
            return End::Malformed(e);
        }
        // Packets that came with CONNECT.
        let mut r = self.pump(&mut out);
        loop {
            if let Err(e) = r {
                return e;
            }
            if !out.is_empty() {
                if let Err(e) = bw.write_all(&out).await {
                    return End::BrokerIo(e);
                }
                out.clear();
            }
            if !self.to_client.is_empty() {
                let b = self.to_client.split().freeze();
                if let Err(e) = emit(tx, Event::Data(b)).await {
                    return e;
                }
            }
            let blocked = self.pending.is_some();
            let wake = self.wake;
            r = tokio::select! {
                ev = input.next(), if !blocked => match ev {
                    Some(Event::Data(b)) => {
                        self.buf.extend_from_slice(&b);
                        self.pump(&mut out)
                    }
                    Some(Event::StreamEnd(_)) | None => {
                        let _ = bw.shutdown().await;
                        return End::ClientClosed;
                    }
                    Some(_) => Ok(()),
                },
                ready = br.readable() => match ready {
                    Err(e) => Err(End::BrokerIo(e)),
                    Ok(()) => match self.read_broker(&mut br, &mut bdec, &mut bbuf, tx).await {
                        Ok(()) => self.pump(&mut out),
                        Err(e) => Err(e),
                    },
                },
                () = sleep_until(wake), if wake.is_some() => {
                    self.wake = None;
                    self.pump(&mut out)
                }
            };
        }
    }

    /// Decodes what the client sent and appends what goes to the broker to `out`.
    fn pump(&mut self, out: &mut BytesMut) -> Result<(), End> {
        loop {
            if let Some(head) = self.pending.take() {
                if !self.admit(&head) {
                    self.pending = Some(head);
                    return Ok(());
                }
                self.forward_publish(head, out)?;
            }
            let frame = match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if self.buf.is_empty() && self.buf.capacity() > READ_CHUNK {
                        self.buf = BytesMut::new();
                    }
                    return Ok(());
                }
                Err(e) => return Err(End::Malformed(e)),
            };
            match frame {
                Frame::PublishStart(head) => self.client_publish(head, out)?,
                Frame::PayloadChunk(b) => {
                    if self.payload == Payload::Forward {
                        out.extend_from_slice(&b);
                    }
                }
                Frame::PublishEnd => self.payload = Payload::None,
                Frame::Packet(p) => self.client_packet(p, out)?,
            }
        }
    }

    fn who(&self) -> Subject<'_> {
        Subject {
            client_id: &self.client_id,
            username: self.username.as_deref(),
        }
    }

    fn client_publish(&mut self, head: PublishHead, out: &mut BytesMut) -> Result<(), End> {
        if let Some((topic, on_deny)) = self.denied_topic(&head)? {
            self.shared.metrics.denied.fetch_add(1, Ordering::Relaxed);
            if on_deny == OnDeny::Disconnect {
                return Err(End::Denied(topic));
            }
            self.payload = Payload::Drop;
            let code = match self.version {
                ProtocolVersion::V5 => ReasonCode::NOT_AUTHORIZED,
                ProtocolVersion::V311 => ReasonCode::SUCCESS,
            };
            let ack = |id| PubResponse {
                reason_code: code,
                ..PubResponse::new(id)
            };
            let reply = match (head.qos, head.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(ack(id))),
                (QoS::ExactlyOnce, Some(id)) => {
                    if self.version == ProtocolVersion::V311 {
                        self.dropped_qos2.insert(id);
                    }
                    Some(Packet::PubRec(ack(id)))
                }
                _ => None,
            };
            if let Some(p) = reply {
                p.encode(self.version, &mut self.to_client)
                    .map_err(End::Malformed)?;
            }
            return Ok(());
        }
        if !self.admit(&head) {
            self.pending = Some(head);
            return Ok(());
        }
        self.forward_publish(head, out)
    }

    /// Checks a PUBLISH against the ACL: the refused topic and what to do, if it is
    /// refused. Aliases are tracked (only when there is an ACL) so an aliased PUBLISH is
    /// checked against the topic its alias stands for.
    fn denied_topic(&mut self, head: &PublishHead) -> Result<Option<(String, OnDeny)>, End> {
        let Some(acl) = self.shared.cfg.acl.as_ref() else {
            return Ok(None);
        };
        if let Some(a) = head.properties.topic_alias
            && !head.topic.is_empty()
        {
            if self.aliases.len() >= MAX_ALIASES && !self.aliases.contains_key(&a) {
                return Err(End::Protocol("too many topic aliases", ALIAS_INVALID));
            }
            self.aliases.insert(a, head.topic.clone());
        }
        let topic = match head.properties.topic_alias {
            Some(a) if head.topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => t.as_str(),
                None => return Err(End::Protocol("topic alias not set up", ALIAS_INVALID)),
            },
            _ => head.topic.as_str(),
        };
        Ok((!acl.may_publish(self.who(), topic)).then(|| (topic.to_owned(), acl.on_deny)))
    }

    /// Whether a PUBLISH may go now (rate and in-flight limits); takes its token.
    fn admit(&mut self, head: &PublishHead) -> bool {
        if let (Some(max), Some(id)) = (self.shared.cfg.limits.max_inflight, head.packet_id)
            && self.inflight.len() >= usize::from(max)
            && !self.inflight.contains(&id)
        {
            return false;
        }
        if let Some(b) = self.bucket.as_mut() {
            match b.take() {
                Ok(()) => {}
                Err(at) => {
                    self.wake = Some(at);
                    return false;
                }
            }
        }
        true
    }

    fn forward_publish(&mut self, mut head: PublishHead, out: &mut BytesMut) -> Result<(), End> {
        if let Some(id) = head.packet_id {
            self.inflight.insert(id);
        }
        if let Some(p) = &self.prefix {
            if !head.topic.is_empty() {
                head.topic.insert_str(0, p);
            }
            if let Some(rt) = head.properties.response_topic.as_mut() {
                rt.insert_str(0, p);
            }
        }
        head.encode(self.version, out).map_err(End::Malformed)?;
        self.payload = Payload::Forward;
        self.publishes_in += 1;
        self.shared
            .metrics
            .publishes_in
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn client_packet(&mut self, p: Packet, out: &mut BytesMut) -> Result<(), End> {
        let v = self.version;
        let p = match p {
            Packet::Connect(_) => {
                return Err(End::Protocol("second CONNECT", ReasonCode::PROTOCOL_ERROR));
            }
            Packet::Subscribe(mut s) => {
                let mut refused = Vec::new();
                let mut kept = Vec::with_capacity(s.subscriptions.len());
                for (i, mut sub) in std::mem::take(&mut s.subscriptions).into_iter().enumerate() {
                    let (share, filter) = split_share(&sub.filter);
                    let allowed = match &self.shared.cfg.acl {
                        Some(acl) => acl.may_subscribe(self.who(), filter),
                        None => true,
                    };
                    if !allowed {
                        self.shared.metrics.denied.fetch_add(1, Ordering::Relaxed);
                        let code = match v {
                            ProtocolVersion::V5 => ReasonCode::NOT_AUTHORIZED,
                            ProtocolVersion::V311 => ReasonCode::UNSPECIFIED_ERROR,
                        };
                        refused.push((i, code));
                        continue;
                    }
                    if let Some(p) = &self.prefix {
                        sub.filter = format!("{share}{p}{filter}");
                    }
                    kept.push(sub);
                }
                if kept.is_empty() {
                    // Nothing left to ask the broker: answer here.
                    let ack = SubAck {
                        packet_id: s.packet_id,
                        properties: Default::default(),
                        reason_codes: refused.iter().map(|r| r.1).collect(),
                    };
                    Packet::SubAck(ack)
                        .encode(v, &mut self.to_client)
                        .map_err(End::Malformed)?;
                    return Ok(());
                }
                if !refused.is_empty() {
                    self.refused_subs.insert(s.packet_id, refused);
                }
                s.subscriptions = kept;
                Packet::Subscribe(s)
            }
            Packet::Unsubscribe(mut u) => {
                if let Some(p) = &self.prefix {
                    for f in &mut u.filters {
                        let (share, filter) = split_share(f);
                        *f = format!("{share}{p}{filter}");
                    }
                }
                Packet::Unsubscribe(u)
            }
            Packet::PubRel(r) if self.dropped_qos2.remove(&r.packet_id) => {
                Packet::PubComp(PubResponse::new(r.packet_id))
                    .encode(v, &mut self.to_client)
                    .map_err(End::Malformed)?;
                return Ok(());
            }
            Packet::Disconnect(d) => {
                self.client_disconnected = true;
                Packet::Disconnect(d)
            }
            other => other,
        };
        p.encode(v, out).map_err(End::Malformed)
    }

    /// Reads what the broker has and passes it on to the client.
    async fn read_broker(
        &mut self,
        br: &mut OwnedReadHalf,
        bdec: &mut Decoder,
        bbuf: &mut BytesMut,
        tx: &FeedSender,
    ) -> Result<(), End> {
        bbuf.reserve(READ_CHUNK);
        match br.try_read_buf(bbuf) {
            Ok(0) => {
                return Err(if self.client_disconnected {
                    End::ClientClosed
                } else {
                    End::BrokerClosed
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if bbuf.is_empty() {
                    // A wake-up with nothing to read: keep no buffer while idle.
                    *bbuf = BytesMut::new();
                }
                return Ok(());
            }
            Err(e) => return Err(End::BrokerIo(e)),
        }
        let mut to_client = BytesMut::new();
        loop {
            let frame = match bdec.decode(bbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(End::BrokerMalformed(e)),
            };
            match frame {
                Frame::PublishStart(mut head) => {
                    if let Some(p) = &self.prefix {
                        if let Some(t) = head.topic.strip_prefix(p.as_str()) {
                            head.topic = t.to_owned();
                        }
                        if let Some(rt) = head.properties.response_topic.as_mut()
                            && let Some(t) = rt.strip_prefix(p.as_str())
                        {
                            *rt = t.to_owned();
                        }
                    }
                    head.encode(self.version, &mut to_client)
                        .map_err(End::BrokerMalformed)?;
                    self.publishes_out += 1;
                    self.shared
                        .metrics
                        .publishes_out
                        .fetch_add(1, Ordering::Relaxed);
                }
                Frame::PayloadChunk(b) => {
                    // Large pieces go on as they are; small ones are gathered.
                    if b.len() >= READ_CHUNK {
                        if !to_client.is_empty() {
                            send(tx, to_client.split()).await?;
                        }
                        emit(tx, Event::Data(b)).await?;
                    } else {
                        to_client.extend_from_slice(&b);
                    }
                }
                Frame::PublishEnd => {}
                Frame::Packet(p) => self.broker_packet(p, &mut to_client)?,
            }
        }
        if bbuf.is_empty() {
            // An idle connection keeps no read buffer.
            *bbuf = BytesMut::new();
        }
        if !to_client.is_empty() {
            send(tx, to_client).await?;
        }
        Ok(())
    }

    fn broker_packet(&mut self, p: Packet, to_client: &mut BytesMut) -> Result<(), End> {
        let p = match p {
            Packet::PubAck(a) => {
                self.inflight.remove(&a.packet_id);
                Packet::PubAck(a)
            }
            Packet::PubRec(a) => {
                if a.reason_code.is_error() {
                    self.inflight.remove(&a.packet_id);
                }
                Packet::PubRec(a)
            }
            Packet::PubComp(a) => {
                self.inflight.remove(&a.packet_id);
                Packet::PubComp(a)
            }
            Packet::ConnAck(mut c) => {
                if let (Some(max), ProtocolVersion::V5) =
                    (self.shared.cfg.limits.max_inflight, self.version)
                {
                    let theirs = c.properties.receive_maximum.unwrap_or(u16::MAX);
                    c.properties.receive_maximum = Some(theirs.min(max));
                }
                if self.version == ProtocolVersion::V5 {
                    // The client may send packets up to our limit (or the broker's, if
                    // smaller); a larger one is refused with 0x95.
                    let ours = u32::try_from(self.dec.limits().max_packet_size).unwrap_or(u32::MAX);
                    let theirs = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
                    c.properties.maximum_packet_size = Some(ours.min(theirs));
                }
                Packet::ConnAck(c)
            }
            Packet::SubAck(mut s) => {
                if let Some(refused) = self.refused_subs.remove(&s.packet_id) {
                    for (pos, code) in refused {
                        let at = pos.min(s.reason_codes.len());
                        s.reason_codes.insert(at, code);
                    }
                }
                Packet::SubAck(s)
            }
            other => other,
        };
        p.encode(self.version, to_client)
            .map_err(End::BrokerMalformed)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Splits `$share/group/` off a filter: (the share part, the filter).
fn split_share(f: &str) -> (&str, &str) {
    if let Some(rest) = f.strip_prefix("$share/")
        && let Some(slash) = rest.find('/')
    {
        let cut = "$share/".len() + slash + 1;
        return (&f[..cut], &f[cut..]);
    }
    ("", f)
}

/// Expands `%c`/`%u` in a prefix; `None` when a value would not be one clean topic level.
fn expand_prefix(p: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let clean = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']) && !s.starts_with('$');
    let mut out = p.to_owned();
    if p.contains("%c") {
        if !clean(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if p.contains("%u") {
        let u = username.filter(|u| clean(u))?;
        out = out.replace("%u", u);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_prefix_is_kept_apart() {
        assert_eq!(split_share("$share/g/a/b"), ("$share/g/", "a/b"));
        assert_eq!(split_share("a/b"), ("", "a/b"));
        assert_eq!(split_share("$share/g"), ("", "$share/g"));
    }

    #[test]
    fn prefixes_need_clean_names() {
        assert_eq!(
            expand_prefix("t/%u/", "c1", Some("alice")).as_deref(),
            Some("t/alice/")
        );
        assert_eq!(expand_prefix("t/%c/", "c1", None).as_deref(), Some("t/c1/"));
        assert_eq!(expand_prefix("t/%u/", "c1", None), None);
        assert_eq!(expand_prefix("t/%u/", "c1", Some("a/b")), None);
        assert_eq!(expand_prefix("t/%c/", "#", None), None);
        assert_eq!(expand_prefix("t/%c/", "", None), None);
        assert_eq!(expand_prefix("fixed/", "", None).as_deref(), Some("fixed/"));
    }

    #[test]
    fn the_payload_limit_of_the_proxy_may_only_be_tighter() {
        use crate::{MqttProxy, MqttProxyConfig};
        use flowgate_pipeline::Size;
        let mut c = MqttProxyConfig::new(["127.0.0.1:1883"]);
        c.max_packet_size = Size(2 << 20);
        assert!(MqttProxy::new(c.clone()).is_ok());
        c.max_payload_size = Some(Size(1 << 20));
        assert!(MqttProxy::new(c.clone()).is_ok());
        c.max_payload_size = Some(Size(16 << 20));
        let e = MqttProxy::new(c).err().map(|e| e.field);
        assert_eq!(e.as_deref(), Some("max_payload_size"));
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let mut b = Bucket::new(10.0, Some(2));
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let at = b.take().unwrap_err();
        let wait = at.saturating_duration_since(Instant::now());
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }
}
