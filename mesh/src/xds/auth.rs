//! Who is calling the controller's gRPC port, and the TLS it is served over.
//!
//! The port is TLS with the controller's own mesh certificate ([`server_config`]). A caller
//! proves a service account either with its mesh certificate (mutual TLS: the chain must
//! verify against the CA's current roots and be unexpired, so a foreign or expired
//! certificate ends the handshake) or, before it has one, with a bootstrap token in
//! `authorization: Bearer <token>` ([`crate::token`]). [`Authenticator::caller`] turns
//! either into a [`Caller`]; the ADS server serves a node's own resources (its secrets, its
//! listeners) only to the account that node's pod runs as, and the certificate service
//! signs only for the account proven.
//!
//! [`tls_incoming`] accepts TCP connections and completes their handshakes concurrently
//! (bounded in number and time), each with the server configuration current at accept, so
//! a renewed certificate or a rotated root applies to new connections at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::ca::{Ca, Issued, SpiffeId, spiffe_id_of};

use crate::token::TokenKey;
/// rustls' server configuration, as [`server_config`] makes it.
pub use rustls::ServerConfig;

/// Who a call comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A server without an [`Authenticator`] (an embedder that authenticates otherwise, or a
    /// test): every caller may have everything.
    Anyone,
    /// A proven service account.
    Account {
        /// Its namespace.
        namespace: String,
        /// Its name.
        service_account: String,
        /// How it was proven.
        proof: Proof,
    },
}

/// How a [`Caller`] proved its account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Its mesh certificate, verified in the TLS handshake, valid until `not_after`.
    Certificate {
        /// When the certificate expires (streams opened with it end then).
        not_after: Option<SystemTime>,
    },
    /// A bootstrap token.
    Token,
}

impl Caller {
    /// When the proof of a caller proven by certificate runs out.
    pub fn expires(&self) -> Option<SystemTime> {
        match self {
            Caller::Account {
                proof: Proof::Certificate { not_after },
                ..
            } => *not_after,
            _ => None,
        }
    }

    /// Whether the caller may have what is served to service account `ns/sa`.
    pub fn may_act_as(&self, ns: &str, sa: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Account {
                namespace,
                service_account,
                ..
            } => namespace == ns && service_account == sa,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Anyone => f.write_str("anyone"),
            Caller::Account {
                namespace,
                service_account,
                proof,
            } => write!(
                f,
                "{namespace}/{service_account} (by {})",
                match proof {
                    Proof::Certificate { .. } => "certificate",
                    Proof::Token => "token",
                }
            ),
        }
    }
}

/// What a TLS connection tells the services behind it (in each request's extensions).
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The identity of the peer's verified certificate, when it presented one.
    pub identity: Option<SpiffeId>,
    /// When that certificate expires.
    pub not_after: Option<SystemTime>,
}

/// Proves callers: by the certificate of their TLS connection, else by a bootstrap token.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tokens: Arc<TokenKey>,
}

impl Authenticator {
    /// An authenticator accepting tokens made with `tokens` (and certificates verified by
    /// the TLS handshake).
    pub fn new(tokens: Arc<TokenKey>) -> Self {
        Authenticator { tokens }
    }

    /// The caller of `request`, or `UNAUTHENTICATED` with the reason.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        if let Some(info) = request.extensions().get::<TlsConnectInfo>()
            && let Some(id) = &info.identity
        {
            return Ok(Caller::Account {
                namespace: id.namespace.clone(),
                service_account: id.service_account.clone(),
                proof: Proof::Certificate {
                    not_after: info.not_after,
                },
            });
        }
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.caller_by_token(header)
    }

    /// The caller proven by an `authorization` header's bootstrap token.
    pub fn caller_by_token(&self, authorization: Option<&str>) -> Result<Caller, tonic::Status> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "no mesh certificate and no `authorization: Bearer <token>`",
                )
            })?;
        let (namespace, service_account) = self
            .tokens
            .verify(token.trim(), SystemTime::now())
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        Ok(Caller::Account {
            namespace,
            service_account,
            proof: Proof::Token,
        })
    }
}

