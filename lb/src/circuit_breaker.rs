//! Circuit breaking: Envoy's resource limits plus FSM's degradation windows.
//!
//! **Limits** cap what one upstream may have open at once: connections, requests waiting
//! for a connection (pending), requests in flight, retries in flight. Each `try_*` returns
//! a [`Permit`] that holds one unit until dropped, or [`Rejected`] when the cap is reached.
//!
//! **Degradation** (FSM's `circuitBreaking`): finished requests are counted in a sliding
//! `stat_time_window`; once at least `min_request_amount` were seen, too many errors or
//! too many slow requests (by amount or ratio) open the breaker for
//! `degraded_time_window`, during which [`CircuitBreaker::try_request`] answers
//! [`Rejected::Degraded`] and the proxy serves its degraded response.
//!
//! ```
//! use flowgate_lb::{CircuitBreaker, CircuitBreakerConfig};
//! use flowgate_lb::circuit_breaker::Rejected;
//! let cb = CircuitBreaker::new(CircuitBreakerConfig { max_requests: Some(1), ..Default::default() })?;
//! let first = cb.try_request()?;
//! assert!(matches!(cb.try_request(), Err(Rejected::Requests { limit: 1 })));
//! drop(first);
//! assert!(cb.try_request().is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::{Clock, SystemClock};
use crate::error::{ConfigError, check_range};
use crate::sliding::Sliding;

/// Circuit-breaker settings; every limit is off when absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Most open connections.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection.
    #[serde(default)]
    pub max_pending: Option<u32>,
    /// Most requests in flight.
    #[serde(default)]
    pub max_requests: Option<u32>,
    /// Most retries in flight.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Error- and slow-ratio degradation; off when absent.
    #[serde(default)]
    pub degradation: Option<DegradationConfig>,
}

/// FSM's `circuitBreaking` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradationConfig {
    /// How far back finished requests count (FSM `statTimeWindow`, default 30 s).
    #[serde(default = "stat_window", with = "crate::duration")]
    pub stat_time_window: Duration,
    /// Fewer requests than this never trip the breaker (default 10).
    #[serde(default = "min_amount")]
    pub min_request_amount: u32,
    /// Trip at this many errors in the window.
    #[serde(default)]
    pub error_amount_threshold: Option<u32>,
    /// Trip at this error ratio (0..=1) in the window.
    #[serde(default)]
    pub error_ratio_threshold: Option<f64>,
    /// A request slower than this counts as slow (default 5 s).
    #[serde(default = "slow_time", with = "crate::duration")]
    pub slow_time_threshold: Duration,
    /// Trip at this many slow requests in the window.
    #[serde(default)]
    pub slow_amount_threshold: Option<u32>,
    /// Trip at this slow ratio (0..=1) in the window.
    #[serde(default)]
    pub slow_ratio_threshold: Option<f64>,
    /// How long the breaker stays open (FSM `degradedTimeWindow`, default 30 s).
    #[serde(default = "stat_window", with = "crate::duration")]
    pub degraded_time_window: Duration,
}

fn stat_window() -> Duration {
    Duration::from_secs(30)
}
fn min_amount() -> u32 {
    10
}
fn slow_time() -> Duration {
    Duration::from_secs(5)
}

/// Why a permit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejected {
    /// `max_connections` reached.
    #[error("circuit open: {limit} connections")]
    Connections {
        /// The limit.
        limit: u32,
    },
    /// `max_pending` reached.
    #[error("circuit open: {limit} pending requests")]
    Pending {
        /// The limit.
        limit: u32,
    },
    /// `max_requests` reached.
    #[error("circuit open: {limit} requests")]
    Requests {
        /// The limit.
        limit: u32,
    },
    /// `max_retries` reached.
    #[error("circuit open: {limit} retries")]
    Retries {
        /// The limit.
        limit: u32,
    },
    /// The error or slow ratio tripped; closed again after `degraded_time_window`.
    #[error("circuit open: upstream degraded")]
    Degraded,
}

