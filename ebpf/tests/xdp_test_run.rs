//! BPF_PROG_TEST_RUN unit tests of the XDP balancer with crafted frames: no interface,
//! no socket. They need root (loading BPF programs) and say so when skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use common::packet::*;
use flowgate_ebpf::Error;
use flowgate_ebpf::xdp_lb::{
    Backend, Flow, Forwarding, Protocol, Vip, XdpAction, XdpLb, XdpLbConfig,
};

const RING: u32 = 1021;

fn lb() -> XdpLb {
    XdpLb::load(XdpLbConfig {
        ring_size: RING,
        max_vips: 4,
        max_backends: 16,
        conntrack_entries: 4096,
    })
    .unwrap()
}

fn backend(i: u8, weight: u32) -> Backend {
    Backend {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)),
        port: 0,
        mac: [0x02, 0xbe, 0, 0, 0, i],
        weight,
    }
}

fn vip_addr() -> SocketAddrV4 {
    "10.0.0.100:80".parse().unwrap()
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port)
}

fn flow(src: SocketAddrV4, dst: SocketAddrV4) -> Flow {
    Flow {
        src: src.into(),
        dst: dst.into(),
        proto: Protocol::Tcp,
    }
}

#[test]
fn syn_to_vip_goes_to_the_maglev_backend() {
    if !common::can_run("syn_to_vip_goes_to_the_maglev_backend") {
        return;
    }
    let mut lb = lb();
    let vip = Vip::tcp(vip_addr().into());
    let backends = [backend(1, 1), backend(2, 2), backend(3, 3)];
    lb.set_vip(vip, Forwarding::Dsr, &backends).unwrap();
    let mut per_backend = [0u32; 3];
    for port in 20_000..20_600u16 {
        let pkt = tcp4(client(port), vip_addr(), SYN, b"");
        let out = lb.test_run(&pkt).unwrap();
        assert_eq!(out.action, XdpAction::Tx, "port {port}");
        let want = lb.predict(&flow(client(port), vip_addr())).unwrap();
        assert_eq!(dst_mac(&out.frame), want.mac, "port {port}");
        assert_eq!(
            src_mac(&out.frame),
            LB_MAC,
            "the LB's MAC becomes the source"
        );
        // DSR touches nothing past the MACs.
        assert_eq!(out.frame[12..], pkt[12..]);
        let i = backends.iter().position(|b| b.mac == want.mac).unwrap();
        per_backend[i] += 1;
    }
    // 600 flows over weights 1:2:3: each share within 6 points of its weight.
    for (i, &n) in per_backend.iter().enumerate() {
        let want = f64::from(i as u32 + 1) / 6.0;
        let got = f64::from(n) / 600.0;
        assert!((got - want).abs() < 0.06, "{per_backend:?}");
    }
    let stats = lb.stats().unwrap();
    assert_eq!(stats.new_flows, 600);
    let c = lb.vip_counters(&vip).unwrap();
    assert_eq!(c.packets, 600);
    assert_eq!(c.bytes, 600 * 54);
    let per: u64 = backends
        .iter()
        .map(|b| lb.backend_counters(b).unwrap().unwrap().packets)
        .sum();
    assert_eq!(per, 600);
}

#[test]
fn conntrack_keeps_flows_and_syn_rebalances() {
    if !common::can_run("conntrack_keeps_flows_and_syn_rebalances") {
        return;
    }
    let mut lb = lb();
    let vip = Vip::tcp(vip_addr().into());
    let all = [backend(1, 1), backend(2, 1), backend(3, 1)];
    lb.set_vip(vip, Forwarding::Dsr, &all).unwrap();
    // Find flows placed on backend 2, open them with a SYN.
    let on_b2: Vec<u16> = (30_000..31_000u16)
        .filter(|&p| lb.predict(&flow(client(p), vip_addr())).unwrap() == all[1])
        .take(20)
        .collect();
    for &p in &on_b2 {
        let out = lb.test_run(&tcp4(client(p), vip_addr(), SYN, b"")).unwrap();
        assert_eq!(dst_mac(&out.frame), all[1].mac);
    }
    // Remove backend 2: the tracked flows stay on it ...
    lb.set_vip(vip, Forwarding::Dsr, &[all[0], all[2]]).unwrap();
    for &p in &on_b2 {
        let out = lb
            .test_run(&tcp4(client(p), vip_addr(), ACK | PSH, b"data"))
            .unwrap();
        assert_eq!(out.action, XdpAction::Tx);
        assert_eq!(dst_mac(&out.frame), all[1].mac, "tracked flow {p} moved");
    }
    // ... and a new connection (SYN) of the same 5-tuple goes by the new table.
    for &p in &on_b2 {
        let out = lb.test_run(&tcp4(client(p), vip_addr(), SYN, b"")).unwrap();
        assert_ne!(dst_mac(&out.frame), all[1].mac);
        let want = lb.predict(&flow(client(p), vip_addr())).unwrap();
        assert_eq!(dst_mac(&out.frame), want.mac);
    }
    assert_eq!(lb.stats().unwrap().conntrack_hits, 20);
    // An untracked non-SYN packet is placed by the table too.
    let out = lb
        .test_run(&tcp4(client(40_000), vip_addr(), ACK, b""))
        .unwrap();
    let want = lb.predict(&flow(client(40_000), vip_addr())).unwrap();
    assert_eq!(dst_mac(&out.frame), want.mac);
}

