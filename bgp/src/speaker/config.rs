//! Configuration of the speaker, its peers, and the attributes of announced routes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use crate::packet::{Community, LargeCommunity, Origin};

/// The speaker itself.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// Our AS number (4-octet capable).
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections from routers (port 179, or 0 for any free port, see
    /// [`Speaker::local_addr`](super::Speaker::local_addr)). Required for passive peers;
    /// active peers are accepted here too. `None` (default): no listener.
    pub listen: Option<SocketAddr>,
    /// Hold time we propose (default 90 s; 0 disables keepalives).
    pub hold_time: u16,
    /// Advertise the extended message capability (default on).
    pub extended_message: bool,
    /// Graceful restart time to advertise; `None` (default) does not advertise it, so
    /// peers drop our routes as soon as the session ends, which is what VIP failover wants.
    pub graceful_restart: Option<u16>,
}

impl SpeakerConfig {
    /// A configuration with the defaults above.
    pub fn new(asn: u32, router_id: Ipv4Addr) -> Self {
        Self {
            asn,
            router_id,
            listen: None,
            hold_time: 90,
            extended_message: true,
            graceful_restart: None,
        }
    }

    /// Checks that `peer` can ever connect to this speaker: a passive peer needs
    /// [`listen`](Self::listen). [`Speaker::add_peer`](super::Speaker::add_peer) runs this;
    /// config loaders can run it before starting anything.
    pub fn check_peer(&self, peer: &PeerConfig) -> Result<(), super::SpeakerError> {
        if peer.passive && self.listen.is_none() {
            return Err(super::SpeakerError::PassiveWithoutListener(peer.address));
        }
        Ok(())
    }
}

/// One neighbour.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The neighbour's address.
    pub address: IpAddr,
    /// The neighbour's AS: equal to ours for iBGP.
    pub remote_as: u32,
    /// TCP port to connect to (default 179).
    pub port: u16,
    /// Source address of our connection; also the default next hop of its family.
    pub local_address: Option<IpAddr>,
    /// Only wait for the neighbour to connect (default: connect actively). Needs the
    /// speaker's [`listen`](SpeakerConfig::listen) address.
    pub passive: bool,
    /// Hold time to propose to this peer (default: the speaker's).
    pub hold_time: Option<u16>,
    /// eBGP multihop: the TTL of our packets (default 1 for eBGP, i.e. directly connected).
    pub ebgp_multihop: Option<u8>,
    /// Set the next hop to ourselves even if a route names one (default on).
    pub next_hop_self: bool,
    /// IPv4 next hop for this peer (default: the session's local IPv4 address).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// IPv6 next hop for this peer (default: the session's local IPv6 address, or the
    /// IPv4-mapped form of the IPv4 next hop).
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
    /// First delay before reconnecting (default 2 s); doubled per failure, with jitter.
    pub connect_retry: Duration,
    /// Longest delay between connection attempts (default 60 s).
    pub connect_retry_max: Duration,
    /// Time allowed for the TCP handshake (default 5 s).
    pub connect_timeout: Duration,
}

impl PeerConfig {
    /// A peer with the defaults above.
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        Self {
            address,
            remote_as,
            port: 179,
            local_address: None,
            passive: false,
            hold_time: None,
            ebgp_multihop: None,
            next_hop_self: true,
            next_hop_v4: None,
            next_hop_v6: None,
            connect_retry: Duration::from_secs(2),
            connect_retry_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The attributes of a route we announce. The speaker adds our AS on eBGP sessions and
/// the next hop per peer.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteAttributes {
    /// ORIGIN (default IGP).
    pub origin: Origin,
    /// Next hop, used when the peer is not configured with next-hop self.
    pub next_hop: Option<IpAddr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF for iBGP peers (default 100).
    pub local_pref: Option<u32>,
    /// AS numbers after ours in the AS_PATH (for prepending).
    pub as_path: Vec<u32>,
    /// Standard communities, written `"65001:100"` in configs.
    pub communities: Vec<Community>,
    /// Large communities, written `"65001:1:2"` in configs.
    pub large_communities: Vec<LargeCommunity>,
}

fn numbers<const N: usize, T: FromStr>(s: &str) -> Option<[T; N]> {
    let parts: Vec<T> = s
        .split(':')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

impl<'de> serde::Deserialize<'de> for Community {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let [a, b] =
            numbers::<2, u16>(&s).ok_or_else(|| serde::de::Error::custom("expected asn:value"))?;
        Ok(Community::new(a, b))
    }
}

impl<'de> serde::Deserialize<'de> for LargeCommunity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let [global, local1, local2] = numbers::<3, u32>(&s)
            .ok_or_else(|| serde::de::Error::custom("expected global:local1:local2"))?;
        Ok(LargeCommunity {
            global,
            local1,
            local2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passive_peer_needs_a_listener() {
        let mut speaker = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1));
        let mut peer = PeerConfig::new("10.0.0.2".parse().unwrap(), 65002);
        assert!(
            speaker.check_peer(&peer).is_ok(),
            "active peers connect out"
        );
        peer.passive = true;
        let err = speaker.check_peer(&peer).unwrap_err();
        assert!(
            matches!(err, super::super::SpeakerError::PassiveWithoutListener(a) if a == peer.address)
        );
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.2") && msg.contains("passive") && msg.contains("listen"),
            "{msg}"
        );
        speaker.listen = Some("10.0.0.1:179".parse().unwrap());
        assert!(speaker.check_peer(&peer).is_ok());
    }
}
