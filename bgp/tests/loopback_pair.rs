//! Two Flowgate speakers on loopback: one listens with a passive peer, the other connects
//! actively from 127.0.0.2. Exercises the listener, both peer modes and route exchange both
//! ways over real TCP, without root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use flowgate_bgp::packet::{Notification, Prefix};
use flowgate_bgp::speaker::{
    DownReason, PeerConfig, RouteAttributes, Speaker, SpeakerConfig, State,
};

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_and_passive_speakers_exchange_routes() {
    // Speaker A listens on a free port; B is told which.
    let mut ca = SpeakerConfig::new(65001, Ipv4Addr::new(1, 1, 1, 1));
    ca.listen = Some(SocketAddr::new(A, 0));
    let a = Speaker::start(ca).await.unwrap();
    let port = a.local_addr().unwrap().port();
    let mut pa = PeerConfig::new(B, 65002);
    pa.passive = true;
    a.add_peer(pa).unwrap();

    let b = Speaker::start(SpeakerConfig::new(65002, Ipv4Addr::new(2, 2, 2, 2)))
        .await
        .unwrap();
    let mut pb = PeerConfig::new(A, 65001);
    pb.port = port;
    pb.local_address = Some(B);
    pb.connect_retry = Duration::from_millis(200);
    b.add_peer(pb).unwrap();

    until("both Established", || {
        a.peer(B).unwrap().state == State::Established
            && b.peer(A).unwrap().state == State::Established
    })
    .await;
    assert_eq!(
        a.peer(B).unwrap().router_id,
        Some(Ipv4Addr::new(2, 2, 2, 2))
    );

    let vip_a: Prefix = "192.0.2.1/32".parse().unwrap();
    let vip_b: Prefix = "2001:db8::b/128".parse().unwrap();
    a.announce(
        vip_a,
        RouteAttributes {
            med: Some(5),
            ..Default::default()
        },
    );
    b.announce(vip_b, RouteAttributes::default());
    until("routes both ways", || {
        b.adj_rib_in(A).iter().any(|(p, _)| *p == vip_a)
            && a.adj_rib_in(B).iter().any(|(p, _)| *p == vip_b)
    })
    .await;
    let from_a = b.adj_rib_in(A);
    let attrs = &from_a.iter().find(|(p, _)| *p == vip_a).unwrap().1;
    assert_eq!(
        attrs.next_hop,
        Some(Ipv4Addr::LOCALHOST),
        "next-hop self = session address"
    );
    assert_eq!(attrs.med, Some(5));
    assert_eq!(attrs.as_path.as_ref().unwrap().first(), Some(65001));
    let from_b = a.adj_rib_in(B);
    let mp = from_b[0].1.mp_reach.as_ref().unwrap();
    assert_eq!(
        mp.next_hop,
        IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped())
    );

    a.withdraw(vip_a);
    until("withdrawal", || b.adj_rib_in(A).is_empty()).await;

    // Shutting A down sends Cease: B records it and drops A's routes.
    a.shutdown().await;
    until("B sees Cease", || {
        b.peer(A).unwrap().last_error
            == Some(DownReason::NotificationReceived(Notification::cease()))
    })
    .await;
    b.shutdown().await;
}

/// Both speakers listen and both connect at the same moment: the collision resolves into
/// one stable session (before the fix it stalled for the 240 s OpenSent hold time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_open_converges() {
    let mut speakers = Vec::new();
    for (me, asn) in [(A, 65001), (B, 65002)] {
        let IpAddr::V4(id) = me else { unreachable!() };
        let mut c = SpeakerConfig::new(asn, id);
        c.listen = Some(SocketAddr::new(me, 0));
        speakers.push(Speaker::start(c).await.unwrap());
    }
    let port_a = speakers[0].local_addr().unwrap().port();
    let port_b = speakers[1].local_addr().unwrap().port();
    // Both listeners are up: both peers dial at once.
    for (s, other, other_as, port, me) in [
        (&speakers[0], B, 65002, port_b, A),
        (&speakers[1], A, 65001, port_a, B),
    ] {
        let mut p = PeerConfig::new(other, other_as);
        p.port = port;
        p.local_address = Some(me);
        p.connect_retry = Duration::from_millis(300);
        s.add_peer(p).unwrap();
    }
    let (a, b) = (&speakers[0], &speakers[1]);
    until("both Established", || {
        a.peer(B).unwrap().state == State::Established
            && b.peer(A).unwrap().state == State::Established
    })
    .await;
    // Stable: still up, no flap, a second later. (A fixed wait on purpose: a flap that
    // does not happen cannot be polled for.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (s, p) in [(a, B), (b, A)] {
        let info = s.peer(p).unwrap();
        assert_eq!(
            (info.state, info.flaps),
            (State::Established, 0),
            "{info:?}"
        );
    }
    for s in &speakers {
        s.shutdown().await;
    }
}