#[test]
fn other_traffic_passes_untouched() {
    if !common::can_run("other_traffic_passes_untouched") {
        return;
    }
    let mut lb = lb();
    lb.set_vip(
        Vip::tcp(vip_addr().into()),
        Forwarding::Dsr,
        &[backend(1, 1)],
    )
    .unwrap();
    let other_ip: SocketAddrV4 = "10.0.0.101:80".parse().unwrap();
    let other_port: SocketAddrV4 = "10.0.0.100:81".parse().unwrap();
    let frames = [
        tcp4(client(1), other_ip, SYN, b""),
        tcp4(client(1), other_port, SYN, b""),
        udp4(client(1), vip_addr(), b"not tcp"),
        icmp4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 100)),
        arp(),
        tcp6(
            SocketAddrV6::new(v6("fd00::1"), 1234, 0, 0),
            SocketAddrV6::new(v6("fd00::100"), 80, 0, 0),
            SYN,
        ),
    ];
    for (i, f) in frames.iter().enumerate() {
        let out = lb.test_run(f).unwrap();
        assert_eq!(out.action, XdpAction::Pass, "frame {i}");
        assert_eq!(&out.frame, f, "frame {i} modified");
    }
    assert_eq!(lb.stats().unwrap().passed, frames.len() as u64);
}

