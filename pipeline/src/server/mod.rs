//! Listeners and workers: running pipelines on sockets.
//!
//! ```text
//!               Server::apply(listeners)            (binds in the caller: errors come back)
//!                        │ std sockets, one per worker per listener (SO_REUSEPORT)
//!        ┌───────────────┼───────────────┐
//!     worker 0        worker 1   …    worker N-1     (a thread with a current-thread runtime)
//!   accept loop     accept loop                      (one per listener)
//!        │ spawn per connection: load the listener's current pipeline (ArcSwap)
//!   serve(conn) — socket → pipeline → socket, in one task
//! ```
//!
//! Reload is [`Server::apply`] with new pipelines: listeners with the same address keep their
//! sockets and swap the pipeline, so new connections get the new one while live connections
//! finish on the old one; new addresses are bound; missing ones stop accepting and drain.
//! [`Server::shutdown`] stops accepting everywhere and waits for live connections, up to a
//! deadline, then closes what is left.

mod mmsg;
mod tcp;
mod udp;

pub use tcp::{READ_SIZE, TcpSource, WriteGather, conn_info, io_error, serve as serve_tcp};
pub use udp::Datagram;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::sync::{Notify, mpsc};

use crate::Pipeline;

/// Where a connection accepted on a `transparent` listener was going, given its peer
/// address: for interception that leaves no NAT entry to read `SO_ORIGINAL_DST` from, such
/// as eBPF socket steering (flowgate-ebpf's `SockRedirect`). Asked first; `None` falls back
/// to `SO_ORIGINAL_DST`. See [`ServerBuilder::original_dst`].
pub type OriginalDst = Arc<dyn Fn(SocketAddr) -> Option<SocketAddr> + Send + Sync>;

/// The transport of a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP: one stream per connection.
    #[default]
    Tcp,
    /// UDP: one stream per peer address, one message per datagram.
    Udp,
}

/// How a listener listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address to bind, such as `0.0.0.0:8080` or `[::1]:53`.
    pub listen: SocketAddr,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Live connections (UDP: peer sessions) of this listener, over all workers, beyond
    /// which new ones are refused: a TCP connection is accepted and closed at once, a
    /// datagram from a new peer is dropped. Other listeners are not affected. Default
    /// 100 000, but at most half the process's open-file limit (`ulimit -n`), so a flood of
    /// connections cannot take the descriptors that upstream sockets and the other
    /// listeners need.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TCP_NODELAY on accepted sockets. Default true.
    #[serde(default = "crate::registry::default_true")]
    pub nodelay: bool,
    /// Read the original destination of redirected connections (`SO_ORIGINAL_DST`, or the
    /// server's [`OriginalDst`] lookup). Default false.
    #[serde(default)]
    pub transparent: bool,
    /// The listen backlog. Default 1024.
    #[serde(default = "default_backlog")]
    pub backlog: i32,
    /// A UDP peer's stream ends after this long without a datagram. Default 60 s.
    #[serde(default = "default_udp_idle", with = "crate::serde_duration")]
    pub udp_idle_timeout: Duration,
}

fn default_max_connections() -> usize {
    const DEFAULT: usize = 100_000;
    match open_file_limit() {
        Some(n) => DEFAULT.min((n / 2).max(1)),
        None => DEFAULT,
    }
}

/// The soft limit on open files of this process, when there is one.
fn open_file_limit() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{Resource, getrlimit};
        let (soft, _hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft == nix::sys::resource::RLIM_INFINITY {
            return None;
        }
        usize::try_from(soft).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}
fn default_backlog() -> i32 {
    1024
}
fn default_udp_idle() -> Duration {
    Duration::from_secs(60)
}

impl ListenerConfig {
    /// A TCP listener on `listen` with default settings.
    pub fn tcp(listen: SocketAddr) -> Self {
        ListenerConfig {
            listen,
            protocol: Protocol::Tcp,
            max_connections: default_max_connections(),
            nodelay: true,
            transparent: false,
            backlog: default_backlog(),
            udp_idle_timeout: default_udp_idle(),
        }
    }

    /// A UDP listener on `listen` with default settings.
    pub fn udp(listen: SocketAddr) -> Self {
        ListenerConfig {
            protocol: Protocol::Udp,
            ..Self::tcp(listen)
        }
    }
}

/// Why the server could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({protocol:?}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The transport.
        protocol: Protocol,
        /// The cause.
        source: io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Spawn(io::Error),
    /// Two listeners of one `apply` have the same address and protocol.
    #[error(
        "two listeners on {addr} ({protocol:?}): listeners are identified by address and protocol"
    )]
    Duplicate {
        /// The address.
        addr: SocketAddr,
        /// The transport.
        protocol: Protocol,
    },
}

