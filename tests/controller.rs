//! `flowgate-controller` on the command line: `check` on the bookstore demo's manifests and
//! on broken copies (exit 2, every error at file:line), `token` (a token the mesh library
//! verifies for exactly that account), the CLI's refusals, and `run` serving ADS to a real
//! proxyless gRPC client (Python `grpcio` resolving `xds:///greeter.shop`) that follows an
//! endpoint change made in the manifests.
#![cfg(feature = "mesh")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::mesh::*;
use common::podnet::PodNet;
use common::{Proc, TempDir, daemon, python_module, reserve_port};
use flowgate::mesh::token::TokenKey;

fn demo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh")
}

#[test]
fn check_passes_the_demo_and_names_each_error_of_a_broken_copy() {
    let (code, out, err) = controller(&["check", demo().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok — 5 namespaces, 4 services, 4 service accounts, 5 pods, 2 traffic targets, 1 traffic splits; permissive mode on"), "{out}");

    let dir = TempDir::new("controller-check");
    for e in std::fs::read_dir(demo()).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        dir.write(p.file_name().unwrap().to_str().unwrap(), &text);
    }
    let split = std::fs::read_to_string(dir.path("split.yaml")).unwrap();
    dir.write("split.yaml", &split.replace("weight: 100", "weight: 0"));
    dir.write(
        "extra.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: { name: s }\n",
    );
    let (code, _, err) = controller(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("extra.yaml:2:7: unknown kind `Secret`"),
        "{err}"
    );
    // One file alone is checked too (its references to other files then fail).
    let (code, _, err) = controller(&["check", dir.path("extra.yaml").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown kind `Secret`"), "{err}");
    std::fs::remove_file(dir.path("extra.yaml")).unwrap();
    let (code, _, err) = controller(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "split.yaml:3:1: TrafficSplit bookstore/bookstore-split: every weight is zero"
        ),
        "{err}"
    );
}

#[test]
fn tokens_verify_for_their_account_only() {
    let dir = TempDir::new("controller-token");
    let state = dir.path("state");
    let (code, out, err) = controller(&[
        "token",
        "--state",
        state.to_str().unwrap(),
        "--ttl",
        "10m",
        "bookstore/bookstore",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let key = TokenKey::load_or_generate(&state.join("token.key")).unwrap();
    assert_eq!(
        key.verify(token, SystemTime::now()).unwrap(),
        ("bookstore".to_string(), "bookstore".to_string())
    );
    // The same state directory keeps the same key.
    let (_, again, _) = controller(&[
        "token",
        "bookbuyer/bookbuyer",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(
        key.verify(again.trim(), SystemTime::now()).unwrap().1,
        "bookbuyer"
    );

    let (code, _, err) = controller(&["token", "no-slash", "--state", state.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("NAMESPACE/SERVICE-ACCOUNT"), "{err}");
    let (code, _, err) = controller(&[
        "token",
        "a/b",
        "--ttl",
        "soon",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = controller(&["check", "--bogus", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
}

/// Two greeter servers answering their name, one per loopback address, same port.
const SERVERS: &str = r#"
import sys, time
from concurrent import futures
import grpc
servers = []
for spec in sys.argv[1:]:
    addr, name = spec.split("=")
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    h = grpc.method_handlers_generic_handler("greeter.Greeter", {
        "Hello": grpc.unary_unary_rpc_method_handler(lambda req, ctx, n=name: n.encode())})
    s.add_generic_rpc_handlers((h,))
    s.add_insecure_port(addr)
    s.start()
    servers.append(s)
time.sleep(120)
"#;

/// A proxyless client: calls `xds:///greeter.shop` every 50 ms for `argv[1]` seconds and
/// prints each answer (or the error code) on a line.
const CLIENT: &str = r#"
import sys, time
import grpc
ch = grpc.insecure_channel("xds:///greeter.shop")
hello = ch.unary_unary("/greeter.Greeter/Hello")
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        print(hello(b"hi", timeout=2).decode(), flush=True)
    except grpc.RpcError as e:
        print("error", e.code(), flush=True)
    time.sleep(0.05)
"#;

fn pods(ip: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ app: greeter }} }}\nstatus: {{ podIP: {ip} }}\n"
    )
}

/// Waits for a line equal to `want` on `lines`, up to `limit`; returns what came before.
fn wait_for(
    lines: &mpsc::Receiver<String>,
    want: &str,
    limit: Duration,
) -> Result<Vec<String>, Vec<String>> {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) if l == want => return Ok(seen),
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    Err(seen)
}

#[test]
fn run_serves_a_proxyless_grpc_client_that_follows_endpoint_changes() {
    if !python_module("grpc", "grpcio") {
        return;
    }
    let dir = TempDir::new("controller-grpc");
    let port = reserve_port();
    let ads = reserve_port();
    let admin = reserve_port();
    dir.write("servers.py", SERVERS);
    dir.write("client.py", CLIENT);
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("greeter.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: greeter, namespace: shop }}\nspec:\n  selector: {{ app: greeter }}\n  ports: [{{ name: grpc, port: 50051, targetPort: {port} }}]\n"
        ),
    )
    .unwrap();
    std::fs::write(manifests.join("pods.yaml"), pods("127.0.0.2", "greeter-a")).unwrap();

    let servers = daemon(
        Command::new("python3")
            .arg(dir.path("servers.py"))
            .arg(format!("127.0.0.2:{port}=a"))
            .arg(format!("127.0.0.3:{port}=b")),
        "greeter servers",
    );
    let up = |ip: [u8; 4]| {
        std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok()
    };
    assert!(
        common::wait_until(Duration::from_secs(15), || up([127, 0, 0, 2])
            && up([127, 0, 0, 3])),
        "greeter servers: {}",
        servers.stderr_so_far()
    );
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    let admin_addr = format!("127.0.0.1:{admin}");

    // The client proves itself with a mesh certificate (gRPC's `tls` bootstrap
    // credentials): it cannot send a CSR or a token.
    let creds = dir.path("creds");
    let (code, _, err) = controller(&[
        "certificate",
        "shop/greeter-client",
        "--out",
        creds.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let file = |f: &str| creds.join(f).display().to_string();
    let bootstrap = dir.write(
        "bootstrap.json",
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "127.0.0.1:{ads}", "channel_creds": [{{"type": "tls", "config": {{"ca_certificate_file": "{}", "certificate_file": "{}", "private_key_file": "{}"}}}}], "server_features": ["xds_v3"]}}], "node": {{"id": "greeter-client", "cluster": "test"}}}}"#,
            file("ca.pem"),
            file("cert.pem"),
            file("key.pem")
        ),
    );
    let mut client = Command::new("python3")
        .arg(dir.path("client.py"))
        .arg("40")
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = client.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let client = Proc::new(client, "grpc client");

    // The client resolves the service through the controller and reaches pod a.
    let first = wait_for(&lines, "a", Duration::from_secs(20));
    assert!(
        first.is_ok(),
        "no answer from a: {:?}; controller: {}",
        first,
        ctl.stderr_so_far()
    );
    // Replace pod a with pod b in the manifests: the client follows.
    std::fs::write(manifests.join("pods.yaml"), pods("127.0.0.3", "greeter-b")).unwrap();
    let moved = wait_for(&lines, "b", Duration::from_secs(15));
    assert!(
        moved.is_ok(),
        "never reached b: {:?}; controller: {}",
        moved,
        ctl.stderr_so_far()
    );
    // From then on only b answers.
    let after: Vec<String> = (0..10)
        .filter_map(|_| lines.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    assert!(after.iter().all(|l| l == "b"), "{after:?}");
    // `status` shows the client and what it ACKed.
    let (code, out, err) = controller(&["status", "--admin", &admin_addr]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("proxy greeter-client (connected; shop/greeter-client (by certificate), certificate expires at unix "),
        "{out}"
    );
    assert!(out.contains("  Listener: sent "), "{out}");
    let acked = out
        .lines()
        .find(|l| l.contains("ClusterLoadAssignment: sent "))
        .is_some_and(|l| {
            let (sent, acked) = l.split_once(" acked ").unwrap();
            sent.ends_with(acked.trim())
        });
    assert!(acked, "the client ACKed the endpoints it was sent: {out}");

    // A broken change is refused and the mesh stays served.
    std::fs::write(
        manifests.join("pods.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: [\n",
    )
    .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || ctl
            .stderr_so_far()
            .contains("manifests refused")),
        "{}",
        ctl.stderr_so_far()
    );
    let still: Vec<String> = (0..5)
        .filter_map(|_| lines.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    assert!(
        !still.is_empty() && still.iter().all(|l| l == "b"),
        "{still:?}"
    );
    let (_, out, _) = controller(&["status", "--admin", &admin_addr]);
    assert!(
        out.contains("manifest error: ") && out.contains("pods.yaml:"),
        "{out}"
    );
    let (code, _, err) = controller(&["status", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach"), "{err}");

    drop(client);
    drop(servers);
}

/// Real Envoy as an xDS client: clusters and endpoints come from the controller over ADS
/// (a static listener routes to the mesh's cluster), an endpoint change in the manifests
/// moves Envoy's traffic, and `status` shows what Envoy ACKed. (NACKs are driven by a
/// client of the test's own in `mesh/tests/ads.rs`: the compiler gives Envoy nothing to
/// refuse.)
#[test]
fn envoy_takes_clusters_and_endpoints_from_the_controller() {
    envoy_case("GRPC");
}

/// The same with incremental xDS (`api_type: DELTA_GRPC`).
#[test]
fn envoy_over_delta_ads_takes_clusters_and_endpoints_from_the_controller() {
    envoy_case("DELTA_GRPC");
}

fn envoy_case(api_type: &str) {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new(&format!("controller-envoy-{api_type}"));
    let (port, ads, admin, front, envoy_admin) = (
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    );
    let ndir = TempDir::new("controller-envoy-nginx");
    let ng = common::nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.0.2:{port}; location / {{ return 200 \"a\"; }} }} \
             server {{ listen 127.0.0.3:{port}; location / {{ return 200 \"b\"; }} }}"
        ),
    );
    let up = |ip: [u8; 4]| {
        std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok()
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || up([127, 0, 0, 2])
            && up([127, 0, 0, 3])),
        "nginx: {}",
        ng.stderr_so_far()
    );
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: 80, targetPort: {port} }}]\n"
        ),
    )
    .unwrap();
    let pod = |ip: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ app: web }} }}\nstatus: {{ podIP: {ip} }}\n"
        )
    };
    std::fs::write(manifests.join("pods.yaml"), pod("127.0.0.2", "web-a")).unwrap();
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    // Not a pod's sidecar: any proven account gets the shared resources.
    let (xds_cluster, xds_grpc) = (xds_cluster(&[ads], &state), xds_grpc(&state, "shop/front"));

    let bootstrap = dir.write(
        "envoy.yaml",
        &format!(
            r#"node: {{ id: envoy-1, cluster: test }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {envoy_admin} }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: {xds_grpc}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  listeners:
  - name: front
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {front} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            validate_clusters: false
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: "outbound|80||web.shop" }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{xds_cluster}"#
        ),
    );
    let mut envoy = daemon(
        Command::new("envoy").arg("-c").arg(&bootstrap).args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "error",
            "--use-dynamic-base-id",
        ]),
        "envoy",
    );
    envoy.wait_port(front);
    let get = || common::curl(&["-s", "-m", "2", &format!("http://127.0.0.1:{front}/")]).1;
    assert!(
        common::wait_until(Duration::from_secs(20), || get() == "a"),
        "envoy never reached a: {:?}; controller: {}; envoy: {}",
        get(),
        ctl.stderr_so_far(),
        envoy.stderr_so_far()
    );
    std::fs::write(manifests.join("pods.yaml"), pod("127.0.0.3", "web-b")).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(15), || get() == "b"),
        "envoy did not follow the endpoint change: {:?}",
        get()
    );
    let admin_addr = format!("127.0.0.1:{admin}");
    // Envoy ACKed the clusters and endpoint assignments it was sent.
    let acked = |ty: &str| {
        let (_, out, _) = controller(&["status", "--admin", &admin_addr]);
        out.lines()
            .find(|l| l.starts_with(&format!("  {ty}: sent ")))
            .and_then(|l| l.split_once(" acked "))
            .is_some_and(|(sent, acked)| !acked.is_empty() && sent.ends_with(acked.trim()))
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || acked("Cluster")
            && acked("ClusterLoadAssignment")),
        "{}",
        controller(&["status", "--admin", &admin_addr]).1
    );
    let (_, out, _) = controller(&["status", "--admin", &admin_addr]);
    assert!(
        out.contains("proxy envoy-1 (connected; shop/front (by token))"),
        "{out}"
    );
    assert!(!out.contains("NACKed"), "{out}");
    drop(envoy);
}

