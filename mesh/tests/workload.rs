//! The workload side against the controller's TLS port on loopback (`serve_tls` with the
//! certificate service): a workload gets its first certificate with a bootstrap token —
//! for its token's account, for the key it made — and keeps renewing it with the
//! certificate itself once the token has expired; a bad token is refused with a clear
//! error; a wrong trust bundle fails the connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flowgate_mesh::ca::{Ca, SpiffeId};
use flowgate_mesh::token::TokenKey;
use flowgate_mesh::workload::{
    Controller, WorkloadCert, WorkloadError, keep_certificate, keep_certificate_from, obtain,
};
use flowgate_mesh::xds::AdsServer;
use flowgate_mesh::xds::auth::{Authenticator, server_config};

const TD: &str = "cluster.local";

/// A controller whose leaves live `leaf_life`; its address, CA and token key.
async fn controller(
    leaf_life: Duration,
) -> (
    std::net::SocketAddr,
    Arc<Ca>,
    Arc<TokenKey>,
    tokio::sync::oneshot::Sender<()>,
) {
    let ca = Arc::new(Ca::generate(TD, leaf_life).unwrap());
    let tokens = Arc::new(TokenKey::generate().unwrap());
    let auth = Arc::new(Authenticator::new(tokens.clone()));
    // The controller's own certificate outlives the test.
    let long = Ca::import(&ca.export(), Duration::from_secs(3600)).unwrap();
    let server_leaf = long
        .issue_with_names(
            &SpiffeId::new(TD, "flowgate-system", "flowgate-controller").unwrap(),
            &["localhost".into()],
        )
        .unwrap();
    let (ads, snapshots) = AdsServer::new();
    let ads = ads.with_authenticator(auth.clone());
    let (addr, stop) = common::serve_on_loopback(
        ca.clone(),
        auth,
        server_config(&ca, &server_leaf).unwrap(),
        ads,
        snapshots,
    )
    .await;
    (addr, ca, tokens, stop)
}

fn access(addr: std::net::SocketAddr, ca: &Ca, token: Option<String>) -> Controller {
    Controller {
        url: format!("https://{addr}"),
        server_name: "localhost".into(),
        trust_pem: ca.bundle_pem(),
        token,
    }
}

#[tokio::test]
async fn a_workload_gets_its_certificate_by_token_and_renews_it_by_certificate() {
    let (addr, ca, tokens, _stop) = controller(Duration::from_secs(4)).await;
    // The token expires before the first renewal is due.
    let token = tokens
        .issue("shop", "web", Duration::from_secs(2), SystemTime::now())
        .unwrap();
    let (mut certs, task) = keep_certificate(access(addr, &ca, Some(token)));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while seen.len() < 3 {
        tokio::time::timeout_at(deadline, certs.changed())
            .await
            .expect("three certificates within 12 s")
            .unwrap();
        let c = certs.borrow().clone().unwrap();
        seen.push(c);
    }
    task.abort();
    for c in &seen {
        assert_eq!(c.id, SpiffeId::new(TD, "shop", "web").unwrap());
        assert!(ca.bundle_pem().contains(c.roots_pem.trim()));
    }
    // Each renewal is a new certificate and a new key; the later ones came after the
    // token had expired, so they were had with the certificate.
    assert_ne!(seen[0].cert_pem, seen[1].cert_pem);
    assert_ne!(seen[0].key_pem, seen[1].key_pem);
    assert!(
        seen[2].received > seen[0].received + Duration::from_secs(2),
        "renewed at about half the 4 s life"
    );

    // A restarted workload takes back what it kept: the same identity and expiry, current
    // at once, renewed (with itself: the token is gone) when due.
    let last = &seen[2];
    let kept = WorkloadCert::from_pem(&last.cert_pem, &last.key_pem, &last.roots_pem).unwrap();
    assert_eq!((&kept.id, kept.not_after), (&last.id, last.not_after));
    let err = WorkloadCert::from_pem(&last.cert_pem, &seen[0].key_pem, &last.roots_pem);
    assert!(err.is_err(), "a key the certificate is not for");
    let (mut again, task) = keep_certificate_from(access(addr, &ca, None), Some(kept));
    assert_eq!(
        again.borrow().as_ref().map(|c| c.cert_pem.clone()),
        Some(last.cert_pem.clone())
    );
    tokio::time::timeout(Duration::from_secs(8), again.changed())
        .await
        .expect("renewed within 8 s")
        .unwrap();
    assert_ne!(
        again.borrow().as_ref().map(|c| c.cert_pem.clone()),
        Some(last.cert_pem.clone())
    );
    task.abort();
}

#[tokio::test]
async fn bad_credentials_get_clear_errors() {
    let (addr, ca, tokens, _stop) = controller(Duration::from_secs(3600)).await;
    // Another controller's token.
    let stranger = TokenKey::generate()
        .unwrap()
        .issue("shop", "web", Duration::from_secs(60), SystemTime::now())
        .unwrap();
    let err = obtain(&access(addr, &ca, Some(stranger)), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkloadError::Refused(s) if s.code() == tonic::Code::Unauthenticated),
        "{err}"
    );
    // No credential at all.
    assert!(matches!(
        obtain(&access(addr, &ca, None), None).await,
        Err(WorkloadError::NoCredential)
    ));
    // A trust bundle that does not hold the controller's root.
    let other = Ca::generate(TD, Duration::from_secs(60)).unwrap();
    let token = tokens
        .issue("shop", "web", Duration::from_secs(60), SystemTime::now())
        .unwrap();
    let err = obtain(&access(addr, &other, Some(token.clone())), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkloadError::Connect { .. } | WorkloadError::Refused(_)
        ),
        "{err}"
    );
    // And the right one works.
    let c = obtain(&access(addr, &ca, Some(token)), None).await.unwrap();
    assert_eq!(c.id.service_account, "web");
}
