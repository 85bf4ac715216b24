//! Network namespaces for tests that need pods of their own (root only).

use std::process::Command;

use super::in_netns;

/// Network namespaces for a test: a `cluster` namespace with a bridge, a namespace per pod
/// attached to it, and the host attached too (`10.251.SEGMENT.1/24`), so pods and the host
/// reach each other on one segment with no forwarding; each pod's default route is the
/// host (so that a connection to a service's virtual IP is routed, and iptables in the pod
/// can redirect it). Everything is removed on drop. Tests running at once take different
/// segments.
pub struct PodNet {
    namespaces: Vec<String>,
    host_if: String,
}

impl PodNet {
    /// Segment `10.251.SEGMENT.0/24` and `pods` namespaces (addresses `.2`, `.3`, … in
    /// order), or `None` where the test may skip (not root).
    pub fn new(segment: u8, pods: usize) -> Option<PodNet> {
        let root = flowgate_pipeline::testing::require_peer(
            "root (the test creates network namespaces)",
            flowgate_pipeline::testing::is_root(),
            "run the tests as root",
        );
        if !root || !super::peers(&["ip"]) {
            return None;
        }
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Interface names stay under 16 bytes: `fg<segment>x<pid>p<i>i`.
        let tag = format!("{segment}x{}", std::process::id() % 10_000);
        let cluster = format!("fgc{tag}");
        let mut net = PodNet {
            namespaces: vec![cluster.clone()],
            host_if: format!("fgc{tag}h"),
        };
        ip(&["netns", "add", &cluster]);
        ip(&["-n", &cluster, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &cluster, "link", "set", "br0", "up"]);
        // The host's end.
        let host_peer = format!("fgc{tag}hp");
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &host_peer,
        ]);
        ip(&["link", "set", &host_peer, "netns", &cluster]);
        ip(&[
            "-n", &cluster, "link", "set", &host_peer, "master", "br0", "up",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("10.251.{segment}.1/24"),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        for i in 0..pods {
            let ns = format!("fgc{tag}p{i}");
            ip(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let (inner, outer) = (format!("fgc{tag}p{i}i"), format!("fgc{tag}p{i}o"));
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "netns", &cluster]);
            ip(&["-n", &cluster, "link", "set", &outer, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.251.{segment}.{}/24", i + 2),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.251.{segment}.1"),
            ]);
        }
        Some(net)
    }

    /// Pod `i`'s namespace.
    pub fn pod(&self, i: usize) -> &str {
        &self.namespaces[i + 1]
    }

    /// `curl ARGS` inside pod `i`'s namespace: (exit ok, stdout).
    pub fn curl(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = in_netns(Some(self.pod(i)), "curl")
            .args(["-sS", "--max-time", "5"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A cgroup v2 directory for a pod's workload, removed on drop (once its processes are
/// gone).
pub struct Cgroup(pub std::path::PathBuf);

impl Cgroup {
    /// A fresh cgroup `flowgate-test-<pid>-<tag>`, or `None` where the test may skip (no
    /// cgroup v2 mounted).
    pub fn new(tag: &str) -> Option<Cgroup> {
        let root =
            flowgate_pipeline::testing::cgroup2_root().filter(|r| r.join("cgroup.procs").exists());
        if !flowgate_pipeline::testing::require_peer(
            "a cgroup v2 hierarchy",
            root.is_some(),
            "mount cgroup2, e.g. on /sys/fs/cgroup",
        ) {
            return None;
        }
        let p = root?.join(format!("flowgate-test-{}-{tag}", std::process::id()));
        std::fs::create_dir(&p).unwrap();
        Some(Cgroup(p))
    }

    /// `program` in network namespace `netns`, started in this cgroup (`nsenter`, not `ip
    /// netns exec`, which mounts a /sys without the cgroup tree).
    pub fn command(&self, netns: &str, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && ns=$1 && shift && exec nsenter --net="/var/run/netns/$ns" "$@""#)
            .arg(&self.0)
            .args([netns, program]);
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
