//! `proxy-mqtt` end to end on loopback, through the `flowgate` binary, with real mosquitto
//! brokers and real clients (mosquitto_pub/mosquitto_sub and paho-mqtt from PyPI, driven by
//! `tests/mqtt_clients.py`). `max_packet_size` counts a PUBLISH's payload: a larger
//! PUBLISH never reaches the broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A mosquitto broker on a free loopback port.
fn mosquitto(dir: &TempDir, name: &str) -> (Proc, u16) {
    mosquitto_with(dir, name, "")
}

/// A mosquitto broker with more configuration lines.
fn mosquitto_with(dir: &TempDir, name: &str, extra: &str) -> (Proc, u16) {
    let port = reserve_port();
    let conf = dir.write(
        &format!("{name}.conf"),
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n{extra}"
        ),
    );
    let mut p = daemon(Command::new("mosquitto").arg("-c").arg(&conf), name);
    p.wait_port(port);
    (p, port)
}

/// A running `mosquitto_sub`, with `-d`: its debug lines (`Client … received SUBACK`) say
/// when the subscription is in place, so a test publishes once it is instead of after a
/// fixed pause.
struct Sub {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Sub {
    /// Waits up to 10 s for the broker to acknowledge the subscription.
    fn subscribed(self) -> Sub {
        let acked = wait_until(Duration::from_secs(10), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("Client ") && l.contains("received SUBACK"))
        });
        assert!(acked, "no SUBACK: {:?}", self.lines.lock().unwrap());
        self
    }
}

/// Starts `mosquitto_sub` on `port` with `args`; wait for [`Sub::subscribed`], read it
/// with [`sub_output`].
fn sub_cli(port: u16, args: &[&str]) -> Sub {
    // Line-buffered (stdbuf), or the debug lines wait in stdio's buffer until it exits.
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = BufReader::new(child.stdout.take().unwrap());
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Sub {
        child,
        lines,
        reader,
    }
}

/// Waits up to 15 s for a `mosquitto_sub` to finish (killing it then) and returns the
/// messages it printed (its debug lines left out), trimmed.
fn sub_output(mut s: Sub) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = s.child.kill();
    let _ = s.child.wait();
    s.reader.join().unwrap();
    let lines = s.lines.lock().unwrap();
    let messages: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed (mid"))
        .collect();
    messages.join("\n").trim().to_string()
}

/// `flowgate run` with one `proxy-mqtt` over `endpoints`; `extra` is more YAML for the
/// filter's options (indented by 8).
fn proxy(dir: &TempDir, brokers: &[u16], extra: &str) -> (Proc, u16) {
    let port = reserve_port();
    let list: Vec<String> = brokers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cfg = dir.write(
        "proxy.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: mqtt\npipelines:\n  mqtt:\n    - proxy-mqtt:\n        endpoints: [{}]\n{extra}",
            list.join(", ")
        ),
    );
    (flowgate_run(&cfg, &[port]), port)
}

/// Runs a command with a deadline; (success, stdout + stderr).
fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (status.success(), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("timed out: {cmd:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn py(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt_clients.py");
    let (ok, out) = run(
        Command::new("python3").arg(script).args(args),
        Duration::from_secs(60),
    );
    assert!(ok, "mqtt_clients.py {args:?}: {out}");
    out.lines().last().unwrap_or_default().to_string()
}

fn pub_cli(port: u16, args: &[&str]) -> (bool, String) {
    run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        Duration::from_secs(20),
    )
}

/// The peers of every test here (the shared policy): mosquitto, its clients (and stdbuf
/// to read them as they go) and python3 with paho-mqtt.
fn mqtt_peers() -> bool {
    peers(&["mosquitto", "mosquitto_pub", "mosquitto_sub", "stdbuf"])
        && python_module("paho.mqtt.client", "paho-mqtt")
}

#[test]
fn one_client_id_always_lands_on_the_same_broker() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-sticky");
    let (_a, pa) = mosquitto(&dir, "a");
    let (_b, pb) = mosquitto(&dir, "b");
    for (port, tag) in [(pa, "A"), (pb, "B")] {
        let (ok, out) = pub_cli(port, &["-t", "whoami", "-m", tag, "-r", "-q", "1"]);
        assert!(ok, "{out}");
    }
    let (_fg, port) = proxy(&dir, &[pa, pb], "");
    let ids: Vec<String> = (0..12).map(|i| format!("device-{i}")).collect();
    let first: Vec<String> = ids
        .iter()
        .map(|id| py(&["whoami", &port.to_string(), id]))
        .collect();
    let again: Vec<String> = ids
        .iter()
        .map(|id| py(&["whoami", &port.to_string(), id]))
        .collect();
    assert_eq!(first, again, "a client id moved between brokers");
    let on_a = first.iter().filter(|b| b.contains("\"A\"")).count();
    assert!(
        on_a > 0 && on_a < ids.len(),
        "12 client ids all on one broker: {first:?}"
    );
}

