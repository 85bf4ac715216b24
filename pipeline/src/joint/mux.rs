use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context as TaskCx, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use serde::Serialize;

use crate::feed::{FeedReceiver, FeedSender, feed};
use crate::{
    Context, Description, Dyn, ErrorKind, Event, Events, Filter, Side, StreamError, SubPipeline,
};

/// Limits of a [`Mux`] session pool.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MuxOptions {
    /// A session with no message in flight for this long is closed. Default 10 s.
    #[serde(with = "crate::serde_duration")]
    pub max_idle: Duration,
    /// How many messages may be in flight on one session; when all sessions of a key are
    /// that busy, a new session is opened. Default 1 (an HTTP/1 connection pool); raise it
    /// for protocols that multiplex or pipeline.
    pub max_queue: usize,
    /// A session is retired after carrying this many messages (0: no limit). Default 0.
    pub max_messages: u64,
    /// The largest message a stream may send through the mux, in bytes: messages are
    /// queued whole, so they are bounded. Default 16 MiB.
    pub max_message_bytes: usize,
    /// How many times a message is sent again when the session it went to had carried
    /// messages before and fails with a retry-safe error before any reply to it arrived
    /// (a pooled connection the other side closed as the message was sent). A resend goes
    /// to a new session, never a pooled one (those may be closing too), so one resend is
    /// all it takes: a fresh session's failure is the answer. Default 0 (off):
    /// only the session pipeline knows whether a failure is safe to retry, so protocols
    /// that mark their failures turn this on (`mux-http` does).
    pub max_resends: usize,
}

impl Default for MuxOptions {
    fn default() -> Self {
        MuxOptions {
            max_idle: Duration::from_secs(10),
            max_queue: 1,
            max_messages: 0,
            max_message_bytes: 16 << 20,
            max_resends: 0,
        }
    }
}

/// The tail of a `MessageEnd` that ends an interim reply (an HTTP 1xx such as 103 Early
/// Hints): the request is not answered yet, and the next reply message answers the same
/// request. A [`Mux`] hands the interim reply on and keeps routing the session's output to
/// the same stream until a reply ends without this marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interim;

/// Sends the messages of many streams through shared, keyed session sub-pipelines: the
/// connection pool.
///
/// Each input message is queued whole on a session of its key (a [`Dyn`] of the context and
/// the message head) that has room (`max_queue`), or on a new session. A session is one
/// instance of the sub-pipeline running in its own task on the current worker; its output
/// messages are the replies, handed back in the order the messages went in (a reply whose
/// `MessageEnd` tail is [`Interim`] is followed by more replies to the same message).
/// Sessions are closed after `max_idle` without work, retired after `max_messages`, and
/// dropped when their output ends; messages waiting on a failed session end with its error,
/// unless `max_resends` lets a message that went to a reused session be sent again.
///
/// Sessions are kept per worker thread, so a pool never crosses threads.
pub struct Mux {
    shared: Arc<Shared>,
}

struct Shared {
    target: SubPipeline,
    key: Dyn<String>,
    opts: MuxOptions,
    pool: Arc<Pool>,
}

type PoolKey = (ThreadId, String);

#[derive(Default)]
struct Pool {
    sessions: Mutex<HashMap<PoolKey, Vec<Arc<Session>>>>,
    next_id: AtomicU64,
}

struct Session {
    id: u64,
    state: Mutex<SessionState>,
}

