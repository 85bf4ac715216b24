//! The ADS server: state-of-the-world aggregated discovery over gRPC (tonic), serving the
//! current [`Snapshot`] to every stream, tracking what each proxy ACKed or NACKed.
//!
//! Per stream and type URL it keeps the subscription (wildcard or names), the last nonce
//! and version sent. A request whose `response_nonce` is not the last one sent is stale and
//! ignored; one with `error_detail` is a NACK (recorded, nothing re-sent until the
//! snapshot changes); otherwise an ACK. It answers the first request of every type at once
//! (even with nothing in it), new names, and every change of the type's resources.
//! Listeners and clusters go as the full subscribed set; route configurations, endpoints
//! and secrets by name. After a cluster push the subscribed endpoints are sent again (and
//! route configurations after a listener push), so a client's updated clusters and
//! listeners finish warming.
//!
//! Delta (incremental) ADS keeps, per stream and type, the subscribed names (or wildcard)
//! and the version of every resource the proxy holds; it sends only what changed, and
//! names what went away (or was asked for and does not exist) in `removed_resources`. A
//! reconnecting proxy's `initial_resource_versions` spare it what it already has;
//! subscriptions are honoured whatever the nonce; a request with `error_detail` is a NACK
//! (recorded; nothing re-sent until the snapshot changes). A resource's version is a hash
//! of its bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Authenticator, Caller};
use super::compile::{Resources, type_url};

/// The resources proxies are served now, each set with a version per type: the default
/// set, named sets shared by groups of nodes, and per node id resources of its own.
///
/// A node with a part of its own is served, per type, its set (the named one its part
/// names, else the default) overlaid with its own resources (its own win on a name); any
/// other node the default set.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The default set: what a node without a part of its own is served (proxyless
    /// clients).
    pub resources: Resources,
    /// A content version per type URL of `resources`.
    pub versions: BTreeMap<String, String>,
    /// Named sets shared by groups of nodes (every sidecar's outbound clusters, say).
    pub sets: BTreeMap<String, Shared>,
    /// Per node id: its part.
    pub per_node: BTreeMap<String, NodePart>,
}

/// A named set of resources shared by several nodes.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    /// The resources.
    pub resources: Resources,
    /// A content version per type URL.
    pub versions: BTreeMap<String, String>,
}

/// One node's own resources, the set it is served them over, and who may have them.
#[derive(Clone, Debug, Default)]
pub struct NodePart {
    /// The service account (`namespace`, `name`) the node runs as: only a caller proven as
    /// that account is served this part (and may use the node id at all). `None`: any
    /// caller.
    pub owner: Option<(String, String)>,
    /// The named set the node is served under its own resources; `None`: the default.
    pub set: Option<String>,
    /// The resources.
    pub resources: Resources,
    /// A content version per type URL.
    pub versions: BTreeMap<String, String>,
}

/// A version per type: a hash of its resources' names and versions.
fn versions_of(resources: &Resources) -> BTreeMap<String, String> {
    resources
        .versions
        .iter()
        .map(|(t, vs)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            vs.hash(&mut h);
            (t.clone(), format!("{:016x}", h.finish()))
        })
        .collect()
}

type Any = envoy_types::pb::google::protobuf::Any;

/// What one node is served of one type: a set overlaid with the node's own resources.
struct View<'a> {
    t: &'a str,
    base: &'a Resources,
    base_version: Option<&'a String>,
    own: Option<(&'a Resources, Option<&'a String>)>,
}

