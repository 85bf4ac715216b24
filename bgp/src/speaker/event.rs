//! What the speaker reports: peer status snapshots and a stream of events.

use std::net::{IpAddr, Ipv4Addr};

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::fsm::State;
use crate::packet::{AttributeError, DecodeError, Notification, Prefix};

/// Why a session ended (or never started).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownReason {
    /// We sent this NOTIFICATION (OPEN refused, unexpected message, ...).
    #[error("sent NOTIFICATION {0}")]
    NotificationSent(Notification),
    /// The peer sent this NOTIFICATION.
    #[error("received NOTIFICATION {0}")]
    NotificationReceived(Notification),
    /// The peer sent bytes we cannot decode; its NOTIFICATION was sent.
    #[error("malformed message: {0}")]
    Malformed(DecodeError),
    /// No message from the peer within the hold time; NOTIFICATION Hold Timer Expired sent.
    #[error("hold timer expired")]
    HoldTimerExpired,
    /// The peer closed the TCP connection.
    #[error("connection closed by peer")]
    Closed,
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(std::io::ErrorKind),
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    ConnectFailed(std::io::ErrorKind),
    /// The speaker or the peer was shut down; NOTIFICATION Cease sent.
    #[error("shut down")]
    Shutdown,
}

impl DownReason {
    /// The NOTIFICATION this reason obliges us to send, if any.
    pub(crate) fn notification(&self) -> Option<Notification> {
        match self {
            DownReason::NotificationSent(n) => Some(n.clone()),
            DownReason::Malformed(e) => Some(e.notification()),
            DownReason::HoldTimerExpired => Some(Notification::new(
                crate::packet::codes::HOLD_TIMER_EXPIRED,
                0,
            )),
            DownReason::Shutdown => Some(Notification::cease()),
            _ => None,
        }
    }
}

/// A snapshot of one peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The neighbour's address.
    pub address: IpAddr,
    /// The neighbour's AS.
    pub remote_as: u32,
    /// The session state.
    pub state: State,
    /// The neighbour's BGP identifier, once OPEN was received.
    pub router_id: Option<Ipv4Addr>,
    /// The negotiated hold time in seconds, while established.
    pub hold_time: Option<u16>,
    /// When the session was last established.
    pub established_at: Option<Instant>,
    /// Prefixes in this peer's adj-RIB-in.
    pub received_prefixes: usize,
    /// Prefixes in this peer's adj-RIB-out.
    pub advertised_prefixes: usize,
    /// Times the session went down after being established.
    pub flaps: u32,
    /// Why the last session ended.
    pub last_error: Option<DownReason>,
}

/// Something that happened to a peer.
#[derive(Debug, Clone)]
pub enum Event {
    /// The session changed state.
    StateChanged {
        /// The neighbour.
        peer: IpAddr,
        /// The new state.
        state: State,
    },
    /// The session ended.
    Down {
        /// The neighbour.
        peer: IpAddr,
        /// Why.
        reason: DownReason,
    },
    /// An UPDATE changed the peer's adj-RIB-in.
    Routes {
        /// The neighbour.
        peer: IpAddr,
        /// Prefixes announced (new or replaced).
        announced: Vec<Prefix>,
        /// Prefixes withdrawn.
        withdrawn: Vec<Prefix>,
    },
    /// An UPDATE carried malformed attributes handled under RFC 7606; the session stays up.
    Malformed {
        /// The neighbour.
        peer: IpAddr,
        /// What was wrong and what was done.
        errors: Vec<AttributeError>,
    },
    /// This receiver fell behind and missed events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// A stream of [`Event`]s from [`Speaker::events`](super::Speaker::events).
#[derive(Debug)]
pub struct EventStream {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the speaker is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
