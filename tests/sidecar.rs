//! `flowgate-sidecar` driven by a real `flowgate-controller`, in explicit proxy mode on
//! loopback addresses: sidecars get their certificates by CSR with a bootstrap token, take
//! their configuration over delta ADS, carry HTTP and TCP between pods over mutual TLS and
//! enforce SMI policy in strict mode; a policy change is in force within seconds; a sidecar
//! restarted while its controller is down serves its last good configuration. And a
//! Flowgate sidecar and an Envoy sidecar call each other: they are interchangeable. In
//! network namespaces with traffic captured by `flowgate-sidecar init`, the workloads dial
//! services by cluster IP and the sidecars (Flowgate, or an Envoy client) carry it.
#![cfg(all(feature = "mesh", feature = "http"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mesh::*;
use common::podnet::PodNet;
use common::{Proc, TempDir, daemon, reserve_port};

/// `flowgate-sidecar run` for pod `node` running as `account`, against the controller at
/// `ads` (its state directory `state` holds the trust bundle and the token key).
fn flowgate_sidecar(
    dir: &TempDir,
    node: &str,
    account: &str,
    ads: u16,
    state: &Path,
    admin: u16,
) -> Proc {
    let (code, token, err) = controller(&["token", account, "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    dir.write(&format!("{node}.token"), token.trim());
    run_sidecar(dir, node, ads, state, admin)
}

#[test]
fn flowgate_sidecars_carry_mtls_enforce_smi_and_survive_their_controller() {
    if !common::peers(&["nginx", "curl"]) {
        return;
    }
    let net = 15;
    let dir = TempDir::new("sidecar-strict");
    let (app, ads, admin, db, db_app) = (
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    );
    let web_ip = format!("127.0.{net}.6");
    let (_ng, _ndir) = web_app("sidecar-strict", &web_ip, app, "web $request_method $uri");
    let _db = TcpBanner::start(&format!("{web_ip}:{db_app}"), b"db\n");
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    let client_only = "{ kind: ServiceAccount, name: client, namespace: shop }";
    std::fs::write(
        manifests.join("shop.yaml"),
        strict_shop(net, app, db, db_app, client_only),
    )
    .unwrap();
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    let (client_admin, web_admin) = (reserve_port(), reserve_port());
    let client = flowgate_sidecar(
        &dir,
        "client-1.shop",
        "shop/client",
        ads,
        &state,
        client_admin,
    );
    let thief = flowgate_sidecar(
        &dir,
        "thief-1.shop",
        "shop/thief",
        ads,
        &state,
        reserve_port(),
    );
    let mut web = flowgate_sidecar(&dir, "web-1.shop", "shop/web", ads, &state, web_admin);
    let (client_ip, thief_ip) = (format!("127.0.{net}.5"), format!("127.0.{net}.7"));

    let allowed = || call(&client_ip, "GET", "/allowed");
    assert!(
        common::wait_until(Duration::from_secs(30), || allowed().0 == "200"),
        "no answer through the sidecars: {:?}; controller: {}; client: {}; web: {}",
        allowed(),
        ctl.stderr_so_far(),
        client.stderr_so_far(),
        web.stderr_so_far()
    );
    assert_eq!(allowed().1, "web GET /allowed");
    // SMI: other methods and paths are refused at web's sidecar, the thief entirely.
    assert_eq!(call(&client_ip, "POST", "/allowed").0, "403");
    assert_eq!(call(&client_ip, "GET", "/other").0, "403");
    assert_eq!(call(&thief_ip, "GET", "/allowed").0, "403");
    // TCP: the client reaches the server that speaks first; the thief is closed on.
    let db_at = |ip: &str| tcp_read(&format!("{ip}:{db}"));
    assert!(
        common::wait_until(Duration::from_secs(10), || db_at(&client_ip).as_deref()
            == Ok("db\n")),
        "db through the sidecars: {:?}; web: {}",
        db_at(&client_ip),
        web.stderr_so_far()
    );
    assert_ne!(db_at(&thief_ip).as_deref(), Ok("db\n"));
    // Without a mesh certificate the inbound port refuses.
    let (ok, _, _) = common::curl(&["-s", "-k", "-m", "2", &format!("https://{web_ip}:15006/")]);
    assert!(
        !ok,
        "the inbound listener served a client without a mesh certificate"
    );
    // Each sidecar ACKed the listeners it runs, the web sidecar its certificate too.
    for node in ["client-1.shop", "thief-1.shop", "web-1.shop"] {
        let acks = acked(admin, node).unwrap_or_default();
        assert!(
            acks.get("Listener").is_some_and(|v| !v.is_empty()),
            "{node}: {acks:?}"
        );
    }
    let web_acks = acked(admin, "web-1.shop").unwrap_or_default();
    assert!(
        web_acks.get("Secret").is_some_and(|v| !v.is_empty()),
        "{web_acks:?}"
    );
    // The admin endpoint: ready, the configuration's versions (those ACKed), the
    // certificate's identity and expiry, the clusters' endpoints.
    let admin_get = |port: u16, path: &str| {
        common::curl(&["-s", "-m", "2", &format!("http://127.0.0.1:{port}{path}")]).1
    };
    assert_eq!(admin_get(web_admin, "/ready"), r#"{"ready": true}"#);
    let status: serde_json::Value = serde_json::from_str(&admin_get(web_admin, "/status")).unwrap();
    assert_eq!(status["config"]["source"], "controller", "{status}");
    assert_eq!(
        status["certificate"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert!(
        status["certificate"]["expires_in_s"].as_u64().unwrap() > 60,
        "{status}"
    );
    let listener_versions = status["config"]["versions"]["Listener"]
        .as_object()
        .unwrap();
    assert!(listener_versions.contains_key("inbound"), "{status}");
    let clusters: serde_json::Value =
        serde_json::from_str(&admin_get(client_admin, "/clusters")).unwrap();
    let web_endpoint = &clusters["outbound|80||web.shop|mtls"]["endpoints"][0];
    assert_eq!(
        web_endpoint["address"],
        format!("{web_ip}:15006"),
        "{clusters}"
    );
    // As the balancer has it now: healthy, not ejected, nothing in flight.
    assert_eq!(
        (
            &web_endpoint["healthy"],
            &web_endpoint["ejected"],
            &web_endpoint["in_flight"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(0)
        ),
        "{clusters}"
    );

    // The thief is let in: in force within seconds of the file being saved.
    let both = "{ kind: ServiceAccount, name: client, namespace: shop }, { kind: ServiceAccount, name: thief, namespace: shop }";
    std::fs::write(
        manifests.join("shop.yaml"),
        strict_shop(net, app, db, db_app, both),
    )
    .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(15), || call(
            &thief_ip, "GET", "/allowed"
        )
        .0 == "200"),
        "the thief is still refused: {:?}; thief: {}; web: {}; controller: {}",
        call(&thief_ip, "GET", "/allowed"),
        thief.stderr_so_far(),
        web.stderr_so_far(),
        status_of(admin)
    );

    // And out again, seen on a live keep-alive connection: the next request on it is
    // refused, and the connection is not closed for it (a change of what happens per
    // request does not drain connections).
    let mut live =
        std::io::BufReader::new(std::net::TcpStream::connect((thief_ip.as_str(), 15001)).unwrap());
    assert_eq!(keepalive_get(&mut live, "/allowed"), Some(200));
    std::fs::write(
        manifests.join("shop.yaml"),
        strict_shop(net, app, db, db_app, client_only),
    )
    .unwrap();
    let mut last = None;
    assert!(
        common::wait_until(Duration::from_secs(15), || {
            last = keepalive_get(&mut live, "/allowed");
            last != Some(200)
        }),
        "the thief was never refused again"
    );
    assert_eq!(last, Some(403), "the live connection was closed instead");
    assert_eq!(keepalive_get(&mut live, "/allowed"), Some(403));
    // In and out once more, on the same connection: it follows every configuration, not
    // just the first one after it started.
    for (sources, want) in [(both, 200), (client_only, 403)] {
        std::fs::write(
            manifests.join("shop.yaml"),
            strict_shop(net, app, db, db_app, sources),
        )
        .unwrap();
        assert!(
            common::wait_until(Duration::from_secs(15), || {
                last = keepalive_get(&mut live, "/allowed");
                last != Some(if want == 200 { 403 } else { 200 })
            }),
            "the live connection never saw {want}"
        );
        assert_eq!(last, Some(want), "the live connection: {last:?}");
    }

    // The controller goes away and web's sidecar restarts: it serves its last good
    // configuration at once.
    drop(ctl);
    let _ = web.stop();
    web = run_sidecar(&dir, "web-1.shop", ads, &state, web_admin);
    assert!(
        common::wait_until(Duration::from_secs(10), || allowed().0 == "200"),
        "after a restart without its controller: {:?}; web: {}",
        allowed(),
        web.stderr_so_far()
    );
    assert_eq!(call(&client_ip, "GET", "/other").0, "403");
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(web_admin, "/status")).unwrap_or_default();
    assert_eq!(status["config"]["source"], "saved", "{status}");
    drop((client, thief, web));
}

/// `GET path` (`Host: web.shop`) on a keep-alive connection: the status, or `None` when
/// the connection was closed.
fn keepalive_get(c: &mut std::io::BufReader<std::net::TcpStream>, path: &str) -> Option<u16> {
    c.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    common::load::get_on(c, "web.shop", path).map(|(status, _)| status)
}

/// `flowgate-sidecar run` for `node` with its token file and state directory in `dir`.
fn run_sidecar(dir: &TempDir, node: &str, ads: u16, state: &Path, admin: u16) -> Proc {
    daemon(
        Command::new(env!("CARGO_BIN_EXE_flowgate-sidecar"))
            .args(["run", "--controller", &format!("https://127.0.0.1:{ads}")])
            .arg("--trust")
            .arg(state.join("ca.pem"))
            .arg("--token-file")
            .arg(dir.path(&format!("{node}.token")))
            .args(["--node", node, "--workers", "1"])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--state")
            .arg(dir.path(&format!("sidecar-{node}"))),
        node,
    )
}

/// Permissive mode, a Flowgate sidecar on one side and an Envoy sidecar on the other, both
/// ways round: the same controller configuration serves either, and they call each other
/// over mutual TLS.
#[test]
fn a_flowgate_sidecar_and_an_envoy_sidecar_call_each_other() {
    if !common::peers(&["envoy", "nginx", "curl"]) {
        return;
    }
    let net = 16;
    let dir = TempDir::new("sidecar-mixed");
    let (app, ads, admin, envoy_admin) = (
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    );
    let (_ng, _ndir) = web_app(
        "sidecar-mixed",
        &format!("127.0.{net}.6"),
        app,
        "web $http_host",
    );
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("shop.yaml"), shop(net, app, "")).unwrap();
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    let client_ip = format!("127.0.{net}.5");
    let get = || call(&client_ip, "GET", "/books");
    for (flowgate_side, envoy_side) in [
        (("web-1.shop", "shop/web"), ("client-1.shop", "shop/client")),
        (("client-1.shop", "shop/client"), ("web-1.shop", "shop/web")),
    ] {
        let ours = flowgate_sidecar(
            &dir,
            flowgate_side.0,
            flowgate_side.1,
            ads,
            &state,
            reserve_port(),
        );
        let envoy = envoy_sidecar(&dir, envoy_side.0, envoy_side.1, envoy_admin, &[ads]);
        assert!(
            common::wait_until(Duration::from_secs(30), || get()
                == ("200".to_string(), "web web.shop".to_string())),
            "Flowgate as {}, Envoy as {}: {:?}; controller: {}; flowgate: {}; envoy: {}",
            flowgate_side.0,
            envoy_side.0,
            get(),
            ctl.stderr_so_far(),
            ours.stderr_so_far(),
            envoy.stderr_so_far()
        );
        let _ = envoy.stop();
        let _ = ours.stop();
    }
}

/// The TrafficSplit case the Envoy sidecars pass (`tests/controller.rs`), through Flowgate
/// sidecars: the same weights and the same change, the same bounds.
#[test]
fn a_traffic_split_through_flowgate_sidecars_follows_its_weights() {
    if !common::peers(&["nginx", "curl"]) {
        return;
    }
    traffic_split_case("sidecar-split", 17, &|dir, node, account, ads, state| {
        flowgate_sidecar(dir, node, account, ads, state, reserve_port())
    });
}

/// Which sidecar the client pod of [`capture_case`] runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ClientSidecar {
    Flowgate,
    Envoy,
}

/// The proxy user the sidecars run as (whose connections capture lets pass).
const PROXY_UID: u32 = 1337;

/// How [`capture_case`] captures the pods' traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CaptureMode {
    /// `flowgate-sidecar init` (iptables), sidecars as the proxy user.
    Iptables,
    /// `flowgate-sidecar run --ebpf-capture CGROUP` (root; the workloads in the cgroups).
    #[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
    Ebpf,
}

