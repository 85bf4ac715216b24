//! A BGP speaker that originates routes: one task per peer, adj-RIBs, and an API to
//! announce and withdraw prefixes.
//!
//! ```text
//!   Speaker (Clone) ──announce/withdraw──▶ watch<LocalRib> ───────────┐
//!      │  add_peer                                                   ▼
//!      ├──────────────▶ peer task ── connect / inbound ──▶ session (OpenSent … Established)
//!      │                  ▲   (retry with backoff)        │  hold + keepalive timers
//!  listener ─ inbound ────┘                               │  adj-RIB-out diff → UPDATEs
//!      │                                                  ▼
//!      └─ peers() / adj_rib_in() ◀── Mutex<peers> ◀── adj-RIB-in, PeerInfo
//!                     events() ◀── broadcast<Event> ◀── state changes, routes, errors
//! ```
//!
//! ```
//! use std::net::Ipv4Addr;
//! use flowgate_bgp::speaker::{PeerConfig, RouteAttributes, Speaker, SpeakerConfig, State};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let mut config = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1));
//!     let mut peer = PeerConfig::new("127.0.0.1".parse()?, 65002);
//!     peer.passive = true; // wait for the router to connect ...
//!     // ... which needs a listener: without one the peer is refused.
//!     assert!(config.check_peer(&peer).is_err());
//!     config.listen = Some("127.0.0.1:0".parse()?); // port 0: any free port
//!     let speaker = Speaker::start(config).await?;
//!     let port = speaker.local_addr().map(|a| a.port()); // tell the router
//!     assert!(port.is_some_and(|p| p != 0));
//!     speaker.add_peer(peer)?;
//!     speaker.announce("192.0.2.10/32".parse()?, RouteAttributes::default());
//!     assert_eq!(speaker.announced().len(), 1);
//!     tokio::task::yield_now().await;
//!     assert_eq!(speaker.peers()[0].state, State::Active);
//!     speaker.shutdown().await;
//!     Ok(())
//! })
//! # }
//! ```

mod config;
mod event;
mod fsm;
mod peer;
mod rib;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{PeerConfig, RouteAttributes, SpeakerConfig};
pub use event::{DownReason, Event, EventStream, PeerInfo};
pub use fsm::State;

use crate::packet::{PathAttributes, Prefix, Update};
use rib::{AdjRibIn, AdjRibOut};

/// Our announcements: prefix → attributes.
pub(crate) type LocalRib = BTreeMap<Prefix, RouteAttributes>;

/// A byte stream a session can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected stream handed to a peer task.
pub(crate) struct Transport {
    io: Box<dyn Io>,
    local: Option<std::net::SocketAddr>,
}

/// Errors from the speaker's API.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A passive peer on a speaker without a listener: it could never connect.
    #[error(
        "peer {0} is passive (it waits for the router to connect) but the speaker has no \
         listen address, so it could never connect: set `listen` or make the peer active"
    )]
    PassiveWithoutListener(IpAddr),
    /// A peer with this address exists already.
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    /// No peer with this address.
    #[error("no peer {0}")]
    UnknownPeer(IpAddr),
    /// The peer is busy with another connection.
    #[error("peer {0} cannot take a connection now")]
    Busy(IpAddr),
}

struct PeerSlot {
    info: PeerInfo,
    rib_in: AdjRibIn,
    rib_out: AdjRibOut,
    inbound: mpsc::Sender<Transport>,
    stop: watch::Sender<bool>,
    ttl: Option<u32>,
}

pub(crate) struct Shared {
    config: SpeakerConfig,
    /// The listener's bound address (the real port when `listen` asked for port 0).
    local_addr: Option<std::net::SocketAddr>,
    local: watch::Sender<LocalRib>,
    peers: Mutex<HashMap<IpAddr, PeerSlot>>,
    events: broadcast::Sender<Event>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn with_peer<R>(&self, peer: IpAddr, f: impl FnOnce(&mut PeerSlot) -> R) -> Option<R> {
        lock(&self.peers).get_mut(&peer).map(f)
    }

    fn set_state(&self, peer: IpAddr, state: State) {
        let changed = self.with_peer(peer, |s| {
            std::mem::replace(&mut s.info.state, state) != state
        });
        if changed == Some(true) {
            tracing::debug!(%peer, ?state, "state");
            let _ = self.events.send(Event::StateChanged { peer, state });
        }
    }

