//! One BGP session over one connected byte stream: OpenSent → OpenConfirm → Established,
//! then the Established loop that multiplexes the peer's messages, the hold and keepalive
//! timers, changes to our announcements and the stop signal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};

use super::config::PeerConfig;
use super::event::DownReason;
use super::fsm::{self, Negotiated, State};
use super::rib::Export;
use super::{Io, Shared, Transport};
use crate::packet::{Codec, Message, Notification, Open, Update, codes};

/// Hold time before the peer's OPEN arrives (RFC 4271 §8: "a large value").
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// Time allowed for a write before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A framed connection: the codec and its buffers.
struct Conn {
    io: Box<dyn Io>,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    /// The next message. Cancel-safe: partial reads stay in `rbuf`.
    async fn next(&mut self) -> Result<Message, DownReason> {
        loop {
            if let Some(m) = self
                .codec
                .decode(&mut self.rbuf)
                .map_err(DownReason::Malformed)?
            {
                return Ok(m);
            }
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| DownReason::Io(e.kind()))?;
            if n == 0 {
                return match self.codec.decode_eof(&mut self.rbuf) {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err(DownReason::Closed),
                    Err(e) => Err(DownReason::Malformed(e)),
                };
            }
        }
    }

    fn queue(&mut self, m: &Message) {
        if let Err(e) = self.codec.encode(m, &mut self.wbuf) {
            tracing::error!(error = %e, "cannot encode message; dropped");
        }
    }

    async fn flush(&mut self) -> Result<(), DownReason> {
        let write = self.io.write_all(&self.wbuf);
        let r = timeout(WRITE_TIMEOUT, write).await;
        self.wbuf.clear();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DownReason::Io(e.kind())),
            Err(_) => Err(DownReason::Io(std::io::ErrorKind::TimedOut)),
        }
    }

    async fn send(&mut self, m: &Message) -> Result<(), DownReason> {
        self.queue(m);
        self.flush().await
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Everything a session needs from its peer task.
pub(crate) struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub cfg: &'a PeerConfig,
    pub stop: &'a mut watch::Receiver<bool>,
    pub inbound: &'a mut mpsc::Receiver<Transport>,
}

/// Runs a session to its end; returns why it ended and whether it was established.
pub(crate) async fn run(cx: Ctx<'_>, t: Transport) -> (DownReason, bool) {
    let mut conn = Conn {
        io: t.io,
        codec: Codec::new(),
        rbuf: BytesMut::with_capacity(8192),
        wbuf: BytesMut::new(),
    };
    let mut established = false;
    let reason = match session(cx, &mut conn, t.local, &mut established).await {
        Ok(()) => DownReason::Closed,
        Err(r) => r,
    };
    if let Some(n) = reason.notification() {
        conn.wbuf.clear();
        conn.queue(&Message::Notification(n));
        let _ = timeout(Duration::from_secs(1), conn.flush()).await;
    }
    let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    (reason, established)
}

/// The next message before Established, or why the session must end. A second connection
/// from the peer while this one is opening is closed: the peer's retry (with jitter) then
/// meets a settled side, so simultaneous opens converge instead of waiting out the hold time.
async fn recv(
    conn: &mut Conn,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
    inbound: &mut mpsc::Receiver<Transport>,
) -> Result<Message, DownReason> {
    loop {
        tokio::select! {
            m = conn.next() => return match m? {
                Message::Notification(n) => Err(DownReason::NotificationReceived(n)),
                m => Ok(m),
            },
            _ = sleep_until(deadline) => return Err(DownReason::HoldTimerExpired),
            _ = stopped(stop) => return Err(DownReason::Shutdown),
            Some(mut t) = inbound.recv() => {
                tracing::debug!("connection collision while opening: closing the new connection");
                let _ = timeout(Duration::from_secs(1), t.io.shutdown()).await;
            }
        }
    }
}

fn unexpected(state_subcode: u8) -> DownReason {
    DownReason::NotificationSent(Notification::new(codes::FSM, state_subcode))
}

