//! L4 filters: connecting upstream, TLS, PROXY protocol, copies and dumps, throttling.

mod connect;
mod dump;
pub mod proxy_protocol;
mod throttle;
pub mod tls;

pub(crate) use connect::Refresher;
pub use connect::{Connect, ConnectConfig, DialTarget, Dialed, InternalTarget, is_internal};
pub use dump::{Dump, DumpConfig, Tee, TeeConfig};
pub use proxy_protocol::{
    AcceptProxyProtocol, AcceptProxyProtocolConfig, ConnectProxyProtocol,
    ConnectProxyProtocolConfig,
};
pub use throttle::{Size, Throttle, ThrottleConfig};

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
