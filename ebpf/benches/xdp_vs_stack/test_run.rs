//! Frames made in the kernel: `BPF_PROG_TEST_RUN` in live-frames mode.
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
//! Before that, the balancer program's own cost per packet, by path
//! (`XdpLb::test_run_repeat`, which needs no live frames).
//!
//! Some kernels refuse live frames with EPERM (seen on 6.18 VMs); the mode then fails
//! with that one line, and the `veth` mode is the one to run.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aya::include_bytes_aligned;
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use flowgate_ebpf::xdp_lb::{AttachMode, Backend, Forwarding, Vip, XdpLb};

use crate::netns::{Netns, try_veth, unique};
use crate::{Context, ROUNDS, Result, cfg, chain, kpps, median, netdev_counter, sysctl, udp_frame};

static GEN: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_gen.o"));

const A_MAC: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 1];
const B_MAC: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 1];
const FRAMES: u32 = 3_000_000;

fn frame() -> [u8; 60] {
    udp_frame(
        B_MAC,
        A_MAC,
        Ipv4Addr::new(10, 80, 0, 1),
        1024,
        Ipv4Addr::new(10, 80, 0, 100),
        80,
    )
}

/// What the kernel said to a live-frames run, as one line.
fn live_frames_error(e: &ProgramError) -> String {
    if let ProgramError::SyscallError(s) = e
        && s.io_error.raw_os_error() == Some(libc::EPERM)
    {
        return format!(
            "the kernel refused BPF_PROG_TEST_RUN in live-frames mode ({}); \
             `benches/ebpf-xdp-lb.sh veth` measures with real traffic instead",
            s.io_error
        );
    }
    format!("BPF_PROG_TEST_RUN in live-frames mode: {}", chain(e))
}

/// Sends FRAMES frames out of `a` (in `gen_ns`); returns packets/s that came back and
/// how many.
fn run(gen_ns: &Netns, a: &str) -> Result<(f64, u64)> {
    gen_ns.try_run(|| {
        let data = frame();
        let mut tmpl = [0u8; 42];
        tmpl.copy_from_slice(&data[..42]);
        let mut bpf = aya::EbpfLoader::new()
            .override_global("tmpl", &tmpl, true)
            .load(GEN)
            .ctx("load the xdp_gen generator")?;
        let prog: &mut Xdp = bpf
            .program_mut("xdp_gen")
            .ok_or("the xdp_gen object has no xdp_gen program")?
            .try_into()
            .ctx("xdp_gen")?;
        prog.load().ctx("load xdp_gen")?;
        let ifindex = nix::net::if_::if_nametoindex(a).ctx(format!("interface {a}"))?;
        let mut ctx = Vec::new();
        for v in [0u32, data.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let before = netdev_counter(a, 1)?;
        let start = Instant::now();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
        opts.ctx_in = Some(&ctx);
        opts.repeat = FRAMES;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
        prog.test_run(opts).map_err(|e| live_frames_error(&e))?;
        let elapsed = start.elapsed();
        // Poll until A's count stops moving (at most 1 s).
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = netdev_counter(a, 1)?;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = netdev_counter(a, 1)?;
            if now == last || Instant::now() >= deadline {
                break;
            }
            last = now;
        }
        let back = last.saturating_sub(before);
        Ok((back as f64 / elapsed.as_secs_f64(), back))
    })?
}

/// The balancer program's own cost per packet (BPF_PROG_TEST_RUN, repeat), by path. The
/// kernel does not reset the frame between repeats, so NAT (which rewrites the address
/// the next run would look up: every run after the first would time a pass) is not
/// timed this way.
fn program_cost() -> Result<()> {
    let mut lb = XdpLb::load(cfg()).ctx("load xdp_lb")?;
    let backends: Vec<Backend> = (1..=3u8)
        .map(|i| Backend {
            addr: Ipv4Addr::new(10, 80, 1, i).into(),
            port: 0,
            mac: [2, 0, 0, 0, 0, i],
            weight: 1,
        })
        .collect();
    lb.set_vip(
        Vip::tcp((Ipv4Addr::new(10, 80, 0, 100), 80).into()),
        Forwarding::Dsr,
        &backends,
    )
    .ctx("configure the VIP")?;
    let tcp = |dst: [u8; 4], flags: u8| {
        let mut f = frame().to_vec();
        f[23] = 6; // protocol TCP
        f[30..34].copy_from_slice(&dst);
        f.truncate(34);
        let mut t = [0u8; 20];
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
    ];
    for (name, f) in cases {
        let (_, per) = lb
            .test_run_repeat(&f, 1_000_000)
            .ctx(format!("BPF_PROG_TEST_RUN ({name})"))?;
        println!("xdp_lb program alone, {name}: {} ns/packet", per.as_nanos());
    }
    Ok(())
}