impl<'a> View<'a> {
    fn get(&self, name: &str) -> Option<&'a Any> {
        self.own
            .and_then(|(o, _)| o.of(self.t)?.get(name))
            .or_else(|| self.base.of(self.t)?.get(name))
    }

    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn resource_version(&self, name: &str) -> Option<&'a String> {
        self.own
            .and_then(|(o, _)| o.versions_of(self.t)?.get(name))
            .or_else(|| self.base.versions_of(self.t)?.get(name))
    }

    /// Every resource: the node's own, then the set's it does not shadow.
    fn iter(&self) -> impl Iterator<Item = (&'a String, &'a Any)> + '_ {
        let own = self.own.and_then(|(o, _)| o.of(self.t));
        let shadowed = move |n: &String| own.is_some_and(|o| o.contains_key(n));
        own.into_iter().flatten().chain(
            self.base
                .of(self.t)
                .into_iter()
                .flatten()
                .filter(move |(n, _)| !shadowed(n)),
        )
    }

    fn version(&self) -> String {
        match (self.base_version, self.own.and_then(|(_, v)| v)) {
            (Some(b), Some(o)) => format!("{b}{o}"),
            (Some(v), None) | (None, Some(v)) => v.clone(),
            (None, None) => "0".into(),
        }
    }
}

impl Snapshot {
    /// A snapshot of `resources` (the default set), versioned by content.
    pub fn new(resources: Resources) -> Self {
        Snapshot {
            versions: versions_of(&resources),
            resources,
            ..Default::default()
        }
    }

    /// Adds the named set `name`.
    #[must_use]
    pub fn with_set(mut self, name: String, resources: Resources) -> Self {
        self.sets.insert(
            name,
            Shared {
                versions: versions_of(&resources),
                resources,
            },
        );
        self
    }

    /// Adds `node`'s own resources (over the default set), for any caller naming that
    /// node.
    #[must_use]
    pub fn with_node(self, node: String, resources: Resources) -> Self {
        self.with_owned_node(node, None, None, resources)
    }

    /// Adds `node`'s own resources over set `set` (the default when `None`), served only
    /// to a caller proven as service account `owner` (`namespace`, `name`) when given.
    #[must_use]
    pub fn with_owned_node(
        mut self,
        node: String,
        owner: Option<(String, String)>,
        set: Option<String>,
        resources: Resources,
    ) -> Self {
        self.per_node.insert(
            node,
            NodePart {
                owner,
                set,
                versions: versions_of(&resources),
                resources,
            },
        );
        self
    }

    /// `node`'s own part when `caller` may have it.
    fn own(&self, node: &str, caller: &Caller) -> Option<&NodePart> {
        self.per_node.get(node).filter(|p| match &p.owner {
            None => true,
            Some((ns, sa)) => caller.may_act_as(ns, sa),
        })
    }

    /// What `node`, called by `caller`, is served of type `t`.
    fn view<'a>(&'a self, node: &str, caller: &Caller, t: &'a str) -> View<'a> {
        let own = self.own(node, caller);
        let (base, base_version) = match own
            .and_then(|p| p.set.as_ref())
            .and_then(|s| self.sets.get(s))
        {
            Some(set) => (&set.resources, set.versions.get(t)),
            None => (&self.resources, self.versions.get(t)),
        };
        View {
            t,
            base,
            base_version,
            own: own.map(|p| (&p.resources, p.versions.get(t))),
        }
    }

    /// The resources of type `t` that `node` is served (when its owner calls), by name.
    pub fn of(&self, node: &str, t: &str) -> BTreeMap<String, Any> {
        self.view(node, &Caller::Anyone, t)
            .iter()
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect()
    }

    fn version(&self, node: &str, caller: &Caller, t: &str) -> String {
        self.view(node, caller, t).version()
    }
}

/// What a proxy (a `node.id`) last did with each type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Its node id.
    pub node: String,
    /// Whether a stream from it is open.
    pub connected: bool,
    /// Who opened its last stream, and how it proved it (`shop/web (by token)`).
    pub identity: String,
    /// When the certificate its last stream was opened with expires (callers proven by
    /// certificate).
    pub cert_expiry: Option<SystemTime>,
    /// Per type URL: the last version sent, ACKed, and the last NACK's message.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One proxy's state for one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The last version sent.
    pub sent: String,
    /// The last version ACKed.
    pub acked: String,
    /// The last NACK: the version refused and why.
    pub nacked: Option<(String, String)>,
    /// When it last changed.
    pub at: Option<SystemTime>,
}

