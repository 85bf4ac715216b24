//! Socket redirection for sidecars: the eBPF replacement for iptables interception.
//!
//! ```text
//!   app ── connect(10.0.0.5:80) ──▶ cgroup/connect4 ──▶ connect(sidecar 127.0.0.1:15001)
//!                                     records 10.0.0.5:80 for the sidecar to read
//!   established local socket ──▶ sockops ──▶ sockhash[4-tuple] := socket
//!   app send() ──▶ sk_msg ──▶ sockhash[peer's 4-tuple] ──▶ straight into the peer's
//!                                                          receive queue (no TCP/IP)
//! ```
//!
//! Attach it to a cgroup v2 directory: sockets of processes in that cgroup (and below)
//! are tracked when both ends are on 127.0.0.0/8, and their sends are redirected when the
//! peer socket is tracked too. With a [`Sidecar`] configured, outbound TCP connects from
//! the cgroup (except the sidecar's own, and except to loopback) are steered to the
//! sidecar's port; the sidecar asks [`SockRedirect::original_destination`] with the
//! accepted socket's peer address.
//!
//! Inbound, [`SockRedirect::attach_netns`] attaches an `sk_lookup` program to a network
//! namespace: every new TCP connection arriving there for a local address (not loopback,
//! not from one of the namespace's own addresses, not to a skipped port) is handed to the
//! sidecar's inbound listening socket ([`SockRedirect::set_inbound_listener`]) whatever
//! port it was for, and is refused while none is set. No address is rewritten: the
//! accepted socket's local address is the one the peer dialled.

#![allow(unsafe_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use std::os::fd::AsRawFd;

use aya::maps::{HashMap, MapData, PerCpuArray, SockHash, SockMap};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::sk_lookup::SkLookupLinkId;
use aya::programs::sock_ops::SockOpsLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkLookup, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};

use crate::error::{Error, program_error, require_root};
use crate::maps::take;

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockredir.o"));

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FgSockKey {
    sip: u32,
    dip: u32,
    sport: u32,
    dport: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FgOrigKey {
    ip: u32,
    port: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FgOrigDst {
    ip: u32,
    port: u16,
    pad: u16,
}

// SAFETY: `#[repr(C)]`, `Copy`, integers only with explicit padding fields: every bit
// pattern is valid and there are no implicit padding bytes. Mirrors programs/sockredir.h.
unsafe impl aya::Pod for FgSockKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FgOrigKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FgOrigDst {}

/// The sidecar that outbound connects are steered to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sidecar {
    /// Where the sidecar listens for steered connections (usually 127.0.0.1:PORT).
    pub addr: SocketAddrV4,
    /// The sidecar's process id: its own connects are never steered.
    pub pid: u32,
}

/// What to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRedirectConfig {
    /// Steer outbound connects to this sidecar (cgroup/connect4); `None` loads only the
    /// local socket redirection.
    pub sidecar: Option<Sidecar>,
}

/// Counters of the programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRedirectStats {
    /// Sockets added to the sockhash.
    pub sockets: u64,
    /// `sendmsg` calls redirected to the peer socket.
    pub redirected_msgs: u64,
    /// Bytes in those.
    pub redirected_bytes: u64,
    /// `sendmsg` calls left on the TCP path (peer not tracked).
    pub passed_msgs: u64,
    /// Connects steered to the sidecar.
    pub steered: u64,
    /// Inbound connections handed to the sidecar's listener (`sk_lookup`).
    pub inbound: u64,
    /// Inbound connections refused because no listener was set (or the kernel would not
    /// hand the connection to it).
    pub inbound_refused: u64,
}

/// A handle on the original destinations of steered connections, apart from the
/// [`SockRedirect`] that made it (see [`SockRedirect::destinations`]): what a sidecar's
/// accepting threads use while the loader stays with its control code.
pub struct Destinations {
    map: HashMap<MapData, FgOrigKey, FgOrigDst>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations").finish_non_exhaustive()
    }
}

