//! The control plane at scale (not a criterion bench): the real `flowgate-controller`
//! serving 500 services × 5 endpoints (2500 pods) to 1000 simulated sidecars — lightweight
//! delta ADS clients in this process, each on its own TLS connection proven by a
//! bootstrap token — then one endpoint changed in the manifests, several times: how long
//! until every affected proxy has the change and has ACKed it (p50, p99, max; from the
//! file's write, so the controller's 250 ms directory poll is included), the controller's
//! CPU per change and its RSS.
//!
//! ```text
//! cargo bench --bench xds_scale [-- PROXIES SERVICES ENDPOINTS CHANGES]
//!     defaults 1000 500 5 5; prints one JSON line per change and a summary line
//! ```
//!
//! A simulated proxy subscribes like an Envoy sidecar: clusters and listeners (wildcard),
//! then the endpoints of every cluster, the `outbound` route configuration and its
//! secrets, ACKing every response at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use flowgate::mesh::token::TokenKey;
use flowgate::mesh::xds::type_url;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

struct Scale {
    proxies: usize,
    services: usize,
    endpoints: usize,
    changes: usize,
}

const NAMESPACES: usize = 10;

fn pod_ip(i: usize, generation: usize) -> String {
    // 10.<gen>.x.y: a change moves one pod to another generation's address.
    format!("10.{}.{}.{}", 1 + generation % 200, i / 250, i % 250 + 1)
}

/// The manifests: NAMESPACES namespaces, `services` services (each its own service account)
/// with `endpoints` pods each; pod 0 of service 0 at generation `generation`'s address.
fn manifests(scale: &Scale, generation: usize) -> String {
    let mut s = String::new();
    for n in 0..NAMESPACES {
        s += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{ name: ns{n} }}\n---\n");
    }
    for svc in 0..scale.services {
        let ns = svc % NAMESPACES;
        s += &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: svc{svc}, namespace: ns{ns} }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: svc{svc}, namespace: ns{ns} }}\nspec:\n  selector: {{ app: svc{svc} }}\n  ports: [{{ name: http, port: 80, targetPort: 8080 }}]\n---\n"
        );
        for e in 0..scale.endpoints {
            let i = svc * scale.endpoints + e;
            let ip = pod_ip(i, if i == 0 { generation } else { 0 });
            s += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{ name: svc{svc}-{e}, namespace: ns{ns}, labels: {{ app: svc{svc} }} }}\nspec: {{ serviceAccountName: svc{svc} }}\nstatus: {{ podIP: {ip} }}\n---\n"
            );
        }
    }
    s
}

/// `(node id, namespace, service account)` of the `i`th pod.
fn pod(scale: &Scale, i: usize) -> (String, String, String) {
    let svc = i / scale.endpoints;
    let ns = format!("ns{}", svc % NAMESPACES);
    (
        format!("svc{svc}-{}.{ns}", i % scale.endpoints),
        ns,
        format!("svc{svc}"),
    )
}

