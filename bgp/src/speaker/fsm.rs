//! The per-peer state machine of RFC 4271 §8, reduced to what a route-originating speaker
//! needs, and the OPEN checks that decide whether a session may be established.
//!
//! ```text
//!          start / retry timer
//!   Idle ───────────────────────▶ Connect (active) / Active (passive)
//!    ▲                                 │ TCP up: send OPEN
//!    │ error, NOTIFICATION,            ▼
//!    │ hold timer, TCP closed      OpenSent ── OPEN ok: send KEEPALIVE ──▶ OpenConfirm
//!    │                                                                        │ KEEPALIVE
//!    └──────────────────────────────────────────── Established ◀──────────────┘
//! ```

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::packet::{Capability, Family, Notification, Open, Options, codes};

/// A session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not trying; waiting out the connect-retry delay.
    Idle,
    /// Opening a TCP connection.
    Connect,
    /// Waiting for the peer to connect (passive peers).
    Active,
    /// OPEN sent, waiting for the peer's OPEN.
    OpenSent,
    /// OPENs exchanged, waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Routes are exchanged.
    Established,
}

/// What both OPENs agreed on.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub hold_time: u16,
    pub options: Options,
    pub families: Vec<Family>,
    pub router_id: Ipv4Addr,
}

impl Negotiated {
    /// Keepalive interval: a third of the hold time; `None` when the hold time is 0.
    pub fn keepalive(&self) -> Option<Duration> {
        (self.hold_time > 0).then(|| Duration::from_secs(u64::from(self.hold_time / 3).max(1)))
    }

    /// Hold time; `None` when 0.
    pub fn hold(&self) -> Option<Duration> {
        (self.hold_time > 0).then(|| Duration::from_secs(u64::from(self.hold_time)))
    }
}

/// The capabilities we advertise.
pub(crate) fn local_capabilities(extended: bool, graceful_restart: Option<u16>) -> Vec<Capability> {
    let mut caps = vec![
        Capability::MultiProtocol { afi: 1, safi: 1 },
        Capability::MultiProtocol { afi: 2, safi: 1 },
        Capability::RouteRefresh,
    ];
    if extended {
        caps.push(Capability::ExtendedMessage);
    }
    if let Some(time) = graceful_restart {
        caps.push(Capability::GracefulRestart {
            flags: 0,
            time: time.min(0x0fff),
            families: vec![],
        });
    }
    caps
}

/// Checks the peer's OPEN against ours (RFC 4271 §6.2) and computes the session options.
pub(crate) fn negotiate(
    ours: &Open,
    theirs: &Open,
    expected_as: u32,
) -> Result<Negotiated, Notification> {
    if theirs.asn() != expected_as {
        let data = theirs.asn.to_be_bytes().to_vec();
        return Err(Notification::with_data(
            codes::OPEN,
            codes::OPEN_BAD_PEER_AS,
            data,
        ));
    }
    if theirs.hold_time == 1 || theirs.hold_time == 2 {
        return Err(Notification::new(
            codes::OPEN,
            codes::OPEN_UNACCEPTABLE_HOLD_TIME,
        ));
    }
    let ibgp = expected_as == ours.asn();
    if theirs.router_id.is_unspecified() || (ibgp && theirs.router_id == ours.router_id) {
        return Err(Notification::new(codes::OPEN, codes::OPEN_BAD_BGP_ID));
    }
    let both = |c: &Capability| ours.has(c) && theirs.has(c);
    let four_octet_as = theirs
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::FourOctetAs { .. }));
    let any_mp = theirs
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::MultiProtocol { .. }));
    let families = [Family::Ipv4Unicast, Family::Ipv6Unicast]
        .into_iter()
        .filter(|f| {
            let (afi, safi) = f.afi_safi();
            let cap = Capability::MultiProtocol { afi, safi };
            // RFC 4760: a peer without any MP capability speaks IPv4 unicast only.
            both(&cap) || (!any_mp && *f == Family::Ipv4Unicast)
        })
        .collect();
    Ok(Negotiated {
        hold_time: ours.hold_time.min(theirs.hold_time),
        options: Options {
            four_octet_as,
            extended_message: both(&Capability::ExtendedMessage),
            ebgp: !ibgp,
        },
        families,
        router_id: theirs.router_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(asn: u32, hold: u16, id: [u8; 4], caps: Vec<Capability>) -> Open {
        Open::new(asn, hold, Ipv4Addr::from(id), caps)
    }

    #[test]
    fn negotiation_takes_the_smaller_hold_time_and_common_families() {
        let ours = open(65001, 90, [1, 1, 1, 1], local_capabilities(true, None));
        let theirs = open(
            65002,
            9,
            [2, 2, 2, 2],
            vec![Capability::MultiProtocol { afi: 1, safi: 1 }],
        );
        let n = negotiate(&ours, &theirs, 65002).unwrap();
        assert_eq!(n.hold_time, 9);
        assert_eq!(n.keepalive(), Some(Duration::from_secs(3)));
        assert_eq!(n.families, vec![Family::Ipv4Unicast]);
        assert!(n.options.four_octet_as && !n.options.extended_message && n.options.ebgp);
    }

    #[test]
    fn bad_opens_are_refused_with_the_right_subcode() {
        let ours = open(65001, 90, [1, 1, 1, 1], vec![]);
        let sub = |o: &Open, asn| {
            negotiate(&ours, o, asn)
                .map(|_| ())
                .map_err(|n| (n.code, n.subcode))
        };
        assert_eq!(
            sub(&open(65003, 90, [2, 2, 2, 2], vec![]), 65002),
            Err((2, 2))
        );
        assert_eq!(
            sub(&open(65002, 2, [2, 2, 2, 2], vec![]), 65002),
            Err((2, 6))
        );
        assert_eq!(
            sub(&open(65002, 90, [0, 0, 0, 0], vec![]), 65002),
            Err((2, 3))
        );
        assert_eq!(
            sub(&open(65001, 90, [1, 1, 1, 1], vec![]), 65001),
            Err((2, 3))
        );
        assert_eq!(sub(&open(65002, 0, [2, 2, 2, 2], vec![]), 65002), Ok(()));
    }
}