/// A listener shared by all workers: its settings, its current pipeline and its live
/// connections.
pub(crate) struct Listener {
    config: ListenerConfig,
    pipeline: ArcSwap<Pipeline>,
    /// The drain signal of the connections running `pipeline`: started when it is replaced.
    drain: ArcSwap<crate::Drain>,
    conns: Slots,
    original_dst: Option<OriginalDst>,
}

/// Live connections of one listener over all workers, bounded by its `max_connections`.
#[derive(Clone, Default)]
pub(crate) struct Slots(Arc<AtomicUsize>);

/// One taken slot of [`Slots`]; dropping it gives the slot back.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slots {
    /// Takes a slot unless `max` are taken.
    fn take(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type ListenerKey = (SocketAddr, Protocol);

enum Command {
    Start {
        key: ListenerKey,
        listener: Arc<Listener>,
        socket: Socket,
    },
    Stop {
        key: ListenerKey,
    },
    Shutdown,
}

/// Counts a worker's live connections and wakes the drainer when none are left.
#[derive(Clone, Default)]
pub(crate) struct Live(Arc<(AtomicUsize, Notify)>);

pub(crate) struct LiveGuard(Live);

impl Live {
    fn enter(&self) -> LiveGuard {
        self.0.0.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.clone())
    }
    fn count(&self) -> usize {
        self.0.0.load(Ordering::Acquire)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<Command>,
    live: Live,
    thread: Option<JoinHandle<()>>,
}

/// Settings of a [`Server`].
#[derive(Clone)]
pub struct ServerBuilder {
    workers: usize,
    drain_timeout: Duration,
    original_dst: Option<OriginalDst>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("workers", &self.workers)
            .field("drain_timeout", &self.drain_timeout)
            .field("original_dst", &self.original_dst.is_some())
            .finish()
    }
}

impl ServerBuilder {
    /// The number of worker threads (default: the number of CPUs).
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// How long [`Server::shutdown`] waits for live connections. Default 30 s.
    #[must_use]
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// How `transparent` listeners learn where a connection was going when no NAT entry
    /// says it (asked before `SO_ORIGINAL_DST`). Default: `SO_ORIGINAL_DST` alone.
    #[must_use]
    pub fn original_dst(mut self, lookup: OriginalDst) -> Self {
        self.original_dst = Some(lookup);
        self
    }

    /// Starts the worker threads (with no listeners yet).
    pub fn start(self) -> Result<Server, ServerError> {
        let mut workers = Vec::with_capacity(self.workers);
        for index in 0..self.workers {
            let (tx, rx) = mpsc::unbounded_channel();
            let live = Live::default();
            let l = live.clone();
            let drain = self.drain_timeout;
            let thread = std::thread::Builder::new()
                .name(format!("flowgate-worker-{index}"))
                .spawn(move || worker_main(index, rx, l, drain))
                .map_err(ServerError::Spawn)?;
            workers.push(Worker {
                tx,
                live,
                thread: Some(thread),
            });
        }
        Ok(Server {
            workers,
            listeners: Mutex::new(HashMap::new()),
            bound: Mutex::new(HashMap::new()),
            original_dst: self.original_dst,
        })
    }
}

/// A set of worker threads running listeners. See the [module documentation](self).
pub struct Server {
    workers: Vec<Worker>,
    listeners: Mutex<HashMap<ListenerKey, Arc<Listener>>>,
    bound: Mutex<HashMap<ListenerKey, Bound>>,
    original_dst: Option<OriginalDst>,
}