fn proc_stat(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (Duration::from_millis(ticks * 10), rss_kb)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a simulated proxy reports: when it ACKed each generation's endpoint change.
type Seen = mpsc::UnboundedSender<(usize, usize, Instant)>;

/// What every simulated proxy shares.
#[derive(Clone)]
struct Sim {
    endpoint: Endpoint,
    generations: Arc<Vec<String>>,
    seen: Seen,
    ready: mpsc::UnboundedSender<usize>,
    stop: watch::Receiver<bool>,
}

/// One simulated sidecar. Reports `(proxy, generation, when)` on `seen` each time the
/// endpoints of service 0 arrive with pod 0 at a generation's address; `ready` once it
/// holds every cluster's endpoints.
async fn proxy(n: usize, node: String, token: String, sim: Sim) {
    let Sim {
        endpoint,
        generations,
        seen,
        ready,
        mut stop,
    } = sim;
    let mut attempts = 0;
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) => {
                attempts += 1;
                if attempts == 20 {
                    eprintln!("proxy {n}: cannot connect: {e:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let first = |t: &str, names: Vec<String>| DeltaDiscoveryRequest {
        node: Some(Node {
            id: node.clone(),
            ..Default::default()
        }),
        type_url: t.into(),
        resource_names_subscribe: names,
        ..Default::default()
    };
    tx.send(first(type_url::CLUSTER, vec!["*".into()]))
        .await
        .unwrap();
    tx.send(first(type_url::LISTENER, vec!["*".into()]))
        .await
        .unwrap();
    tx.send(first(
        type_url::SECRET,
        vec!["default".into(), "ROOTCA".into()],
    ))
    .await
    .unwrap();
    tx.send(first(type_url::ROUTE, vec!["outbound".into()]))
        .await
        .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = client
        .delta_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
    let mut clusters: BTreeSet<String> = BTreeSet::new();
    let mut endpoints: BTreeSet<String> = BTreeSet::new();
    let mut said_ready = false;
    let watched = "outbound|80||svc0.ns0|mtls";
    loop {
        let msg: DeltaDiscoveryResponse = tokio::select! {
            m = stream.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    eprintln!("proxy {n}: {e}");
                    return;
                }
                None => return,
            },
            _ = stop.changed() => return,
        };
        let now = Instant::now();
        if msg.type_url == type_url::ENDPOINT {
            // Asked for and absent (a static cluster's): answered too.
            endpoints.extend(msg.removed_resources.iter().cloned());
            for r in &msg.resources {
                endpoints.insert(r.name.clone());
                if r.name == watched
                    && let Some(any) = &r.resource
                {
                    let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
                    let text = format!("{cla:?}");
                    for (g, ip) in generations.iter().enumerate() {
                        if text.contains(&format!("\"{ip}\"")) {
                            let _ = seen.send((n, g, now));
                        }
                    }
                }
            }
        }
        let mut subscribe = Vec::new();
        if msg.type_url == type_url::CLUSTER {
            for r in &msg.resources {
                if clusters.insert(r.name.clone()) {
                    subscribe.push(r.name.clone());
                }
            }
        }
        // ACK, subscribing to the new clusters' endpoints.
        let ack = DeltaDiscoveryRequest {
            type_url: msg.type_url.clone(),
            response_nonce: msg.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
        if !subscribe.is_empty() {
            let sub = DeltaDiscoveryRequest {
                type_url: type_url::ENDPOINT.into(),
                resource_names_subscribe: subscribe,
                ..Default::default()
            };
            if tx.send(sub).await.is_err() {
                return;
            }
        }
        if !said_ready && !clusters.is_empty() && endpoints.len() >= clusters.len() {
            said_ready = true;
            let _ = ready.send(n);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    let scale = Scale {
        proxies: args.first().copied().unwrap_or(1000),
        services: args.get(1).copied().unwrap_or(500),
        endpoints: args.get(2).copied().unwrap_or(5),
        changes: args.get(3).copied().unwrap_or(5),
    };
    assert!(scale.proxies <= scale.services * scale.endpoints);
    let dir = std::env::temp_dir().join(format!("flowgate-xds-scale-{}", std::process::id()));
    let mesh = dir.join("mesh");
    let state = dir.join("state");
    std::fs::create_dir_all(&mesh).unwrap();
    std::fs::write(mesh.join("mesh.yaml"), manifests(&scale, 0)).unwrap();
    let key = TokenKey::load_or_generate(&state.join("token.key")).unwrap();
    let (ads, admin) = (free_port(), free_port());
    let controller = Controller(
        Command::new(env!("CARGO_BIN_EXE_flowgate-controller"))
            .args(["run", "--source"])
            .arg(format!("dir:{}", mesh.display()))
            .args(["--listen", &format!("127.0.0.1:{ads}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--state")
            .arg(&state)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = controller.0.id();
    let started = Instant::now();
    while !state.join("ca.pem").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the controller never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "controller up in {:.1} s ({} services × {} endpoints)",
        started.elapsed().as_secs_f64(),
        scale.services,
        scale.endpoints
    );
    let bundle = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let generations: Arc<Vec<String>> =
        Arc::new((0..=scale.changes).map(|g| pod_ip(0, g)).collect());
    rt.block_on(async {
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{ads}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&bundle))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect_timeout(Duration::from_secs(10));
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let sim = Sim {
            endpoint,
            generations: generations.clone(),
            seen: seen_tx,
            ready: ready_tx,
            stop,
        };
        let t0 = Instant::now();
        for n in 0..scale.proxies {
            let (node, ns, sa) = pod(&scale, n);
            let token = key
                .issue(&ns, &sa, Duration::from_secs(3600), SystemTime::now())
                .unwrap();
            tokio::spawn(proxy(n, node, token, sim.clone()));
        }
        let mut up = 0;
        while up < scale.proxies {
            match tokio::time::timeout(Duration::from_secs(300), ready.recv()).await {
                Ok(Some(_)) => up += 1,
                _ => panic!("only {up} of {} proxies got their configuration", scale.proxies),
            }
        }
        // Drain the initial sightings of generation 0.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while seen.try_recv().is_ok() {}
        let (cpu0, rss0) = proc_stat(pid);
        eprintln!(
            "{} proxies configured in {:.1} s; controller RSS {} MiB",
            scale.proxies,
            t0.elapsed().as_secs_f64(),
            rss0 / 1024
        );
        let mut all = Vec::new();
        let mut cpus = Vec::new();
        for g in 1..=scale.changes {
            let (cpu_before, _) = proc_stat(pid);
            let write_at = Instant::now();
            let tmp = mesh.join(".mesh.yaml.tmp");
            std::fs::write(&tmp, manifests(&scale, g)).unwrap();
            std::fs::rename(&tmp, mesh.join("mesh.yaml")).unwrap();
            let mut lat: Vec<Duration> = Vec::new();
            let deadline = write_at + Duration::from_secs(60);
            while lat.len() < scale.proxies {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, seen.recv()).await {
                    Ok(Some((_, gen_seen, at))) if gen_seen == g => lat.push(at - write_at),
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            // Let the controller finish what the change set off before reading its CPU.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (cpu_after, rss) = proc_stat(pid);
            let cpu = cpu_after - cpu_before;
            lat.sort();
            println!(
                "{{\"change\":{g},\"acked\":{},\"of\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"controller_cpu_ms\":{},\"rss_mib\":{}}}",
                lat.len(),
                scale.proxies,
                percentile(&lat, 0.5).as_millis(),
                percentile(&lat, 0.99).as_millis(),
                lat.last().copied().unwrap_or_default().as_millis(),
                cpu.as_millis(),
                rss / 1024
            );
            all.extend(lat);
            cpus.push(cpu);
        }
        all.sort();
        let (cpu_end, rss_end) = proc_stat(pid);
        cpus.sort();
        println!(
            "{{\"summary\":true,\"proxies\":{},\"services\":{},\"endpoints\":{},\"changes\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"median_cpu_per_change_ms\":{},\"rss_mib\":{},\"cpu_total_s\":{:.1}}}",
            scale.proxies,
            scale.services,
            scale.endpoints,
            scale.changes,
            percentile(&all, 0.5).as_millis(),
            percentile(&all, 0.99).as_millis(),
            all.last().copied().unwrap_or_default().as_millis(),
            cpus.get(cpus.len() / 2).copied().unwrap_or_default().as_millis(),
            rss_end / 1024,
            (cpu_end - cpu0).as_secs_f64()
        );
        let _ = stop_tx.send(true);
    });
    drop(controller);
    let _ = std::fs::remove_dir_all(&dir);
}