/// The namespace the controller's own identity is in.
pub const CONTROLLER_NAMESPACE: &str = "flowgate-system";
/// The controller's own service account: its TLS certificate names
/// `spiffe://<trust-domain>/ns/flowgate-system/sa/flowgate-controller`, which proxies may
/// require of the server they connect to.
pub const CONTROLLER_ACCOUNT: &str = "flowgate-controller";

/// The controller's SPIFFE ID in `trust_domain`.
pub fn controller_id(trust_domain: &str) -> Result<SpiffeId, crate::ca::CaError> {
    SpiffeId::new(trust_domain, CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT)
}

/// Why a TLS server configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate or key did not parse.
    #[error("the controller's certificate or key: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (no usable root).
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The controller's TLS server configuration: `leaf` (made with its key by [`Ca::issue`] or
/// [`Ca::issue_with_names`]) as its certificate; client certificates optional, and when
/// given verified against every root of `ca`'s bundle; ALPN `h2`.
pub fn server_config(ca: &Ca, leaf: &Issued) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let key_pem = leaf
        .key_pem
        .as_deref()
        .ok_or_else(|| TlsError::Pem("the leaf was issued without its key".into()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(leaf.cert_der.clone())], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How long a TLS handshake on the controller's port may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may be in progress at once; more connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 512;

/// One accepted TLS connection, with what it proved.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The TLS connections accepted on `listener`, each handshaken with the configuration
/// `configs` holds at accept. Failed handshakes (a foreign or expired certificate, a
/// client that is not TLS, one too slow) are logged and dropped; the stream never yields
/// an error. Accepting stops when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    configs: watch::Receiver<Arc<rustls::ServerConfig>>,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!("accepting on the xDS port: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(configs.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, "TLS handshake refused: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first());
                let info = TlsConnectInfo {
                    remote: Some(remote),
                    identity: leaf.and_then(|l| spiffe_id_of(l)),
                    not_after: leaf.and_then(|l| crate::ca::not_after_of(l)),
                };
                let _ = tx
                    .send(Ok(TlsConn {
                        inner: stream,
                        info,
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_account_may_act_only_as_itself() {
        let c = Caller::Account {
            namespace: "shop".into(),
            service_account: "web".into(),
            proof: Proof::Token,
        };
        assert!(c.may_act_as("shop", "web"));
        assert!(!c.may_act_as("shop", "db"));
        assert!(!c.may_act_as("other", "web"));
        assert!(Caller::Anyone.may_act_as("other", "web"));
    }

    #[test]
    fn a_token_proves_its_account_and_nothing_else_does() {
        let key = Arc::new(TokenKey::generate().unwrap());
        let auth = Authenticator::new(key.clone());
        let t = key
            .issue("shop", "web", Duration::from_secs(60), SystemTime::now())
            .unwrap();
        let c = auth.caller_by_token(Some(&format!("Bearer {t}"))).unwrap();
        assert!(c.may_act_as("shop", "web"));
        for bad in [None, Some("Basic x"), Some("Bearer fgt1:shop/web:1:00")] {
            let e = auth.caller_by_token(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(TlsConnectInfo {
            remote: None,
            identity: Some(SpiffeId::new("cluster.local", "shop", "db").unwrap()),
            not_after: None,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        // The certificate wins over a token sent alongside.
        assert!(auth.caller(&req).unwrap().may_act_as("shop", "db"));
    }

    #[test]
    fn the_server_config_carries_the_leaf_and_speaks_h2() {
        let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let id = SpiffeId::new("cluster.local", "flowgate-system", "controller").unwrap();
        let leaf = ca
            .issue_with_names(&id, &["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cfg = server_config(&ca, &leaf).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(spiffe_id_of(&leaf.cert_der), Some(id.clone()));
        assert!(matches!(
            ca.issue_with_names(&id, &["not a name".into()]),
            Err(crate::ca::CaError::BadName(_))
        ));
    }
}