/// Real Envoy gets its mesh certificate and trust bundle over SDS (secrets `default` and
/// `ROOTCA` for its node `client-1.shop`, from the controller's SDS service): an upstream
/// nginx that requires a client certificate from the mesh's root answers with Envoy's
/// identity.
#[test]
fn envoy_gets_its_mesh_certificate_over_sds() {
    use flowgate::mesh::ca::{Ca, SpiffeId};
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("controller-sds");
    let state = dir.path("state");
    let (np, ads, admin, front, envoy_admin) = (
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    );
    // The root the controller will load; nginx's own certificate from it.
    let ca = Ca::load_or_generate(&state, "cluster.local", Duration::from_secs(3600)).unwrap();
    let web = ca
        .issue(&SpiffeId::new("cluster.local", "shop", "web").unwrap())
        .unwrap();
    let cert = dir.write("web.pem", &web.cert_pem);
    let key = dir.write("web.key", web.key_pem.as_deref().unwrap());
    let ndir = TempDir::new("controller-sds-nginx");
    let mut ng = common::nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.0.1:{np} ssl; ssl_certificate {}; ssl_certificate_key {}; \
             ssl_client_certificate {}; ssl_verify_client on; \
             location / {{ return 200 \"$ssl_client_verify $ssl_client_s_dn\"; }} }}",
            cert.display(),
            key.display(),
            state.join("root.pem").display()
        ),
    );
    ng.wait_port(np);
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("client.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: client, namespace: shop }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: client-1, namespace: shop }\nspec: { serviceAccountName: client }\nstatus: { podIP: 127.0.0.5 }\n",
    )
    .unwrap();
    let ctl = run_controller(&manifests, ads, admin, &state);
    // Static clusters take their secrets from the standalone SDS service (Envoy 1.40
    // crashes when a static cluster names ADS as its SDS source before ADS is up).
    let (xds_cluster, xds_grpc) = (xds_cluster(&[ads], &state), xds_grpc(&state, "shop/client"));
    let sds = format!(
        "{{ api_config_source: {{ api_type: GRPC, transport_api_version: V3, grpc_services: {xds_grpc} }}, resource_api_version: V3 }}"
    );
    let bootstrap = dir.write(
        "envoy.yaml",
        &format!(
            r#"node: {{ id: client-1.shop, cluster: client }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {envoy_admin} }} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: {xds_grpc}
static_resources:
  listeners:
  - name: front
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {front} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: web }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{xds_cluster}  - name: web
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {np} }} }} }} }}] }}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: web.shop
        common_tls_context:
          tls_certificate_sds_secret_configs: [{{ name: default, sds_config: {sds} }}]
          validation_context_sds_secret_config: {{ name: ROOTCA, sds_config: {sds} }}