struct SessionState {
    input: FeedSender,
    waiters: VecDeque<FeedSender>,
    in_flight: usize,
    carried: u64,
    /// Takes no new messages; closes its input once nothing is in flight.
    retired: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mux {
    /// A mux over `target` with one pool key and default limits.
    pub fn new(target: impl Into<SubPipeline>) -> Self {
        Self::with(target, Dyn::value(String::new()), MuxOptions::default())
    }

    /// A mux over `target`, keyed by `key`, with `opts`.
    pub fn with(target: impl Into<SubPipeline>, key: Dyn<String>, opts: MuxOptions) -> Self {
        Mux {
            shared: Arc::new(Shared {
                target: target.into(),
                key,
                opts,
                pool: Arc::default(),
            }),
        }
    }

    /// How many sessions are open now, over all keys and workers.
    pub fn session_count(&self) -> usize {
        lock(&self.shared.pool.sessions)
            .values()
            .map(Vec::len)
            .sum()
    }
}

impl Filter for Mux {
    fn describe(&self) -> Description {
        Description::filter("mux")
            .options(self.shared.opts)
            .with_sub(self.shared.target.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        Box::pin(MuxStream {
            input,
            input_done: false,
            cx: cx.clone(),
            shared: self.shared.clone(),
            building: Vec::new(),
            building_bytes: 0,
            building_key: String::new(),
            replies: VecDeque::new(),
            finished: false,
        })
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.shared.target.clone()]
    }
}

struct MuxStream {
    input: Events,
    input_done: bool,
    cx: Context,
    shared: Arc<Shared>,
    building: Vec<Event>,
    building_bytes: usize,
    building_key: String,
    replies: VecDeque<Reply>,
    finished: bool,
}

/// A message sent to a session, waiting for its reply.
struct Reply {
    rx: FeedReceiver,
    /// The message and its key, kept while it may be sent again: it went to a reused
    /// session, resends are left and no reply event has arrived yet.
    resend: Option<(Vec<Event>, String)>,
    /// How often it was sent again already.
    resent: usize,
}

/// How many replies one stream may wait for before it stops reading input.
const MAX_REPLIES_PER_STREAM: usize = 64;

impl MuxStream {
    /// Queues `message` on a session of `key` with room, or on a new one.
    fn dispatch(
        shared: &Arc<Shared>,
        cx: &Context,
        message: Vec<Event>,
        key: String,
        resent: usize,
    ) -> Result<Reply, StreamError> {
        let key = (std::thread::current().id(), key);
        let mut sessions = lock(&shared.pool.sessions);
        let list = sessions.entry(key.clone()).or_default();
        // A resend goes to a new session: the pooled ones went idle together with the one
        // that failed and may be closing too (one stale connection met under load is
        // seldom the only one), and a fresh session's failure is a real answer.
        let found = if resent > 0 {
            None
        } else {
            list.iter()
                .find(|s| lock(&s.state).in_flight < shared.opts.max_queue)
                .cloned()
        };
        let session = match found {
            Some(s) => s,
            None => {
                let s = open_session(shared, cx, key.clone())?;
                list.push(s.clone());
                s
            }
        };
        let (tx, rx) = feed();
        let mut st = lock(&session.state);
        st.in_flight += 1;
        st.carried += 1;
        if shared.opts.max_messages > 0 && st.carried >= shared.opts.max_messages {
            st.retired = true;
            list.retain(|s| s.id != session.id);
        }
        st.waiters.push_back(tx);
        let resend = if st.carried > 1 && resent < shared.opts.max_resends {
            for ev in &message {
                st.input.push(ev.clone());
            }
            Some((message, key.1))
        } else {
            for ev in message {
                st.input.push(ev);
            }
            None
        };
        Ok(Reply { rx, resend, resent })
    }
}

fn open_session(
    shared: &Arc<Shared>,
    cx: &Context,
    key: PoolKey,
) -> Result<Arc<Session>, StreamError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| StreamError::new(ErrorKind::Internal, Side::Internal).with_cause(e))?;
    let (input, rx) = feed();
    let out = shared.target.attach(Box::pin(rx), cx);
    let session = Arc::new(Session {
        id: shared.pool.next_id.fetch_add(1, Ordering::Relaxed),
        state: Mutex::new(SessionState {
            input,
            waiters: VecDeque::new(),
            in_flight: 0,
            carried: 0,
            retired: false,
        }),
    });
    handle.spawn(run_session(
        session.clone(),
        out,
        Arc::downgrade(&shared.pool),
        key,
        shared.opts.max_idle,
    ));
    Ok(session)
}

fn remove_from_pool(pool: &Weak<Pool>, key: &PoolKey, id: u64) {
    if let Some(pool) = pool.upgrade() {
        let mut sessions = lock(&pool.sessions);
        if let Some(list) = sessions.get_mut(key) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sessions.remove(key);
            }
        }
    }
}

