//! Active health checks: probe every backend on an interval, mark it down after
//! `unhealthy_threshold` consecutive failures and up again after `healthy_threshold`
//! consecutive successes.
//!
//! Probes are a [`HealthCheck`]: [`TcpCheck`] (connect), [`HttpCheck`] (GET, expected
//! status; only the status line is read), or your own (a gRPC `grpc.health.v1` probe
//! plugs in here). A [`HealthChecker`] runs the rounds: all backends are probed
//! concurrently, each probe bounded by `timeout`, then it sleeps `interval` plus a random
//! `0..jitter` so a fleet of proxies does not probe in lockstep.
//!
//! ```no_run
//! use std::time::Duration;
//! use flowgate_lb::{Algorithm, Balancer, BalancerConfig};
//! use flowgate_lb::health::{HealthCheckConfig, HealthChecker, Probe};
//! # async fn run() -> Result<(), flowgate_lb::ConfigError> {
//! let lb = Balancer::new(BalancerConfig::new(Algorithm::RoundRobin))?;
//! let cfg = HealthCheckConfig {
//!     probe: Probe::Http { path: "/healthz".into(), host: None, expected: vec![200] },
//!     ..HealthCheckConfig::default()
//! };
//! tokio::spawn(HealthChecker::new(lb.clone(), cfg)?.run());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balancer::Balancer;
use crate::error::ConfigError;
use crate::http1::{self, HttpError};

/// What a probe returns: `Ok` when the backend is fine.
pub type ProbeResult = Result<(), HttpError>;

/// A boxed probe future.
pub type ProbeFuture = Pin<Box<dyn Future<Output = ProbeResult> + Send + 'static>>;

/// One way to probe a backend.
pub trait HealthCheck: Send + Sync + 'static {
    /// Probes `addr` once; the checker applies the timeout.
    fn check(&self, addr: SocketAddr) -> ProbeFuture;
}

/// Which built-in probe to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// `GET path`; healthy when the status is one of `expected`.
    Http {
        /// Request path, e.g. `/healthz`.
        path: String,
        /// `Host` header (default: the backend address).
        #[serde(default)]
        host: Option<String>,
        /// Healthy statuses (default 200).
        #[serde(default = "ok_statuses")]
        expected: Vec<u16>,
    },
}

fn ok_statuses() -> Vec<u16> {
    vec![200]
}

/// Active health-check settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The probe (default TCP connect).
    #[serde(default = "tcp")]
    pub probe: Probe,
    /// Time between rounds (default 5 s).
    #[serde(default = "interval", with = "crate::duration")]
    pub interval: Duration,
    /// Extra random delay per round, `0..jitter` (default 0).
    #[serde(default, with = "crate::duration")]
    pub jitter: Duration,
    /// One probe's time limit (default 1 s).
    #[serde(default = "timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive successes to come back (default 2).
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failures to go down (default 3).
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

fn tcp() -> Probe {
    Probe::Tcp
}
fn interval() -> Duration {
    Duration::from_secs(5)
}
fn timeout() -> Duration {
    Duration::from_secs(1)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            probe: tcp(),
            interval: interval(),
            jitter: Duration::ZERO,
            timeout: timeout(),
            healthy_threshold: two(),
            unhealthy_threshold: three(),
        }
    }
}

/// A TCP connect probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check(&self, addr: SocketAddr) -> ProbeFuture {
        Box::pin(async move {
            tokio::net::TcpStream::connect(addr).await?;
            Ok(())
        })
    }
}

/// An HTTP/1.1 `GET` probe that reads only the status line.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// Request path.
    pub path: String,
    /// `Host` header; the address when `None`.
    pub host: Option<String>,
    /// Healthy statuses.
    pub expected: Vec<u16>,
}

impl HealthCheck for HttpCheck {
    fn check(&self, addr: SocketAddr) -> ProbeFuture {
        let this = self.clone();
        Box::pin(async move {
            let host = this.host.clone().unwrap_or_else(|| addr.to_string());
            let io = tokio::net::TcpStream::connect(addr).await?;
            let body = http1::send(io, "GET", &host, &this.path, None).await?;
            if this.expected.contains(&body.status()) {
                Ok(())
            } else {
                Err(HttpError::Malformed("unexpected status"))
            }
        })
    }
}

/// Consecutive results of one backend, and the verdict they lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    healthy: bool,
    successes: u32,
    failures: u32,
}

impl Streak {
    /// A streak starting from `healthy`.
    pub fn new(healthy: bool) -> Self {
        Self {
            healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Adds one result; returns the new health when it flips.
    pub fn observe(
        &mut self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.healthy && self.successes >= healthy_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy && self.failures >= unhealthy_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Runs health-check rounds against a balancer's backends.
pub struct HealthChecker {
    balancer: Balancer,
    cfg: HealthCheckConfig,
    check: Arc<dyn HealthCheck>,
    streaks: HashMap<SocketAddr, Streak>,
}

impl HealthChecker {
    /// A checker running the built-in probe of `cfg`.
    pub fn new(balancer: Balancer, cfg: HealthCheckConfig) -> Result<Self, ConfigError> {
        let check: Arc<dyn HealthCheck> = match &cfg.probe {
            Probe::Tcp => Arc::new(TcpCheck),
            Probe::Http {
                path,
                host,
                expected,
            } => Arc::new(HttpCheck {
                path: path.clone(),
                host: host.clone(),
                expected: expected.clone(),
            }),
        };
        Self::with_check(balancer, cfg, check)
    }

    /// A checker running a custom probe.
    pub fn with_check(
        balancer: Balancer,
        cfg: HealthCheckConfig,
        check: Arc<dyn HealthCheck>,
    ) -> Result<Self, ConfigError> {
        for (field, d) in [
            ("health.interval", cfg.interval),
            ("health.timeout", cfg.timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be above zero"));
            }
        }
        Ok(Self {
            balancer,
            cfg,
            check,
            streaks: HashMap::new(),
        })
    }

    /// Probes every backend once and applies the verdicts.
    pub async fn round(&mut self) {
        let status = self.balancer.status();
        let mut probes = tokio::task::JoinSet::new();
        for s in &status {
            let addr = s.backend.addr;
            let fut = self.check.check(addr);
            let limit = self.cfg.timeout;
            probes.spawn(async move {
                let ok = matches!(tokio::time::timeout(limit, fut).await, Ok(Ok(())));
                (addr, ok)
            });
        }
        let known: HashMap<SocketAddr, bool> =
            status.iter().map(|s| (s.backend.addr, s.healthy)).collect();
        self.streaks.retain(|a, _| known.contains_key(a));
        while let Some(done) = probes.join_next().await {
            let Ok((addr, ok)) = done else { continue };
            let healthy = known.get(&addr).copied().unwrap_or(true);
            let streak = self
                .streaks
                .entry(addr)
                .or_insert_with(|| Streak::new(healthy));
            if let Some(now_healthy) =
                streak.observe(ok, self.cfg.healthy_threshold, self.cfg.unhealthy_threshold)
            {
                self.balancer.set_healthy(addr, now_healthy);
            }
        }
    }

    /// Runs rounds forever.
    pub async fn run(mut self) {
        loop {
            self.round().await;
            tokio::time::sleep(self.cfg.interval + jitter(self.cfg.jitter)).await;
        }
    }
}

/// A random delay in `0..max` (zero when `max` is).
pub(crate) fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(crate::random::next_u64() % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut s = Streak::new(true);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), None); // the streak resets
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), Some(false));
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), Some(true));
    }
}