"#
        ),
    );
    let mut envoy = daemon(
        Command::new("envoy").arg("-c").arg(&bootstrap).args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "error",
            "--use-dynamic-base-id",
        ]),
        "envoy",
    );
    envoy.wait_port(front);
    let get = || common::curl(&["-s", "-m", "2", &format!("http://127.0.0.1:{front}/")]).1;
    assert!(
        common::wait_until(Duration::from_secs(20), || get().starts_with("SUCCESS ")),
        "no mutual TLS through Envoy: {:?}; controller: {}; envoy: {}",
        get(),
        ctl.stderr_so_far(),
        envoy.stderr_so_far()
    );
    let answer = get();
    assert!(answer.contains("CN=client.shop"), "{answer}");
    let (_, out, _) = controller(&["status", "--admin", &format!("127.0.0.1:{admin}")]);
    assert!(
        out.contains(
            "proxy client-1.shop (connected; shop/client (by token), certificate expires at unix "
        ),
        "{out}"
    );
    assert!(out.contains("  Secret: sent "), "{out}");
}

/// Two real Envoy sidecars configured only by the controller (ADS: listeners, clusters,
/// endpoints and their SDS secrets), in explicit proxy mode on loopback addresses: the
/// client's request to `web.shop` leaves through its sidecar's outbound listener, crosses
/// to the web pod's sidecar over mutual TLS (the inbound listener counts the handshake),
/// and reaches the web workload.
#[test]
fn two_envoy_sidecars_talk_mtls_from_the_controllers_config() {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let pair = Pair::start("controller-pair", 10, "");
    let (ctl, a, b, admin, admin_b) = (&pair.ctl, &pair.a, &pair.b, pair.admin, pair.admin_b);
    let url = format!("http://127.0.{}.5:15001/books", pair.net);
    let get = || common::curl(&["-s", "-m", "2", "-H", "Host: web.shop", &url]).1;
    assert!(
        common::wait_until(Duration::from_secs(30), || get() == "web web.shop"),
        "no answer through the sidecars: {:?}; controller: {}; a: {}; b: {}; status: {}",
        get(),
        ctl.stderr_so_far(),
        a.stderr_so_far(),
        b.stderr_so_far(),
        controller(&["status", "--admin", &format!("127.0.0.1:{admin}")]).1
    );
    // The web sidecar's inbound listener did the TLS handshakes.
    let (_, stats, _) = common::curl(&[
        "-s",
        &format!("http://127.0.0.1:{admin_b}/stats?filter=ssl.handshake"),
    ]);
    let handshakes: u64 = stats
        .lines()
        .filter(|l| l.contains("15006"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(handshakes >= 1, "{stats}");
    // Without a client certificate the inbound port refuses.
    let inbound = format!("https://127.0.{}.6:15006/", pair.net);
    let (ok, _, _) = common::curl(&["-s", "-k", "-m", "2", &inbound]);
    assert!(
        !ok,
        "the inbound listener served a client without a mesh certificate"
    );
}

/// A client pod (`client-1`, 127.0.NET.5) and a web pod (`web-1`, 127.0.NET.6, nginx
/// answering `web <host>`), each behind an Envoy sidecar configured by a controller. Each
/// test takes its own NET: Envoy binds its listeners with `SO_REUSEPORT`, so two tests on
/// one address would share each other's connections.
struct Pair {
    net: u8,
    // Dropped in this order: sidecars, controller, nginx, files.
    a: Proc,
    b: Proc,
    ctl: Proc,
    _nginx: (Proc, TempDir),
    dir: TempDir,
    ads: u16,
    admin: u16,
    admin_a: u16,
    admin_b: u16,
}

impl Pair {
    /// Starts it all; `mesh_config` (a manifest, or empty) goes with the manifests.
    fn start(tag: &str, net: u8, mesh_config: &str) -> Pair {
        let dir = TempDir::new(tag);
        let (app, ads, admin, admin_a, admin_b) = (
            reserve_port(),
            reserve_port(),
            reserve_port(),
            reserve_port(),
            reserve_port(),
        );
        let (ng, ndir) = web_app(tag, &format!("127.0.{net}.6"), app, "web $http_host");
        let manifests = dir.path("mesh");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("shop.yaml"), shop(net, app, mesh_config)).unwrap();
        let ctl = run_controller(&manifests, ads, admin, &dir.path("state"));
        let a = envoy_sidecar(&dir, "client-1.shop", "shop/client", admin_a, &[ads]);
        let b = envoy_sidecar(&dir, "web-1.shop", "shop/web", admin_b, &[ads]);
        Pair {
            net,
            a,
            b,
            ctl,
            _nginx: (ng, ndir),
            dir,
            ads,
            admin,
            admin_a,
            admin_b,
        }
    }
}

/// One request through the client's sidecar on a new connection: the body of a 200, or
/// what went wrong.
fn through_pair(net: u8) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("127.0.{net}.5:15001").parse().unwrap(),
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /books HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(resp.lines().next().unwrap_or("no response").to_string()),
    }
}

