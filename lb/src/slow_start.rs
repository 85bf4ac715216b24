//! Slow start, after FSM's `TrafficWarmup` and Envoy's slow start: a backend that joins
//! (or comes back healthy) starts at `min_weight_percent` of its weight and ramps up over
//! `window` as `(elapsed / window) ^ (1 / aggression)`.
//!
//! `aggression` 1 ramps linearly; above 1 the weight rises fast early on, below 1 it stays
//! low longer. The balancer re-weights on [`Balancer::refresh`](crate::Balancer::refresh),
//! so run [`Balancer::maintain`](crate::Balancer::maintain) during the window.
//!
//! ```
//! use std::time::Duration;
//! use flowgate_lb::SlowStartConfig;
//! let s = SlowStartConfig { window: Duration::from_secs(10), aggression: 1.0, min_weight_percent: 10.0 };
//! assert_eq!(s.factor(Duration::ZERO), 0.1);
//! assert_eq!(s.factor(Duration::from_secs(5)), 0.5);
//! assert_eq!(s.factor(Duration::from_secs(10)), 1.0);
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, check_range};

/// Slow-start (traffic warm-up) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowStartConfig {
    /// How long the ramp lasts (FSM `duration`).
    #[serde(with = "crate::duration")]
    pub window: Duration,
    /// The ramp's shape (FSM `aggression`, default 1: linear).
    #[serde(default = "one")]
    pub aggression: f64,
    /// Where the ramp starts, in percent of the weight (FSM `minWeight`, default 10).
    #[serde(default = "ten")]
    pub min_weight_percent: f64,
}

fn one() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}

impl SlowStartConfig {
    /// The weight multiplier `elapsed` after the backend joined, in `min..=1`.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.window.as_secs_f64();
        let min = self.min_weight_percent / 100.0;
        t.powf(1.0 / self.aggression).clamp(min, 1.0)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() {
            return Err(ConfigError::new("slow_start.window", "must be above zero"));
        }
        check_range("slow_start.aggression", self.aggression, 0.01, 100.0)?;
        check_range(
            "slow_start.min_weight_percent",
            self.min_weight_percent,
            0.0,
            100.0,
        )
    }
}
