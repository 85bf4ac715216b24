//! eBPF capture: the sidecar steers its workload's traffic itself with flowgate-ebpf's
//! [`SockRedirect`] instead of `flowgate-sidecar init`'s iptables rules (root; the `ebpf`
//! feature).
//!
//! - **Outbound**: `cgroup/connect4` on the workload's cgroup rewrites each TCP connect
//!   (not to loopback or the namespace's own addresses, not the sidecar's own) to
//!   `127.0.0.1:<outbound port>` and records where it was going; the transparent outbound
//!   listener reads it back through the server's [`OriginalDst`] lookup, keyed by the
//!   accepted connection's peer address. The sidecar must not be in the workload's cgroup
//!   (it is refused): its own connects are told apart by cgroup, and by process id as a
//!   second line where no PID namespace is in between.
//! - **Inbound**: `sk_lookup` on the network namespace hands every new TCP connection to a
//!   local address (not loopback, not from the address it is for, not to the inbound
//!   port, the admin port or the excluded ones) to the inbound listener at
//!   `0.0.0.0:<inbound port>`, whose socket is set after every configuration applied; the
//!   accepted socket's local address is the one dialled. While no such listener runs,
//!   inbound connections are refused — never let through to the workload.
//! - **Pinned**: the attachments are pinned in bpffs (`EbpfCapture::pin`), so they outlive
//!   the sidecar: when it stops or crashes, the workload's traffic stays captured and
//!   is refused rather than let through; a restarted sidecar replaces them.
//!
//! IPv4 only, as the iptables rules are.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flowgate_ebpf::sockredir::{Destinations, own_ipv4_addresses};
use flowgate_ebpf::{Sidecar, SockRedirect, SockRedirectConfig};
use flowgate_pipeline::server::{OriginalDst, Protocol, Server};

use super::{EbpfCapture, SidecarError};

/// The loaded programs and where inbound connections go.
pub(super) struct Steering {
    redirect: Mutex<SockRedirect>,
    /// The original destinations, apart: the accepting workers do not wait for the
    /// control side.
    destinations: Mutex<Destinations>,
    inbound: SocketAddr,
    /// Whether the inbound listener is set, once known (to log changes once).
    set: Mutex<Option<bool>>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("inbound", &self.inbound)
            .finish()
    }
}

