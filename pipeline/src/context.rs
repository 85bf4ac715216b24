//! Per-stream context: connection facts and typed state that filters share.
//!
//! Every stream has one [`Context`]. Filters of the same stream see the same context, so a
//! TLS filter can record the SNI it saw and a later `Connect` can route by it. `Demux` and
//! `Fork` give each child stream a fresh child context (a copy of the connection facts, empty
//! state, a link to the parent); `Pipe` and `Mux` share the parent's.
//!
//! The context is touched per stream or per message, never per data chunk, so its two small
//! mutexes are uncontended in practice.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// What is known about the TLS session of a stream, once a TLS filter has finished its
/// handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI).
    pub sni: Option<String>,
    /// The application protocol agreed with ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The verified peer identity (the first DNS or URI subject alternative name of the peer's
    /// certificate, or its subject common name), when the peer presented a certificate.
    pub peer_identity: Option<String>,
    /// The negotiated protocol version, for example `"TLSv1.3"`.
    pub version: Option<String>,
}

/// Connection facts: addresses and TLS state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// The address of the peer that opened the stream (after PROXY protocol, the original
    /// client's address).
    pub peer: Option<SocketAddr>,
    /// Our local address the stream arrived on.
    pub local: Option<SocketAddr>,
    /// The destination the client originally wanted (from `SO_ORIGINAL_DST` or PROXY
    /// protocol), when it differs from `local`.
    pub original_dst: Option<SocketAddr>,
    /// TLS facts, once a TLS filter has completed a handshake.
    pub tls: Option<Arc<TlsInfo>>,
    /// The index of the worker thread that serves the stream.
    pub worker: usize,
    /// True for a peer session of a UDP listener, whose messages are datagrams; false for
    /// TCP connections and for streams that filters make. Filters that keep per-connection
    /// timers (an idle timeout, say) can leave datagram sessions to the listener's own
    /// `udp_idle_timeout`.
    pub datagram: bool,
}

/// Typed state, one value per type.
#[derive(Default)]
struct TypeMap(HashMap<TypeId, Box<dyn Any + Send>>);

struct Inner {
    conn: Mutex<ConnInfo>,
    state: Mutex<TypeMap>,
    parent: Option<Context>,
}

/// The context of one stream. Cloning is cheap and shares the same context.
///
/// ```
/// use flowgate_pipeline::Context;
/// #[derive(Clone, Debug, PartialEq)]
/// struct Tenant(String);
/// let cx = Context::new();
/// cx.insert(Tenant("blue".into()));
/// assert_eq!(cx.get::<Tenant>(), Some(Tenant("blue".into())));
/// let child = cx.child();
/// assert_eq!(child.get::<Tenant>(), None);
/// assert_eq!(child.parent().and_then(|p| p.get::<Tenant>()), Some(Tenant("blue".into())));
/// ```
#[derive(Clone)]
pub struct Context(Arc<Inner>);

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("conn", &self.conn())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another filter panicked while holding it; the data is plain
    // values and still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Context {
    /// A context with no connection facts.
    pub fn new() -> Self {
        Self::with_conn(ConnInfo::default())
    }

    /// A context for a connection.
    pub fn with_conn(conn: ConnInfo) -> Self {
        Context(Arc::new(Inner {
            conn: Mutex::new(conn),
            state: Mutex::new(TypeMap::default()),
            parent: None,
        }))
    }

    /// A child context: a copy of the connection facts, empty state, and this one as parent.
    pub fn child(&self) -> Context {
        Context(Arc::new(Inner {
            conn: Mutex::new(self.conn()),
            state: Mutex::new(TypeMap::default()),
            parent: Some(self.clone()),
        }))
    }

    /// The parent context, for a child of `Demux` or `Fork`.
    pub fn parent(&self) -> Option<&Context> {
        self.0.parent.as_ref()
    }

    /// A copy of the connection facts.
    pub fn conn(&self) -> ConnInfo {
        lock(&self.0.conn).clone()
    }

    /// Changes the connection facts (a TLS filter records its handshake, PROXY protocol the
    /// real client address).
    pub fn update_conn<R>(&self, f: impl FnOnce(&mut ConnInfo) -> R) -> R {
        f(&mut lock(&self.0.conn))
    }

    /// Stores a value of type `T`, replacing any earlier one.
    pub fn insert<T: Any + Send>(&self, value: T) {
        lock(&self.0.state)
            .0
            .insert(TypeId::of::<T>(), Box::new(value));
    }

    /// A copy of the stored `T`.
    pub fn get<T: Any + Send + Clone>(&self) -> Option<T> {
        lock(&self.0.state)
            .0
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }

    /// Removes and returns the stored `T`.
    pub fn remove<T: Any + Send>(&self) -> Option<T> {
        lock(&self.0.state)
            .0
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
    }

    /// Runs `f` on the stored `T` (if any) in place.
    pub fn with<T: Any + Send, R>(&self, f: impl FnOnce(Option<&mut T>) -> R) -> R {
        let mut state = lock(&self.0.state);
        f(state
            .0
            .get_mut(&TypeId::of::<T>())
            .and_then(|b| b.downcast_mut::<T>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_updates_are_shared_and_children_copy() {
        let cx = Context::new();
        let peer: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        cx.update_conn(|c| c.peer = Some(peer));
        let other = cx.clone();
        assert_eq!(other.conn().peer, Some(peer));
        let child = cx.child();
        child.update_conn(|c| c.peer = None);
        assert_eq!(cx.conn().peer, Some(peer));
        assert_eq!(child.conn().peer, None);
    }

    #[test]
    fn typed_state_with_and_remove() {
        let cx = Context::new();
        cx.insert(5u32);
        cx.with::<u32, _>(|v| *v.unwrap() += 1);
        assert_eq!(cx.get::<u32>(), Some(6));
        assert_eq!(cx.remove::<u32>(), Some(6));
        assert_eq!(cx.get::<u32>(), None);
    }
}
