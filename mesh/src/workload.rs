//! The workload's side of the mesh's certificates: a sidecar (or any workload) makes its
//! own key, sends the controller a CSR and gets a certificate for the service account it
//! proved — with a bootstrap token the first time, with its current certificate after —
//! and keeps it renewed: at half its lifetime (with jitter, so a fleet does not renew at
//! once), retrying with a capped backoff, the old certificate kept until it expires.
//!
//! ```no_run
//! use flowgate_mesh::workload::{Controller, keep_certificate};
//!
//! # async fn run() {
//! let controller = Controller {
//!     url: "https://127.0.0.1:15010".into(),
//!     server_name: "localhost".into(),
//!     trust_pem: std::fs::read_to_string("ca.pem").unwrap(),
//!     token: Some("fgt1:shop/web:…".into()),
//! };
//! let (mut certs, _task) = keep_certificate(controller);
//! while certs.changed().await.is_ok() {
//!     if let Some(c) = certs.borrow().as_ref() {
//!         println!("now {} until {:?}", c.id, c.not_after);
//!     }
//! }
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ca::{Issued, SpiffeId};
use crate::xds::certify::{CREATE_CERTIFICATE, CertificateRequest, CertificateResponse};

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The controller could not be reached (or its certificate did not verify).
    #[error("the controller at {url}: {why}")]
    Connect {
        /// Its URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The controller refused (an expired or foreign token, say).
    #[error("the controller refused: {0}")]
    Refused(#[from] tonic::Status),
    /// The answer is not a certificate for this key.
    #[error("the controller's answer: {0}")]
    BadAnswer(String),
    /// The key or the CSR could not be made.
    #[error("the key or the CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// Nothing to prove the service account with: no token and no valid certificate.
    #[error("no bootstrap token and no valid certificate to renew with")]
    NoCredential,
}

/// How to reach the controller and prove who this workload is.
#[derive(Clone)]
pub struct Controller {
    /// `https://HOST:PORT` of its TLS port.
    pub url: String,
    /// The name its certificate is checked for (`localhost`, or a `--server-name`).
    pub server_name: String,
    /// The roots that sign its certificate (`ca.pem` in its state directory), PEM.
    pub trust_pem: String,
    /// A bootstrap token (`flowgate-controller token NS/SA`), for the first certificate.
    pub token: Option<String>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("url", &self.url)
            .field("server_name", &self.server_name)
            .field("token", &self.token.as_ref().map(|_| "(secret)"))
            .finish_non_exhaustive()
    }
}

/// A certificate this workload holds: its key never left it.
#[derive(Clone)]
pub struct WorkloadCert {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// Its key, PEM (PKCS #8), made here.
    pub key_pem: String,
    /// The roots to trust peers with, PEM.
    pub roots_pem: String,
    /// The identity it names.
    pub id: SpiffeId,
    /// When it expires.
    pub not_after: SystemTime,
    /// When it was received.
    pub received: SystemTime,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// A certificate kept from before (a restarted workload's): the leaf (its SPIFFE ID and
    /// expiry read from it), the key it was made for, the roots.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        roots_pem: &str,
    ) -> Result<WorkloadCert, WorkloadError> {
        let issued = Issued::from_pem(cert_pem, Some(key_pem.to_string()))
            .map_err(|e| WorkloadError::BadAnswer(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der)
            .map_err(|e| WorkloadError::BadAnswer(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(WorkloadError::BadAnswer(
                "the certificate is not for the key kept with it".into(),
            ));
        }
        Ok(WorkloadCert {
            cert_pem: issued.cert_pem,
            key_pem: key_pem.to_string(),
            roots_pem: roots_pem.to_string(),
            id: issued.id,
            not_after: issued.not_after,
            // Renewal is timed from receipt: a kept one, from now (half what is left).
            received: SystemTime::now(),
        })
    }

    /// When to renew it: half its remaining life at receipt, moved by up to ±5 % of that
    /// life (`jitter` in `[-1, 1]`), so workloads that started together spread out.
    pub fn renew_at(&self, jitter: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        let half = life / 2;
        let shift = life.mul_f64(0.05 * jitter.abs().min(1.0));
        if jitter < 0.0 {
            self.received + half.saturating_sub(shift)
        } else {
            self.received + half + shift
        }
    }
}

/// A TLS channel to the controller, presenting `identity` (a mesh certificate) if given.
pub async fn connect(
    controller: &Controller,
    identity: Option<&WorkloadCert>,
) -> Result<Channel, WorkloadError> {
    let err = |why: String| WorkloadError::Connect {
        url: controller.url.clone(),
        why,
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&controller.trust_pem))
        .domain_name(controller.server_name.clone());
    if let Some(c) = identity {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    Endpoint::from_shared(controller.url.clone())
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            err(format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ))
        })
}

