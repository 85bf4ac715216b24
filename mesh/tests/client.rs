//! The delta ADS client against the ADS server on loopback, serving the bookstore demo's
//! snapshot as the controller builds it: a sidecar's node gets a complete configuration
//! (its listeners, every cluster with its endpoints, the outbound routes, its secrets) and
//! follows an endpoint change; a response its check refuses is NACKed with the reason (the
//! server records it) and the configuration held before stays; a client restarted with
//! what it held is resent nothing unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use flowgate_mesh::ca::Ca;
use flowgate_mesh::xds::client::{ClientOptions, Received, follow};
use flowgate_mesh::xds::compile::{Leaves, all_sidecar_secrets, node_id, sidecar_sets};
use flowgate_mesh::xds::{AdsServer, Snapshot, grpc_resources, serve, type_url};
use flowgate_mesh::{MeshState, load_dir};
use prost::Message;
use tokio::sync::watch;

fn demo() -> MeshState {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh")).unwrap()
}

/// The snapshot the controller serves for `mesh`.
fn snapshot(mesh: &MeshState, ca: &Ca, leaves: &mut Leaves) -> Snapshot {
    let mut snap = Snapshot::new(grpc_resources(mesh));
    let (sets, of_pod) = sidecar_sets(mesh);
    for (name, r) in sets {
        snap = snap.with_set(name, r);
    }
    for (node, (owner, r)) in all_sidecar_secrets(mesh, ca, leaves).unwrap() {
        let set = of_pod
            .iter()
            .find(|((ns, pod), _)| node_id(ns, pod) == node)
            .map(|(_, s)| s.clone());
        snap = snap.with_owned_node(node, Some(owner), set, r);
    }
    snap
}

/// The demo with bookstore-v1's pod at `ip`.
fn demo_with(ip: &str) -> MeshState {
    let dir =
        std::env::temp_dir().join(format!("flowgate-client-demo-{}-{ip}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("10.42.0.21", ip);
        std::fs::write(dir.join(p.file_name().unwrap()), text).unwrap();
    }
    let state = load_dir(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    state
}

async fn next_config(rx: &mut watch::Receiver<Option<Arc<Received>>>) -> Arc<Received> {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a configuration within 5 s")
        .unwrap();
    rx.borrow().clone().unwrap()
}

fn endpoints_of(r: &Received, cluster: &str) -> String {
    let (_, any) = r
        .of(type_url::ENDPOINT)
        .find(|(n, _)| n.as_str() == cluster)
        .unwrap_or_else(|| panic!("no endpoints for {cluster}"));
    format!(
        "{:?}",
        ClusterLoadAssignment::decode(any.value.as_slice()).unwrap()
    )
}

#[tokio::test]
async fn a_sidecar_follows_its_complete_configuration_and_nacks_what_it_refuses() {
    let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let mut leaves = Leaves::default();
    let (server, snapshots) = AdsServer::new();
    snapshots
        .send(Arc::new(snapshot(&demo(), &ca, &mut leaves)))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = server.clone();
    tokio::spawn(serve(listener, server, None, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let node = "bookbuyer.bookbuyer";
    let options = ClientOptions {
        node: node.into(),
        token: None,
    };
    let (out, mut configs) = watch::channel(None);
    // The check is the sidecar's: the subset of xDS it accepts.
    let check = |r: &Received| flowgate_mesh::xds::subset::read(r).map(drop);
    let task = {
        let channel = channel.clone();
        let options = options.clone();
        tokio::spawn(
            async move { follow(channel, &options, Received::default(), check, &out).await },
        )
    };

    let first = next_config(&mut configs).await;
    assert!(first.missing().is_empty());
    let listeners: Vec<&String> = first.of(type_url::LISTENER).map(|(n, _)| n).collect();
    assert!(
        listeners.iter().any(|n| n.as_str() == "outbound"),
        "{listeners:?}"
    );
    let store = "outbound|14001||bookstore-v1.bookstore|mtls";
    assert!(endpoints_of(&first, store).contains("10.42.0.21"));
    assert!(first.of(type_url::ROUTE).any(|(n, _)| n == "outbound"));
    let secrets: Vec<&String> = first.of(type_url::SECRET).map(|(n, _)| n).collect();
    assert_eq!(secrets, ["ROOTCA", "default"]);

    // An endpoint moves: the next configuration has it.
    snapshots
        .send(Arc::new(snapshot(
            &demo_with("10.42.9.9"),
            &ca,
            &mut leaves,
        )))
        .unwrap();
    let moved = next_config(&mut configs).await;
    assert!(endpoints_of(&moved, store).contains("10.42.9.9"));

    // A listener outside the subset (a Redis proxy): NACKed with the reason, the
    // configuration kept.
    let mut bad = snapshot(&demo_with("10.42.9.9"), &ca, &mut leaves);
    let mut extra = flowgate_mesh::xds::Resources::default();
    extra.put(
        "refused".into(),
        envoy_types::pb::envoy::config::listener::v3::Listener {
            name: "refused".into(),
            address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                address: Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                        envoy_types::pb::envoy::config::core::v3::SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(
                                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(6379),
                            ),
                            ..Default::default()
                        },
                    ),
                ),
            }),
            filter_chains: vec![envoy_types::pb::envoy::config::listener::v3::FilterChain {
                filters: vec![envoy_types::pb::envoy::config::listener::v3::Filter {
                    name: "envoy.filters.network.redis_proxy".into(),
                    config_type: Some(
                        envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                            envoy_types::pb::google::protobuf::Any {
                                type_url: "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy".into(),
                                value: Vec::new(),
                            },
                        ),
                    ),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let part = bad.per_node.remove(node).unwrap();
    let mut resources = part.resources;
    resources.extend(extra);
    let bad = bad.with_owned_node(node.into(), part.owner, part.set, resources);
    snapshots.send(Arc::new(bad)).unwrap();
    let nacked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let p = status.status().into_iter().find(|p| p.node == node);
            if let Some(n) = p.and_then(|p| {
                p.types
                    .get(type_url::LISTENER)
                    .and_then(|t| t.nacked.clone())
            }) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the NACK reached the server");
    assert!(
        nacked.1.contains("listener `refused`")
            && nacked.1.contains("envoy.filters.network.redis_proxy"),
        "{nacked:?}"
    );
    let held = configs.borrow().clone().unwrap();
    assert!(!held.of(type_url::LISTENER).any(|(n, _)| n == "refused"));
    assert_eq!(held, moved, "nothing half applied");
    task.abort();

    // Restarted with what it held: nothing unchanged is sent again, and the configuration
    // is complete at once.
    let (out, mut configs) = watch::channel(None);
    let held_copy = (*held).clone();
    let restarted =
        tokio::spawn(async move { follow(channel, &options, held_copy, |_| Ok(()), &out).await });
    let again = next_config(&mut configs).await;
    assert!(again.missing().is_empty());
    assert!(endpoints_of(&again, store).contains("10.42.9.9"));
    restarted.abort();
}