async fn session(
    cx: Ctx<'_>,
    conn: &mut Conn,
    local: Option<SocketAddr>,
    established: &mut bool,
) -> Result<(), DownReason> {
    let sc = &cx.shared.config;
    let peer = cx.cfg.address;
    let hold = cx.cfg.hold_time.unwrap_or(sc.hold_time);
    let ours = Open::new(
        sc.asn,
        hold,
        sc.router_id,
        fsm::local_capabilities(sc.extended_message, sc.graceful_restart),
    );
    conn.send(&Message::Open(ours.clone())).await?;
    cx.shared.set_state(peer, State::OpenSent);

    let theirs = match recv(conn, Instant::now() + OPEN_HOLD, cx.stop, cx.inbound).await? {
        Message::Open(o) => o,
        _ => return Err(unexpected(1)), // RFC 6608: unexpected message in OpenSent
    };
    let neg =
        fsm::negotiate(&ours, &theirs, cx.cfg.remote_as).map_err(DownReason::NotificationSent)?;
    conn.codec.set_options(neg.options);
    cx.shared
        .with_peer(peer, |s| s.info.router_id = Some(neg.router_id));
    conn.send(&Message::Keepalive).await?;
    cx.shared.set_state(peer, State::OpenConfirm);

    let wait = neg.hold().unwrap_or(OPEN_HOLD);
    match recv(conn, Instant::now() + wait, cx.stop, cx.inbound).await? {
        Message::Keepalive => {}
        _ => return Err(unexpected(2)),
    }
    *established = true;
    cx.shared.with_peer(peer, |s| {
        s.info.hold_time = Some(neg.hold_time);
        s.info.established_at = Some(Instant::now());
    });
    cx.shared.set_state(peer, State::Established);
    established_loop(cx, conn, &neg, local).await
}

fn export(cx: &Ctx<'_>, neg: &Negotiated, local: Option<SocketAddr>) -> Export {
    let sc = &cx.shared.config;
    let local_ip = local.map(|l| l.ip()).or(cx.cfg.local_address);
    let v4 = cx.cfg.next_hop_v4.or(match local_ip {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let v6 = cx.cfg.next_hop_v6.or(match local_ip {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    });
    let v4: Ipv4Addr = v4.unwrap_or(sc.router_id);
    let v6: Ipv6Addr = v6.unwrap_or_else(|| v4.to_ipv6_mapped());
    Export {
        local_as: sc.asn,
        ebgp: cx.cfg.remote_as != sc.asn,
        next_hop_self: cx.cfg.next_hop_self,
        next_hop_v4: v4,
        next_hop_v6: v6,
        families: neg.families.clone(),
        options: neg.options,
    }
}

async fn sync_out(
    cx: &Ctx<'_>,
    conn: &mut Conn,
    local: &mut watch::Receiver<super::LocalRib>,
    export: &Export,
) -> Result<(), DownReason> {
    let updates = {
        let table = local.borrow_and_update();
        cx.shared
            .with_peer(cx.cfg.address, |s| {
                let u = s.rib_out.sync(&table, export);
                s.info.advertised_prefixes = s.rib_out.routes.len();
                u
            })
            .unwrap_or_default()
    };
    for (i, u) in updates.iter().enumerate() {
        conn.queue(&Message::Update(u.clone()));
        if i % 64 == 63 {
            conn.flush().await?;
        }
    }
    conn.flush().await
}

async fn established_loop(
    cx: Ctx<'_>,
    conn: &mut Conn,
    neg: &Negotiated,
    local: Option<SocketAddr>,
) -> Result<(), DownReason> {
    let peer = cx.cfg.address;
    let export = export(&cx, neg, local);
    let mut table = cx.shared.local.subscribe();
    sync_out(&cx, conn, &mut table, &export).await?;
    for f in &neg.families {
        conn.queue(&Message::Update(Update::end_of_rib_marker(*f)));
    }
    conn.flush().await?;
    let mut hold_at = neg.hold().map(|h| Instant::now() + h);
    let mut keepalive_at = neg.keepalive().map(|k| Instant::now() + k);
    loop {
        tokio::select! {
            m = conn.next() => {
                let m = m?;
                hold_at = neg.hold().map(|h| Instant::now() + h);
                match m {
                    Message::Update(u) => cx.shared.receive(peer, &u, export.ebgp),
                    Message::Keepalive => {}
                    Message::Notification(n) => return Err(DownReason::NotificationReceived(n)),
                    Message::Open(_) => return Err(unexpected(3)),
                    Message::RouteRefresh(r) => {
                        tracing::debug!(%peer, ?r, "route refresh: re-sending adj-RIB-out");
                        cx.shared.with_peer(peer, |s| s.rib_out.routes.retain(|p, _| Some(p.family()) != r.family()));
                        sync_out(&cx, conn, &mut table, &export).await?;
                    }
                }
            }
            _ = sleep_until_opt(hold_at) => return Err(DownReason::HoldTimerExpired),
            _ = sleep_until_opt(keepalive_at) => {
                conn.send(&Message::Keepalive).await?;
                keepalive_at = neg.keepalive().map(|k| Instant::now() + k);
            }
            changed = table.changed() => {
                if changed.is_err() {
                    return Err(DownReason::Shutdown);
                }
                sync_out(&cx, conn, &mut table, &export).await?;
            }
            _ = stopped(cx.stop) => return Err(DownReason::Shutdown),
            t = cx.inbound.recv() => {
                // Collision with an established session: the established one wins (RFC 4271 §6.8).
                if let Some(mut t) = t {
                    tracing::debug!(%peer, "refusing a second connection while established");
                    let _ = timeout(Duration::from_secs(1), t.io.shutdown()).await;
                }
            }
        }
    }
}
