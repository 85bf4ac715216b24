//! The controller's TLS port on loopback: ADS and the certificate service behind
//! `serve_tls` with an authenticator. A proxy proven by its mesh certificate or by a token
//! gets its own node's secrets; it is refused another account's node; a caller with
//! neither is refused; a foreign or expired certificate does not finish the handshake; a
//! certificate renews itself through the CSR service without a token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use flowgate_mesh::ca::{Ca, Issued, SpiffeId, spiffe_id_of};
use flowgate_mesh::token::TokenKey;
use flowgate_mesh::xds::auth::{Authenticator, server_config};
use flowgate_mesh::xds::certify::{CREATE_CERTIFICATE, CertificateRequest, CertificateResponse};
use flowgate_mesh::xds::compile::{Resources, sidecar_secrets};
use flowgate_mesh::xds::{AdsServer, Snapshot, type_url};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const TD: &str = "cluster.local";

fn root() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "test root");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.self_signed(&key).unwrap(), key)
}

/// A leaf for `ns/sa` signed by `root`, valid in `[from, to]` relative to now (seconds).
fn leaf(root: &(rcgen::Certificate, KeyPair), ns: &str, sa: &str, from: i64, to: i64) -> Identity {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TD}/ns/{ns}/sa/{sa}").try_into().unwrap(),
    )];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::seconds(from);
    p.not_after = now + time::Duration::seconds(to);
    let cert = p.signed_by(&key, &root.0, &root.1).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

struct Controller {
    addr: std::net::SocketAddr,
    ca: Arc<Ca>,
    tokens: Arc<TokenKey>,
    root: (rcgen::Certificate, KeyPair),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Controller {
    async fn start() -> Controller {
        let root = root();
        let ca = Arc::new(
            Ca::from_pem(
                TD,
                Duration::from_secs(3600),
                &root.0.pem(),
                &root.1.serialize_pem(),
            )
            .unwrap(),
        );
        let tokens = Arc::new(TokenKey::generate().unwrap());
        let auth = Arc::new(Authenticator::new(tokens.clone()));
        let server_leaf = ca
            .issue_with_names(
                &SpiffeId::new(TD, "flowgate-system", "controller").unwrap(),
                &["localhost".into(), "127.0.0.1".into()],
            )
            .unwrap();
        let (ads, snapshots) = AdsServer::new();
        let ads = ads.with_authenticator(auth.clone());
        // Two pods' sidecars: web-1 runs as shop/web, db-1 as shop/db.
        let secrets = |sa: &str| -> Resources {
            sidecar_secrets(
                &ca.issue(&SpiffeId::new(TD, "shop", sa).unwrap()).unwrap(),
                &ca.bundle_pem(),
            )
        };
        let snap = Snapshot::new(Resources::default())
            .with_owned_node(
                "web-1.shop".into(),
                Some(("shop".into(), "web".into())),
                None,
                secrets("web"),
            )
            .with_owned_node(
                "db-1.shop".into(),
                Some(("shop".into(), "db".into())),
                None,
                secrets("db"),
            );
        snapshots.send(Arc::new(snap)).unwrap();
        let (addr, stop) = common::serve_on_loopback(
            ca.clone(),
            auth,
            server_config(&ca, &server_leaf).unwrap(),
            ads,
            snapshots,
        )
        .await;
        Controller {
            addr,
            ca,
            tokens,
            root,
            stop: Some(stop),
        }
    }

    /// A certificate and key for `shop/<sa>` from the mesh's CA.
    fn identity(&self, sa: &str) -> Identity {
        let issued: Issued = self
            .ca
            .issue(&SpiffeId::new(TD, "shop", sa).unwrap())
            .unwrap();
        Identity::from_pem(&issued.cert_pem, issued.key_pem.unwrap())
    }

    async fn channel(
        &self,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.bundle_pem()))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Opens an ADS stream as `node` and asks for its secrets: the names served, or the error.
async fn secrets_for(
    channel: Channel,
    token: Option<&str>,
    node: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: type_url::SECRET.into(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut stream = client.stream_aggregated_resources(req).await?.into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an answer within 5 s")
        .expect("the stream is open")?;
    drop(tx);
    use prost::Message;
    Ok(resp
        .resources
        .iter()
        .map(|a| {
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                a.value.as_slice(),
            )
            .unwrap()
            .name
        })
        .collect())
}

#[tokio::test]
async fn callers_are_proven_and_get_only_their_own_nodes() {
    let c = Controller::start().await;
    let web = c.identity("web");

    // By certificate: its own node's secrets; another account's node refused.
    let ch = c.channel(Some(web.clone())).await.unwrap();
    let got = secrets_for(ch.clone(), None, "web-1.shop").await.unwrap();
    assert_eq!(got, vec!["ROOTCA", "default"]);
    let e = secrets_for(ch.clone(), None, "db-1.shop")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("shop/db"), "{e}");

