//! `accept-tls` and `connect-tls` configurations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Filter, SubPipeline};
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use serde::{Deserialize, Serialize};

use super::certs::{SniResolver, load_certs, load_key, load_roots};
use super::pinned::{PinnedClientCert, PinnedServerCert};
use super::suites::{mismatch, provider, versions};
use super::{AcceptTls, ConnectTls, DEFAULT_MAX_FEED};

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (`tls1.2`).
    #[serde(rename = "tls1.2", alias = "TLSv1.2")]
    Tls12,
    /// TLS 1.3 (`tls1.3`).
    #[serde(rename = "tls1.3", alias = "TLSv1.3")]
    Tls13,
}

/// A server certificate chain, its key, and the server names it is for.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, end-entity certificate first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The SNI names this certificate serves (`a.example.com`, `*.example.com`). Empty for
    /// a certificate used only as the default.
    #[serde(default)]
    pub sni: Vec<String>,
}

/// Client certificate verification (mutual TLS) for `accept-tls`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM file with the CA certificates that client certificates must chain to.
    pub ca: PathBuf,
    /// Reject clients without a certificate. Default true; when false, a client may go
    /// without one, but a certificate it does send must still verify.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub required: bool,
    /// Admit only client certificates that name one of these identities (a DNS or URI
    /// subject alternative name, such as a mesh's SPIFFE ID); any that verifies when
    /// empty. A certificate naming none fails the handshake.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

/// A client certificate for `connect-tls` (mutual TLS to the upstream).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// PEM file with the certificate chain, end-entity certificate first.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

fn default_versions() -> Vec<TlsVersion> {
    vec![TlsVersion::Tls12, TlsVersion::Tls13]
}

/// How long a TLS handshake may take unless a config says otherwise: 10 s.
pub fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_feed() -> usize {
    DEFAULT_MAX_FEED
}

/// Configuration of [`AcceptTls`] (`accept-tls:` in YAML).
///
/// ```yaml
/// - accept-tls:
///     pipeline: inner                  # gets the plaintext
///     certificates:
///       - {cert: site.pem, key: site.key, sni: [example.com, "*.example.com"]}
///     alpn: [h2, http/1.1]
///     client_auth: {ca: clients.pem}   # mutual TLS
///     versions: [tls1.3]
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcceptTlsConfig {
    /// The sub-pipeline that gets the decrypted stream.
    pub pipeline: String,
    /// Server certificates, picked by the client's SNI; the first one is the default when
    /// the client sends no SNI or one that no entry lists. At least one.
    pub certificates: Vec<CertificateConfig>,
    /// ALPN protocols in order of preference (`h2`, `http/1.1`). Default none.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Verify client certificates (mutual TLS). Default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthConfig>,
    /// Allowed protocol versions. Default both `tls1.2` and `tls1.3`.
    #[serde(default = "default_versions")]
    pub versions: Vec<TlsVersion>,
    /// Allowed cipher suites by name (`TLS13_AES_128_GCM_SHA256`…). Default all of the
    /// ring provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    /// How long the handshake may take. Default 10 s.
    #[serde(
        default = "default_handshake_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub handshake_timeout: Duration,
    /// Stop reading input while this many events wait for the sub-pipeline. Default 64.
    #[serde(default = "default_max_feed")]
    pub max_feed: usize,
}

impl AcceptTlsConfig {
    /// Loads the certificates and builds the rustls server configuration.
    pub fn server_config(&self, cx: &BuildContext) -> Result<Arc<ServerConfig>, ConfigError> {
        let provider = provider(self.cipher_suites.as_deref())?;
        let versions = versions(&self.versions)?;
        if self.certificates.is_empty() {
            return Err(ConfigError::new("certificates", "list at least one"));
        }
        let mut entries = Vec::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let field = |f: &str| format!("certificates[{i}].{f}");
            let certs =
                load_certs(&cx.path(&c.cert)).map_err(|p| ConfigError::new(field("cert"), p))?;
            let key = load_key(&cx.path(&c.key)).map_err(|p| ConfigError::new(field("key"), p))?;
            let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
                ConfigError::new(field("key"), format!("does not fit the certificate: {e}"))
            })?;
            entries.push((c.sni.clone(), Arc::new(key)));
        }
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(mismatch)?;
        let builder = match &self.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let roots = load_roots(&cx.path(&auth.ca))
                    .map_err(|p| ConfigError::new("client_auth.ca", p))?;
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if !auth.required {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| ConfigError::new("client_auth.ca", e))?;
                if auth.identities.is_empty() {
                    builder.with_client_cert_verifier(verifier)
                } else {
                    builder.with_client_cert_verifier(Arc::new(PinnedClientCert {
                        inner: verifier,
                        identities: auth.identities.clone(),
                    }))
                }
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(entries)));
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl FilterConfig for AcceptTlsConfig {
    fn build(self: Box<Self>, cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        check_common(&self.pipeline, self.handshake_timeout, self.max_feed)?;
        let server = self.server_config(cx)?;
        let filter = AcceptTls::new(server, SubPipeline::named(self.pipeline.as_str()))
            .handshake_timeout(self.handshake_timeout)
            .max_feed(self.max_feed)
            .described_by(&*self);
        Ok(Arc::new(filter))
    }
}

