//! End to end through real namespaces: client ns → LB ns (the balancer in native XDP on
//! its veth) → three backend ns, all on one bridge (in a switch ns). Needs root.
//!
//! ```text
//!   client 10.77.0.1 ─┐ (and 10.78.0.1 for NAT)                      ┌─ b1 10.77.0.11 (VIP on lo)
//!   lb     10.77.0.2 ─┼── bridge (switch ns) ─┼─ b2 10.77.0.12 (VIP on lo)
//!                     │                      └─ b3 10.77.0.13 (VIP on lo)
//!   client: VIP via 10.77.0.2 → XDP rewrites the MAC (DSR) or the address (NAT) → XDP_TX
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};

use common::netns::{Netns, tx_checksum_off, unique, veth};
use flowgate_ebpf::xdp_lb::{
    AttachMode, AttachedMode, Backend, Flow, Forwarding, Protocol, Vip, XdpLb, XdpLbConfig,
};

const VIP_DSR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const VIP_NAT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
const PORT: u16 = 80;
const LB_IP: &str = "10.77.0.2";

struct Topology {
    // Field order is drop order: backends' servers stop, then namespaces go.
    servers: Vec<Server>,
    _pass: XdpLb,
    client: Netns,
    lb_ns: Netns,
    _backend_ns: Vec<Netns>,
    _switch: Netns,
    lb_if: String,
    backends: Vec<Backend>,
}

/// A backend: accepts on 0.0.0.0:80, answers its id byte on connect and per byte read.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(ns: &Netns, id: u8) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:80").unwrap();
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    std::thread::spawn(move || {
                        if s.write_all(&[id]).is_err() {
                            return;
                        }
                        let mut b = [0u8; 1];
                        while let Ok(1) = s.read(&mut b) {
                            if s.write_all(&[id]).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    Server {
        stop,
        thread: Some(thread),
    }
}

fn setup(weights: [u32; 3]) -> Topology {
    let switch = Netns::new("s");
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let plug = |ns: &Netns, inner: &str, mac: Option<&str>, addr: &str| {
        let outer = unique("p");
        veth(inner, ns, mac, &outer, &switch);
        switch.ip(&["link", "set", &outer, "master", "br0"]);
        ns.ip(&["addr", "add", addr, "dev", inner]);
        let name = inner.to_owned();
        ns.run(move || tx_checksum_off(&name));
        outer
    };
    let client = Netns::new("c");
    let c_if = unique("c");
    plug(&client, &c_if, Some("02:c1:00:00:00:01"), "10.77.0.1/24");
    client.ip(&["route", "add", &format!("{VIP_DSR}/32"), "via", LB_IP]);
    // NATed flows come from a second client address that backends route via the LB, so
    // their replies pass the LB to be translated back (DSR replies go straight back).
    client.ip(&["addr", "add", "10.78.0.1/32", "dev", &c_if]);
    client.ip(&[
        "route",
        "add",
        &format!("{VIP_NAT}/32"),
        "via",
        LB_IP,
        "src",
        "10.78.0.1",
    ]);

    let lb_ns = Netns::new("l");
    let lb_if = unique("l");
    let lb_outer = plug(&lb_ns, &lb_if, Some("02:1b:00:00:00:01"), "10.77.0.2/24");

    let mut backend_ns = Vec::new();
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let ns = Netns::new(&format!("b{i}"));
        let ifname = unique("b");
        let mac = [0x02, 0xbe, 0, 0, 0, i as u8 + 1];
        let mac_s = mac.map(|b| format!("{b:02x}")).join(":");
        let addr = Ipv4Addr::new(10, 77, 0, 11 + i as u8);
        plug(&ns, &ifname, Some(&mac_s), &format!("{addr}/24"));
        ns.ip(&["addr", "add", &format!("{VIP_DSR}/32"), "dev", "lo"]);
        ns.ip(&["route", "add", "10.78.0.0/24", "via", LB_IP]);
        servers.push(serve(&ns, i as u8));
        backends.push(Backend {
            addr: addr.into(),
            port: 0,
            mac,
            weight: *w,
        });
        backend_ns.push(ns);
    }
    // Native XDP_TX on a veth reaches the peer only if the peer runs XDP itself.
    let pass = switch.run(|| {
        let mut p = XdpLb::load(small()).unwrap();
        assert_eq!(
            p.attach_pass(&lb_outer, AttachMode::Native).unwrap(),
            AttachedMode::Native
        );
        p
    });
    Topology {
        servers,
        _pass: pass,
        client,
        lb_ns,
        _backend_ns: backend_ns,
        _switch: switch,
        lb_if,
        backends,
    }
}

fn small() -> XdpLbConfig {
    XdpLbConfig {
        ring_size: 65_537,
        max_vips: 4,
        max_backends: 64,
        conntrack_entries: 65_536,
    }
}

/// Opens `n` connections to `vip` from the client ns, one at a time, from source ports
/// `first_port..` (fixed ports make the run reproducible; the namespace is fresh, so
/// they are free); returns each connection's client port and the backend id that
/// answered.
fn connect_many(t: &Topology, vip: Ipv4Addr, first_port: u16, n: u16) -> Vec<(u16, u8)> {
    let src_ip = if vip == VIP_NAT {
        Ipv4Addr::new(10, 78, 0, 1)
    } else {
        Ipv4Addr::new(10, 77, 0, 1)
    };
    t.client.run(|| {
        let mut got = Vec::with_capacity(usize::from(n));
        let addr = SocketAddr::from((vip, PORT));
        for port in first_port..first_port + n {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProtocol::TCP)).unwrap();
            s.bind(&SocketAddr::from((src_ip, port)).into()).unwrap();
            s.connect_timeout(&addr.into(), Duration::from_secs(3))
                .unwrap();
            let mut s = TcpStream::from(s);
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            got.push((port, b[0]));
        }
        got
    })
}

