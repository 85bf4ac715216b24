//! Certificates and keys from PEM files, and the server certificate picked by SNI.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("cannot open `{}`: {e}", path.display()))
}

/// Every certificate of a PEM file (a chain: the end-entity certificate first).
pub(super) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .ok_or_else(|| format!("`{}` holds no PEM private key", path.display()))
}

/// Trust anchors from a PEM file of CA certificates.
pub(super) fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("`{}`: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Picks the server certificate by the SNI of the client hello: the first entry whose names
/// match (exactly, or `*.example.com` for one more label), or else the first entry.
#[derive(Debug)]
pub(super) struct SniResolver {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// `entries` must not be empty: its first key is the default.
    pub fn new(entries: Vec<(Vec<String>, Arc<CertifiedKey>)>) -> Self {
        let entries = entries
            .into_iter()
            .map(|(names, key)| (names.iter().map(|n| n.to_ascii_lowercase()).collect(), key))
            .collect();
        SniResolver { entries }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni.and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.entries
                .iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, &sni)))
        });
        by_name.or(self.entries.first()).map(|(_, k)| k.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_matching() {
        let cases = [
            ("a.example", "a.example", true),
            ("a.example", "b.example", false),
            ("*.example", "a.example", true),
            ("*.example", "x.a.example", false),
            ("*.example", "example", false),
            ("*.example", ".example", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(name_matches(pattern, name), want, "{pattern} vs {name}");
        }
    }
}