/// Requests through the client's sidecar for `run`, 20 a second, each on a new
/// connection, calling `between(elapsed)` after each: how many were answered `web web.shop`,
/// and what went wrong with the others (each with its time).
fn load_through_pair(
    net: u8,
    run: Duration,
    mut between: impl FnMut(Duration),
) -> (u32, Vec<String>) {
    let start = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    while start.elapsed() < run {
        let tick = Instant::now();
        match through_pair(net) {
            Ok(body) if body == "web web.shop" => ok += 1,
            Ok(body) => failed.push(format!("{:.1}s: {body}", start.elapsed().as_secs_f64())),
            Err(e) => failed.push(format!("{:.1}s: {e}", start.elapsed().as_secs_f64())),
        }
        between(start.elapsed());
        if let Some(left) = Duration::from_millis(50).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    (ok, failed)
}

/// The serial numbers of the certificate an Envoy presents and of the roots it trusts, as
/// SDS gave them (its admin `/certs`; the bootstrap's trust of the controller, read from a
/// file, left out).
fn envoy_certs(admin: u16) -> (Vec<String>, Vec<String>) {
    let (_, body, _) = common::curl(&["-s", &format!("http://127.0.0.1:{admin}/certs")]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let serials = |key: &str| -> Vec<String> {
        v["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c[key].as_array().cloned().unwrap_or_default())
            .filter(|c| c["path"].as_str() == Some("<inline>"))
            .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
            .collect()
    };
    (serials("cert_chain"), serials("ca_cert"))
}

/// Rotation under load: 2-minute leaves and a root rotation two minutes in (its old root
/// trusted 60 s more), while five minutes of requests (20 a second, each on a new
/// connection) cross an Envoy pair — not one may fail. The sidecars end with renewed
/// certificates and only the new root, and `ca.pem` holds only the new root.
#[test]
fn a_root_rotation_with_short_leaves_fails_no_request_under_load() {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let pair = Pair::start(
        "controller-rotation",
        11,
        "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { certificate: { serviceCertValidityDuration: 2m } }\n---\n",
    );
    let state = pair.dir.path("state");
    assert!(
        common::wait_until(Duration::from_secs(30), || through_pair(pair.net).is_ok()),
        "no answer through the sidecars: {:?}; controller: {}",
        through_pair(pair.net),
        pair.ctl.stderr_so_far()
    );
    let root_before = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    let (certs_before, _) = envoy_certs(pair.admin_a);
    let (_, roots_before) = envoy_certs(pair.admin_b);
    assert!(!certs_before.is_empty() && !roots_before.is_empty());

    let mut rotated = false;
    let mut saw_two_roots = false;
    let (ok, failed) = load_through_pair(pair.net, Duration::from_secs(300), |elapsed| {
        if !rotated && elapsed >= Duration::from_secs(120) {
            let (code, out, err) = controller(&[
                "rotate-root",
                "--overlap",
                "60s",
                "--admin",
                &format!("127.0.0.1:{}", pair.admin),
            ]);
            assert_eq!(code, 0, "{out}{err}");
            rotated = true;
        }
        saw_two_roots |= std::fs::read_to_string(state.join("ca.pem"))
            .is_ok_and(|b| b.matches("BEGIN CERTIFICATE").count() == 2);
    });
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}; controller: {}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(20)],
        pair.ctl.stderr_so_far()
    );
    assert!(ok >= 3000, "only {ok} requests in five minutes");
    assert!(
        saw_two_roots,
        "the old and new roots were never trusted together"
    );
    let root_after = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    assert_eq!(
        root_after.matches("BEGIN CERTIFICATE").count(),
        1,
        "the old root is pruned"
    );
    assert_ne!(root_after, root_before);
    let (certs_after, _) = envoy_certs(pair.admin_a);
    let (_, roots_after) = envoy_certs(pair.admin_b);
    assert!(
        certs_after.iter().all(|c| !certs_before.contains(c)),
        "the client's certificate was renewed: {certs_before:?} → {certs_after:?}"
    );
    assert!(
        roots_after.iter().all(|r| !roots_before.contains(r)),
        "the web sidecar no longer trusts the old root: {roots_before:?} → {roots_after:?}"
    );
    // The controller restarts, with a certificate only the new root signs: the sidecars,
    // bootstrapped when only the old root existed, follow the trust file and reconnect.
    let admin = pair.admin;
    pair.ctl.signal("TERM");
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", admin)).is_err()
        }),
        "the controller did not stop"
    );
    let _ctl = run_controller(&pair.dir.path("mesh"), pair.ads, admin, &state);
    for node in ["client-1.shop", "web-1.shop"] {
        assert!(
            common::wait_until(Duration::from_secs(30), || acked(admin, node).is_some()),
            "{node} did not reconnect to the restarted controller: {}",
            status_of(admin)
        );
    }
    assert_eq!(through_pair(pair.net).as_deref(), Ok("web web.shop"));
}