fn orig_key(peer: SocketAddrV4) -> FgOrigKey {
    FgOrigKey {
        ip: u32::from_ne_bytes(peer.ip().octets()),
        port: peer.port(),
        pad: 0,
    }
}

/// Whether a map operation failed with `errno`.
fn is_errno(e: &aya::maps::MapError, errno: i32) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => errno == nix::libc::ENOENT,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(errno),
        _ => false,
    }
}

impl Destinations {
    /// Where a steered connection was going: `peer` is the accepted socket's peer address
    /// (the app's end). `None` if the connection was not steered.
    pub fn get(&self, peer: SocketAddrV4) -> Result<Option<SocketAddrV4>, Error> {
        match self.map.get(&orig_key(peer), 0) {
            Ok(d) => Ok(Some(SocketAddrV4::new(
                Ipv4Addr::from(d.ip.to_ne_bytes()),
                u16::from_be_bytes(d.port.to_ne_bytes()),
            ))),
            Err(e) if is_errno(&e, nix::libc::ENOENT) => Ok(None),
            Err(source) => Err(Error::Map {
                map: "orig_dst",
                source,
            }),
        }
    }

    /// [`get`](Self::get), forgetting the entry, so that a later connection from the same
    /// address and port, steered or not, does not find it. What was found is returned even
    /// if forgetting fails (the map is an LRU: a stale entry ages out).
    pub fn take(&mut self, peer: SocketAddrV4) -> Result<Option<SocketAddrV4>, Error> {
        let found = self.get(peer)?;
        if found.is_some() {
            let _ = self.map.remove(&orig_key(peer));
        }
        Ok(found)
    }
}

/// Most ports [`SockRedirect::attach_netns`] takes to skip (the size of its map).
pub const MAX_SKIPPED_PORTS: usize = 256;

/// Most addresses [`SockRedirect::set_own_addresses`] takes (the size of its map).
pub const MAX_OWN_ADDRESSES: usize = 64;

/// The inode of a socket (sockfs numbers them uniquely), to tell sockets apart.
fn socket_inode(socket: &impl AsRawFd) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

