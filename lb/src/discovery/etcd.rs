//! etcd v3 through its JSON gateway (`/v3/kv/*`, `/v3/watch`) over plain HTTP/1.1.
//!
//! Keys and values travel base64-encoded; 64-bit numbers arrive as strings. A watch is one
//! long response of newline-delimited JSON objects, chunked. Everything read is bounded:
//! 4 MiB per unary response, 1 MiB per watch message.
//!
//! Each key under the prefix is one backend; its value is `host:port` or a backend object
//! (`{"address": "10.0.0.1:80", "weight": 2, "metadata": {"zone": "a"}}`). Values that parse
//! as neither are skipped with a warning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::{Discovery, DiscoveryError, NextSet};
use crate::backend::Backend;
use crate::http1::{self, Body, HttpError};

const MAX_UNARY: usize = 4 * 1024 * 1024;
const MAX_EVENT: usize = 1024 * 1024;

/// A tiny etcd v3 client: range, put and delete by the JSON gateway.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    addr: SocketAddr,
    timeout: Duration,
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// A transaction's comparison: the key (base64) was last changed at `mod_revision` (`0`:
/// it does not exist).
fn same_revision(key_b64: &str, mod_revision: i64) -> Value {
    json!({
        "key": key_b64,
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": mod_revision.to_string(),
    })
}

