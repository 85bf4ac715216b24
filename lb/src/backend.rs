//! What a backend is: an address, a weight and where it runs.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One upstream a balancer can pick: an address, a relative weight and locality metadata.
///
/// Backends are identified by address: updating the set keeps the runtime state (in-flight
/// counts, latency, ejections) of every address that stays.
///
/// ```
/// use flowgate_lb::Backend;
/// let b = Backend::new("10.0.0.1:8080".parse()?).weight(3).zone("eu-west-1a");
/// assert_eq!(b.weight, 3);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight (default 1). A weight of 0 keeps the backend known but never picked.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Where the backend runs, for locality-aware balancing.
    #[serde(default)]
    pub metadata: Metadata,
}

fn default_weight() -> u32 {
    1
}

/// Where a backend runs. Empty fields match nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Region, e.g. `eu-west-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Zone inside the region, e.g. `eu-west-1a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Cluster (a Kubernetes cluster in a multi-cluster mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

// === impl Backend ===

impl Backend {
    /// A backend of weight 1 with no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            metadata: Metadata::default(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.metadata.zone = Some(zone.into());
        self
    }

    /// Sets the region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.metadata.region = Some(region.into());
        self
    }

    /// Sets the cluster.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.metadata.cluster = Some(cluster.into());
        self
    }

    /// Parses `"host:port"` or a JSON object (`{"addr": "...", "weight": 2, "metadata": {"zone": "a"}}`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.starts_with('{') {
            return serde_json::from_str(text).ok();
        }
        text.parse().ok().map(Self::new)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (weight {})", self.addr, self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_json() {
        let a = Backend::parse("127.0.0.1:80").unwrap();
        assert_eq!(a.weight, 1);
        let b = Backend::parse(r#"{"addr":"127.0.0.1:81","weight":5,"metadata":{"zone":"z1"}}"#)
            .unwrap();
        assert_eq!(b.weight, 5);
        assert_eq!(b.metadata.zone.as_deref(), Some("z1"));
        assert!(Backend::parse("nonsense").is_none());
        assert!(Backend::parse(r#"{"addr":"127.0.0.1:81","colour":"red"}"#).is_none());
    }
}
