//! [`Drain`]: a signal to a connection that it should finish what it is doing and close —
//! its listener's configuration was replaced, or the server is shutting down. Protocol
//! filters that keep connections open between messages (an HTTP server with keep-alive)
//! read it from the [`Context`](crate::Context) and close once idle, so every client soon
//! reconnects to the configuration in force.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A drain signal shared by the connections of one listener configuration.
///
/// ```
/// use flowgate_pipeline::Drain;
/// let drain = Drain::default();
/// let waiting = drain.wait();
/// assert!(!drain.is_draining());
/// drain.start();
/// assert!(drain.is_draining());
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(waiting);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Drain(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    started: AtomicBool,
    notify: Notify,
}

impl Drain {
    /// Tells every connection holding this signal to drain.
    pub fn start(&self) {
        self.0.started.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }

    /// Resolves once draining has started (at once if it has).
    pub fn wait(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let me = self.0.clone();
        Box::pin(async move {
            loop {
                let notified = me.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if me.started.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        })
    }
}