/// The IPv4 addresses of the calling thread's network namespace's interfaces (loopback
/// aside), for [`SockRedirect::set_own_addresses`].
pub fn own_ipv4_addresses() -> std::io::Result<Vec<Ipv4Addr>> {
    let mut out: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .map_err(std::io::Error::from)?
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .filter(|a| !a.is_loopback())
        .collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

enum CgroupLink {
    SockOps(SockOpsLinkId),
    Connect4(CgroupSockAddrLinkId),
    SkLookup(SkLookupLinkId),
    /// Pinned in bpffs ([`SockRedirect::pin`]): outlives the loader.
    Pinned(aya::programs::links::PinnedLink),
}

/// The loaded programs. Dropping it detaches them from every cgroup and network
/// namespace, except where they were [pinned](Self::pin).
pub struct SockRedirect {
    bpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    orig: Destinations,
    inbound: SockMap<MapData>,
    /// The inode of the socket last set as the inbound listener (setting the same socket
    /// again is skipped: some kernels mishandle it).
    inbound_ino: Option<u64>,
    skip: HashMap<MapData, u16, u8>,
    own: HashMap<MapData, u32, u8>,
    sk_lookup_loaded: bool,
    // Held so the sockhash (and the sk_msg attachment to it) lives as long as we do.
    _socks: SockHash<MapData, FgSockKey>,
    steering: bool,
    links: Vec<(PathBuf, CgroupLink)>,
}

impl std::fmt::Debug for SockRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockRedirect")
            .field("steering", &self.steering)
            .field(
                "cgroups",
                &self.links.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn missing(name: &'static str) -> Error {
    Error::Missing {
        what: "program",
        name,
    }
}

impl SockRedirect {
    /// Loads sockops, sk_msg (attached to the sockhash) and, with a sidecar, connect4.
    pub fn load(cfg: SockRedirectConfig) -> Result<Self, Error> {
        require_root()?;
        let (ip, port, pid) = match cfg.sidecar {
            Some(s) => (
                u32::from_ne_bytes(s.addr.ip().octets()),
                u32::from(u16::from_ne_bytes(s.addr.port().to_be_bytes())),
                s.pid,
            ),
            None => (0, 0, 0),
        };
        let mut bpf = EbpfLoader::new()
            .override_global("sidecar_ip", &ip, true)
            .override_global("sidecar_port", &port, true)
            .override_global("sidecar_tgid", &pid, true)
            .load(OBJECT)
            .map_err(|e| Error::Object {
                object: "sockredir",
                source: Box::new(e),
            })?;
        let socks: SockHash<MapData, FgSockKey> = take(&mut bpf, "socks")?;
        {
            let prog: &mut SkMsg = bpf
                .program_mut("fg_sk_msg")
                .ok_or_else(|| missing("fg_sk_msg"))?
                .try_into()
                .map_err(|source| Error::Program {
                    program: "fg_sk_msg",
                    source,
                })?;
            prog.load()
                .map_err(|e| program_error("fg_sk_msg", "sk_msg programs".into(), false, e))?;
            prog.attach(socks.fd())
                .map_err(|e| program_error("fg_sk_msg", "sk_msg on a sockhash".into(), true, e))?;
        }
        sock_ops(&mut bpf)?
            .load()
            .map_err(|e| program_error("fg_sockops", "sockops programs".into(), false, e))?;
        if cfg.sidecar.is_some() {
            connect4(&mut bpf)?.load().map_err(|e| {
                program_error("fg_connect4", "cgroup/connect4 programs".into(), false, e)
            })?;
        }
        Ok(Self {
            stats: take(&mut bpf, "sr_stats")?,
            orig: Destinations {
                map: take(&mut bpf, "orig_dst")?,
            },
            inbound: take(&mut bpf, "inbound_listener")?,
            inbound_ino: None,
            skip: take(&mut bpf, "inbound_skip")?,
            own: take(&mut bpf, "own_addrs")?,
            sk_lookup_loaded: false,
            _socks: socks,
            bpf,
            steering: cfg.sidecar.is_some(),
            links: Vec::new(),
        })
    }

    /// Attaches to a cgroup v2 directory (e.g. `/sys/fs/cgroup/unified/app`): sockops, and
    /// connect4 when a sidecar is configured. Other programs on the cgroup stay: the
    /// attachment is a BPF link, which the kernel always runs alongside others (link
    /// creation takes no `BPF_F_ALLOW_MULTI` flag, so the mode passed is `Single`).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), Error> {
        let dir = File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let id = sock_ops(&mut self.bpf)?
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| program_error("fg_sockops", "sockops on cgroup v2".into(), true, e))?;
        self.links
            .push((cgroup.to_owned(), CgroupLink::SockOps(id)));
        if self.steering {
            let id = connect4(&mut self.bpf)?
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| {
                    program_error(
                        "fg_connect4",
                        "cgroup/connect4 on cgroup v2".into(),
                        true,
                        e,
                    )
                })?;
            self.links
                .push((cgroup.to_owned(), CgroupLink::Connect4(id)));
        }
        Ok(())
    }

    /// Detaches from a cgroup this loader attached to.
    pub fn detach_cgroup(&mut self, cgroup: &Path) -> Result<(), Error> {
        self.detach(cgroup)
    }

    /// Hands new inbound TCP connections in a network namespace (`netns`: its file, such
    /// as `/proc/self/ns/net` or `/run/netns/NAME`) to the listener set with
    /// [`set_inbound_listener`](Self::set_inbound_listener) — all of them but IPv6 ones,
    /// those to loopback, those whose source address is their destination address (from
    /// the namespace to itself, such as a sidecar dialling its workload on the pod
    /// address) and those to a port in `skip` (which takes over an earlier call's; put the
    /// sidecar's own listening ports in it). Until a listener is set, they are refused.
    /// A namespace can be attached once.
    pub fn attach_netns(&mut self, netns: &Path, skip: &[u16]) -> Result<(), Error> {
        if skip.len() > MAX_SKIPPED_PORTS {
            return Err(Error::Map {
                map: "inbound_skip",
                source: aya::maps::MapError::OutOfBounds {
                    index: u32::try_from(skip.len()).unwrap_or(u32::MAX),
                    max_entries: MAX_SKIPPED_PORTS as u32,
                },
            });
        }
        if self.links.iter().any(|(p, _)| p == netns) {
            return Err(Error::AlreadyAttached {
                name: netns.display().to_string(),
            });
        }
        let file = File::open(netns).map_err(|source| Error::Netns {
            path: netns.to_owned(),
            source,
        })?;
        let prog = sk_lookup(&mut self.bpf)?;
        if !self.sk_lookup_loaded {
            prog.load().map_err(|e| {
                program_error("fg_sk_lookup", "sk_lookup programs".into(), false, e)
            })?;
            self.sk_lookup_loaded = true;
        }
        let id = prog.attach(&file).map_err(|e| {
            program_error(
                "fg_sk_lookup",
                "sk_lookup on a network namespace".into(),
                true,
                e,
            )
        })?;
        self.links
            .push((netns.to_owned(), CgroupLink::SkLookup(id)));
        let map_err = |source| Error::Map {
            map: "inbound_skip",
            source,
        };
        let old: Vec<u16> = self.skip.keys().filter_map(Result::ok).collect();
        for port in old.iter().filter(|p| !skip.contains(p)) {
            self.skip.remove(port).map_err(map_err)?;
        }
        for port in skip {
            self.skip.insert(port, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// The namespace's own addresses: connect4 leaves connects to them alone (local
    /// traffic, as iptables capture leaves what is routed over `lo`). Replaces the set
    /// given before; at most [`MAX_OWN_ADDRESSES`].
    pub fn set_own_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<(), Error> {
        let map_err = |source| Error::Map {
            map: "own_addrs",
            source,
        };
        if addrs.len() > MAX_OWN_ADDRESSES {
            return Err(map_err(aya::maps::MapError::OutOfBounds {
                index: u32::try_from(addrs.len()).unwrap_or(u32::MAX),
                max_entries: MAX_OWN_ADDRESSES as u32,
            }));
        }
        let wanted: Vec<u32> = addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        let old: Vec<u32> = self.own.keys().filter_map(Result::ok).collect();
        for a in old.iter().filter(|a| !wanted.contains(a)) {
            self.own.remove(a).map_err(map_err)?;
        }
        for a in &wanted {
            self.own.insert(a, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Detaches from a network namespace this loader attached to.
    pub fn detach_netns(&mut self, netns: &Path) -> Result<(), Error> {
        self.detach(netns)
    }

    /// The listening TCP socket that inbound connections go to (any one of a
    /// `SO_REUSEPORT` group: the kernel then picks within the group). Replaces the one set
    /// before; setting the socket already set does nothing (some kernels mishandle
    /// replacing an entry with itself).
    pub fn set_inbound_listener(&mut self, socket: &impl AsRawFd) -> Result<(), Error> {
        let ino = socket_inode(socket);
        if ino.is_some() && ino == self.inbound_ino {
            return Ok(());
        }
        self.inbound
            .set(0, socket, 0)
            .map_err(|source| Error::Map {
                map: "inbound_listener",
                source,
            })?;
        self.inbound_ino = ino;
        Ok(())
    }

    /// Forgets the inbound listener: inbound connections are refused until one is set.
    /// (A listener that closes leaves by itself.)
    pub fn clear_inbound_listener(&mut self) -> Result<(), Error> {
        self.inbound_ino = None;
        match self.inbound.clear_index(&0) {
            Ok(()) => Ok(()),
            // An empty slot: EINVAL from a sockmap.
            Err(e) if is_errno(&e, nix::libc::EINVAL) || is_errno(&e, nix::libc::ENOENT) => Ok(()),
            Err(source) => Err(Error::Map {
                map: "inbound_listener",
                source,
            }),
        }
    }

    /// Pins every attachment made so far under `dir` (a directory on a bpffs mount, such as
    /// `/sys/fs/bpf/NAME`; created if missing): they then outlive this loader and the
    /// process, so traffic stays captured when a sidecar stops or crashes — outbound
    /// connects still go to its (closed) port, inbound connections find no listener and
    /// are refused — until [`remove_pinned`](Self::remove_pinned) takes them away (a
    /// restarted sidecar does, after attaching its own). Attachments made later are not
    /// pinned.
    pub fn pin(&mut self, dir: &Path) -> Result<(), Error> {
        let pin_err = |path: &Path, what: String| Error::Pin {
            path: path.to_owned(),
            reason: what,
        };
        std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, e.to_string()))?;
        let links = std::mem::take(&mut self.links);
        let mut kept = Vec::with_capacity(links.len());
        let mut failed = None;
        for (n, (target, link)) in links.into_iter().enumerate() {
            if failed.is_some() {
                kept.push((target, link));
                continue;
            }
            let path = dir.join(format!("link-{n}"));
            let fd: Result<aya::programs::links::FdLink, String> = match link {
                CgroupLink::Pinned(p) => {
                    kept.push((target, CgroupLink::Pinned(p)));
                    continue;
                }
                CgroupLink::SockOps(id) => sock_ops(&mut self.bpf)?
                    .take_link(id)
                    .map_err(|e| e.to_string())
                    .and_then(|l| {
                        aya::programs::links::FdLink::try_from(l).map_err(|e| e.to_string())
                    }),
                CgroupLink::Connect4(id) => connect4(&mut self.bpf)?
                    .take_link(id)
                    .map_err(|e| e.to_string())
                    .and_then(|l| {
                        aya::programs::links::FdLink::try_from(l).map_err(|e| e.to_string())
                    }),
                CgroupLink::SkLookup(id) => sk_lookup(&mut self.bpf)?
                    .take_link(id)
                    .map(aya::programs::links::FdLink::from)
                    .map_err(|e| e.to_string()),
            };
            match fd.and_then(|fd| fd.pin(&path).map_err(|e| e.to_string())) {
                Ok(p) => kept.push((target, CgroupLink::Pinned(p))),
                // The link taken is dropped (detached): say so.
                Err(e) => failed = Some(pin_err(&path, format!("{e} (that attachment is gone)"))),
            }
        }
        self.links = kept;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes away the attachments pinned under `dir` (by an earlier [`pin`](Self::pin),
    /// of this process or another): they are detached once no one else holds them.
    /// Returns how many there were; a missing directory has none.
    pub fn remove_pinned(dir: &Path) -> Result<usize, Error> {
        let pin_err = |path: &Path, what: String| Error::Pin {
            path: path.to_owned(),
            reason: what,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(pin_err(dir, e.to_string())),
        };
        let mut n = 0;
        for entry in entries {
            let path = entry.map_err(|e| pin_err(dir, e.to_string()))?.path();
            if !path
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("link-"))
            {
                continue;
            }
            let link = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| pin_err(&path, e.to_string()))?;
            drop(link.unpin().map_err(|e| pin_err(&path, e.to_string()))?);
            n += 1;
        }
        Ok(n)
    }

    fn detach(&mut self, path: &Path) -> Result<(), Error> {
        let mut found = false;
        while let Some(pos) = self.links.iter().position(|(p, _)| p == path) {
            let (_, link) = self.links.swap_remove(pos);
            match link {
                CgroupLink::SockOps(id) => {
                    sock_ops(&mut self.bpf)?
                        .detach(id)
                        .map_err(|source| Error::Program {
                            program: "fg_sockops",
                            source,
                        })?
                }
                CgroupLink::Connect4(id) => {
                    connect4(&mut self.bpf)?
                        .detach(id)
                        .map_err(|source| Error::Program {
                            program: "fg_connect4",
                            source,
                        })?
                }
                CgroupLink::SkLookup(id) => {
                    sk_lookup(&mut self.bpf)?
                        .detach(id)
                        .map_err(|source| Error::Program {
                            program: "fg_sk_lookup",
                            source,
                        })?
                }
                CgroupLink::Pinned(p) => drop(p.unpin().map_err(|e| Error::Pin {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?),
            }
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(Error::NotAttached {
                name: path.display().to_string(),
            })
        }
    }

    /// Where a steered connection was going: `peer` is the accepted socket's peer
    /// address (the app's end). `None` if the connection was not steered.
    pub fn original_destination(&self, peer: SocketAddrV4) -> Result<Option<SocketAddrV4>, Error> {
        self.orig.get(peer)
    }

    /// [`original_destination`](Self::original_destination), forgetting the entry: a
    /// later connection from the same address and port, steered or not, does not find it.
    pub fn take_original_destination(
        &mut self,
        peer: SocketAddrV4,
    ) -> Result<Option<SocketAddrV4>, Error> {
        self.orig.take(peer)
    }

    /// A second handle on the original destinations, for threads that accept steered
    /// connections while this loader stays elsewhere.
    pub fn destinations(&self) -> Result<Destinations, Error> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        let map_err = |source| Error::Map {
            map: "orig_dst",
            source,
        };
        let fd = self
            .orig
            .map
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| {
                map_err(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                }))
            })?;
        let data = MapData::from_fd(fd).map_err(map_err)?;
        Ok(Destinations {
            map: HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_err)?,
        })
    }

    /// The programs' counters.
    pub fn stats(&self) -> Result<SockRedirectStats, Error> {
        let get = |i: u32| -> Result<u64, Error> {
            let v = self.stats.get(&i, 0).map_err(|source| Error::Map {
                map: "sr_stats",
                source,
            })?;
            Ok(v.iter().sum())
        };
        Ok(SockRedirectStats {
            sockets: get(0)?,
            redirected_msgs: get(1)?,
            redirected_bytes: get(2)?,
            passed_msgs: get(3)?,
            steered: get(4)?,
            inbound: get(5)?,
            inbound_refused: get(6)?,
        })
    }
}

fn sock_ops(bpf: &mut Ebpf) -> Result<&mut SockOps, Error> {
    bpf.program_mut("fg_sockops")
        .ok_or_else(|| missing("fg_sockops"))?
        .try_into()
        .map_err(|source| Error::Program {
            program: "fg_sockops",
            source,
        })
}

fn sk_lookup(bpf: &mut Ebpf) -> Result<&mut SkLookup, Error> {
    bpf.program_mut("fg_sk_lookup")
        .ok_or_else(|| missing("fg_sk_lookup"))?
        .try_into()
        .map_err(|source| Error::Program {
            program: "fg_sk_lookup",
            source,
        })
}

fn connect4(bpf: &mut Ebpf) -> Result<&mut CgroupSockAddr, Error> {
    bpf.program_mut("fg_connect4")
        .ok_or_else(|| missing("fg_connect4"))?
        .try_into()
        .map_err(|source| Error::Program {
            program: "fg_connect4",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_c() {
        assert_eq!(size_of::<FgSockKey>(), 16);
        assert_eq!(size_of::<FgOrigKey>(), 8);
        assert_eq!(size_of::<FgOrigDst>(), 8);
    }
}
