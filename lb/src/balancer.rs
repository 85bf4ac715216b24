//! [`Balancer`]: picks a backend per request and hands out [`Lease`]s.
//!
//! Readers ([`Balancer::pick`]) load the current table from an `ArcSwap` and never lock;
//! writers (backend updates, health changes, ejections, [`Balancer::refresh`]) serialise
//! on a mutex, rebuild the table and publish it with one store. Picks in progress keep
//! the table they loaded; leases keep their endpoint alive after it leaves the set.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::algorithm::Algorithm;
use crate::algorithm::sticky::Sticky;
use crate::backend::Backend;
use crate::clock::{Clock, SystemClock};
use crate::config::BalancerConfig;
use crate::endpoint::{Eject, Endpoint, Shared};
use crate::error::ConfigError;
use crate::lease::Lease;
use crate::registry::{Registry, Table};

/// The state of one known backend, for inspection and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    /// The backend.
    pub backend: Backend,
    /// Its weight in the current table; 0 when it is not in it.
    pub effective_weight: u32,
    /// Its active health.
    pub healthy: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Requests in flight.
    pub in_flight: u32,
}

pub(crate) struct Core {
    table: ArcSwap<Table>,
    registry: Mutex<Registry>,
    config: BalancerConfig,
    shared: Arc<Shared>,
    sticky: Option<Sticky>,
}

/// A load balancer over a changing set of backends. Cheap to clone (one `Arc`).
///
/// ```
/// use flowgate_lb::{Algorithm, Backend, Balancer, BalancerConfig, hash::hash_key};
/// let lb = Balancer::new(BalancerConfig::new(Algorithm::maglev()))?;
/// lb.set_backends((1..=3).map(|i| Backend::new(format!("10.0.0.{i}:80").parse().unwrap())).collect());
/// let a = lb.pick(hash_key(b"session-7")).unwrap().addr();
/// let b = lb.pick(hash_key(b"session-7")).unwrap().addr();
/// assert_eq!(a, b);
/// # Ok::<(), flowgate_lb::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Balancer {
    core: Arc<Core>,
}

// === impl Balancer ===

impl Balancer {
    /// A balancer with no backends, on the system clock.
    pub fn new(config: BalancerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A balancer reading time from `clock`.
    pub fn with_clock(config: BalancerConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        config.validate()?;
        let decay = match config.algorithm {
            Algorithm::PeakEwma { decay, .. } => decay,
            _ => Duration::from_secs(10),
        };
        let (max_5xx, max_connect) = config.outlier.as_ref().map_or((0, 0), |o| {
            (o.consecutive_5xx, o.consecutive_connect_failures)
        });
        let epoch = clock.now();
        let core = Arc::new_cyclic(|weak: &std::sync::Weak<Core>| Core {
            table: ArcSwap::from_pointee(Table::empty()),
            registry: Mutex::new(Registry::default()),
            sticky: config.sticky.as_ref().map(Sticky::new),
            shared: Arc::new(Shared {
                clock,
                epoch,
                max_5xx,
                max_connect_failures: max_connect,
                decay_nanos: decay.as_nanos().max(1) as f64,
                core: weak.clone() as std::sync::Weak<dyn Eject>,
            }),
            config,
        });
        Ok(Self { core })
    }

    /// Picks a backend for a request with key hash `key` (see [`crate::hash`]); `None` when
    /// there is no backend. Algorithms that do not hash ignore the key.
    #[inline]
    pub fn pick(&self, key: u64) -> Option<Lease> {
        let table = self.core.table.load();
        let picker = table.picker.as_ref()?;
        let i = match &self.core.sticky {
            None => picker.pick(key, &table.endpoints),
            Some(sticky) => self.sticky_pick(sticky, &table, key),
        };
        let ep = table.endpoints.get(i)?.clone();
        let started = table.track_latency.then(|| self.core.shared.clock.now());
        Some(Lease::new(ep, started))
    }

    fn sticky_pick(&self, sticky: &Sticky, table: &Table, key: u64) -> usize {
        let now = self.core.shared.clock.now();
        if let Some(i) = sticky.get(key, now).and_then(|a| table.by_addr.get(&a)) {
            return *i;
        }
        let i = table
            .picker
            .as_ref()
            .map_or(0, |p| p.pick(key, &table.endpoints));
        if let Some(ep) = table.endpoints.get(i) {
            sticky.put(key, ep.backend.addr, now);
        }
        i
    }

    /// Replaces the backend set. Addresses that stay keep their state; new ones slow-start
    /// (after the first set) when slow start is on.
    pub fn set_backends(&self, backends: Vec<Backend>) {
        let now = self.core.shared.clock.now();
        let mut reg = self.core.lock();
        reg.update(backends, &self.core.shared, &self.core.config, now);
        self.core.publish(&reg);
    }

    /// The known backends, eligible or not.
    pub fn backends(&self) -> Vec<Backend> {
        let reg = self.core.lock();
        reg.entries.iter().map(|e| e.ep.backend.clone()).collect()
    }

    /// The state of every known backend.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = self.core.shared.clock.now();
        let table = self.core.table.load();
        let reg = self.core.lock();
        reg.entries
            .iter()
            .map(|e| EndpointStatus {
                backend: e.ep.backend.clone(),
                effective_weight: table
                    .endpoints
                    .iter()
                    .position(|t| Arc::ptr_eq(t, &e.ep))
                    .and_then(|i| table.weights.get(i).copied())
                    .unwrap_or(0),
                healthy: e.healthy,
                ejected: e.ejected_until.is_some_and(|t| t > now),
                in_flight: e.ep.in_flight(),
            })
            .collect()
    }

