//! Bootstrap tokens: how a new workload proves which service account it runs as before it
//! has a mesh certificate (`flowgate-controller token ns/sa` prints one).
//!
//! A token is `fgt1:<namespace>/<service-account>:<expiry, unix seconds>:<HMAC-SHA256>`,
//! keyed by a secret only the controller holds (persisted next to the CA root). It names
//! exactly one service account: a token for `ns/a` cannot obtain a certificate for `ns/b`.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use flowgate_mesh::token::TokenKey;
//!
//! let key = TokenKey::generate()?;
//! let now = SystemTime::now();
//! let t = key.issue("bookstore", "bookstore", Duration::from_secs(3600), now)?;
//! assert_eq!(key.verify(&t, now)?, ("bookstore".to_string(), "bookstore".to_string()));
//! assert!(key.verify(&t, now + Duration::from_secs(3601)).is_err(), "expired");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "fgt1";
/// The longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Why a token was refused (or could not be made).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this form.
    #[error("not a bootstrap token")]
    Malformed,
    /// Its signature does not verify with this controller's key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// It has expired.
    #[error("the token expired")]
    Expired,
    /// A namespace or service account that is not a DNS name.
    #[error("`{0}` is not a namespace/service-account name")]
    BadName(String),
    /// The system's random source or the key file failed.
    #[error("token key: {0}")]
    Key(String),
}

/// The controller's token secret.
pub struct TokenKey {
    key: hmac::Key,
    raw: [u8; 32],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl TokenKey {
    /// A new random key.
    pub fn generate() -> Result<Self, TokenError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| TokenError::Key("no randomness".into()))?;
        Ok(Self::from_bytes(raw))
    }

    /// The key made of `raw`.
    pub fn from_bytes(raw: [u8; 32]) -> Self {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
            raw,
        }
    }

    /// The raw secret (for a store replicas share; keep it secret).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.raw
    }

    /// Writes the key to `path` as 64 hex digits, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        let err = |e: std::io::Error| TokenError::Key(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        crate::ca::write_private(path, &format!("{}\n", hex(&self.raw))).map_err(err)
    }

    /// The key in `path` (64 hex digits), or a new one written there (readable by its
    /// owner only).
    pub fn load_or_generate(path: &Path) -> Result<Self, TokenError> {
        let err = |e: std::io::Error| TokenError::Key(format!("{}: {e}", path.display()));
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(err)?;
            let bytes = unhex(text.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| TokenError::Key(format!("{}: not 64 hex digits", path.display())))?;
            let mut raw = [0u8; 32];
            raw.copy_from_slice(&bytes);
            return Ok(Self::from_bytes(raw));
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok(key)
    }

    /// A token for service account `namespace/service_account`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        for n in [namespace, service_account] {
            if !name_ok(n) {
                return Err(TokenError::BadName(n.chars().take(300).collect()));
            }
        }
        let expiry = (now + ttl)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| TokenError::Key("clock before 1970".into()))?
            .as_secs();
        let body = format!("{PREFIX}:{namespace}/{service_account}:{expiry}");
        let tag = hmac::sign(&self.key, body.as_bytes());
        Ok(format!("{body}:{}", hex(tag.as_ref())))
    }

    /// The `(namespace, service account)` a token names, if it verifies and has not
    /// expired at `now`. The signature is compared in constant time.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<(String, String), TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (body, tag) = token.rsplit_once(':').ok_or(TokenError::Malformed)?;
        let tag = unhex(tag).ok_or(TokenError::Malformed)?;
        let mut parts = body.split(':');
        let (Some(PREFIX), Some(who), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| TokenError::Expired)?
            .as_secs();
        if now >= expiry {
            return Err(TokenError::Expired);
        }
        let (ns, sa) = who.split_once('/').ok_or(TokenError::Malformed)?;
        if !name_ok(ns) || !name_ok(sa) {
            return Err(TokenError::Malformed);
        }
        Ok((ns.to_string(), sa.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens_name_one_account_and_cannot_be_altered() {
        let key = TokenKey::from_bytes([7; 32]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = key
            .issue("shop", "a", Duration::from_secs(60), now)
            .unwrap();
        assert!(t.starts_with("fgt1:shop/a:1800000060:"), "{t}");
        assert_eq!(key.verify(&t, now).unwrap(), ("shop".into(), "a".into()));
        // The name changed to another account: the signature no longer holds.
        let forged = t.replace("shop/a:", "shop/b:");
        assert_eq!(key.verify(&forged, now), Err(TokenError::BadSignature));
        // A later expiry written in: refused too.
        let later = t.replace(":1800000060:", ":1900000060:");
        assert_eq!(key.verify(&later, now), Err(TokenError::BadSignature));
        // Another controller's key.
        let other = TokenKey::from_bytes([8; 32]);
        assert_eq!(other.verify(&t, now), Err(TokenError::BadSignature));
        assert_eq!(
            key.verify(&t, now + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        for junk in [
            "",
            "fgt1",
            "fgt1:a/b:1:zz",
            "fgt2:a/b:1:00",
            &"x".repeat(5000),
        ] {
            assert!(key.verify(junk, now).is_err(), "{junk:.20}");
        }
        assert!(matches!(
            key.issue("Shop", "a", Duration::from_secs(1), now),
            Err(TokenError::BadName(_))
        ));
        assert!(matches!(
            key.issue("shop", "a:b", Duration::from_secs(1), now),
            Err(TokenError::BadName(_))
        ));
    }

    #[test]
    fn a_persisted_key_verifies_after_a_restart() {
        let path =
            std::env::temp_dir().join(format!("flowgate-token-{}/token.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let a = TokenKey::load_or_generate(&path).unwrap();
        let b = TokenKey::load_or_generate(&path).unwrap();
        let now = SystemTime::now();
        let t = a.issue("ns", "sa", Duration::from_secs(60), now).unwrap();
        assert_eq!(b.verify(&t, now).unwrap(), ("ns".into(), "sa".into()));
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
