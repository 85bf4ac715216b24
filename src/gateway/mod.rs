//! Gateway files: listeners, TLS certificates per SNI, routes and backend groups with a
//! load-balancing policy, compiled into the same pipelines a hand-written
//! [`config`](crate::config) file would hold. The `flowgate-gateway` binary runs them.
//!
//! ```yaml
//! listeners:
//!   - name: web
//!     address: 127.0.0.1:8080
//!   - name: secure
//!     address: 127.0.0.1:8443
//!     tls:
//!       certificates:
//!         - { cert: a.pem, key: a.key, sni: [a.example.com] }
//!         - { cert: b.pem, key: b.key, sni: ["*.b.example.com"] }
//! routes:
//!   - name: api
//!     match: { host: api.example.com, path_prefix: /v1/ }
//!     proxy: { backend: api, rewrite: { from: /v1/, to: / } }
//!   - match: { path: /old }
//!     redirect: { status: 308, path_prefix: { from: /old, to: /new } }
//!   - match: { path: /health }
//!     respond: { status: 200, body: "ok\n" }
//! backends:
//!   - name: api
//!     endpoints: [10.0.0.1:8080, { address: 10.0.0.2:8080, weight: 2 }]
//!     balance: weighted_round_robin
//!     health_check: { probe: { type: http, path: /health }, interval: 2s }
//! ```
//!
//! Requests are balanced per request (not per connection) by `balance-http` with
//! flowgate-lb, over keep-alive connections pooled per endpoint; see [`compile`] for the
//! pipelines each part becomes (`flowgate-gateway check FILE` prints them). Every error
//! names the file, the line and the field:
//! `gw.yaml:14:5: routes[0] (api): field `proxy.backend`: backend `apii` is not defined under `backends``.
//!
//! ```
//! let yaml = r#"
//! listeners: [{ address: "127.0.0.1:0" }]
//! routes: [{ match: { path_prefix: / }, proxy: { backend: app } }]
//! backends: [{ name: app, endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"], balance: least_request }]
//! "#;
//! let config = flowgate::gateway::parse(yaml, "inline.yaml", ".".as_ref())?;
//! assert_eq!(config.listeners.len(), 1);
//! assert!(config.module.get("backend:app").is_some());
//! # Ok::<(), flowgate::config::ConfigFileError>(())
//! ```

pub mod compile;
pub mod schema;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigFileError, yaml_error};
use schema::GatewayFile;

/// Loads, validates and compiles the gateway file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
        file: file.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&text, &file, &dir)
}

/// Parses, validates and compiles gateway text; `file` names it in errors and `base_dir`
/// anchors relative certificate paths.
pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigFileError> {
    let raw: GatewayFile = serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, file))?;
    compile::compile(raw, file, base_dir)
}
