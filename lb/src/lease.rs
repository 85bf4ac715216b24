//! [`Lease`]: the RAII handle a pick returns.
//!
//! A lease counts as one in-flight request on its backend from `pick` until it is dropped.
//! Before dropping it, say how the request went ([`Lease::record`]); the drop feeds the
//! outcome to passive outlier detection and, for peak-EWMA, the latency to the estimate.
//!
//! ```
//! use flowgate_lb::{Algorithm, Backend, Balancer, BalancerConfig, Outcome};
//! let lb = Balancer::new(BalancerConfig::new(Algorithm::LeastRequest))?;
//! lb.set_backends(vec![Backend::new("127.0.0.1:8080".parse().unwrap())]);
//! let mut lease = lb.pick(0).unwrap();
//! assert_eq!(lease.in_flight(), 1);
//! lease.record(Outcome::Status(200));
//! drop(lease); // in-flight back to 0, the 200 resets the failure counters
//! # Ok::<(), flowgate_lb::ConfigError>(())
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::backend::Backend;
use crate::endpoint::Endpoint;

/// How a request sent to a leased backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Outcome {
    /// Nothing recorded (cancelled, or the caller does not know): counts for nothing.
    #[default]
    Unknown,
    /// The request succeeded.
    Success,
    /// An HTTP (or mapped gRPC) status: 5xx counts as a failure, anything else as a success.
    Status(u16),
    /// The connection could not be established.
    ConnectFailure,
    /// The backend did not answer in time (counted like a connect failure).
    Timeout,
}

/// A backend chosen by [`Balancer::pick`](crate::Balancer::pick), held for one request.
///
/// Dropping it releases the in-flight count and records the outcome.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    started: Option<Instant>,
    outcome: Outcome,
}

impl Lease {
    #[inline]
    pub(crate) fn new(endpoint: Arc<Endpoint>, started: Option<Instant>) -> Self {
        Self {
            endpoint,
            started,
            outcome: Outcome::Unknown,
        }
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.backend.addr
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.endpoint.backend
    }

    /// Requests in flight on this backend, this one included.
    pub fn in_flight(&self) -> u32 {
        self.endpoint.in_flight()
    }

    /// Records how the request ended; the last call wins.
    pub fn record(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("addr", &self.addr())
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl Drop for Lease {
    #[inline]
    fn drop(&mut self) {
        let ep = &self.endpoint;
        if let Some(started) = self.started {
            let now = ep.shared.clock.now();
            ep.observe_rtt(now.saturating_duration_since(started), now);
        }
        let (is_5xx, is_connect) = match self.outcome {
            Outcome::Unknown => return,
            Outcome::Success => (false, false),
            Outcome::Status(s) => (s >= 500, false),
            Outcome::ConnectFailure | Outcome::Timeout => (true, true),
        };
        if !is_5xx {
            ep.reset_failures();
            return;
        }
        record_failure(ep, is_connect);
    }
}

#[cold]
fn record_failure(ep: &Arc<Endpoint>, is_connect: bool) {
    let shared = &ep.shared;
    let n5xx = ep.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
    let nconn = if is_connect {
        ep.consecutive_connect.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        ep.consecutive_connect.store(0, Ordering::Relaxed);
        0
    };
    let trip_5xx = shared.max_5xx != 0 && n5xx >= shared.max_5xx;
    let trip_conn = shared.max_connect_failures != 0 && nconn >= shared.max_connect_failures;
    if (trip_5xx || trip_conn)
        && let Some(core) = shared.core.upgrade()
    {
        core.eject(ep);
    }
}
