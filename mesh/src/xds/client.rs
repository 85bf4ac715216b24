//! A delta ADS client: how a sidecar follows its controller. It subscribes to every
//! listener and cluster, then by name to what they refer to — the endpoints of EDS
//! clusters, the route configurations of RDS connection managers, the SDS secrets of TLS
//! contexts — and hands on a complete configuration ([`Received`]) each time one is
//! complete (nothing referred to is missing: Envoy's warming).
//!
//! Every response is checked by the caller before it is taken (the sidecar's compiler):
//! one that does not pass is NACKed with the reason, and the resources held before stay —
//! nothing is half applied. A client restarted with what it held (saved to disk by the
//! sidecar) names it in `initial_resource_versions`, so the controller resends nothing
//! unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::type_url;

/// Every resource held, by type URL and name, with its version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    /// `type URL → name → (version, resource)`.
    pub resources: BTreeMap<String, BTreeMap<String, (String, Any)>>,
}

impl Received {
    /// The resources of type `t`, by name.
    pub fn of(&self, t: &str) -> impl Iterator<Item = (&String, &Any)> + '_ {
        self.resources
            .get(t)
            .into_iter()
            .flatten()
            .map(|(name, (_, any))| (name, any))
    }

    /// What the listeners and clusters held refer to, by type URL: EDS clusters'
    /// endpoints, RDS route configurations and SDS secrets.
    pub fn references(&self) -> BTreeMap<&'static str, BTreeSet<String>> {
        let mut refs: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for (name, any) in self.of(type_url::CLUSTER) {
            let Ok(c) = Cluster::decode(any.value.as_slice()) else {
                continue;
            };
            if c.cluster_discovery_type
                == Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Eds as i32,
                ))
            {
                refs.entry(type_url::ENDPOINT)
                    .or_default()
                    .insert(eds_service(&c, name));
            }
            if let Some(ts) = c.transport_socket.as_ref().and_then(typed)
                && let Ok(tls) = UpstreamTlsContext::decode(ts.value.as_slice())
            {
                secrets_of(tls.common_tls_context.as_ref(), &mut refs);
            }
        }
        for (_, any) in self.of(type_url::LISTENER) {
            let Ok(l) = Listener::decode(any.value.as_slice()) else {
                continue;
            };
            for chain in l.filter_chains.iter().chain(&l.default_filter_chain) {
                if let Some(ts) = chain.transport_socket.as_ref().and_then(typed)
                    && let Ok(tls) = DownstreamTlsContext::decode(ts.value.as_slice())
                {
                    secrets_of(tls.common_tls_context.as_ref(), &mut refs);
                }
                for f in &chain.filters {
                    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                        continue;
                    };
                    if !any.type_url.ends_with("HttpConnectionManager") {
                        continue;
                    }
                    if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                        && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                            hcm.route_specifier
                    {
                        refs.entry(type_url::ROUTE)
                            .or_default()
                            .insert(rds.route_config_name);
                    }
                }
            }
        }
        refs
    }

    /// What is referred to but not held yet (while any is, the configuration is warming).
    pub fn missing(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (t, names) in self.references() {
            let held = self.resources.get(t);
            for n in names {
                if !held.is_some_and(|h| h.contains_key(&n)) {
                    out.push((t, n));
                }
            }
        }
        out
    }

    /// `name → version` of type `t` (for `initial_resource_versions`).
    pub fn versions(&self, t: &str) -> std::collections::HashMap<String, String> {
        self.resources
            .get(t)
            .into_iter()
            .flatten()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    }

    /// This configuration with `resp` applied.
    fn with(&self, resp: &DeltaDiscoveryResponse) -> Received {
        let mut next = self.clone();
        let held = next.resources.entry(resp.type_url.clone()).or_default();
        for name in &resp.removed_resources {
            held.remove(name);
        }
        for r in &resp.resources {
            if let Some(any) = &r.resource {
                held.insert(r.name.clone(), (r.version.clone(), any.clone()));
            }
        }
        next
    }
}

/// The name of the endpoints an EDS cluster asks for: its `service_name`, else its own.
pub(crate) fn eds_service(c: &Cluster, name: &str) -> String {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.to_string())
}

impl From<&super::Resources> for Received {
    /// The resources a controller compiled, as a client would hold them.
    fn from(r: &super::Resources) -> Received {
        let mut out = Received::default();
        for (t, by_name) in &r.by_type {
            let held = out.resources.entry(t.clone()).or_default();
            for (name, any) in by_name {
                let version = r
                    .versions
                    .get(t)
                    .and_then(|v| v.get(name))
                    .cloned()
                    .unwrap_or_default();
                held.insert(name.clone(), (version, any.clone()));
            }
        }
        out
    }
}

