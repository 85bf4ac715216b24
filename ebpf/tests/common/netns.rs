//! Network namespaces and veth pairs made by a test or a benchmark, removed on drop.
//!
//! The `try_*`/`create` forms return what went wrong as one line of text (the XDP
//! benchmark, `benches/xdp_vs_stack`, uses only those: a benchmark that cannot run says
//! why and exits non-zero). The panicking shorthands the tests use are compiled only
//! with `cfg(test)`, i.e. in the integration tests.

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

/// Runs `ip ARGS`; an error says which command failed and what `ip` printed.
pub fn try_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop (which also deletes the interfaces in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `unique(tag)` with `lo` up.
    pub fn create(tag: &str) -> Result<Self, String> {
        let name = unique(tag);
        try_ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn try_ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        try_ip(&all)
    }

    /// Moves the calling thread into this namespace (for the rest of its life).
    pub fn try_enter(&self) -> Result<(), String> {
        let path = format!("/var/run/netns/{}", self.name);
        let f = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {}: {e}", self.name))
    }

    /// Runs `f` on a new thread inside this namespace and waits for it.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.try_enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| format!("a thread in namespace {} panicked", self.name))?
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

/// Creates a veth pair `a` (moved into `ns_a`) – `b` (moved into `ns_b`), both up.
pub fn try_veth(
    a: &str,
    ns_a: &Netns,
    mac_a: Option<&str>,
    b: &str,
    ns_b: &Netns,
) -> Result<(), String> {
    try_ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    if let Some(mac) = mac_a {
        try_ip(&["link", "set", a, "address", mac])?;
    }
    try_ip(&["link", "set", a, "netns", &ns_a.name])?;
    try_ip(&["link", "set", b, "netns", &ns_b.name])?;
    ns_a.try_ip(&["link", "set", a, "up"])?;
    ns_b.try_ip(&["link", "set", b, "up"])
}

/// Panicking shorthands for the integration tests.
#[cfg(test)]
impl Netns {
    pub fn new(tag: &str) -> Self {
        Self::create(tag).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip -n NAME ARGS`, panicking with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Moves the calling thread into this namespace (for the rest of its life).
    pub fn enter(&self) {
        self.try_enter().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `f` on a new thread inside this namespace and waits for it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.try_run(f).unwrap_or_else(|e| panic!("{e}"))
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

/// Runs `ip ARGS`, panicking with its stderr if it fails.
#[cfg(test)]
pub fn ip(args: &[&str]) {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Creates a veth pair `a` (moved into `ns_a`) – `b` (moved into `ns_b`).
#[cfg(test)]
pub fn veth(a: &str, ns_a: &Netns, mac_a: Option<&str>, b: &str, ns_b: &Netns) {
    try_veth(a, ns_a, mac_a, b, ns_b).unwrap_or_else(|e| panic!("{e}"));
}

/// `ETHTOOL_STXCSUM`: turns TX checksum offload on or off.
pub const ETHTOOL_STXCSUM: u32 = 0x17;

/// Sets an ethtool on/off value (`ETHTOOL_S*` with a `struct ethtool_value`) of
/// `ifname` in the calling thread's namespace, as `ethtool -K` does.
#[allow(unsafe_code)]
pub fn try_ethtool_set(ifname: &str, cmd: u32, on: bool) -> Result<(), String> {
    use std::os::fd::AsRawFd;
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
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    let Some(name) = req
        .name
        .get_mut(..ifname.len())
        .filter(|_| ifname.len() < 16)
    else {
        return Err(format!("interface name {ifname:?} is too long"));
    };
    name.copy_from_slice(ifname.as_bytes());
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")
        .map_err(|e| format!("socket for the ethtool ioctl: {e}"))?;
    // SAFETY: SIOCETHTOOL reads a `struct ifreq` whose `ifr_data` points to a live
    // `struct ethtool_value`; both outlive the call and have the kernel's layout.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "ethtool command {cmd:#x} on {ifname}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Turns off TX checksum offload on `ifname` (in the calling thread's namespace), as
/// `ethtool -K IF tx off` does. A veth hands partially checksummed TCP frames to its peer;
/// an XDP program that bounces them with XDP_TX turns them into frames with a bad
/// checksum. Real NICs finish the checksum on the wire; veths in tests need this.
#[cfg(test)]
pub fn tx_checksum_off(ifname: &str) {
    try_ethtool_set(ifname, ETHTOOL_STXCSUM, false).unwrap_or_else(|e| panic!("{e}"));
}
