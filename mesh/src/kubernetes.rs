//! The Kubernetes API as a source of the mesh (feature `kube`): every kind the mesh reads
//! ([`KINDS`]) is listed and watched through `kube`'s client and watcher, and each change
//! rebuilds the whole state, all or nothing, as the other sources do. An object is read as
//! one manifest named `kube:<Kind>/<namespace>/<name>` (errors read
//! `kube:TrafficTarget/shop/web:1:…`); `metadata.managedFields`, and the `status` of every
//! kind but `Pod` (whose IP is there), are dropped first.
//!
//! A kind the API server does not serve (an SMI CRD not installed) is skipped, with a log
//! line. Nothing is yielded before every served kind has been listed once. The API server
//! unreachable is reported once as a rejection naming it, then retried with backoff; the
//! last good state stays in force meanwhile.
//!
//! **Tested on recorded objects only**: no API server runs on the machines this project is
//! built on. `tests/kube_source.rs` replays list and watch responses in the API server's
//! wire format (written for the test after real responses, with the fields a server adds)
//! through a `kube::Client` over a scripted transport.
//!
//! ```no_run
//! use flowgate_mesh::kubernetes::KubeSource;
//! use flowgate_mesh::{Source, Update};
//!
//! # async fn watch() {
//! // The in-cluster service account, or the kubeconfig, as kubectl finds them.
//! let mut source = KubeSource::infer();
//! while let Update::State(mesh) = source.next().await {
//!     println!("mesh version {:x}: {} pods", mesh.version, mesh.pods.len());
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::load::ManifestError;
use crate::source::{NextUpdate, Source, Update, build_from, yielded};

/// Every kind the mesh reads: (group, version, kind, plural).
pub const KINDS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    ("", "v1", "Service", "services"),
    ("", "v1", "Pod", "pods"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    (
        "access.smi-spec.io",
        "v1alpha3",
        "TrafficTarget",
        "traffictargets",
    ),
    (
        "specs.smi-spec.io",
        "v1alpha4",
        "HTTPRouteGroup",
        "httproutegroups",
    ),
    ("specs.smi-spec.io", "v1alpha4", "TCPRoute", "tcproutes"),
    (
        "split.smi-spec.io",
        "v1alpha4",
        "TrafficSplit",
        "trafficsplits",
    ),
    ("policy.openservicemesh.io", "v1alpha1", "Retry", "retries"),
    (
        "policy.openservicemesh.io",
        "v1alpha1",
        "UpstreamTrafficSetting",
        "upstreamtrafficsettings",
    ),
    (
        "config.flowgate.io",
        "v1alpha1",
        "MeshConfig",
        "meshconfigs",
    ),
    ("plugin.flomesh.io", "v1alpha1", "Plugin", "plugins"),
    (
        "plugin.flomesh.io",
        "v1alpha1",
        "PluginChain",
        "pluginchains",
    ),
    (
        "plugin.flomesh.io",
        "v1alpha1",
        "PluginConfig",
        "pluginconfigs",
    ),
];

/// The most objects read in all.
pub const MAX_OBJECTS: usize = 100_000;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Events =
    Pin<Box<dyn Stream<Item = (usize, Result<Event<DynamicObject>, watcher::Error>)> + Send>>;

/// One kind's objects: `(namespace, name)` → the manifest text.
type Objects = BTreeMap<(String, String), String>;

/// The mesh's objects in a Kubernetes API server, watched.
pub struct KubeSource {
    client: Option<kube::Client>,
    kinds: Vec<ApiResource>,
    events: Option<Events>,
    /// Per kind: its objects, once listed (`None` before).
    objects: Vec<Option<Objects>>,
    /// Per kind: the objects of a (re)list in progress.
    listing: Vec<Option<Objects>>,
    /// Kinds not served by this API server.
    skipped: Vec<bool>,
    last_version: Option<u64>,
    backoff: Duration,
    reported_down: bool,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("kinds", &self.kinds.len())
            .field("watching", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// The mesh's kinds through `client`.
    pub fn new(client: kube::Client) -> KubeSource {
        Self::with_client(Some(client))
    }

    /// The mesh's kinds through the client `kube` infers (in a pod, its service account;
    /// elsewhere the kubeconfig), made on the first [`next`](Source::next).
    pub fn infer() -> KubeSource {
        Self::with_client(None)
    }

    fn with_client(client: Option<kube::Client>) -> KubeSource {
        let kinds: Vec<ApiResource> = KINDS
            .iter()
            .map(|(group, version, kind, plural)| {
                ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk(group, version, kind),
                    plural,
                )
            })
            .collect();
        let n = kinds.len();
        KubeSource {
            client,
            kinds,
            events: None,
            objects: vec![None; n],
            listing: vec![None; n],
            skipped: vec![false; n],
            last_version: None,
            backoff: MIN_BACKOFF,
            reported_down: false,
        }
    }

