//! DNS discovery: A/AAAA re-resolution through the system resolver.

use std::time::Duration;

use super::{Discovery, DiscoveryError, NextSet, poll_changes};
use crate::backend::Backend;

/// Backends from a name's A and AAAA records (via `getaddrinfo`), re-resolved every
/// `interval`, each with the given port and weight 1. For SRV records, see
/// [`SrvDiscovery`](super::SrvDiscovery).
#[derive(Debug)]
pub struct DnsDiscovery {
    host: String,
    port: u16,
    interval: Duration,
    last: Option<Vec<Backend>>,
}

impl DnsDiscovery {
    /// Resolves `host` (port `port`) every `interval`.
    pub fn new(host: impl Into<String>, port: u16, interval: Duration) -> Self {
        Self {
            host: host.into(),
            port,
            interval,
            last: None,
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<Backend>, DiscoveryError> {
    let mut addrs: Vec<_> = tokio::net::lookup_host((host, port)).await?.collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs.into_iter().map(Backend::new).collect())
}

impl Discovery for DnsDiscovery {
    fn next(&mut self) -> NextSet<'_> {
        Box::pin(async move {
            let (host, port) = (self.host.clone(), self.port);
            poll_changes(&mut self.last, self.interval, || resolve(&host, port)).await
        })
    }
}