impl Steering {
    /// Loads the programs and attaches them to the workload's cgroup and the network
    /// namespace. `own`: the sidecar's other listening ports (admin), left alone inbound.
    pub(super) fn start(c: &EbpfCapture, own: &[u16]) -> Result<Arc<Self>, SidecarError> {
        let err =
            |what: &str, e: flowgate_ebpf::Error| SidecarError::Capture(format!("{what}: {e}"));
        match holds_this_process(&c.cgroup) {
            Ok(false) => {}
            Ok(true) => {
                return Err(SidecarError::Capture(format!(
                    "the sidecar runs in the workload's cgroup {} (or below it): run it in a cgroup of its own, or its own connections would be captured",
                    c.cgroup.display()
                )));
            }
            Err(e) => {
                return Err(SidecarError::Capture(format!(
                    "cgroup {}: {e}",
                    c.cgroup.display()
                )));
            }
        }
        let outbound = SocketAddrV4::new(Ipv4Addr::LOCALHOST, c.outbound_port);
        let mut redirect = SockRedirect::load(SockRedirectConfig {
            sidecar: Some(Sidecar {
                addr: outbound,
                pid: std::process::id(),
            }),
        })
        .map_err(|e| err("loading the eBPF programs", e))?;
        redirect
            .attach_cgroup(&c.cgroup)
            .map_err(|e| err("attaching to the workload's cgroup", e))?;
        let own_addrs = own_ipv4_addresses().map_err(|e| {
            SidecarError::Capture(format!("reading this namespace's addresses: {e}"))
        })?;
        redirect
            .set_own_addresses(&own_addrs)
            .map_err(|e| err("the namespace's own addresses", e))?;
        let mut skip = vec![c.inbound_port];
        skip.extend(own);
        skip.extend(&c.exclude_inbound_ports);
        skip.sort_unstable();
        skip.dedup();
        redirect
            .attach_netns(&c.netns, &skip)
            .map_err(|e| err("attaching to the network namespace", e))?;
        if let Some(dir) = &c.pin {
            // A predecessor's attachments give way to ours (both ran for a moment: inbound
            // connections were refused meanwhile, never let through).
            let old = SockRedirect::remove_pinned(dir)
                .map_err(|e| err("taking away the attachments pinned before", e))?;
            redirect.pin(dir).map_err(|e| err("pinning", e))?;
            tracing::info!(dir = %dir.display(), replaced = old, "eBPF capture pinned: it outlives the sidecar");
        }
        let destinations = redirect
            .destinations()
            .map_err(|e| err("the original destinations", e))?;
        tracing::info!(
            cgroup = %c.cgroup.display(),
            netns = %c.netns.display(),
            %outbound,
            inbound_port = c.inbound_port,
            skipped = ?skip,
            own = ?own_addrs,
            "eBPF capture on"
        );
        Ok(Arc::new(Self {
            redirect: Mutex::new(redirect),
            destinations: Mutex::new(destinations),
            inbound: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), c.inbound_port),
            set: Mutex::new(None),
        }))
    }

    fn redirect(&self) -> MutexGuard<'_, SockRedirect> {
        self.redirect.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lookup for the server's transparent listeners: steered connections come from
    /// loopback (they were sent to `127.0.0.1`), each one's entry read once.
    pub(super) fn lookup(self: &Arc<Self>) -> OriginalDst {
        let me = self.clone();
        Arc::new(move |peer| {
            let SocketAddr::V4(peer) = peer else {
                return None;
            };
            if !peer.ip().is_loopback() {
                return None;
            }
            let taken = me
                .destinations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(peer);
            match taken {
                Ok(found) => found.map(SocketAddr::V4),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot read a steered connection's destination");
                    None
                }
            }
        })
    }

    /// Points inbound steering at the inbound listener of what `server` runs now (after a
    /// configuration was applied), or refuses inbound connections if there is none.
    pub(super) fn follow(&self, server: &Server) {
        let socket = server.listener_socket(self.inbound, Protocol::Tcp);
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match &socket {
            Some(s) => self.redirect().set_inbound_listener(s),
            None => self.redirect().clear_inbound_listener(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot steer inbound connections");
            return;
        }
        let now = socket.is_some();
        if *set == Some(now) {
            return;
        }
        *set = Some(now);
        if now {
            tracing::info!(inbound = %self.inbound, "inbound connections steered to the sidecar");
        } else {
            tracing::warn!(
                inbound = %self.inbound,
                "eBPF capture is on but the configuration has no inbound listener there \
                 (is the pod annotated flowgate.io/capture: redirect?): inbound connections are refused"
            );
        }
    }

    /// The programs' counters, for the admin endpoint.
    pub(super) fn json(&self) -> serde_json::Value {
        match self.redirect().stats() {
            Ok(s) => serde_json::json!({
                "mode": "ebpf",
                "outbound_steered": s.steered,
                "inbound_steered": s.inbound,
                "inbound_refused": s.inbound_refused,
                "local_sockets": s.sockets,
                "redirected_bytes": s.redirected_bytes,
            }),
            Err(e) => serde_json::json!({ "mode": "ebpf", "error": e.to_string() }),
        }
    }
}

/// Whether this process is in `cgroup` or below it (as listed in its `cgroup.procs`
/// files, which give process ids in our own PID namespace). At most 100 000 directories.
fn holds_this_process(cgroup: &Path) -> std::io::Result<bool> {
    let me = std::process::id().to_string();
    let mut dirs = vec![cgroup.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        seen += 1;
        if seen > 100_000 {
            return Err(std::io::Error::other("more than 100 000 cgroups below it"));
        }
        if std::fs::read_to_string(dir.join("cgroup.procs"))?
            .lines()
            .any(|l| l.trim() == me)
        {
            return Ok(true);
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(false)
}
