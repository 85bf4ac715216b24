//! TLS filters: [`AcceptTls`] terminates TLS from a client, [`ConnectTls`] originates TLS to
//! an upstream.
//!
//! Both are joint filters that run [rustls] sans-IO: the TLS session never touches a socket,
//! it only turns byte events into other byte events, so the filters compose with anything
//! (PROXY protocol in front, a `Dump` between, TLS inside TLS) and are tested without a
//! network.
//!
//! ```text
//!  AcceptTls   input ──ciphertext──► rustls server ──plaintext──► sub-pipeline
//!              output ◄─ciphertext── rustls server ◄─plaintext──────┘
//!
//!  ConnectTls  input ──plaintext───► rustls client ──ciphertext─► sub-pipeline ([connect])
//!              output ◄─plaintext─── rustls client ◄─ciphertext─────┘
//! ```
//!
//! `AcceptTls` starts its sub-pipeline only when the handshake is done, after it has written
//! the session's facts (SNI, ALPN, TLS version, client identity) into the stream's
//! [`Context`](flowgate_pipeline::Context), so the filters of the sub-pipeline can route by
//! them. Back-pressure crosses both filters: input is read only while the sub-pipeline's
//! queue holds fewer than `max_feed` events. A failed handshake sends the alert rustls
//! produced and ends the stream with an [`ErrorKind::Tls`](flowgate_pipeline::ErrorKind)
//! error, blaming the peer's [`Side`](flowgate_pipeline::Side).
//!
//! Only the *ring* crypto provider is used. In YAML:
//!
//! ```yaml
//! - accept-tls:
//!     pipeline: inner
//!     certificates:
//!       - {cert: a.pem, key: a.key, sni: [a.example.com]}   # the first one is the default
//!       - {cert: b.pem, key: b.key, sni: ["*.b.example.com"]}
//!     alpn: [h2, http/1.1]
//!     client_auth: {ca: clients-ca.pem, required: true}
//! ```
//!
//! And from Rust, a client for one upstream:
//!
//! ```
//! use std::sync::Arc;
//! use flowgate_filters_net::{Connect, tls::ConnectTls};
//! use flowgate_pipeline::{Module, Pipeline, SubPipeline};
//!
//! let provider = Arc::new(rustls::crypto::ring::default_provider());
//! let roots = rustls::RootCertStore::empty(); // add the upstream's CA here
//! let client = rustls::ClientConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_root_certificates(roots)
//!     .with_no_client_auth();
//! let tls = ConnectTls::new(Arc::new(client), "api.example.com".try_into()?, SubPipeline::named("up"));
//! let module = Module::builder()
//!     .pipeline(Pipeline::builder("main").filter(tls))
//!     .pipeline(Pipeline::builder("up").filter(Connect::to("api.example.com:443")))
//!     .build()?;
//! assert!(module.get("main").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod accept;
mod certs;
mod config;
mod connect;
mod identity;
mod pinned;
mod session;
mod suites;

pub use accept::AcceptTls;
pub use config::default_handshake_timeout;
pub use config::{
    AcceptTlsConfig, CertificateConfig, ClientAuthConfig, ClientCertConfig, ConnectTlsConfig,
    TlsVersion,
};
pub use connect::ConnectTls;
pub use session::TlsError;

use flowgate_pipeline::registry::Registry;

/// How many events may wait for the sub-pipeline before a TLS filter stops reading input.
pub const DEFAULT_MAX_FEED: usize = 64;

/// Registers `accept-tls` and `connect-tls`.
pub fn register(r: &mut Registry) {
    r.register::<AcceptTlsConfig>("accept-tls");
    r.register::<ConnectTlsConfig>("connect-tls");
}