    /// The client, and the watch of every served kind, started.
    async fn start(&mut self) -> Result<(), String> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = kube::Client::try_default()
                    .await
                    .map_err(|e| format!("no Kubernetes client: {e}"))?;
                self.client.insert(c).clone()
            }
        };
        let mut streams = Vec::new();
        for (i, ar) in self.kinds.iter().enumerate() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    if !self.skipped[i] {
                        tracing::info!(kind = %ar.kind, api_version = %ar.api_version, "not served by the API server (CRD not installed?); skipped");
                    }
                    self.skipped[i] = true;
                    continue;
                }
                Err(e) => return Err(format!("listing {}: {e}", ar.plural)),
            }
            self.skipped[i] = false;
            let stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (i, e));
            streams.push(stream.boxed());
        }
        self.events = Some(Box::pin(futures_util::stream::select_all(streams)));
        Ok(())
    }

    /// Takes one watch event; `true` when the objects changed.
    fn apply(&mut self, i: usize, event: Event<DynamicObject>) -> bool {
        let ar = &self.kinds[i];
        match event {
            Event::Init => {
                self.listing[i] = Some(Objects::new());
                false
            }
            Event::InitApply(o) => {
                if let Some(list) = &mut self.listing[i] {
                    list.insert(key_of(&o), manifest(ar, o));
                }
                false
            }
            Event::InitDone => {
                self.objects[i] = Some(self.listing[i].take().unwrap_or_default());
                true
            }
            Event::Apply(o) => {
                let objects = self.objects[i].get_or_insert_default();
                objects.insert(key_of(&o), manifest(ar, o));
                true
            }
            Event::Delete(o) => {
                let objects = self.objects[i].get_or_insert_default();
                objects.remove(&key_of(&o)).is_some()
            }
        }
    }

    /// The state every served kind's objects describe, once each was listed; `None` when
    /// it is not complete yet or unchanged.
    fn build(&mut self) -> Option<Update> {
        let mut files = Vec::new();
        for (i, ar) in self.kinds.iter().enumerate() {
            if self.skipped[i] {
                continue;
            }
            let objects = self.objects[i].as_ref()?;
            for ((ns, name), text) in objects {
                let origin = if ns.is_empty() {
                    format!("kube:{}/{name}", ar.kind)
                } else {
                    format!("kube:{}/{ns}/{name}", ar.kind)
                };
                files.push((PathBuf::from(origin), text.clone()));
            }
        }
        let mut errors = Vec::new();
        if files.len() > MAX_OBJECTS {
            errors.push(kube_error(format!(
                "{} objects; at most {MAX_OBJECTS} are read",
                files.len()
            )));
            files.clear();
        }
        yielded(build_from(&files, errors), &mut self.last_version)
    }

    async fn next_update(&mut self) -> Update {
        loop {
            if self.events.is_none() {
                if let Err(e) = self.start().await {
                    if let Some(update) = self.failed(e).await {
                        return update;
                    }
                    continue;
                }
                self.backoff = MIN_BACKOFF;
                if std::mem::take(&mut self.reported_down) {
                    // Back after a failure: yield the state even if unchanged.
                    self.last_version = None;
                }
            }
            let Some(events) = &mut self.events else {
                continue;
            };
            match events.next().await {
                Some((i, Ok(event))) => {
                    if self.apply(i, event)
                        && let Some(update) = self.build()
                    {
                        return update;
                    }
                }
                Some((i, Err(e))) => {
                    // The watcher retries by itself, with backoff.
                    tracing::warn!(kind = %self.kinds[i].kind, "watching the API server: {e}");
                }
                None => self.events = None,
            }
        }
    }

    /// A failure to start: reported once (as a rejection), then retried with backoff.
    async fn failed(&mut self, e: String) -> Option<Update> {
        tracing::warn!(
            "Kubernetes API: {e}; retrying in {} ms",
            self.backoff.as_millis()
        );
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::time::sleep(delay).await;
        if self.reported_down {
            return None;
        }
        self.reported_down = true;
        self.last_version = None;
        Some(Update::Rejected(vec![kube_error(format!(
            "cannot read the API server ({e}); the last good state stays in force"
        ))]))
    }
}

impl Source for KubeSource {
    fn next(&mut self) -> NextUpdate<'_> {
        Box::pin(self.next_update())
    }
}

fn kube_error(message: String) -> ManifestError {
    ManifestError {
        file: PathBuf::from("kube"),
        line: 0,
        column: 0,
        message,
    }
}

fn key_of(o: &DynamicObject) -> (String, String) {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// An object as a manifest: its `apiVersion` and `kind` (list items lack them), without
/// `managedFields`, and without `status` unless it is a Pod's.
fn manifest(ar: &ApiResource, mut o: DynamicObject) -> String {
    o.metadata.managed_fields = None;
    if let serde_json::Value::Object(data) = &mut o.data
        && ar.kind != "Pod"
    {
        data.remove("status");
    }
    let mut v = serde_json::to_value(&o).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut v {
        map.insert("apiVersion".into(), ar.api_version.clone().into());
        map.insert("kind".into(), ar.kind.clone().into());
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