/// Captured traffic in network namespaces: two pods annotated `flowgate.io/capture:
/// redirect`, captured by `flowgate-sidecar init` (iptables; the sidecars run as the proxy
/// user) or by the sidecars themselves with eBPF (the workloads run in cgroups of their
/// own). The client workload dials the services' cluster IPs as it would without a mesh —
/// HTTP (routed by `Host`) and a TCP service that speaks first (by address) — and the
/// sidecars carry both over mTLS; the web workload's own port cannot be reached around its
/// sidecar; the client workload reaches nothing outside the mesh (no egress) while what
/// is not the workload (the proxy user; a process outside the cgroup) does.
fn capture_case(segment: u8, client: ClientSidecar, mode: CaptureMode) {
    let mut needs = vec!["nginx", "curl", "python3"];
    match mode {
        CaptureMode::Iptables => needs.extend(["iptables", "setpriv"]),
        CaptureMode::Ebpf => needs.extend(["nsenter", "mount", "umount"]),
    }
    if client == ClientSidecar::Envoy {
        needs.push("envoy");
    }
    if !common::peers(&needs) {
        return;
    }
    let Some(net) = PodNet::new(segment, 2) else {
        return;
    };
    let cgroups = match mode {
        CaptureMode::Iptables => None,
        CaptureMode::Ebpf => {
            let (Some(c), Some(w)) = (
                common::podnet::Cgroup::new(&format!("{segment}-client")),
                common::podnet::Cgroup::new(&format!("{segment}-web")),
            ) else {
                return;
            };
            Some((
                c,
                w,
                flowgate_pipeline::testing::BpfFs::mount(&segment.to_string()),
            ))
        }
    };
    // The client workload: in its pod, and in its cgroup when eBPF captures.
    let workload = |program: &str| match &cgroups {
        Some((c, _, _)) => c.command(net.pod(0), program),
        None => common::in_netns(Some(net.pod(0)), program),
    };
    let dir = TempDir::new(&format!("sidecar-capture-{segment}"));
    let (app, db_app, ads, admin) = (18080, 15432, reserve_port(), reserve_port());
    let host = format!("10.251.{segment}.1");
    let (client_ip, web_ip) = (format!("10.251.{segment}.2"), format!("10.251.{segment}.3"));
    let (web_vip, db_vip) = (format!("10.96.{segment}.10"), format!("10.96.{segment}.11"));
    // The web pod: nginx answering `web <Host>`, and a database that speaks first.
    let ng_dir = TempDir::new(&format!("sidecar-capture-{segment}-web"));
    let _web_app = common::nginx_in(
        Some(net.pod(1)),
        &ng_dir,
        &format!(
            "server {{ listen {web_ip}:{app}; location / {{ return 200 \"web $http_host\"; }} }}"
        ),
    );
    let _db_app = daemon(
        common::in_netns(Some(net.pod(1)), "python3").args([
            "-c",
            &format!(
                "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{web_ip}', {db_app}))\ns.listen(16)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'db ready\\n')\n    c.close()\n"
            ),
        ]),
        "db",
    );
    // Outside the mesh, on the host: a server the client workload may not reach.
    let outside_port = reserve_port();
    let (_outside, _odir) = web_app(
        &format!("sidecar-capture-{segment}-outside"),
        &host,
        outside_port,
        "outside",
    );
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("shop.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: client, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: web, namespace: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  clusterIP: {web_vip}\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: db, namespace: shop }}\nspec:\n  clusterIP: {db_vip}\n  selector: {{ app: web }}\n  ports: [{{ name: tcp-db, port: 7000, targetPort: {db_app} }}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: client-1, namespace: shop, labels: {{ app: client }}, annotations: {{ flowgate.io/capture: redirect }} }}\nspec: {{ serviceAccountName: client }}\nstatus: {{ podIP: {client_ip} }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: web-1, namespace: shop, labels: {{ app: web }}, annotations: {{ flowgate.io/capture: redirect }} }}\nspec: {{ serviceAccountName: web }}\nstatus: {{ podIP: {web_ip} }}\n"
        ),
    )
    .unwrap();
    let state = dir.path("state");
    let listen: std::net::SocketAddr = (host.parse::<std::net::IpAddr>().unwrap(), ads).into();
    let ctl = run_controller_on(
        &format!("dir:{}", manifests.display()),
        listen,
        admin,
        &state,
        &[],
    );
    // Capture in both pods (eBPF: by the sidecars).
    for i in 0..2 {
        if mode == CaptureMode::Ebpf {
            break;
        }
        let out = common::in_netns(Some(net.pod(i)), env!("CARGO_BIN_EXE_flowgate-sidecar"))
            .arg("init")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // eBPF: (the pod's workload cgroup, where its sidecar pins its attachments).
    let cgroup = |i: usize| {
        cgroups.as_ref().map(|(c, w, fs)| {
            let cg = if i == 0 { c.0.clone() } else { w.0.clone() };
            (cg, fs.path.join(format!("pod{i}")))
        })
    };
    // Pod i's Flowgate sidecar (0: the client, 1: web).
    let sidecar_of = |i: usize| {
        let (node, account) = [("client-1.shop", "shop/client"), ("web-1.shop", "shop/web")][i];
        let ebpf = cgroup(i);
        let ebpf = ebpf.as_ref().map(|(c, p)| (c.as_path(), p.as_path()));
        flowgate_sidecar_in(net.pod(i), &dir, node, account, listen, &state, ebpf)
    };
    let web = sidecar_of(1);
    let client_side = match client {
        ClientSidecar::Flowgate => sidecar_of(0),
        ClientSidecar::Envoy => envoy_sidecar_as(
            Some(net.pod(0)),
            Some(PROXY_UID),
            &dir,
            "client-1.shop",
            "shop/client",
            15000,
            &[listen],
        ),
    };
    // HTTP: the workload dials the service's cluster IP; the Host header routes.
    let http = |host_header: Option<&str>| {
        let mut args = vec![];
        if let Some(h) = host_header {
            args.extend(["-H".to_string(), format!("Host: {h}")]);
        }
        args.push(format!("http://{web_vip}/"));
        let out = workload("curl")
            .args(["-sS", "--max-time", "5"])
            .args(&args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        common::wait_until(Duration::from_secs(30), || http(None)
            == format!("web {web_vip}")),
        "{client:?} client → {web_vip}: {:?}; controller: {}; client sidecar: {}; web sidecar: {}",
        http(None),
        ctl.stderr_so_far(),
        client_side.stderr_so_far(),
        web.stderr_so_far()
    );
    assert_eq!(http(Some("web.shop")), "web web.shop");
    // TCP by the service's address: the database speaks first, through both sidecars.
    let tcp = || {
        let out = workload("python3")
            .args([
                "-c",
                &format!(
                    "import socket\ns = socket.create_connection(('{db_vip}', 7000), timeout=5)\nprint(s.recv(64).decode(), end='')"
                ),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || tcp() == "db ready\n"),
        "{client:?} client → {db_vip}:7000: {:?}",
        tcp()
    );
    // The web workload's port from outside its pod: redirected to the inbound listener,
    // which wants a mesh certificate — not the workload.
    let (ok, body, _) = common::curl(&["-s", "-m", "3", &format!("http://{web_ip}:{app}/")]);
    assert!(!ok, "the workload answered around its sidecar: {body:?}");
    // No egress: the workload's connection to a server outside the mesh is closed; what
    // is not the workload (the proxy user; a process outside its cgroup) passes.
    let outside = format!("http://{host}:{outside_port}/");
    // The workload's GET outside: what it got, if it got anything.
    let escapes = || {
        let out = workload("curl")
            .args(["-sS", "-m", "5", &outside])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(escapes(), None, "the workload reached outside the mesh");
    let uid = (mode == CaptureMode::Iptables).then_some(PROXY_UID);
    let out = common::as_user(Some(net.pod(0)), uid, "curl")
        .args(["-sS", "-m", "5", &outside])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "outside");
    if mode == CaptureMode::Ebpf {
        // eBPF did it: the sidecars' counters (admin endpoint, in each pod's loopback).
        let capture = |i: usize| {
            let out = common::in_netns(Some(net.pod(i)), "curl")
                .args(["-sS", "-m", "5", "http://127.0.0.1:15021/status"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["capture"].clone()
        };
        let (c, w) = (capture(0), capture(1));
        eprintln!("client sidecar capture: {c}\nweb sidecar capture: {w}");
        assert_eq!(c["mode"], "ebpf");
        // HTTP twice, TCP at least once, the refused egress once.
        assert!(c["outbound_steered"].as_u64().unwrap() >= 4, "{c}");
        // Sidecars dial each other's inbound listener (15006, left alone); what was steered
        // is the host's attempt at the workload's own port.
        assert_eq!(w["inbound_steered"].as_u64(), Some(1), "{w}");

        // A sidecar in its workload's cgroup is refused (its own connects would be
        // captured).
        let (cg, _) = cgroup(0).unwrap();
        let out = cgroups
            .as_ref()
            .unwrap()
            .0
            .command(net.pod(0), env!("CARGO_BIN_EXE_flowgate-sidecar"))
            .args([
                "run",
                "--controller",
                "https://127.0.0.1:1",
                "--trust",
                "/dev/null",
            ])
            .args(["--node", "x.shop", "--admin", "off", "--ebpf-pin", "off"])
            .arg("--state")
            .arg(dir.path("refused-state"))
            .arg("--ebpf-capture")
            .arg(&cg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("runs in the workload's cgroup"),
            "{err}"
        );

        // The sidecars crash (SIGKILL): their pinned attachments stay, so the workloads'
        // traffic stays captured — refused, never let through.
        client_side.signal("KILL");
        web.signal("KILL");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            escapes(),
            None,
            "the workload got out with its sidecar down"
        );
        let (ok, body, _) = common::curl(&["-s", "-m", "3", &format!("http://{web_ip}:{app}/")]);
        assert!(!ok, "the workload answered with its sidecar down: {body:?}");
        drop((client_side, web));

        // Restarted, the client's sidecar takes its pinned attachments over and serves.
        let again = sidecar_of(0);
        let restarted_web = sidecar_of(1);
        assert!(
            common::wait_until(Duration::from_secs(30), || http(None)
                == format!("web {web_vip}")),
            "after the restart: {:?}; client sidecar: {}",
            http(None),
            again.stderr_so_far()
        );
        assert!(
            again.stderr_so_far().contains("replaced=3"),
            "{}",
            again.stderr_so_far()
        );
        drop((again, restarted_web, ctl));
        return;
    }
    drop((client_side, web, ctl));
}

/// `flowgate-sidecar run` in network namespace `netns` as the proxy user, for pod `node`
/// running as `account`, against the controller at `controller` — or, with `ebpf` (the
/// workload's cgroup), as root capturing the workload itself.
fn flowgate_sidecar_in(
    netns: &str,
    dir: &TempDir,
    node: &str,
    account: &str,
    controller_at: std::net::SocketAddr,
    state: &Path,
    ebpf: Option<(&Path, &Path)>,
) -> Proc {
    let (code, token, err) = controller(&["token", account, "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let token_file = dir.write(&format!("{node}.token"), token.trim());
    let kept = dir.path(&format!("sidecar-{node}"));
    std::fs::create_dir_all(&kept).unwrap();
    std::os::unix::fs::chown(&kept, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    let mut cmd = match ebpf {
        // `nsenter` keeps /sys as it is (the cgroup path stays valid).
        Some((cgroup, pins)) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{netns}"))
                .arg(env!("CARGO_BIN_EXE_flowgate-sidecar"))
                .arg("run")
                .arg("--ebpf-capture")
                .arg(cgroup)
                .arg("--ebpf-pin")
                .arg(pins);
            c
        }
        None => {
            let mut c = common::as_user(
                Some(netns),
                Some(PROXY_UID),
                env!("CARGO_BIN_EXE_flowgate-sidecar"),
            );
            c.arg("run");
            c
        }
    };
    daemon(
        cmd.args(["--controller", &format!("https://{controller_at}")])
            .arg("--trust")
            .arg(state.join("ca.pem"))
            .arg("--token-file")
            .arg(&token_file)
            .args(["--node", node, "--workers", "1"])
            .arg("--state")
            .arg(&kept),
        node,
    )
}

#[test]
fn captured_traffic_flows_through_flowgate_sidecars() {
    capture_case(1, ClientSidecar::Flowgate, CaptureMode::Iptables);
}

#[test]
fn an_envoy_sidecar_on_captured_traffic_calls_a_flowgate_sidecar() {
    capture_case(2, ClientSidecar::Envoy, CaptureMode::Iptables);
}

/// The same with eBPF capture (`cargo test --features ebpf`; `.ci/run` runs it).
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_captured_traffic_flows_through_flowgate_sidecars() {
    capture_case(3, ClientSidecar::Flowgate, CaptureMode::Ebpf);
}

/// The OSM `Retry` case the Envoy sidecars pass (`tests/controller.rs`), through Flowgate
/// sidecars: the same answers.
#[test]
fn an_osm_retry_through_flowgate_sidecars_retries_and_times_out_as_envoy_does() {
    if !common::peers(&["python3", "curl"]) {
        return;
    }
    retry_case("sidecar-retry", 19, &|dir, node, account, ads, state| {
        flowgate_sidecar(dir, node, account, ads, state, reserve_port())
    });
}

/// Hot changes under load: 64 keep-alive connections at 10 requests a second each for
/// 60 s through the client's sidecar, while the policy changes 20 times (a TrafficTarget
/// letting a thief in comes and goes, a Retry comes and goes), a second web pod joins and
/// leaves the service 6 times, and the sidecars' certificates (valid a minute) are renewed
/// every half minute: no request the policy allows fails, and no connection is drained for
/// it (the changes are per request: live connections take them). The load reconnects after
/// `Connection: close` and sends a request again only when a reused connection closed
/// before answering, as HTTP clients do (counted and printed).
#[test]
fn hot_changes_under_load_fail_no_allowed_request() {
    if !common::peers(&["nginx", "curl"]) {
        return;
    }
    let net = 20;
    let dir = TempDir::new("sidecar-hot");
    let (app, ads, admin) = (reserve_port(), reserve_port(), reserve_port());
    let ndir = TempDir::new("sidecar-hot-nginx");
    let ng = common::nginx(
        &ndir,
        &format!(
            "server {{ listen 127.0.{net}.6:{app}; keepalive_requests 100000; location / {{ return 200 \"web-1\\n\"; }} }} \
             server {{ listen 127.0.{net}.8:{app}; keepalive_requests 100000; location / {{ return 200 \"web-2\\n\"; }} }}"
        ),
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect((format!("127.0.{net}.6").as_str(), app)).is_ok()
        }),
        "nginx: {}",
        ng.stderr_so_far()
    );
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    let pod = |name: &str, sa: &str, app_label: &str, ip: u8| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ app: {app_label} }} }}\nspec: {{ serviceAccountName: {sa} }}\nstatus: {{ podIP: 127.0.{net}.{ip} }}\n"
        )
    };
    let target = |name: &str, source: &str| {
        format!(
            "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  destination: {{ kind: ServiceAccount, name: web, namespace: shop }}\n  rules: [{{ kind: HTTPRouteGroup, name: all, matches: [all] }}]\n  sources: [{{ kind: ServiceAccount, name: {source}, namespace: shop }}]\n"
        )
    };
    let base = format!(
        "apiVersion: config.flowgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {{ name: mesh }}\nspec: {{ traffic: {{ enablePermissiveTrafficPolicyMode: false }}, certificate: {{ serviceCertValidityDuration: 1m }} }}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: client, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: thief, namespace: shop }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: web, namespace: shop }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n---\n{}---\n{}---\n{}---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{ name: all, namespace: shop }}\nspec:\n  matches: [{{ name: all, pathRegex: '.*', methods: ['*'] }}]\n---\n{}",
        pod("client-1", "client", "client", 5),
        pod("thief-1", "thief", "thief", 7),
        pod("web-1", "web", "web", 6),
        target("web", "client"),
    );
    std::fs::write(manifests.join("shop.yaml"), &base).unwrap();
    // web-2 moves between `web` and a standby service on the same port, so its sidecar's
    // inbound listener is bound throughout: the controller publishes an endpoint as soon
    // as a manifest makes it one, without waiting for that pod's sidecar to listen (the
    // readiness gate Kubernetes puts in between has no equivalent in the directory
    // source; see the mesh README).
    std::fs::write(
        manifests.join("standby.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: standby, namespace: shop }}\nspec:\n  selector: {{ app: standby }}\n  ports: [{{ name: http, port: 80, targetPort: {app} }}]\n"
        ),
    )
    .unwrap();
    let web2 = |serving: bool| pod("web-2", "web", if serving { "web" } else { "standby" }, 8);
    std::fs::write(manifests.join("web-2.yaml"), web2(false)).unwrap();
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    let admins = [reserve_port(), reserve_port(), reserve_port()];
    let sidecars: Vec<Proc> = [
        ("client-1.shop", "shop/client"),
        ("web-1.shop", "shop/web"),
        ("web-2.shop", "shop/web"),
    ]
    .iter()
    .zip(admins)
    .map(|((node, account), a)| flowgate_sidecar(&dir, node, account, ads, &state, a))
    .collect();
    let client_ip = format!("127.0.{net}.5");
    assert!(
        common::wait_until(Duration::from_secs(30), || call(&client_ip, "GET", "/").0
            == "200"),
        "no answer: {:?}; controller: {}; client: {}",
        call(&client_ip, "GET", "/"),
        ctl.stderr_so_far(),
        sidecars[0].stderr_so_far()
    );
    let status = |admin: u16| -> serde_json::Value {
        let (_, body, _) = common::curl(&["-s", &format!("http://127.0.0.1:{admin}/status")]);
        serde_json::from_str(&body).unwrap_or_default()
    };
    let not_after = |admin: u16| status(admin)["certificate"]["not_after"].clone();
    let certs_before: Vec<serde_json::Value> = admins.iter().map(|a| not_after(*a)).collect();
    let versions_before = status(admins[1])["config"]["versions"].clone();
    // The changes, on a thread of their own while the load runs.
    let run = Duration::from_secs(60);
    let changes = std::sync::atomic::AtomicUsize::new(0);
    let web2_answers = std::sync::atomic::AtomicU64::new(0);
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            let start = std::time::Instant::now();
            let (mut thief, mut retry, mut serving) = (false, false, false);
            for step in 0..26u32 {
                // A change every 2.3 s from 2 s in: 20 policy changes and 6 endpoint ones.
                let at = Duration::from_millis(2000 + 2300 * u64::from(step));
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                if step % 4 == 3 && step < 24 {
                    serving = !serving;
                    std::fs::write(manifests.join("web-2.yaml"), web2(serving)).unwrap();
                } else if step % 2 == 0 {
                    thief = !thief;
                    if thief {
                        std::fs::write(manifests.join("thief.yaml"), target("thief", "thief"))
                            .unwrap();
                    } else {
                        std::fs::remove_file(manifests.join("thief.yaml")).unwrap();
                    }
                } else {
                    retry = !retry;
                    if retry {
                        std::fs::write(
                            manifests.join("retry.yaml"),
                            "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: Retry\nmetadata: { name: web, namespace: shop }\nspec:\n  source: { kind: ServiceAccount, name: client }\n  destinations: [{ kind: Service, name: web }]\n  retryPolicy: { retryOn: gateway-error, numRetries: 1 }\n",
                        )
                        .unwrap();
                    } else {
                        std::fs::remove_file(manifests.join("retry.yaml")).unwrap();
                    }
                }
                changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        common::load::keepalive_load(
            format!("{client_ip}:15001").parse().unwrap(),
            "web.shop",
            "/",
            64,
            10,
            run,
            &|status, body| {
                if body == b"web-2\n" {
                    web2_answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                status == 200 && (body == b"web-1\n" || body == b"web-2\n")
            },
        )
    });
    let changes = changes.into_inner();
    let web2_answers = web2_answers.into_inner();
    eprintln!(
        "hot changes: {} answered, {} failed, {} changes, {} answers from web-2, {} reconnects, {} sent again after a reused connection closed; statuses {:?}",
        report.ok,
        report.failures,
        changes,
        web2_answers,
        report.reconnects,
        report.replayed,
        report.statuses
    );
    assert_eq!(
        report.failures,
        0,
        "failed requests: {:#?}\nclient: {}",
        report.failed,
        sidecars[0].stderr_so_far()
    );
    assert!(report.ok > 30_000, "the load did not run: {report:?}");
    // No change here touched what happens per connection at the client's sidecar: its
    // connections were not drained (they took each change on their next request).
    assert!(
        report.reconnects < 64,
        "{} reconnects: connections were drained for per-request changes",
        report.reconnects
    );
    assert_eq!(changes, 26);
    // The changes reached the sidecars: web-2 served while it was in the service, web-1's
    // configuration moved on, and every certificate was renewed during the run.
    assert!(web2_answers > 1000, "web-2 answered {web2_answers}");
    assert_ne!(status(admins[1])["config"]["versions"], versions_before);
    for (i, a) in admins.iter().enumerate() {
        assert_ne!(
            not_after(*a),
            certs_before[i],
            "sidecar {i} kept its certificate"
        );
    }
    drop((sidecars, ctl));
}