/// Drives one session: routes its output messages to the waiting streams, in order.
async fn run_session(
    session: Arc<Session>,
    mut out: Events,
    pool: Weak<Pool>,
    key: PoolKey,
    max_idle: Duration,
) {
    let mut current: Option<FeedSender> = None;
    // One timer for the session's life, moved only when it fires early: a session that goes
    // idle after every message would otherwise add and remove a timer entry per message.
    let mut timer = Box::pin(tokio::time::sleep(max_idle));
    let mut idle_since: Option<tokio::time::Instant> = None;
    let failure = loop {
        let idle = current.is_none() && lock(&session.state).in_flight == 0;
        let ev = if idle {
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            let next = std::future::poll_fn(|cx| {
                if let Poll::Ready(ev) = out.as_mut().poll_next(cx) {
                    return Poll::Ready(Some(ev));
                }
                while timer.as_mut().poll(cx).is_ready() {
                    let deadline = since + max_idle;
                    if tokio::time::Instant::now() >= deadline {
                        return Poll::Ready(None);
                    }
                    timer.as_mut().reset(deadline);
                }
                Poll::Pending
            })
            .await;
            match next {
                Some(ev) => ev,
                None => {
                    // Idle for max_idle: retire under the pool lock so no stream picks it now.
                    if let Some(p) = pool.upgrade() {
                        let _pool_guard = lock(&p.sessions);
                        let mut st = lock(&session.state);
                        if st.in_flight == 0 && !st.retired {
                            st.retired = true;
                            st.input.push(Event::END);
                        }
                    }
                    remove_from_pool(&pool, &key, session.id);
                    // Stay until the input's end closes the session, without firing again.
                    timer.as_mut().reset(tokio::time::Instant::now() + max_idle);
                    idle_since = None;
                    continue;
                }
            }
        } else {
            idle_since = None;
            out.next().await
        };
        let ev = ev.unwrap_or(Event::END);
        match ev {
            Event::MessageStart(_) => {
                // After an interim reply the waiter is still current: the next reply is
                // for the same message.
                if current.is_none() {
                    current = lock(&session.state).waiters.pop_front();
                }
                if let Some(w) = &current {
                    w.push(ev);
                }
            }
            Event::MessageEnd(ref t) if t.get::<Interim>().is_some() => {
                if let Some(w) = &current {
                    w.push(ev);
                }
            }
            Event::Data(_) => {
                if let Some(w) = &current {
                    w.push(ev);
                }
            }
            Event::MessageEnd(_) => {
                if let Some(w) = current.take() {
                    w.push(ev);
                    w.push(Event::END);
                    let mut st = lock(&session.state);
                    st.in_flight = st.in_flight.saturating_sub(1);
                    if st.retired && st.in_flight == 0 {
                        st.input.push(Event::END);
                    }
                }
            }
            Event::StreamEnd(e) => break e,
        }
    };
    remove_from_pool(&pool, &key, session.id);
    let err = failure.unwrap_or_else(|| StreamError::new(ErrorKind::Cancelled, Side::Upstream));
    let mut st = lock(&session.state);
    st.retired = true;
    for w in current.into_iter().chain(st.waiters.drain(..)) {
        w.push(Event::StreamEnd(Some(err.clone())));
    }
}

impl Stream for MuxStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(front) = this.replies.front_mut() {
                match Pin::new(&mut front.rx).poll_next(task) {
                    Poll::Ready(Some(Event::StreamEnd(None)) | None) => {
                        this.replies.pop_front();
                        continue;
                    }
                    Poll::Ready(Some(Event::StreamEnd(Some(e)))) => {
                        if e.is_retry_safe()
                            && let Some((message, key)) = front.resend.take()
                        {
                            tracing::debug!(error = %e, "a reused session failed before replying; sending the message again");
                            let resent = front.resent + 1;
                            match Self::dispatch(&this.shared, &this.cx, message, key, resent) {
                                Ok(reply) => {
                                    *front = reply;
                                    continue;
                                }
                                Err(e) => {
                                    this.finished = true;
                                    return Poll::Ready(Some(Event::StreamEnd(Some(e))));
                                }
                            }
                        }
                        this.finished = true;
                        return Poll::Ready(Some(Event::StreamEnd(Some(e))));
                    }
                    Poll::Ready(Some(ev)) => {
                        // A reply has started: the message is not sent again.
                        front.resend = None;
                        return Poll::Ready(Some(ev));
                    }
                    Poll::Pending => {}
                }
            }
            if !this.input_done && this.replies.len() < MAX_REPLIES_PER_STREAM {
                let ev = match this.input.as_mut().poll_next(task) {
                    Poll::Ready(Some(ev)) => Some(ev),
                    Poll::Ready(None) => Some(Event::END),
                    Poll::Pending => None,
                };
                if let Some(ev) = ev {
                    match ev {
                        Event::MessageStart(ref head) => {
                            this.building_key = this.shared.key.eval(&this.cx, Some(head));
                            this.building.clear();
                            this.building_bytes = 0;
                            this.building.push(ev);
                        }
                        Event::Data(ref b) if !this.building.is_empty() => {
                            this.building_bytes += b.len();
                            if this.building_bytes > this.shared.opts.max_message_bytes {
                                this.finished = true;
                                let e =
                                    StreamError::new(ErrorKind::LimitExceeded, Side::Downstream);
                                return Poll::Ready(Some(Event::StreamEnd(Some(e))));
                            }
                            this.building.push(ev);
                        }
                        Event::Data(_) => {}
                        Event::MessageEnd(_) if !this.building.is_empty() => {
                            this.building.push(ev);
                            let message = std::mem::take(&mut this.building);
                            let key = std::mem::take(&mut this.building_key);
                            this.building_bytes = 0;
                            match Self::dispatch(&this.shared, &this.cx, message, key, 0) {
                                Ok(reply) => this.replies.push_back(reply),
                                Err(e) => {
                                    this.finished = true;
                                    return Poll::Ready(Some(Event::StreamEnd(Some(e))));
                                }
                            }
                        }
                        Event::MessageEnd(_) => {}
                        Event::StreamEnd(_) => {
                            this.input_done = true;
                            this.building.clear();
                        }
                    }
                    continue;
                }
            }
            if this.input_done && this.replies.is_empty() {
                this.finished = true;
                return Poll::Ready(Some(Event::END));
            }
            return Poll::Pending;
        }
    }
}
