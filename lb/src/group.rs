//! [`Group`]: one load-balanced set of endpoints with everything that keeps it current.
//!
//! A proxy filter that balances (`connect`, `balance-http`, `proxy-mqtt`, each service of
//! `dns-respond`) builds one `Group` from its configuration and picks through it. The group
//! owns:
//! - the [`Balancer`];
//! - its active health checks ([`HealthCheckConfig`]): a task started on the first pick
//!   made inside a tokio runtime (configurations are built before any runtime runs), with
//!   the configured jitter between rounds;
//! - the end of expired outlier ejections, at most once a second from picks
//!   ([`Refresher`]);
//! - an optional [`Discovery`] source, followed by a task started like the health checks;
//! - nothing else: its tasks are aborted when the last clone of the group is dropped, so a
//!   replaced configuration stops probing and watching at once.
//!
//! Keys for hash algorithms come from [`peer_key`] (the client's IP) or
//! [`hash_key`](crate::hash::hash_key) over whatever the protocol keys on.
//!
//! ```
//! use flowgate_lb::{Backend, BalancerConfig, Group};
//! use flowgate_lb::health::HealthCheckConfig;
//!
//! let group = Group::new(
//!     BalancerConfig::default(),
//!     vec![Backend::new("10.0.0.1:80".parse()?), Backend::new("10.0.0.2:80".parse()?)],
//! )?
//! .health_check(HealthCheckConfig::default())?;
//! // Outside a runtime nothing is started; picking works all the same.
//! let lease = group.pick(flowgate_lb::peer_key(None)).expect("two backends");
//! assert_eq!(lease.addr().port(), 80);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::discovery::Discovery;
use crate::health::{HealthCheck, HealthCheckConfig, HealthChecker};
use crate::{Backend, Balancer, BalancerConfig, ConfigError, Lease, Refresher};

/// Runs after every health-check round with the group's balancer (to copy verdicts to
/// balancers of its own, say).
pub type AfterRound = Arc<dyn Fn(&Balancer) + Send + Sync>;

/// A balancer over a set of endpoints, with its health checks, ejection expiry and
/// discovery: the tasks start on the first pick made inside a tokio runtime and are
/// aborted when the last clone is dropped. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

struct Inner {
    balancer: Balancer,
    refresher: Refresher,
    health: Option<HealthCheckConfig>,
    /// A probe of the caller's instead of the configured one.
    check: Option<Arc<dyn HealthCheck>>,
    after_round: Option<AfterRound>,
    discovery: Mutex<Option<(Box<dyn Discovery>, Duration)>>,
    started: AtomicBool,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}

impl Group {
    /// A group over `endpoints`, balanced as `balance` says. Errors name the field
    /// (`balance.…`).
    pub fn new(balance: BalancerConfig, endpoints: Vec<Backend>) -> Result<Self, ConfigError> {
        let balancer = Balancer::new(balance)
            .map_err(|e| ConfigError::new(format!("balance.{}", e.field), e.problem))?;
        balancer.set_backends(endpoints);
        Ok(Self::with_balancer(balancer))
    }

