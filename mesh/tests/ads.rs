//! The ADS server's protocol, driven by a tonic ADS client over loopback: the first request
//! of a type is answered at once, full-state types go whole and named ones by name, ACKs
//! and NACKs are recorded per proxy, a stale nonce gets no answer, a snapshot change is
//! pushed (endpoints again after clusters), one proxy's NACK leaves another's stream alone;
//! delta: only changes are sent, removals and absent names are named, NACKs recorded, and a
//! reconnecting proxy's versions spare it what it holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use flowgate_mesh::xds::{AdsServer, Snapshot, grpc_resources, serve, type_url};
use flowgate_mesh::{MeshState, parse_manifests};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

fn mesh(endpoint_ip: &str) -> Snapshot {
    mesh_with(endpoint_ip, true)
}

fn mesh_with(endpoint_ip: &str, with_b: bool) -> Snapshot {
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: a }}\nspec: {{ selector: {{ app: a }}, ports: [{{ port: 80 }}] }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: b }}\nspec: {{ selector: {{ app: b }}, ports: [{{ port: 81 }}] }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: a-1, labels: {{ app: a }} }}\nstatus: {{ podIP: {endpoint_ip} }}\n"
    );
    let text = if with_b {
        text
    } else {
        text.split("---\n")
            .filter(|d| !d.contains("name: b }"))
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let state = MeshState::build(parse_manifests(&text, "m.yaml".as_ref()).unwrap()).unwrap();
    Snapshot::new(grpc_resources(&state))
}

struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: String,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, node: &str) -> Client {
        let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = c
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client {
            tx,
            rx,
            node: node.into(),
        }
    }

    async fn ask(&self, t: &str, names: &[&str], ack: Option<&DiscoveryResponse>) {
        self.tx
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: self.node.clone(),
                    ..Default::default()
                }),
                type_url: t.into(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
                response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn nack(&self, r: &DiscoveryResponse, why: &str) {
        self.tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: Some(RpcStatus {
                    code: 13,
                    message: why.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("a response within 5 s")
            .expect("the stream is open")
            .expect("not an error")
    }

    async fn nothing(&mut self) {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), self.rx.next())
                .await
                .is_err(),
            "no response expected"
        );
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    r.resources
        .iter()
        .map(|a| {
            if r.type_url == type_url::CLUSTER {
                Cluster::decode(a.value.as_slice()).unwrap().name
            } else {
                ClusterLoadAssignment::decode(a.value.as_slice())
                    .unwrap()
                    .cluster_name
            }
        })
        .collect()
}

#[tokio::test]
async fn sotw_subscriptions_acks_nacks_and_pushes() {
    let (server, snapshots) = AdsServer::new();
    snapshots.send(Arc::new(mesh("10.0.0.1"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = server.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, server, None, async {
        let _ = stopped.await;
    }));

    let mut c = Client::connect(addr, "proxy-1").await;
    // Wildcard CDS: every cluster.
    c.ask(type_url::CLUSTER, &[], None).await;
    let cds = c.next().await;
    assert_eq!(
        names(&cds),
        ["outbound|80||a.default", "outbound|81||b.default"]
    );
    // EDS by name: only that one.
    c.ask(type_url::ENDPOINT, &["outbound|80||a.default"], None)
        .await;
    let eds = c.next().await;
    assert_eq!(names(&eds), ["outbound|80||a.default"]);
    // ACKs: recorded, nothing sent back.
    c.ask(type_url::CLUSTER, &[], Some(&cds)).await;
    c.ask(type_url::ENDPOINT, &["outbound|80||a.default"], Some(&eds))
        .await;
    c.nothing().await;
    let st = status.status();
    let p = st.iter().find(|p| p.node == "proxy-1").unwrap();
    assert!(p.connected);
    assert_eq!(p.types[type_url::CLUSTER].acked, cds.version_info);
    assert_eq!(p.types[type_url::ENDPOINT].acked, eds.version_info);

    // A second proxy on its own stream.
    let mut other = Client::connect(addr, "proxy-2").await;
    other.ask(type_url::CLUSTER, &[], None).await;
    let other_cds = other.next().await;

    // An endpoint change: the new assignment is pushed to the subscriber of that name.
    snapshots.send(Arc::new(mesh("10.0.0.2"))).unwrap();
    let eds2 = c.next().await;
    assert_eq!(eds2.type_url, type_url::ENDPOINT);
    assert_ne!(eds2.version_info, eds.version_info);
    // proxy-2 subscribed to clusters only, which did not change: nothing for it.
    other.nothing().await;

    // proxy-1 NACKs it: recorded with the reason; nothing is re-sent.
    c.nack(&eds2, "endpoint rejected for the test").await;
    c.nothing().await;
    let st = status.status();
    let p = st.iter().find(|p| p.node == "proxy-1").unwrap();
    assert_eq!(
        p.types[type_url::ENDPOINT].nacked,
        Some((
            eds2.version_info.clone(),
            "endpoint rejected for the test".into()
        ))
    );
    let q = st.iter().find(|p| p.node == "proxy-2").unwrap();
    assert!(
        q.types[type_url::CLUSTER].nacked.is_none(),
        "one proxy's NACK is its own"
    );

    // A stale nonce (the first EDS response's) gets no answer.
    c.ask(
        type_url::ENDPOINT,
        &["outbound|80||a.default", "outbound|81||b.default"],
        Some(&eds),
    )
    .await;
    c.nothing().await;
    // The same with the current nonce and a new name: answered with both.
    c.ask(
        type_url::ENDPOINT,
        &["outbound|80||a.default", "outbound|81||b.default"],
        Some(&eds2),
    )
    .await;
    let eds3 = c.next().await;
    assert_eq!(
        names(&eds3),
        ["outbound|80||a.default", "outbound|81||b.default"]
    );

    // proxy-2's stream still works: it ACKs and stays quiet.
    other.ask(type_url::CLUSTER, &[], Some(&other_cds)).await;
    other.nothing().await;

    // The wildcard subscriptions survive their ACKs (which name nothing): a cluster going
    // away sends both proxies the remaining set.
    snapshots
        .send(Arc::new(mesh_with("10.0.0.2", false)))
        .unwrap();
    for client in [&mut c, &mut other] {
        let cds2 = loop {
            let r = client.next().await;
            if r.type_url == type_url::CLUSTER {
                break r;
            }
        };
        assert_eq!(names(&cds2), ["outbound|80||a.default"]);
    }

    // A request naming too many resources ends that stream, with the reason.
    let mut greedy = Client::connect(addr, "greedy").await;
    let many: Vec<String> = (0..100_001).map(|i| format!("c{i}")).collect();
    greedy
        .tx
        .send(DiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names: many,
            ..Default::default()
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), greedy.rx.next())
        .await
        .expect("an answer within 5 s");
    assert!(
        matches!(&end, Some(Err(s)) if s.code() == tonic::Code::ResourceExhausted),
        "{end:?}"
    );

    drop(c);
    drop(other);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn connect(addr: std::net::SocketAddr) -> Delta {
        let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = c
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("a response within 5 s")
            .expect("the stream is open")
            .expect("not an error")
    }

    async fn nothing(&mut self) {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), self.rx.next())
                .await
                .is_err(),
            "no response expected"
        );
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

