//! The writer side of a balancer: every known backend with its health and ejection state,
//! and the rebuild that turns them into a read-only [`Table`].
//!
//! ```text
//!  set_backends ─┐                         ┌─> Table { endpoints, weights, picker }
//!  set_healthy  ─┼─> Registry (mutex) ─────┤      published by one ArcSwap store;
//!  eject        ─┤   rebuild(): eligible?  │      pick() only loads it
//!  refresh      ─┘   × slow start × locality
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::algorithm::Picker;
use crate::backend::Backend;
use crate::config::BalancerConfig;
use crate::endpoint::{Endpoint, Held, Shared};
use crate::locality::PRIORITIES;

/// What `pick` reads: the eligible endpoints, their effective weights, the built table.
pub(crate) struct Table {
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) weights: Vec<u32>,
    pub(crate) picker: Option<Picker>,
    pub(crate) by_addr: HashMap<SocketAddr, usize>,
    pub(crate) track_latency: bool,
}

impl Table {
    pub(crate) fn empty() -> Self {
        Self {
            endpoints: Vec::new(),
            weights: Vec::new(),
            picker: None,
            by_addr: HashMap::new(),
            track_latency: false,
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        for ep in &self.endpoints {
            ep.holders
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub(crate) struct Entry {
    pub(crate) ep: Held,
    /// Set by active health checks.
    pub(crate) healthy: bool,
    /// Slow start began here (joined, or came back).
    pub(crate) warm_since: Option<Instant>,
    pub(crate) ejected_until: Option<Instant>,
    pub(crate) ejections: u32,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) entries: Vec<Entry>,
    /// The first backend set was applied (later joiners slow-start).
    pub(crate) started: bool,
}

impl Registry {
    /// Replaces the backend set, keeping the state of addresses that stay.
    pub(crate) fn update(
        &mut self,
        backends: Vec<Backend>,
        shared: &Arc<Shared>,
        cfg: &BalancerConfig,
        now: Instant,
    ) {
        let mut old: HashMap<SocketAddr, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.ep.backend.addr, e))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for b in backends {
            if !seen.insert(b.addr) {
                continue;
            }
            let entry = match old.remove(&b.addr) {
                Some(e) if e.ep.backend == b => e,
                Some(e) => Entry {
                    ep: Held::new(Arc::new(Endpoint::new(b, shared.clone()))),
                    ..e
                },
                None => Entry {
                    ep: Held::new(Arc::new(Endpoint::new(b, shared.clone()))),
                    healthy: true,
                    warm_since: (self.started && cfg.slow_start.is_some()).then_some(now),
                    ejected_until: None,
                    ejections: 0,
                },
            };
            self.entries.push(entry);
        }
        self.started = true;
    }

    /// Ends ejections and warm-ups that are over; true if weights may have changed.
    pub(crate) fn expire(&mut self, cfg: &BalancerConfig, now: Instant) -> bool {
        let mut changed = false;
        for e in &mut self.entries {
            if e.ejected_until.is_some_and(|t| t <= now) {
                e.ejected_until = None;
                e.ep.reset_failures();
                changed = true;
            }
            if let (Some(since), Some(ss)) = (e.warm_since, &cfg.slow_start) {
                changed = true;
                if now.saturating_duration_since(since) >= ss.window {
                    e.warm_since = None;
                }
            }
        }
        changed
    }

    pub(crate) fn eligible(e: &Entry, now: Instant) -> bool {
        e.healthy && e.ep.backend.weight > 0 && e.ejected_until.is_none_or(|t| t <= now)
    }

    /// Builds the table readers will use.
    pub(crate) fn build(&self, cfg: &BalancerConfig, now: Instant) -> Table {
        let mut chosen: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| Self::eligible(e, now))
            .collect();
        if chosen.is_empty() {
            // Panic mode: with nothing eligible, failing open beats refusing everything.
            chosen = self
                .entries
                .iter()
                .filter(|e| e.ep.backend.weight > 0)
                .collect();
        }
        let mut weights: Vec<f64> = chosen
            .iter()
            .map(|e| {
                let slow = match (e.warm_since, &cfg.slow_start) {
                    (Some(since), Some(ss)) => ss.factor(now.saturating_duration_since(since)),
                    _ => 1.0,
                };
                f64::from(e.ep.backend.weight) * slow
            })
            .collect();
        let mut scaled = weights
            .iter()
            .zip(&chosen)
            .any(|(w, e)| (*w - f64::from(e.ep.backend.weight)).abs() > f64::EPSILON);
        if let Some(loc) = &cfg.locality {
            scaled = true;
            let prio: Vec<usize> = chosen
                .iter()
                .map(|e| loc.priority(&e.ep.backend.metadata))
                .collect();
            let mut counts = [(0usize, 0usize); PRIORITIES];
            for e in self.entries.iter().filter(|e| e.ep.backend.weight > 0) {
                let p = loc.priority(&e.ep.backend.metadata);
                counts[p].1 += 1;
                if Self::eligible(e, now) {
                    counts[p].0 += 1;
                }
            }
            let loads = loc.priority_loads(&counts);
            let mut sums = [0f64; PRIORITIES];
            for (w, &p) in weights.iter().zip(&prio) {
                sums[p] += w;
            }
            for (w, &p) in weights.iter_mut().zip(&prio) {
                *w = if sums[p] > 0.0 {
                    *w / sums[p] * loads[p]
                } else {
                    0.0
                };
            }
        }
        let ints: Vec<u32> = if scaled {
            let max = weights.iter().copied().fold(0.0, f64::max);
            weights
                .iter()
                .map(|&w| {
                    if w <= 0.0 || max <= 0.0 {
                        0
                    } else {
                        ((w / max * 10_000.0).round() as u32).max(1)
                    }
                })
                .collect()
        } else {
            chosen.iter().map(|e| e.ep.backend.weight).collect()
        };
        let mut endpoints = Vec::with_capacity(chosen.len());
        let mut final_weights = Vec::with_capacity(chosen.len());
        for (e, w) in chosen.iter().zip(ints) {
            if w > 0 {
                e.ep.holders
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                endpoints.push(Arc::clone(&e.ep));
                final_weights.push(w);
            }
        }
        let picker = (!endpoints.is_empty())
            .then(|| Picker::build(&cfg.algorithm, &endpoints, &final_weights));
        let by_addr = if cfg.sticky.is_some() {
            endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.backend.addr, i))
                .collect()
        } else {
            HashMap::new()
        };
        Table {
            endpoints,
            weights: final_weights,
            picker,
            by_addr,
            track_latency: cfg.algorithm.tracks_latency(),
        }
    }
}
