//! The mesh's certificate authority: a root (generated and persisted, or brought as PEM),
//! leaf certificates for SPIFFE identities, CSR signing so a workload's key never leaves
//! it, and root rotation with an overlap window in which both roots are trusted.
//!
//! Keys are ECDSA P-256, signed with ring. A leaf carries its identity as a URI SAN
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), is valid from five minutes in the past (clock
//! skew) for the configured lifetime (24 h by default), and may serve and call (server and
//! client auth). What a CSR asks for (its subject, its names) is ignored: the certificate
//! names the identity the caller proved, nothing else.
//!
//! ```
//! use std::time::Duration;
//! use flowgate_mesh::ca::{Ca, SpiffeId, spiffe_id_of};
//!
//! let ca = Ca::generate("cluster.local", Duration::from_secs(24 * 3600))?;
//! let id = SpiffeId::new("cluster.local", "bookstore", "bookstore")?;
//! let leaf = ca.issue(&id)?;                    // key made here: the weaker, SDS mode
//! assert_eq!(spiffe_id_of(&leaf.cert_der).as_ref(), Some(&id));
//! assert!(ca.bundle_pem().contains("BEGIN CERTIFICATE"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use time::OffsetDateTime;

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Making or signing a certificate failed (rcgen), or a PEM did not parse.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A CSR that does not parse, or whose signature does not verify.
    #[error("the CSR is malformed or its signature does not verify")]
    BadCsr,
    /// A SPIFFE ID that is not `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[error("`{0}` is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<ns>/sa/<sa>")]
    BadId(String),
    /// A server name that is neither a DNS name nor an IP address.
    #[error("`{0}` is neither a DNS name nor an IP address")]
    BadName(String),
    /// An identity of another trust domain.
    #[error("`{id}` is not in this mesh's trust domain `{trust_domain}`")]
    ForeignId {
        /// The identity asked for.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A shared record of the CA ([`CaRecord`]) or of a leaf that does not make sense.
    #[error("a stored record: {0}")]
    BadRecord(String),
    /// Reading or writing the persisted root failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain.
    pub trust_domain: String,
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

/// Whether `s` is a valid segment of a SPIFFE ID path or trust domain (letters, digits,
/// `.`, `-`, `_`; at most 253 bytes).
fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
}

impl SpiffeId {
    /// The identity of service account `namespace/service_account`.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, CaError> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_ascii_lowercase(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        if [&id.trust_domain, &id.namespace, &id.service_account]
            .iter()
            .all(|s| segment_ok(s))
        {
            Ok(id)
        } else {
            Err(CaError::BadId(id.to_string()))
        }
    }

    /// Parses `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn parse(uri: &str) -> Result<Self, CaError> {
        let bad = || CaError::BadId(uri.chars().take(300).collect());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                Self::new(td, ns, sa).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The SPIFFE ID in a certificate's URI SAN (the first `spiffe://` one), if it has one.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<SpiffeId> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => SpiffeId::parse(u).ok(),
        _ => None,
    })
}

/// When a certificate (DER) stops being valid, or `None` if it does not parse.
pub fn not_after_of(cert_der: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// A certificate the CA issued: the leaf, its chain up to (not including) the root, and
/// the key when the CA made it.
#[derive(Clone)]
pub struct Issued {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// The leaf, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PEM (PKCS #8), when the CA made it ([`Ca::issue`]); `None` for a
    /// signed CSR, whose key stayed with the workload.
    pub key_pem: Option<String>,
    /// When it stops being valid.
    pub not_after: SystemTime,
    /// The identity it names.
    pub id: SpiffeId,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .field("key", &self.key_pem.as_ref().map(|_| "(private)"))
            .finish()
    }
}

impl Issued {
    /// A leaf issued earlier, from its PEM (and its key's, when the CA made it): how a
    /// replica adopts the leaf another replica issued.
    pub fn from_pem(cert_pem: &str, key_pem: Option<String>) -> Result<Issued, CaError> {
        let bad = |what: &str| CaError::BadRecord(format!("a leaf certificate: {what}"));
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| bad("not PEM"))?;
        let id = spiffe_id_of(&pem.contents).ok_or_else(|| bad("no SPIFFE ID"))?;
        let not_after = not_after_of(&pem.contents).ok_or_else(|| bad("no validity"))?;
        if let Some(key) = &key_pem {
            KeyPair::from_pem(key)?;
        }
        Ok(Issued {
            cert_pem: cert_pem.to_string(),
            cert_der: pem.contents,
            key_pem,
            not_after,
            id,
        })
    }
}

