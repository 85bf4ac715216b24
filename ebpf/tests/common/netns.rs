//! Network namespaces and veth pairs made by a test, removed on drop.

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix for names (interfaces allow 15 bytes): `fg` + pid + counter.
pub fn unique(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("fg{:x}{n}{tag}", std::process::id() & 0xfffff)
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop (which also deletes the interfaces in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Moves the calling thread into this namespace (for the rest of its life).
    pub fn enter(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.name)).expect("open netns");
        setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// Runs `f` on a new thread inside this namespace and waits for it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// Runs `f` on a detached thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(path).expect("open netns");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Creates a veth pair `a` (moved into `ns_a`) – `b` (moved into `ns_b`).
pub fn veth(a: &str, ns_a: &Netns, mac_a: Option<&str>, b: &str, ns_b: &Netns) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    if let Some(mac) = mac_a {
        ip(&["link", "set", a, "address", mac]);
    }
    ip(&["link", "set", a, "netns", &ns_a.name]);
    ip(&["link", "set", b, "netns", &ns_b.name]);
    ns_a.ip(&["link", "set", a, "up"]);
    ns_b.ip(&["link", "set", b, "up"]);
}

/// Turns off TX checksum offload on `ifname` (in the calling thread's namespace), as
/// `ethtool -K IF tx off` does. A veth hands partially checksummed TCP frames to its peer;
/// an XDP program that bounces them with XDP_TX turns them into frames with a bad
/// checksum. Real NICs finish the checksum on the wire; veths in tests need this.
#[allow(unsafe_code)]
pub fn tx_checksum_off(ifname: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    assert!(ifname.len() < 16);
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("ioctl socket");
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCETHTOOL reads a `struct ifreq` whose `ifr_data` points to a live
    // `struct ethtool_value`; both outlive the call and have the kernel's layout.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    assert_eq!(
        rc,
        0,
        "ethtool tx off {ifname}: {}",
        std::io::Error::last_os_error()
    );
}
