//! # flowgate-ebpf
//!
//! eBPF data planes for Flowgate, written in C (`programs/`, compiled by clang at build
//! time) and loaded with aya:
//!
//! - [`xdp_lb`]: an XDP L4 load balancer in the style of Katran — VIP:port → backend by a
//!   Maglev table that flowgate-lb builds (so user space and the kernel agree), an LRU
//!   conntrack map that keeps existing flows on their backend when the set changes,
//!   forwarding by L2 DSR or NAT, per-VIP and per-backend per-CPU counters.
//! - [`sockredir`]: sidecar interception without iptables — sockops records local
//!   sockets in a sockhash, sk_msg moves sent bytes straight into the peer socket, and
//!   cgroup/connect4 steers outbound connects to the sidecar and remembers where they
//!   were going.
//!
//! Everything needs root; loading as another user fails with [`Error::NotRoot`], and a
//! kernel without a feature gives [`Error::Unsupported`] naming it. Dropping a loader
//! detaches its programs.
//!
//! ```no_run
//! use flowgate_ebpf::xdp_lb::{AttachMode, Backend, Forwarding, Vip, XdpLb, XdpLbConfig};
//!
//! let mut lb = XdpLb::load(XdpLbConfig::default())?;
//! let mode = lb.attach("eth0", AttachMode::Auto)?; // native, else generic
//! let backends = [
//!     Backend { addr: "10.0.0.11".parse().unwrap(), port: 0, mac: [2, 0, 0, 0, 0, 11], weight: 1 },
//!     Backend { addr: "10.0.0.12".parse().unwrap(), port: 0, mac: [2, 0, 0, 0, 0, 12], weight: 2 },
//! ];
//! lb.set_vip(Vip::tcp("10.0.0.100:80".parse().unwrap()), Forwarding::Dsr, &backends)?;
//! println!("attached in {mode:?} mode: {:?}", lb.stats()?);
//! # Ok::<(), flowgate_ebpf::Error>(())
//! ```

pub mod error;
mod maps;
pub mod sockredir;
pub mod xdp_lb;

pub use error::Error;
pub use sockredir::{Sidecar, SockRedirect, SockRedirectConfig, SockRedirectStats};
pub use xdp_lb::{XdpLb, XdpLbConfig};
