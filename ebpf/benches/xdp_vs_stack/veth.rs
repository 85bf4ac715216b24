//! Real traffic: frames sent into a veth from another namespace.
//!
//! ```text
//!   client ns                     switch ns                        lb ns
//!   c0 ── sc ─┐                                              ┌─ sl (xdp_pass) ── l0 10.81.0.2
//!             └────────────── br0 (static fdb) ──────────────┤   xdp: xdp_lb native, DSR, XDP_TX
//!                                                            │   stack: no program; forwards by
//!                                                            │   its route to the VIP, out of l0
//!                                                            └─ sb ── b0 10.81.0.3   backend ns
//!                                                                     VIP 10.81.0.100 on lo,
//!                                                                     UDP socket on VIP:80
//! ```
//!
//! The client sends 64-byte UDP frames (16,384 source ports) to VIP:80 with the LB's MAC
//! from an AF_PACKET socket ([`crate::sender`]), for `SECONDS` per run. Both modes cross
//! the same devices; only l0's program differs (sl runs `xdp_pass` in both, since a veth
//! takes its peer's native `XDP_TX` frames only when it runs XDP itself). Counted:
//! datagrams that reach the backend's UDP socket (`Udp: InDatagrams + RcvbufErrors` of
//! the backend namespace: nobody reads the socket, so most are dropped at its full
//! buffer, which is cheap and the same in both modes), over the sending time. The
//! balancer's per-CPU VIP counter is reported next to it. After each run the socket is
//! drained and must hold the bench's datagrams.
//!
//! What it can show: l0's native XDP receives skbs from its peer and copies each into a
//! page with 256 bytes of headroom before the program runs (veth has no DMA buffers),
//! and sl turns the `XDP_TX` frames back into skbs, so the balancer replaces only the
//! forwarding step (`ip_forward`, route and neighbour lookup) of a path that the sender,
//! the bridge and the veths dominate.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use flowgate_ebpf::xdp_lb::{AttachMode, AttachedMode, Backend, Forwarding, Vip, XdpLb};

use crate::netns::{Netns, try_ip, try_veth, unique};
use crate::sender::{self, Sent};
use crate::{Context, FLOWS, PAYLOAD, ROUNDS, Result, cfg, kpps, median, sysctl, udp_frame};

const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 1];
const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 1];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 100);
const PORT: u16 = 80;
/// Sending time per run.
const SECONDS: u64 = 2;
/// Frames per run at most (more than a core sends in `SECONDS`).
const MAX_FRAMES: u64 = 20_000_000;

fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The namespaces, devices and programs of the run. Field order is drop order: the
/// programs detach, the socket closes, then the namespaces (and their devices) go.
struct Topology {
    lb: XdpLb,
    _pass: XdpLb,
    backend_socket: UdpSocket,
    client: Netns,
    lb_ns: Netns,
    backend: Netns,
    _switch: Netns,
    client_if: String,
    lb_if: String,
}

