//! Interop with real routers in network namespaces: GoBGP, BIRD 2 and FRR bgpd.
//! The Flowgate speaker runs in this process on the host end of a veth pair. The routers
//! wait for the speaker to connect, except in `*_connects_to_a_passive_peer`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod netns;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use flowgate_bgp::packet::{Action, Prefix};
use flowgate_bgp::speaker::{Event, PeerConfig, RouteAttributes, Speaker, SpeakerConfig, State};
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

/// A passive Flowgate peer: the speaker listens on the host end of the veth (port 0, so
/// any free port) and the router dials it. Before `listen` was checked, a passive peer on
/// a speaker without a listener waited forever and nothing said why.
async fn router_connects_to_a_passive_peer(router: Router) {
    let name = format!("{router:?}_connects_to_a_passive_peer");
    let Some(mut lab) = Lab::new(&name, router.binaries()) else {
        return;
    };
    let ns = lab.netns();
    let link = lab.link_host(&ns);
    let mut sc = SpeakerConfig::new(65001, link.host_v4);
    sc.hold_time = 9;
    sc.listen = Some(SocketAddr::new(IpAddr::V4(link.host_v4), 0));
    let speaker = Speaker::start(sc).await.unwrap();
    let port = speaker.local_addr().unwrap().port();
    let peer = IpAddr::V4(link.ns_v4);
    let mut pc = PeerConfig::new(peer, 65002);
    pc.passive = true;
    speaker.add_peer(pc).unwrap();
    speaker.announce(VIP4.parse().unwrap(), RouteAttributes::default());
    router.start_connecting(&mut lab, &ns, &link, port);

    let log = |lab: &Lab| {
        format!(
            "{:?}\n{}{}{}",
            speaker.peer(peer),
            lab.log("gobgpd.log"),
            lab.log("bird.log"),
            lab.log("bgpd.log")
        )
    };
    let up = poll(WAIT, || {
        (speaker.peer(peer)?.state == State::Established).then_some(())
    })
    .await;
    assert!(up.is_some(), "{name}: no session: {}", log(&lab));
    // The session runs on the router's connection to our listening port.
    let inbound = lab.host(&[
        "ss",
        "-Htn",
        "state",
        "established",
        &format!("( sport = :{port} )"),
    ]);
    assert!(
        inbound.contains(&format!("{}:{port}", link.host_v4))
            && inbound.contains(&link.ns_v4.to_string()),
        "{name}: no inbound connection on {port}: {inbound:?}"
    );
    let seen = poll(WAIT, || {
        router.rib(&lab, &ns, false).contains(VIP4).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{name}: VIP not in the router's RIB:\n{}\n{}",
        router.rib(&lab, &ns, false),
        log(&lab)
    );
    assert_eq!(speaker.peer(peer).unwrap().flaps, 0, "{name}: flapped");
    speaker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_connects_to_a_passive_peer() {
    router_connects_to_a_passive_peer(Router::Gobgp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_connects_to_a_passive_peer() {
    router_connects_to_a_passive_peer(Router::Bird).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_connects_to_a_passive_peer() {
    router_connects_to_a_passive_peer(Router::Frr).await;
}

/// `msg` (a whole BGP message) with the last octet of its EXTENDED COMMUNITIES attribute
/// cut off, every length field adjusted; `None` if it carries no such attribute.
fn cut_extended_communities(msg: &[u8]) -> Option<Vec<u8>> {
    const EXT: u8 = 16;
    if msg.get(18) != Some(&2) {
        return None;
    }
    let body = &msg[19..];
    let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let at = 2 + wlen;
    let alen = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let attrs = &body[at + 2..at + 2 + alen];
    let mut out_attrs = Vec::with_capacity(alen);
    let (mut i, mut cut) = (0, false);
    while i < attrs.len() {
        let (fl, code) = (attrs[i], attrs[i + 1]);
        let (len, hdr) = if fl & 0x10 != 0 {
            (
                usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]])),
                4,
            )
        } else {
            (usize::from(attrs[i + 2]), 3)
        };
        let value = &attrs[i + hdr..i + hdr + len];
        if code == EXT && !cut && len > 0 {
            cut = true;
            out_attrs.extend_from_slice(&[fl & !0x10, code, (len - 1) as u8]);
            out_attrs.extend_from_slice(&value[..len - 1]);
        } else {
            out_attrs.extend_from_slice(&attrs[i..i + hdr + len]);
        }
        i += hdr + len;
    }
    if !cut {
        return None;
    }
    let mut out = msg[..19].to_vec();
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(&(out_attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&out_attrs);
    out.extend_from_slice(&body[at + 2 + alen..]);
    let total = out.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    Some(out)
}

/// Relays one session between the speaker (connecting to `listener`) and the router at
/// `router` (dialled from `bind`). Router-to-speaker messages pass one by one; while
/// `corrupt` is set, an UPDATE with EXTENDED COMMUNITIES is cut by one octet on the way.
async fn relay(
    listener: tokio::net::TcpListener,
    bind: IpAddr,
    router: SocketAddr,
    corrupt: Arc<AtomicBool>,
    corrupted: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The router may not listen yet: retry for up to WAIT.
    let mut upstream = None;
    for _ in 0..WAIT.as_millis() / 200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(bind, 0)).unwrap();
        if let Ok(s) = socket.connect(router).await {
            upstream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let upstream = upstream.expect("the router listens");
    let (speaker, _) = listener.accept().await.unwrap();
    let (mut from_speaker, mut to_speaker) = speaker.into_split();
    let (mut from_router, mut to_router) = upstream.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_speaker, &mut to_router).await;
        let _ = to_router.shutdown().await;
    });
    loop {
        let mut msg = vec![0u8; 19];
        if from_router.read_exact(&mut msg).await.is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([msg[16], msg[17]]));
        msg.resize(len.max(19), 0);
        if from_router.read_exact(&mut msg[19..]).await.is_err() {
            break;
        }
        if corrupt.load(Ordering::SeqCst)
            && let Some(cut) = cut_extended_communities(&msg)
        {
            corrupted.fetch_add(1, Ordering::SeqCst);
            msg = cut;
        }
        if to_speaker.write_all(&msg).await.is_err() {
            break;
        }
    }
}

