//! `KubeSource` on recorded objects: no API server runs on these machines, so a
//! `kube::Client` talks to a scripted transport that answers list requests with the JSON
//! files in `tests/kube/` (the API server's wire format, with the fields a server adds:
//! uids, resource versions, managed fields, statuses) and 404 for kinds whose CRD is "not
//! installed", and streams watch events the test pushes. A pod added, a broken
//! TrafficTarget (rejected at its object, the last good state kept) and its deletion come
//! through the watch; an unreachable API server is reported.
#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use tokio::sync::mpsc;

use flowgate_mesh::kubernetes::KubeSource;
use flowgate_mesh::{Source, Update};

type Body = BoxBody<Bytes, Infallible>;

/// Path → the senders of its open watches.
type Watches = Arc<Mutex<BTreeMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>>;

fn recorded(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/kube")
            .join(name),
    )
    .unwrap()
}

/// A client whose API server is a script: the lists of `lists` (path → file), 404 for any
/// other path, and watches fed through `watches`.
fn scripted(lists: BTreeMap<&'static str, &'static str>, watches: Watches) -> kube::Client {
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let path = req.uri().path().to_string();
        let watching = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let file = lists.get(path.as_str()).copied();
        let watches = watches.clone();
        async move {
            let respond = |status: u16, body: Body| {
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap()
            };
            let full = |text: String| Full::new(Bytes::from(text)).boxed();
            let Some(file) = file else {
                return Ok::<_, Infallible>(respond(404, full(recorded("not-found.json"))));
            };
            if !watching {
                return Ok(respond(200, full(recorded(file))));
            }
            // A watch: events as the test sends them, open until the test ends.
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            watches.lock().unwrap().entry(path).or_default().push(tx);
            let events = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            Ok(respond(200, BodyExt::boxed(StreamBody::new(events))))
        }
    });
    kube::Client::new(service, "default")
}

/// Sends the event in `file` (one JSON object) to every watch of `path` — once the source,
/// polled for its next update meanwhile, has opened one — and returns that update.
async fn push(source: &mut KubeSource, watches: &Watches, path: &str, file: &str) -> Update {
    let event: serde_json::Value = serde_json::from_str(&recorded(file)).unwrap();
    let line = Bytes::from(format!("{event}\n"));
    let send = async {
        for _ in 0..500 {
            {
                let watches = watches.lock().unwrap();
                if let Some(open) = watches.get(path) {
                    for tx in open {
                        let _ = tx.send(line.clone());
                    }
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no watch on {path} within 5 s");
    };
    let (update, ()) = tokio::join!(next(source), send);
    update
}

async fn next(source: &mut KubeSource) -> Update {
    tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("an update within 10 s")
}

#[tokio::test]
async fn recorded_objects_become_the_mesh_and_watch_events_change_it() {
    let lists = BTreeMap::from([
        ("/api/v1/namespaces", "namespaces.json"),
        ("/api/v1/serviceaccounts", "serviceaccounts.json"),
        ("/api/v1/services", "services.json"),
        ("/api/v1/pods", "pods.json"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "endpointslices.json",
        ),
        (
            "/apis/access.smi-spec.io/v1alpha3/traffictargets",
            "traffictargets.json",
        ),
        (
            "/apis/specs.smi-spec.io/v1alpha4/httproutegroups",
            "httproutegroups.json",
        ),
        (
            "/apis/specs.smi-spec.io/v1alpha4/tcproutes",
            "tcproutes.json",
        ),
        // TrafficSplit, MeshConfig and the plugin kinds are not installed: 404, skipped.
    ]);
    let watches: Watches = Arc::default();
    let mut source = KubeSource::new(scripted(lists, watches.clone()));

    let Update::State(first) = next(&mut source).await else {
        panic!("the recorded objects are a good mesh")
    };
    assert_eq!(first.namespaces.len(), 3);
    assert_eq!(first.pods.len(), 3);
    let web = &first.pods[&("shop".to_string(), "web-5d4f8b9c7-fghij".to_string())];
    assert_eq!(web.value.status.pod_ip.as_deref(), Some("10.244.1.6"));
    assert_eq!(web.value.service_account(), "web");
    assert_eq!(first.traffic_targets.len(), 1);
    assert!(
        first
            .mesh_config
            .traffic
            .enable_permissive_traffic_policy_mode,
        "no MeshConfig kind installed: the defaults"
    );
    // What the mesh compiles to: the web service's endpoints include its pod.
    let grpc = flowgate_mesh::xds::grpc_resources(&first);
    let names: Vec<&String> = grpc
        .of(flowgate_mesh::xds::type_url::CLUSTER)
        .unwrap()
        .keys()
        .collect();
    assert!(
        names.iter().any(|n| n.as_str() == "outbound|80||web.shop"),
        "{names:?}"
    );

    // A second web pod, added: in the next state.
    let update = push(&mut source, &watches, "/api/v1/pods", "web-2-added.json").await;
    let Update::State(second) = update else {
        panic!("the added pod makes a good mesh")
    };
    assert_eq!(second.pods.len(), 4);
    assert!(
        second
            .pods
            .contains_key(&("shop".to_string(), "web-5d4f8b9c7-klmno".to_string()))
    );

    // A TrafficTarget naming a missing service account: rejected at its object.
    let targets = "/apis/access.smi-spec.io/v1alpha3/traffictargets";
    let update = push(&mut source, &watches, targets, "bad-target-added.json").await;
    let Update::Rejected(errors) = update else {
        panic!("a TrafficTarget naming a missing account is refused")
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].to_string();
    assert!(e.starts_with("kube:TrafficTarget/shop/bad:"), "{e}");
    assert!(e.contains("ghost"), "{e}");

    // Deleted: the good state again, the one before it.
    let update = push(&mut source, &watches, targets, "bad-target-deleted.json").await;
    let Update::State(third) = update else {
        panic!("the deletion mends the mesh")
    };
    assert_eq!(third.version, second.version);
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_once() {
    let service = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(503)
                .body(Full::new(Bytes::from_static(b"{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"unavailable\",\"reason\":\"ServiceUnavailable\",\"code\":503}")))
                .unwrap(),
        )
    });
    let mut source = KubeSource::new(kube::Client::new(service, "default"));
    let Update::Rejected(errors) = next(&mut source).await else {
        panic!("no state from an unreachable API server")
    };
    assert!(errors[0].to_string().starts_with("kube:"), "{}", errors[0]);
    assert!(
        errors[0].to_string().contains("cannot read the API server"),
        "{}",
        errors[0]
    );
    // Not reported again while it stays down.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), source.next())
            .await
            .is_err()
    );
}