#[tokio::test]
async fn delta_sends_changes_and_names_what_is_gone() {
    let (server, snapshots) = AdsServer::new();
    snapshots.send(Arc::new(mesh("10.0.0.1"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = server.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, server, None, async {
        let _ = stopped.await;
    }));

    let mut d = Delta::connect(addr).await;
    // A first CDS request naming nothing: wildcard, every cluster.
    d.send(DeltaDiscoveryRequest {
        node: node("delta-1"),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await;
    let cds = d.next().await;
    assert_eq!(
        delta_names(&cds),
        ["outbound|80||a.default", "outbound|81||b.default"]
    );
    assert!(cds.removed_resources.is_empty());
    d.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await;
    // Endpoints by name, one of which does not exist: it is named as removed.
    d.send(DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINT.into(),
        resource_names_subscribe: vec![
            "outbound|80||a.default".into(),
            "outbound|99||nope.default".into(),
        ],
        ..Default::default()
    })
    .await;
    let eds = d.next().await;
    assert_eq!(delta_names(&eds), ["outbound|80||a.default"]);
    assert_eq!(eds.removed_resources, ["outbound|99||nope.default"]);
    d.send(DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINT.into(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await;
    d.nothing().await;
    let st = status.status();
    let p = st.iter().find(|p| p.node == "delta-1").unwrap();
    assert_eq!(p.types[type_url::CLUSTER].acked, cds.system_version_info);
    assert_eq!(p.types[type_url::ENDPOINT].acked, eds.system_version_info);

    // An endpoint moves: only that assignment is sent; clusters did not change.
    snapshots.send(Arc::new(mesh("10.0.0.2"))).unwrap();
    let eds2 = d.next().await;
    assert_eq!(eds2.type_url, type_url::ENDPOINT);
    assert_eq!(delta_names(&eds2), ["outbound|80||a.default"]);
    assert_ne!(eds2.resources[0].version, eds.resources[0].version);
    d.nothing().await;
    // NACKed: recorded, not re-sent.
    d.send(DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINT.into(),
        response_nonce: eds2.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 13,
            message: "no thanks".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    d.nothing().await;
    let st = status.status();
    let p = st.iter().find(|p| p.node == "delta-1").unwrap();
    assert_eq!(
        p.types[type_url::ENDPOINT].nacked,
        Some((eds2.system_version_info.clone(), "no thanks".into()))
    );

    // Service b goes away: its cluster is named as removed, nothing else is sent.
    snapshots
        .send(Arc::new(mesh_with("10.0.0.2", false)))
        .unwrap();
    let gone = d.next().await;
    assert_eq!(gone.type_url, type_url::CLUSTER);
    assert!(gone.resources.is_empty());
    assert_eq!(gone.removed_resources, ["outbound|81||b.default"]);

    // A reconnecting proxy that holds cluster a at its version gets nothing for it.
    let held = cds.resources[0].clone();
    let mut again = Delta::connect(addr).await;
    again
        .send(DeltaDiscoveryRequest {
            node: node("delta-2"),
            type_url: type_url::CLUSTER.into(),
            initial_resource_versions: [(held.name.clone(), held.version.clone())].into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await;
    let first = again.next().await;
    assert!(first.resources.is_empty(), "{:?}", delta_names(&first));
    assert!(first.removed_resources.is_empty());

    drop(d);
    drop(again);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