/// RFC 7606 §7.14 against a real router: GoBGP announces a route with a route-target
/// extended community; an UPDATE whose EXTENDED COMMUNITIES arrives 7 octets long (cut on
/// the wire by a relay, as a faulty middlebox or router would) must withdraw the route
/// from our adj-RIB-in and leave the session up on both sides; the next good UPDATE
/// brings the route back. Before the fix the malformed attribute was stored with the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_route_with_malformed_extended_communities_is_withdrawn() {
    let router = Router::Gobgp;
    let name = "gobgp_route_with_malformed_extended_communities_is_withdrawn";
    let Some(mut lab) = Lab::new(name, router.binaries()) else {
        return;
    };
    let ns = lab.netns();
    let link = lab.link_host(&ns);
    router.start(&mut lab, &ns, std::slice::from_ref(&link), "");

    let corrupt = Arc::new(AtomicBool::new(false));
    let corrupted = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    tokio::spawn(relay(
        listener,
        IpAddr::V4(link.host_v4),
        SocketAddr::new(IpAddr::V4(link.ns_v4), 179),
        corrupt.clone(),
        corrupted.clone(),
    ));

    let mut sc = SpeakerConfig::new(65001, link.host_v4);
    sc.hold_time = 9;
    let speaker = Speaker::start(sc).await.unwrap();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let mut pc = PeerConfig::new(peer, 65002);
    pc.port = relay_port;
    pc.local_address = Some(peer);
    speaker.add_peer(pc).unwrap();
    let mut events = speaker.events();
    let up = poll(WAIT, || {
        (speaker.peer(peer)?.state == State::Established).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "no session through the relay: {:?}\n{}",
        speaker.peer(peer),
        lab.log("gobgpd.log")
    );

    let prefix: Prefix = ROUTER_V4.parse().unwrap();
    let add = |rt: &str| {
        let out = lab.exec(
            &ns,
            &[
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
                "global",
                "rib",
                "add",
                ROUTER_V4,
                "-a",
                "ipv4",
                "rt",
                rt,
            ],
        );
        assert!(out.trim().is_empty(), "gobgp rib add: {out}");
    };
    // The route's EXTENDED COMMUNITIES value in our adj-RIB-in, if the route is there.
    let ext_in_rib = || {
        let rib = speaker.adj_rib_in(peer);
        let (_, attrs) = rib.iter().find(|(p, _)| *p == prefix)?;
        Some(
            attrs
                .other
                .iter()
                .find(|a| a.type_code == 16)
                .map(|a| a.value.to_vec())
                .unwrap_or_default(),
        )
    };
    // Route target 65002:n, as GoBGP encodes it (type 0, subtype 2).
    let rt = |n: u8| vec![0, 2, 0xfd, 0xea, 0, 0, 0, n];

    add("65002:1");
    let first = poll(WAIT, || ext_in_rib().filter(|v| *v == rt(1))).await;
    assert!(
        first.is_some(),
        "route with 65002:1 not received: {:?}",
        speaker.adj_rib_in(peer)
    );

    // The same route with 65002:2, cut to 7 octets on the way: treat-as-withdraw.
    corrupt.store(true, Ordering::SeqCst);
    add("65002:2");
    let gone = poll(WAIT, || ext_in_rib().is_none().then_some(())).await;
    assert!(
        gone.is_some(),
        "route with a 7-octet EXTENDED COMMUNITIES still in the adj-RIB-in: {:?} (relay cut {} UPDATEs)",
        ext_in_rib(),
        corrupted.load(Ordering::SeqCst)
    );
    assert!(corrupted.load(Ordering::SeqCst) >= 1);
    let malformed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::Malformed { errors, .. }) = events.recv().await {
                return errors;
            }
        }
    })
    .await
    .expect("a Malformed event");
    assert_eq!(
        (malformed[0].type_code, malformed[0].action),
        (16, Action::TreatAsWithdraw)
    );
    // Both sides kept the session: no NOTIFICATION, GoBGP still has (and sent) its route.
    let info = speaker.peer(peer).unwrap();
    assert_eq!(
        (info.state, info.flaps),
        (State::Established, 0),
        "{info:?}"
    );
    let neighbor = lab.exec(
        &ns,
        &["gobgp", "-u", "127.0.0.1", "-p", "50051", "neighbor"],
    );
    assert!(neighbor.contains("Establ"), "GoBGP's view: {neighbor}");
    assert!(router.rib(&lab, &ns, false).contains(ROUTER_V4));

    // A good UPDATE on the same session brings the route back.
    corrupt.store(false, Ordering::SeqCst);
    add("65002:3");
    let back = poll(WAIT, || ext_in_rib().filter(|v| *v == rt(3))).await;
    assert!(
        back.is_some(),
        "route not back after a good UPDATE: {:?}",
        speaker.adj_rib_in(peer)
    );
    assert_eq!(speaker.peer(peer).unwrap().flaps, 0);
    speaker.shutdown().await;
}