#[derive(Default, Clone, Copy)]
struct Stats {
    total: u32,
    errors: u32,
    slow: u32,
}

struct Degrade {
    window: Sliding<Stats>,
    until: Option<Instant>,
}

struct Inner {
    cfg: CircuitBreakerConfig,
    clock: Arc<dyn Clock>,
    counts: [AtomicU32; 4],
    degrade: Mutex<Degrade>,
}

/// A circuit breaker for one upstream. Cheap to clone.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// One unit of a limited resource, released on drop. A request permit also takes the
/// request's result for the degradation windows: call [`Permit::finish`].
pub struct Permit {
    inner: Arc<Inner>,
    slot: Option<usize>,
    started: Option<Instant>,
}

const CONN: usize = 0;
const PENDING: usize = 1;
const REQ: usize = 2;
const RETRY: usize = 3;

impl CircuitBreaker {
    /// A breaker on the system clock.
    pub fn new(cfg: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// A breaker reading time from `clock`.
    pub fn with_clock(
        cfg: CircuitBreakerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let window = match &cfg.degradation {
            Some(d) => {
                for (f, v) in [
                    ("degradation.error_ratio_threshold", d.error_ratio_threshold),
                    ("degradation.slow_ratio_threshold", d.slow_ratio_threshold),
                ] {
                    if let Some(v) = v {
                        check_range(f, v, 0.0, 1.0)?;
                    }
                }
                d.stat_time_window
            }
            None => Duration::from_secs(1),
        };
        let now = clock.now();
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                clock,
                counts: Default::default(),
                degrade: Mutex::new(Degrade {
                    window: Sliding::new(window, now),
                    until: None,
                }),
            }),
        })
    }

    fn acquire(
        &self,
        slot: usize,
        limit: Option<u32>,
        err: fn(u32) -> Rejected,
    ) -> Result<Permit, Rejected> {
        let counter = &self.inner.counts[slot];
        if let Some(limit) = limit {
            let prev = counter.fetch_add(1, Ordering::AcqRel);
            if prev >= limit {
                counter.fetch_sub(1, Ordering::AcqRel);
                return Err(err(limit));
            }
        } else {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Permit {
            inner: self.inner.clone(),
            slot: Some(slot),
            started: None,
        })
    }

    /// Takes a connection slot.
    pub fn try_connection(&self) -> Result<Permit, Rejected> {
        self.acquire(CONN, self.inner.cfg.max_connections, |limit| {
            Rejected::Connections { limit }
        })
    }

    /// Takes a pending-request slot (while waiting for a connection).
    pub fn try_pending(&self) -> Result<Permit, Rejected> {
        self.acquire(PENDING, self.inner.cfg.max_pending, |limit| {
            Rejected::Pending { limit }
        })
    }

    /// Takes a request slot, unless the upstream is degraded.
    pub fn try_request(&self) -> Result<Permit, Rejected> {
        if self.is_degraded() {
            return Err(Rejected::Degraded);
        }
        let mut p = self.acquire(REQ, self.inner.cfg.max_requests, |limit| {
            Rejected::Requests { limit }
        })?;
        if self.inner.cfg.degradation.is_some() {
            p.started = Some(self.inner.clock.now());
        }
        Ok(p)
    }

    /// Takes a retry slot.
    pub fn try_retry(&self) -> Result<Permit, Rejected> {
        self.acquire(RETRY, self.inner.cfg.max_retries, |limit| {
            Rejected::Retries { limit }
        })
    }

    /// Whether the degradation window is open now.
    pub fn is_degraded(&self) -> bool {
        let now = self.inner.clock.now();
        let d = self.inner.lock();
        d.until.is_some_and(|t| t > now)
    }

    /// Requests in flight.
    pub fn requests(&self) -> u32 {
        self.inner.counts[REQ].load(Ordering::Relaxed)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Degrade> {
        self.degrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, started: Instant, error: bool) {
        let Some(cfg) = &self.cfg.degradation else {
            return;
        };
        let now = self.clock.now();
        let slow = now.saturating_duration_since(started) >= cfg.slow_time_threshold;
        let mut d = self.lock();
        if d.until.is_some_and(|t| t > now) {
            return;
        }
        d.window.advance(now);
        let head = d.window.head_mut();
        head.total += 1;
        head.errors += u32::from(error);
        head.slow += u32::from(slow);
        let s = d.window.iter().fold(Stats::default(), |a, b| Stats {
            total: a.total + b.total,
            errors: a.errors + b.errors,
            slow: a.slow + b.slow,
        });
        if s.total < cfg.min_request_amount {
            return;
        }
        let ratio = |n: u32| f64::from(n) / f64::from(s.total);
        let trips = cfg.error_amount_threshold.is_some_and(|t| s.errors >= t)
            || cfg
                .error_ratio_threshold
                .is_some_and(|t| ratio(s.errors) >= t)
            || cfg.slow_amount_threshold.is_some_and(|t| s.slow >= t)
            || cfg.slow_ratio_threshold.is_some_and(|t| ratio(s.slow) >= t);
        if trips {
            tracing::warn!(
                errors = s.errors,
                slow = s.slow,
                total = s.total,
                "circuit degraded"
            );
            d.until = Some(now + cfg.degraded_time_window);
            d.window.clear(now);
        }
    }
}