fn as_i64(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64_field(v: &Value, field: &str) -> Result<Vec<u8>, DiscoveryError> {
    match v.get(field).and_then(Value::as_str) {
        Some(s) => Ok(B64.decode(s)?),
        None => Ok(Vec::new()),
    }
}

impl EtcdClient {
    /// A client for the etcd listening at `addr` (its client URL), `timeout` per call.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout }
    }

    async fn open(&self, path: &str, body: &Value) -> Result<Body<TcpStream>, DiscoveryError> {
        let payload = serde_json::to_vec(body)?;
        let io = http1::connect(self.addr, self.timeout).await?;
        let host = self.addr.to_string();
        let body = tokio::time::timeout(
            self.timeout,
            http1::send(io, "POST", &host, path, Some(&payload)),
        )
        .await
        .map_err(|_| HttpError::Timeout(self.timeout))??;
        if body.status() != 200 {
            return Err(DiscoveryError::Status {
                status: body.status(),
            });
        }
        Ok(body)
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, DiscoveryError> {
        let mut resp = self.open(path, &body).await?;
        let bytes = tokio::time::timeout(self.timeout, resp.read_all(MAX_UNARY))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))??;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DiscoveryError> {
        self.call(
            "/v3/kv/put",
            json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )
        .await
        .map(drop)
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<(), DiscoveryError> {
        self.call("/v3/kv/deleterange", json!({"key": B64.encode(key)}))
            .await
            .map(drop)
    }

    /// Deletes `key` only if it was last changed at `mod_revision`, in one transaction;
    /// `true` when it was deleted.
    pub async fn delete_if(&self, key: &[u8], mod_revision: i64) -> Result<bool, DiscoveryError> {
        let k = B64.encode(key);
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [same_revision(&k, mod_revision)],
                    "success": [{"request_delete_range": {"key": k}}],
                }),
            )
            .await?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    /// The value of `key` and the revision it was last changed at, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, DiscoveryError> {
        let v = self
            .call("/v3/kv/range", json!({"key": B64.encode(key)}))
            .await?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(kv) => KeyValue::parse(kv).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` only if it was last changed at `mod_revision` (`0`: only if it
    /// does not exist), in one transaction: how replicas share a record without a lock.
    pub async fn put_if(
        &self,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
    ) -> Result<Swap, DiscoveryError> {
        let k = B64.encode(key);
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [same_revision(&k, mod_revision)],
                    "success": [{"request_put": {"key": k, "value": B64.encode(value)}}],
                    "failure": [{"request_range": {"key": k}}],
                }),
            )
            .await?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(Swap::Done {
                mod_revision: as_i64(&v["header"]["revision"]),
            });
        }
        let kv = v["responses"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["response_range"]["kvs"].as_array())
            .and_then(|kvs| kvs.first());
        Ok(Swap::Lost {
            current: kv.map(KeyValue::parse).transpose()?,
        })
    }

    /// Every key under `prefix` with its value and revisions, and the store's revision.
    pub async fn range_prefix_kv(
        &self,
        prefix: &[u8],
    ) -> Result<(i64, Vec<KeyValue>), DiscoveryError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix))}),
            )
            .await?;
        let revision = as_i64(&v["header"]["revision"]);
        let kvs = v["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(KeyValue::parse)
            .collect::<Result<_, _>>()?;
        Ok((revision, kvs))
    }

    /// Every key under `prefix` with its value, and the store's revision.
    pub async fn range_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<(i64, Vec<(Vec<u8>, Vec<u8>)>), DiscoveryError> {
        let (revision, kvs) = self.range_prefix_kv(prefix).await?;
        Ok((
            revision,
            kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        ))
    }
}

/// One key, its value and the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
    /// The store's revision when it was last changed.
    pub mod_revision: i64,
}

impl KeyValue {
    fn parse(kv: &Value) -> Result<KeyValue, DiscoveryError> {
        Ok(KeyValue {
            key: b64_field(kv, "key")?,
            value: b64_field(kv, "value")?,
            mod_revision: as_i64(&kv["mod_revision"]),
        })
    }
}

/// What [`EtcdClient::put_if`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The value was written, at this revision.
    Done {
        /// The key's new modification revision.
        mod_revision: i64,
    },
    /// The key had changed since: here is what it holds now (`None`: it was deleted).
    Lost {
        /// The key's current value.
        current: Option<KeyValue>,
    },
}

/// What one watch message said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Keys changed, as of `revision` (`0` when the message carried none).
    Events {
        /// The store's revision after these events.
        revision: i64,
        /// Each change in order.
        events: Vec<WatchEvent>,
    },
    /// The watch was cancelled or compacted past its start: read the range again.
    Restart,
}

/// One key's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Set to a value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
        /// The store's revision of this change.
        mod_revision: i64,
    },
    /// Deleted.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl WatchBatch {
    fn parse(msg: &Value) -> Result<WatchBatch, DiscoveryError> {
        let result = &msg["result"];
        if result["canceled"].as_bool() == Some(true) || as_i64(&result["compact_revision"]) > 0 {
            return Ok(WatchBatch::Restart);
        }
        let mut events = Vec::new();
        for ev in result["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let kv = &ev["kv"];
            let key = b64_field(kv, "key")?;
            events.push(if ev["type"].as_str() == Some("DELETE") {
                WatchEvent::Delete { key }
            } else {
                WatchEvent::Put {
                    key,
                    value: b64_field(kv, "value")?,
                    mod_revision: as_i64(&kv["mod_revision"]),
                }
            });
        }
        Ok(WatchBatch::Events {
            revision: as_i64(&result["header"]["revision"]),
            events,
        })
    }
}

/// An open watch on a prefix: lines of JSON from a chunked response, 1 MiB each at most.
pub struct EtcdWatch {
    body: Body<TcpStream>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdWatch").finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// Watches every key under `prefix` from revision `start` on (the revision after a
    /// [`range_prefix`](Self::range_prefix) sees every later change).
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start: i64,
    ) -> Result<EtcdWatch, DiscoveryError> {
        let req = json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start.to_string(),
        }});
        let body = self.open("/v3/watch", &req).await?;
        Ok(EtcdWatch {
            body,
            buf: Vec::new(),
        })
    }
}

impl EtcdWatch {
    /// The next message: changes, or a demand to start over; `None` when etcd closed the
    /// watch. (The first message, the watch's creation, is a batch without events.)
    pub async fn next(&mut self) -> Result<Option<WatchBatch>, DiscoveryError> {
        match self.next_message().await? {
            Some(msg) => WatchBatch::parse(&msg).map(Some),
            None => Ok(None),
        }
    }

    async fn next_message(&mut self) -> Result<Option<Value>, DiscoveryError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            match self.body.next_piece(MAX_EVENT).await? {
                Some(piece) => {
                    self.buf.extend_from_slice(&piece);
                    if self.buf.len() > MAX_EVENT {
                        return Err(HttpError::TooLarge { limit: MAX_EVENT }.into());
                    }
                }
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    let line = std::mem::take(&mut self.buf);
                    return Ok(Some(serde_json::from_slice(&line)?));
                }
            }
        }
    }
}

/// Backends from the keys under an etcd prefix, following a watch.
pub struct EtcdDiscovery {
    client: EtcdClient,
    prefix: Vec<u8>,
    kvs: BTreeMap<Vec<u8>, Backend>,
    revision: Option<i64>,
    watch: Option<EtcdWatch>,
}

impl EtcdDiscovery {
    /// Watches the keys under `prefix`.
    pub fn new(client: EtcdClient, prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            kvs: BTreeMap::new(),
            revision: None,
            watch: None,
        }
    }

    fn set(&self) -> Vec<Backend> {
        self.kvs.values().cloned().collect()
    }

    fn put_kv(&mut self, key: Vec<u8>, value: &[u8]) {
        match std::str::from_utf8(value).ok().and_then(Backend::parse) {
            Some(b) => {
                self.kvs.insert(key, b);
            }
            None => {
                tracing::warn!(key = %String::from_utf8_lossy(&key), "etcd value is not a backend");
                self.kvs.remove(&key);
            }
        }
    }

    async fn resync(&mut self) -> Result<(), DiscoveryError> {
        let (rev, kvs) = self.client.range_prefix(&self.prefix).await?;
        self.kvs.clear();
        for (k, v) in kvs {
            self.put_kv(k, &v);
        }
        self.revision = Some(rev);
        Ok(())
    }

    /// Applies one watch message; true when the set may have changed.
    fn apply(&mut self, batch: WatchBatch) -> bool {
        let (revision, events) = match batch {
            WatchBatch::Restart => {
                // Compacted past our revision: start over from a fresh range.
                self.revision = None;
                self.watch = None;
                return false;
            }
            WatchBatch::Events { revision, events } => (revision, events),
        };
        let mut changed = false;
        for ev in events {
            match ev {
                WatchEvent::Delete { key } => changed |= self.kvs.remove(&key).is_some(),
                WatchEvent::Put { key, value, .. } => {
                    self.put_kv(key, &value);
                    changed = true;
                }
            }
        }
        if revision > 0 {
            self.revision = Some(revision);
        }
        changed
    }

    async fn step(&mut self) -> Result<Option<Vec<Backend>>, DiscoveryError> {
        let Some(rev) = self.revision else {
            self.resync().await?;
            return Ok(Some(self.set()));
        };
        let watch = match &mut self.watch {
            Some(w) => w,
            None => {
                let w = self.client.watch_prefix(&self.prefix, rev + 1).await?;
                self.watch.insert(w)
            }
        };
        match watch.next().await {
            Ok(Some(batch)) => Ok(self.apply(batch).then(|| self.set())),
            Ok(None) => {
                self.watch = None;
                Ok(None)
            }
            Err(e) => {
                self.watch = None;
                self.revision = None;
                Err(e)
            }
        }
    }
}

impl Discovery for EtcdDiscovery {
    fn next(&mut self) -> NextSet<'_> {
        Box::pin(async move {
            loop {
                if let Some(set) = self.step().await? {
                    return Ok(set);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/svc/"), b"/svc0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn applies_watch_events() {
        let mut d = EtcdDiscovery::new(
            EtcdClient::new(([127, 0, 0, 1], 2379).into(), Duration::from_secs(1)),
            "/s/",
        );
        let put = json!({"result": {"header": {"revision": "7"}, "events": [
            {"kv": {"key": B64.encode("/s/a"), "value": B64.encode("127.0.0.1:80")}},
            {"kv": {"key": B64.encode("/s/b"), "value": B64.encode("{\"address\":\"127.0.0.1:81\",\"weight\":2}")}}
        ]}});
        assert!(d.apply(WatchBatch::parse(&put).unwrap()));
        assert_eq!(d.set().len(), 2);
        assert_eq!(d.revision, Some(7));
        let del = json!({"result": {"header": {"revision": "8"}, "events": [
            {"type": "DELETE", "kv": {"key": B64.encode("/s/a")}}
        ]}});
        assert!(d.apply(WatchBatch::parse(&del).unwrap()));
        assert_eq!(d.set()[0].weight, 2);
        let compacted = json!({"result": {"canceled": true, "compact_revision": "5"}});
        assert!(!d.apply(WatchBatch::parse(&compacted).unwrap()));
        assert_eq!(d.revision, None);
    }
}
