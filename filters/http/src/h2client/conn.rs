//! One upstream connection's task: drives h2's `Connection` over the sub-pipeline, tracks
//! the server's stream limit and its GOAWAY, closes the connection when idle or retired,
//! and records why it ended for the requests still on it.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use flowgate_pipeline::feed::FeedSender;
use flowgate_pipeline::{ErrorKind, Event, Side, StreamError};
use h2::client::Connection;

use super::ping::Pinger;
use super::pool::{Conn, H2Pool, remove_from_pool};
use super::{H2ClientError, d_ping_timeout, lock};
use crate::event_io::EventIo;

/// What a connection task knows of its pool.
pub(super) struct ConnEnv {
    pub(super) pool: Weak<H2Pool>,
    /// The pool's [`H2Pool::known_server_max`].
    pub(super) known_server_max: Arc<AtomicUsize>,
    pub(super) key: ThreadId,
    pub(super) max_idle: Duration,
    /// PING interval and answer timeout.
    pub(super) keepalive: Option<(Duration, Duration)>,
}

/// Drives one upstream connection until it fails, is closed by the server, or is closed
/// by us (idle for `max_idle`, or retired with nothing in flight).
pub(super) async fn run_connection(
    env: ConnEnv,
    conn: Arc<Conn>,
    mut connection: Connection<EventIo, Bytes>,
    tx: Arc<FeedSender>,
) {
    let ConnEnv {
        pool,
        known_server_max,
        key,
        max_idle,
        keepalive,
    } = env;
    let (interval, timeout) = match keepalive {
        Some((i, t)) => (Some(i), t),
        None => (None, d_ping_timeout()),
    };
    let mut pings = connection
        .ping_pong()
        .map(|p| Pinger::new(p, interval, timeout));
    // Polled only to learn that the server said GOAWAY (it fails from then on).
    let mut probe = conn.send.clone();
    let mut going_away = false;
    let mut idle = Box::pin(tokio::time::sleep(max_idle));
    let mut last_server_max = usize::MAX;
    let end: Result<(), H2ClientError> = poll_fn(|task| {
        if let Poll::Ready(r) = Pin::new(&mut connection).poll(task) {
            if r.as_ref().is_err_and(|e| e.is_go_away() && e.is_remote()) {
                conn.went_away.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(r.map_err(H2ClientError::from));
        }
        let server_max = connection.max_concurrent_send_streams();
        conn.server_max.store(server_max, Ordering::Relaxed);
        // Unlimited (usize::MAX) when the server sets no limit: nothing to learn then.
        if server_max != usize::MAX && server_max != last_server_max {
            last_server_max = server_max;
            known_server_max.store(server_max, Ordering::Relaxed);
        }
        if !going_away && let Poll::Ready(Err(e)) = probe.poll_ready(task) {
            going_away = true;
            conn.went_away.store(e.is_go_away(), Ordering::Relaxed);
            tracing::debug!(error = %e, "HTTP/2 upstream connection is going away");
            // No new requests here; make sure the server still serves those in flight.
            lock(&conn.state).retired = true;
            remove_from_pool(&pool, key, conn.id);
            if lock(&conn.state).in_flight > 0
                && let Some(p) = pings.as_mut()
                && let Err(e) = p.probe()
            {
                return Poll::Ready(Err(e));
            }
        }
        if let Some(p) = pings.as_mut()
            && let Poll::Ready(e) = p.poll(task)
        {
            return Poll::Ready(Err(e));
        }
        let mut st = lock(&conn.state);
        if st.in_flight > 0 {
            st.task = Some(task.waker().clone());
            return Poll::Pending;
        }
        if st.retired {
            return Poll::Ready(Ok(()));
        }
        let deadline = st.last_used + max_idle;
        st.task = Some(task.waker().clone());
        drop(st);
        if idle.deadline() != deadline {
            idle.as_mut().reset(deadline);
        }
        if idle.as_mut().poll(task).is_pending() {
            return Poll::Pending;
        }
        // Idle: retire under the pool lock so that no request picks it meanwhile.
        let Some(p) = pool.upgrade() else {
            return Poll::Ready(Ok(()));
        };
        let _guard = lock(&p.conns);
        let mut st = lock(&conn.state);
        if st.in_flight == 0 {
            st.retired = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await;
    lock(&conn.state).retired = true;
    remove_from_pool(&pool, key, conn.id);
    if let Err(e) = end {
        tracing::debug!(error = %e, "HTTP/2 upstream connection ended");
        let mut f = lock(&conn.failure);
        if f.is_none() {
            *f = Some(StreamError::new(ErrorKind::ConnectionReset, Side::Upstream).with_cause(e));
        }
    }
    // Close the upstream side; streams still open learn it when `connection` drops.
    tx.push(Event::END);
    drop(connection);
}
