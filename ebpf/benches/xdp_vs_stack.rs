//! Packets per second through the XDP balancer on a veth pair, against the same flows
//! forwarded by the Linux stack (no balancer), in the same run. Needs root.
//!
//! ```text
//!   gen ns: veth A (10.80.0.1, also the "backend")  ◀──▶  veth B (10.80.0.2): lb ns
//!   xdp_gen (BPF_PROG_TEST_RUN, live frames) sends 64-byte UDP frames to VIP
//!   10.80.0.100:80 out of A, 16,384 source ports.
//!   xdp:   B runs xdp_lb natively: DSR to A's MAC, XDP_TX back to A.
//!   stack: B runs only xdp_pass (a veth needs an XDP program to take XDP_TX frames);
//!          the lb ns forwards by its route to the VIP (via 10.80.0.1) back out of B.
//! ```
//!
//! Counted: frames that come back to A (its rx_packets), over the wall time of the run.
//! Everything runs on the generating CPU (veth NAPI runs in its softirq), so the figure
//! is "generator + forwarding" on one core; the ratio is what to read.
//!
//! `cargo bench -p flowgate-ebpf --bench xdp_vs_stack` (benches/ebpf-xdp-lb.sh).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[allow(dead_code)]
#[path = "../tests/common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use aya::include_bytes_aligned;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use flowgate_ebpf::xdp_lb::{AttachMode, Backend, Forwarding, Protocol, Vip, XdpLb, XdpLbConfig};
use netns::{Netns, unique, veth};

static GEN: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_gen.o"));

const A_MAC: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 1];
const B_MAC: &str = "02:0b:00:00:00:01";
const B_MAC_B: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 1];
const FRAMES: u32 = 3_000_000;

fn cfg() -> XdpLbConfig {
    XdpLbConfig {
        ring_size: 65_537,
        max_vips: 2,
        max_backends: 8,
        conntrack_entries: 65_536,
    }
}

fn frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&B_MAC_B);
    f.extend_from_slice(&A_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = [0u8; 18];
    let udp_len = 8 + payload.len();
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 80, 0, 1, 10, 80, 0, 100]);
    let mut sum = 0u32;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&1024u16.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(&payload);
    f
}

fn rx_packets(ifname: &str) -> u64 {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{ifname}:")))
        .unwrap();
    let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
    fields[1].parse().unwrap()
}

fn sysctl(path: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{path}"), value).unwrap();
}