#[test]
fn paho_and_mosquitto_clients_over_311_and_5() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-rt");
    // Two edge brokers, bridged both ways (as edge brokers are), so clients that land on
    // different brokers still see each other's messages.
    let (_a, pa) = mosquitto(&dir, "a");
    let bridge = format!(
        "connection ab\naddress 127.0.0.1:{pa}\ntopic # both 2\nbridge_protocol_version mqttv311\nrestart_timeout 1\n"
    );
    let (_b, pb) = mosquitto_with(&dir, "b", &bridge);
    let mut bridged = false;
    for i in 0..20 {
        let sub = sub_cli(pa, &["-t", "bridge/check", "-C", "1", "-W", "2"]).subscribed();
        pub_cli(pb, &["-t", "bridge/check", "-m", &i.to_string()]);
        if !sub_output(sub).is_empty() {
            bridged = true;
            break;
        }
    }
    assert!(bridged, "the mosquitto bridge did not come up");
    let (_fg, port) = proxy(&dir, &[pa, pb], "");
    for v in ["311", "5"] {
        let out = py(&["roundtrip", &port.to_string(), v]);
        assert!(out.contains("\"ok\": true"), "v{v}: {out}");
    }
    // mosquitto_sub (MQTT 5) receives what mosquitto_pub (3.1.1) sends at QoS 2.
    let sub = sub_cli(
        port,
        &[
            "-V", "mqttv5", "-t", "cli/t", "-C", "1", "-W", "10", "-q", "2",
        ],
    )
    .subscribed();
    let (ok, out) = pub_cli(
        port,
        &["-V", "mqttv311", "-t", "cli/t", "-m", "hello", "-q", "2"],
    );
    assert!(ok, "{out}");
    assert_eq!(sub_output(sub), "hello");
}