    /// The addresses in the current table (eligible and picked from).
    pub fn eligible(&self) -> Vec<SocketAddr> {
        let table = self.core.table.load();
        table.endpoints.iter().map(|e| e.backend.addr).collect()
    }

    /// Marks a backend healthy or not (active health checks call this). Returns whether
    /// its state changed.
    pub fn set_healthy(&self, addr: SocketAddr, healthy: bool) -> bool {
        let now = self.core.shared.clock.now();
        let mut reg = self.core.lock();
        let slow = self.core.config.slow_start.is_some();
        let Some(e) = reg.entries.iter_mut().find(|e| e.ep.backend.addr == addr) else {
            return false;
        };
        if e.healthy == healthy {
            return false;
        }
        e.healthy = healthy;
        if healthy && slow {
            e.warm_since = Some(now);
        }
        tracing::info!(%addr, healthy, "backend health changed");
        self.core.publish(&reg);
        true
    }

    /// Ends ejections whose time is up and advances slow start; rebuilds when needed.
    pub fn refresh(&self) {
        let now = self.core.shared.clock.now();
        let mut reg = self.core.lock();
        if reg.expire(&self.core.config, now) {
            self.core.publish(&reg);
        }
    }

    /// Calls [`refresh`](Self::refresh) every `every`, forever; spawn it on a runtime.
    pub async fn maintain(self, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh();
        }
    }

    /// Sticky pins held (0 without sticky sessions).
    pub fn sticky_entries(&self) -> usize {
        self.core.sticky.as_ref().map_or(0, Sticky::len)
    }

    /// The configuration.
    pub fn config(&self) -> &BalancerConfig {
        &self.core.config
    }
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("algorithm", &self.core.config.algorithm)
            .field("eligible", &self.core.table.load().endpoints.len())
            .finish()
    }
}

// === impl Core ===

impl Eject for Core {
    fn eject(&self, ep: &Arc<Endpoint>) {
        Core::eject(self, ep);
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent between statements, so a poisoned lock is usable.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, reg: &Registry) {
        let now = self.shared.clock.now();
        self.table.store(Arc::new(reg.build(&self.config, now)));
    }

    /// Outlier detection tripped on `ep`: eject it if the budget allows.
    pub(crate) fn eject(&self, ep: &Arc<Endpoint>) {
        let Some(cfg) = &self.config.outlier else {
            return;
        };
        let now = self.shared.clock.now();
        let mut reg = self.lock();
        let total = reg.entries.len();
        let ejected = reg
            .entries
            .iter()
            .filter(|e| e.ejected_until.is_some_and(|t| t > now))
            .count();
        ep.reset_failures();
        let Some(e) = reg.entries.iter_mut().find(|e| Arc::ptr_eq(&e.ep, ep)) else {
            return;
        };
        if e.ejected_until.is_some_and(|t| t > now) || ejected >= cfg.max_ejected(total) {
            return;
        }
        e.ejections += 1;
        let time = cfg.ejection_time(e.ejections);
        e.ejected_until = Some(now + time);
        tracing::warn!(addr = %ep.backend.addr, ?time, "outlier ejected");
        self.publish(&reg);
    }
}