    fn receive(&self, peer: IpAddr, u: &Update, ebgp: bool) {
        if !u.errors.is_empty() {
            tracing::warn!(%peer, errors = ?u.errors, "malformed attributes (RFC 7606)");
            let _ = self.events.send(Event::Malformed {
                peer,
                errors: u.errors.clone(),
            });
        }
        let changes = self.with_peer(peer, |s| {
            let c = s.rib_in.apply(u, ebgp);
            s.info.received_prefixes = s.rib_in.routes.len();
            c
        });
        if let Some((announced, withdrawn)) = changes
            && (!announced.is_empty() || !withdrawn.is_empty())
            && self.events.receiver_count() > 0
        {
            let _ = self.events.send(Event::Routes {
                peer,
                announced,
                withdrawn,
            });
        }
    }

    fn session_down(&self, peer: IpAddr, reason: &DownReason, established: bool) {
        self.with_peer(peer, |s| {
            s.rib_in = AdjRibIn::default();
            s.rib_out = AdjRibOut::default();
            s.info.received_prefixes = 0;
            s.info.advertised_prefixes = 0;
            s.info.hold_time = None;
            s.info.last_error = Some(reason.clone());
            if established {
                s.info.flaps += 1;
            }
        });
        let _ = self.events.send(Event::Down {
            peer,
            reason: reason.clone(),
        });
    }
}

/// A running speaker. Cheap to clone; every clone drives the same speaker.
#[derive(Clone)]
pub struct Speaker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("asn", &self.shared.config.asn)
            .finish_non_exhaustive()
    }
}

