//! Controller replicas on one etcd: what they must agree on — the CA's roots, the bootstrap
//! token key and the leaf certificate of every service account — kept under a prefix of
//! keys, each value encrypted with a key file every replica holds.
//!
//! Records are written by compare-and-swap on the key's revision
//! ([`EtcdClient::put_if`]), never under a lock: the first replica to create the CA wins
//! and every other adopts it; when two replicas renew one leaf at once, one write wins and
//! the other replica takes the winner's leaf. So proxies connected to either replica are
//! served the same certificates (and so the same resource versions), and when a replica
//! stops, its proxies reconnect to another that already serves what they hold: nothing is
//! issued again.
//!
//! Keys under the prefix: `ca` (a [`CaRecord`] as JSON), `token-key` (32 bytes) and
//! `leaves/<namespace>/<service-account>` (a [`LeafRecord`] as JSON). Each value is
//! `fgs1` ‖ a 96-bit random nonce ‖ AES-256-GCM ciphertext and tag, with the etcd key as
//! associated data (a value moved to another key does not open). The AES key is the
//! SHA-256 of the key file's contents (at least 32 bytes, e.g. `head -c 32 /dev/urandom`).
//!
//! ```
//! use flowgate_mesh::replica::SealKey;
//!
//! let key = SealKey::from_secret(&[7u8; 32])?;
//! let sealed = key.seal(b"/flowgate/controller/ca", b"roots")?;
//! assert_eq!(key.open(b"/flowgate/controller/ca", &sealed)?, b"roots");
//! assert!(key.open(b"/flowgate/controller/token-key", &sealed).is_err(), "bound to its key");
//! assert!(SealKey::from_secret(&[8u8; 32])?.open(b"/flowgate/controller/ca", &sealed).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime};

use flowgate_lb::discovery::{
    DiscoveryError, EtcdClient, EtcdWatch, KeyValue, Swap, WatchBatch, WatchEvent,
};
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};

use crate::ca::{CaRecord, Issued, SpiffeId};
use crate::xds::compile::Leaf;

const MAGIC: &[u8] = b"fgs1";
/// The shortest key file accepted.
pub const MIN_KEY_FILE: usize = 32;
/// The largest record read (a CA record with every retired root is a few KiB).
const MAX_RECORD: usize = 256 * 1024;

/// Why a shared record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// etcd could not be reached or answered an error.
    #[error("etcd: {0}")]
    Etcd(#[from] DiscoveryError),
    /// The key file is missing, unreadable or too short.
    #[error("the shared key file {path}: {why}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A record does not open with this key (another mesh's, or a replica holding another
    /// key file), or does not parse.
    #[error("the shared record at `{key}`: {why}")]
    Record {
        /// Its etcd key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The system's random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// The AES-256-GCM key every replica holds.
pub struct SealKey {
    key: aead::LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key derived from `secret` (at least [`MIN_KEY_FILE`] bytes): its SHA-256.
    pub fn from_secret(secret: &[u8]) -> Result<SealKey, ReplicaError> {
        if secret.len() < MIN_KEY_FILE {
            return Err(ReplicaError::KeyFile {
                path: "(secret)".into(),
                why: format!("{} bytes; at least {MIN_KEY_FILE} needed", secret.len()),
            });
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, secret);
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, digest.as_ref())
            .map_err(|_| ReplicaError::Random)?;
        Ok(SealKey {
            key: aead::LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// The key derived from the contents of the file at `path`.
    pub fn from_file(path: &Path) -> Result<SealKey, ReplicaError> {
        let key_file = |why: String| ReplicaError::KeyFile {
            path: path.display().to_string(),
            why,
        };
        let secret = std::fs::read(path).map_err(|e| key_file(e.to_string()))?;
        if secret.len() < MIN_KEY_FILE {
            return Err(key_file(format!(
                "{} bytes; at least {MIN_KEY_FILE} random bytes needed (e.g. `head -c 32 /dev/urandom > FILE`)",
                secret.len()
            )));
        }
        Self::from_secret(&secret)
    }

    /// `plain` encrypted for the etcd key `at`.
    pub fn seal(&self, at: &[u8], plain: &[u8]) -> Result<Vec<u8>, ReplicaError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| ReplicaError::Random)?;
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(at),
                &mut body,
            )
            .map_err(|_| ReplicaError::Random)?;
        let mut out = Vec::with_capacity(MAGIC.len() + nonce.len() + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// What [`seal`](Self::seal) sealed for `at`, or an error if it was sealed with
    /// another key, for another etcd key, or altered.
    pub fn open(&self, at: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ReplicaError> {
        let bad = |why: &str| ReplicaError::Record {
            key: String::from_utf8_lossy(at).into_owned(),
            why: why.into(),
        };
        let rest = sealed
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("not a sealed record"))?;
        if rest.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Err(bad("too short"));
        }
        let (nonce, body) = rest.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("no nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(at), &mut body)
            .map_err(|_| {
                bad("does not open with this key file (another mesh's, or a replica holding another key)")
            })?;
        Ok(plain.to_vec())
    }
}

/// A leaf certificate as shared between replicas.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeafRecord {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM.
    pub key_pem: String,
    /// When it is to be issued again (UNIX seconds).
    pub renew_at: u64,
    /// The fingerprint of the root that signed it.
    pub root: String,
}

impl std::fmt::Debug for LeafRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafRecord")
            .field("renew_at", &self.renew_at)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl LeafRecord {
    /// The record of `leaf` (`None` for a leaf without its key: a signed CSR).
    pub fn of(leaf: &Leaf) -> Option<LeafRecord> {
        Some(LeafRecord {
            cert_pem: leaf.issued.cert_pem.clone(),
            key_pem: leaf.issued.key_pem.clone()?,
            renew_at: leaf
                .renew_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            root: leaf.root.clone(),
        })
    }

    /// The leaf it records.
    pub fn leaf(&self) -> Result<Leaf, crate::ca::CaError> {
        Ok(Leaf {
            issued: Issued::from_pem(&self.cert_pem, Some(self.key_pem.clone()))?,
            renew_at: SystemTime::UNIX_EPOCH + Duration::from_secs(self.renew_at),
            root: self.root.clone(),
        })
    }
}

/// A record and the revision it was last written at (the one to compare a replacement
/// against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<T> {
    /// The record.
    pub value: T,
    /// Its key's modification revision.
    pub mod_revision: i64,
}

/// A change another replica (or this one) made, as a watch saw it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Change {
    /// The CA's roots.
    Ca(Stored<CaRecord>),
    /// A service account's leaf (the identity is the one its certificate names).
    Leaf(SpiffeId, Stored<LeafRecord>),
}