    // By token, over TLS without a client certificate.
    let anon = c.channel(None).await.unwrap();
    let db_token = c
        .tokens
        .issue(
            "shop",
            "db",
            Duration::from_secs(60),
            std::time::SystemTime::now(),
        )
        .unwrap();
    let got = secrets_for(anon.clone(), Some(&db_token), "db-1.shop")
        .await
        .unwrap();
    assert_eq!(got, vec!["ROOTCA", "default"]);
    let e = secrets_for(anon.clone(), Some(&db_token), "web-1.shop")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // Neither: refused before anything is served, whatever node it names.
    let e = secrets_for(anon.clone(), None, "web-1.shop")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = secrets_for(anon, Some("fgt1:shop/web:1:00"), "web-1.shop")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
}

#[tokio::test]
async fn foreign_and_expired_certificates_do_not_finish_the_handshake() {
    let c = Controller::start().await;
    // Signed by another root.
    let other = root();
    let foreign = leaf(&other, "shop", "web", -60, 3600);
    // Signed by the mesh's root, but expired a minute ago.
    let expired = leaf(&c.root, "shop", "web", -3600, -60);
    // And one that is fine, to show the test can pass.
    let good = leaf(&c.root, "shop", "web", -60, 3600);
    for (what, id) in [("foreign", foreign), ("expired", expired)] {
        // rustls clients finish their side first: the refusal shows at the first call.
        let outcome = match c.channel(Some(id)).await {
            Err(_) => None,
            Ok(ch) => Some(secrets_for(ch, None, "web-1.shop").await),
        };
        match outcome {
            None => {}
            Some(Err(e)) => assert_ne!(e.code(), tonic::Code::Ok, "{what}"),
            Some(Ok(names)) => panic!("{what} certificate was served {names:?}"),
        }
    }
    let ch = c.channel(Some(good)).await.unwrap();
    assert_eq!(
        secrets_for(ch, None, "web-1.shop").await.unwrap(),
        vec!["ROOTCA", "default"]
    );
}

#[tokio::test]
async fn a_certificate_renews_itself_without_a_token() {
    let c = Controller::start().await;
    let web = c.identity("web");
    let ch = c.channel(Some(web)).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let resp: CertificateResponse = grpc
        .unary(
            tonic::Request::new(CertificateRequest {
                csr,
                validity_duration: 3600,
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let der = rustls_pemfile::certs(&mut resp.cert_chain[0].as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        spiffe_id_of(&der),
        Some(SpiffeId::new(TD, "shop", "web").unwrap())
    );
}

#[tokio::test]
async fn a_stream_ends_when_the_certificate_it_was_opened_with_expires() {
    let c = Controller::start().await;
    // Valid for three more seconds.
    let short = leaf(&c.root, "shop", "web", -60, 3);
    let ch = c.channel(Some(short)).await.unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "web-1.shop".into(),
            ..Default::default()
        }),
        type_url: type_url::SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.resources.len(), 1, "served while valid");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends within 10 s");
    let e = end.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("expired"), "{e}");
    drop(tx);
}
