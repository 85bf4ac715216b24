//! Interop with real routers in network namespaces: GoBGP, BIRD 2 and FRR bgpd.
//! The Flowgate speaker runs in this process on the host end of a veth pair.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod netns;

use std::net::IpAddr;
use std::time::Duration;

use flowgate_bgp::packet::Prefix;
use flowgate_bgp::speaker::{PeerConfig, RouteAttributes, Speaker, SpeakerConfig, State};
use netns::routers::{ROUTER_V4, ROUTER_V6, Router};
use netns::{Lab, Link, poll};

const VIP4: &str = "192.0.2.10/32";
const VIP6: &str = "2001:db8::10/128";
const WAIT: Duration = Duration::from_secs(20);

/// A speaker on the host end of `link`, peering with the router in the namespace.
async fn speaker_on(link: &Link, router_id: std::net::Ipv4Addr) -> Speaker {
    let mut sc = SpeakerConfig::new(65001, router_id);
    sc.hold_time = 9;
    let speaker = Speaker::start(sc).await.unwrap();
    let mut pc = PeerConfig::new(IpAddr::V4(link.ns_v4), 65002);
    pc.local_address = Some(IpAddr::V4(link.host_v4));
    pc.next_hop_v6 = Some(link.host_v6);
    pc.connect_retry = Duration::from_secs(1);
    pc.connect_retry_max = Duration::from_secs(2);
    speaker.add_peer(pc).unwrap();
    speaker
}

