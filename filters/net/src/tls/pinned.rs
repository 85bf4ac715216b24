//! Certificates checked by identity, as a mesh checks them: the chain must lead to the
//! configured roots, and the certificate must name one of the allowed identities (a DNS or
//! URI subject alternative name, such as a SPIFFE ID) — whatever name the connection was
//! opened with. `*` allows any identity the roots signed.
//!
//! Without roots, a server certificate is not checked at all (`verify: false`, for tests
//! only): the handshake signatures still are (the server holds the key of the certificate
//! it sent), but not who the certificate belongs to, so anyone in the path can impersonate
//! the upstream.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, Error, RootCertStore, SignatureScheme};

use super::identity::alt_names;

/// Whether `cert` (DER) names one of `allowed` (`*`: any).
pub(super) fn names_one_of(cert: &[u8], allowed: &[String]) -> bool {
    allowed.iter().any(|a| a == "*") || alt_names(cert).iter().any(|n| allowed.contains(n))
}

fn not_allowed() -> Error {
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Server certificates: the chain leads to `roots` and the certificate names one of
/// `identities`; the server name is sent (SNI) but not checked. Without `roots`, any
/// certificate passes.
#[derive(Debug)]
pub(super) struct PinnedServerCert {
    pub roots: Option<Arc<RootCertStore>>,
    pub identities: Vec<String>,
    pub provider: Arc<CryptoProvider>,
}

impl PinnedServerCert {
    /// `verify: false`: any certificate.
    pub fn any(provider: Arc<CryptoProvider>) -> Self {
        PinnedServerCert {
            roots: None,
            identities: Vec::new(),
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !names_one_of(end_entity, &self.identities) {
            return Err(not_allowed());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client certificates: `inner`'s checks (the chain), then the certificate must name one
/// of `identities`.
#[derive(Debug)]
pub(super) struct PinnedClientCert {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub identities: Vec<String>,
}

impl ClientCertVerifier for PinnedClientCert {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !names_one_of(end_entity, &self.identities) {
            return Err(not_allowed());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