/// Strict mode with real Envoy sidecars: SMI decides. The client may `GET /allowed` on
/// web (200) but nothing else (403), the thief — no TrafficTarget names it — gets 403, and
/// adding the thief as a source lets it in within seconds of the file being saved.
#[test]
fn strict_mode_enforces_smi_traffic_targets_in_envoy_sidecars() {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("controller-strict");
    let (app, ads, admin, a1, a2, a3) = (
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    );
    let (_ng, _ndir) = web_app(
        "controller-strict",
        "127.0.12.6",
        app,
        "web $request_method $uri",
    );
    // The web pod also serves a TCP port (`db`): it writes `db` and closes.
    let (db, db_app) = (reserve_port(), reserve_port());
    let _db = TcpBanner::start(&format!("127.0.12.6:{db_app}"), b"db\n");
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    let mesh = |sources: &str| strict_shop(12, app, db, db_app, sources);
    let client_only = "{ kind: ServiceAccount, name: client, namespace: shop }";
    std::fs::write(manifests.join("shop.yaml"), mesh(client_only)).unwrap();
    let ctl = run_controller(&manifests, ads, admin, &dir.path("state"));
    let client = envoy_sidecar(&dir, "client-1.shop", "shop/client", a1, &[ads]);
    let thief = envoy_sidecar(&dir, "thief-1.shop", "shop/thief", a2, &[ads]);
    let web = envoy_sidecar(&dir, "web-1.shop", "shop/web", a3, &[ads]);
    assert!(
        common::wait_until(Duration::from_secs(30), || call(
            "127.0.12.5",
            "GET",
            "/allowed"
        )
        .0 == "200"),
        "the allowed call never passed: {:?}; controller: {}; web: {}",
        call("127.0.12.5", "GET", "/allowed"),
        ctl.stderr_so_far(),
        web.stderr_so_far()
    );
    assert_eq!(call("127.0.12.5", "GET", "/allowed").1, "web GET /allowed");
    assert_eq!(call("127.0.12.5", "GET", "/other").0, "403");
    assert_eq!(call("127.0.12.5", "POST", "/allowed").0, "403");
    assert!(
        common::wait_until(Duration::from_secs(10), || call(
            "127.0.12.7",
            "GET",
            "/allowed"
        )
        .0 == "403"),
        "the thief was not denied: {:?}",
        call("127.0.12.7", "GET", "/allowed")
    );
    // Only what a proxy needs: the thief's sidecar has no cluster for web (its own sidecar
    // answers 403), the client's has.
    let clusters =
        |port: u16| common::curl(&["-s", &format!("http://127.0.0.1:{port}/clusters")]).1;
    assert!(
        clusters(a1).contains("outbound|80||web.shop|mtls"),
        "{}",
        clusters(a1)
    );
    assert!(
        !clusters(a2).contains("outbound|80||web.shop|mtls"),
        "{}",
        clusters(a2)
    );
    // And web's own RBAC refuses a caller with a valid mesh certificate that no
    // TrafficTarget names, straight at its inbound port.
    let direct = |account: &str| {
        let creds = dir.path(&format!("creds-{}", account.replace('/', "-")));
        let (code, _, err) = controller(&[
            "certificate",
            account,
            "--out",
            creds.to_str().unwrap(),
            "--state",
            dir.path("state").to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let file = |f: &str| creds.join(f).display().to_string();
        common::curl(&[
            "-s",
            "-k",
            "-m",
            "2",
            "--cert",
            &file("cert.pem"),
            "--key",
            &file("key.pem"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: web.shop",
            "https://127.0.12.6:15006/allowed",
        ])
        .1
    };
    assert_eq!(direct("shop/thief"), "403");
    assert_eq!(direct("shop/client"), "200");
    // TCP: the client's TrafficTarget has a TCPRoute for db's port — its sidecar's
    // `127.0.12.5:<db>` reaches the workload over mTLS; the thief's sidecar has no cluster
    // for db and closes the connection.
    let db_from = |ip: &str| tcp_read(&format!("{ip}:{db}"));
    assert!(
        common::wait_until(Duration::from_secs(10), || db_from("127.0.12.5").as_deref()
            == Ok("db\n")),
        "the client never reached db: {:?}; web listeners: {}",
        db_from("127.0.12.5"),
        common::curl(&["-s", &format!("http://127.0.0.1:{a3}/listeners")]).1
    );
    assert_ne!(db_from("127.0.12.7").as_deref(), Ok("db\n"));
    // Let the thief in: in force within seconds of the file being saved.
    std::fs::write(
        manifests.join("shop.yaml"),
        mesh(&format!(
            "{client_only}, {{ kind: ServiceAccount, name: thief, namespace: shop }}"
        )),
    )
    .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || call(
            "127.0.12.7",
            "GET",
            "/allowed"
        )
        .0 == "200"),
        "the thief was never let in: {:?}; web listeners: {}; web lds stats: {}; status: {}",
        call("127.0.12.7", "GET", "/allowed"),
        common::curl(&["-s", &format!("http://127.0.0.1:{a3}/listeners")]).1,
        common::curl(&[
            "-s",
            &format!("http://127.0.0.1:{a3}/stats?filter=listener_manager")
        ])
        .1,
        controller(&["status", "--admin", &format!("127.0.0.1:{admin}")]).1
    );
    // The thief may now call web's HTTP routes, so its sidecar has db's cluster too; but
    // no TCPRoute lets it on db's port: web's inbound TLS refuses its identity on that
    // port (before the workload is dialled — db speaks first, so Envoy's network RBAC,
    // which waits for the caller's first byte, would be too late).
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            clusters(a2).contains(&format!("outbound|{db}||db.shop|mtls"))
        }),
        "{}",
        clusters(a2)
    );
    let refused = || {
        let stats = common::curl(&[
            "-s",
            &format!("http://127.0.0.1:{a3}/stats?filter=fail_verify_san"),
        ])
        .1;
        stats
            .lines()
            .filter(|l| l.contains("15006"))
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = refused();
    assert_ne!(db_from("127.0.12.7").as_deref(), Ok("db\n"));
    assert!(
        common::wait_until(Duration::from_secs(5), || refused() > before),
        "web's inbound did not refuse the thief's certificate: {}",
        common::curl(&["-s", &format!("http://127.0.0.1:{a3}/stats?filter=ssl")]).1
    );
    assert_eq!(db_from("127.0.12.5").as_deref(), Ok("db\n"));
    drop(client);
    drop(thief);
    drop(web);
}