async fn both_ways(router: Router) {
    let name = format!("{router:?}_both_ways");
    let Some(mut lab) = Lab::new(&name, router.binaries()) else {
        return;
    };
    let ns = lab.netns();
    let link = lab.link_host(&ns);
    router.start(&mut lab, &ns, std::slice::from_ref(&link), "");
    let speaker = speaker_on(&link, link.host_v4).await;
    let peer = IpAddr::V4(link.ns_v4);

    let up = poll(WAIT, || {
        (speaker.peer(peer)?.state == State::Established).then_some(())
    })
    .await;
    let log = |lab: &Lab| {
        format!(
            "{:?}\n{}{}{}",
            speaker.peer(peer),
            lab.log("gobgpd.log"),
            lab.log("bird.log"),
            lab.log("bgpd.log")
        )
    };
    assert!(up.is_some(), "{name}: no session: {}", log(&lab));
    router.announce_own(&lab, &ns);

    // Ours → router.
    speaker.announce(VIP4.parse().unwrap(), RouteAttributes::default());
    speaker.announce(VIP6.parse().unwrap(), RouteAttributes::default());
    let seen = poll(WAIT, || {
        let (a, b) = (router.rib(&lab, &ns, false), router.rib(&lab, &ns, true));
        (a.contains(VIP4) && b.contains(VIP6)).then_some(())
    })
    .await;
    if std::env::var_os("FG_SHOW").is_some() {
        println!(
            "{}\n{}",
            router.rib(&lab, &ns, false),
            router.rib(&lab, &ns, true)
        );
    }
    assert!(
        seen.is_some(),
        "{name}: VIPs not in the router's RIB:\n{}\n{}\n{}",
        router.rib(&lab, &ns, false),
        router.rib(&lab, &ns, true),
        log(&lab)
    );

    // Router → ours.
    let want: [Prefix; 2] = [ROUTER_V4.parse().unwrap(), ROUTER_V6.parse().unwrap()];
    let got = poll(WAIT, || {
        let rib = speaker.adj_rib_in(peer);
        want.iter()
            .all(|w| rib.iter().any(|(p, _)| p == w))
            .then_some(rib)
    })
    .await;
    assert!(
        got.is_some(),
        "{name}: router's routes not in adj-RIB-in: {:?}\n{}",
        speaker.adj_rib_in(peer),
        log(&lab)
    );
    let rib = got.unwrap();
    let (_, attrs) = rib.iter().find(|(p, _)| *p == want[0]).unwrap();
    assert_eq!(
        attrs.as_path.as_ref().and_then(|p| p.first()),
        Some(65002),
        "{name}: AS_PATH"
    );

    // Withdraw → gone from the router.
    speaker.withdraw(VIP4.parse().unwrap());
    speaker.withdraw(VIP6.parse().unwrap());
    let gone = poll(WAIT, || {
        let (a, b) = (router.rib(&lab, &ns, false), router.rib(&lab, &ns, true));
        (!a.contains(VIP4) && !b.contains(VIP6)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "{name}: VIPs not withdrawn:\n{}",
        router.rib(&lab, &ns, false)
    );
    assert_eq!(
        speaker.peer(peer).unwrap().flaps,
        0,
        "{name}: session flapped"
    );
    speaker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_both_ways() {
    both_ways(Router::Gobgp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_both_ways() {
    both_ways(Router::Bird).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_both_ways() {
    both_ways(Router::Frr).await;
}

/// Two Flowgate speakers announce the same VIP to BIRD with `merge paths on`: the router's
/// kernel table gets one route with both next hops; stopping one speaker removes its next
/// hop within the hold time (9 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecmp_two_speakers_into_bird() {
    let router = Router::Bird;
    let Some(mut lab) = Lab::new("ecmp_two_speakers_into_bird", router.binaries()) else {
        return;
    };
    let ns = lab.netns();
    let links = [lab.link_host(&ns), lab.link_host(&ns)];
    router.start(
        &mut lab,
        &ns,
        &links,
        "protocol kernel { ipv4 { export all; }; merge paths on; }",
    );
    let a = speaker_on(&links[0], links[0].host_v4).await;
    let b = speaker_on(&links[1], links[1].host_v4).await;
    for s in [&a, &b] {
        s.announce(VIP4.parse().unwrap(), RouteAttributes::default());
    }
    let route = |lab: &Lab| lab.exec(&ns, &["ip", "route", "show", VIP4]);
    let hop = |l: &Link| format!("via {} ", l.host_v4);
    let both = poll(WAIT, || {
        let r = route(&lab);
        (r.contains(&hop(&links[0])) && r.contains(&hop(&links[1]))).then_some(r)
    })
    .await;
    assert!(
        both.is_some(),
        "no ECMP route: {}\n{}\n{:?} {:?}",
        route(&lab),
        lab.log("bird.log"),
        a.peers(),
        b.peers()
    );
    let both = both.unwrap();
    assert_eq!(
        both.lines().filter(|l| l.starts_with("192.0.2.10")).count(),
        1,
        "one route: {both}"
    );
    println!("ECMP route in the router's kernel table:\n{both}");

    let stopped = std::time::Instant::now();
    a.shutdown().await;
    let one = poll(Duration::from_secs(9), || {
        let r = route(&lab);
        (!r.contains(&hop(&links[0])) && r.contains(&hop(&links[1]))).then_some(r)
    })
    .await;
    assert!(
        one.is_some(),
        "next hop of the stopped speaker still there after 9 s: {}",
        route(&lab)
    );
    println!(
        "next hop removed {:?} after stopping one speaker (Cease)",
        stopped.elapsed()
    );

    // A silent failure: the other node's address vanishes, no FIN, no NOTIFICATION reaches
    // the router; its hold timer (9 s) must remove the route.
    let vanished = std::time::Instant::now();
    lab.host(&[
        "ip",
        "addr",
        "del",
        &format!("{}/30", links[1].host_v4),
        "dev",
        &links[1].host_if,
    ]);
    let gone = poll(Duration::from_secs(9 + 3), || {
        (!route(&lab).contains(&hop(&links[1]))).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "route of a silent speaker still there after the hold time: {}",
        route(&lab)
    );
    println!(
        "next hop of a silent speaker removed {:?} after it went quiet (hold time 9 s)",
        vanished.elapsed()
    );
    b.shutdown().await;
}
