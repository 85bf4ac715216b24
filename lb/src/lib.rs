//! # flowgate-lb
//!
//! Load balancing for Flowgate proxies: pick a backend per request, hold it with an RAII
//! [`Lease`], and let health checks, outlier detection and discovery keep the backend set
//! true.
//!
//! ```
//! use flowgate_lb::{Algorithm, Backend, Balancer, BalancerConfig, OutlierConfig, Outcome};
//!
//! let mut cfg = BalancerConfig::new(Algorithm::LeastRequest);
//! cfg.outlier = Some(OutlierConfig { consecutive_5xx: 2, ..OutlierConfig::default() });
//! let lb = Balancer::new(cfg)?;
//! lb.set_backends(vec![
//!     Backend::new("10.0.0.1:80".parse().unwrap()),
//!     Backend::new("10.0.0.2:80".parse().unwrap()).weight(2),
//! ]);
//!
//! // One request: pick, use, say how it went, drop.
//! let mut lease = lb.pick(0).expect("two backends");
//! let _connect_to = lease.addr();
//! lease.record(Outcome::Status(200));
//! drop(lease);
//! assert_eq!(lb.eligible().len(), 2);
//! # Ok::<(), flowgate_lb::ConfigError>(())
//! ```
//!
//! ## Map
//! - [`Balancer`], [`Lease`], [`Backend`]: the core; tables behind an `ArcSwap`, readers never lock.
//! - [`algorithm`]: round robin, smooth WRR, random, least request (P2C), peak-EWMA, ring hash
//!   (ketama), Maglev; sticky sessions and [`locality`] weighting apply to all of them.
//! - [`slow_start`], [`outlier`]: weights that follow a backend's age and its failures.
//! - [`circuit_breaker`], [`retry_budget`]: limits a proxy checks before sending.
//! - [`health`]: active TCP / HTTP checks that mark backends up and down.
//! - [`discovery`]: static lists, watched files, DNS, etcd.
//! - [`Group`]: a balancer with its health-check and discovery tasks and ejection expiry, the
//!   one thing a proxy filter builds; [`peer_key`] hashes a client address.

#![forbid(unsafe_code)]

pub mod algorithm;
mod backend;
mod balancer;
pub mod circuit_breaker;
mod clock;
mod config;
pub mod discovery;
mod group;
/// Durations in configurations (`flowgate_config::duration`, re-exported).
pub use flowgate_config::duration;
mod endpoint;
mod error;
pub mod hash;
pub mod health;
mod http1;
mod lease;
pub mod locality;
pub mod outlier;
mod random;
mod refresher;
mod registry;
pub mod retry_budget;
mod sliding;
pub mod slow_start;

pub use algorithm::{Algorithm, StickyConfig};
pub use backend::{Backend, Metadata};
pub use balancer::{Balancer, EndpointStatus};
pub use circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use config::BalancerConfig;
pub use discovery::Discovery;
pub use error::ConfigError;
pub use group::{AfterRound, Group, peer_key};
pub use lease::{Lease, Outcome};
pub use locality::LocalityConfig;
pub use outlier::OutlierConfig;
pub use refresher::Refresher;
pub use retry_budget::{RetryBudget, RetryBudgetConfig};
pub use slow_start::SlowStartConfig;