type StatusMap = Arc<Mutex<BTreeMap<String, ProxyStatus>>>;

/// The proxy at the other end of one stream, and where what it does is recorded.
struct Proxy {
    status: StatusMap,
    /// Its `node.id` (empty until a request names it).
    node: String,
    /// Who opened the stream.
    caller: Caller,
}

impl Proxy {
    /// Takes the node id from the first request that has one; `PERMISSION_DENIED` when the
    /// node belongs to another service account than the caller's.
    fn identify(
        &mut self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
        snapshot: &Snapshot,
    ) -> Result<(), Status> {
        if !self.node.is_empty() {
            return Ok(());
        }
        let Some(n) = node else { return Ok(()) };
        let id: String = n.id.chars().take(256).collect();
        if let Some(NodePart {
            owner: Some((ns, sa)),
            ..
        }) = snapshot.per_node.get(&id)
            && !self.caller.may_act_as(ns, sa)
        {
            tracing::warn!(node = %id, caller = %self.caller, "xDS stream refused: the node runs as {ns}/{sa}");
            return Err(Status::permission_denied(format!(
                "node `{id}` runs as service account {ns}/{sa}; the caller is {}",
                self.caller
            )));
        }
        self.node = id;
        let mut st = lock(&self.status);
        let p = st.entry(self.node.clone()).or_default();
        p.node = self.node.clone();
        p.connected = true;
        p.identity = self.caller.to_string();
        p.cert_expiry = self.caller.expires();
        Ok(())
    }

    /// Checks a request before it is handled: the node it names may be served to the
    /// caller ([`identify`](Self::identify)), and it names at most [`MAX_NAMES`]
    /// resources (`names`).
    fn admit(
        &mut self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
        names: usize,
        snapshot: &Snapshot,
    ) -> Result<(), Status> {
        self.identify(node, snapshot)?;
        if names > MAX_NAMES {
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_NAMES} resource names in one request"
            )));
        }
        Ok(())
    }

    /// Records what happened for type `t`.
    fn record(&self, t: &str, f: impl FnOnce(&mut TypeStatus)) {
        if self.node.is_empty() {
            return;
        }
        let mut st = lock(&self.status);
        let p = st.entry(self.node.clone()).or_insert_with(|| ProxyStatus {
            node: self.node.clone(),
            ..Default::default()
        });
        p.connected = true;
        let ts = p.types.entry(t.to_string()).or_default();
        f(ts);
        ts.at = Some(SystemTime::now());
    }

    /// The stream ended.
    fn gone(&self) {
        if self.node.is_empty() {
            return;
        }
        if let Some(p) = lock(&self.status).get_mut(&self.node) {
            p.connected = false;
        }
    }
}

/// The ADS service: clone it into [`serve`], publish snapshots through the sender given by
/// [`AdsServer::new`].
#[derive(Clone)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: StatusMap,
    auth: Option<Arc<Authenticator>>,
}

impl AdsServer {
    /// A server and the sender new snapshots go to.
    pub fn new() -> (Self, watch::Sender<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        (
            AdsServer {
                snapshots: rx,
                status: Arc::default(),
                auth: None,
            },
            tx,
        )
    }

    /// Requires every stream's caller to be proven by `auth` (a mesh certificate or a
    /// bootstrap token), and serves a node's own resources only to its service account.
    /// Without it every caller is served everything: for embedders that authenticate
    /// otherwise.
    #[must_use]
    pub fn with_authenticator(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        match &self.auth {
            None => Ok(Caller::Anyone),
            Some(a) => a.caller(request),
        }
    }

    /// Every proxy seen, by node id.
    pub fn status(&self) -> Vec<ProxyStatus> {
        lock(&self.status).values().cloned().collect()
    }