    /// A group around an existing balancer (with its own clock, say).
    pub fn with_balancer(balancer: Balancer) -> Self {
        Group {
            inner: Arc::new(Inner {
                balancer,
                refresher: Refresher::new(),
                health: None,
                check: None,
                after_round: None,
                discovery: Mutex::new(None),
                started: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Adds active health checks, run from the first pick made inside a runtime. Errors
    /// name the field (`health_check.…`). Call before the group is cloned or used.
    pub fn health_check(self, cfg: HealthCheckConfig) -> Result<Self, ConfigError> {
        HealthChecker::new(self.inner.balancer.clone(), cfg.clone())
            .map_err(|e| ConfigError::new(health_field(&e.field), e.problem))?;
        Ok(self.edit(|i| i.health = Some(cfg)))
    }

    /// Adds active health checks with a probe of the caller's (`cfg.probe` is ignored).
    pub fn health_check_with(
        self,
        cfg: HealthCheckConfig,
        check: Arc<dyn HealthCheck>,
    ) -> Result<Self, ConfigError> {
        HealthChecker::with_check(self.inner.balancer.clone(), cfg.clone(), check.clone())
            .map_err(|e| ConfigError::new(health_field(&e.field), e.problem))?;
        Ok(self.edit(|i| {
            i.health = Some(cfg);
            i.check = Some(check);
        }))
    }

    /// Runs `f` after every health-check round.
    pub fn after_health_round(self, f: impl Fn(&Balancer) + Send + Sync + 'static) -> Self {
        self.edit(|i| i.after_round = Some(Arc::new(f)))
    }

    /// Follows `source`: every set it yields replaces the endpoints (failures are logged
    /// and retried after `retry`). Started like the health checks.
    pub fn discovery(self, source: impl Discovery + 'static, retry: Duration) -> Self {
        self.edit(|i| {
            *i.discovery.get_mut().unwrap_or_else(|p| p.into_inner()) =
                Some((Box::new(source), retry));
        })
    }

    /// Applies `f` to the inner state while the group has no other owner, or to a copy
    /// (sharing the balancer) when it does.
    fn edit(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                balancer: shared.balancer.clone(),
                refresher: Refresher::new(),
                health: shared.health.clone(),
                check: shared.check.clone(),
                after_round: shared.after_round.clone(),
                discovery: Mutex::new(None),
                started: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            },
        };
        f(&mut inner);
        Group {
            inner: Arc::new(inner),
        }
    }

    /// The balancer: endpoint state, marking endpoints up and down, picking without the
    /// group's upkeep.
    pub fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }

    /// The balancer's configuration.
    pub fn config(&self) -> &BalancerConfig {
        self.inner.balancer.config()
    }

    /// The health-check settings, if any.
    pub fn health_config(&self) -> Option<&HealthCheckConfig> {
        self.inner.health.as_ref()
    }

    /// Picks an endpoint for `key` (see [`Balancer::pick`]) after the group's upkeep
    /// ([`maintain`](Self::maintain)).
    #[inline]
    pub fn pick(&self, key: u64) -> Option<Lease> {
        self.maintain();
        self.inner.balancer.pick(key)
    }

    /// The upkeep a pick does: ends expired ejections (at most once a second) and starts
    /// the health-check and discovery tasks the first time it runs inside a runtime.
    #[inline]
    pub fn maintain(&self) {
        self.inner.refresher.tick(&self.inner.balancer);
        if !self.inner.started.load(Ordering::Relaxed) {
            self.start();
        }
    }

    /// Starts the tasks on the current runtime, once; `false` outside a runtime (try again
    /// later) or when they already run.
    pub fn start(&self) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut tasks = Vec::new();
        if let Some(cfg) = self.inner.health.clone() {
            let balancer = self.inner.balancer.clone();
            let after = self.inner.after_round.clone();
            let check = self.inner.check.clone();
            tasks.push(
                rt.spawn(health_loop(balancer, cfg, check, after))
                    .abort_handle(),
            );
        }
        let discovery = self
            .inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((source, retry)) = discovery {
            let balancer = self.inner.balancer.clone();
            tasks.push(
                rt.spawn(crate::discovery::follow(source, balancer, retry))
                    .abort_handle(),
            );
        }
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        true
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("balancer", &self.inner.balancer)
            .field("health", &self.inner.health)
            .field("started", &self.inner.started.load(Ordering::Relaxed))
            .finish()
    }
}

fn health_field(field: &str) -> String {
    match field.strip_prefix("health.") {
        Some(rest) => format!("health_check.{rest}"),
        None => format!("health_check.{field}"),
    }
}

