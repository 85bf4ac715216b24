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
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// The algorithm.
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
