//! Client authentication: user names and passwords from a file (or inline), and the TLS
//! client-certificate identity.
//!
//! A users file has one `name:secret` per line; blank lines and lines starting with `#`
//! are skipped. The secret is one of
//!
//! - `plain:PASSWORD` or just `PASSWORD` (for tests and demos);
//! - `sha256:HEX` — the SHA-256 of the password, hex;
//! - `pbkdf2-sha256:ITERATIONS:SALT_HEX:HASH_HEX` — PBKDF2-HMAC-SHA256 (the one to use).
//!
//! Comparisons take the same time whatever the password.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The most users a file may hold, and the longest line (bounds a mistaken path).
const MAX_USERS: usize = 100_000;
const MAX_FILE: u64 = 16 << 20;

/// How clients prove who they are (`auth:` of `proxy-mqtt`).
///
/// ```yaml
/// auth:
///   users_file: /etc/flowgate/mqtt-users   # name:secret per line
///   users:                                 # or inline (here: SHA-256 of "secret")
///     alice: "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
///   allow_anonymous: false                 # default: true only when no users are given
///   tls_identity: true                     # a verified client certificate names the user
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of `name:secret` lines, read when the configuration is built (and again on
    /// every reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// Users given inline, name → secret (same forms as the file).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub users: HashMap<String, String>,
    /// Whether a CONNECT without a user name is accepted. Default: true when no users are
    /// configured, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Take the user name from the TLS client certificate's identity (set by
    /// `accept-tls` with client authentication); such a client needs no password.
    #[serde(default)]
    pub tls_identity: bool,
}

/// Why a CONNECT is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user or wrong password (3.1.1 code 4, MQTT 5 0x86).
    BadCredentials,
    /// No credentials where they are required, or a name the proxy cannot use (3.1.1
    /// code 5, MQTT 5 0x87).
    NotAuthorized,
}

/// A stored secret.
#[derive(Clone, Debug)]
enum Secret {
    Sha256([u8; 32]),
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The compiled form of [`AuthConfig`].
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    users: HashMap<String, Secret>,
    allow_anonymous: bool,
    tls_identity: bool,
}

impl Authenticator {
    /// Reads the users file (if any) and checks every secret.
    pub fn new(cfg: &AuthConfig) -> Result<Self, String> {
        let mut users = HashMap::new();
        if let Some(path) = &cfg.users_file {
            let text = read_bounded(path)?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, secret) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{}:{}: expected name:secret", path.display(), n + 1))?;
                let secret = parse_secret(secret)
                    .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
                users.insert(name.to_owned(), secret);
                if users.len() > MAX_USERS {
                    return Err(format!("{}: more than {MAX_USERS} users", path.display()));
                }
            }
        }
        for (name, secret) in &cfg.users {
            let s = parse_secret(secret).map_err(|e| format!("users.{name}: {e}"))?;
            users.insert(name.clone(), s);
        }
        let allow_anonymous = cfg.allow_anonymous.unwrap_or(users.is_empty());
        Ok(Authenticator {
            users,
            allow_anonymous,
            tls_identity: cfg.tls_identity,
        })
    }

    /// Decides on a CONNECT: the user name in force, or why not. `tls_identity` is the
    /// verified client-certificate identity of the connection, if any.
    pub fn check(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        tls_identity: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        if self.tls_identity
            && let Some(id) = tls_identity
        {
            return Ok(Some(id.to_owned()));
        }
        let Some(name) = username else {
            return if self.allow_anonymous {
                Ok(None)
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        if self.users.is_empty() {
            // No user database: names are taken as given (for ACLs and prefixes).
            return Ok(Some(name.to_owned()));
        }
        let password = password.unwrap_or_default();
        match self.users.get(name) {
            Some(secret) if secret.verify(password) => Ok(Some(name.to_owned())),
            Some(_) => Err(Refusal::BadCredentials),
            None => {
                // Spend the same time as for a known user, so names cannot be probed.
                let _ = Secret::Sha256([0; 32]).verify(password);
                Err(Refusal::BadCredentials)
            }
        }
    }

    /// How many users are known.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

impl Secret {
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Secret::Sha256(want) => {
                let got = ring::digest::digest(&ring::digest::SHA256, password);
                same(got.as_ref(), want)
            }
            Secret::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
        }
    }
}