/// The records replicas share, under one etcd prefix.
#[derive(Debug)]
pub struct SharedStore {
    client: EtcdClient,
    prefix: Vec<u8>,
    key: SealKey,
}

impl SharedStore {
    /// The records under `prefix` (such as `/flowgate/controller/`) of the etcd `client`
    /// talks to, sealed with `key`.
    pub fn new(client: EtcdClient, prefix: impl Into<Vec<u8>>, key: SealKey) -> SharedStore {
        SharedStore {
            client,
            prefix: prefix.into(),
            key,
        }
    }

    fn at(&self, name: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(name.as_bytes());
        k
    }

    fn leaf_at(&self, id: &SpiffeId) -> Vec<u8> {
        self.at(&format!("leaves/{}/{}", id.namespace, id.service_account))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        kv: &KeyValue,
    ) -> Result<Stored<T>, ReplicaError> {
        if kv.value.len() > MAX_RECORD {
            return Err(ReplicaError::Record {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                why: format!("{} bytes; at most {MAX_RECORD}", kv.value.len()),
            });
        }
        let plain = self.key.open(&kv.key, &kv.value)?;
        let value = serde_json::from_slice(&plain).map_err(|e| ReplicaError::Record {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            why: e.to_string(),
        })?;
        Ok(Stored {
            value,
            mod_revision: kv.mod_revision,
        })
    }

