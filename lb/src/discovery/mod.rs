//! Discovery: where backend sets come from.
//!
//! A [`Discovery`] yields whole backend sets: the first call to [`Discovery::next`]
//! answers with the current set, later calls when it changed. [`follow`] applies each set
//! to a [`Balancer`]; the balancer keeps the state of addresses that stay.
//!
//! | source | watches by |
//! |---|---|
//! | [`StaticList`] | nothing: one set, forever |
//! | [`FileDiscovery`] | re-reading a file every `interval` (JSON array of backends, or one `host:port` / JSON object per line) |
//! | [`DnsDiscovery`] | re-resolving a name's A/AAAA records every `interval` (system resolver) |
//! | [`SrvDiscovery`] | re-resolving a name's SRV records (and their targets' A/AAAA) every `interval`, with a small bounded DNS client |
//! | [`EtcdDiscovery`] | an etcd v3 watch on a key prefix, over the JSON gateway |
//!
//! ```
//! use flowgate_lb::discovery::{Discovery, StaticList};
//! use flowgate_lb::Backend;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut d = StaticList::new(vec![Backend::new("127.0.0.1:80".parse().unwrap())]);
//! assert_eq!(d.next().await.unwrap().len(), 1);
//! # });
//! ```

mod dns;
mod etcd;
mod file;
mod srv;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::http1::HttpError;

pub use dns::DnsDiscovery;
pub use etcd::{EtcdClient, EtcdDiscovery, EtcdWatch, KeyValue, Swap, WatchBatch, WatchEvent};
pub use file::FileDiscovery;
pub use srv::SrvDiscovery;

/// The future [`Discovery::next`] returns.
pub type NextSet<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Backend>, DiscoveryError>> + Send + 'a>>;

/// A source of backend sets.
pub trait Discovery: Send {
    /// The current set on the first call; afterwards, the next set that differs.
    fn next(&mut self) -> NextSet<'_>;
}

impl<D: Discovery + ?Sized> Discovery for Box<D> {
    fn next(&mut self) -> NextSet<'_> {
        (**self).next()
    }
}

/// Why a discovery source failed (it is retried).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Reading a file or resolving a name failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A file line that is neither `host:port` nor a backend object.
    #[error("line {line}: not a backend")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// A source larger than allowed.
    #[error("source larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Talking to etcd failed.
    #[error("etcd: {0}")]
    Http(#[from] HttpError),
    /// etcd answered with an error status.
    #[error("etcd answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// etcd's JSON was not what the v3 API documents.
    #[error("etcd json: {0}")]
    Json(#[from] serde_json::Error),
    /// A key or value was not valid base64.
    #[error("etcd base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// Applies every set from `source` to `balancer`, forever; failures are logged and
/// retried after `retry`.
pub async fn follow(mut source: impl Discovery, balancer: Balancer, retry: Duration) {
    loop {
        match source.next().await {
            Ok(set) => {
                tracing::debug!(backends = set.len(), "discovery update");
                balancer.set_backends(set);
            }
            Err(e) => {
                tracing::warn!(error = %e, "discovery failed; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// A fixed list.
#[derive(Debug, Clone)]
pub struct StaticList {
    backends: Option<Vec<Backend>>,
}

impl StaticList {
    /// The list to serve.
    pub fn new(backends: Vec<Backend>) -> Self {
        Self {
            backends: Some(backends),
        }
    }
}

impl Discovery for StaticList {
    fn next(&mut self) -> NextSet<'_> {
        let first = self.backends.take();
        Box::pin(async move {
            match first {
                Some(b) => Ok(b),
                None => std::future::pending().await,
            }
        })
    }
}

/// Polls `fetch` every `interval` until it returns a set different from `last`.
pub(crate) async fn poll_changes<F, Fut>(
    last: &mut Option<Vec<Backend>>,
    interval: Duration,
    mut fetch: F,
) -> Result<Vec<Backend>, DiscoveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<Backend>, DiscoveryError>>,
{
    if last.is_some() {
        tokio::time::sleep(interval).await;
    }
    loop {
        let set = fetch().await?;
        if last.as_ref() != Some(&set) {
            *last = Some(set.clone());
            return Ok(set);
        }
        tokio::time::sleep(interval).await;
    }
}