/// Configuration of [`ConnectTls`] (`connect-tls:` in YAML).
///
/// ```yaml
/// - connect-tls:
///     pipeline: upstream     # gets the ciphertext, usually [connect]
///     sni: api.example.com   # also the name the certificate must carry
///     ca: upstream-ca.pem
///     alpn: [http/1.1]
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectTlsConfig {
    /// The sub-pipeline that carries the encrypted stream to the upstream.
    pub pipeline: String,
    /// The upstream's server name: sent as SNI and checked against its certificate. A DNS
    /// name or an IP address (an IP address is checked but not sent). Required when
    /// `verify` is on; without it no SNI is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file with the CA certificates the upstream's certificate must chain to. Required
    /// when `verify` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Verify the upstream's certificate. Default true. `false` accepts any certificate and
    /// is meant for tests only: anyone in the path can then impersonate the upstream.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub verify: bool,
    /// ALPN protocols to offer, in order of preference. Default none.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// A client certificate for upstreams that require mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCertConfig>,
    /// Check the upstream by identity instead of by `sni`, as a mesh does: its certificate
    /// must chain to `ca` and name one of these (a DNS or URI subject alternative name,
    /// such as a SPIFFE ID; `*` for any the CA signed). `sni` is then only sent. Default
    /// none: the certificate must carry `sni`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Allowed protocol versions. Default both `tls1.2` and `tls1.3`.
    #[serde(default = "default_versions")]
    pub versions: Vec<TlsVersion>,
    /// Allowed cipher suites by name. Default all of the ring provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    /// How long the handshake may take. Default 10 s.
    #[serde(
        default = "default_handshake_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub handshake_timeout: Duration,
    /// Stop reading input while this many events wait for the sub-pipeline. Default 64.
    #[serde(default = "default_max_feed")]
    pub max_feed: usize,
}

impl ConnectTlsConfig {
    /// The server name to connect with (a placeholder IP address, which sends no SNI, when
    /// `sni` is not set).
    pub fn server_name(&self) -> Result<ServerName<'static>, ConfigError> {
        match &self.sni {
            Some(n) => ServerName::try_from(n.clone())
                .map_err(|e| ConfigError::new("sni", format!("`{n}`: {e}"))),
            None if self.verify && self.identities.is_empty() => Err(ConfigError::new(
                "sni",
                "required to verify the upstream's certificate (or give `identities`, or set `verify: false`, for tests only)",
            )),
            None => Ok(ServerName::IpAddress(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
            )),
        }
    }

    /// Loads the files and builds the rustls client configuration — once per configuration
    /// for equal settings: the clusters of a sidecar share it (and its session cache).
    pub fn client_config(&self, cx: &BuildContext) -> Result<Arc<ClientConfig>, ConfigError> {
        let mut key = self.clone();
        key.pipeline.clear();
        key.sni = None; // sent per connection, not part of the client configuration
        let key = format!(
            "connect-tls:{}",
            serde_json::to_string(&key).unwrap_or_default()
        );
        cx.shared(&key, || self.build_client_config(cx))
    }

    fn build_client_config(&self, cx: &BuildContext) -> Result<Arc<ClientConfig>, ConfigError> {
        let provider = provider(self.cipher_suites.as_deref())?;
        let versions = versions(&self.versions)?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(mismatch)?;
        let builder = match (&self.ca, self.verify) {
            (_, false) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServerCert::any(provider))),
            (Some(ca), true) => {
                let roots = load_roots(&cx.path(ca)).map_err(|p| ConfigError::new("ca", p))?;
                if self.identities.is_empty() {
                    builder.with_root_certificates(roots)
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(PinnedServerCert {
                            roots: Some(Arc::new(roots)),
                            identities: self.identities.clone(),
                            provider,
                        }))
                }
            }
            (None, true) => {
                return Err(ConfigError::new(
                    "ca",
                    "required to verify the upstream's certificate (or set `verify: false`, for tests only)",
                ));
            }
        };
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let certs = load_certs(&cx.path(&c.cert))
                    .map_err(|p| ConfigError::new("client_cert.cert", p))?;
                let key = load_key(&cx.path(&c.key))
                    .map_err(|p| ConfigError::new("client_cert.key", p))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| ConfigError::new("client_cert.key", e))?
            }
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl FilterConfig for ConnectTlsConfig {
    fn build(self: Box<Self>, cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        check_common(&self.pipeline, self.handshake_timeout, self.max_feed)?;
        let name = self.server_name()?;
        let client = self.client_config(cx)?;
        let filter = ConnectTls::new(client, name, SubPipeline::named(self.pipeline.as_str()))
            .handshake_timeout(self.handshake_timeout)
            .max_feed(self.max_feed)
            .described_by(&*self);
        Ok(Arc::new(filter))
    }
}

fn check_common(pipeline: &str, timeout: Duration, max_feed: usize) -> Result<(), ConfigError> {
    if pipeline.is_empty() {
        return Err(ConfigError::new("pipeline", "name the sub-pipeline"));
    }
    if timeout.is_zero() {
        return Err(ConfigError::new(
            "handshake_timeout",
            "must be more than zero",
        ));
    }
    if max_feed == 0 {
        return Err(ConfigError::new("max_feed", "must be at least 1"));
    }
    Ok(())
}
