//! # flowgate-filters
//!
//! The standard filter library of Flowgate: small filters, one module each, that you put in
//! a [`flowgate_pipeline::Pipeline`]. Each filter has a typed `XxxConfig` (used by YAML
//! configurations through the [`registry`]) and a Rust builder API.
//!
//! Families are behind features: `net` (on by default) has [`net::Connect`],
//! [`net::tls::AcceptTls`] / [`net::tls::ConnectTls`], [`net::proxy_protocol`],
//! [`net::Tee`] / [`net::Dump`] and [`net::Throttle`].
//!
//! ```no_run
//! use flowgate_filters::net::Connect;
//! use flowgate_pipeline::{Pipeline, server::{ListenerConfig, Server}};
//! use std::sync::Arc;
//!
//! // A TCP proxy: everything that arrives goes to one of three upstreams, round robin.
//! let proxy = Pipeline::builder("proxy")
//!     .filter(Connect::round_robin(["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]))
//!     .build()?;
//! let server = Server::builder().workers(2).start()?;
//! server.apply(vec![(ListenerConfig::tcp("127.0.0.1:8000".parse()?), Arc::new(proxy))])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "net")]
pub mod net;
pub mod registry;