/// Health-check rounds forever, with `after` after each.
async fn health_loop(
    balancer: Balancer,
    cfg: HealthCheckConfig,
    check: Option<Arc<dyn HealthCheck>>,
    after: Option<AfterRound>,
) {
    let checker = match check {
        Some(c) => HealthChecker::with_check(balancer.clone(), cfg.clone(), c),
        None => HealthChecker::new(balancer.clone(), cfg.clone()),
    };
    let Ok(mut checker) = checker else {
        return;
    };
    loop {
        checker.round().await;
        if let Some(f) = &after {
            f(&balancer);
        }
        tokio::time::sleep(cfg.interval + crate::health::jitter(cfg.jitter)).await;
    }
}

/// The hash key of a client address: its IP (the port changes with every connection); 0
/// without one. The key every filter uses for "hash on the client".
pub fn peer_key(peer: Option<SocketAddr>) -> u64 {
    match peer.map(|p| p.ip()) {
        Some(IpAddr::V4(ip)) => crate::hash::hash_key(&ip.octets()),
        Some(IpAddr::V6(ip)) => crate::hash::hash_key(&ip.octets()),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Algorithm;
    use crate::health::ProbeFuture;

    /// A probe that always fails, without a socket.
    struct Fails;
    impl HealthCheck for Fails {
        fn check(&self, _: SocketAddr) -> ProbeFuture {
            Box::pin(async { Err(crate::http1::HttpError::Malformed("down")) })
        }
    }

    fn backends() -> Vec<Backend> {
        vec![
            Backend::new("127.0.0.1:1".parse().unwrap()),
            Backend::new("127.0.0.1:2".parse().unwrap()),
        ]
    }

    #[test]
    fn errors_name_the_group_fields() {
        let e = Group::new(
            BalancerConfig::new(Algorithm::Maglev { table_size: 4 }),
            backends(),
        )
        .unwrap_err();
        assert_eq!(e.field, "balance.algorithm.table_size");
        let bad = HealthCheckConfig {
            interval: Duration::ZERO,
            ..HealthCheckConfig::default()
        };
        let e = Group::new(BalancerConfig::default(), backends())
            .unwrap()
            .health_check(bad)
            .unwrap_err();
        assert_eq!(e.field, "health_check.interval");
    }

    #[test]
    fn peer_keys_ignore_the_port() {
        let a = peer_key(Some("10.0.0.1:1000".parse().unwrap()));
        let b = peer_key(Some("10.0.0.1:2000".parse().unwrap()));
        let c = peer_key(Some("10.0.0.2:1000".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(peer_key(None), 0);
        assert_eq!(a, crate::hash::hash_key(&[10, 0, 0, 1]));
    }

    #[test]
    fn nothing_starts_outside_a_runtime() {
        let g = Group::new(BalancerConfig::default(), backends())
            .unwrap()
            .health_check(HealthCheckConfig::default())
            .unwrap();
        assert!(g.pick(0).is_some());
        assert!(!g.start());
        assert!(g.inner.tasks.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn health_checks_start_on_the_first_pick_and_stop_with_the_group() {
        let cfg = HealthCheckConfig {
            interval: Duration::from_millis(100),
            unhealthy_threshold: 1,
            ..HealthCheckConfig::default()
        };
        let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = rounds.clone();
        let g = Group::new(BalancerConfig::default(), backends())
            .unwrap()
            .health_check_with(cfg, Arc::new(Fails))
            .unwrap()
            .after_health_round(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            });
        assert!(g.pick(0).is_some());
        assert!(!g.start(), "the pick started the tasks");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let down = |g: &Group| g.balancer().status().iter().all(|s| !s.healthy);
        while !down(&g) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(down(&g), "both marked down");
        let task = g.inner.tasks.lock().unwrap()[0].clone();
        assert!(!task.is_finished());
        drop(g);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            task.is_finished(),
            "dropping the group stops its health checks"
        );
        let seen = rounds.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rounds.load(Ordering::Relaxed), seen);
    }
}