    /// The tonic service, with a 16 MiB message limit each way.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The standalone SDS service (for proxies whose static resources take secrets from a
/// gRPC SDS cluster rather than from ADS), served from the same snapshots.
pub fn secret_service(server: AdsServer) -> SecretDiscoveryServiceServer<AdsServer> {
    SecretDiscoveryServiceServer::new(server)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// Serves `server` on `listener` (plain TCP, HTTP/2) until `shutdown` completes: ADS, the
/// standalone SDS service, and the certificate service when given. Nothing on a plain port
/// proves a caller's certificate: only tokens (or no authentication at all) apply.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    certs: Option<super::certify::CertService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router(server, certs)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

/// Serves `server` (and `certs`) over TLS on `listener` until `shutdown` completes, each
/// connection handshaken with the configuration `configs` holds when it is accepted (see
/// [`super::auth::server_config`] and [`super::auth::tls_incoming`]): a caller's verified
/// mesh certificate proves its account to the services behind.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    configs: watch::Receiver<Arc<rustls::ServerConfig>>,
    server: AdsServer,
    certs: Option<super::certify::CertService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router(server, certs)
        .serve_with_incoming_shutdown(super::auth::tls_incoming(listener, configs), shutdown)
        .await
}

fn router(
    server: AdsServer,
    certs: Option<super::certify::CertService>,
) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        // Streams that stay open for days: find dead peers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(server.clone().into_service())
        .add_service(secret_service(server))
        .add_optional_service(certs.map(super::certify::CertServiceServer))
}

