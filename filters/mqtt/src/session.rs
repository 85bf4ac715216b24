//! One client's session: CONNECT, authentication, the broker pick and connection, and
//! how the session ends; the relay itself is in `relay.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use flowgate_mqtt::{
    ConnAck, Connect, Decoder, Disconnect, Frame, MqttError, Packet, ProtocolVersion, ReasonCode,
};
use flowgate_pipeline::feed::FeedSender;
use flowgate_pipeline::{Context, Event, Events, StreamError};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::Shared;
use super::auth::Refusal;
use super::relay::Session;

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client closed, or sent DISCONNECT and then closed.
    ClientClosed,
    /// The broker closed.
    BrokerClosed,
    /// The client can no longer be written to.
    ClientGone,
    /// A malformed packet or a protocol error from the client.
    Malformed(MqttError),
    /// A packet that breaks the session's rules (second CONNECT, unknown topic alias…),
    /// with the MQTT 5 reason code to close with.
    Protocol(&'static str, ReasonCode),
    /// A malformed packet from the broker.
    BrokerMalformed(MqttError),
    /// A PUBLISH the ACL refused, with `on_deny: disconnect`.
    Denied(String),
    /// A socket error on the broker side.
    BrokerIo(std::io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed"),
            End::BrokerClosed => f.write_str("broker closed"),
            End::ClientGone => f.write_str("client unreachable"),
            End::Malformed(e) => write!(f, "malformed packet from client: {e}"),
            End::Protocol(what, _) => write!(f, "protocol error from client: {what}"),
            End::BrokerMalformed(e) => write!(f, "malformed packet from broker: {e}"),
            End::Denied(topic) => write!(f, "publish to {topic:?} denied"),
            End::BrokerIo(e) => write!(f, "broker connection: {e}"),
        }
    }
}

/// Runs one client session to its end; the events for the client go to `tx`.
pub(crate) async fn run(shared: Arc<Shared>, mut input: Events, cx: Context, tx: FeedSender) {
    let m = &shared.metrics;
    m.connections.fetch_add(1, Ordering::Relaxed);
    m.active.fetch_add(1, Ordering::Relaxed);
    let peer = cx.conn().peer;
    let started = Instant::now();
    let limits = super::packet_limits(shared.cfg.max_packet_size, shared.cfg.max_payload_size);
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::new();

    let connect = match tokio::time::timeout(
        shared.cfg.connect_wait,
        read_connect(&mut input, &mut dec, &mut buf),
    )
    .await
    {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return finish(&shared, &tx, None),
        Ok(Err(e)) => {
            m.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(?peer, error = %e, "mqtt: bad first packet");
            return finish(&shared, &tx, None);
        }
        Err(_) => {
            debug!(?peer, "mqtt: no CONNECT in time");
            return finish(&shared, &tx, None);
        }
    };
    let version = connect.version;
    let tls_id = cx.conn().tls.and_then(|t| t.peer_identity.clone());
    let mut session = match Session::accept(&shared, *connect, tls_id.as_deref(), dec, buf) {
        Ok(s) => s,
        Err((refusal, why)) => {
            m.refused.fetch_add(1, Ordering::Relaxed);
            if shared.cfg.log {
                info!(?peer, why, "mqtt: connect refused");
            }
            let code = connack_code(version, refusal);
            let _ = send_packet(&tx, version, &Packet::ConnAck(connack(code))).await;
            return finish(&shared, &tx, None);
        }
    };
    let Some((broker, addr)) = connect_broker(&shared, &session.client_id, peer).await else {
        if shared.cfg.log {
            info!(
                ?peer,
                client_id = session.client_id,
                "mqtt: no broker reachable"
            );
        }
        let code = match version {
            ProtocolVersion::V311 => ReasonCode(3),
            ProtocolVersion::V5 => ReasonCode(0x88),
        };
        let _ = send_packet(&tx, version, &Packet::ConnAck(connack(code))).await;
        return finish(&shared, &tx, None);
    };
    if shared.cfg.log {
        info!(
            ?peer,
            client_id = session.client_id,
            username = session.username.as_deref().unwrap_or(""),
            broker = %addr,
            version = version.level(),
            "mqtt: connect"
        );
    }
    let end = session.relay(&mut input, broker, &tx).await;
    if shared.cfg.log {
        info!(
            ?peer,
            client_id = session.client_id,
            broker = %addr,
            publishes_in = session.publishes_in,
            publishes_out = session.publishes_out,
            seconds = started.elapsed().as_secs_f64(),
            end = %end,
            "mqtt: disconnect"
        );
    }
    // Tell an MQTT 5 client why it is being closed.
    let reason = match &end {
        End::Malformed(e) => Some(e.reason_code()),
        End::Protocol(_, code) => Some(*code),
        End::Denied(_) => Some(ReasonCode::NOT_AUTHORIZED),
        End::BrokerMalformed(_) | End::BrokerIo(_) => Some(ReasonCode(0x80)),
        _ => None,
    };
    if matches!(end, End::Malformed(_) | End::Protocol(..)) {
        m.malformed.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(code), ProtocolVersion::V5) = (reason, version) {
        let d = Disconnect {
            reason_code: code,
            ..Disconnect::default()
        };
        if send_packet(&tx, version, &Packet::Disconnect(d))
            .await
            .is_ok()
        {
            linger(&mut input).await;
        }
    }
    let err = match end {
        End::BrokerIo(e) => Some(
            StreamError::new(
                flowgate_pipeline::ErrorKind::ConnectionReset,
                flowgate_pipeline::Side::Upstream,
            )
            .with_cause(e),
        ),
        _ => None,
    };
    finish(&shared, &tx, err);
}