fn flow(port: u16, vip: Ipv4Addr) -> Flow {
    let client = if vip == VIP_NAT {
        [10, 78, 0, 1]
    } else {
        [10, 77, 0, 1]
    };
    Flow {
        src: SocketAddr::from((client, port)),
        dst: SocketAddr::from((vip, PORT)),
        proto: Protocol::Tcp,
    }
}

/// Each connection went where user-space Maglev says, and the spread is within 5
/// percentage points of the weights.
fn check_spread(lb: &XdpLb, t: &Topology, vip: Ipv4Addr, got: &[(u16, u8)], live: &[usize]) {
    let mut counts = [0usize; 3];
    for &(port, id) in got {
        let want = lb.predict(&flow(port, vip)).unwrap();
        assert_eq!(
            want,
            t.backends[usize::from(id)],
            "port {port}: kernel and user-space Maglev disagree"
        );
        counts[usize::from(id)] += 1;
    }
    let total_w: u32 = live.iter().map(|&i| t.backends[i].weight).sum();
    for i in 0..3 {
        let want = if live.contains(&i) {
            f64::from(t.backends[i].weight) / f64::from(total_w)
        } else {
            0.0
        };
        let share = counts[i] as f64 / got.len() as f64;
        assert!(
            (share - want).abs() <= 0.05,
            "backend {i}: share {share:.3}, weight share {want:.3} ({counts:?})"
        );
    }
    eprintln!("spread over backends {live:?}: {counts:?}");
}

#[test]
fn xdp_lb_end_to_end() {
    if !common::can_run_in_netns("xdp_lb_end_to_end") {
        return;
    }
    let t = setup([1, 2, 3]);
    let if_name = t.lb_if.clone();
    let mut lb = t.lb_ns.run(move || {
        let mut lb = XdpLb::load(small()).unwrap();
        let mode = lb.attach(&if_name, AttachMode::Auto).unwrap();
        assert_eq!(mode, AttachedMode::Native, "veth supports native XDP");
        lb
    });
    let dsr = Vip::tcp(SocketAddrV4::new(VIP_DSR, PORT).into());
    lb.set_vip(dsr, Forwarding::Dsr, &t.backends).unwrap();

    // 1,000 connections, spread by weight 1:2:3.
    let got = connect_many(&t, VIP_DSR, 20_000, 1000);
    check_spread(&lb, &t, VIP_DSR, &got, &[0, 1, 2]);
    let c = lb.vip_counters(&dsr).unwrap();
    assert!(
        c.packets >= 3000,
        "SYN, ACK, FIN per connection at least: {c:?}"
    );

    // Long-lived connections, then backend 2 is removed.
    let held: Vec<(TcpStream, u8)> = t.client.run(|| {
        (0..90)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((VIP_DSR, PORT)),
                    Duration::from_secs(3),
                )
                .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                (s, b[0])
            })
            .collect()
    });
    let on_removed = held.iter().filter(|(_, id)| *id == 2).count();
    assert!(on_removed > 20, "some held connections are on backend 2");
    lb.set_vip(dsr, Forwarding::Dsr, &t.backends[..2]).unwrap();
    // Every existing connection still talks to its backend (conntrack), the removed
    // one included.
    for (mut s, id) in held {
        s.write_all(b"?").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b[0], id, "an existing flow moved");
    }
    // New connections spread over the two remaining backends, 1:2.
    let got = connect_many(&t, VIP_DSR, 22_000, 1000);
    check_spread(&lb, &t, VIP_DSR, &got, &[0, 1]);
    assert!(lb.stats().unwrap().conntrack_hits > 0);

    // NAT: the backend sees its own address; replies are translated back to the VIP.
    let nat = Vip::tcp(SocketAddrV4::new(VIP_NAT, PORT).into());
    lb.set_vip(nat, Forwarding::Nat, &t.backends).unwrap();
    let got = connect_many(&t, VIP_NAT, 24_000, 60);
    for &(port, id) in &got {
        assert_eq!(
            lb.predict(&flow(port, VIP_NAT)).unwrap(),
            t.backends[usize::from(id)]
        );
    }
    assert!(lb.stats().unwrap().nat_replies >= 120, "{:?}", lb.stats());

    drop(lb); // detaches: the VIP is no longer answered
    let refused = t.client.run(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from((VIP_DSR, PORT)),
            Duration::from_millis(300),
        )
        .is_err()
    });
    assert!(
        refused,
        "traffic still balanced after the loader was dropped"
    );
    drop(t.servers);
}