fn setup() -> Result<Topology> {
    let switch = Netns::create("s")?;
    switch.try_ip(&["link", "add", "br0", "type", "bridge"])?;
    switch.try_ip(&["link", "set", "br0", "up"])?;
    // A built-in br_netfilter would hand every bridged frame to netfilter.
    switch.try_run(|| {
        for t in ["iptables", "ip6tables", "arptables"] {
            let path = format!("net/bridge/bridge-nf-call-{t}");
            if std::path::Path::new("/proc/sys").join(&path).exists() {
                sysctl(&path, "0")?;
            }
        }
        Ok::<_, String>(())
    })??;
    // Plugs `inner` (in `ns`, with `mac`) into the bridge; returns the bridge-side name.
    let plug = |ns: &Netns, inner: &str, mac: [u8; 6]| -> Result<String> {
        let outer = unique("p");
        try_veth(inner, ns, Some(&mac_str(mac)), &outer, &switch)?;
        switch.try_ip(&["link", "set", &outer, "master", "br0"])?;
        // Static entries: the bridge never floods the run's frames to every port.
        try_ip(&[
            "netns",
            "exec",
            &switch.name,
            "bridge",
            "fdb",
            "replace",
            &mac_str(mac),
            "dev",
            &outer,
            "master",
            "static",
        ])?;
        Ok(outer)
    };
    let client = Netns::create("c")?;
    let client_if = unique("c");
    let lb_ns = Netns::create("l")?;
    let lb_if = unique("l");
    let backend = Netns::create("b")?;
    let backend_if = unique("b");
    plug(&client, &client_if, CLIENT_MAC)?;
    let lb_outer = plug(&lb_ns, &lb_if, LB_MAC)?;
    plug(&backend, &backend_if, BACKEND_MAC)?;

    client.try_ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", &client_if])?;
    lb_ns.try_ip(&["addr", "add", "10.81.0.2/24", "dev", &lb_if])?;
    lb_ns.try_ip(&[
        "neigh",
        "replace",
        &BACKEND_IP.to_string(),
        "lladdr",
        &mac_str(BACKEND_MAC),
        "dev",
        &lb_if,
        "nud",
        "permanent",
    ])?;
    lb_ns.try_ip(&[
        "route",
        "add",
        &format!("{VIP}/32"),
        "via",
        &BACKEND_IP.to_string(),
    ])?;
    let l = lb_if.clone();
    lb_ns.try_run(move || {
        sysctl("net/ipv4/ip_forward", "1")?;
        // Forwarding out of the interface it came in on would send ICMP redirects.
        sysctl("net/ipv4/conf/all/send_redirects", "0")?;
        sysctl(&format!("net/ipv4/conf/{l}/send_redirects"), "0")
    })??;
    backend.try_ip(&[
        "addr",
        "add",
        &format!("{BACKEND_IP}/24"),
        "dev",
        &backend_if,
    ])?;
    backend.try_ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    let backend_socket = backend
        .try_run(|| {
            let s = UdpSocket::bind((VIP, PORT))?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })?
        .ctx(format!("backend socket on {VIP}:{PORT}"))?;

    let pass = switch.try_run(|| {
        let mut p = XdpLb::load(cfg()).ctx("load the pass-only XDP program")?;
        let mode = p
            .attach_pass(&lb_outer, AttachMode::Native)
            .ctx(format!("native XDP (pass) on veth {lb_outer}"))?;
        if mode != AttachedMode::Native {
            return Err(format!("veth {lb_outer} took XDP only in generic mode"));
        }
        Ok(p)
    })??;
    let mut lb = XdpLb::load(cfg()).ctx("load xdp_lb")?;
    let backend_entry = Backend {
        addr: BACKEND_IP.into(),
        port: 0,
        mac: BACKEND_MAC,
        weight: 1,
    };
    lb.set_vip(vip(), Forwarding::Dsr, &[backend_entry])
        .ctx("configure the VIP")?;
    Ok(Topology {
        lb,
        _pass: pass,
        backend_socket,
        client,
        lb_ns,
        backend,
        _switch: switch,
        client_if,
        lb_if,
    })
}

fn vip() -> Vip {
    Vip::udp((VIP, PORT).into())
}

/// Datagrams that reached UDP in the backend namespace: `InDatagrams + RcvbufErrors`
/// of `/proc/thread-self/net/snmp` (the calling thread's namespace).
fn udp_received() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").ctx("read net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Err("net/snmp has no Udp lines".into());
    };
    let field = |name: &str| -> Result<u64> {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("net/snmp has no Udp {name}"))
    };
    Ok(field("InDatagrams")? + field("RcvbufErrors")?)
}

impl Topology {
    fn delivered(&self) -> Result<u64> {
        self.backend.try_run(udp_received)?
    }

    /// Polls the backend's count until it stops moving (two equal reads 20 ms apart;
    /// everything in flight is in softirq work that ends within microseconds), at most
    /// 2 s.
    fn settled_delivered(&self) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.delivered()?;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.delivered()?;
            if now == last || Instant::now() >= deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Reads what the backend's socket holds; returns how many datagrams carry the
    /// bench's payload.
    fn drain(&self) -> usize {
        let mut buf = [0u8; 64];
        let mut ours = 0;
        // Bounded: the socket holds at most its receive buffer.
        for _ in 0..1_000_000 {
            match self.backend_socket.recv(&mut buf) {
                Ok(n) => ours += usize::from(buf.get(..n) == Some(&PAYLOAD[..])),
                Err(_) => break,
            }
        }
        ours
    }

