//! Retry budget (Finagle, linkerd): retries may add at most `ratio` of the requests seen
//! in the last `window`, plus a floor of `min_retries_per_sec` so that a quiet service can
//! still retry.
//!
//! Every request is [`record_request`](RetryBudget::record_request)ed; before a retry call
//! [`try_retry`](RetryBudget::try_retry), which counts the retry when it allows it. Counts
//! live in ten buckets spanning the window, so old traffic ages out smoothly.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use flowgate_lb::{ManualClock, RetryBudget, RetryBudgetConfig};
//! let clock = Arc::new(ManualClock::new());
//! let cfg = RetryBudgetConfig { ratio: 0.2, min_retries_per_sec: 0.0, window: Duration::from_secs(10) };
//! let budget = RetryBudget::with_clock(cfg, clock)?;
//! for _ in 0..10 { budget.record_request(); }
//! assert!(budget.try_retry());
//! assert!(budget.try_retry());
//! assert!(!budget.try_retry()); // 2 of 10 spent
//! # Ok::<(), flowgate_lb::ConfigError>(())
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{ConfigError, check_range};
use crate::sliding::Sliding;

/// Retry-budget settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request, e.g. 0.2 (default).
    #[serde(default = "ratio")]
    pub ratio: f64,
    /// Retries per second allowed regardless of traffic (default 10).
    #[serde(default = "floor")]
    pub min_retries_per_sec: f64,
    /// How far back requests count (default 10 s).
    #[serde(default = "window", with = "crate::duration")]
    pub window: Duration,
}

fn ratio() -> f64 {
    0.2
}
fn floor() -> f64 {
    10.0
}
fn window() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: ratio(),
            min_retries_per_sec: floor(),
            window: window(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Bucket {
    requests: u64,
    retries: u64,
}

/// A retry budget shared by the requests of one upstream.
pub struct RetryBudget {
    cfg: RetryBudgetConfig,
    clock: Arc<dyn Clock>,
    window: Mutex<Sliding<Bucket>>,
}

impl RetryBudget {
    /// A budget on the system clock.
    pub fn new(cfg: RetryBudgetConfig) -> Result<Self, ConfigError> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// A budget reading time from `clock`.
    pub fn with_clock(cfg: RetryBudgetConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        check_range("retry_budget.ratio", cfg.ratio, 0.0, 1000.0)?;
        check_range(
            "retry_budget.min_retries_per_sec",
            cfg.min_retries_per_sec,
            0.0,
            1e9,
        )?;
        if cfg.window < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "retry_budget.window",
                "must be at least 10ms",
            ));
        }
        let now = clock.now();
        Ok(Self {
            window: Mutex::new(Sliding::new(cfg.window, now)),
            cfg,
            clock,
        })
    }

    fn with_window<R>(&self, f: impl FnOnce(&mut Sliding<Bucket>) -> R) -> R {
        let now = self.clock.now();
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.advance(now);
        f(&mut w)
    }

    /// Counts one request (first attempts only).
    pub fn record_request(&self) {
        self.with_window(|w| w.head_mut().requests += 1);
    }

    /// Whether a retry fits the budget; counts it if so.
    pub fn try_retry(&self) -> bool {
        let floor = self.cfg.min_retries_per_sec * self.cfg.window.as_secs_f64();
        let ratio = self.cfg.ratio;
        self.with_window(|w| {
            let (req, ret) = w
                .iter()
                .fold((0u64, 0u64), |(a, b), k| (a + k.requests, b + k.retries));
            let allowed = (floor + ratio * req as f64).floor() as u64;
            if ret < allowed {
                w.head_mut().retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn floor_and_ratio_and_expiry() {
        let clock = Arc::new(ManualClock::new());
        let cfg = RetryBudgetConfig {
            ratio: 0.1,
            min_retries_per_sec: 0.5,
            window: Duration::from_secs(10),
        };
        let b = RetryBudget::with_clock(cfg, clock.clone()).unwrap();
        // Floor: 0.5/s × 10 s = 5 retries with no traffic.
        assert_eq!((0..20).filter(|_| b.try_retry()).count(), 5);
        for _ in 0..100 {
            b.record_request();
        }
        // +10 % of 100.
        assert_eq!((0..20).filter(|_| b.try_retry()).count(), 10);
        // A window later everything aged out: only the floor again.
        clock.advance(Duration::from_secs(11));
        assert_eq!((0..20).filter(|_| b.try_retry()).count(), 5);
    }
}
