//! Packets per second of 64-byte UDP frames (16,384 flows) through the XDP balancer,
//! against the same frames forwarded by the Linux stack without it, in the same run.
//! Needs root. Two ways to make the traffic, chosen by the first argument:
//!
//! - `veth` (default): real traffic. A client namespace sends the frames from an
//!   AF_PACKET socket (`sendmmsg`, 256 frames per call) through a bridge to the LB
//!   namespace, whose veth runs `xdp_lb` natively (DSR, `XDP_TX` back to the bridge) or
//!   nothing (the stack forwards by its route to the VIP); a backend namespace holds the
//!   VIP and a bound UDP socket. Counted: datagrams that reach that socket. See [`veth`].
//! - `test-run`: frames made by `BPF_PROG_TEST_RUN` in live-frames mode on a veth pair,
//!   plus the balancer program's own cost per packet (`test_run_repeat`). Some kernels
//!   refuse live frames (EPERM); the bench then says so and exits non-zero. See
//!   [`test_run`].
//! - `all`: both, veth first.
//!
//! Everything runs on the sending CPU (veth NAPI and the backlog run in its softirq), so
//! each figure is "sender + forwarding" on one core: read the ratio.
//!
//! `cargo bench -p flowgate-ebpf --bench xdp_vs_stack -- [veth|test-run|all]`
//! (`benches/ebpf-xdp-lb.sh [veth|test-run|all]`). Any failure prints one line saying why
//! and exits with status 1 (2 for a bad argument); the namespaces it made are removed,
//! also when SIGINT or SIGTERM stops it.

#![allow(clippy::print_stdout)]

#[allow(dead_code)]
#[path = "../../tests/common/netns.rs"]
mod netns;
mod sender;
mod test_run;
mod veth;

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use flowgate_ebpf::xdp_lb::XdpLbConfig;

/// A failure, as the one line the bench prints.
type Result<T> = std::result::Result<T, String>;

/// Adds what was being done to an error: `what: error: its source: …`, one line (only
/// the first line of each text: aya's program errors carry the whole verifier log).
trait Context<T> {
    fn ctx(self, what: impl Display) -> Result<T>;
}

impl<T, E: std::error::Error> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {}", chain(&e)))
    }
}

/// An error and its sources on one line, skipping a source whose text the error already
/// shows.
fn chain(e: &dyn std::error::Error) -> String {
    let first_line = |t: String| t.lines().next().unwrap_or_default().trim().to_owned();
    let mut text = first_line(e.to_string());
    let mut source = e.source();
    while let Some(s) = source {
        let t = first_line(s.to_string());
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        source = s.source();
    }
    text
}

/// Set by SIGINT/SIGTERM: the runs stop and return an error, so the namespaces are
/// removed on the way out instead of being left behind by a killed process.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

#[allow(unsafe_code)]
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Fails once SIGINT or SIGTERM has arrived.
fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Flows per run: source ports 1024..1024+FLOWS.
const FLOWS: u16 = 16_384;
/// UDP payload: 18 bytes, so the frame is 60 bytes, 64 on the wire with the FCS.
const PAYLOAD: &[u8; 18] = b"flowgate xdp bench";
/// Rounds per mode; medians are reported.
const ROUNDS: usize = 3;

/// Map sizes for the bench's balancer (and the pass-only program's loader).
fn cfg() -> XdpLbConfig {
    XdpLbConfig {
        ring_size: 65_537,
        max_vips: 2,
        max_backends: 8,
        conntrack_entries: 65_536,
    }
}

/// A 60-byte Ethernet/IPv4/UDP frame with a valid IP checksum and no UDP checksum.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let udp_len = 8 + PAYLOAD.len() as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // 40..42: UDP checksum 0 (none), allowed over IPv4.
    f[42..].copy_from_slice(PAYLOAD);
    f
}

/// Writes the sysctl `/proc/sys/{path}` (of the calling thread's network namespace).
fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value).ctx(format!("sysctl {path}={value}"))
}

/// A counter of `/proc/thread-self/net/dev` (the calling thread's namespace): field
/// `field` (0 = rx bytes, 1 = rx packets, 9 = tx packets, …) of `ifname`.
fn netdev_counter(ifname: &str, field: usize) -> Result<u64> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").ctx("read net/dev")?;
    let prefix = format!("{ifname}:");
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix.as_str()))
        .ok_or_else(|| format!("no interface {ifname} in net/dev"))?;
    line.split_whitespace()
        .nth(field)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("net/dev line of {ifname} has no field {field}"))
}

/// The median of `v` (which is not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Formats packets/s as "123.4 k".
fn kpps(pps: f64) -> String {
    format!("{:.1} k", pps / 1000.0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Veth,
    TestRun,
    All,
}

fn main() -> ExitCode {
    // cargo passes `--bench` (and test harness flags); the mode is the first other word.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let mode = match args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str)
    {
        None | Some("veth") => Mode::Veth,
        Some("test-run") => Mode::TestRun,
        Some("all") => Mode::All,
        Some(other) => {
            eprintln!("xdp_vs_stack: unknown mode {other:?}; use veth, test-run or all");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "xdp_vs_stack: cannot run: needs root (network namespaces, XDP); run \
             benches/ebpf-xdp-lb.sh as root"
        );
        return ExitCode::FAILURE;
    }
    catch_interrupts();
    type Bench = fn() -> Result<()>;
    let mut runs: Vec<(&str, Bench)> = Vec::new();
    if mode != Mode::TestRun {
        runs.push(("veth", veth::bench));
    }
    if mode != Mode::Veth {
        runs.push(("test-run", test_run::bench));
    }
    let mut failed = false;
    for (name, bench) in runs {
        if let Err(why) = check_interrupted().and_then(|()| bench()) {
            eprintln!("xdp_vs_stack {name}: cannot run: {why}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