/// Constant-time equality of two byte strings of the same length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if let Some(hex) = s.strip_prefix("sha256:") {
        let bytes = unhex(hex)?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "sha256: expected 64 hex digits".to_owned())?;
        return Ok(Secret::Sha256(arr));
    }
    if let Some(rest) = s.strip_prefix("pbkdf2-sha256:") {
        let mut it = rest.splitn(3, ':');
        let (Some(iter), Some(salt), Some(hash)) = (it.next(), it.next(), it.next()) else {
            return Err("pbkdf2-sha256: expected ITERATIONS:SALT_HEX:HASH_HEX".into());
        };
        let iterations = iter
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or("pbkdf2-sha256: iterations must be a positive number")?;
        let hash = unhex(hash)?;
        if hash.is_empty() {
            return Err("pbkdf2-sha256: empty hash".into());
        }
        return Ok(Secret::Pbkdf2 {
            iterations,
            salt: unhex(salt)?,
            hash,
        });
    }
    let plain = s.strip_prefix("plain:").unwrap_or(s);
    let d = ring::digest::digest(&ring::digest::SHA256, plain.as_bytes());
    let mut arr = [0u8; 32];
    arr.copy_from_slice(d.as_ref());
    Ok(Secret::Sha256(arr))
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad hex digits at {i}"))
        })
        .collect()
}

fn read_bounded(path: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn auth(users: &[(&str, String)], anon: Option<bool>) -> Authenticator {
        Authenticator::new(&AuthConfig {
            users: users
                .iter()
                .map(|(u, s)| (u.to_string(), s.clone()))
                .collect(),
            allow_anonymous: anon,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn every_secret_form_verifies() {
        let sha = hex(ring::digest::digest(&ring::digest::SHA256, b"s3cret").as_ref());
        let salt = b"pepper";
        let mut out = [0u8; 32];
        let it = NonZeroU32::new(1000).unwrap();
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            it,
            salt,
            b"s3cret",
            &mut out,
        );
        let a = auth(
            &[
                ("p", "s3cret".into()),
                ("q", "plain:s3cret".into()),
                ("s", format!("sha256:{sha}")),
                (
                    "k",
                    format!("pbkdf2-sha256:1000:{}:{}", hex(salt), hex(&out)),
                ),
            ],
            None,
        );
        for u in ["p", "q", "s", "k"] {
            assert_eq!(
                a.check(Some(u), Some(b"s3cret"), None),
                Ok(Some(u.into())),
                "{u}"
            );
            assert_eq!(
                a.check(Some(u), Some(b"wrong"), None),
                Err(Refusal::BadCredentials),
                "{u}"
            );
        }
        assert_eq!(
            a.check(Some("nobody"), Some(b"s3cret"), None),
            Err(Refusal::BadCredentials)
        );
        assert_eq!(a.check(Some("p"), None, None), Err(Refusal::BadCredentials));
    }

    #[test]
    fn anonymous_and_tls_identity() {
        let a = auth(&[("p", "x".into())], None);
        assert_eq!(a.check(None, None, None), Err(Refusal::NotAuthorized));
        let open = auth(&[], None);
        assert_eq!(open.check(None, None, None), Ok(None));
        assert_eq!(open.check(Some("any"), None, None), Ok(Some("any".into())));
        let mut tls = auth(&[("p", "x".into())], Some(false));
        tls.tls_identity = true;
        assert_eq!(
            tls.check(None, None, Some("device-7")),
            Ok(Some("device-7".into()))
        );
        assert_eq!(tls.check(None, None, None), Err(Refusal::NotAuthorized));
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("fg-mqtt-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users");
        std::fs::write(&f, "# users\nalice:plain:a\n\nbob:sha256:zz\n").unwrap();
        let cfg = AuthConfig {
            users_file: Some(f.clone()),
            ..AuthConfig::default()
        };
        let err = Authenticator::new(&cfg).unwrap_err();
        assert!(err.ends_with(":4: bad hex digits at 0"), "{err}");
        std::fs::write(&f, "alice:plain:a\nbob:b\n").unwrap();
        let a = Authenticator::new(&cfg).unwrap();
        assert_eq!(a.users(), 2);
        assert_eq!(
            a.check(Some("bob"), Some(b"b"), None),
            Ok(Some("bob".into()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
