//! Announce VIPs over BGP while the local service behind them is healthy.
//!
//! Shows: a [`Speaker`] with peers from a small YAML config, and [`HealthDrivenVips`]
//! announcing each VIP while its TCP/HTTP probe passes and withdrawing it when it fails.
//!
//! Run (as root if the speaker binds port 179 or a router runs in a namespace):
//!
//! ```text
//! cargo run -p flowgate-bgp --example bgp_vip -- bgp/examples/bgp_vip.yaml
//! ```
//!
//! Then, on the router (GoBGP here):
//!
//! ```text
//! gobgp global rib            # 192.0.2.10/32 via this host while :8080 accepts
//! # stop the service on :8080  → the VIP is withdrawn within one probe interval
//! ```
//!
//! Without an argument it uses the config embedded below (one GoBGP peer on 10.0.0.2).
//!
//! A router that should connect to us instead is a `passive: true` peer; the speaker then
//! needs `listen:` (an address and port to accept on). A passive peer without `listen:` is
//! refused before anything starts, since it could never connect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use flowgate_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use flowgate_bgp::vip::{HealthDrivenVips, VipConfig};

const EXAMPLE: &str = r#"
asn: 65001
router_id: 10.0.0.1
hold_time: 9
peers:
  - address: 10.0.0.2
    remote_as: 65002
    local_address: 10.0.0.1
vips:
  - prefix: 192.0.2.10/32
    probe: { type: tcp, address: "127.0.0.1:8080" }
    interval_ms: 1000
  - prefix: 2001:db8::10/128
    probe: { type: http, address: "127.0.0.1:8080", path: /healthz }
    interval_ms: 1000
    attributes: { med: 10, communities: ["65001:100"] }
"#;

/// The example's configuration file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Our AS.
    asn: u32,
    /// Our BGP identifier.
    router_id: Ipv4Addr,
    /// Hold time to propose, in seconds (default 90).
    #[serde(default)]
    hold_time: Option<u16>,
    /// Where to accept connections from routers (required by passive peers).
    #[serde(default)]
    listen: Option<SocketAddr>,
    /// Routers to peer with.
    peers: Vec<Peer>,
    /// VIPs and their probes.
    vips: Vec<VipConfig>,
}

/// One router.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    /// The router's address.
    address: IpAddr,
    /// The router's AS.
    remote_as: u32,
    /// Our source address (and next hop).
    #[serde(default)]
    local_address: Option<IpAddr>,
    /// Wait for the router to connect (to `listen`).
    #[serde(default)]
    passive: bool,
}

fn parse(text: &str) -> Result<Config, Box<dyn std::error::Error>> {
    Ok(serde_saphyr::from_str(text)?)
}

/// The speaker and peer configurations, checked: every peer must be able to connect.
fn speaker_config(
    config: &Config,
) -> Result<(SpeakerConfig, Vec<PeerConfig>), Box<dyn std::error::Error>> {
    let mut sc = SpeakerConfig::new(config.asn, config.router_id);
    if let Some(h) = config.hold_time {
        sc.hold_time = h;
    }
    sc.listen = config.listen;
    let mut peers = Vec::new();
    for p in &config.peers {
        let mut pc = PeerConfig::new(p.address, p.remote_as);
        pc.local_address = p.local_address;
        pc.passive = p.passive;
        sc.check_peer(&pc)?;
        peers.push(pc);
    }
    Ok((sc, peers))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = match std::env::args().nth(1) {
        Some(path) => parse(&std::fs::read_to_string(path)?)?,
        None => parse(EXAMPLE)?,
    };
    let (sc, peers) = speaker_config(&config)?;
    let speaker = Speaker::start(sc).await?;
    if let Some(addr) = speaker.local_addr() {
        tracing::info!(%addr, "listening for routers");
    }
    for pc in peers {
        speaker.add_peer(pc)?;
    }
    let vips = HealthDrivenVips::spawn(&speaker, config.vips);
    let mut events = speaker.events();
    let mut report = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            Some(ev) = events.recv() => tracing::info!(?ev, "event"),
            _ = report.tick() => tracing::info!(vips = ?vips.status(), peers = ?speaker.peers().iter().map(|p| (p.address, p.state)).collect::<Vec<_>>(), "status"),
        }
    }
    tracing::info!("shutting down: NOTIFICATION Cease to every peer");
    vips.stop(&speaker);
    speaker.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_and_shipped_configs_parse() {
        for text in [EXAMPLE, include_str!("bgp_vip.yaml")] {
            let c = parse(text).unwrap();
            assert_eq!(c.asn, 65001);
            assert_eq!(c.vips.len(), 2);
            speaker_config(&c).unwrap();
        }
    }

    const PASSIVE: &str = "asn: 65001\nrouter_id: 10.0.0.1\nvips: []\npeers:\n  - { address: 10.0.0.3, remote_as: 65003, passive: true }\n";

    #[test]
    fn a_passive_peer_without_listen_is_a_config_error() {
        let err = speaker_config(&parse(PASSIVE).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.0.0.3") && err.contains("passive") && err.contains("`listen`"),
            "{err}"
        );
        let with_listen = format!("listen: 10.0.0.1:179\n{PASSIVE}");
        let (sc, peers) = speaker_config(&parse(&with_listen).unwrap()).unwrap();
        assert_eq!(sc.listen, Some("10.0.0.1:179".parse().unwrap()));
        assert!(peers[0].passive);
    }
}
