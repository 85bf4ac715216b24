//! eBPF capture: the sidecar steers its workload's traffic itself with flowgate-ebpf's
//! [`SockRedirect`] instead of `flowgate-sidecar init`'s iptables rules (root; the `ebpf`
//! feature).
//!
//! - **Outbound**: `cgroup/connect4` on the workload's cgroup rewrites each TCP connect
//!   (not to loopback, not the sidecar's own) to `127.0.0.1:<outbound port>` and records
//!   where it was going; the transparent outbound listener reads it back through the
//!   server's [`OriginalDst`] lookup, keyed by the accepted connection's peer address.
//! - **Inbound**: `sk_lookup` on the network namespace hands every new TCP connection to a
//!   local address (not loopback, not from the namespace's own addresses, not to the
//!   sidecar's own ports or the excluded ones) to the inbound listener at `0.0.0.0:<inbound
//!   port>`, whose socket is set after every configuration applied; the accepted socket's
//!   local address is the one dialled. While no such listener runs, inbound connections
//!   are refused — never let through to the workload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flowgate_ebpf::{Sidecar, SockRedirect, SockRedirectConfig};
use flowgate_pipeline::server::{OriginalDst, Protocol, Server};

use super::{EbpfCapture, SidecarError};

/// The loaded programs and where inbound connections go.
pub(super) struct Steering {
    redirect: Mutex<SockRedirect>,
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
        let mut skip = vec![c.inbound_port, c.outbound_port];
        skip.extend(own);
        skip.extend(&c.exclude_inbound_ports);
        skip.sort_unstable();
        skip.dedup();
        redirect
            .attach_netns(&c.netns, &skip)
            .map_err(|e| err("attaching to the network namespace", e))?;
        tracing::info!(
            cgroup = %c.cgroup.display(),
            netns = %c.netns.display(),
            %outbound,
            inbound_port = c.inbound_port,
            skipped = ?skip,
            "eBPF capture on"
        );
        Ok(Arc::new(Self {
            redirect: Mutex::new(redirect),
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
            match me.redirect().take_original_destination(peer) {
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
