//! What a backend is: an address, a weight and where it runs.

use std::fmt;
use std::net::SocketAddr;

use flowgate_config::renamed::{Addr, Renamed};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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
///
/// In configuration files (every `endpoints:` list of a balancing component) a backend is
/// `IP:port`, or `{ address: IP:port, weight: N, metadata: { region, zone, cluster } }`:
///
/// ```
/// use flowgate_lb::Backend;
/// let v: Vec<Backend> = serde_json::from_str(
///     r#"["10.0.0.1:80", {"address": "10.0.0.2:80", "weight": 3, "metadata": {"zone": "a"}}]"#,
/// ).unwrap();
/// assert_eq!((v[0].weight, v[1].weight), (1, 3));
/// assert_eq!(v[1].metadata.zone.as_deref(), Some("a"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Backend {
    /// Where to connect (`address` in files).
    #[serde(rename = "address")]
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

/// A backend's map form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    address: SocketAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default, rename = "addr")]
    _addr: Renamed<Addr>,
}

impl<'de> Deserialize<'de> for Backend {
    /// `IP:port`, or `{ address, weight, metadata }`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Backend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`IP:port` or `{ address: IP:port, weight: N, metadata: { … } }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Backend, E> {
                s.parse().map(Backend::new).map_err(|_| {
                    E::custom(format_args!(
                        "`{s}` is not `IP:port` (names are not resolved)"
                    ))
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Backend, A::Error> {
                let f = Fields::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(Backend {
                    addr: f.address,
                    weight: f.weight,
                    metadata: f.metadata,
                })
            }
        }
        d.deserialize_any(V)
    }
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

    /// Parses `"IP:port"` or a JSON object (`{"address": "...", "weight": 2, "metadata": {"zone": "a"}}`).
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
        let b = Backend::parse(r#"{"address":"127.0.0.1:81","weight":5,"metadata":{"zone":"z1"}}"#)
            .unwrap();
        assert_eq!(b.weight, 5);
        assert_eq!(b.metadata.zone.as_deref(), Some("z1"));
        assert!(Backend::parse("nonsense").is_none());
        assert!(Backend::parse(r#"{"address":"127.0.0.1:81","colour":"red"}"#).is_none());
    }

    #[test]
    fn the_old_addr_key_is_refused_naming_address() {
        let e = serde_json::from_str::<Backend>(r#"{"addr":"127.0.0.1:81"}"#).unwrap_err();
        assert!(e.to_string().contains("`addr` is now `address`"), "{e}");
        let e = serde_json::from_str::<Backend>(r#""db.internal:5432""#).unwrap_err();
        assert!(e.to_string().contains("is not `IP:port`"), "{e}");
        let round = serde_json::to_string(&Backend::new("127.0.0.1:1".parse().unwrap())).unwrap();
        assert!(round.contains(r#""address":"127.0.0.1:1""#), "{round}");
        assert_eq!(
            serde_json::from_str::<Backend>(&round).unwrap(),
            Backend::new("127.0.0.1:1".parse().unwrap())
        );
    }
}