impl Permit {
    /// Ends a request permit with its result (feeds the degradation windows) and
    /// releases it. On other permits it only releases.
    pub fn finish(mut self, error: bool) {
        if let Some(started) = self.started.take() {
            self.inner.record(started, error);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.inner.counts[slot].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("slot", &self.slot).finish()
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("config", &self.inner.cfg)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn degrading(clock: Arc<ManualClock>) -> CircuitBreaker {
        let cfg = CircuitBreakerConfig {
            degradation: Some(DegradationConfig {
                stat_time_window: Duration::from_secs(10),
                min_request_amount: 10,
                error_amount_threshold: None,
                error_ratio_threshold: Some(0.5),
                slow_time_threshold: Duration::from_millis(100),
                slow_amount_threshold: None,
                slow_ratio_threshold: Some(0.8),
                degraded_time_window: Duration::from_secs(5),
            }),
            ..Default::default()
        };
        CircuitBreaker::with_clock(cfg, clock).unwrap()
    }

    #[test]
    fn error_ratio_opens_then_closes() {
        let clock = Arc::new(ManualClock::new());
        let cb = degrading(clock.clone());
        for i in 0..9 {
            cb.try_request().unwrap().finish(i % 2 == 0);
        }
        assert!(!cb.is_degraded(), "below min_request_amount");
        cb.try_request().unwrap().finish(true); // 6 errors of 10
        assert_eq!(cb.try_request().err(), Some(Rejected::Degraded));
        clock.advance(Duration::from_secs(5));
        assert!(cb.try_request().is_ok());
    }

    #[test]
    fn slow_ratio_opens() {
        let clock = Arc::new(ManualClock::new());
        let cb = degrading(clock.clone());
        for _ in 0..10 {
            let p = cb.try_request().unwrap();
            clock.advance(Duration::from_millis(150));
            p.finish(false);
        }
        assert!(cb.is_degraded());
    }

    #[test]
    fn limits_count_and_release() {
        let cb = CircuitBreaker::new(CircuitBreakerConfig {
            max_connections: Some(2),
            max_retries: Some(0),
            ..Default::default()
        })
        .unwrap();
        let a = cb.try_connection().unwrap();
        let _b = cb.try_connection().unwrap();
        assert_eq!(
            cb.try_connection().err(),
            Some(Rejected::Connections { limit: 2 })
        );
        drop(a);
        assert!(cb.try_connection().is_ok());
        assert_eq!(cb.try_retry().err(), Some(Rejected::Retries { limit: 0 }));
    }
}