/// How long a client told DISCONNECT may go on sending before its connection is closed.
const LINGER: Duration = Duration::from_secs(1);

/// Reads and drops what the client still sends (the rest of a packet that was too large,
/// say) until it closes or [`LINGER`] passes. Closing a socket with unread bytes resets the
/// connection, and the reset can destroy the DISCONNECT on its way to the client.
async fn linger(input: &mut Events) {
    let drain = async {
        while let Some(ev) = input.next().await {
            if matches!(ev, Event::StreamEnd(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Ends the client's stream (the send may fail when it is already gone).
fn finish(shared: &Shared, tx: &FeedSender, err: Option<StreamError>) {
    shared.metrics.active.fetch_sub(1, Ordering::Relaxed);
    tx.push(Event::StreamEnd(err));
}

/// Reads until CONNECT; `None` when the client leaves first.
async fn read_connect(
    input: &mut Events,
    dec: &mut Decoder,
    buf: &mut BytesMut,
) -> Result<Option<Box<Connect>>, MqttError> {
    loop {
        match dec.decode(buf)? {
            Some(Frame::Packet(Packet::Connect(c))) => return Ok(Some(c)),
            // The decoder refuses anything but CONNECT first, so this is not reached.
            Some(_) => return Ok(None),
            None => {}
        }
        match input.next().await {
            Some(Event::Data(b)) => buf.extend_from_slice(&b),
            Some(Event::StreamEnd(_)) | None => return Ok(None),
            Some(_) => {}
        }
    }
}

fn connack(code: ReasonCode) -> ConnAck {
    ConnAck {
        session_present: false,
        reason_code: code,
        properties: Default::default(),
    }
}

fn connack_code(v: ProtocolVersion, r: Refusal) -> ReasonCode {
    match (v, r) {
        (ProtocolVersion::V311, Refusal::BadCredentials) => ReasonCode(4),
        (ProtocolVersion::V311, Refusal::NotAuthorized) => ReasonCode(5),
        (ProtocolVersion::V5, Refusal::BadCredentials) => ReasonCode(0x86),
        (ProtocolVersion::V5, Refusal::NotAuthorized) => ReasonCode::NOT_AUTHORIZED,
    }
}

async fn send_packet(tx: &FeedSender, v: ProtocolVersion, p: &Packet) -> Result<(), End> {
    let mut out = BytesMut::new();
    p.encode(v, &mut out).map_err(End::Malformed)?;
    emit(tx, Event::Data(out.freeze())).await
}

/// Picks a broker by client id and connects; a broker that fails is ejected and the next
/// one tried. `None` when none answers.
async fn connect_broker(
    shared: &Shared,
    client_id: &str,
    peer: Option<SocketAddr>,
) -> Option<(TcpStream, SocketAddr)> {
    let key = if client_id.is_empty() {
        flowgate_lb::peer_key(peer)
    } else {
        flowgate_lb::hash::hash_key(client_id.as_bytes())
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let n = shared.cfg.endpoints.len();
    while tried.len() < n {
        let (addr, mut lease) = match shared.group.pick(key) {
            Some(l) if !tried.contains(&l.addr()) => (l.addr(), Some(l)),
            _ => {
                // The balancer keeps giving one we tried (ejection may be capped): walk
                // the remaining brokers in a key-dependent order.
                let rest: Vec<SocketAddr> = shared
                    .group
                    .balancer()
                    .eligible()
                    .into_iter()
                    .filter(|a| !tried.contains(a))
                    .collect();
                let a = *rest.get((key % rest.len().max(1) as u64) as usize)?;
                (a, None)
            }
        };
        tried.push(addr);
        let r = tokio::time::timeout(shared.cfg.connect_timeout, TcpStream::connect(addr)).await;
        match r {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                if let Some(l) = lease.as_mut() {
                    l.record(flowgate_lb::Outcome::Success);
                }
                return Some((s, addr));
            }
            Ok(Err(e)) => {
                debug!(broker = %addr, error = %e, "mqtt: broker connect failed");
                if let Some(l) = lease.as_mut() {
                    l.record(flowgate_lb::Outcome::ConnectFailure);
                }
            }
            Err(_) => {
                debug!(broker = %addr, "mqtt: broker connect timed out");
                if let Some(l) = lease.as_mut() {
                    l.record(flowgate_lb::Outcome::Timeout);
                }
            }
        }
        shared
            .metrics
            .broker_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    None
}

pub(super) async fn send(tx: &FeedSender, b: BytesMut) -> Result<(), End> {
    emit(tx, Event::Data(b.freeze())).await
}

/// Queues an event for the client once fewer than a few wait (back-pressure from a slow
/// client reaches the broker socket quickly).
pub(super) async fn emit(tx: &FeedSender, ev: Event) -> Result<(), End> {
    std::future::poll_fn(|cx| tx.poll_drained(cx, 4)).await;
    if tx.push(ev) {
        Ok(())
    } else {
        Err(End::ClientGone)
    }
}