/// The response stream of one ADS call.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
/// The response stream of one delta ADS call.
pub type DeltaResponseStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let caller = self.caller(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let stream = SotwStream {
            snapshots: self.snapshots.clone(),
            proxy: Proxy {
                status: self.status.clone(),
                node: String::new(),
                caller,
            },
            tx,
            types: BTreeMap::new(),
            nonce: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponseStream>, Status> {
        let caller = self.caller(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let stream = DeltaStream {
            snapshots: self.snapshots.clone(),
            proxy: Proxy {
                status: self.status.clone(),
                node: String::new(),
                caller,
            },
            tx,
            types: BTreeMap::new(),
            nonce: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for AdsServer {
    type StreamSecretsStream = ResponseStream;
    type DeltaSecretsStream = DeltaResponseStream;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.stream_aggregated_resources(request).await
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponseStream>, Status> {
        self.delta_aggregated_resources(request).await
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "fetch (REST-style) SDS is not served: use the streaming SDS or ADS",
        ))
    }
}

/// Completes at `expires`, when the certificate the caller proved itself with runs out
/// (never for other callers): its streams end then, and it must reconnect with a renewed one.
async fn credential_expiry(expires: Option<SystemTime>) {
    match expires {
        Some(at) => {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(std::time::Duration::ZERO);
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

fn expired_status() -> Status {
    Status::unauthenticated("the client certificate this stream was opened with has expired")
}

/// One stream's subscription to one type.
#[derive(Default)]
struct Sub {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    last_nonce: String,
    last_version: Option<String>,
}

struct SotwStream {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    proxy: Proxy,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    types: BTreeMap<String, Sub>,
    nonce: u64,
}

/// Types sent as the full subscribed set (the others go by name).
fn full_state(t: &str) -> bool {
    t == type_url::LISTENER || t == type_url::CLUSTER
}

impl SotwStream {
    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let expired = credential_expiry(self.proxy.caller.expires());
        tokio::pin!(expired);
        loop {
            tokio::select! {
                () = &mut expired => {
                    let _ = self.tx.send(Err(expired_status())).await;
                    break;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if !self.on_request(req).await {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() || !self.on_snapshot().await {
                        break;
                    }
                }
            }
        }
        self.proxy.gone();
    }

    /// Handles one request; `false` when the stream is gone.
    async fn on_request(&mut self, req: DiscoveryRequest) -> bool {
        let admitted = self.proxy.admit(
            req.node.as_ref(),
            req.resource_names.len(),
            &self.snapshots.borrow(),
        );
        if let Err(status) = admitted {
            let _ = self.tx.send(Err(status)).await;
            return false;
        }
        let t = req.type_url.clone();
        let first = !self.types.contains_key(&t);
        let sub = self.types.entry(t.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != sub.last_nonce {
            return true; // stale: superseded by a later response
        }
        if let Some(err) = &req.error_detail {
            let (version, message) = (
                sub.last_version.clone().unwrap_or_default(),
                err.message.clone(),
            );
            tracing::warn!(node = %self.proxy.node, type_url = %t, %version, %message, "xDS NACK");
            self.proxy
                .record(&t, |s| s.nacked = Some((version, message)));
            return true;
        }
        if !req.response_nonce.is_empty() {
            let v = req.version_info.clone();
            self.proxy.record(&t, |s| s.acked = v);
        }
        let sub = self.types.entry(t.clone()).or_default();
        // `*` asks for everything; so does a first request naming nothing for a full-state
        // type (the legacy wildcard), and later requests naming nothing keep it (an ACK of
        // a wildcard subscription names nothing too). Naming nothing after having named
        // resources unsubscribes from all of them.
        let names: Option<BTreeSet<String>> = if req.resource_names.iter().any(|n| n == "*") {
            None
        } else if req.resource_names.is_empty() {
            match (first, &sub.names) {
                (true, _) if full_state(&t) => None,
                (true, _) => Some(BTreeSet::new()),
                (false, None) => None,
                (false, Some(_)) => Some(BTreeSet::new()),
            }
        } else {
            Some(req.resource_names.iter().cloned().collect())
        };
        let grew = match (&sub.names, &names) {
            (Some(old), Some(new)) => !new.is_subset(old),
            (Some(_), None) => true,
            _ => false,
        };
        sub.names = names;
        let version = self
            .snapshots
            .borrow()
            .version(&self.proxy.node, &self.proxy.caller, &t);
        if first || grew || sub.last_version.as_deref() != Some(version.as_str()) {
            return self.send(&t).await;
        }
        true
    }

    /// Pushes every subscribed type whose resources changed.
    async fn on_snapshot(&mut self) -> bool {
        let snap = self.snapshots.borrow_and_update().clone();
        let changed: Vec<String> = self
            .types
            .iter()
            .filter(|(t, s)| {
                s.last_version.as_deref()
                    != Some(
                        snap.version(&self.proxy.node, &self.proxy.caller, t)
                            .as_str(),
                    )
            })
            .map(|(t, _)| t.clone())
            .collect();
        let mut order: Vec<&str> = vec![
            type_url::CLUSTER,
            type_url::ENDPOINT,
            type_url::LISTENER,
            type_url::ROUTE,
            type_url::SECRET,
        ];
        let extra: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|t| !order.contains(t))
            .collect();
        order.extend(extra);
        let mut force_eds = false;
        let mut force_rds = false;
        for t in order {
            let subscribed = self.types.contains_key(t);
            let must = changed.iter().any(|c| c == t)
                || (t == type_url::ENDPOINT && force_eds)
                || (t == type_url::ROUTE && force_rds);
            if subscribed && must {
                if !self.send(t).await {
                    return false;
                }
                force_eds |= t == type_url::CLUSTER;
                force_rds |= t == type_url::LISTENER;
            }
        }
        true
    }

    async fn send(&mut self, t: &str) -> bool {
        let snap = self.snapshots.borrow().clone();
        let version = snap.version(&self.proxy.node, &self.proxy.caller, t);
        let Some(sub) = self.types.get_mut(t) else {
            return true;
        };
        let view = snap.view(&self.proxy.node, &self.proxy.caller, t);
        let resources: Vec<Any> = match &sub.names {
            None => view.iter().map(|(_, a)| a.clone()).collect(),
            Some(names) => names.iter().filter_map(|n| view.get(n).cloned()).collect(),
        };
        if sub.names.as_ref().is_some_and(|n| n.is_empty()) && !full_state(t) {
            // Unsubscribed from every name: nothing to send.
            sub.last_version = Some(version);
            return true;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        sub.last_nonce = nonce.clone();
        sub.last_version = Some(version.clone());
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: t.to_string(),
            nonce,
            ..Default::default()
        };
        self.proxy.record(t, |s| s.sent = version);
        self.tx.send(Ok(resp)).await.is_ok()
    }
}

/// One delta stream's state for one type.
#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name → version.
    held: BTreeMap<String, String>,
    /// Names subscribed that do not exist, already said so.
    said_absent: BTreeSet<String>,
    /// Nonces sent and not yet answered, with the snapshot version each carried.
    pending: BTreeMap<String, String>,
    /// The type's version `held` was last brought up to date with, under the current
    /// subscription: nothing to compare while it stays the same.
    synced: Option<String>,
}

struct DeltaStream {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    proxy: Proxy,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    types: BTreeMap<String, DeltaSub>,
    nonce: u64,
}

/// The most resources one delta response carries; more go in several.
const DELTA_CHUNK: usize = 100;

/// The most resource names one request (SotW or delta) may carry; more ends the stream
/// with `RESOURCE_EXHAUSTED`.
const MAX_NAMES: usize = 100_000;

impl DeltaStream {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let expired = credential_expiry(self.proxy.caller.expires());
        tokio::pin!(expired);
        loop {
            tokio::select! {
                () = &mut expired => {
                    let _ = self.tx.send(Err(expired_status())).await;
                    break;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if !self.on_request(req).await {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.snapshots.borrow_and_update();
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    for t in types {
                        if !self.send_changes(&t, false).await {
                            return self.proxy.gone();
                        }
                    }
                }
            }
        }
        self.proxy.gone();
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> bool {
        let admitted = self.proxy.admit(
            req.node.as_ref(),
            req.resource_names_subscribe.len(),
            &self.snapshots.borrow(),
        );
        if let Err(status) = admitted {
            let _ = self.tx.send(Err(status)).await;
            return false;
        }
        let t = req.type_url.clone();
        let first = !self.types.contains_key(&t);
        let sub = self.types.entry(t.clone()).or_default();
        // The answer to an earlier response: an ACK, or a NACK with the reason.
        if !req.response_nonce.is_empty()
            && let Some(version) = sub.pending.remove(&req.response_nonce)
        {
            match &req.error_detail {
                Some(err) => {
                    let message = err.message.clone();
                    tracing::warn!(node = %self.proxy.node, type_url = %t, %version, %message, "xDS NACK (delta)");
                    self.proxy
                        .record(&t, |s| s.nacked = Some((version, message)));
                }
                None => self.proxy.record(&t, |s| s.acked = version),
            }
        }
        let sub = self.types.entry(t.clone()).or_default();
        if first {
            for (name, version) in &req.initial_resource_versions {
                sub.held.insert(name.clone(), version.clone());
            }
            // A first request naming nothing is a wildcard one (the legacy form).
            if req.resource_names_subscribe.is_empty() {
                sub.wildcard = true;
            }
        }
        let mut asked_new = false;
        for n in &req.resource_names_subscribe {
            if n == "*" {
                asked_new |= !sub.wildcard;
                sub.wildcard = true;
            } else if sub.names.insert(n.clone()) {
                // Asked again even if held: send it (the proxy may have lost it).
                sub.held.remove(n);
                sub.said_absent.remove(n);
                asked_new = true;
            }
        }
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            sub.synced = None;
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(n);
                sub.held.remove(n);
                sub.said_absent.remove(n);
            }
        }
        if first || asked_new {
            return self.send_changes(&t, first).await;
        }
        true
    }

    /// Sends what the proxy lacks or holds in another version, and what it holds that is
    /// gone or no longer subscribed. With `always`, sends even an empty response (the
    /// first answer of a type).
    async fn send_changes(&mut self, t: &str, always: bool) -> bool {
        let snap = self.snapshots.borrow().clone();
        let version = snap.version(&self.proxy.node, &self.proxy.caller, t);
        let Some(sub) = self.types.get_mut(t) else {
            return true;
        };
        if !always && sub.synced.as_deref() == Some(version.as_str()) {
            return true;
        }
        sub.synced = Some(version.clone());
        let view = snap.view(&self.proxy.node, &self.proxy.caller, t);
        let wanted = |name: &str| sub.wildcard || sub.names.contains(name);
        let mut resources = Vec::new();
        let mut consider = |name: &String, any: &Any| {
            let v = view.resource_version(name).cloned().unwrap_or_default();
            if sub.held.get(name) != Some(&v) {
                resources.push(Resource {
                    name: name.clone(),
                    version: v,
                    resource: Some(any.clone()),
                    ..Default::default()
                });
            }
        };
        if sub.wildcard {
            for (name, any) in view.iter() {
                consider(name, any);
            }
        } else {
            for name in &sub.names {
                if let Some(any) = view.get(name) {
                    consider(name, any);
                }
            }
        }
        let mut removed: Vec<String> = sub
            .held
            .keys()
            .filter(|n| !view.contains(n) || !wanted(n))
            .cloned()
            .collect();
        // Subscribed by name and not there: say so once (it is sent when it appears).
        for n in &sub.names {
            if !view.contains(n) && !sub.held.contains_key(n) && sub.said_absent.insert(n.clone()) {
                removed.push(n.clone());
            }
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return true;
        }
        for r in &resources {
            sub.said_absent.remove(&r.name);
            sub.held.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.held.remove(n);
        }
        self.proxy.record(t, |s| s.sent = version.clone());
        // Many resources go in several responses: each stream's encoder keeps a buffer as
        // large as its largest message, so large messages cost memory per proxy.
        let mut resources = resources.into_iter().peekable();
        let mut removed = Some(removed);
        loop {
            let chunk: Vec<Resource> = resources.by_ref().take(DELTA_CHUNK).collect();
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            sub.pending.insert(nonce.clone(), version.clone());
            if sub.pending.len() > 64 {
                // A proxy that never answers: forget the oldest.
                if let Some(k) = sub.pending.keys().next().cloned() {
                    sub.pending.remove(&k);
                }
            }
            let resp = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources: chunk,
                type_url: t.to_string(),
                removed_resources: removed.take().unwrap_or_default(),
                nonce,
                ..Default::default()
            };
            if self.tx.send(Ok(resp)).await.is_err() {
                return false;
            }
            if resources.peek().is_none() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;
    use crate::xds::auth::Proof;

    fn clusters(names: &[&str]) -> Resources {
        let mut r = Resources::default();
        for n in names {
            r.put(
                (*n).to_string(),
                Cluster {
                    name: (*n).to_string(),
                    ..Default::default()
                },
            );
        }
        r
    }

    fn account(ns: &str, sa: &str) -> Caller {
        Caller::Account {
            namespace: ns.into(),
            service_account: sa.into(),
            proof: Proof::Token,
        }
    }

    #[test]
    fn a_node_is_served_its_set_under_its_own_resources() {
        let snap = Snapshot::new(clusters(&["proxyless"]))
            .with_set("sidecar".into(), clusters(&["shared-a", "shared-b"]))
            .with_owned_node(
                "web-1.shop".into(),
                Some(("shop".into(), "web".into())),
                Some("sidecar".into()),
                clusters(&["inbound", "shared-b"]),
            );
        let web = account("shop", "web");
        let t = type_url::CLUSTER;
        let names = |v: &View<'_>| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let view = snap.view("web-1.shop", &web, t);
        assert_eq!(names(&view), ["inbound", "shared-b", "shared-a"]);
        assert!(view.contains("shared-a") && !view.contains("proxyless"));
        // Its own resources change the version of the type; the set's alone do not make it.
        let with_own = view.version();
        assert_ne!(with_own, snap.version("other", &web, t));
        // Another account naming the node, and any other node: the default set.
        let thief = snap.view("web-1.shop", &account("shop", "thief"), t);
        assert_eq!(names(&thief), ["proxyless"]);
        assert_eq!(names(&snap.view("grpc-client", &web, t)), ["proxyless"]);
        // A type the node has nothing of: the set's, with the set's version.
        let routes = snap.view("web-1.shop", &web, type_url::ROUTE);
        assert_eq!(routes.iter().count(), 0);
        assert_eq!(routes.version(), "0");
    }
}