fn typed(ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket) -> Option<&Any> {
    match &ts.config_type {
        Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) => Some(any),
        None => None,
    }
}

fn secrets_of(tls: Option<&CommonTlsContext>, refs: &mut BTreeMap<&'static str, BTreeSet<String>>) {
    let Some(tls) = tls else { return };
    let secrets = refs.entry(type_url::SECRET).or_default();
    for s in &tls.tls_certificate_sds_secret_configs {
        secrets.insert(s.name.clone());
    }
    match &tls.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            secrets.insert(s.name.clone());
        }
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            if let Some(s) = &c.validation_context_sds_secret_config {
                secrets.insert(s.name.clone());
            }
        }
        _ => {}
    }
}

/// Who the client is.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The node id (`<pod>.<namespace>` for a pod's sidecar).
    pub node: String,
    /// A bootstrap token sent as `authorization: Bearer …` (not needed on a channel that
    /// presents a mesh certificate).
    pub token: Option<String>,
}

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The stream failed or the controller refused it.
    #[error("ADS: {0}")]
    Stream(#[from] tonic::Status),
    /// The controller closed the stream.
    #[error("the controller closed the ADS stream")]
    Closed,
}

/// The types subscribed by name, in the order their references are resolved.
const NAMED: [&str; 3] = [type_url::ENDPOINT, type_url::ROUTE, type_url::SECRET];

/// Follows the controller on `channel` as `options.node`, starting from `held` (what a
/// restarted sidecar saved: named in `initial_resource_versions`). Each response is passed
/// to `check` as the configuration it would make: `Err(reason)` NACKs it and keeps what
/// was held; `Ok` ACKs it. Every complete configuration (nothing referred to missing) is
/// sent on `out`. Returns when the stream ends or fails, or when `out` has no receiver.
pub async fn follow(
    channel: Channel,
    options: &ClientOptions,
    held: Received,
    mut check: impl FnMut(&Received) -> Result<(), String> + Send,
    out: &watch::Sender<Option<Arc<Received>>>,
) -> Result<(), ClientError> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let node = Some(Node {
        id: options.node.clone(),
        ..Default::default()
    });
    let mut current = held;
    // Subscribed names of each named type.
    let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for t in [type_url::CLUSTER, type_url::LISTENER] {
        let _ = tx
            .send(DeltaDiscoveryRequest {
                node: node.clone(),
                type_url: t.into(),
                resource_names_subscribe: vec!["*".into()],
                initial_resource_versions: current.versions(t),
                ..Default::default()
            })
            .await;
    }
    subscribe(&tx, &node, &current, &mut subscribed, true).await;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = &options.token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    let mut stream = client.delta_aggregated_resources(req).await?.into_inner();
    if current.missing().is_empty() && !current.resources.is_empty() {
        out.send_replace(Some(Arc::new(current.clone())));
    }
    loop {
        let resp = tokio::select! {
            m = stream.next() => match m {
                Some(m) => m?,
                None => return Err(ClientError::Closed),
            },
            () = out.closed() => return Ok(()),
        };
        let candidate = current.with(&resp);
        let verdict = check(&candidate);
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: verdict.as_ref().err().map(|why| RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message: why.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Err(why) = &verdict {
            tracing::warn!(type_url = %resp.type_url, "NACK: {why}");
        } else {
            current = candidate;
        }
        if tx.send(ack).await.is_err() {
            return Err(ClientError::Closed);
        }
        subscribe(&tx, &node, &current, &mut subscribed, false).await;
        if verdict.is_ok() && current.missing().is_empty() {
            out.send_replace(Some(Arc::new(current.clone())));
        }
    }
}

/// Subscribes to what `current` refers to and is not subscribed yet, and unsubscribes from
/// what it no longer refers to. With `initial`, the first request of each type carries the
/// node and the versions held.
async fn subscribe(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    node: &Option<Node>,
    current: &Received,
    subscribed: &mut BTreeMap<&'static str, BTreeSet<String>>,
    initial: bool,
) {
    let refs = current.references();
    for t in NAMED {
        let want = refs.get(t).cloned().unwrap_or_default();
        let have = subscribed.entry(t).or_default();
        let add: Vec<String> = want.difference(have).cloned().collect();
        let drop: Vec<String> = have.difference(&want).cloned().collect();
        if add.is_empty() && drop.is_empty() {
            continue;
        }
        *have = want;
        let _ = tx
            .send(DeltaDiscoveryRequest {
                node: if initial { node.clone() } else { None },
                type_url: t.into(),
                resource_names_subscribe: add,
                resource_names_unsubscribe: drop,
                initial_resource_versions: if initial {
                    current.versions(t)
                } else {
                    Default::default()
                },
                ..Default::default()
            })
            .await;
    }
}