/// A running listener's bound address, and a duplicate of one of its sockets (for
/// [`Server::listener_socket`]).
struct Bound {
    addr: SocketAddr,
    socket: Option<Socket>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Settings with defaults: one worker per CPU, 30 s drain timeout.
    pub fn builder() -> ServerBuilder {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ServerBuilder {
            workers: cpus,
            drain_timeout: Duration::from_secs(30),
            original_dst: None,
        }
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Makes the running listeners match `listeners`: same address → swap the pipeline (and
    /// keep the socket; the connections on the old one are told to drain — see
    /// [`Drain`](crate::Drain) — so keep-alive clients come over to the new one); new
    /// address → bind on every worker; gone → stop accepting (live connections finish).
    /// Nothing changes if any new address fails to bind.
    pub fn apply(
        &self,
        listeners: Vec<(ListenerConfig, Arc<Pipeline>)>,
    ) -> Result<(), ServerError> {
        self.apply_with(listeners, &|_| true)
    }

    /// [`Server::apply`], draining the connections of a replaced pipeline only where
    /// `drain(address)` says so: elsewhere they live on with the pipeline they started with
    /// (for a new configuration whose connection-level part is unchanged, whose per-request
    /// pipelines the old one reaches through [`SubPipeline::rebind`](crate::SubPipeline::rebind)).
    pub fn apply_with(
        &self,
        listeners: Vec<(ListenerConfig, Arc<Pipeline>)>,
        drain: &dyn Fn(SocketAddr) -> bool,
    ) -> Result<(), ServerError> {
        let mut current = lock(&self.listeners);
        let mut bound = lock(&self.bound);
        let wanted: HashMap<ListenerKey, (ListenerConfig, Arc<Pipeline>)> = listeners
            .into_iter()
            .map(|(c, p)| ((c.listen, c.protocol), (c, p)))
            .collect();
        // Bind everything new first, so a failure leaves the server as it was.
        let mut fresh = Vec::new();
        for (key, (config, _)) in &wanted {
            if !current.contains_key(key) {
                let sockets = bind_all(config, self.workers.len())?;
                fresh.push((*key, sockets));
            }
        }
        for key in current.keys().copied().collect::<Vec<_>>() {
            if !wanted.contains_key(&key) {
                current.remove(&key);
                bound.remove(&key);
                for w in &self.workers {
                    let _ = w.tx.send(Command::Stop { key });
                }
            }
        }
        for (key, (config, pipeline)) in wanted {
            if let Some(l) = current.get(&key) {
                l.pipeline.store(pipeline);
                // Connections on the replaced pipeline close once idle: their clients come
                // back to this one.
                if drain(key.0) {
                    l.drain.swap(Arc::new(crate::Drain::default())).start();
                }
            } else {
                current.insert(
                    key,
                    Arc::new(Listener {
                        config,
                        pipeline: ArcSwap::new(pipeline),
                        drain: ArcSwap::from_pointee(crate::Drain::default()),
                        conns: Slots::default(),
                        original_dst: self.original_dst.clone(),
                    }),
                );
            }
        }
        for (key, (actual, sockets)) in fresh {
            let Some(listener) = current.get(&key) else {
                continue;
            };
            let socket = match key.1 {
                Protocol::Tcp => sockets.first().and_then(|s| s.try_clone().ok()),
                Protocol::Udp => None,
            };
            bound.insert(
                key,
                Bound {
                    addr: actual,
                    socket,
                },
            );
            for (w, socket) in self.workers.iter().zip(sockets) {
                let _ = w.tx.send(Command::Start {
                    key,
                    listener: listener.clone(),
                    socket,
                });
            }
        }
        Ok(())
    }

    /// The address actually bound for a configured listen address (differs when the
    /// configured port is 0).
    pub fn local_addr(&self, listen: SocketAddr, protocol: Protocol) -> Option<SocketAddr> {
        lock(&self.bound).get(&(listen, protocol)).map(|b| b.addr)
    }

    /// A duplicate of one of the sockets of a running TCP listener (one of its
    /// `SO_REUSEPORT` group), for the kernel to steer connections to: e.g. flowgate-ebpf's
    /// `SockRedirect::set_inbound_listener`. `None` if no such listener runs. Drop it once
    /// handed over: while it is held, the listening socket stays open after the listener
    /// is removed, and the kernel goes on queueing connections on it that no one accepts.
    pub fn listener_socket(&self, listen: SocketAddr, protocol: Protocol) -> Option<Socket> {
        lock(&self.bound)
            .get(&(listen, protocol))
            .and_then(|b| b.socket.as_ref())
            .and_then(|s| s.try_clone().ok())
    }

    /// Live connections (TCP) and peer sessions (UDP) over all workers.
    pub fn connections(&self) -> usize {
        self.workers.iter().map(|w| w.live.count()).sum()
    }

    /// Stops accepting, waits for live connections up to the drain timeout, closes the rest,
    /// and joins the workers.
    pub fn shutdown(mut self) {
        // Connections between messages close now; the others when their exchange is done.
        for l in lock(&self.listeners).values() {
            l.drain.load().start();
        }
        // The kept duplicates would hold the listening sockets open (the kernel would go on
        // completing handshakes into their backlogs).
        lock(&self.bound).clear();
        for w in &self.workers {
            let _ = w.tx.send(Command::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.tx.send(Command::Shutdown);
        }
    }
}

/// Binds one socket per worker with SO_REUSEPORT; returns the bound address and the sockets.
fn bind_all(config: &ListenerConfig, n: usize) -> Result<(SocketAddr, Vec<Socket>), ServerError> {
    let err = |source| ServerError::Bind {
        addr: config.listen,
        protocol: config.protocol,
        source,
    };
    let mut addr = config.listen;
    if addr.port() != 0 {
        // SO_REUSEPORT would let us share the port with another process of the same user,
        // which then silently gets part of our connections: bind once without it first, so
        // a port that is already in use is an error, as it is for any other server.
        probe(config, addr).map_err(err)?;
    }
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let s = bind_one(config, addr).map_err(err)?;
        if addr.port() == 0 {
            // The first socket picked a port: the others share it.
            addr = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
        }
        sockets.push(s);
    }
    Ok((addr, sockets))
}

/// Binds `addr` without SO_REUSEPORT and lets it go again: fails if anyone holds the port.
fn probe(config: &ListenerConfig, addr: SocketAddr) -> io::Result<()> {
    let (ty, proto) = match config.protocol {
        Protocol::Tcp => (Type::STREAM, SockProtocol::TCP),
        Protocol::Udp => (Type::DGRAM, SockProtocol::UDP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
}

fn bind_one(config: &ListenerConfig, addr: SocketAddr) -> io::Result<Socket> {
    let (ty, proto) = match config.protocol {
        Protocol::Tcp => (Type::STREAM, SockProtocol::TCP),
        Protocol::Udp => (Type::DGRAM, SockProtocol::UDP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if config.protocol == Protocol::Tcp {
        s.listen(config.backlog)?;
    }
    Ok(s)
}

fn worker_main(
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Command>,
    live: Live,
    drain: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot build the worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut accepting: HashMap<ListenerKey, Running> = HashMap::new();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Start { key, listener, socket } => {
                    let running = match listener.config.protocol {
                        Protocol::Tcp => {
                            let std: std::net::TcpListener = socket.into();
                            match tokio::net::TcpListener::from_std(std) {
                                Ok(l) => Running {
                                    task: tokio::spawn(accept_loop(l, listener, index, live.clone())),
                                    stop: None,
                                },
                                Err(e) => {
                                    tracing::error!(worker = index, error = %e, "listener setup failed");
                                    continue;
                                }
                            }
                        }
                        Protocol::Udp => {
                            let std: std::net::UdpSocket = socket.into();
                            // Read interest only (see `mmsg`). `with_interest` is deprecated
                            // because an `AsyncFd` over a borrowed or shared descriptor is
                            // unsound; here it owns the socket, which nothing else can close.
                            #[allow(deprecated)]
                            let fd = std.set_nonblocking(true).and_then(|()| {
                                tokio::io::unix::AsyncFd::with_interest(
                                    std,
                                    tokio::io::Interest::READABLE,
                                )
                            });
                            match fd {
                                Ok(s) => {
                                    let (stop, stopped) = tokio::sync::oneshot::channel();
                                    Running {
                                        task: tokio::spawn(udp::serve(
                                            s,
                                            listener,
                                            index,
                                            live.clone(),
                                            stopped,
                                        )),
                                        stop: Some(stop),
                                    }
                                }
                                Err(e) => {
                                    tracing::error!(worker = index, error = %e, "listener setup failed");
                                    continue;
                                }
                            }
                        }
                    };
                    if let Some(old) = accepting.insert(key, running) {
                        old.stop();
                    }
                }
                Command::Stop { key } => {
                    if let Some(t) = accepting.remove(&key) {
                        t.stop();
                    }
                }
                Command::Shutdown => break,
            }
        }
        for (_, t) in accepting.drain() {
            t.stop();
        }
        let (count, notify) = (&live.0.0, &live.0.1);
        let deadline = tokio::time::Instant::now() + drain;
        while count.load(Ordering::Acquire) > 0 {
            let wait = notify.notified();
            if count.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                tracing::warn!(
                    worker = index,
                    left = count.load(Ordering::Acquire),
                    "drain deadline passed; closing the remaining connections"
                );
                break;
            }
        }
    });
    // Dropping the runtime cancels whatever is still running.
    drop(rt);
}

/// A listener's task on a worker.
struct Running {
    task: tokio::task::JoinHandle<()>,
    /// For UDP: dropping it tells the task to stop receiving and let its sessions drain
    /// (they live in the task). TCP accept loops are aborted; connections have their own tasks.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    fn stop(self) {
        match self.stop {
            Some(stop) => drop(stop),
            None => self.task.abort(),
        }
    }
}

async fn accept_loop(
    l: tokio::net::TcpListener,
    listener: Arc<Listener>,
    worker: usize,
    live: Live,
) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                // Counted per listener: a flood on one listener (or of UDP peers) does not
                // lock clients out of the others.
                let Some(slot) = listener.conns.take(listener.config.max_connections) else {
                    tracing::warn!(
                        %peer,
                        max_connections = listener.config.max_connections,
                        "connection limit of the listener reached; connection refused"
                    );
                    continue;
                };
                if listener.config.nodelay {
                    let _ = stream.set_nodelay(true);
                }
                let conn = conn_info(
                    &stream,
                    peer,
                    worker,
                    listener.config.transparent,
                    listener.original_dst.as_ref(),
                );
                let pipeline = listener.pipeline.load_full();
                let cx = crate::Context::with_conn(conn);
                cx.insert(crate::Drain::clone(&listener.drain.load()));
                let guard = live.enter();
                tokio::spawn(async move {
                    tcp::serve_in(stream, pipeline, cx).await;
                    drop(guard);
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
