//! # Flowgate
//!
//! Reusable networking crates for proxies, load balancers and a service mesh, after the
//! Flomesh stack (Pipy, FSM/OSM, FLB), plus the thin binaries built from them.
//!
//! This facade re-exports every crate of the workspace, each behind the feature of the same
//! name, and holds the YAML [`config`] loader that the `flowgate` binary runs (and the
//! `gateway` compiler that `flowgate-gateway` runs):
//!
//! | path | crate | feature |
//! |---|---|---|
//! | [`pipeline`] | `flowgate-pipeline`: events, filters, joint filters, listeners, workers, hot reload | always |
//! | [`lb`] | `flowgate-lb`: balancers, health checks, outlier detection, discovery | always |
//! | [`vocabulary`] | `flowgate-config`: durations, sizes and the validation error every crate shares | always |
//! | `filters::net` | `flowgate-filters-net`: connect, TLS, PROXY protocol, tee/dump, throttle | `net` (default) |
//! | `filters::http`, `protocols::http` | `flowgate-filters-http` on `flowgate-http`: HTTP/1.1 and HTTP/2 servers and pools, routing, balancing | `http` (default; brings `net`) |
//! | `filters::dns`, `protocols::dns` | `flowgate-filters-dns` on `flowgate-dns` | `dns` (default) |
//! | `filters::mqtt`, `protocols::mqtt` | `flowgate-filters-mqtt` on `flowgate-mqtt` | `mqtt` (default) |
//! | `bgp` | `flowgate-bgp`: the BGP codec and speaker | `bgp` |
//! | `ebpf` | `flowgate-ebpf`: XDP and sockmap programs and loaders (needs clang to build) | `ebpf` |
//! | `mesh` | `flowgate-mesh`: mesh resources (Kubernetes core, SMI, MeshConfig, FSM plugins), validated state, sources | `mesh` |
//!
//! ```
//! let yaml = r#"
//! listeners:
//!   - listen: 127.0.0.1:0
//!     pipeline: proxy
//! pipelines:
//!   proxy:
//!     - connect: { endpoints: 127.0.0.1:9 }
//! "#;
//! let registry = std::sync::Arc::new(flowgate::config::default_registry());
//! let config = flowgate::config::parse(yaml, "inline.yaml", ".".as_ref(), &registry)?;
//! assert_eq!(config.listeners.len(), 1);
//! # Ok::<(), flowgate::config::ConfigFileError>(())
//! ```

pub mod admin;
pub mod cli;
pub mod config;
#[cfg(all(feature = "mesh", feature = "http"))]
pub mod demo;
#[cfg(feature = "http")]
pub mod gateway;
pub mod runner;
#[cfg(all(feature = "mesh", feature = "http"))]
pub mod sidecar;

pub use flowgate_config as vocabulary;
pub use flowgate_lb as lb;
pub use flowgate_pipeline as pipeline;

#[cfg(feature = "bgp")]
pub use flowgate_bgp as bgp;
#[cfg(feature = "ebpf")]
pub use flowgate_ebpf as ebpf;
#[cfg(feature = "mesh")]
pub use flowgate_mesh as mesh;

/// The filter families, one crate each, behind the features of the same names.
pub mod filters {
    #[cfg(feature = "dns")]
    pub use flowgate_filters_dns as dns;
    #[cfg(feature = "http")]
    pub use flowgate_filters_http as http;
    #[cfg(feature = "mqtt")]
    pub use flowgate_filters_mqtt as mqtt;
    #[cfg(feature = "net")]
    pub use flowgate_filters_net as net;
}

/// The sans-IO protocol crates the filter families are built on.
pub mod protocols {
    #[cfg(feature = "dns")]
    pub use flowgate_dns as dns;
    #[cfg(feature = "http")]
    pub use flowgate_http as http;
    #[cfg(feature = "mqtt")]
    pub use flowgate_mqtt as mqtt;
}