/// A TrafficSplit through real Envoy sidecars: 80/20 over 1000 requests lands within 5
/// points of 80 %, and a change to 0/100 is in force soon after the file is saved (the
/// time is printed; the bound asserted is loose, the machine is shared).
#[test]
fn a_traffic_split_through_envoy_sidecars_follows_its_weights() {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    traffic_split_case(
        "controller-split",
        13,
        &|dir, node, account, ads, _state| {
            envoy_sidecar(dir, node, account, reserve_port(), &[ads])
        },
    );
}

/// An OSM `Retry` through Envoy sidecars (see `retry_case`): the reference the Flowgate
/// sidecars are held to in `tests/sidecar.rs`.
#[test]
fn an_osm_retry_through_envoy_sidecars_retries_and_times_out() {
    if !common::peers(&["envoy", "python3", "curl"]) {
        return;
    }
    retry_case(
        "controller-retry",
        18,
        &|dir, node, account, ads, _state| {
            envoy_sidecar(dir, node, account, reserve_port(), &[ads])
        },
    );
}

/// An OSM `UpstreamTrafficSetting` through Envoy sidecars (see `circuit_breaker_case`):
/// the reference the Flowgate sidecars are held to in `tests/sidecar.rs`.
#[test]
fn an_osm_upstream_traffic_setting_through_envoy_sidecars_limits_callers() {
    if !common::peers(&["envoy", "python3", "curl"]) {
        return;
    }
    circuit_breaker_case(
        "controller-limits",
        22,
        &|dir, node, account, ads, _state| {
            envoy_sidecar(dir, node, account, reserve_port(), &[ads])
        },
    );
}

