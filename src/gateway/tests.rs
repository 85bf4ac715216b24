//! Socket-free tests of the gateway schema and compiler: good files compile to the
//! pipelines described in `compile`, bad ones give errors that name the line and field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use flowgate_pipeline::Filter;

use super::parse;
use crate::config::{Config, ConfigFileError};

fn check(text: &str) -> Result<Config, ConfigFileError> {
    parse(text, "gw.yaml", Path::new("."))
}

fn fails(text: &str) -> ConfigFileError {
    match check(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

const GOOD: &str = "\
listeners:
  - name: web
    address: 127.0.0.1:0
    access_log: json
routes:
  - name: api
    match: { host: \"*.example.com\", path_prefix: /api/, method: [GET] }
    proxy:
      backend: app
      rewrite: { from: /api/, to: / }
      request_headers: { set: { x-gw: \"1\" } }
      response_headers: { remove: [server] }
  - name: old
    match: { path: /old }
    redirect: { status: 308, path_prefix: { from: /old, to: /new } }
  - name: health
    match: { path: /health }
    respond: { body: \"ok\\n\" }
backends:
  - name: app
    endpoints: [127.0.0.1:9001, { address: 127.0.0.1:9002, weight: 3 }]
    balance: { algorithm: { type: maglev, table_size: 257 } }
    hash_on: { header: x-user }
    health_check: { probe: { type: http, path: /health }, interval: 1s }
    retries: 2
";

#[test]
fn a_full_file_compiles_to_the_documented_pipelines() {
    let c = check(GOOD).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].1.name(), "listener:web");
    let names: Vec<&str> = c.module.pipelines().map(|p| p.name()).collect();
    for want in [
        "listener:web",
        "routes:web",
        "route:api",
        "route:old",
        "route:health",
        "backend:app",
        "backend:app:try",
        "gateway:not-found",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let kinds = |name: &str| -> Vec<String> {
        let d = c.module.get(name).unwrap().describe().to_json();
        d["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds("listener:web"), ["demux-http"]);
    assert_eq!(kinds("routes:web"), ["route"]);
    assert_eq!(
        kinds("route:api"),
        ["rewrite", "headers", "pipe", "headers"]
    );
    assert_eq!(kinds("route:old"), ["redirect"]);
    assert_eq!(kinds("route:health"), ["respond"]);
    assert_eq!(kinds("backend:app"), ["retry"]);
    assert_eq!(kinds("backend:app:try"), ["balance-http"]);
    let lb = c
        .module
        .get("backend:app:try")
        .unwrap()
        .describe()
        .to_json();
    let opts = &lb["filters"][0]["options"];
    assert_eq!(opts["balance"]["algorithm"]["type"], "maglev");
    assert_eq!(opts["endpoints"][1]["weight"], 3);
    assert_eq!(opts["hash_on"]["header"], "x-user");
    let retry = c.module.get("backend:app").unwrap().describe().to_json();
    assert_eq!(retry["filters"][0]["options"]["tries"], 3);
}

#[test]
fn without_retries_the_one_try_is_still_bounded() {
    let c = check(
        "listeners: [{ address: \"127.0.0.1:0\" }]\nroutes: [{ proxy: { backend: b } }]\nbackends: [{ name: b, endpoints: [\"127.0.0.1:1\"], retries: 0, per_try_timeout: 3s }]\n",
    )
    .unwrap();
    let t = c.module.get("backend:b").unwrap().describe().to_json();
    assert_eq!(t["filters"][0]["kind"], "timeout");
    assert_eq!(t["filters"][0]["options"]["head"], "3s");
    assert!(c.module.get("backend:b:try").is_some());
}

#[test]
fn defaults_round_robin_one_retry_http2_on() {
    let c = check(
        "listeners: [{ address: \"127.0.0.1:0\" }]\nroutes: [{ proxy: { backend: b } }]\nbackends: [{ name: b, endpoints: [\"127.0.0.1:1\"] }]\n",
    )
    .unwrap();
    let lb = c.module.get("backend:b:try").unwrap().describe().to_json();
    let opts = &lb["filters"][0]["options"];
    assert_eq!(opts["balance"]["algorithm"]["type"], "round_robin");
    assert_eq!(opts["balance"]["outlier"]["consecutive_5xx"], 5);
    assert_eq!(opts["connect_timeout"], "2s");
    let l = c
        .module
        .get("listener:listener0")
        .unwrap()
        .describe()
        .to_json();
    assert_eq!(l["filters"][0]["options"]["http2"]["enabled"], true);
    assert!(c.module.get("route:route0").is_some());
}

#[test]
fn every_policy_name_is_accepted() {
    for p in [
        "round_robin",
        "weighted_round_robin",
        "random",
        "least_request",
        "peak_ewma",
        "ring_hash",
        "maglev",
    ] {
        let text = format!(
            "listeners: [{{ address: \"127.0.0.1:0\" }}]\nbackends: [{{ name: b, endpoints: [\"127.0.0.1:1\"], balance: {p} }}]\n"
        );
        check(&text).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
}

#[test]
fn tls_listener_wraps_demux_in_accept_tls() {
    // Certificates are read at build time, so a missing file is an error naming the field.
    let text = "listeners:\n  - name: s\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n        - { cert: /nonexistent/a.pem, key: /nonexistent/a.key, sni: [a.test] }\n";
    let e = fails(text);
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.message
            .contains("listeners[0] (s): field `tls.certificates[0].cert`"),
        "{e}"
    );
}

#[test]
fn unknown_backend_names_the_route_and_field() {
    let e = fails(&GOOD.replace("backend: app", "backend: apq"));
    assert_eq!(e.line, 6, "{e}");
    assert!(
        e.message.contains(
            "routes[0] (api): field `proxy.backend`: backend `apq` is not defined under `backends`"
        ),
        "{e}"
    );
}

#[test]
fn duplicate_names_are_errors() {
    let twice = GOOD.to_string() + "  - name: app\n    endpoints: [127.0.0.1:9003]\n";
    let e = fails(&twice);
    assert!(
        e.message
            .contains("backends[1] (app): field `name`: `app` is defined twice"),
        "{e}"
    );
    let e = fails(&GOOD.replace("name: old", "name: api"));
    assert!(
        e.message
            .contains("routes[1]: field `name`: `api` is defined twice"),
        "{e}"
    );
    let e = fails(&GOOD.replace(
        "    access_log: json\n",
        "    access_log: json\n  - name: web\n    address: 127.0.0.1:0\n",
    ));
    assert!(
        e.message
            .contains("listeners[1]: field `name`: `web` is defined twice"),
        "{e}"
    );
    let e = fails(&GOOD.replace("[127.0.0.1:9001, {", "[127.0.0.1:9002, {"));
    assert!(
        e.message
            .contains("backends[0] (app): field `endpoints[1]`: `127.0.0.1:9002` is listed twice"),
        "{e}"
    );
}

#[test]
fn empty_groups_and_bad_endpoints_are_errors() {
    let e = fails(&GOOD.replace(
        "[127.0.0.1:9001, { address: 127.0.0.1:9002, weight: 3 }]",
        "[]",
    ));
    assert!(
        e.message
            .contains("backends[0] (app): field `endpoints`: list at least one endpoint"),
        "{e}"
    );
    let e = fails(&GOOD.replace("weight: 3", "weight: 0"));
    assert!(e.message.contains("field `endpoints[1].weight`"), "{e}");
    let e = fails(&GOOD.replace("127.0.0.1:9001", "localhost:9001"));
    assert_eq!(e.line, 21, "{e}");
    assert!(
        e.message.contains("`localhost:9001` is not `IP:port`"),
        "{e}"
    );
}

#[test]
fn unknown_fields_and_bad_values_name_their_line_and_field() {
    let e = fails(&GOOD.replace("    retries: 2\n", "    retires: 2\n"));
    assert_eq!(e.line, 25, "{e}");
    assert!(e.message.contains("unknown field `retires`"), "{e}");

    let e = fails(&GOOD.replace("{ type: maglev, table_size: 257 }", "fastest"));
    assert_eq!(e.line, 22, "{e}");
    assert!(e.message.contains("unknown algorithm `fastest`"), "{e}");

    let e = fails(&GOOD.replace("table_size: 257", "table_size: 256"));
    assert!(
        e.message.contains("backends[0] (app): field `balance"),
        "{e}"
    );

    let e = fails(&GOOD.replace("path_prefix: /api/, method", "path_regex: \"(\", method"));
    assert_eq!(e.line, 6, "{e}");
    assert!(
        e.message
            .contains("routes[0] (api): field `match.path_regex`"),
        "{e}"
    );

    let e = fails(&GOOD.replace("status: 308", "status: 200"));
    assert!(
        e.message
            .contains("routes[1] (old): field `redirect.status`"),
        "{e}"
    );

    let e = fails(&GOOD.replace("x-gw", "x gw"));
    assert!(
        e.message
            .contains("routes[0] (api): field `proxy.request_headers.set.x gw`"),
        "{e}"
    );

    let e = fails(&GOOD.replace("retries: 2", "retries: 12"));
    assert!(e.message.contains("field `retries`"), "{e}");

    let e = fails(&GOOD.replace("interval: 1s", "interval: 0s"));
    assert!(
        e.message
            .contains("backends[0] (app): field `health_check.interval`"),
        "{e}"
    );
}

#[test]
fn routes_need_exactly_one_action() {
    let e = fails(&GOOD.replace(
        "    respond: { body: \"ok\\n\" }\n",
        "    respond: { body: \"ok\\n\" }\n    redirect: { status: 301 }\n",
    ));
    assert!(
        e.message
            .contains("routes[2] (health): give exactly one of `proxy`, `redirect` or `respond`"),
        "{e}"
    );
    let e = fails(&GOOD.replace("    respond: { body: \"ok\\n\" }\n", ""));
    assert!(e.message.contains("(found 0)"), "{e}");
}

#[test]
fn listeners_choose_routes_by_name() {
    let text = GOOD.replace("    access_log: json\n", "    routes: [health]\n");
    let c = check(&text).unwrap();
    let d = c.module.get("routes:web").unwrap().describe().to_json();
    assert_eq!(
        d["filters"][0]["subs"],
        serde_json::json!(["route:health", "gateway:not-found"])
    );
    let e = fails(&GOOD.replace("    access_log: json\n", "    routes: [helth]\n"));
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.message
            .contains("listeners[0] (web): field `routes[0]`: route `helth` is not defined"),
        "{e}"
    );
}

#[test]
fn empty_listeners_and_zero_workers_are_errors() {
    let e = fails("listeners: []\n");
    assert!(e.message.contains("`listeners`"), "{e}");
    let e = fails(&format!("workers: 0\n{GOOD}"));
    assert!(e.message.contains("`workers`"), "{e}");
    let e = fails(
        &GOOD
            .replace("header_timeout", "x")
            .replace("    access_log: json\n", "    header_timeout: 0s\n"),
    );
    assert!(
        e.message
            .contains("listeners[0] (web): field `header_timeout`"),
        "{e}"
    );
    // A listener that may hold no connection would refuse every client.
    let e = fails(&GOOD.replace("    access_log: json\n", "    max_connections: 0\n"));
    assert!(
        e.message
            .contains("listeners[0] (web): field `max_connections`"),
        "{e}"
    );
}

#[test]
fn backend_tls_needs_a_name_and_a_readable_ca() {
    let e = fails(&GOOD.replace(
        "    retries: 2\n",
        "    retries: 2\n    tls: { ca: ca.pem }\n",
    ));
    assert!(
        e.message.contains("backends[0] (app): field `tls.sni`"),
        "{e}"
    );
    let e = fails(&GOOD.replace(
        "    retries: 2\n",
        "    retries: 2\n    tls: { sni: app.internal, ca: /nonexistent/ca.pem }\n",
    ));
    assert!(e.message.contains("field `tls.ca`"), "{e}");
    let e = fails(&GOOD.replace(
        "    retries: 2\n",
        "    retries: 2\n    tls: { sni: app.internal, verfy: false }\n",
    ));
    assert!(e.message.contains("unknown field `verfy`"), "{e}");
    // Unverified (tests only) needs neither.
    check(&GOOD.replace(
        "    retries: 2\n",
        "    retries: 2\n    tls: { verify: false }\n",
    ))
    .unwrap();
}

#[test]
fn old_backend_option_names_are_refused_naming_the_new_one() {
    for (old, new) in [
        ("policy: maglev", "`policy` is now `balance`"),
        (
            "outlier: { consecutive_5xx: 1 }",
            "`outlier` is now `balance.outlier`",
        ),
        (
            "slow_start: { window: 10s }",
            "`slow_start` is now `balance.slow_start`",
        ),
    ] {
        let e = fails(&format!(
            "listeners: [{{ address: \"127.0.0.1:0\" }}]\nbackends: [{{ name: b, endpoints: [\"127.0.0.1:1\"], {old} }}]\n"
        ));
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains(new), "{old}: {e}");
    }
}