/// A CA's roots with their keys as one record, for a store that replicas share
/// ([`crate::replica`]): what [`Ca::export`] gives and [`Ca::import`] takes. It holds
/// private keys: store it encrypted.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaRecord {
    /// The trust domain.
    pub trust_domain: String,
    /// The signing root first, then retired roots still trusted.
    pub roots: Vec<RootRecord>,
    /// A root trusted but not signing yet.
    pub staged: Option<RootRecord>,
    /// When the staged root starts signing and the overlap the old root then gets (UNIX
    /// seconds, seconds).
    pub promotion: Option<(u64, u64)>,
}

impl fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaRecord")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .field("staged", &self.staged.is_some())
            .field("promotion", &self.promotion)
            .finish()
    }
}

/// One root of a [`CaRecord`].
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootRecord {
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM (PKCS #8).
    pub key_pem: String,
    /// Trusted until then (UNIX seconds); `None` for the signing or a staged root.
    pub retired_until: Option<u64>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn from_unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// One root: its certificate and key.
#[derive(Clone)]
struct Root {
    cert: std::sync::Arc<rcgen::Certificate>,
    cert_pem: String,
    key: std::sync::Arc<KeyPair>,
    /// Trusted until then (an old root in its overlap window); `None` for the signing root.
    retired_until: Option<SystemTime>,
    /// A short fingerprint of the certificate.
    id: String,
}

fn fingerprint(cert_pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_pem.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Root {
    fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "flowgate mesh");
        dn.push(
            DnType::CommonName,
            format!("flowgate mesh root {trust_domain}"),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(|_| CaError::BadId(trust_domain.into()))?,
        )];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + to_time(validity);
        let cert = p.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Root {
            id: fingerprint(&cert_pem),
            cert_pem,
            cert: std::sync::Arc::new(cert),
            key: std::sync::Arc::new(key),
            retired_until: None,
        })
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-made from the same name and key: what a leaf's issuer fields and signature
        // depend on. The original PEM is what the bundle carries.
        let cert = params.self_signed(&key)?;
        Ok(Root {
            id: fingerprint(cert_pem),
            cert: std::sync::Arc::new(cert),
            cert_pem: cert_pem.to_string(),
            key: std::sync::Arc::new(key),
            retired_until: None,
        })
    }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::days(365 * 100))
}

