//! Errors of the loaders: each says what failed and, where it can tell, why (not root, a
//! kernel feature missing, a bad argument).

use std::net::IpAddr;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::programs::ProgramError;

/// An error of the loaders.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// BPF programs can only be loaded with CAP_BPF/CAP_NET_ADMIN; we ask for root.
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN); effective uid is {euid}")]
    NotRoot {
        /// The effective user id of this process.
        euid: u32,
    },
    /// The kernel refused an operation that it would do if it had the feature.
    #[error("the kernel does not support {feature}: {source}")]
    Unsupported {
        /// What was missing, in words ("native XDP on veth0", "sk_msg programs").
        feature: String,
        /// What the kernel said.
        #[source]
        source: ProgramError,
    },
    /// Parsing or loading the object (maps, BTF, relocations) failed.
    #[error("loading the {object} eBPF object failed: {source}")]
    Object {
        /// Which object: `xdp_lb` or `sockredir`.
        object: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// Loading (verifying) or attaching a program failed.
    #[error("program {program}: {source}")]
    Program {
        /// The program's name in the object.
        program: &'static str,
        /// aya's error (its text includes the verifier log).
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name in the object.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// The object lacks a program or map the loader expects (a build mismatch).
    #[error("the eBPF object has no {what} named {name}")]
    Missing {
        /// "program" or "map".
        what: &'static str,
        /// The name looked up.
        name: &'static str,
    },
    /// The network interface does not exist in this network namespace.
    #[error("no network interface named {name}")]
    UnknownInterface {
        /// The name given.
        name: String,
    },
    /// The program is not attached to that interface, cgroup or namespace.
    #[error("not attached to {name}")]
    NotAttached {
        /// The interface name or path given.
        name: String,
    },
    /// Opening a cgroup directory failed.
    #[error("cgroup {}: {source}", path.display())]
    Cgroup {
        /// The cgroup v2 directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The program is already attached there.
    #[error("already attached to {name}")]
    AlreadyAttached {
        /// The path given.
        name: String,
    },
    /// Pinning an attachment in bpffs (or taking a pinned one away) failed.
    #[error("pinned attachment {}: {reason} (is a bpf filesystem mounted there? `mount -t bpf bpf /sys/fs/bpf`)", path.display())]
    Pin {
        /// The pin's path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Opening a network namespace file failed.
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Maglev ring size must be a prime (and at least 2).
    #[error("ring size {ring_size} is not a prime")]
    RingSize {
        /// The size given.
        ring_size: u32,
    },
    /// All VIP slots are in use.
    #[error("no free VIP slot (max_vips = {max})")]
    TooManyVips {
        /// The configured limit.
        max: u32,
    },
    /// All backend slots are in use.
    #[error("no free backend slot (max_backends = {max})")]
    TooManyBackends {
        /// The configured limit.
        max: u32,
    },
    /// NAT forwarding is implemented for IPv4 only.
    #[error("NAT forwarding supports IPv4 only; {addr} is IPv6 (use DSR)")]
    NatNeedsIpv4 {
        /// The offending VIP or backend address.
        addr: IpAddr,
    },
    /// The VIP is not configured.
    #[error("VIP {addr}:{port} is not configured")]
    UnknownVip {
        /// The VIP's address.
        addr: IpAddr,
        /// The VIP's port.
        port: u16,
    },
}

/// Checks that we run as root, the only setup the tests and the binaries support.
pub(crate) fn require_root() -> Result<(), Error> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot { euid })
    }
}

/// Classifies an attach/load failure: EINVAL/EOPNOTSUPP/ENOTSUPP mean the kernel (or the
/// driver) lacks the feature.
/// `EINVAL` counts only for attaching: at load time it is the verifier refusing the code.
pub(crate) fn program_error(
    program: &'static str,
    feature: String,
    attaching: bool,
    e: ProgramError,
) -> Error {
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(errno) if is_unsupported(errno, attaching) => {
            Error::Unsupported { feature, source: e }
        }
        _ => Error::Program { program, source: e },
    }
}

fn is_unsupported(errno: i32, attaching: bool) -> bool {
    use nix::errno::Errno;
    // 524 is the kernel-internal ENOTSUPP that BPF syscalls leak to user space.
    errno == Errno::EOPNOTSUPP as i32
        || errno == 524
        || (attaching && errno == Errno::EINVAL as i32)
}
