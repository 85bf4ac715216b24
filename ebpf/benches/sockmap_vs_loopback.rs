//! Requests per second between two local processes: sk_msg redirection (sockops +
//! sockhash) against plain loopback TCP, same run. Needs root and cgroup v2 at
//! /sys/fs/cgroup/unified.
//!
//! The bench binary starts itself twice (server and client roles, chosen by FG_ROLE) in
//! a fresh cgroup; the client does request/response round trips of a fixed size on one
//! connection for a fixed time and reports how many it completed.
//!
//! `cargo bench -p flowgate-ebpf --bench sockmap_vs_loopback` (benches/ebpf-sockmap.sh).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_ebpf::{SockRedirect, SockRedirectConfig};

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
const SECS: f64 = 2.0;

fn server() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", l.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    let size: usize = std::env::var("FG_SIZE").unwrap().parse().unwrap();
    let (mut s, _) = l.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; size];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

fn client() {
    let port: u16 = std::env::var("FG_PORT").unwrap().parse().unwrap();
    let size: usize = std::env::var("FG_SIZE").unwrap().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let req = vec![7u8; size];
    let mut resp = vec![0u8; size];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < SECS {
        for _ in 0..64 {
            s.write_all(&req).unwrap();
            s.read_exact(&mut resp).unwrap();
        }
        n += 64;
    }
    assert_eq!(resp, req);
    println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
}

fn spawn(cg: &Path, envs: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$1""#)
        .arg(cg)
        .arg(exe)
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn line(child: &mut Child) -> String {
    let mut l = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut l)
        .unwrap();
    l.trim().to_owned()
}

fn round_trip_rate(cg: &Path, size: usize) -> f64 {
    let mut srv = spawn(
        cg,
        &[("FG_ROLE", "server".into()), ("FG_SIZE", size.to_string())],
    );
    let port = line(&mut srv);
    let mut cli = spawn(
        cg,
        &[
            ("FG_ROLE", "client".into()),
            ("FG_PORT", port),
            ("FG_SIZE", size.to_string()),
        ],
    );
    let rate: f64 = line(&mut cli).parse().unwrap();
    let _ = cli.wait();
    let _ = srv.kill();
    let _ = srv.wait();
    rate
}

struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn main() {
    match std::env::var("FG_ROLE").as_deref() {
        Ok("server") => return server(),
        Ok("client") => return client(),
        _ => {}
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() || !Path::new(CGROUP_ROOT).join("cgroup.procs").exists() {
        eprintln!("sockmap_vs_loopback: SKIPPED, needs root and cgroup v2 at {CGROUP_ROOT}");
        return;
    }
    let cg = Cgroup(Path::new(CGROUP_ROOT).join(format!("fg-bench-{}", std::process::id())));
    std::fs::create_dir(&cg.0).unwrap();
    for size in [64usize, 16 * 1024] {
        let mut plain = Vec::new();
        let mut redirected = Vec::new();
        for _ in 0..3 {
            plain.push(round_trip_rate(&cg.0, size));
            let mut r = SockRedirect::load(SockRedirectConfig::default()).unwrap();
            r.attach_cgroup(&cg.0).unwrap();
            redirected.push(round_trip_rate(&cg.0, size));
            let stats = r.stats().unwrap();
            assert!(
                stats.redirected_msgs > 0,
                "nothing was redirected: {stats:?}"
            );
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{size:>6}-byte request/response, one connection: loopback TCP {:.0}/s, \
             sockmap redirect {:.0}/s, ratio {:.2}x (medians of {}: {plain:.0?} vs {redirected:.0?})",
            median(&plain),
            median(&redirected),
            median(&redirected) / median(&plain),
            plain.len()
        );
    }
}