fn to_system(t: OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// The most retired roots kept trusted at once (rotating again within an overlap window
/// drops the oldest).
pub const MAX_RETIRED: usize = 4;

fn io_error(path: &Path, error: std::io::Error) -> CaError {
    CaError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// How long a generated root is valid: 10 years.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The certificate authority of one trust domain. Cloning is cheap (keys are shared).
#[derive(Clone)]
pub struct Ca {
    trust_domain: String,
    leaf_validity: Duration,
    /// The signing root first, then old roots still in their overlap window.
    roots: Vec<Root>,
    /// A root trusted but not signing yet: the first step of a rotation.
    staged: Option<Root>,
    /// When the staged root is to sign, and the overlap the old root then gets.
    promotion: Option<(SystemTime, Duration)>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("leaf_validity", &self.leaf_validity)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Ca {
    /// A CA with a new root for `trust_domain`, issuing leaves valid for `leaf_validity`.
    pub fn generate(trust_domain: &str, leaf_validity: Duration) -> Result<Self, CaError> {
        check_domain(trust_domain)?;
        Ok(Ca {
            trust_domain: trust_domain.to_ascii_lowercase(),
            leaf_validity,
            roots: vec![Root::generate(trust_domain, ROOT_VALIDITY)?],
            staged: None,
            promotion: None,
        })
    }

    /// A CA with a root brought as PEM (certificate and PKCS #8 key).
    pub fn from_pem(
        trust_domain: &str,
        leaf_validity: Duration,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        check_domain(trust_domain)?;
        Ok(Ca {
            trust_domain: trust_domain.to_ascii_lowercase(),
            leaf_validity,
            roots: vec![Root::from_pem(cert_pem, key_pem)?],
            staged: None,
            promotion: None,
        })
    }

    /// The roots persisted in `dir` by [`save`](Self::save) (at least `root.pem` and
    /// `root.key`), or a new root written there (keys readable by their owner only).
    pub fn load_or_generate(
        dir: &Path,
        trust_domain: &str,
        leaf_validity: Duration,
    ) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join("root.pem"), dir.join("root.key"));
        if !(cert_path.exists() && key_path.exists()) {
            let ca = Self::generate(trust_domain, leaf_validity)?;
            ca.save(dir)?;
            return Ok(ca);
        }
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| io_error(path, e));
        let mut ca = Self::from_pem(
            trust_domain,
            leaf_validity,
            &read(&cert_path)?,
            &read(&key_path)?,
        )?;
        let (staged_cert, staged_key) = (dir.join("staged.pem"), dir.join("staged.key"));
        if staged_cert.exists() && staged_key.exists() {
            ca.staged = Some(Root::from_pem(&read(&staged_cert)?, &read(&staged_key)?)?);
            let when = dir.join("staged.when");
            if when.exists() {
                let text = read(&when)?;
                let mut it = text.split_whitespace().map(str::parse::<u64>);
                match (it.next(), it.next()) {
                    (Some(Ok(at)), Some(Ok(overlap))) => {
                        ca.promotion = Some((from_unix(at), Duration::from_secs(overlap)));
                    }
                    _ => {
                        return Err(io_error(
                            &when,
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "not `<UNIX time> <seconds>`",
                            ),
                        ));
                    }
                }
            }
        }
        for i in 0..MAX_RETIRED {
            let (c, k, u) = (
                dir.join(format!("retired-{i}.pem")),
                dir.join(format!("retired-{i}.key")),
                dir.join(format!("retired-{i}.until")),
            );
            if !(c.exists() && k.exists() && u.exists()) {
                continue;
            }
            let until: u64 = read(&u)?.trim().parse().map_err(|_| {
                io_error(
                    &u,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "not a UNIX time"),
                )
            })?;
            let mut root = Root::from_pem(&read(&c)?, &read(&k)?)?;
            root.retired_until = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(until));
            ca.roots.push(root);
        }
        Ok(ca)
    }

    /// Writes every root to `dir`: the signing one as `root.pem`/`root.key`, a staged one
    /// as `staged.*`, retired ones as `retired-N.pem`/`.key`/`.until` (UNIX seconds); keys
    /// readable by their owner only. Each file is replaced whole (written aside, then
    /// renamed), and files of roots no longer held are removed.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let put = |name: &str, text: &str, private: bool| -> Result<(), CaError> {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let written = if private {
                write_private(&tmp, text)
            } else {
                std::fs::write(&tmp, text)
            };
            written
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| io_error(&path, e))
        };
        let gone = |name: &str| {
            let _ = std::fs::remove_file(dir.join(name));
        };
        let signing = &self.roots[0];
        put("root.key", &signing.key.serialize_pem(), true)?;
        put("root.pem", &signing.cert_pem, false)?;
        match &self.staged {
            Some(r) => {
                put("staged.key", &r.key.serialize_pem(), true)?;
                put("staged.pem", &r.cert_pem, false)?;
            }
            None => {
                gone("staged.key");
                gone("staged.pem");
            }
        }
        match self.promotion {
            Some((at, overlap)) if self.staged.is_some() => put(
                "staged.when",
                &format!("{} {}", unix_secs(at), overlap.as_secs()),
                false,
            )?,
            _ => gone("staged.when"),
        }
        for i in 0..MAX_RETIRED {
            match self.roots.get(i + 1) {
                Some(r) => {
                    let until = r
                        .retired_until
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    put(&format!("retired-{i}.key"), &r.key.serialize_pem(), true)?;
                    put(&format!("retired-{i}.pem"), &r.cert_pem, false)?;
                    put(&format!("retired-{i}.until"), &until.to_string(), false)?;
                }
                None => {
                    for ext in ["key", "pem", "until"] {
                        gone(&format!("retired-{i}.{ext}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every root with its key, as one record (for a shared store; see [`CaRecord`]).
    pub fn export(&self) -> CaRecord {
        let record = |r: &Root| RootRecord {
            cert_pem: r.cert_pem.clone(),
            key_pem: r.key.serialize_pem(),
            retired_until: r.retired_until.map(unix_secs),
        };
        CaRecord {
            trust_domain: self.trust_domain.clone(),
            roots: self.roots.iter().map(record).collect(),
            staged: self.staged.as_ref().map(record),
            promotion: self
                .promotion
                .map(|(at, overlap)| (unix_secs(at), overlap.as_secs())),
        }
    }

    /// The CA a [`CaRecord`] describes, issuing leaves valid for `leaf_validity`.
    pub fn import(record: &CaRecord, leaf_validity: Duration) -> Result<Ca, CaError> {
        check_domain(&record.trust_domain)?;
        let root = |r: &RootRecord| -> Result<Root, CaError> {
            let mut root = Root::from_pem(&r.cert_pem, &r.key_pem)?;
            root.retired_until = r.retired_until.map(from_unix);
            Ok(root)
        };
        let roots = record
            .roots
            .iter()
            .take(1 + MAX_RETIRED)
            .map(root)
            .collect::<Result<Vec<_>, _>>()?;
        if roots.is_empty() || roots[0].retired_until.is_some() {
            return Err(CaError::BadRecord("no signing root".into()));
        }
        let staged = record.staged.as_ref().map(root).transpose()?;
        Ok(Ca {
            trust_domain: record.trust_domain.to_ascii_lowercase(),
            leaf_validity,
            promotion: match (&staged, record.promotion) {
                (Some(_), Some((at, overlap))) => {
                    Some((from_unix(at), Duration::from_secs(overlap)))
                }
                _ => None,
            },
            roots,
            staged,
        })
    }

    /// A short fingerprint of the signing root: leaves it did not sign are issued again.
    pub fn signing_root_id(&self) -> &str {
        &self.roots[0].id
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// How long issued leaves are valid.
    pub fn leaf_validity(&self) -> Duration {
        self.leaf_validity
    }

    /// Leaves issued from now on are valid for `validity`.
    pub fn set_leaf_validity(&mut self, validity: Duration) {
        self.leaf_validity = validity;
    }

    /// Every root a peer should trust now, PEM: the signing root, old roots still in their
    /// overlap window, then a staged root.
    pub fn bundle_pem(&self) -> String {
        self.roots
            .iter()
            .chain(&self.staged)
            .map(|r| r.cert_pem.as_str())
            .collect()
    }

    /// The signing root, PEM.
    pub fn root_pem(&self) -> &str {
        &self.roots[0].cert_pem
    }

    /// Issues a leaf for `id` with a key made here (for Envoy sidecars over SDS — the
    /// weaker mode: the key travels to the workload).
    pub fn issue(&self, id: &SpiffeId) -> Result<Issued, CaError> {
        self.issue_with_names(id, &[])
    }

    /// Issues a leaf for `id` that also names `names` (DNS names, or IP addresses when they
    /// parse as one) — for a server its clients reach by name, such as the controller.
    pub fn issue_with_names(&self, id: &SpiffeId, names: &[String]) -> Result<Issued, CaError> {
        self.check_id(id)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (mut params, not_after) = self.leaf_params(id)?;
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if !dns_name_ok(n) => {
                    return Err(CaError::BadName(n.chars().take(300).collect()));
                }
                Err(_) => SanType::DnsName(
                    n.as_str()
                        .try_into()
                        .map_err(|_| CaError::BadName(n.chars().take(300).collect()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        let root = &self.roots[0];
        let cert = params.signed_by(&key, &root.cert, &root.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: Some(key.serialize_pem()),
            not_after,
            id: id.clone(),
        })
    }

    /// Signs a CSR (PEM) for `id`, the identity the caller proved. The CSR's signature
    /// must verify; what it asks for beyond its public key is ignored.
    pub fn sign_csr(&self, csr_pem: &str, id: &SpiffeId) -> Result<Issued, CaError> {
        self.check_id(id)?;
        if csr_pem.len() > 64 * 1024 {
            return Err(CaError::BadCsr);
        }
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| CaError::BadCsr)?;
        let (params, not_after) = self.leaf_params(id)?;
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let root = &self.roots[0];
        let cert = csr.signed_by(&root.cert, &root.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: None,
            not_after,
            id: id.clone(),
        })
    }

    /// Rotates in one step: a new root signs from now on; the old one stays in
    /// [`bundle_pem`](Self::bundle_pem) for `overlap` (leaves it signed keep verifying while
    /// workloads renew). Returns the new root, PEM. A controller with proxies should rather
    /// [`stage_root`](Self::stage_root), let the bundle reach every proxy, then
    /// [`promote`](Self::promote).
    pub fn rotate(&mut self, overlap: Duration) -> Result<String, CaError> {
        let pem = self.stage_root()?;
        self.promote(overlap);
        Ok(pem)
    }

    /// The first step of a rotation: a new root that is trusted (in the bundle) but does
    /// not sign yet, so peers learn it before they meet a leaf it signed. Replaces a root
    /// staged earlier. Returns it, PEM.
    pub fn stage_root(&mut self) -> Result<String, CaError> {
        let new = Root::generate(&self.trust_domain, ROOT_VALIDITY)?;
        let pem = new.cert_pem.clone();
        self.staged = Some(new);
        self.promotion = None;
        Ok(pem)
    }

    /// Records when the staged root is to sign and the overlap the old root then gets
    /// (kept with the roots by [`save`](Self::save) and [`export`](Self::export), so a
    /// restarted controller, or another replica, finishes the rotation).
    pub fn schedule_promotion(&mut self, at: SystemTime, overlap: Duration) {
        if self.staged.is_some() {
            self.promotion = Some((at, overlap));
        }
    }

    /// When the staged root is to sign, and the overlap the old root then gets.
    pub fn promotion(&self) -> Option<(SystemTime, Duration)> {
        self.promotion
    }

    /// Whether a staged root waits to be promoted.
    pub fn has_staged_root(&self) -> bool {
        self.staged.is_some()
    }

    /// The second step: the staged root signs from now on; the old signing root stays
    /// trusted for `overlap`. Beyond [`MAX_RETIRED`] retired roots, the oldest is dropped.
    /// `false` when no root was staged.
    pub fn promote(&mut self, overlap: Duration) -> bool {
        let Some(new) = self.staged.take() else {
            return false;
        };
        self.promotion = None;
        if let Some(old) = self.roots.first_mut() {
            old.retired_until = Some(SystemTime::now() + overlap);
        }
        self.roots.insert(0, new);
        self.roots.truncate(1 + MAX_RETIRED);
        true
    }

    /// When the first retired root's overlap window ends.
    pub fn next_retirement(&self) -> Option<SystemTime> {
        self.roots.iter().filter_map(|r| r.retired_until).min()
    }

    /// Drops old roots whose overlap window ended by `now`; returns how many.
    pub fn prune(&mut self, now: SystemTime) -> usize {
        let before = self.roots.len();
        self.roots
            .retain(|r| r.retired_until.is_none_or(|until| until > now));
        before - self.roots.len()
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain != self.trust_domain {
            return Err(CaError::ForeignId {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    fn leaf_params(&self, id: &SpiffeId) -> Result<(CertificateParams, SystemTime), CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "flowgate mesh");
        dn.push(
            DnType::CommonName,
            format!("{}.{}", id.service_account, id.namespace),
        );
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|_| CaError::BadId(id.to_string()))?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys sign; they encipher nothing.
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + to_time(self.leaf_validity);
        let not_after = to_system(p.not_after);
        Ok((p, not_after))
    }
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens (1–63 bytes
/// each, 253 in all), the first label possibly `*`.
fn dns_name_ok(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

fn check_domain(trust_domain: &str) -> Result<(), CaError> {
    if segment_ok(trust_domain) {
        Ok(())
    } else {
        Err(CaError::BadId(format!("spiffe://{trust_domain}")))
    }
}

/// Writes `text` to a new file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    use super::*;

    fn verifies(bundle_pem: &str, leaf_der: &[u8]) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut bundle_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        v.verify_client_cert(
            &CertificateDer::from(leaf_der.to_vec()),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).unwrap()
    }

    #[test]
    fn spiffe_ids_parse_and_refuse_what_is_not_one() {
        let a = SpiffeId::parse("spiffe://cluster.local/ns/store/sa/bookstore").unwrap();
        assert_eq!(a, id("store", "bookstore"));
        assert_eq!(
            a.to_string(),
            "spiffe://cluster.local/ns/store/sa/bookstore"
        );
        for bad in [
            "spiffe://cluster.local/ns/store",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issued_leaves_chain_to_the_root_and_name_the_identity() {
        let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let leaf = ca.issue(&id("store", "bookstore")).unwrap();
        assert!(verifies(&ca.bundle_pem(), &leaf.cert_der));
        assert_eq!(spiffe_id_of(&leaf.cert_der), Some(id("store", "bookstore")));
        let left = leaf.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );
        // Another CA's leaf does not verify against this root.
        let other = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        assert!(!verifies(
            &ca.bundle_pem(),
            &other.issue(&id("a", "b")).unwrap().cert_der
        ));
        // Foreign trust domains are refused.
        let foreign = SpiffeId::new("other.mesh", "a", "b").unwrap();
        assert!(matches!(ca.issue(&foreign), Err(CaError::ForeignId { .. })));
    }

    #[test]
    fn a_csr_gets_the_proven_identity_not_the_one_it_asks_for() {
        let ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut asks = CertificateParams::new(vec!["admin.example".into()]).unwrap();
        asks.subject_alt_names.push(SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ));
        let csr = asks.serialize_request(&key).unwrap().pem().unwrap();
        let leaf = ca.sign_csr(&csr, &id("store", "bookstore")).unwrap();
        assert!(leaf.key_pem.is_none());
        assert!(verifies(&ca.bundle_pem(), &leaf.cert_der));
        assert_eq!(spiffe_id_of(&leaf.cert_der), Some(id("store", "bookstore")));
        // The certificate holds the CSR's key.
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
        assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
        // A tampered CSR (one base64 character of its signature changed) is refused.
        let mut lines: Vec<String> = csr.lines().map(String::from).collect();
        let last_body = lines.len() - 2;
        let line = &mut lines[last_body];
        let i = line.len() / 2;
        let c = if &line[i..=i] == "A" { "B" } else { "A" };
        line.replace_range(i..=i, c);
        let tampered = lines.join("\n");
        assert!(matches!(
            ca.sign_csr(&tampered, &id("a", "b")),
            Err(CaError::BadCsr)
        ));
        assert!(matches!(
            ca.sign_csr("garbage", &id("a", "b")),
            Err(CaError::BadCsr)
        ));
    }

    #[test]
    fn rotation_keeps_old_leaves_verifying_until_the_overlap_ends() {
        let mut ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let old_leaf = ca.issue(&id("a", "old")).unwrap();
        ca.rotate(Duration::from_secs(600)).unwrap();
        let new_leaf = ca.issue(&id("a", "new")).unwrap();
        let bundle = ca.bundle_pem();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(
            verifies(&bundle, &old_leaf.cert_der),
            "old leaves verify during the overlap"
        );
        assert!(verifies(&bundle, &new_leaf.cert_der));
        assert!(
            !verifies(ca.root_pem(), &old_leaf.cert_der),
            "the new root did not sign it"
        );
        assert_eq!(ca.prune(SystemTime::now()), 0);
        assert_eq!(ca.prune(SystemTime::now() + Duration::from_secs(601)), 1);
        assert!(!verifies(&ca.bundle_pem(), &old_leaf.cert_der));
        assert!(verifies(&ca.bundle_pem(), &new_leaf.cert_der));
    }

    #[test]
    fn a_persisted_root_signs_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("flowgate-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Ca::load_or_generate(&dir, "cluster.local", Duration::from_secs(3600)).unwrap();
        let again = Ca::load_or_generate(&dir, "cluster.local", Duration::from_secs(3600)).unwrap();
        assert_eq!(first.root_pem(), again.root_pem());
        let leaf = again.issue(&id("a", "b")).unwrap();
        assert!(verifies(first.root_pem(), &leaf.cert_der));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("root.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_staged_root_is_trusted_before_it_signs_and_every_root_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("flowgate-ca-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let load =
            || Ca::load_or_generate(&dir, "cluster.local", Duration::from_secs(3600)).unwrap();
        let mut ca = load();
        let first = ca.root_pem().to_string();
        let old_leaf = ca.issue(&id("a", "old")).unwrap();
        let staged = ca.stage_root().unwrap();
        assert!(ca.has_staged_root());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        ca.schedule_promotion(at, Duration::from_secs(600));
        assert!(ca.bundle_pem().contains(&staged), "trusted at once");
        assert_eq!(ca.root_pem(), first, "the old root still signs");
        assert!(verifies(
            &first,
            &ca.issue(&id("a", "mid")).unwrap().cert_der
        ));
        ca.save(&dir).unwrap();
        assert_eq!(load().bundle_pem(), ca.bundle_pem());
        assert_eq!(
            load().promotion(),
            Some((at, Duration::from_secs(600))),
            "a restarted controller finishes the rotation"
        );

        assert!(ca.promote(Duration::from_secs(600)));
        assert_eq!(ca.promotion(), None);
        assert!(
            !ca.promote(Duration::from_secs(600)),
            "nothing staged any more"
        );
        assert_eq!(ca.root_pem(), staged);
        assert!(verifies(
            &staged,
            &ca.issue(&id("a", "new")).unwrap().cert_der
        ));
        assert!(verifies(&ca.bundle_pem(), &old_leaf.cert_der), "overlap");
        ca.save(&dir).unwrap();
        let reloaded = load();
        assert_eq!(reloaded.bundle_pem(), ca.bundle_pem());
        assert_eq!(reloaded.root_pem(), staged);
        let until = ca.next_retirement().unwrap();
        assert_eq!(
            reloaded
                .next_retirement()
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            until
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );

        assert_eq!(ca.prune(until + Duration::from_secs(1)), 1);
        ca.save(&dir).unwrap();
        assert!(!dir.join("retired-0.pem").exists());
        assert!(!dir.join("staged.pem").exists());
        assert_eq!(load().bundle_pem(), staged);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_exported_ca_imports_as_the_same_ca_and_its_leaves_as_the_same_leaves() {
        let mut ca = Ca::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        ca.stage_root().unwrap();
        ca.promote(Duration::from_secs(600));
        ca.stage_root().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        ca.schedule_promotion(at, Duration::from_secs(60));
        let record = ca.export();
        assert!(!format!("{record:?}").contains("PRIVATE"), "{record:?}");
        let copy = Ca::import(&record, Duration::from_secs(3600)).unwrap();
        assert_eq!(copy.bundle_pem(), ca.bundle_pem());
        assert_eq!(copy.signing_root_id(), ca.signing_root_id());
        assert_eq!(copy.promotion(), Some((at, Duration::from_secs(60))));
        assert_eq!(copy.export(), record);
        // The copy signs with the same root: its leaves verify against the first's roots.
        let leaf = copy.issue(&id("a", "b")).unwrap();
        assert!(verifies(ca.root_pem(), &leaf.cert_der));
        let again = Issued::from_pem(&leaf.cert_pem, leaf.key_pem.clone()).unwrap();
        assert_eq!((&again.id, again.not_after), (&leaf.id, leaf.not_after));
        assert_eq!(again.cert_der, leaf.cert_der);
        // Nonsense is refused, not half imported.
        let mut broken = record.clone();
        broken.roots.clear();
        assert!(matches!(
            Ca::import(&broken, Duration::from_secs(1)),
            Err(CaError::BadRecord(_))
        ));
        let mut broken = record;
        broken.roots[0].key_pem = "junk".into();
        assert!(Ca::import(&broken, Duration::from_secs(1)).is_err());
        assert!(Issued::from_pem("junk", None).is_err());
        // A new signing root has a new fingerprint.
        let mut next = ca.clone();
        next.promote(Duration::from_secs(1));
        assert_ne!(next.signing_root_id(), ca.signing_root_id());
    }
}