/// `run --source etcd:…`: the demo's manifests put under a prefix of a real etcd are the
/// mesh; a broken key shows in `status` at its key and line, and its removal clears it.
#[test]
fn run_takes_its_mesh_from_etcd() {
    if !common::peers(&["etcd"]) {
        return;
    }
    let etcd = flowgate_pipeline::testing::Etcd::start("controller");
    let client = flowgate::lb::discovery::EtcdClient::new(etcd.client, Duration::from_secs(2));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for e in std::fs::read_dir(demo()).unwrap() {
            let p = e.unwrap().path();
            let key = format!("/demo/{}", p.file_name().unwrap().to_str().unwrap());
            client
                .put(key.as_bytes(), &std::fs::read(&p).unwrap())
                .await
                .unwrap();
        }
    });
    let dir = TempDir::new("controller-etcd");
    let (ads, admin) = (reserve_port(), reserve_port());
    let ctl = run_controller_from(
        &format!("etcd:http://{}/demo/", etcd.client),
        ads,
        admin,
        &dir.path("state"),
    );
    let status = || controller(&["status", "--admin", &format!("127.0.0.1:{admin}")]).1;
    let first = status();
    assert!(first.starts_with("mesh version "), "{first}");
    assert!(!first.contains("manifest error"), "{first}");
    rt.block_on(client.put(
        b"/demo/zz-bad.yaml",
        b"apiVersion: v1\nkind: Secret\nmetadata: { name: s }\n",
    ))
    .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(5), || status()
            .contains("manifest error: /demo/zz-bad.yaml:2:7: unknown kind `Secret`")),
        "{}; controller: {}",
        status(),
        ctl.stderr_so_far()
    );
    rt.block_on(client.delete(b"/demo/zz-bad.yaml")).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(5), || !status()
            .contains("manifest error")),
        "{}",
        status()
    );
    let (code, _, err) = controller(&["run", "--source", "consul:x"]);
    assert_eq!(code, 2);
    assert!(err.contains("etcd:HOST:PORT"), "{err}");
    if !cfg!(feature = "kube") {
        let (code, _, err) = controller(&["run", "--source", "kube"]);
        assert_eq!(code, 2);
        assert!(err.contains("--features kube"), "{err}");
    }
}

/// Two controller replicas on one etcd (the mesh and the shared CA both there, sealed with
/// one key file): they hand out one trust bundle and one token key; an Envoy pair listing
/// both connects to either; stopping the replica the client's sidecar is on moves it to the
/// other, which serves it the same versions of everything (the same certificate: nothing is
/// issued again), while requests cross the pair without one failing.
#[test]
fn two_replicas_on_one_etcd_take_over_each_others_proxies_without_a_failed_request() {
    if !common::peers(&["envoy", "nginx", "curl", "etcd"]) {
        return;
    }
    let net = 14;
    let etcd = flowgate_pipeline::testing::Etcd::start("controller-replicas");
    let dir = TempDir::new("controller-replicas");
    let (app, ads1, ads2, admin1, admin2, admin_a, admin_b) = (
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    );
    let _web = web_app(
        "controller-replicas",
        &format!("127.0.{net}.6"),
        app,
        "web $http_host",
    );
    let client = flowgate::lb::discovery::EtcdClient::new(etcd.client, Duration::from_secs(2));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(client.put(b"/mesh/shop.yaml", shop(net, app, "").as_bytes()))
        .unwrap();
    let key = dir.write(
        "shared.key",
        "0123456789abcdef0123456789abcdef-test-only-key",
    );
    let replica = |ads: u16, admin: u16, state: &str| {
        run_controller_with(
            &format!("etcd:{}/mesh/", etcd.client),
            ads,
            admin,
            &dir.path(state),
            &[
                "--shared".into(),
                format!("etcd:{}/flowgate/controller/", etcd.client),
                "--shared-key".into(),
                key.display().to_string(),
            ],
        )
    };
    // The first replica's state is `state`, where the sidecars' bootstraps read from.
    let mut ctl1 = Some(replica(ads1, admin1, "state"));
    let mut ctl2 = Some(replica(ads2, admin2, "state-2"));
    let read =
        |state: &str, file: &str| std::fs::read_to_string(dir.path(state).join(file)).unwrap();
    assert_eq!(
        read("state", "ca.pem"),
        read("state-2", "ca.pem"),
        "one trust bundle"
    );
    assert_eq!(
        read("state", "token.key"),
        read("state-2", "token.key"),
        "one token key"
    );

    let _a = envoy_sidecar(&dir, "client-1.shop", "shop/client", admin_a, &[ads1, ads2]);
    let _b = envoy_sidecar(&dir, "web-1.shop", "shop/web", admin_b, &[ads2, ads1]);
    let stderr = |c: &Option<Proc>| c.as_ref().map(Proc::stderr_so_far).unwrap_or_default();
    assert!(
        common::wait_until(Duration::from_secs(30), || through_pair(net).is_ok()),
        "no answer through the sidecars: {:?}; replica 1: {}; replica 2: {}",
        through_pair(net),
        stderr(&ctl1),
        stderr(&ctl2)
    );
    // Where the client's sidecar is, and what it holds there.
    let on = |admin: u16| acked(admin, "client-1.shop");
    assert!(
        common::wait_until(Duration::from_secs(10), || on(admin1)
            .or(on(admin2))
            .is_some_and(|v| v.len() >= 4 && v.values().all(|a| !a.is_empty()))),
        "{} / {}",
        status_of(admin1),
        status_of(admin2)
    );
    let (victim, survivor) = if on(admin1).is_some() {
        (1, admin2)
    } else {
        (2, admin1)
    };
    let before = on(if victim == 1 { admin1 } else { admin2 }).unwrap();
    let (certs_before, _) = envoy_certs(admin_a);
    let issued_before = status_of(survivor)["mesh"]["leaves_issued"]
        .as_u64()
        .unwrap();

    // Twenty seconds of requests; the client's replica stops five seconds in.
    let (ok, failed) = load_through_pair(net, Duration::from_secs(20), |elapsed| {
        if elapsed >= Duration::from_secs(5) {
            let gone = if victim == 1 {
                ctl1.take()
            } else {
                ctl2.take()
            };
            if let Some(p) = gone {
                p.stop();
            }
        }
    });
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(ok >= 200, "only {ok} requests in 20 s");
    // The client's sidecar moved to the survivor, which serves it the same versions.
    assert!(
        common::wait_until(Duration::from_secs(20), || acked(survivor, "client-1.shop")
            .is_some_and(|after| before.iter().all(|(t, v)| after.get(t) == Some(v)))),
        "before: {before:?}; after: {:?}; survivor: {}; {}",
        acked(survivor, "client-1.shop"),
        status_of(survivor),
        stderr(if victim == 1 { &ctl2 } else { &ctl1 })
    );
    assert_eq!(
        status_of(survivor)["mesh"]["leaves_issued"]
            .as_u64()
            .unwrap(),
        issued_before,
        "the survivor issued no leaf for the proxies it took over"
    );
    let (certs_after, _) = envoy_certs(admin_a);
    assert_eq!(
        certs_after, certs_before,
        "the client's sidecar kept its certificate"
    );
    // An account that joins gets a shared leaf; when it leaves, its leaf is deleted.
    let leaf_key = b"/flowgate/controller/leaves/shop/extra";
    rt.block_on(client.put(
        b"/mesh/extra.yaml",
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: extra, namespace: shop }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: extra-1, namespace: shop }}\nspec: {{ serviceAccountName: extra }}\nstatus: {{ podIP: 127.0.{net}.9 }}\n").as_bytes(),
    ))
    .unwrap();
    let held = || rt.block_on(client.get(leaf_key)).unwrap().is_some();
    assert!(
        common::wait_until(Duration::from_secs(10), held),
        "no shared leaf for shop/extra"
    );
    rt.block_on(client.delete(b"/mesh/extra.yaml")).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || !held()),
        "the leaf of an account that left stayed"
    );
}

