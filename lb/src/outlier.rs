//! Passive outlier detection: eject a backend after consecutive failures.
//!
//! Every [`Lease`](crate::Lease) reports its [`Outcome`](crate::Outcome) when dropped. A
//! 5xx status bumps the backend's consecutive-5xx count, a connect failure or timeout
//! bumps both the 5xx and the connect-failure counts, anything else resets them. When a
//! count reaches its threshold the backend is ejected at once for
//! `base_ejection_time × times_ejected` (capped at `max_ejection_time`), unless that would
//! eject more than `max_ejection_percent` of the backends (at least one may always go).
//! [`Balancer::refresh`](crate::Balancer::refresh) returns it when the time is up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, check_range};

/// Outlier-detection settings (Envoy's names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive 5xx (connect failures included) before ejection; 0 = off. Default 5.
    #[serde(default = "five")]
    pub consecutive_5xx: u32,
    /// Consecutive connect failures before ejection; 0 = off. Default 5.
    #[serde(default = "five")]
    pub consecutive_connect_failures: u32,
    /// The first ejection's length; later ones are multiples of it. Default 30 s.
    #[serde(default = "base", with = "crate::duration")]
    pub base_ejection_time: Duration,
    /// The longest ejection. Default 300 s.
    #[serde(default = "max_time", with = "crate::duration")]
    pub max_ejection_time: Duration,
    /// Most backends ejected at once, in percent. Default 10.
    #[serde(default = "ten")]
    pub max_ejection_percent: u32,
}

fn five() -> u32 {
    5
}
fn base() -> Duration {
    Duration::from_secs(30)
}
fn max_time() -> Duration {
    Duration::from_secs(300)
}
fn ten() -> u32 {
    10
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: five(),
            consecutive_connect_failures: five(),
            base_ejection_time: base(),
            max_ejection_time: max_time(),
            max_ejection_percent: ten(),
        }
    }
}

impl OutlierConfig {
    /// How long the `nth` ejection (1-based) of a backend lasts.
    pub fn ejection_time(&self, nth: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(nth.max(1))
            .min(self.max_ejection_time.max(self.base_ejection_time))
    }

    /// How many of `total` backends may be ejected at once.
    pub fn max_ejected(&self, total: usize) -> usize {
        (total * self.max_ejection_percent as usize / 100).max(1)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "outlier.max_ejection_percent",
            f64::from(self.max_ejection_percent),
            0.0,
            100.0,
        )
    }
}
