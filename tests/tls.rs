//! TLS through the `flowgate` binary with real peers: termination in front of a plaintext
//! nginx checked with curl, mutual TLS (no certificate and a certificate from another CA are
//! refused), and a garbage handshake that closes only its own connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn config(port: u16, upstream: u16, cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let auth = client_ca
        .map(|ca| format!("        client_auth: {{ ca: {} }}\n", ca.display()))
        .unwrap_or_default();
    format!(
        "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: tls\npipelines:\n  tls:\n    - accept-tls:\n        pipeline: upstream\n        certificates: [{{ cert: {}, key: {} }}]\n        alpn: [http/1.1]\n{auth}  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{upstream} }}\n",
        cert.display(),
        key.display()
    )
}

fn nginx_hello(dir: &TempDir) -> (Proc, u16) {
    let port = reserve_port();
    let mut p = nginx(
        dir,
        &format!(
            "server {{ listen 127.0.0.1:{port}; keepalive_requests 1000; location / {{ return 200 \"hello from nginx\"; }} }}"
        ),
    );
    p.wait_port(port);
    (p, port)
}

fn url(port: u16) -> (String, String) {
    (
        format!("localhost:{port}:127.0.0.1"),
        format!("https://localhost:{port}/"),
    )
}

#[test]
fn tls_termination_in_front_of_plaintext_nginx_with_curl() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("tls-term");
    let (_nginx, up) = nginx_hello(&dir);
    let pki = OpensslPki::new(&dir, "server");
    let (cert, key) = pki.leaf("localhost", "localhost", false);
    let port = reserve_port();
    let cfg = dir.write("tls.yaml", &config(port, up, &cert, &key, None));
    let _fg = flowgate_run(&cfg, &[port]);
    let (resolve, u) = url(port);
    let ca = pki.ca();
    let (ok, body, err) = curl(&["--resolve", &resolve, "--cacert", ca.to_str().unwrap(), &u]);
    assert!(ok, "curl failed: {err}");
    assert_eq!(body, "hello from nginx");
    // TLS 1.2 works too.
    let (ok, body, err) = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().unwrap(),
        &u,
    ]);
    assert!(ok && body == "hello from nginx", "{err}");
    // A client that does not trust the CA refuses our certificate.
    let (ok, _, _) = curl(&["--resolve", &resolve, &u]);
    assert!(!ok, "curl without the CA must fail verification");
}

#[test]
fn mutual_tls_refuses_missing_and_foreign_client_certificates() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("mtls");
    let (_nginx, up) = nginx_hello(&dir);
    let server_pki = OpensslPki::new(&dir, "server");
    let (cert, key) = server_pki.leaf("localhost", "localhost", false);
    let clients = OpensslPki::new(&dir, "clients");
    let (good_cert, good_key) = clients.leaf("good-client", "good.client", true);
    let other = OpensslPki::new(&dir, "other");
    let (bad_cert, bad_key) = other.leaf("bad-client", "bad.client", true);
    let port = reserve_port();
    let cfg = dir.write(
        "mtls.yaml",
        &config(port, up, &cert, &key, Some(&clients.ca())),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let (resolve, u) = url(port);
    let ca = server_pki.ca();
    let base = ["--resolve", &resolve, "--cacert", ca.to_str().unwrap()];

    let (ok, _, err) = curl(&[&base[..], &[&u]].concat());
    assert!(!ok, "no client certificate must be refused");
    eprintln!("no certificate: {err}");

    let bad = [
        &base[..],
        &[
            "--cert",
            bad_cert.to_str().unwrap(),
            "--key",
            bad_key.to_str().unwrap(),
            &u,
        ],
    ]
    .concat();
    let (ok, _, err) = curl(&bad);
    assert!(!ok, "a certificate from another CA must be refused");
    eprintln!("foreign certificate: {err}");

    let good = [
        &base[..],
        &[
            "--cert",
            good_cert.to_str().unwrap(),
            "--key",
            good_key.to_str().unwrap(),
            &u,
        ],
    ]
    .concat();
    let (ok, body, err) = curl(&good);
    assert!(ok, "the good certificate is accepted: {err}");
    assert_eq!(body, "hello from nginx");
}

