//! The certificate service over gRPC on loopback: a workload's CSR signed for the service
//! account its bootstrap token proves (whatever the CSR asks for), the chain verifying
//! against the bundle, and every way to be refused — no token, a forged or expired one, a
//! broken CSR, a CA not ready yet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flowgate_mesh::ca::{Ca, SpiffeId, spiffe_id_of};
use flowgate_mesh::token::TokenKey;
use flowgate_mesh::xds::auth::Authenticator;
use flowgate_mesh::xds::certify::{
    CREATE_CERTIFICATE, CertService, CertificateRequest, CertificateResponse, SharedCa,
};
use flowgate_mesh::xds::{AdsServer, serve};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

async fn call(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    csr: &str,
) -> Result<CertificateResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(CertificateRequest {
        csr: csr.into(),
        validity_duration: 3600,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    grpc.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

fn csr_asking_for_admin() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

#[tokio::test]
async fn a_csr_is_signed_for_the_account_its_token_proves() {
    let shared: SharedCa = Arc::default();
    let tokens = Arc::new(TokenKey::generate().unwrap());
    let (ads, _snapshots) = AdsServer::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        ads,
        Some(CertService::new(
            shared.clone(),
            Arc::new(Authenticator::new(tokens.clone())),
        )),
        async {
            let _ = stopped.await;
        },
    ));
    let now = SystemTime::now();
    let token = tokens
        .issue("shop", "web", Duration::from_secs(600), now)
        .unwrap();
    let (key, csr) = csr_asking_for_admin();

    // No CA yet: unavailable, not an error of the caller's.
    let e = call(addr, Some(&token), &csr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    let ca = Arc::new(Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap());
    *shared.write().unwrap() = Some(ca.clone());

    let resp = call(addr, Some(&token), &csr).await.unwrap();
    assert_eq!(resp.cert_chain.len(), 2, "the leaf, then the root");
    let leaf = rustls_pemfile::certs(&mut resp.cert_chain[0].as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        spiffe_id_of(&leaf),
        Some(SpiffeId::new("cluster.local", "shop", "web").unwrap()),
        "the token's account, not the CSR's admin"
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.public_key_der().as_slice(),
        "the CSR's key"
    );
    assert_eq!(resp.cert_chain[1], ca.root_pem());

    // Refusals.
    let e = call(addr, None, &csr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let forged = token.replace("shop/web:", "shop/admin:");
    let e = call(addr, Some(&forged), &csr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let other_controller = TokenKey::generate().unwrap();
    let foreign = other_controller
        .issue("shop", "web", Duration::from_secs(600), now)
        .unwrap();
    let e = call(addr, Some(&foreign), &csr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let expired = tokens
        .issue(
            "shop",
            "web",
            Duration::from_secs(1),
            now - Duration::from_secs(10),
        )
        .unwrap();
    let e = call(addr, Some(&expired), &csr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = call(addr, Some(&token), "not a csr").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