    /// One run: frames from the client for `SECONDS`.
    fn measure(&self, frames: &[[u8; 60]]) -> Result<Measured> {
        crate::check_interrupted()?;
        self.drain();
        let before = self.delivered()?;
        let c = self.client_if.clone();
        let sent = self.client.try_run(move || {
            sender::blast(&c, frames, Duration::from_secs(SECONDS), MAX_FRAMES)
        })??;
        self.settled_delivered()?;
        // UDP counts a queued datagram in InDatagrams only when it is read.
        let drained = self.drain();
        let delivered = self.delivered()?.saturating_sub(before);
        if delivered == 0 || drained == 0 {
            return Err(format!(
                "none of {} frames reached the backend's socket ({drained} read back)",
                sent.frames
            ));
        }
        Ok(Measured { sent, delivered })
    }

    fn attach_lb(&mut self) -> Result<()> {
        let Self {
            lb, lb_ns, lb_if, ..
        } = self;
        let mode = lb_ns
            .try_run(|| lb.attach(lb_if, AttachMode::Native))?
            .ctx(format!("native XDP (xdp_lb) on veth {lb_if}"))?;
        if mode != AttachedMode::Native {
            return Err(format!("veth {lb_if} took XDP only in generic mode"));
        }
        Ok(())
    }

    fn detach_lb(&mut self) -> Result<()> {
        let Self {
            lb, lb_ns, lb_if, ..
        } = self;
        lb_ns
            .try_run(|| lb.detach(lb_if))?
            .ctx(format!("detach xdp_lb from {lb_if}"))
    }
}

struct Measured {
    sent: Sent,
    delivered: u64,
}

impl Measured {
    fn pps(&self) -> f64 {
        self.delivered as f64 / self.sent.elapsed.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "{} pps ({} sent, {} delivered, {} lost on the way, {} refused by the client's \
             veth)",
            kpps(self.pps()),
            self.sent.frames,
            self.delivered,
            self.sent.frames.saturating_sub(self.delivered),
            self.sent.refused,
        )
    }
}

/// The `veth` mode: `ROUNDS` rounds of stack forwarding then the balancer.
pub fn bench() -> Result<()> {
    let mut t = setup()?;
    let frames: Vec<[u8; 60]> = (0..FLOWS)
        .map(|i| udp_frame(LB_MAC, CLIENT_MAC, CLIENT_IP, 1024 + i, VIP, PORT))
        .collect();
    let (mut stack, mut xdp, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let s = t
            .measure(&frames)
            .map_err(|e| format!("Linux stack forwarding: {e}"))?;
        t.attach_lb()?;
        let balanced_before = t.lb.vip_counters(&vip()).ctx("read VIP counters")?.packets;
        let x = t.measure(&frames).map_err(|e| format!("xdp_lb: {e}"));
        let balanced =
            t.lb.vip_counters(&vip())
                .ctx("read VIP counters")?
                .packets
                .saturating_sub(balanced_before);
        t.detach_lb()?;
        let x = x?;
        if balanced == 0 {
            return Err("xdp_lb counted none of the frames it should have balanced".into());
        }
        println!(
            "veth round {round}: stack {} | xdp_lb {}, {balanced} counted by xdp_lb | \
             ratio {:.2}x",
            s.describe(),
            x.describe(),
            x.pps() / s.pps()
        );
        stack.push(s.pps());
        xdp.push(x.pps());
        ratio.push(x.pps() / s.pps());
    }
    println!(
        "veth: 64-byte UDP frames, {FLOWS} flows, client ns → bridge → LB veth → bridge → \
         backend socket, {SECONDS} s per run: Linux stack forwarding {} pps, xdp_lb (native \
         XDP, DSR) {} pps, ratio {:.2}x (medians of {ROUNDS})",
        kpps(median(&mut stack)),
        kpps(median(&mut xdp)),
        median(&mut ratio)
    );
    Ok(())
}
