//! `flowgate-sidecar` driven by a real `flowgate-controller`, in explicit proxy mode on
//! loopback addresses: sidecars get their certificates by CSR with a bootstrap token, take
//! their configuration over delta ADS, carry HTTP and TCP between pods over mutual TLS and
//! enforce SMI policy in strict mode; a policy change is in force within seconds; a sidecar
//! restarted while its controller is down serves its last good configuration. And a
//! Flowgate sidecar and an Envoy sidecar call each other: they are interchangeable.
#![cfg(all(feature = "mesh", feature = "http"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mesh::*;
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
    assert_eq!(
        clusters["outbound|80||web.shop|mtls"]["endpoints"][0]["address"],
        format!("{web_ip}:15006"),
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
