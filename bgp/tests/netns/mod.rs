//! A small lab for interop tests: network namespaces, veth pairs from the host into them,
//! and daemons started inside with `ip netns exec`, all torn down by a Drop guard (daemons
//! are stopped by PID). Needs root and the routers' programs; without them a test skips or
//! fails by the workspace's one policy (`flowgate_pipeline::testing::require_peer`: it
//! fails under CI, with `FLOWGATE_NO_SKIP` or as root).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

pub mod routers;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowgate_pipeline::testing::{is_root, require_peer, require_programs};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One veth pair: the host end and the namespace end, each with IPv4 and IPv6 addresses.
#[derive(Debug, Clone)]
pub struct Link {
    pub host_if: String,
    pub ns_if: String,
    pub host_v4: Ipv4Addr,
    pub ns_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub ns_v6: Ipv6Addr,
}

pub struct Lab {
    pub dir: PathBuf,
    namespaces: Vec<String>,
    host_links: Vec<String>,
    children: Vec<Child>,
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    /// A lab if this process can build one (root, `ip` and the programs `bins`); otherwise
    /// `None` where a missing peer may skip, and a failed test where it may not
    /// (`flowgate_pipeline::testing::require_peer`).
    pub fn new(test: &str, bins: &[&str]) -> Option<Lab> {
        let ready = require_peer(
            &format!("root ({test} creates network namespaces)"),
            is_root(),
            "run the tests as root",
        ) && require_programs(&["ip"])
            && require_programs(bins);
        if !ready {
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("fgbgp-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        run(&["chmod", "755", dir.to_str().unwrap()]);
        Some(Lab {
            dir,
            namespaces: Vec::new(),
            host_links: Vec::new(),
            children: Vec::new(),
        })
    }

    fn unique() -> u32 {
        COUNTER.fetch_add(1, Ordering::SeqCst)
    }

    /// A new namespace with loopback up.
    pub fn netns(&mut self) -> String {
        let name = format!("fgbgp-{}-{}", std::process::id(), Self::unique());
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    fn subnet() -> (u8, u8, u16, u16) {
        let pid = std::process::id();
        let n = Self::unique();
        (
            (20 + pid % 200) as u8,
            (n % 250) as u8,
            (pid % 0xffff) as u16,
            n as u16,
        )
    }

    /// A veth pair from the host (root namespace) into `ns`, dual-stack.
    pub fn link_host(&mut self, ns: &str) -> Link {
        let (a, b, p, n) = Self::subnet();
        let host_if = format!("fg{}x{}h", std::process::id() % 100000, n);
        let ns_if = format!("fg{}x{}r", std::process::id() % 100000, n);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        self.host_links.push(host_if.clone());
        run(&["ip", "link", "set", &ns_if, "netns", ns]);
        let link = Link {
            host_v4: Ipv4Addr::new(10, a, b, 1),
            ns_v4: Ipv4Addr::new(10, a, b, 2),
            host_v6: Ipv6Addr::new(0xfd00, p, n, 0, 0, 0, 0, 1),
            ns_v6: Ipv6Addr::new(0xfd00, p, n, 0, 0, 0, 0, 2),
            host_if,
            ns_if,
        };
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", link.host_v4),
            "dev",
            &link.host_if,
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/64", link.host_v6),
            "dev",
            &link.host_if,
            "nodad",
        ]);
        run(&["ip", "link", "set", &link.host_if, "up"]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", link.ns_v4),
            "dev",
            &link.ns_if,
        ]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/64", link.ns_v6),
            "dev",
            &link.ns_if,
            "nodad",
        ]);
        run(&["ip", "-n", ns, "link", "set", &link.ns_if, "up"]);
        link
    }

    /// A veth pair between two namespaces, IPv4 only; `a` gets .1, `b` gets .2.
    pub fn link_between(&mut self, ns_a: &str, ns_b: &str) -> (Ipv4Addr, Ipv4Addr) {
        let (a, b, _, n) = Self::subnet();
        let if_a = format!("fg{}x{}a", std::process::id() % 100000, n);
        let if_b = format!("fg{}x{}b", std::process::id() % 100000, n);
        run(&[
            "ip", "link", "add", &if_a, "netns", ns_a, "type", "veth", "peer", "name", &if_b,
            "netns", ns_b,
        ]);
        let (ip_a, ip_b) = (Ipv4Addr::new(10, a, b, 1), Ipv4Addr::new(10, a, b, 2));
        run(&[
            "ip",
            "-n",
            ns_a,
            "addr",
            "add",
            &format!("{ip_a}/30"),
            "dev",
            &if_a,
        ]);
        run(&[
            "ip",
            "-n",
            ns_b,
            "addr",
            "add",
            &format!("{ip_b}/30"),
            "dev",
            &if_b,
        ]);
        run(&["ip", "-n", ns_a, "link", "set", &if_a, "up"]);
        run(&["ip", "-n", ns_b, "link", "set", &if_b, "up"]);
        (ip_a, ip_b)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// Starts `cmd` inside `ns`; output goes to `<dir>/<log>`. Returns the PID.
    pub fn spawn(&mut self, ns: &str, log: &str, cmd: &[&str]) -> u32 {
        let out = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Stops a daemon started by [`spawn`](Self::spawn), by PID.
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a command inside `ns` and returns its stdout (empty on failure).
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> String {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    }

    /// Runs a command in the host namespace; panics if it fails.
    pub fn host(&self, cmd: &[&str]) -> String {
        run(cmd)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for l in &self.host_links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 200 ms until it returns `Some` or `limit` passes.
pub async fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}
