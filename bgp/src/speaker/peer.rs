//! The task that owns one peer: it connects (or waits to be connected), runs a session,
//! and retries with exponential backoff and jitter until the peer is stopped.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};

use super::config::PeerConfig;
use super::event::DownReason;
use super::fsm::State;
use super::session::{self, Ctx, stopped};
use super::{Shared, Transport};

/// The TTL our packets to this peer carry: 1 for eBGP (directly connected) unless multihop
/// is configured; the system default for iBGP.
pub(crate) fn ttl(cfg: &PeerConfig, local_as: u32) -> Option<u32> {
    (cfg.remote_as != local_as).then(|| u32::from(cfg.ebgp_multihop.unwrap_or(1)))
}

/// Sets TTL and no-delay on a connected socket and wraps it.
pub(crate) fn prepare(stream: TcpStream, ttl: Option<u32>) -> Transport {
    let _ = stream.set_nodelay(true);
    if let Some(ttl) = ttl {
        let _ = stream.set_ttl(ttl);
    }
    let local = stream.local_addr().ok();
    Transport {
        io: Box::new(stream),
        local,
    }
}

async fn connect(cfg: &PeerConfig, local_as: u32) -> Result<Transport, std::io::ErrorKind> {
    let remote = SocketAddr::new(cfg.address, cfg.port);
    let socket = if remote.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    let socket = socket.map_err(|e| e.kind())?;
    if let Some(local) = cfg.local_address {
        socket
            .bind(SocketAddr::new(local, 0))
            .map_err(|e| e.kind())?;
    }
    match timeout(cfg.connect_timeout, socket.connect(remote)).await {
        Ok(Ok(stream)) => Ok(prepare(stream, ttl(cfg, local_as))),
        Ok(Err(e)) => Err(e.kind()),
        Err(_) => Err(std::io::ErrorKind::TimedOut),
    }
}

/// `delay` scaled by a random factor in [0.75, 1.0] (RFC 4271 §10 jitter).
fn jitter(delay: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    delay.mul_f64(0.75 + (r % 1000) as f64 / 4000.0)
}

/// The peer task.
pub(crate) async fn run(
    shared: Arc<Shared>,
    cfg: PeerConfig,
    mut inbound: mpsc::Receiver<Transport>,
    mut stop: watch::Receiver<bool>,
) {
    let peer = cfg.address;
    let local_as = shared.config.asn;
    let mut delay = cfg.connect_retry;
    let mut pending: Option<Transport> = None;
    loop {
        let transport = match pending.take() {
            Some(t) => Ok(t),
            None if cfg.passive => {
                shared.set_state(peer, State::Active);
                tokio::select! {
                    t = inbound.recv() => match t { Some(t) => Ok(t), None => break },
                    _ = stopped(&mut stop) => break,
                }
            }
            None => {
                shared.set_state(peer, State::Connect);
                tokio::select! {
                    r = connect(&cfg, local_as) => r,
                    t = inbound.recv() => match t { Some(t) => Ok(t), None => break },
                    _ = stopped(&mut stop) => break,
                }
            }
        };
        let reason = match transport {
            Ok(t) => {
                let cx = Ctx {
                    shared: &shared,
                    cfg: &cfg,
                    stop: &mut stop,
                    inbound: &mut inbound,
                };
                let (reason, established) = session::run(cx, t).await;
                if established {
                    delay = cfg.connect_retry;
                }
                shared.session_down(peer, &reason, established);
                reason
            }
            Err(kind) => {
                let reason = DownReason::ConnectFailed(kind);
                shared.with_peer(peer, |s| s.info.last_error = Some(reason.clone()));
                reason
            }
        };
        tracing::info!(%peer, %reason, "session down");
        shared.set_state(peer, State::Idle);
        if reason == DownReason::Shutdown {
            break;
        }
        tokio::select! {
            _ = sleep(jitter(delay)) => {}
            t = inbound.recv() => pending = t,
            _ = stopped(&mut stop) => break,
        }
        delay = (delay * 2).min(cfg.connect_retry_max);
    }
    shared.set_state(peer, State::Idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_one_for_ebgp_unless_multihop() {
        let mut cfg = PeerConfig::new("10.0.0.2".parse().unwrap(), 65002);
        assert_eq!(ttl(&cfg, 65001), Some(1));
        cfg.ebgp_multihop = Some(4);
        assert_eq!(ttl(&cfg, 65001), Some(4));
        assert_eq!(ttl(&cfg, 65002), None, "iBGP keeps the system default");
        let d = jitter(Duration::from_secs(4));
        assert!(
            d >= Duration::from_secs(3) && d <= Duration::from_secs(4),
            "{d:?}"
        );
    }
}