#[test]
fn garbage_handshake_closes_only_its_own_connection() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("tls-garbage");
    let (_nginx, up) = nginx_hello(&dir);
    let pki = OpensslPki::new(&dir, "server");
    let (cert, key) = pki.leaf("localhost", "localhost", false);
    let port = reserve_port();
    let cfg = dir.write("tls.yaml", &config(port, up, &cert, &key, None));
    let fg = flowgate_run(&cfg, &[port]);

    // A good keep-alive TLS connection, with a rustls client.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&pki.ca()) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut good = rustls::StreamOwned::new(conn, sock);
    let get = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let read_reply = |s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("hello from nginx") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
    };
    good.write_all(get).unwrap();
    read_reply(&mut good);

    // Garbage instead of a ClientHello: that connection is closed (after an alert, maybe).
    let mut bad = TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: not-tls\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    assert!(
        rest.len() < 64,
        "at most an alert comes back, got {} bytes",
        rest.len()
    );

    // The good connection and the process are unharmed.
    good.write_all(get).unwrap();
    read_reply(&mut good);
    let (ok, body, err) = curl(&[
        "--resolve",
        &url(port).0,
        "--cacert",
        pki.ca().to_str().unwrap(),
        &url(port).1,
    ]);
    assert!(ok && body == "hello from nginx", "{err}");
    drop(good);
    let stderr = fg.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn rustls_pemfile_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// `rbac` behind `accept-tls` with client certificates, through the `flowgate` binary and
/// curl: the identity of the verified client certificate decides — one client may `GET
/// /books`, another client of the same CA gets 403 there, and neither may `POST`.
#[test]
fn rbac_decides_by_the_verified_client_identity() {
    if !peers(&["nginx", "curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("rbac");
    let (_nginx, up) = nginx_hello(&dir);
    let server_pki = OpensslPki::new(&dir, "server");
    let (cert, key) = server_pki.leaf("localhost", "localhost", false);
    let clients = OpensslPki::new(&dir, "clients");
    let (reader_cert, reader_key) = clients.leaf("reader", "reader.shop", true);
    let (other_cert, other_key) = clients.leaf("other", "other.shop", true);
    let port = reserve_port();
    let cfg = dir.write(
        "rbac.yaml",
        &format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    pipeline: tls\npipelines:\n  tls:\n    - accept-tls:\n        pipeline: http\n        certificates: [{{ cert: {}, key: {} }}]\n        client_auth: {{ ca: {} }}\n  http:\n    - demux-http: {{ pipeline: request }}\n  request:\n    - rbac:\n        pipeline: app\n        policies:\n          readers:\n            principals: [reader.shop]\n            permissions: [{{ methods: [GET], path_prefix: /books }}]\n  app:\n    - mux-http: {{ pipeline: upstream }}\n  upstream:\n    - connect: {{ endpoints: 127.0.0.1:{up} }}\n",
            cert.display(),
            key.display(),
            clients.ca().display()
        ),
    );
    let _fg = flowgate_run(&cfg, &[port]);
    let ca = server_pki.ca();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let call = |cert: &Path, key: &Path, method: &str, path: &str| {
        curl(&[
            "-s",
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-X",
            method,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://localhost:{port}{path}"),
        ])
        .1
    };
    assert_eq!(call(&reader_cert, &reader_key, "GET", "/books/1"), "200");
    assert_eq!(call(&reader_cert, &reader_key, "GET", "/admin"), "403");
    assert_eq!(call(&reader_cert, &reader_key, "POST", "/books/1"), "403");
    assert_eq!(call(&other_cert, &other_key, "GET", "/books/1"), "403");
}
