//! # flowgate-mesh
//!
//! The library a mesh control plane is built from: the resources a mesh is described with
//! (Kubernetes core kinds, SMI access, specs and split policy, an OSM-shaped `MeshConfig`,
//! FSM's plugin kinds) read from Kubernetes-style YAML, checked against each other into one
//! immutable [`MeshState`], and [`Source`]s that yield a new state on every change — or the
//! errors, each at its file and line, while the last good state stays in force.
//!
//! ```
//! use std::path::Path;
//! use flowgate_mesh::{MeshState, parse_manifests};
//!
//! let text = "\
//! apiVersion: v1
//! kind: ServiceAccount
//! metadata: { name: bookbuyer }
//! ---
//! apiVersion: access.smi-spec.io/v1alpha3
//! kind: TrafficTarget
//! metadata: { name: buyer-to-store }
//! spec:
//!   destination: { kind: ServiceAccount, name: bookstore }
//!   sources: [{ kind: ServiceAccount, name: bookbuyer }]
//! ";
//! let resources = parse_manifests(text, Path::new("policy.yaml")).unwrap();
//! // `bookstore` is not defined: the whole state is refused, at the TrafficTarget's line.
//! let errors = MeshState::build(resources).unwrap_err();
//! assert_eq!(errors[0].line, 5);
//! assert!(errors[0].message.contains("`default/bookstore` is not defined"));
//! ```
//!
//! The certificate authority ([`ca`]) issues SPIFFE leaves and signs CSRs; bootstrap
//! [`token`]s let a new workload prove its service account before it has a certificate.
//!
//! [`xds`] compiles the state to Envoy resources — for proxyless gRPC clients, and for
//! sidecars (inbound mTLS with SMI RBAC in strict mode, outbound by host, SDS secrets) —
//! serves them over ADS (state of the world and delta) and signs workloads' CSRs, on a TLS
//! port where callers prove their service account by mesh certificate or bootstrap token
//! and get only their own pods' secrets ([`xds::auth`]).
//!
//! Sources: a watched directory ([`DirSource`]), etcd v3 ([`EtcdSource`]) and, with the
//! `kube` feature, the Kubernetes API (`KubeSource`, tested on recorded objects only).
//! Controller replicas share the CA, the token key and the leaves through etcd
//! ([`replica`]).

#![forbid(unsafe_code)]

pub mod ca;
pub mod etcd;
#[cfg(feature = "kube")]
pub mod kubernetes;
pub mod load;
pub mod model;
pub mod replica;
pub mod source;
pub mod state;
pub mod token;
pub mod workload;
pub mod xds;

pub use etcd::EtcdSource;
#[cfg(feature = "kube")]
pub use kubernetes::KubeSource;
pub use load::{Located, ManifestError, Origin, Resource, parse_manifests};
pub use source::{DirSource, Source, Update, load_dir};
pub use state::MeshState;