#[test]
fn wrong_credentials_get_the_right_connack_codes() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-auth");
    let (_m, pm) = mosquitto(&dir, "m");
    dir.write("users", "# test users\nalice:plain:pw\n");
    let extra = format!(
        "        auth: {{ users_file: {}, allow_anonymous: false }}\n",
        dir.path("users").display()
    );
    let (_fg, port) = proxy(&dir, &[pm], &extra);
    // 3.1.1: return codes 4 and 5, as mosquitto_pub reports them.
    let (ok, out) = pub_cli(port, &["-u", "alice", "-P", "bad", "-t", "x", "-m", "1"]);
    assert!(!ok && out.contains("bad user name or password"), "{out}");
    let (ok, out) = pub_cli(port, &["-t", "x", "-m", "1"]);
    assert!(!ok && out.contains("not authorised"), "{out}");
    let (ok, out) = pub_cli(port, &["-u", "alice", "-P", "pw", "-t", "x", "-m", "1"]);
    assert!(ok, "{out}");
    // MQTT 5: 0x86 and 0x87.
    let p = port.to_string();
    assert_eq!(py(&["connect", &p, "5", "alice", "bad"]), r#"{"rc": 134}"#);
    assert_eq!(py(&["connect", &p, "5"]), r#"{"rc": 135}"#);
    assert_eq!(py(&["connect", &p, "5", "alice", "pw"]), r#"{"rc": 0}"#);
}

#[test]
fn acl_disconnects_or_drops_denied_publishes() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-acl");
    let (_m, pm) = mosquitto(&dir, "m");
    let acl = |mode: &str| {
        format!(
            "        acl:\n          on_deny: {mode}\n          rules:\n            - {{ action: deny, topic: \"secret/#\", username: \"eve\" }}\n"
        )
    };
    let (fg, port) = proxy(&dir, &[pm], &acl("disconnect"));
    let p = port.to_string();
    let out = py(&["acl", &p, "5", "eve"]);
    assert_eq!(
        out,
        r#"{"suback": [1, 135], "received": ["open/a"], "denied_puback": null, "disconnect": 135}"#
    );
    drop(fg);
    let (_fg, port) = proxy(&dir, &[pm], &acl("drop"));
    let p = port.to_string();
    let out = py(&["acl", &p, "5", "eve"]);
    assert_eq!(
        out,
        r#"{"suback": [1, 135], "received": ["open/a"], "denied_puback": 135, "disconnect": null}"#
    );
    let out = py(&["acl", &p, "311", "eve"]);
    assert_eq!(
        out,
        r#"{"suback": [1, 128], "received": ["open/a"], "denied_puback": 0, "disconnect": null}"#
    );
    // The rule is for eve only.
    let out = py(&["acl", &p, "5", "mallory"]);
    assert!(out.contains(r#""suback": [1, 1]"#), "{out}");
}

#[test]
fn topic_prefix_isolates_tenants() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-prefix");
    let (_m, pm) = mosquitto(&dir, "m");
    let (_fg, port) = proxy(&dir, &[pm], "        prefix: \"tenants/%u/\"\n");
    let sub = |port: u16, user: Option<&str>, topic: &str| {
        let mut args = vec!["-t", topic, "-v", "-C", "1", "-W", "10"];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        sub_cli(port, &args)
    };
    // In: alice's `t` is `tenants/alice/t` on the broker.
    let direct = sub(pm, None, "tenants/#").subscribed();
    let (ok, out) = pub_cli(port, &["-u", "alice", "-t", "t", "-m", "x"]);
    assert!(ok, "{out}");
    assert_eq!(sub_output(direct), "tenants/alice/t x");
    // Out: alice sees her tenant's topics without the prefix.
    let via = sub(port, Some("alice"), "#").subscribed();
    pub_cli(pm, &["-t", "tenants/bob/in", "-m", "not-for-alice"]);
    pub_cli(pm, &["-t", "tenants/alice/in/z", "-m", "y"]);
    assert_eq!(sub_output(via), "in/z y");
    // A user name that is not one topic level is refused.
    let (ok, out) = pub_cli(port, &["-u", "a/b", "-t", "t", "-m", "x"]);
    assert!(!ok && out.contains("not authorised"), "{out}");
}

#[test]
fn publish_rate_limit_slows_a_client_down_without_dropping() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-rate");
    let (_m, pm) = mosquitto(&dir, "m");
    let (_fg, port) = proxy(
        &dir,
        &[pm],
        "        limits: { publish_rate: 20, publish_burst: 1 }\n",
    );
    let sub = sub_cli(pm, &["-t", "rate", "-C", "30", "-W", "20"]).subscribed();
    let lines: String = (0..30).map(|i| format!("m{i}\n")).collect();
    let lines_file = dir.write("lines", &lines);
    let t0 = Instant::now();
    let (ok, out) = run(
        Command::new("sh").arg("-c").arg(format!(
            "mosquitto_pub -h 127.0.0.1 -p {port} -t rate -q 1 -l < {}",
            lines_file.display()
        )),
        Duration::from_secs(20),
    );
    let took = t0.elapsed();
    assert!(ok, "{out}");
    // 30 messages at 20/s with a burst of 1 need at least 1.45 s.
    assert!(
        took >= Duration::from_millis(1300),
        "30 publishes took {took:?}"
    );
    let got = sub_output(sub);
    assert_eq!(got.lines().count(), 30, "{got}");
}

/// Reads until the peer closes (or 5 s pass); what was read.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => {}
        }
    }
    (got, false)
}

#[test]
fn malformed_packets_close_only_that_client() {
    if !mqtt_peers() {
        return;
    }
    let dir = TempDir::new("mqtt-bad");
    let (_m, pm) = mosquitto(&dir, "m");
    let (_fg, port) = proxy(&dir, &[pm], "        max_packet_size: 1KiB\n");
    // A well-behaved 3.1.1 client, connected throughout.
    let mut good = TcpStream::connect(("127.0.0.1", port)).unwrap();
    good.write_all(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04good")
        .unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ack = [0u8; 4];
    good.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);

    // An MQTT 5 CONNECT (client id "bad"), then each kind of bad packet.
    let connect5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03bad";
    let mut big = vec![0x82, 0x86, 0x10, 0x00, 0x01, 0x00, 0x08, 0x00];
    big.extend(std::iter::repeat_n(b'a', 2048));
    big.push(0x00);
    let cases: [(&str, Vec<u8>, u8); 3] = [
        // remaining length with a fifth byte
        (
            "remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            0x81,
        ),
        // SUBSCRIBE of 2 KiB, over the 1 KiB limit
        ("oversized", big, 0x95),
        // PUBLISH topic with invalid UTF-8
        (
            "utf-8 topic",
            b"\x30\x06\x00\x02\xC3\x28\x00x".to_vec(),
            0x81,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(connect5).unwrap();
        let mut ack = [0u8; 2];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut ack).unwrap();
        assert_eq!(ack[0], 0x20, "{what}: no CONNACK");
        let mut rest = vec![0u8; usize::from(ack[1])];
        c.read_exact(&mut rest).unwrap();
        c.write_all(&bytes).unwrap();
        let (got, closed) = read_to_close(&mut c);
        assert!(closed, "{what}: connection left open");
        assert_eq!(
            got.first(),
            Some(&0xE0),
            "{what}: no DISCONNECT: {got:02x?}"
        );
        assert_eq!(got.get(2), Some(&code), "{what}: reason {got:02x?}");
    }

    // The good client is still served.
    good.write_all(&[0xC0, 0x00]).unwrap();
    let mut pong = [0u8; 2];
    good.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
    assert!(py(&["alive", &port.to_string()]).contains("\"ok\": true"));
}