/// Sends FRAMES frames out of `a` and returns packets/s that came back.
fn run(gen_ns: &Netns, a: &str) -> (f64, u64) {
    let a = a.to_owned();
    gen_ns.run(move || {
        let data = frame();
        let tmpl: [u8; 42] = data[..42].try_into().unwrap();
        let mut bpf = aya::EbpfLoader::new()
            .override_global("tmpl", &tmpl, true)
            .load(GEN)
            .unwrap();
        let prog: &mut Xdp = bpf.program_mut("xdp_gen").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let ifindex = nix::net::if_::if_nametoindex(a.as_str()).unwrap();
        let mut ctx = Vec::new();
        for v in [0u32, data.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let before = rx_packets(&a);
        let start = Instant::now();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
        opts.ctx_in = Some(&ctx);
        opts.repeat = FRAMES;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
        prog.test_run(opts).unwrap();
        let elapsed = start.elapsed();
        std::thread::sleep(Duration::from_millis(100));
        let back = rx_packets(&a) - before;
        (back as f64 / elapsed.as_secs_f64(), back)
    })
}

/// The balancer program's own cost per packet (BPF_PROG_TEST_RUN, repeat), by path. The
/// kernel does not reset the frame between repeats, so NAT (which rewrites the address
/// the next run would look up) cannot be timed this way.
fn program_cost() {
    let mut lb = XdpLb::load(cfg()).unwrap();
    let vip = Vip::tcp("10.80.0.100:80".parse().unwrap());
    let backends: Vec<Backend> = (1..=3u8)
        .map(|i| Backend {
            addr: std::net::Ipv4Addr::new(10, 80, 1, i).into(),
            port: 0,
            mac: [2, 0, 0, 0, 0, i],
            weight: 1,
        })
        .collect();
    lb.set_vip(vip, Forwarding::Dsr, &backends).unwrap();
    lb.set_vip(
        Vip::tcp("10.80.0.101:80".parse().unwrap()),
        Forwarding::Nat,
        &backends,
    )
    .unwrap();
    let tcp = |dst: [u8; 4], flags: u8| {
        let mut f = frame();
        f[23] = 6; // protocol TCP
        f[30..34].copy_from_slice(&dst);
        f.truncate(34);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40_000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        f.extend_from_slice(&t);
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f
    };
    let cases = [
        ("not a VIP (pass)", tcp([10, 80, 0, 99], 0x02)),
        (
            "SYN: Maglev + conntrack insert, DSR",
            tcp([10, 80, 0, 100], 0x02),
        ),
        ("ACK: conntrack hit, DSR", tcp([10, 80, 0, 100], 0x10)),
        (
            "SYN: NAT (rewrite, checksums, reply entry)",
            tcp([10, 80, 0, 101], 0x02),
        ),
    ];
    for (name, f) in cases {
        let (_, per) = lb.test_run_repeat(&f, 1_000_000).unwrap();
        println!("xdp_lb program alone, {name}: {} ns/packet", per.as_nanos());
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("xdp_vs_stack: SKIPPED, needs root (network namespaces, XDP)");
        return;
    }
    let gen_ns = Netns::new("g");
    let lb_ns = Netns::new("l");
    let a = unique("a");
    let b = unique("b");
    veth(&a, &gen_ns, Some("02:0a:00:00:00:01"), &b, &lb_ns);
    lb_ns.ip(&["link", "set", &b, "address", B_MAC]);
    gen_ns.ip(&["addr", "add", "10.80.0.1/24", "dev", &a]);
    lb_ns.ip(&["addr", "add", "10.80.0.2/24", "dev", &b]);
    lb_ns.ip(&[
        "neigh",
        "add",
        "10.80.0.1",
        "lladdr",
        "02:0a:00:00:00:01",
        "dev",
        &b,
        "nud",
        "permanent",
    ]);
    lb_ns.ip(&["route", "add", "10.80.0.100/32", "via", "10.80.0.1"]);
    let bb = b.clone();
    lb_ns.run(move || {
        sysctl("net/ipv4/ip_forward", "1");
        sysctl("net/ipv4/conf/all/send_redirects", "0");
        sysctl(&format!("net/ipv4/conf/{bb}/send_redirects"), "0");
    });
    // A takes B's XDP_TX frames only with an XDP program of its own.
    let aa = a.clone();
    let _a_pass = gen_ns.run(move || {
        let mut p = XdpLb::load(cfg()).unwrap();
        p.attach_pass(&aa, AttachMode::Native).unwrap();
        p
    });

    let mut results = Vec::new();
    for round in 0..3 {
        // Linux stack forwarding.
        let bb = b.clone();
        let pass = lb_ns.run(move || {
            let mut p = XdpLb::load(cfg()).unwrap();
            p.attach_pass(&bb, AttachMode::Native).unwrap();
            p
        });
        let (stack_pps, stack_n) = run(&gen_ns, &a);
        drop(pass);

        // The XDP balancer, DSR to A.
        let bb = b.clone();
        let mut lb = lb_ns.run(move || {
            let mut lb = XdpLb::load(cfg()).unwrap();
            lb.attach(&bb, AttachMode::Native).unwrap();
            lb
        });
        let backend = Backend {
            addr: "10.80.0.1".parse().unwrap(),
            port: 0,
            mac: A_MAC,
            weight: 1,
        };
        let vip = Vip {
            addr: "10.80.0.100".parse().unwrap(),
            port: 80,
            proto: Protocol::Udp,
        };
        lb.set_vip(vip, Forwarding::Dsr, &[backend]).unwrap();
        let (xdp_pps, xdp_n) = run(&gen_ns, &a);
        let counted = lb.vip_counters(&vip).unwrap().packets;
        drop(lb);
        println!(
            "round {round}: stack {stack_pps:.0} pps ({stack_n} of {FRAMES} back), \
             xdp_lb {xdp_pps:.0} pps ({xdp_n} back, {counted} balanced), ratio {:.2}x",
            xdp_pps / stack_pps
        );
        results.push(xdp_pps / stack_pps);
    }
    program_cost();
    results.sort_by(f64::total_cmp);
    println!(
        "xdp_lb vs Linux stack forwarding, 64-byte UDP: median ratio {:.2}x over {} rounds",
        results[results.len() / 2],
        results.len()
    );
}
