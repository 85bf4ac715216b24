//! `AcceptTls` and `ConnectTls`, driven socket-free by a rustls client in memory through the
//! test harness (certificates made by rcgen in a temporary directory), back to back, from
//! configuration, and against a real `openssl s_client` over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowgate_filters_net::tls::{
    AcceptTls, AcceptTlsConfig, ConnectTls, ConnectTlsConfig, TlsError,
};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig, FilterSpec};
use flowgate_pipeline::server::{ListenerConfig, Protocol, Server};
use flowgate_pipeline::testing::{Harness, require_programs};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Events, Filter, Module, Pipeline, Side, StreamError,
    TlsInfo,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use serde_json::json;

// === test PKI ===

/// A CA and the certificates it signs, as PEM files in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flowgate-tls-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("Flowgate test CA {name}"));
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Writes `<name>.pem` and `<name>.key` for a leaf with these DNS names; returns its DER.
    fn leaf(&self, name: &str, dns: &[&str]) -> CertificateDer<'static> {
        let mut p =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    fn cx(&self) -> BuildContext {
        BuildContext::new(&self.dir)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PKI with a server certificate for `a.example` (and `unknown.example`).
fn server_pki() -> Pki {
    let pki = Pki::new("server");
    pki.leaf("a", &["a.example", "unknown.example"]);
    pki
}

fn accept_config(extra: serde_json::Value) -> AcceptTlsConfig {
    let mut base = json!({
        "pipeline": "echo",
        "certificates": [{"cert": "a.pem", "key": "a.key", "sni": ["a.example"]}],
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    serde_json::from_value(base).unwrap()
}

fn echo() -> Arc<Pipeline> {
    Arc::new(Pipeline::builder("echo").build().unwrap())
}

/// `AcceptTls -> echo`, from a configuration (`extra` overrides fields).
fn accept_echo(pki: &Pki, extra: serde_json::Value) -> AcceptTls {
    let server = accept_config(extra).server_config(&pki.cx()).unwrap();
    AcceptTls::new(server, echo())
}

fn client_config(
    roots: RootCertStore,
    alpn: &[&str],
    cert: Option<(&Pki, &str)>,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match cert {
        None => b.with_no_client_auth(),
        Some((pki, name)) => {
            let pem = std::fs::read(pki.path(&format!("{name}.pem"))).unwrap();
            let certs = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = std::fs::read(pki.path(&format!("{name}.key"))).unwrap();
            let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
    };
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

// === an in-memory TLS client ===

#[derive(Debug)]
enum Failed {
    /// The filter ended its output.
    Server,
    /// The client rejected what the filter sent.
    Client(rustls::Error),
}

struct TlsClient(ClientConnection, Vec<u8>);

impl TlsClient {
    fn new(config: Arc<ClientConfig>, name: &str) -> TlsClient {
        let name = ServerName::try_from(name.to_string()).unwrap();
        TlsClient(ClientConnection::new(config, name).unwrap(), Vec::new())
    }

    /// Pushes what the client has to send into the filter, as one event.
    fn flush(&mut self, h: &mut Harness) {
        let mut v = Vec::new();
        while self.0.wants_write() {
            self.0.write_tls(&mut v).unwrap();
        }
        if !v.is_empty() {
            h.push(Event::Data(v.into()));
        }
    }

    /// Takes ciphertext from the filter, keeping the plaintext.
    fn receive(&mut self, b: &[u8]) -> Result<(), Failed> {
        let mut b = b;
        while !b.is_empty() {
            self.0.read_tls(&mut b).unwrap();
            let state = self.0.process_new_packets().map_err(Failed::Client)?;
            let n = state.plaintext_bytes_to_read();
            let start = self.1.len();
            self.1.resize(start + n, 0);
            self.0.reader().read_exact(&mut self.1[start..]).unwrap();
        }
        Ok(())
    }

    async fn handshake(&mut self, h: &mut Harness) -> Result<(), Failed> {
        loop {
            self.flush(h);
            if !self.0.is_handshaking() {
                return Ok(());
            }
            match h.next().await {
                Some(Event::Data(b)) => self.receive(&b)?,
                Some(Event::StreamEnd(_)) | None => return Err(Failed::Server),
                Some(_) => {}
            }
        }
    }

    /// Writes plaintext, flushing whenever the client's buffer is full.
    fn write(&mut self, h: &mut Harness, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.0.writer().write(data).unwrap();
            data = &data[n..];
            self.flush(h);
        }
    }

    /// Reads `n` bytes of plaintext.
    async fn read(&mut self, h: &mut Harness, n: usize) -> Vec<u8> {
        while self.1.len() < n {
            match h.next().await {
                Some(Event::Data(b)) => self.receive(&b).unwrap(),
                other => panic!("wanted {n} bytes, have {}, got {other:?}", self.1.len()),
            }
        }
        self.1.drain(..n).collect()
    }
}

/// Every remaining output event, feeding the data to the client; returns the end.
async fn drain(
    h: &mut Harness,
    client: &mut TlsClient,
) -> (Option<StreamError>, Option<rustls::Error>) {
    let mut client_err = None;
    loop {
        match h.next().await {
            Some(Event::Data(b)) => {
                if let Err(Failed::Client(e)) = client.receive(&b) {
                    client_err = Some(e);
                }
            }
            Some(Event::StreamEnd(e)) => return (e, client_err),
            Some(_) => {}
            None => panic!("output ended without StreamEnd"),
        }
    }
}

fn assert_tls_error(e: &Option<StreamError>, side: Side) {
    let e = e.as_ref().expect("an error end");
    assert_eq!((e.kind(), e.side()), (ErrorKind::Tls, side), "{e}");
}

// === AcceptTls ===

#[tokio::test]
async fn handshake_echo_and_close_notify() {
    let pki = server_pki();
    let cx = Context::new();
    let mut h = Harness::with_context(&accept_echo(&pki, json!({})), &cx);
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    client.handshake(&mut h).await.unwrap();

    client.write(&mut h, b"hello");
    assert_eq!(client.read(&mut h, 5).await, b"hello");
    // Many records, more than one read's worth.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.write(&mut h, &big);
    assert_eq!(client.read(&mut h, big.len()).await, big);

    let info = cx.conn().tls.expect("TLS facts recorded");
    assert_eq!(info.sni.as_deref(), Some("a.example"));
    assert_eq!(info.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(
        (info.alpn.as_deref(), info.peer_identity.as_deref()),
        (None, None)
    );

    // close_notify from the client ends the echo, which ends the stream with close_notify.
    client.0.send_close_notify();
    client.flush(&mut h);
    let (end, client_err) = drain(&mut h, &mut client).await;
    assert!(end.is_none(), "{end:?}");
    assert!(client_err.is_none());
    let mut buf = [0u8; 1];
    assert_eq!(
        client.0.reader().read(&mut buf).unwrap(),
        0,
        "server sent close_notify"
    );
}

#[tokio::test]
async fn plain_eof_after_handshake_ends_cleanly() {
    let pki = server_pki();
    let mut h = Harness::new(&accept_echo(&pki, json!({})));
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    client.handshake(&mut h).await.unwrap();
    client.write(&mut h, b"bye");
    h.push(Event::END);
    assert_eq!(client.read(&mut h, 3).await, b"bye");
    let (end, _) = drain(&mut h, &mut client).await;
    assert!(end.is_none());
}

#[tokio::test]
async fn tls12_only_and_cipher_suite_choice() {
    let pki = server_pki();
    let cfg = json!({"versions": ["tls1.2"], "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]});
    let cx = Context::new();
    let mut h = Harness::with_context(&accept_echo(&pki, cfg), &cx);
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    client.handshake(&mut h).await.unwrap();
    client.write(&mut h, b"twelve");
    assert_eq!(client.read(&mut h, 6).await, b"twelve");
    assert_eq!(cx.conn().tls.unwrap().version.as_deref(), Some("TLSv1.2"));
    let suite = client.0.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(
        suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let pki = server_pki();
    let b = pki.leaf("b", &["b.example", "*.b.example"]);
    let a = CertificateDer::from(
        std::fs::read(pki.path("a.pem"))
            .map(|pem| {
                rustls_pemfile::certs(&mut &pem[..])
                    .next()
                    .unwrap()
                    .unwrap()
                    .to_vec()
            })
            .unwrap(),
    );
    let filter = accept_echo(
        &pki,
        json!({"certificates": [
            {"cert": "a.pem", "key": "a.key", "sni": ["a.example"]},
            {"cert": "b.pem", "key": "b.key", "sni": ["B.example", "*.b.example"]},
        ]}),
    );
    for (name, want) in [
        ("b.example", &b),
        ("x.b.example", &b),
        ("a.example", &a),
        ("unknown.example", &a),
    ] {
        let cx = Context::new();
        let mut h = Harness::with_context(&filter, &cx);
        let mut client = TlsClient::new(client_config(pki.roots(), &[], None), name);
        client
            .handshake(&mut h)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(client.0.peer_certificates().unwrap()[0], *want, "{name}");
        client.write(&mut h, b"?");
        assert_eq!(client.read(&mut h, 1).await, b"?");
        assert_eq!(cx.conn().tls.unwrap().sni.as_deref(), Some(name));
    }
}

/// Records the TLS facts its stream had when it was attached.
struct RecordTls(Arc<Mutex<Option<Option<Arc<TlsInfo>>>>>);

impl Filter for RecordTls {
    fn describe(&self) -> Description {
        Description::filter("record-tls")
    }
    fn attach(&self, input: Events, cx: &Context) -> Events {
        *self.0.lock().unwrap() = Some(cx.conn().tls);
        input
    }
}

#[tokio::test]
async fn alpn_and_sni_are_known_when_the_sub_pipeline_starts() {
    let pki = server_pki();
    let seen = Arc::new(Mutex::new(None));
    let sub = Pipeline::builder("inner")
        .filter(RecordTls(seen.clone()))
        .build()
        .unwrap();
    let server = accept_config(json!({"alpn": ["h2", "http/1.1"]}))
        .server_config(&pki.cx())
        .unwrap();
    let mut h = Harness::new(&AcceptTls::new(server, sub));
    let mut client = TlsClient::new(client_config(pki.roots(), &["http/1.1"], None), "a.example");
    client.handshake(&mut h).await.unwrap();
    client.write(&mut h, b"x");
    assert_eq!(client.read(&mut h, 1).await, b"x");
    assert_eq!(client.0.alpn_protocol(), Some(&b"http/1.1"[..]));
    let info = seen
        .lock()
        .unwrap()
        .clone()
        .expect("sub-pipeline attached")
        .expect("TLS facts");
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(info.sni.as_deref(), Some("a.example"));
}

// === mutual TLS ===

/// A server PKI requiring client certificates from its own CA, plus `client`, a good client
/// certificate, and `rogue`, one from another CA.
fn mtls() -> (Pki, Pki, AcceptTls) {
    let pki = server_pki();
    pki.leaf("client", &["client.example"]);
    let other = Pki::new("other");
    other.leaf("rogue", &["client.example"]);
    let filter = accept_echo(&pki, json!({"client_auth": {"ca": "ca.pem"}}));
    (pki, other, filter)
}

#[tokio::test]
async fn mtls_without_client_cert_is_rejected() {
    let (pki, _other, filter) = mtls();
    let mut h = Harness::new(&filter);
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    // TLS 1.3: the client finishes first, then the server checks its (empty) certificate.
    let _ = client.handshake(&mut h).await;
    let (end, client_err) = drain(&mut h, &mut client).await;
    assert_tls_error(&end, Side::Downstream);
    assert!(
        matches!(client_err, Some(rustls::Error::AlertReceived(_))),
        "alert sent: {client_err:?}"
    );
}

#[tokio::test]
async fn mtls_with_cert_from_another_ca_is_rejected() {
    let (pki, other, filter) = mtls();
    let mut h = Harness::new(&filter);
    let mut client = TlsClient::new(
        client_config(pki.roots(), &[], Some((&other, "rogue"))),
        "a.example",
    );
    let _ = client.handshake(&mut h).await;
    let (end, client_err) = drain(&mut h, &mut client).await;
    assert_tls_error(&end, Side::Downstream);
    let cause = end.unwrap().cause().unwrap().to_string();
    assert!(cause.contains("UnknownIssuer"), "{cause}");
    assert!(matches!(client_err, Some(rustls::Error::AlertReceived(_))));
}

#[tokio::test]
async fn mtls_with_good_cert_is_accepted_and_identity_recorded() {
    let (pki, _other, filter) = mtls();
    let cx = Context::new();
    let mut h = Harness::with_context(&filter, &cx);
    let mut client = TlsClient::new(
        client_config(pki.roots(), &[], Some((&pki, "client"))),
        "a.example",
    );
    client.handshake(&mut h).await.unwrap();
    client.write(&mut h, b"me");
    assert_eq!(client.read(&mut h, 2).await, b"me");
    assert_eq!(
        cx.conn().tls.unwrap().peer_identity.as_deref(),
        Some("client.example")
    );
}

#[tokio::test]
async fn mtls_optional_lets_clients_without_cert_in() {
    let pki = server_pki();
    let filter = accept_echo(
        &pki,
        json!({"client_auth": {"ca": "ca.pem", "required": false}}),
    );
    let cx = Context::new();
    let mut h = Harness::with_context(&filter, &cx);
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    client.handshake(&mut h).await.unwrap();
    client.write(&mut h, b"anon");
    assert_eq!(client.read(&mut h, 4).await, b"anon");
    assert_eq!(cx.conn().tls.unwrap().peer_identity, None);
}

// === failures and limits ===

#[tokio::test]
async fn garbage_gets_an_alert_and_a_tls_error() {
    let pki = server_pki();
    let mut h = Harness::new(&accept_echo(&pki, json!({})));
    h.push("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n".into());
    let out = h.collect().await;
    let kinds = flowgate_pipeline::testing::kinds_of(&out);
    assert_eq!(
        kinds,
        ["Data", "StreamEnd(error)"],
        "an alert, then the error"
    );
    match &out[0] {
        Event::Data(alert) => assert_eq!(alert[0], 0x15, "an alert record"),
        _ => unreachable!(),
    }
    let Some(Event::StreamEnd(end)) = out.last() else {
        unreachable!()
    };
    assert_tls_error(end, Side::Downstream);
}

#[tokio::test]
async fn eof_before_any_byte_is_clean_and_mid_handshake_is_an_error() {
    let pki = server_pki();
    let filter = accept_echo(&pki, json!({}));
    let out = flowgate_pipeline::testing::run(&filter, vec![Event::END]).await;
    assert_eq!(flowgate_pipeline::testing::kinds_of(&out), ["StreamEnd"]);

    let mut h = Harness::new(&filter);
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    client.flush(&mut h); // the client hello
    h.push(Event::END);
    let (end, _) = drain(&mut h, &mut client).await;
    assert_tls_error(&end, Side::Downstream);
    let cause = end.unwrap();
    let cause = cause.cause().unwrap().downcast_ref::<TlsError>();
    assert!(
        matches!(cause, Some(TlsError::ClosedInHandshake)),
        "{cause:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn handshake_timeout() {
    let pki = server_pki();
    let filter = accept_echo(&pki, json!({}));
    let mut h = Harness::new(&filter.handshake_timeout(Duration::from_secs(3)));
    h.push(Event::Data(Bytes::from_static(&[0x16, 0x03, 0x01])));
    let start = tokio::time::Instant::now();
    let out = h.collect().await;
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let Some(Event::StreamEnd(end)) = out.last() else {
        panic!("{out:?}")
    };
    assert_tls_error(end, Side::Downstream);
    let cause = end
        .as_ref()
        .unwrap()
        .cause()
        .unwrap()
        .downcast_ref::<TlsError>();
    assert!(
        matches!(cause, Some(TlsError::HandshakeTimeout(_))),
        "{cause:?}"
    );
}

/// Holds its input without ever reading it.
struct Stall;

impl Filter for Stall {
    fn describe(&self) -> Description {
        Description::filter("stall")
    }
    fn attach(&self, input: Events, _cx: &Context) -> Events {
        Box::pin(futures_util::stream::poll_fn(move |_| {
            let _hold = &input;
            Poll::<Option<Event>>::Pending
        }))
    }
}

#[tokio::test]
async fn back_pressure_stops_reading_while_the_sub_pipeline_is_full() {
    let pki = server_pki();
    let server = accept_config(json!({})).server_config(&pki.cx()).unwrap();
    let stall = Pipeline::builder("stall").filter(Stall).build().unwrap();
    let mut h = Harness::new(&AcceptTls::new(server, stall).max_feed(16));
    let mut client = TlsClient::new(client_config(pki.roots(), &[], None), "a.example");
    client.handshake(&mut h).await.unwrap();
    for _ in 0..100 {
        client.write(&mut h, &[b'x'; 100]);
    }
    for _ in 0..50 {
        let _ = h.try_next();
    }
    let unread = h.unread_input();
    assert!(
        (80..=90).contains(&unread),
        "read 16 records into the sub-pipeline, left the rest: {unread}"
    );
}

// === ConnectTls ===

#[tokio::test]
async fn connect_tls_to_accept_tls_roundtrip() {
    let pki = server_pki();
    let server = AcceptTls::new(
        accept_config(json!({})).server_config(&pki.cx()).unwrap(),
        echo(),
    );
    let inner = Pipeline::builder("tls-server")
        .filter(server)
        .build()
        .unwrap();
    let client = ConnectTls::new(
        client_config(pki.roots(), &[], None),
        ServerName::try_from("a.example").unwrap(),
        inner,
    );
    let mut h = Harness::new(&client);
    h.push("ping".into());
    assert_eq!(h.next_data().await.as_deref(), Some(&b"ping"[..]));
    h.push("pong".into());
    assert_eq!(h.next_data().await.as_deref(), Some(&b"pong"[..]));
    h.push(Event::END);
    let rest = h.collect().await;
    assert_eq!(flowgate_pipeline::testing::kinds_of(&rest), ["StreamEnd"]);
}

#[tokio::test]
async fn connect_tls_rejects_an_untrusted_server() {
    let pki = server_pki();
    let other = Pki::new("other");
    let server = AcceptTls::new(
        accept_config(json!({})).server_config(&pki.cx()).unwrap(),
        echo(),
    );
    let inner = Pipeline::builder("tls-server")
        .filter(server)
        .build()
        .unwrap();
    let client = ConnectTls::new(
        client_config(other.roots(), &[], None),
        ServerName::try_from("a.example").unwrap(),
        inner,
    );
    let out = flowgate_pipeline::testing::run(&client, vec!["x".into(), Event::END]).await;
    let Some(Event::StreamEnd(end)) = out.last() else {
        panic!("{out:?}")
    };
    assert_tls_error(end, Side::Upstream);
}

#[tokio::test(start_paused = true)]
async fn connect_tls_handshake_timeout() {
    let pki = server_pki();
    let stall = Pipeline::builder("stall").filter(Stall).build().unwrap();
    let name = ServerName::try_from("a.example").unwrap();
    let client = ConnectTls::new(client_config(pki.roots(), &[], None), name, stall);
    let out =
        flowgate_pipeline::testing::run(&client.handshake_timeout(Duration::from_secs(2)), vec![])
            .await;
    let Some(Event::StreamEnd(end)) = out.last() else {
        panic!("{out:?}")
    };
    assert_tls_error(end, Side::Upstream);
    let cause = end
        .as_ref()
        .unwrap()
        .cause()
        .unwrap()
        .downcast_ref::<TlsError>();
    assert!(
        matches!(cause, Some(TlsError::HandshakeTimeout(_))),
        "{cause:?}"
    );
}

/// Builds a module from JSON configuration through the standard registry.
fn module(pki: &Pki, pipelines: serde_json::Value) -> Module {
    let reg = Arc::new(net_registry());
    let mut m = Module::builder();
    for (name, filters) in pipelines.as_object().unwrap() {
        let mut p = Pipeline::builder(name.clone());
        for f in filters.as_array().unwrap() {
            let spec: FilterSpec = reg.activate(|| serde_json::from_value(f.clone())).unwrap();
            p = p.filter_arc(spec.config.build(&pki.cx()).unwrap());
        }
        m.add(p);
    }
    m.build().unwrap()
}

#[tokio::test]
async fn configured_mtls_connect_to_accept_with_alpn() {
    let pki = server_pki();
    pki.leaf("client", &["client.example"]);
    let m = module(
        &pki,
        json!({
            "main": [{"connect-tls": {
                "pipeline": "tls-server", "sni": "a.example", "ca": "ca.pem", "alpn": ["h2"],
                "client_cert": {"cert": "client.pem", "key": "client.key"},
            }}],
            "tls-server": [{"accept-tls": {
                "pipeline": "echo", "alpn": ["http/1.1", "h2"], "client_auth": {"ca": "ca.pem"},
                "certificates": [{"cert": "a.pem", "key": "a.key"}],
            }}],
            "echo": [],
        }),
    );
    let main = m.get("main").unwrap();
    let text: String = m.describe().iter().map(|d| d.to_string()).collect();
    assert!(
        text.contains("connect-tls") && text.contains("accept-tls"),
        "{text}"
    );
    let cx = Context::new();
    let mut h = Harness::with_context(main.as_ref(), &cx);
    h.push("over mtls".into());
    assert_eq!(h.next_data().await.as_deref(), Some(&b"over mtls"[..]));
    let info = cx.conn().tls.unwrap();
    assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(info.peer_identity.as_deref(), Some("client.example"));
}

#[tokio::test]
async fn connect_tls_without_verification() {
    let pki = server_pki();
    let m = module(
        &pki,
        json!({
            "main": [{"connect-tls": {"pipeline": "tls-server", "verify": false}}],
            "tls-server": [{"accept-tls": {"pipeline": "echo", "certificates": [{"cert": "a.pem", "key": "a.key"}]}}],
            "echo": [],
        }),
    );
    let out = flowgate_pipeline::testing::run(
        m.get("main").unwrap().as_ref(),
        vec!["any".into(), Event::END],
    )
    .await;
    assert_eq!(flowgate_pipeline::testing::data_of(&out), b"any");
    assert!(
        matches!(out.last(), Some(Event::StreamEnd(None))),
        "{out:?}"
    );
}

// === configuration ===

fn build_err(cfg: Box<dyn FilterConfig>, pki: &Pki) -> ConfigError {
    cfg.build(&pki.cx()).err().expect("a config error")
}

#[test]
fn config_errors_name_the_field() {
    let pki = server_pki();
    let accept = |extra| Box::new(accept_config(extra)) as Box<dyn FilterConfig>;
    let connect = |v: serde_json::Value| {
        Box::new(serde_json::from_value::<ConnectTlsConfig>(v).unwrap()) as Box<dyn FilterConfig>
    };
    let cases: Vec<(Box<dyn FilterConfig>, &str)> = vec![
        (
            accept(json!({"cipher_suites": ["TLS_RSA_WITH_RC4_128_MD5"]})),
            "cipher_suites[0]",
        ),
        (
            accept(json!({"cipher_suites": ["TLS13_AES_128_GCM_SHA256"], "versions": ["tls1.2"]})),
            "cipher_suites",
        ),
        (accept(json!({"versions": []})), "versions"),
        (accept(json!({"certificates": []})), "certificates"),
        (
            accept(json!({"certificates": [{"cert": "missing.pem", "key": "a.key"}]})),
            "certificates[0].cert",
        ),
        (
            accept(json!({"certificates": [{"cert": "a.pem", "key": "ca.pem"}]})),
            "certificates[0].key",
        ),
        (
            accept(json!({"client_auth": {"ca": "nope.pem"}})),
            "client_auth.ca",
        ),
        (
            accept(json!({"handshake_timeout": "0s"})),
            "handshake_timeout",
        ),
        (connect(json!({"pipeline": "up", "ca": "ca.pem"})), "sni"),
        (connect(json!({"pipeline": "up", "sni": "a.example"})), "ca"),
        (
            connect(json!({"pipeline": "up", "sni": "not a name!", "ca": "ca.pem"})),
            "sni",
        ),
    ];
    for (cfg, field) in cases {
        let e = build_err(cfg, &pki);
        assert_eq!(e.field, field, "{e}");
    }
    let e = serde_json::from_value::<AcceptTlsConfig>(
        json!({"pipeline": "p", "certificates": [], "alpns": []}),
    );
    assert!(e.unwrap_err().to_string().contains("unknown field `alpns`"));
    let c = accept_config(json!({"cipher_suites": ["tls_aes_256_gcm_sha384"]}));
    assert!(
        Box::new(c).build(&pki.cx()).is_ok(),
        "IANA names in any case"
    );
}

#[test]
fn registered_names() {
    let reg = net_registry();
    let names: Vec<&str> = reg.names().collect();
    assert!(
        names.contains(&"accept-tls") && names.contains(&"connect-tls"),
        "{names:?}"
    );
}

// === a real client: openssl s_client ===

/// Starts a one-worker server running `filter` on a loopback port.
fn serve(filter: AcceptTls) -> (Server, SocketAddr) {
    let server = Server::builder().workers(1).start().unwrap();
    let cfg = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    let p = Arc::new(Pipeline::builder("tls").filter(filter).build().unwrap());
    server.apply(vec![(cfg.clone(), p)]).unwrap();
    let addr = server.local_addr(cfg.listen, Protocol::Tcp).unwrap();
    (server, addr)
}

fn s_client(addr: SocketAddr, pki: &Pki, extra: &[&str]) -> Child {
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "a.example",
            "-verify_return_error",
            "-quiet",
        ])
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client starts")
}

/// Sends a line and waits up to 10 s for a line back.
fn s_client_echo(mut child: Child, line: &str) -> Option<String> {
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stdout).read_line(&mut s);
        let _ = tx.send(s);
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).ok();
    let _ = child.kill();
    let _ = child.wait();
    got.filter(|s| !s.is_empty())
}

#[test]
fn openssl_s_client_echo() {
    if !require_programs(&["openssl"]) {
        return;
    }
    let pki = server_pki();
    let (server, addr) = serve(accept_echo(&pki, json!({"alpn": ["http/1.1"]})));
    let child = s_client(addr, &pki, &["-alpn", "http/1.1"]);
    assert_eq!(
        s_client_echo(child, "hello flowgate\n").as_deref(),
        Some("hello flowgate\n")
    );
    let child = s_client(addr, &pki, &["-tls1_2"]);
    assert_eq!(
        s_client_echo(child, "twelve\n").as_deref(),
        Some("twelve\n")
    );
    server.shutdown();
}

#[test]
fn openssl_s_client_mtls() {
    if !require_programs(&["openssl"]) {
        return;
    }
    let (pki, _other, filter) = mtls();
    let (server, addr) = serve(filter);

    let key = pki.path("client.key");
    let cert = pki.path("client.pem");
    let child = s_client(
        addr,
        &pki,
        &["-cert", path_str(&cert), "-key", path_str(&key)],
    );
    assert_eq!(
        s_client_echo(child, "with cert\n").as_deref(),
        Some("with cert\n")
    );

    for version in ["-tls1_3", "-tls1_2"] {
        let mut child = s_client(addr, &pki, &[version]);
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"no cert\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "s_client {version} without a certificate kept running"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!status.success(), "{version}: {err}");
        assert!(out.is_empty(), "{version}: nothing echoed: {out}");
        assert!(
            err.contains("alert certificate required"),
            "{version}: {err}"
        );
    }
    server.shutdown();
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A registry with this crate's filters.
fn net_registry() -> flowgate_pipeline::registry::Registry {
    let mut r = flowgate_pipeline::registry::Registry::new();
    flowgate_filters_net::register(&mut r);
    r
}

// === identities (a mesh's SPIFFE IDs) ===

/// Writes `<name>.pem` and `<name>.key` for a leaf whose only name is the URI `id`.
fn spiffe_leaf(pki: &Pki, name: &str, id: &str) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    std::fs::write(pki.path(&format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(pki.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const BUYER: &str = "spiffe://cluster.local/ns/shop/sa/buyer";
const THIEF: &str = "spiffe://cluster.local/ns/shop/sa/thief";

/// A mesh PKI: `web` serves, `buyer` and `thief` call, all signed by one CA and named only
/// by SPIFFE IDs.
fn mesh_pki() -> Pki {
    let pki = Pki::new("mesh");
    spiffe_leaf(&pki, "web", WEB);
    spiffe_leaf(&pki, "buyer", BUYER);
    spiffe_leaf(&pki, "thief", THIEF);
    pki
}

/// `ConnectTls` from configuration (as a sidecar calls another: the SNI names the
/// service, the identity is checked) to `AcceptTls` (`web`, admitting only `buyer`), then
/// echo; returns how the stream ended.
async fn mesh_call(pki: &Pki, client: &str, want_server: &str) -> Option<StreamError> {
    let server = AcceptTls::new(
        serde_json::from_value::<AcceptTlsConfig>(json!({
            "pipeline": "echo",
            "certificates": [{"cert": "web.pem", "key": "web.key"}],
            "client_auth": {"ca": "ca.pem", "identities": [BUYER]},
        }))
        .unwrap()
        .server_config(&pki.cx())
        .unwrap(),
        echo(),
    );
    let inner = Pipeline::builder("tls-server")
        .filter(server)
        .build()
        .unwrap();
    let config: ConnectTlsConfig = serde_json::from_value(json!({
        "pipeline": "up",
        "sni": "outbound_.8080_._.web.shop.svc.cluster.local",
        "ca": "ca.pem",
        "identities": [want_server],
        "client_cert": {"cert": format!("{client}.pem"), "key": format!("{client}.key")},
    }))
    .unwrap();
    let filter = ConnectTls::new(
        config.client_config(&pki.cx()).unwrap(),
        config.server_name().unwrap(),
        inner,
    );
    let mut h = Harness::new(&filter);
    h.push("ping".into());
    h.push(Event::END);
    let out = h.collect().await;
    if testing_data(&out) == b"ping" {
        return None;
    }
    match out.last() {
        Some(Event::StreamEnd(e)) => Some(e.clone().expect("an error end without the echo")),
        other => panic!("{other:?}"),
    }
}

fn testing_data(events: &[Event]) -> Vec<u8> {
    flowgate_pipeline::testing::data_of(events)
}

#[tokio::test]
async fn identities_pin_who_may_connect_both_ways() {
    let pki = mesh_pki();
    // The server is checked by its SPIFFE ID, not by the SNI it was called with.
    let e = mesh_call(&pki, "buyer", WEB).await;
    assert!(e.is_none(), "{e:?}");
    let e = mesh_call(&pki, "buyer", "*").await;
    assert!(e.is_none(), "{e:?}");
    // Another identity than the one wanted: the client refuses the server.
    let e = mesh_call(&pki, "buyer", BUYER).await.unwrap();
    assert_eq!(
        (e.kind(), e.side()),
        (ErrorKind::Tls, Side::Upstream),
        "{e}"
    );
    // A client the server does not admit, though its CA signed it.
    let e = mesh_call(&pki, "thief", WEB).await.unwrap();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");

    // Without identities the SNI must be on the certificate, and it is not.
    let config: ConnectTlsConfig = serde_json::from_value(json!({
        "pipeline": "up", "ca": "ca.pem", "sni": "outbound_.8080_._.web.shop.svc.cluster.local",
    }))
    .unwrap();
    assert!(config.client_config(&pki.cx()).is_ok());
    // And without an SNI, identities are how the server is checked.
    let config: ConnectTlsConfig =
        serde_json::from_value(json!({"pipeline": "up", "ca": "ca.pem"})).unwrap();
    assert_eq!(config.server_name().unwrap_err().field, "sni");
    let config: ConnectTlsConfig =
        serde_json::from_value(json!({"pipeline": "up", "ca": "ca.pem", "identities": [WEB]}))
            .unwrap();
    assert!(config.server_name().is_ok());
}
