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

#![allow(unsafe_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray, SockHash};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::sock_ops::SockOpsLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps};
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
}

enum CgroupLink {
    SockOps(SockOpsLinkId),
    Connect4(CgroupSockAddrLinkId),
}

/// The loaded programs. Dropping it detaches them from every cgroup.
pub struct SockRedirect {
    bpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    orig: HashMap<MapData, FgOrigKey, FgOrigDst>,
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
            orig: take(&mut bpf, "orig_dst")?,
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
        let mut found = false;
        while let Some(pos) = self.links.iter().position(|(p, _)| p == cgroup) {
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
            }
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(Error::NotAttached {
                name: cgroup.display().to_string(),
            })
        }
    }

    /// Where a steered connection was going: `peer` is the accepted socket's peer
    /// address (the app's end). `None` if the connection was not steered.
    pub fn original_destination(&self, peer: SocketAddrV4) -> Result<Option<SocketAddrV4>, Error> {
        let key = FgOrigKey {
            ip: u32::from_ne_bytes(peer.ip().octets()),
            port: peer.port(),
            pad: 0,
        };
        match self.orig.get(&key, 0) {
            Ok(d) => Ok(Some(SocketAddrV4::new(
                Ipv4Addr::from(d.ip.to_ne_bytes()),
                u16::from_be_bytes(d.port.to_ne_bytes()),
            ))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map {
                map: "orig_dst",
                source,
            }),
        }
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