/// Unwraps IPv4-mapped IPv6 addresses, as a dual-stack listener reports them.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Speaker {
    /// Starts a speaker (and its listener, if configured). Must run inside a tokio runtime.
    pub async fn start(config: SpeakerConfig) -> Result<Self, SpeakerError> {
        let listener = match config.listen {
            Some(addr) => {
                let listen_error = |source| SpeakerError::Listen { addr, source };
                let l = TcpListener::bind(addr).await.map_err(listen_error)?;
                let bound = l.local_addr().map_err(listen_error)?;
                Some((l, bound))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            config,
            local_addr: listener.as_ref().map(|(_, bound)| *bound),
            local: watch::channel(LocalRib::new()).0,
            peers: Mutex::new(HashMap::new()),
            events: broadcast::channel(4096).0,
            tasks: Mutex::new(Vec::new()),
            listener: Mutex::new(None),
        });
        if let Some((listener, _)) = listener {
            let weak = Arc::downgrade(&shared);
            let task = tokio::spawn(async move {
                while let Ok((stream, remote)) = listener.accept().await {
                    let Some(shared) = weak.upgrade() else { break };
                    let ip = canonical(remote.ip());
                    let slot = lock(&shared.peers)
                        .get(&ip)
                        .map(|s| (s.inbound.clone(), s.ttl));
                    let Some((tx, ttl)) = slot else {
                        tracing::debug!(%remote, "connection from an unknown peer refused");
                        continue;
                    };
                    let _ = tx.try_send(peer::prepare(stream, ttl));
                }
            });
            *lock(&shared.listener) = Some(task);
        }
        Ok(Self { shared })
    }

    /// The address the listener is bound to (`None` without a listener): with
    /// `listen` on port 0, this is where routers must connect.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.local_addr
    }

    /// Adds a peer and starts its task. A passive peer needs the speaker's listener
    /// ([`SpeakerConfig::check_peer`]); one fed only by [`Speaker::attach`] is added with
    /// [`Speaker::add_attached_peer`].
    pub fn add_peer(&self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        self.shared.config.check_peer(&cfg)?;
        self.spawn_peer(cfg)
    }

    /// Adds a peer whose connections come only from [`Speaker::attach`] (sockets accepted
    /// elsewhere, or in-memory pipes in tests): it never connects by itself, whatever
    /// `cfg.passive` says, and needs no listener.
    pub fn add_attached_peer(&self, mut cfg: PeerConfig) -> Result<(), SpeakerError> {
        cfg.passive = true;
        self.spawn_peer(cfg)
    }

    fn spawn_peer(&self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        let (tx, rx) = mpsc::channel(1);
        let ttl = peer::ttl(&cfg, self.shared.config.asn);
        let (stop, stop_rx) = watch::channel(false);
        {
            let mut peers = lock(&self.shared.peers);
            if peers.contains_key(&cfg.address) {
                return Err(SpeakerError::DuplicatePeer(cfg.address));
            }
            let info = PeerInfo {
                address: cfg.address,
                remote_as: cfg.remote_as,
                state: State::Idle,
                router_id: None,
                hold_time: None,
                established_at: None,
                received_prefixes: 0,
                advertised_prefixes: 0,
                flaps: 0,
                last_error: None,
            };
            let slot = PeerSlot {
                info,
                rib_in: AdjRibIn::default(),
                rib_out: AdjRibOut::default(),
                inbound: tx,
                stop,
                ttl,
            };
            peers.insert(cfg.address, slot);
        }
        let task = tokio::spawn(peer::run(self.shared.clone(), cfg, rx, stop_rx));
        lock(&self.shared.tasks).push(task);
        Ok(())
    }

    /// Stops a peer (NOTIFICATION Cease if established) and forgets it.
    pub fn remove_peer(&self, peer: IpAddr) -> Result<(), SpeakerError> {
        let slot = lock(&self.shared.peers)
            .remove(&peer)
            .ok_or(SpeakerError::UnknownPeer(peer))?;
        let _ = slot.stop.send(true);
        Ok(())
    }

    /// Runs the session of `peer` over an already connected stream (a socket accepted
    /// elsewhere, or an in-memory pipe in tests). Works for any peer; one that should wait
    /// for nothing else is added with [`Speaker::add_attached_peer`].
    pub fn attach<S>(&self, peer: IpAddr, io: S) -> Result<(), SpeakerError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tx = lock(&self.shared.peers)
            .get(&peer)
            .map(|s| s.inbound.clone())
            .ok_or(SpeakerError::UnknownPeer(peer))?;
        tx.try_send(Transport {
            io: Box::new(io),
            local: None,
        })
        .map_err(|_| SpeakerError::Busy(peer))
    }

    /// Announces `prefix` to every established peer (now) and every future one.
    pub fn announce(&self, prefix: Prefix, attributes: RouteAttributes) {
        self.shared
            .local
            .send_if_modified(|rib| rib.insert(prefix, attributes.clone()) != Some(attributes));
    }

    /// Withdraws `prefix`; false if it was not announced.
    pub fn withdraw(&self, prefix: Prefix) -> bool {
        self.shared
            .local
            .send_if_modified(|rib| rib.remove(&prefix).is_some())
    }

    /// Our announcements.
    pub fn announced(&self) -> Vec<(Prefix, RouteAttributes)> {
        self.shared
            .local
            .borrow()
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect()
    }

    /// A snapshot of every peer.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = lock(&self.shared.peers)
            .values()
            .map(|s| s.info.clone())
            .collect();
        v.sort_by_key(|p| p.address);
        v
    }

    /// One peer's snapshot.
    pub fn peer(&self, peer: IpAddr) -> Option<PeerInfo> {
        self.shared.with_peer(peer, |s| s.info.clone())
    }

    /// The routes `peer` sent us (its adj-RIB-in), sorted by prefix.
    pub fn adj_rib_in(&self, peer: IpAddr) -> Vec<(Prefix, Arc<PathAttributes>)> {
        self.rib(peer, |s| &s.rib_in.routes)
    }

    /// The routes we sent `peer` (its adj-RIB-out), sorted by prefix.
    pub fn adj_rib_out(&self, peer: IpAddr) -> Vec<(Prefix, Arc<PathAttributes>)> {
        self.rib(peer, |s| &s.rib_out.routes)
    }

    fn rib(
        &self,
        peer: IpAddr,
        f: impl Fn(&PeerSlot) -> &HashMap<Prefix, Arc<PathAttributes>>,
    ) -> Vec<(Prefix, Arc<PathAttributes>)> {
        let mut v: Vec<_> = self
            .shared
            .with_peer(peer, |s| {
                f(s).iter().map(|(p, a)| (*p, a.clone())).collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    /// A stream of events from now on.
    pub fn events(&self) -> EventStream {
        EventStream {
            rx: self.shared.events.subscribe(),
        }
    }

    /// Sends NOTIFICATION Cease to every established peer, then stops every task
    /// (waiting at most 5 seconds for them).
    pub async fn shutdown(&self) {
        if let Some(listener) = lock(&self.shared.listener).take() {
            listener.abort();
        }
        for slot in lock(&self.shared.peers).values() {
            let _ = slot.stop.send(true);
        }
        let tasks: Vec<JoinHandle<()>> = lock(&self.shared.tasks).drain(..).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn add_peer_refuses_a_passive_peer_without_a_listener() {
        let speaker = Speaker::start(SpeakerConfig::new(65001, "10.0.0.1".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(speaker.local_addr(), None);
        let mut peer = PeerConfig::new("10.0.0.2".parse().unwrap(), 65002);
        peer.passive = true;
        assert!(matches!(
            speaker.add_peer(peer.clone()),
            Err(SpeakerError::PassiveWithoutListener(_))
        ));
        assert!(speaker.peers().is_empty(), "nothing was added");
        // Fed through `attach` only: allowed, and it waits.
        speaker.add_attached_peer(peer).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(speaker.peers()[0].state, State::Active);
        speaker.shutdown().await;
    }
}
