//! # Flowgate
//!
//! Reusable networking crates for proxies, load balancers and a service mesh, after the
//! Flomesh stack (Pipy, FSM/OSM, FLB), plus the thin binaries built from them.
//!
//! This facade re-exports the crates and holds the YAML [`config`] loader that the
//! `flowgate` binary runs (and the `gateway` compiler that `flowgate-gateway` runs):
//!
//! - [`pipeline`] — events, filters, joint filters, listeners, workers, hot reload.
//! - [`filters`] — the standard filter library (`net`: connect, TLS, PROXY protocol, …).
//!
//! ```
//! let yaml = r#"
//! listeners:
//!   - listen: 127.0.0.1:0
//!     pipeline: proxy
//! pipelines:
//!   proxy:
//!     - connect: { target: 127.0.0.1:9 }
//! "#;
//! let registry = std::sync::Arc::new(flowgate::config::default_registry());
//! let config = flowgate::config::parse(yaml, "inline.yaml", ".".as_ref(), &registry)?;
//! assert_eq!(config.listeners.len(), 1);
//! # Ok::<(), flowgate::config::ConfigFileError>(())
//! ```

pub mod cli;
pub mod config;
#[cfg(all(feature = "http", feature = "net"))]
pub mod gateway;
pub mod runner;

pub use flowgate_filters as filters;
pub use flowgate_pipeline as pipeline;