/// Bad input, permissive mode: garbage from a workload closes that connection only (a
/// keep-alive connection next to it is answered before and after, and the sidecar lives
/// on); a caller whose certificate comes from another CA — another trust domain, or a
/// SPIFFE ID of this mesh signed by someone else — is refused at the inbound port, where a
/// certificate of the mesh's CA is let in; and a server at the destination's address that
/// presents a mesh certificate with the wrong SPIFFE ID is refused by the caller's sidecar
/// (503), until the right sidecar is back.
#[test]
fn bad_input_is_refused_and_loses_nothing() {
    use std::io::{BufReader, Read, Write};
    if !common::peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let net = 21;
    let dir = TempDir::new("sidecar-bad");
    let (app, ads, admin) = (reserve_port(), reserve_port(), reserve_port());
    let web_ip = format!("127.0.{net}.6");
    let (_ng, _ndir) = web_app("sidecar-bad", &web_ip, app, "web $http_host");
    let manifests = dir.path("mesh");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("shop.yaml"), shop(net, app, "")).unwrap();
    let state = dir.path("state");
    let ctl = run_controller(&manifests, ads, admin, &state);
    let client = flowgate_sidecar(
        &dir,
        "client-1.shop",
        "shop/client",
        ads,
        &state,
        reserve_port(),
    );
    let web_admin = reserve_port();
    let web = flowgate_sidecar(&dir, "web-1.shop", "shop/web", ads, &state, web_admin);
    let client_ip = format!("127.0.{net}.5");
    let ok = || call(&client_ip, "GET", "/");
    assert!(
        common::wait_until(Duration::from_secs(30), || ok().0 == "200"),
        "no answer: {:?}; controller: {}; client: {}; web: {}",
        ok(),
        ctl.stderr_so_far(),
        client.stderr_so_far(),
        web.stderr_so_far()
    );

    // Garbage closes its own connection only.
    let mut good =
        BufReader::new(std::net::TcpStream::connect((client_ip.as_str(), 15001)).unwrap());
    assert_eq!(keepalive_get(&mut good, "/"), Some(200), "before");
    let mut bad = std::net::TcpStream::connect((client_ip.as_str(), 15001)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"\x16\x03\x01\x00\xffGARBAGE \x00\x01\x02 not http\r\n\r\n")
        .unwrap();
    // Closed, with a FIN or — bytes of the garbage left unread — a reset; not left open.
    let mut answer = Vec::new();
    let closed = bad.read_to_end(&mut answer);
    assert!(
        match &closed {
            Ok(_) => true,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        },
        "the garbage connection was not closed: {closed:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "garbage was answered {answer:?}"
    );
    assert_eq!(keepalive_get(&mut good, "/"), Some(200), "after");
    assert_eq!(ok().0, "200");

    // Callers from another CA are refused at the inbound port; the mesh's CA is let in.
    let pki = common::OpensslPki::new(&dir, "evil");
    let inbound = format!("https://{web_ip}:15006/");
    let with_cert = |cert: &Path, key: &Path| {
        common::curl(&[
            "-s",
            "-k",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &inbound,
        ])
    };
    for (leaf, id) in [
        ("other-domain", "URI:spiffe://evil.local/ns/shop/sa/client"),
        ("forged", "URI:spiffe://cluster.local/ns/shop/sa/client"),
    ] {
        let (cert, key) = pki.leaf_with(leaf, leaf, id, true);
        let (passed, code, _) = with_cert(&cert, &key);
        assert!(!passed, "{leaf} ({id}) was let in: {code}");
    }
    // A mesh certificate for `account`, made by the controller: the directory it is in.
    let mesh_certificate = |account: &str, out: &str| {
        let out = dir.path(out);
        let (code, _, err) = controller(&[
            "certificate",
            account,
            "--out",
            out.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let mesh_cert = mesh_certificate("shop/client", "mesh-client");
    let (passed, code, _) = with_cert(&mesh_cert.join("cert.pem"), &mesh_cert.join("key.pem"));
    assert!(
        passed && code == "200",
        "the mesh's own certificate: {code}"
    );

    // A server with the wrong SPIFFE ID where web's sidecar was: refused by the caller.
    drop(web);
    let impostor_cert = mesh_certificate("shop/thief", "impostor");
    let impostor = daemon(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("{web_ip}:15006"))
            .arg("-cert")
            .arg(impostor_cert.join("cert.pem"))
            .arg("-key")
            .arg(impostor_cert.join("key.pem")),
        "impostor",
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect((web_ip.as_str(), 15006)).is_ok()
        }),
        "openssl s_server: {}",
        impostor.stderr_so_far()
    );
    let answer = ok();
    assert_eq!(answer.0, "503", "the impostor was trusted: {answer:?}");
    drop(impostor);
    let web = flowgate_sidecar(&dir, "web-1.shop", "shop/web", ads, &state, web_admin);
    assert!(
        common::wait_until(Duration::from_secs(30), || ok().0 == "200"),
        "web's sidecar back: {:?}; web: {}",
        ok(),
        web.stderr_so_far()
    );
    drop((client, web, ctl));
}

/// The OSM `UpstreamTrafficSetting` case the Envoy sidecars pass (`tests/controller.rs`),
/// through Flowgate sidecars: the same answers.
#[test]
fn an_osm_upstream_traffic_setting_through_flowgate_sidecars_limits_as_envoy_does() {
    if !common::peers(&["python3", "curl"]) {
        return;
    }
    circuit_breaker_case("sidecar-limits", 23, &|dir, node, account, ads, state| {
        flowgate_sidecar(dir, node, account, ads, state, reserve_port())
    });
}
