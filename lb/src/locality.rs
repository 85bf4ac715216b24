//! Locality-aware weighting with failover priorities.
//!
//! Each backend gets a priority from how close it runs to this proxy
//! ([`LocalityConfig::local`]): 0 in the same zone, 1 in the same region, 2 in the same
//! cluster, 3 anywhere else. As in Envoy, priority 0 takes all traffic while it is healthy;
//! when only a fraction `h` of its backends is eligible it takes `min(1, h × 1.4)` of the
//! traffic (the overprovisioning factor), and the rest spills to priority 1, then 2, then 3.
//! Inside a priority, traffic follows the backends' weights.
//!
//! ```
//! use flowgate_lb::{LocalityConfig, Metadata};
//! let cfg = LocalityConfig::new(Metadata { zone: Some("a".into()), ..Metadata::default() });
//! // Two priorities, the local one with half its backends up: it keeps 70 %.
//! assert_eq!(cfg.priority_loads(&[(1, 2), (2, 2)]), vec![0.7, 0.30000000000000004]);
//! ```

use serde::{Deserialize, Serialize};

use crate::backend::Metadata;
use crate::error::{ConfigError, check_range};

/// The priority levels: same zone, same region, same cluster, elsewhere.
pub const PRIORITIES: usize = 4;

/// Where this proxy runs, and how eagerly to fail over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityConfig {
    /// This proxy's own locality.
    pub local: Metadata,
    /// How much a partly healthy priority is trusted (default 1.4, Envoy's).
    #[serde(default = "default_factor")]
    pub overprovisioning_factor: f64,
}

fn default_factor() -> f64 {
    1.4
}

impl LocalityConfig {
    /// Failover from `local` with the default overprovisioning factor.
    pub fn new(local: Metadata) -> Self {
        Self {
            local,
            overprovisioning_factor: default_factor(),
        }
    }

    /// The priority of a backend running at `at`: 0 (closest) to 3.
    pub fn priority(&self, at: &Metadata) -> usize {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        let region_ok = self.local.region.is_none() || same(&self.local.region, &at.region);
        if same(&self.local.zone, &at.zone) && region_ok {
            0
        } else if same(&self.local.region, &at.region) {
            1
        } else if same(&self.local.cluster, &at.cluster) {
            2
        } else {
            3
        }
    }

    /// The share of traffic for each priority given `(eligible, total)` backends in each.
    pub fn priority_loads(&self, counts: &[(usize, usize)]) -> Vec<f64> {
        let mut loads = vec![0.0; counts.len()];
        let mut left = 1.0f64;
        for (load, &(up, total)) in loads.iter_mut().zip(counts) {
            if total == 0 || left <= 0.0 {
                continue;
            }
            let health = up as f64 / total as f64 * self.overprovisioning_factor;
            *load = health.min(1.0).min(left);
            left -= *load;
        }
        let sum: f64 = loads.iter().sum();
        if left > 1e-9 && sum > 0.0 {
            // Everything is degraded: share what is left in proportion.
            for l in &mut loads {
                *l /= sum;
            }
        }
        loads
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "locality.overprovisioning_factor",
            self.overprovisioning_factor,
            1.0,
            100.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(zone: &str, region: &str, cluster: &str) -> Metadata {
        Metadata {
            zone: Some(zone.into()),
            region: Some(region.into()),
            cluster: Some(cluster.into()),
        }
    }

    #[test]
    fn priorities_follow_distance() {
        let cfg = LocalityConfig::new(at("z1", "r1", "c1"));
        assert_eq!(cfg.priority(&at("z1", "r1", "c9")), 0);
        assert_eq!(cfg.priority(&at("z2", "r1", "c9")), 1);
        assert_eq!(cfg.priority(&at("z2", "r2", "c1")), 2);
        assert_eq!(cfg.priority(&at("z2", "r2", "c2")), 3);
        assert_eq!(cfg.priority(&Metadata::default()), 3);
    }

    #[test]
    fn loads_spill_over() {
        let cfg = LocalityConfig::new(Metadata::default());
        assert_eq!(cfg.priority_loads(&[(4, 4), (4, 4)]), vec![1.0, 0.0]);
        assert_eq!(cfg.priority_loads(&[(0, 4), (4, 4)]), vec![0.0, 1.0]);
        let l = cfg.priority_loads(&[(1, 4), (1, 4)]);
        assert!(
            (l[0] - 0.5).abs() < 1e-9 && (l[1] - 0.5).abs() < 1e-9,
            "{l:?}"
        );
    }
}