/// One certificate: a new key, its CSR sent on `channel` with `token` (or none, when the
/// channel presents a current mesh certificate).
pub async fn request_certificate(
    channel: Channel,
    token: Option<&str>,
) -> Result<WorkloadCert, WorkloadError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| WorkloadError::Refused(tonic::Status::unavailable(e.to_string())))?;
    let mut req = tonic::Request::new(CertificateRequest {
        csr,
        validity_duration: 0,
    });
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| WorkloadError::NoCredential)?;
        req.metadata_mut().insert("authorization", value);
    }
    let resp: CertificateResponse = grpc
        .unary(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
            tonic_prost::ProstCodec::default(),
        )
        .await?
        .into_inner();
    let Some((leaf, roots)) = resp.cert_chain.split_first() else {
        return Err(WorkloadError::BadAnswer("an empty chain".into()));
    };
    let issued =
        Issued::from_pem(leaf, None).map_err(|e| WorkloadError::BadAnswer(e.to_string()))?;
    // The certificate must be for this key.
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der)
        .map_err(|e| WorkloadError::BadAnswer(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(WorkloadError::BadAnswer(
            "the certificate is not for the key this workload sent".into(),
        ));
    }
    if roots.is_empty() {
        return Err(WorkloadError::BadAnswer("no roots".into()));
    }
    Ok(WorkloadCert {
        cert_pem: issued.cert_pem,
        key_pem: key.serialize_pem(),
        roots_pem: roots.concat(),
        id: issued.id,
        not_after: issued.not_after,
        received: SystemTime::now(),
    })
}

/// A new certificate: renewed with `current` while it is valid, else with the token.
pub async fn obtain(
    controller: &Controller,
    current: Option<&WorkloadCert>,
) -> Result<WorkloadCert, WorkloadError> {
    let valid = current.filter(|c| SystemTime::now() < c.not_after);
    match (valid, &controller.token) {
        (Some(c), _) => request_certificate(connect(controller, Some(c)).await?, None).await,
        (None, Some(t)) => request_certificate(connect(controller, None).await?, Some(t)).await,
        (None, None) => Err(WorkloadError::NoCredential),
    }
}

/// The first and shortest wait after a failure; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A number in `[-1, 1]` from the system's random source.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.0;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// Gets a certificate and keeps it renewed, in a task: the receiver holds the current one
/// (`None` until the first arrives). A failure is logged and tried again with a backoff
/// (1 s doubling to 60 s); the old certificate stays until a new one arrives.
pub fn keep_certificate(
    controller: Controller,
) -> (
    watch::Receiver<Option<Arc<WorkloadCert>>>,
    tokio::task::JoinHandle<()>,
) {
    keep_certificate_from(controller, None)
}

/// [`keep_certificate`], starting from `kept` (a restarted workload's certificate, still
/// valid): it is current at once and renewed when it is due, with itself as the proof.
pub fn keep_certificate_from(
    controller: Controller,
    kept: Option<WorkloadCert>,
) -> (
    watch::Receiver<Option<Arc<WorkloadCert>>>,
    tokio::task::JoinHandle<()>,
) {
    let kept = kept
        .filter(|c| SystemTime::now() < c.not_after)
        .map(Arc::new);
    let (tx, rx) = watch::channel(kept.clone());
    let task = tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        // Due now: nothing held yet, or the last try failed.
        let mut due = kept.is_none();
        let mut current: Option<Arc<WorkloadCert>> = kept;
        loop {
            if let (false, Some(c)) = (due, &current) {
                let wait = c
                    .renew_at(jitter())
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = tx.closed() => return,
                }
            }
            match obtain(&controller, current.as_deref()).await {
                Ok(c) => {
                    tracing::info!(id = %c.id, "mesh certificate obtained");
                    let c = Arc::new(c);
                    current = Some(c.clone());
                    (backoff, due) = (MIN_BACKOFF, false);
                    if tx.send(Some(c)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("mesh certificate: {e}; trying again in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                    (backoff, due) = ((backoff * 2).min(MAX_BACKOFF), true);
                }
            }
        }
    });
    (rx, task)
}
