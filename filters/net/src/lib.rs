//! # flowgate-filters-net
//!
//! Flowgate's L4 filters: connecting upstream ([`Connect`], balanced by flowgate-lb when
//! asked), TLS ([`tls::AcceptTls`] / [`tls::ConnectTls`] with rustls), the PROXY protocol
//! ([`proxy_protocol`]), copies and dumps ([`Tee`], [`Dump`]) and throttling
//! ([`Throttle`]). Each filter has a typed `XxxConfig` (YAML configurations reach it
//! through [`register`]) and a Rust API:
//!
//! ```no_run
//! use flowgate_filters_net::Connect;
//! use flowgate_pipeline::{Pipeline, server::{ListenerConfig, Server}};
//! use std::sync::Arc;
//!
//! // A TCP proxy: everything that arrives goes to one of three upstreams, round robin.
//! let proxy = Pipeline::builder("proxy")
//!     .filter(Connect::round_robin(["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]))
//!     .build()?;
//! let server = Server::builder().workers(2).start()?;
//! server.apply(vec![(ListenerConfig::tcp("127.0.0.1:8000".parse()?), Arc::new(proxy))])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod connect;
mod dump;
mod negotiated;
pub mod proxy_protocol;
mod throttle;
pub mod tls;

pub use connect::{Connect, ConnectConfig, DialTarget, Dialed, InternalTarget, is_internal};
pub use dump::{Dump, DumpConfig, Tee, TeeConfig};
pub use flowgate_pipeline::Size;
pub use negotiated::{Negotiated, Outcome as NegotiatedOutcome};
pub use proxy_protocol::{
    AcceptProxyProtocol, AcceptProxyProtocolConfig, ConnectProxyProtocol,
    ConnectProxyProtocolConfig,
};
pub use throttle::{Throttle, ThrottleConfig};

use flowgate_pipeline::registry::Registry;

/// Registers the `net` filters.
pub fn register(r: &mut Registry) {
    r.register::<ConnectConfig>("connect");
    r.register::<DumpConfig>("dump");
    r.register::<TeeConfig>("tee");
    r.register::<ThrottleConfig>("throttle");
    r.register::<AcceptProxyProtocolConfig>("accept-proxy-protocol");
    r.register::<ConnectProxyProtocolConfig>("connect-proxy-protocol");
    tls::register(r);
}