#[test]
fn truncated_and_malformed_headers_never_forward() {
    if !common::can_run("truncated_and_malformed_headers_never_forward") {
        return;
    }
    let mut lb = lb();
    lb.set_vip(
        Vip::tcp(vip_addr().into()),
        Forwarding::Dsr,
        &[backend(1, 1)],
    )
    .unwrap();
    let v6vip = SocketAddrV6::new(v6("fd00::100"), 80, 0, 0);
    lb.set_vip(Vip::tcp(v6vip.into()), Forwarding::Dsr, &[backend(1, 1)])
        .unwrap();
    let syn4 = tcp4(client(5), vip_addr(), SYN, b"");
    let syn6 = tcp6(SocketAddrV6::new(v6("fd00::1"), 5, 0, 0), v6vip, SYN);
    let udp = udp4(client(5), "10.0.0.100:80".parse().unwrap(), b"");
    // The kernel needs at least an Ethernet header in a test run.
    for full in [&syn4, &syn6, &udp] {
        for len in 14..full.len() {
            let out = lb.test_run(&full[..len]).unwrap();
            assert!(
                matches!(out.action, XdpAction::Pass | XdpAction::Drop),
                "{len} of {}: {:?}",
                full.len(),
                out.action
            );
        }
    }
    let mut bad = Vec::new();
    let mut f = syn4.clone();
    f[14] = 0x44; // IHL 4 (< 5)
    bad.push(f);
    let mut f = syn4.clone();
    f[14] = 0x4f; // IHL 15: options run past the frame
    bad.push(f);
    let mut f = syn4.clone();
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    bad.push(f);
    let mut f = syn4.clone();
    f[14 + 20 + 12] = 0x40; // TCP data offset 4 (< 5)
    bad.push(f);
    let mut f = syn4.clone();
    f[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length shorter than IHL
    bad.push(f);
    let mut f = syn6.clone();
    f[14] = 0x40; // version 4 in an IPv6 ethertype
    bad.push(f);
    for (i, f) in bad.iter().enumerate() {
        let out = lb.test_run(f).unwrap();
        assert_eq!(out.action, XdpAction::Drop, "bad frame {i}");
    }
    assert!(lb.stats().unwrap().malformed >= bad.len() as u64);
    // A fragment of a VIP's flow is not balanced.
    let mut f = syn4.clone();
    f[20] = 0x20; // MF
    assert_eq!(lb.test_run(&f).unwrap().action, XdpAction::Pass);
}

#[test]
fn nat_rewrites_and_translates_replies_with_valid_checksums() {
    if !common::can_run("nat_rewrites_and_translates_replies_with_valid_checksums") {
        return;
    }
    let mut lb = lb();
    let vip = Vip::tcp(vip_addr().into());
    let mut b = backend(7, 1);
    b.port = 8080;
    lb.set_vip(vip, Forwarding::Nat, &[b]).unwrap();
    for (port, payload) in [(50_000u16, &b""[..]), (50_001, b"odd length payload!")] {
        let pkt = tcp4(client(port), vip_addr(), SYN, payload);
        assert!(checksums_ok_v4(&pkt));
        let out = lb.test_run(&pkt).unwrap();
        assert_eq!(out.action, XdpAction::Tx);
        assert_eq!(ipv4_dst(&out.frame), "10.0.1.7:8080".parse().unwrap());
        assert_eq!(ipv4_src(&out.frame), client(port));
        assert_eq!(dst_mac(&out.frame), b.mac);
        assert!(checksums_ok_v4(&out.frame), "forward checksums");

        // The backend's reply comes back to the LB and leaves as the VIP.
        let backend_mac = b.mac;
        let reply = tcp4_macs(
            backend_mac,
            LB_MAC,
            "10.0.1.7:8080".parse().unwrap(),
            client(port),
            SYN | ACK,
            payload,
        );
        let out = lb.test_run(&reply).unwrap();
        assert_eq!(out.action, XdpAction::Tx);
        assert_eq!(ipv4_src(&out.frame), vip_addr());
        assert_eq!(ipv4_dst(&out.frame), client(port));
        assert_eq!(dst_mac(&out.frame), CLIENT_MAC);
        assert_eq!(src_mac(&out.frame), LB_MAC);
        assert!(checksums_ok_v4(&out.frame), "reply checksums");
    }
    // A reply for which no flow was forwarded passes to the stack.
    let stray = tcp4_macs(
        b.mac,
        LB_MAC,
        "10.0.1.7:8080".parse().unwrap(),
        client(1),
        ACK,
        b"",
    );
    assert_eq!(lb.test_run(&stray).unwrap().action, XdpAction::Pass);
    assert_eq!(lb.stats().unwrap().nat_replies, 2);
}

#[test]
fn ipv6_vip_forwards_by_dsr() {
    if !common::can_run("ipv6_vip_forwards_by_dsr") {
        return;
    }
    let mut lb = lb();
    let vip6 = SocketAddrV6::new(v6("fd00::100"), 443, 0, 0);
    let backends = [backend(1, 1), backend(2, 1)];
    lb.set_vip(Vip::tcp(vip6.into()), Forwarding::Dsr, &backends)
        .unwrap();
    for port in 1000..1100u16 {
        let src = SocketAddrV6::new(v6("fd00::1"), port, 0, 0);
        let out = lb.test_run(&tcp6(src, vip6, SYN)).unwrap();
        assert_eq!(out.action, XdpAction::Tx);
        let want = lb
            .predict(&Flow {
                src: SocketAddr::V6(src),
                dst: SocketAddr::V6(vip6),
                proto: Protocol::Tcp,
            })
            .unwrap();
        assert_eq!(dst_mac(&out.frame), want.mac);
    }
    let err = lb
        .set_vip(Vip::tcp(vip6.into()), Forwarding::Nat, &backends)
        .unwrap_err();
    assert!(matches!(err, Error::NatNeedsIpv4 { .. }), "{err}");
}

#[test]
fn vip_without_backends_drops_and_removed_vip_passes() {
    if !common::can_run("vip_without_backends_drops_and_removed_vip_passes") {
        return;
    }
    let mut lb = lb();
    let vip = Vip::tcp(vip_addr().into());
    lb.set_vip(vip, Forwarding::Dsr, &[]).unwrap();
    let syn = tcp4(client(9), vip_addr(), SYN, b"");
    assert_eq!(lb.test_run(&syn).unwrap().action, XdpAction::Drop);
    assert_eq!(lb.stats().unwrap().no_backend, 1);
    lb.remove_vip(&vip).unwrap();
    assert_eq!(lb.test_run(&syn).unwrap().action, XdpAction::Pass);
    assert!(matches!(lb.remove_vip(&vip), Err(Error::UnknownVip { .. })));
}

#[test]
fn config_errors_are_typed() {
    if !common::can_run("config_errors_are_typed") {
        return;
    }
    let err = XdpLb::load(XdpLbConfig {
        ring_size: 1000,
        ..XdpLbConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, Error::RingSize { ring_size: 1000 }));
    let mut lb = XdpLb::load(XdpLbConfig {
        ring_size: 7,
        max_vips: 1,
        max_backends: 2,
        conntrack_entries: 16,
    })
    .unwrap();
    lb.set_vip(
        Vip::tcp(vip_addr().into()),
        Forwarding::Dsr,
        &[backend(1, 1)],
    )
    .unwrap();
    let second = Vip::tcp("10.0.0.101:80".parse().unwrap());
    assert!(matches!(
        lb.set_vip(second, Forwarding::Dsr, &[backend(1, 1)]),
        Err(Error::TooManyVips { max: 1 })
    ));
    assert!(matches!(
        lb.attach("fg-no-such-if0", Default::default()),
        Err(Error::UnknownInterface { .. })
    ));
}
