//! The ring crypto provider, narrowed to the configured cipher suites, and protocol versions.

use std::sync::Arc;

use flowgate_pipeline::registry::ConfigError;
use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;

use super::config::TlsVersion;

/// The ring provider with only `names` as cipher suites (all of ring's when `None`).
///
/// Names are rustls's (`TLS13_AES_128_GCM_SHA256`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`)
/// or, for TLS 1.3, IANA's (`TLS_AES_128_GCM_SHA256`), in any case.
pub(super) fn provider(names: Option<&[String]>) -> Result<Arc<CryptoProvider>, ConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    let Some(names) = names else {
        return Ok(Arc::new(provider));
    };
    if names.is_empty() {
        return Err(ConfigError::new(
            "cipher_suites",
            "name at least one cipher suite, or leave the field out for all",
        ));
    }
    let all = std::mem::take(&mut provider.cipher_suites);
    for (i, name) in names.iter().enumerate() {
        let found = all
            .iter()
            .find(|s| suite_names(s).iter().any(|n| n.eq_ignore_ascii_case(name)));
        match found {
            Some(s) => provider.cipher_suites.push(*s),
            None => {
                let known: Vec<String> = all
                    .iter()
                    .filter_map(|s| suite_names(s).into_iter().next())
                    .collect();
                return Err(ConfigError::new(
                    format!("cipher_suites[{i}]"),
                    format!(
                        "unknown cipher suite `{name}` (known: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(Arc::new(provider))
}

fn suite_names(s: &rustls::SupportedCipherSuite) -> Vec<String> {
    let Some(name) = s.suite().as_str() else {
        return Vec::new();
    };
    let mut names = vec![name.to_string()];
    if let Some(rest) = name.strip_prefix("TLS13_") {
        names.push(format!("TLS_{rest}"));
    }
    names
}

/// The rustls protocol versions for `versions`.
pub(super) fn versions(
    versions: &[TlsVersion],
) -> Result<Vec<&'static SupportedProtocolVersion>, ConfigError> {
    if versions.is_empty() {
        return Err(ConfigError::new(
            "versions",
            "allow at least one of tls1.2, tls1.3",
        ));
    }
    let mut out = Vec::new();
    for v in versions {
        let v = match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        };
        if !out
            .iter()
            .any(|o: &&SupportedProtocolVersion| o.version == v.version)
        {
            out.push(v);
        }
    }
    Ok(out)
}

/// The error for a suite list that serves none of the allowed versions.
pub(super) fn mismatch(e: rustls::Error) -> ConfigError {
    ConfigError::new(
        "cipher_suites",
        format!("no cipher suite fits the allowed versions: {e}"),
    )
}
