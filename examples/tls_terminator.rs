//! A TLS terminator in front of a plaintext service, built with the Rust API.
//!
//! Shows: `AcceptTls` as a joint filter (the decrypted stream runs through a sub-pipeline),
//! the TLS facts it records in the context (SNI, ALPN), and `Connect` to a plaintext
//! upstream. At start it makes a throw-away CA and a certificate for `localhost` (in the
//! system temp directory) and runs a tiny plaintext upstream on 127.0.0.1:9080 that answers
//! one fixed HTTP response per connection.
//!
//! Run it:
//!
//! ```text
//! cargo run --example tls_terminator          # TLS on 127.0.0.1:8443, upstream on 127.0.0.1:9080
//! ```
//!
//! Poke it, with the CA path it prints at start (`$TMPDIR/flowgate-tls-example/ca.pem`):
//!
//! ```text
//! CA=${TMPDIR:-/tmp}/flowgate-tls-example/ca.pem
//! curl --cacert "$CA" --resolve localhost:8443:127.0.0.1 https://localhost:8443/
//! # -> hello over TLS
//! openssl s_client -connect 127.0.0.1:8443 -servername localhost -CAfile "$CA" -quiet
//! ```
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use flowgate::filters::net::Connect;
use flowgate::filters::net::tls::AcceptTls;
use flowgate::pipeline::server::{ListenerConfig, Protocol, Server};
use flowgate::pipeline::{Event, Module, Pipeline, SubPipeline};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Writes `ca.pem` into `dir` and returns the server's certificate chain and key.
fn make_certificates(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_string()])?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((vec![leaf.der().clone()], key))
}

/// The plaintext upstream: answers the first chunk of a connection with a fixed HTTP
/// response, then closes (`connection: close`).
fn upstream() -> Result<Pipeline, Box<dyn Error>> {
    Ok(Pipeline::builder("hello").transform("respond", || {
        |ev: Event, out: &mut dyn FnMut(Event)| match ev {
            Event::Data(_) => {
                out(Event::Data(Bytes::from_static(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\nconnection: close\r\n\r\nhello over TLS\n",
                )));
                out(Event::END);
            }
            e => out(e),
        }
    }).build()?)
}

/// Starts the upstream and the terminator; returns the server and the TLS address.
fn start(
    tls: SocketAddr,
    upstream_addr: SocketAddr,
    cert_dir: &Path,
) -> Result<(Server, SocketAddr), Box<dyn Error>> {
    let (chain, key) = make_certificates(cert_dir)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let server = Server::builder().workers(1).start()?;
    let up_cfg = ListenerConfig::tcp(upstream_addr);
    server.apply(vec![(up_cfg.clone(), Arc::new(upstream()?))])?;
    let up = server
        .local_addr(up_cfg.listen, Protocol::Tcp)
        .ok_or("upstream not bound")?;

    let module = Module::builder()
        .pipeline(Pipeline::builder("tls").filter(AcceptTls::new(
            Arc::new(tls_config),
            SubPipeline::named("plain"),
        )))
        .pipeline(Pipeline::builder("plain").filter(Connect::to(up.to_string())))
        .build()?;
    let front = module.get("tls").ok_or("no tls pipeline")?.clone();
    let tls_cfg = ListenerConfig::tcp(tls);
    server.apply(vec![(up_cfg, Arc::new(upstream()?)), (tls_cfg, front)])?;
    let bound = server
        .local_addr(tls, Protocol::Tcp)
        .ok_or("terminator not bound")?;
    Ok((server, bound))
}

fn cert_dir() -> PathBuf {
    std::env::temp_dir().join("flowgate-tls-example")
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = cert_dir();
    let (_server, addr) = start("127.0.0.1:8443".parse()?, "127.0.0.1:9080".parse()?, &dir)?;
    println!(
        "TLS on {addr} for `localhost`; CA: {}",
        dir.join("ca.pem").display()
    );
    println!(
        "try: curl --cacert {} --resolve localhost:8443:127.0.0.1 https://localhost:8443/",
        dir.join("ca.pem").display()
    );
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn smoke_https_request_through_the_terminator() {
        let dir =
            std::env::temp_dir().join(format!("flowgate-tls-example-test-{}", std::process::id()));
        let (server, addr) = start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
            &dir,
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
            .unwrap();
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("hello over TLS\n"), "{reply}");
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
