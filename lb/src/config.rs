//! [`BalancerConfig`]: everything a [`Balancer`](crate::Balancer) is built from.

use serde::{Deserialize, Serialize};

use crate::algorithm::{Algorithm, StickyConfig};
use crate::error::ConfigError;
use crate::locality::LocalityConfig;
use crate::outlier::OutlierConfig;
use crate::slow_start::SlowStartConfig;

/// Everything a [`Balancer`](crate::Balancer) is built from.
///
/// ```
/// use flowgate_lb::{Algorithm, BalancerConfig};
/// let cfg: BalancerConfig = serde_json::from_str(r#"{
///     "algorithm": {"type": "least_request"},
///     "outlier": {"consecutive_5xx": 3},
///     "slow_start": {"window": "30s", "aggression": 2}
/// }"#).unwrap();
/// assert_eq!(cfg.algorithm, Algorithm::LeastRequest);
/// // An algorithm name alone is that algorithm with every option off.
/// let short: BalancerConfig = serde_json::from_str(r#""maglev""#).unwrap();
/// assert_eq!(short, BalancerConfig::new(Algorithm::maglev()));
/// ```
///
/// This is the one type of every `balance:` option in Flowgate's files (`connect`,
/// `balance-http`, `proxy-mqtt`, `dns-respond`, the gateway's backends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct BalancerConfig {
    /// The algorithm: a name or a map with `type:` (see [`Algorithm`]). Default round
    /// robin.
    #[serde(default = "round_robin")]
    pub algorithm: Algorithm,
    /// Passive outlier detection; off when absent.
    #[serde(default)]
    pub outlier: Option<OutlierConfig>,
    /// Slow start for joining and recovering backends; off when absent.
    #[serde(default)]
    pub slow_start: Option<SlowStartConfig>,
    /// Locality-aware weighting with failover; off when absent.
    #[serde(default)]
    pub locality: Option<LocalityConfig>,
    /// Sticky sessions by key; off when absent.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
}

fn round_robin() -> Algorithm {
    Algorithm::RoundRobin
}

impl Default for BalancerConfig {
    /// Round robin with every option off.
    fn default() -> Self {
        Self::new(Algorithm::RoundRobin)
    }
}

impl<'de> Deserialize<'de> for BalancerConfig {
    /// An algorithm name (`maglev`: that algorithm with every option off) or the map.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BalancerConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "an algorithm name ({}) or a map with `algorithm`, `outlier`, `slow_start`, `locality`, `sticky`",
                    crate::algorithm::ALGORITHM_NAMES
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BalancerConfig, E> {
                <Algorithm as Deserialize>::deserialize(
                    serde::de::value::StrDeserializer::<E>::new(s),
                )
                .map(BalancerConfig::new)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<BalancerConfig, A::Error> {
                BalancerConfig::deserialize(serde::de::value::MapAccessDeserializer::new(m))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for BalancerConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BalancerConfig::serialize(self, s)
    }
}

impl BalancerConfig {
    /// `algorithm` with every option off.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            outlier: None,
            slow_start: None,
            locality: None,
            sticky: None,
        }
    }

    /// Checks every part.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.algorithm.validate()?;
        if let Some(o) = &self.outlier {
            o.validate()?;
        }
        if let Some(s) = &self.slow_start {
            s.validate()?;
        }
        if let Some(l) = &self.locality {
            l.validate()?;
        }
        Ok(())
    }
}
