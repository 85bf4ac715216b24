//! xDS: the mesh compiled to standard Envoy resources ([`compile`]) and served over ADS
//! ([`server`]); the other end, a delta ADS client a sidecar follows its controller with
//! ([`client`]).

pub mod auth;
pub mod certify;
pub mod client;
pub mod compile;
pub mod server;
pub mod subset;

pub use compile::{Resources, grpc_resources, type_url};
pub use server::{
    AdsServer, NodePart, ProxyStatus, Shared, Snapshot, TypeStatus, serve, serve_tls,
};