    /// Writes `value` at `at` if the key is still at `expected` (`0`: absent). `Ok(Ok(rev))`
    /// when written; `Ok(Err(current))` when another write came first (`None`: deleted).
    async fn swap<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        at: &[u8],
        value: &T,
        expected: i64,
    ) -> Result<Result<i64, Option<Stored<T>>>, ReplicaError> {
        let plain = serde_json::to_vec(value).map_err(|e| ReplicaError::Record {
            key: String::from_utf8_lossy(at).into_owned(),
            why: e.to_string(),
        })?;
        let sealed = self.key.seal(at, &plain)?;
        match self.client.put_if(at, &sealed, expected).await? {
            Swap::Done { mod_revision } => Ok(Ok(mod_revision)),
            Swap::Lost { current } => Ok(Err(current.map(|kv| self.decode(&kv)).transpose()?)),
        }
    }

    /// The record at `at`, or the one `make` gives, written if nothing is there yet (if
    /// another replica wrote one first, that one).
    async fn get_or_create<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        at: &[u8],
        make: impl FnOnce() -> Result<T, ReplicaError>,
    ) -> Result<Stored<T>, ReplicaError> {
        if let Some(kv) = self.client.get(at).await? {
            return self.decode(&kv);
        }
        let value = make()?;
        match self.swap(at, &value, 0).await? {
            Ok(mod_revision) => Ok(Stored {
                value,
                mod_revision,
            }),
            Err(Some(theirs)) => Ok(theirs),
            Err(None) => Err(ReplicaError::Record {
                key: String::from_utf8_lossy(at).into_owned(),
                why: "created and deleted at once by another writer".into(),
            }),
        }
    }

    /// The CA's record, or `make`'s written as the CA of every replica (unless another
    /// replica's came first: then that one).
    pub async fn ca_or_create(
        &self,
        make: impl FnOnce() -> Result<CaRecord, crate::ca::CaError>,
    ) -> Result<Stored<CaRecord>, ReplicaError> {
        let at = self.at("ca");
        self.get_or_create(&at, || {
            make().map_err(|e| ReplicaError::Record {
                key: String::from_utf8_lossy(&at).into_owned(),
                why: e.to_string(),
            })
        })
        .await
    }

    /// Replaces the CA's record if it is still at `expected`; else the current one.
    pub async fn put_ca(
        &self,
        ca: &CaRecord,
        expected: i64,
    ) -> Result<Result<i64, Option<Stored<CaRecord>>>, ReplicaError> {
        self.swap(&self.at("ca"), ca, expected).await
    }

    /// The token key, or `make`'s written as every replica's.
    pub async fn token_key_or_create(
        &self,
        make: impl FnOnce() -> [u8; 32],
    ) -> Result<[u8; 32], ReplicaError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct TokenKeyRecord {
            key: [u8; 32],
        }
        let at = self.at("token-key");
        let stored = self
            .get_or_create(&at, || Ok(TokenKeyRecord { key: make() }))
            .await?;
        Ok(stored.value.key)
    }

    /// Writes `id`'s leaf if its record is still at `expected` (`0`: none yet); else the
    /// record another replica wrote first.
    pub async fn put_leaf(
        &self,
        id: &SpiffeId,
        leaf: &LeafRecord,
        expected: i64,
    ) -> Result<Result<i64, Option<Stored<LeafRecord>>>, ReplicaError> {
        self.swap(&self.leaf_at(id), leaf, expected).await
    }

    /// Deletes `id`'s leaf if its record is still at `expected` (an account that left the
    /// mesh); `true` when it was deleted.
    pub async fn delete_leaf(&self, id: &SpiffeId, expected: i64) -> Result<bool, ReplicaError> {
        Ok(self.client.delete_if(&self.leaf_at(id), expected).await?)
    }

    /// Every shared record (the CA and the leaves) as changes, and the store's revision to
    /// [`watch`](Self::watch) from. A record that does not open is reported and skipped.
    pub async fn list(&self) -> Result<(i64, Vec<Change>), ReplicaError> {
        let (revision, kvs) = self.client.range_prefix_kv(&self.prefix).await?;
        let changes = kvs.iter().filter_map(|kv| self.change(kv)).collect();
        Ok((revision, changes))
    }

    /// What a written key means, if it is a record this store knows and it opens.
    fn change(&self, kv: &KeyValue) -> Option<Change> {
        let name = kv.key.strip_prefix(self.prefix.as_slice())?;
        let decoded = if name == b"ca" {
            self.decode(kv).map(Change::Ca)
        } else if name.starts_with(b"leaves/") {
            self.decode::<LeafRecord>(kv).and_then(|stored| {
                let leaf = stored.value.leaf().map_err(|e| ReplicaError::Record {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    why: e.to_string(),
                })?;
                if self.leaf_at(&leaf.issued.id) != kv.key {
                    return Err(ReplicaError::Record {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        why: format!("holds the leaf of {}", leaf.issued.id),
                    });
                }
                Ok(Change::Leaf(leaf.issued.id, stored))
            })
        } else {
            return None;
        };
        decoded.inspect_err(|e| tracing::error!("{e}")).ok()
    }

    /// Follows every change under the prefix from `revision` on.
    pub async fn watch(&self, revision: i64) -> Result<SharedWatch<'_>, ReplicaError> {
        Ok(SharedWatch {
            inner: self.client.watch_prefix(&self.prefix, revision).await?,
            store: self,
        })
    }
}

/// A watch on the shared records.
#[derive(Debug)]
pub struct SharedWatch<'a> {
    inner: EtcdWatch,
    store: &'a SharedStore,
}

impl SharedWatch<'_> {
    /// The next changes; `None` when the watch ended (etcd closed it, or it fell behind a
    /// compaction): [`list`](SharedStore::list) again and watch anew.
    pub async fn next(&mut self) -> Result<Option<Vec<Change>>, ReplicaError> {
        match self.inner.next().await? {
            Some(WatchBatch::Events { events, .. }) => Ok(Some(
                events
                    .into_iter()
                    .filter_map(|e| match e {
                        WatchEvent::Put {
                            key,
                            value,
                            mod_revision,
                        } => self.store.change(&KeyValue {
                            key,
                            value,
                            mod_revision,
                        }),
                        _ => None,
                    })
                    .collect(),
            )),
            Some(WatchBatch::Restart) | None => Ok(None),
        }
    }
}