/// The acceptance pair in network namespaces: two workloads (nginx), each in its own
/// namespace behind an Envoy bootstrapped only with the controller's ADS address (on the
/// host, across a bridge) and a bootstrap token; permissive mode: both directions answer
/// 200, and each receiving sidecar counts mesh TLS handshakes on its inbound port.
#[test]
fn envoy_sidecars_in_network_namespaces_call_each_other_over_mtls() {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let Some(net) = PodNet::new(0, 2) else {
        return;
    };
    let dir = TempDir::new("controller-netns");
    let (app, ads, admin, envoy_admin) = (18080, reserve_port(), reserve_port(), 15000);
    // Pod 0 is `client-1` (10.251.0.2), pod 1 is `web-1` (10.251.0.3); each runs an app.
    let apps: Vec<(Proc, TempDir)> = (0..2)
        .map(|i| {
            let d = TempDir::new(&format!("controller-netns-app{i}"));
            let ng = common::nginx_in(
                Some(net.pod(i)),
                &d,
                &format!(
                    "server {{ listen 10.251.0.{}:{app}; location / {{ return 200 \"{} $http_host\"; }} }}",
                    i + 2,
                    ["client", "web"][i]
                ),
            );
            (ng, d)
        })
        .collect();
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("shop.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: client, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: web, namespace: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: client, namespace: shop }}\nspec:\n  selector: {{ app: client }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: client-1, namespace: shop, labels: {{ app: client }} }}\nspec: {{ serviceAccountName: client }}\nstatus: {{ podIP: 10.251.0.2 }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: web-1, namespace: shop, labels: {{ app: web }} }}\nspec: {{ serviceAccountName: web }}\nstatus: {{ podIP: 10.251.0.3 }}\n"
        ),
    )
    .unwrap();
    let listen: std::net::SocketAddr = ([10, 251, 0, 1], ads).into();
    let ctl = run_controller_on(
        &format!("dir:{}", manifests.display()),
        listen,
        admin,
        &dir.path("state"),
        &[],
    );
    let sidecars: Vec<Proc> = [("client-1.shop", "shop/client"), ("web-1.shop", "shop/web")]
        .iter()
        .enumerate()
        .map(|(i, (node, account))| {
            envoy_sidecar_in(
                Some(net.pod(i)),
                &dir,
                node,
                account,
                envoy_admin,
                &[listen],
            )
        })
        .collect();
    // From each pod through its own sidecar to the other's service.
    let call = |from: usize, host: &str| {
        net.curl(
            from,
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://10.251.0.{}:15001/", from + 2),
            ],
        )
        .1
    };
    for (from, host, want) in [
        (0, "web.shop", "web web.shop"),
        (1, "client.shop", "client client.shop"),
    ] {
        assert!(
            common::wait_until(Duration::from_secs(30), || call(from, host) == want),
            "pod {from} → {host}: {:?}; controller: {}; sidecar: {}",
            call(from, host),
            ctl.stderr_so_far(),
            sidecars[from].stderr_so_far()
        );
    }
    // Each receiving sidecar did mesh TLS handshakes on its inbound port.
    for i in 0..2 {
        let (_, stats) = net.curl(
            i,
            &[&format!(
                "http://127.0.0.1:{envoy_admin}/stats?filter=ssl.handshake"
            )],
        );
        let handshakes: u64 = stats
            .lines()
            .filter(|l| l.contains("15006"))
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
            .sum();
        assert!(handshakes >= 1, "pod {i}: {stats}");
    }
    // The workloads are not reachable from the host except through the mesh: the inbound
    // port wants a mesh certificate.
    let (ok, _, _) = common::curl(&["-s", "-k", "-m", "2", "https://10.251.0.3:15006/"]);
    assert!(
        !ok,
        "the inbound listener served a client without a mesh certificate"
    );
    drop(sidecars);
    drop(ctl);
    drop(apps);
}
