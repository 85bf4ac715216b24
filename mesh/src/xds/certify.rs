//! The certificate service: a workload sends a CSR (its key never leaves it) and gets a
//! certificate for the identity it proved — in the shape of Istio's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! The caller proves its service account with its current mesh certificate (renewal, on
//! the controller's TLS port) or a bootstrap token (`authorization: Bearer <token>`, see
//! [`crate::token`]), as [`Authenticator`] decides; the certificate names that account's
//! SPIFFE ID, whatever the CSR asks for, so a token for `ns/a` can never obtain a
//! certificate for `ns/b`. The answer's `cert_chain` is the leaf, then every root to trust.

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tonic::codegen::{Body, BoxFuture, StdError, http};

use super::auth::{Authenticator, Caller};
use crate::ca::{Ca, CaError, SpiffeId};

/// `IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertificateRequest {
    /// The CSR, PEM.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds (the CA's leaf lifetime is the most given).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
}

/// `IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertificateResponse {
    /// PEM certificates: the leaf first, then the roots to trust.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// The gRPC path of the method.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// The CA the service signs with, once the controller has one.
pub type SharedCa = Arc<RwLock<Option<Arc<Ca>>>>;

/// The certificate service (a tonic service; add it to the controller's server).
#[derive(Clone)]
pub struct CertService {
    ca: SharedCa,
    auth: Arc<Authenticator>,
}

impl CertService {
    /// A service signing with `ca` for callers proven by `auth`.
    pub fn new(ca: SharedCa, auth: Arc<Authenticator>) -> Self {
        CertService { ca, auth }
    }

    /// Signs for a proven caller: the method's logic, without the transport.
    pub fn create(
        &self,
        caller: &Caller,
        req: &CertificateRequest,
    ) -> Result<CertificateResponse, tonic::Status> {
        let Caller::Account {
            namespace: ns,
            service_account: sa,
            ..
        } = caller
        else {
            return Err(tonic::Status::unauthenticated(
                "a certificate is issued only to a proven service account",
            ));
        };
        let ca = self
            .ca
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| tonic::Status::unavailable("the certificate authority is not ready"))?;
        let id = SpiffeId::new(ca.trust_domain(), ns, sa)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let leaf = ca.sign_csr(&req.csr, &id).map_err(|e| match e {
            CaError::BadCsr => tonic::Status::invalid_argument(e.to_string()),
            other => tonic::Status::internal(other.to_string()),
        })?;
        tracing::info!(identity = %id, "certificate issued from a CSR");
        let mut cert_chain = vec![leaf.cert_pem];
        cert_chain.extend(
            ca.bundle_pem()
                .split_inclusive("-----END CERTIFICATE-----\n")
                .map(str::to_string),
        );
        Ok(CertificateResponse { cert_chain })
    }
}

/// The tonic service around [`CertService`].
#[derive(Clone)]
pub struct CertServiceServer(pub CertService);

impl tonic::server::NamedService for CertServiceServer {
    const NAME: &'static str = "istio.v1.auth.IstioCertificateService";
}

struct Unary(CertService);

impl tonic::server::UnaryService<CertificateRequest> for Unary {
    type Response = CertificateResponse;
    type Future = BoxFuture<tonic::Response<CertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CertificateRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let caller = svc.auth.caller(&request)?;
            svc.create(&caller, request.get_ref())
                .map(tonic::Response::new)
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for CertServiceServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let svc = Unary(self.0.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(64 * 1024), Some(1 << 20));
            Ok(grpc.unary(svc, req).await)
        })
    }
}
