//! UDP: each datagram is a message; datagrams from one peer form one stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{Listener, Live};
use crate::feed::{FeedSender, feed};
use crate::{ConnInfo, Context, Event, Filter, Head, Tail};

/// The head of a datagram message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Who sent it (or, on output, who it goes to).
    pub peer: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
}

struct Peer {
    tx: FeedSender,
    /// Milliseconds since `epoch` of the last datagram from this peer.
    last: AtomicU64,
}

/// The live peers of one socket. When the receive loop stops (the listener is removed or the
/// server shuts down), every peer's stream is ended so the sessions drain.
#[derive(Default)]
struct Peers(HashMap<SocketAddr, Arc<Peer>>);

impl Drop for Peers {
    fn drop(&mut self) {
        for p in self.0.values() {
            p.tx.push(Event::END);
        }
    }
}

const MAX_DATAGRAM: usize = 65_536;
/// Datagrams a peer's stream may have waiting before more from that peer are dropped (a
/// UDP sender cannot be slowed down, so its queue must be bounded).
const MAX_QUEUED_DATAGRAMS: usize = 128;

/// Receives datagrams and dispatches them to per-peer streams until the task is aborted.
pub(crate) async fn serve(sock: UdpSocket, listener: Arc<Listener>, worker: usize, live: Live) {
    let sock = Arc::new(sock);
    let local = sock.local_addr().ok();
    let epoch = Instant::now();
    let idle = listener.config.udp_idle_timeout;
    let max_sessions = listener.config.max_connections;
    let mut peers = Peers::default();
    let peers = &mut peers.0;
    // One receive buffer, reused: each datagram is copied out at its own size, so a small
    // datagram held by a slow session never pins 64 KiB.
    let mut buf = BytesMut::with_capacity(MAX_DATAGRAM);
    loop {
        buf.clear();
        let (n, from) = match sock.recv_buf_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let now_ms = epoch.elapsed().as_millis() as u64;
        let alive = peers
            .get(&from)
            .filter(|p| !p.tx.is_closed() && !p.tx.is_receiver_gone());
        let peer = match alive {
            Some(p) => p.clone(),
            None => {
                peers.retain(|_, p| !p.tx.is_closed() && !p.tx.is_receiver_gone());
                if peers.len() >= max_sessions {
                    tracing::debug!(%from, "udp session limit reached; datagram dropped");
                    continue;
                }
                let (tx, rx) = feed();
                let peer = Arc::new(Peer {
                    tx,
                    last: AtomicU64::new(now_ms),
                });
                peers.insert(from, peer.clone());
                let conn = ConnInfo {
                    peer: Some(from),
                    local,
                    worker,
                    ..ConnInfo::default()
                };
                let cx = Context::with_conn(conn);
                let out = listener.pipeline.load_full().attach(Box::pin(rx), &cx);
                let guard = live.enter();
                tokio::spawn(session(
                    out,
                    sock.clone(),
                    from,
                    peer.clone(),
                    epoch,
                    idle,
                    guard,
                ));
                peer
            }
        };
        peer.last.store(now_ms, Ordering::Relaxed);
        // Three events per datagram.
        if peer.tx.len() >= 3 * MAX_QUEUED_DATAGRAMS {
            tracing::debug!(%from, "udp peer queue full; datagram dropped");
            continue;
        }
        let head = Head::new(Datagram {
            peer: from,
            local: local.unwrap_or(from),
        });
        peer.tx.push_all([
            Event::MessageStart(head),
            Event::Data(data),
            Event::MessageEnd(Tail::none()),
        ]);
    }
}

/// Sends a session's output back to its peer, one datagram per message, and ends the
/// session after `idle` without a datagram from the peer.
async fn session(
    mut out: crate::Events,
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    peer: Arc<Peer>,
    epoch: Instant,
    idle: Duration,
    _guard: super::LiveGuard,
) {
    let mut pending = BytesMut::new();
    // A message of one `Data` (the usual case) is sent as it is, without a copy.
    let mut single: Option<Bytes> = None;
    let mut in_message = false;
    let mut closing = false;
    // One timer for the session, moved on only when it fires (not re-armed per event).
    let idle_since = |peer: &Peer| epoch + Duration::from_millis(peer.last.load(Ordering::Relaxed));
    let timer = tokio::time::sleep_until(idle_since(&peer) + idle);
    tokio::pin!(timer);
    loop {
        if closing {
            match out.next().await.unwrap_or(Event::END) {
                Event::StreamEnd(_) => break,
                _ => continue,
            }
        }
        let ev = tokio::select! {
            ev = out.next() => ev.unwrap_or(Event::END),
            () = &mut timer => {
                let deadline = idle_since(&peer) + idle;
                if Instant::now() >= deadline {
                    peer.tx.push(Event::END);
                    closing = true;
                } else {
                    timer.as_mut().reset(deadline);
                }
                continue;
            }
        };
        match ev {
            Event::MessageStart(_) => {
                in_message = true;
                pending.clear();
                single = None;
            }
            Event::Data(b) if in_message => {
                if pending.is_empty() && single.is_none() {
                    single = Some(b);
                } else {
                    if let Some(first) = single.take() {
                        pending.extend_from_slice(&first);
                    }
                    pending.extend_from_slice(&b);
                }
            }
            Event::Data(b) => send(&sock, &b, to).await,
            Event::MessageEnd(_) => {
                in_message = false;
                match single.take() {
                    Some(d) => send(&sock, &d, to).await,
                    None => {
                        let d = pending.split().freeze();
                        send(&sock, &d, to).await;
                    }
                }
            }
            Event::StreamEnd(_) => break,
        }
    }
    // Let the receive loop see that this peer's stream is over.
    peer.tx.push(Event::END);
}

async fn send(sock: &UdpSocket, data: &[u8], to: SocketAddr) {
    if data.len() > MAX_DATAGRAM {
        tracing::debug!(%to, len = data.len(), "udp reply too large; dropped");
        return;
    }
    if let Err(e) = sock.send_to(data, to).await {
        tracing::debug!(%to, error = %e, "udp send failed");
    }
}