/// The `test-run` mode: the program's cost per packet, then `ROUNDS` rounds of stack
/// forwarding and the balancer with frames from the live-frames generator.
pub fn bench() -> Result<()> {
    program_cost()?;
    let gen_ns = Netns::create("g")?;
    let lb_ns = Netns::create("l")?;
    let a = unique("a");
    let b = unique("b");
    try_veth(&a, &gen_ns, Some("02:0a:00:00:00:01"), &b, &lb_ns)?;
    lb_ns.try_ip(&["link", "set", &b, "address", "02:0b:00:00:00:01"])?;
    gen_ns.try_ip(&["addr", "add", "10.80.0.1/24", "dev", &a])?;
    lb_ns.try_ip(&["addr", "add", "10.80.0.2/24", "dev", &b])?;
    lb_ns.try_ip(&[
        "neigh",
        "add",
        "10.80.0.1",
        "lladdr",
        "02:0a:00:00:00:01",
        "dev",
        &b,
        "nud",
        "permanent",
    ])?;
    lb_ns.try_ip(&["route", "add", "10.80.0.100/32", "via", "10.80.0.1"])?;
    lb_ns.try_run(|| {
        sysctl("net/ipv4/ip_forward", "1")?;
        sysctl("net/ipv4/conf/all/send_redirects", "0")?;
        sysctl(&format!("net/ipv4/conf/{b}/send_redirects"), "0")
    })??;
    // A takes B's XDP_TX frames only with an XDP program of its own.
    let _a_pass = gen_ns.try_run(|| {
        let mut p = XdpLb::load(cfg()).ctx("load the pass-only XDP program")?;
        p.attach_pass(&a, AttachMode::Native)
            .ctx(format!("native XDP (pass) on veth {a}"))?;
        Ok::<_, String>(p)
    })??;

    let vip = Vip::udp((Ipv4Addr::new(10, 80, 0, 100), 80).into());
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        crate::check_interrupted()?;
        // Linux stack forwarding.
        let pass = lb_ns.try_run(|| {
            let mut p = XdpLb::load(cfg()).ctx("load the pass-only XDP program")?;
            p.attach_pass(&b, AttachMode::Native)
                .ctx(format!("native XDP (pass) on veth {b}"))?;
            Ok::<_, String>(p)
        })??;
        let (stack_pps, stack_n) = run(&gen_ns, &a)?;
        drop(pass);

        // The XDP balancer, DSR to A.
        let mut lb = lb_ns.try_run(|| {
            let mut lb = XdpLb::load(cfg()).ctx("load xdp_lb")?;
            lb.attach(&b, AttachMode::Native)
                .ctx(format!("native XDP (xdp_lb) on veth {b}"))?;
            Ok::<_, String>(lb)
        })??;
        let backend = Backend {
            addr: Ipv4Addr::new(10, 80, 0, 1).into(),
            port: 0,
            mac: A_MAC,
            weight: 1,
        };
        lb.set_vip(vip, Forwarding::Dsr, &[backend])
            .ctx("configure the VIP")?;
        let (xdp_pps, xdp_n) = run(&gen_ns, &a)?;
        let counted = lb.vip_counters(&vip).ctx("read VIP counters")?.packets;
        drop(lb);
        if stack_n == 0 || xdp_n == 0 {
            return Err(format!(
                "no frame came back to {a} (stack {stack_n}, xdp_lb {xdp_n})"
            ));
        }
        println!(
            "test-run round {round}: stack {} pps ({stack_n} of {FRAMES} back), \
             xdp_lb {} pps ({xdp_n} back, {counted} balanced), ratio {:.2}x",
            kpps(stack_pps),
            kpps(xdp_pps),
            xdp_pps / stack_pps
        );
        ratios.push(xdp_pps / stack_pps);
    }
    println!(
        "test-run: xdp_lb vs Linux stack forwarding, 64-byte UDP: median ratio {:.2}x over \
         {ROUNDS} rounds",
        median(&mut ratios)
    );
    Ok(())
}