#[test]
fn tls_client_certificate_names_the_user() {
    if !mqtt_peers() || !peers(&["openssl"]) {
        return;
    }
    let dir = TempDir::new("mqtt-tls");
    let pki = OpensslPki::new(&dir, "ca");
    let (server_cert, server_key) = pki.leaf("server", "localhost", false);
    let (dev_cert, dev_key) = pki.leaf("dev", "device-7", true);
    let (_m, pm) = mosquitto(&dir, "m");
    let port = reserve_port();
    let cfg = dir.write(
        "tls.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: tls\npipelines:\n  tls:\n    - accept-tls:\n        pipeline: mqtt\n        certificates: [{{ cert: {}, key: {} }}]\n        client_auth: {{ ca: {}, required: false }}\n  mqtt:\n    - proxy-mqtt:\n        endpoints: [127.0.0.1:{pm}]\n        auth: {{ tls_identity: true, allow_anonymous: false }}\n        prefix: \"devices/%u/\"\n",
            server_cert.display(),
            server_key.display(),
            pki.ca().display()
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let direct = sub_cli(pm, &["-t", "devices/#", "-v", "-C", "1", "-W", "10"]).subscribed();
    let ca = pki.ca();
    let tls = |cert: Option<(&std::path::Path, &std::path::Path)>| {
        let mut args = vec![
            "--cafile".to_string(),
            ca.display().to_string(),
            "--insecure".into(),
            "-t".into(),
            "temp".into(),
            "-m".into(),
            "21".into(),
        ];
        if let Some((c, k)) = cert {
            args.extend(["--cert".into(), c.display().to_string()]);
            args.extend(["--key".into(), k.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pub_cli(port, &args)
    };
    // Without a certificate (and without a user name): not authorised.
    let (ok, out) = tls(None);
    assert!(!ok && out.contains("not authorised"), "{out}");
    // With one: its identity is the user, so the topic lands under devices/device-7/.
    let (ok, out) = tls(Some((&dev_cert, &dev_key)));
    assert!(ok, "{out}");
    assert_eq!(sub_output(direct), "devices/device-7/temp 21");
}

#[test]
fn max_packet_size_counts_the_publish_payload() {
    if !mqtt_peers() {
        return;
    }
    // mosquitto itself has no packet limit here, so whatever the proxy lets through
    // arrives: only the proxy can refuse the larger PUBLISH.
    let dir = TempDir::new("mqtt-limit");
    let (_m, pm) = mosquitto(&dir, "m");
    const LIMIT: u32 = 2_097_152;
    let (_fg, port) = proxy(&dir, &[pm], &format!("        max_packet_size: {LIMIT}\n"));
    let (p, b) = (port.to_string(), pm.to_string());
    // The PUBLISH of exactly 2 MiB, whole, arrives; the one of a byte more does not, and
    // its sender is disconnected: MQTT 5 with DISCONNECT 0x95 (149), after a CONNACK that
    // said the limit; 3.1.1 by closing (paho reports "unspecified error", 128).
    let ok = (LIMIT as usize) - 1 - 3 - (2 + "lim/v5/ok".len() + 2 + 1);
    let out = py(&["packet_limit", &p, &b, "5", &LIMIT.to_string()]);
    assert_eq!(
        out,
        format!(
            r#"{{"received": [["ok", {ok}], ["marker", 1]], "disconnect": 149, "connack_max": {LIMIT}}}"#
        )
    );
    let ok = (LIMIT as usize) - 1 - 3 - (2 + "lim/v311/ok".len() + 2);
    let out = py(&["packet_limit", &p, &b, "311", &LIMIT.to_string()]);
    assert!(
        out.starts_with(&format!(
            r#"{{"received": [["ok", {ok}], ["marker", 1]], "disconnect": "#
        )) && out.ends_with(r#", "connack_max": null}"#)
            && !out.contains(r#""disconnect": 0,"#),
        "{out}"
    );
}
