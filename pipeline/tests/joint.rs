//! Socket-free tests of the pipeline model: joint filters, back-pressure, build errors and
//! self-description, under tokio's paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flowgate_pipeline::joint::{Branch, Demux, Fork, ForkMode, Interim, Mux, MuxOptions, Pipe};
use flowgate_pipeline::testing::{self, Harness, data_of, kinds_of, wait_until_async};
use flowgate_pipeline::{
    BuildError, Context, Description, Dyn, ErrorKind, Event, Events, Filter, Head, Module,
    Pipeline, Side, StreamError, SubPipeline, Tail,
};
use futures_util::StreamExt;

/// Echoes its input; a Data payload that is a number makes it sleep that many milliseconds
/// first.
struct DelayEcho;

impl Filter for DelayEcho {
    fn describe(&self) -> Description {
        Description::filter("delay-echo")
    }
    fn attach(&self, input: Events, _cx: &Context) -> Events {
        Box::pin(futures_util::stream::unfold(
            (input, false),
            |(mut input, done)| async move {
                if done {
                    return None;
                }
                let ev = input.next().await.unwrap_or(Event::END);
                if let Event::Data(b) = &ev
                    && let Ok(ms) = std::str::from_utf8(b).unwrap_or("x").parse::<u64>()
                {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let end = ev.is_end();
                Some((ev, (input, end)))
            },
        ))
    }
}

/// Counts how many instances (streams) were attached.
struct Counting(Arc<AtomicUsize>);

impl Filter for Counting {
    fn describe(&self) -> Description {
        Description::filter("counting")
    }
    fn attach(&self, input: Events, _cx: &Context) -> Events {
        self.0.fetch_add(1, Ordering::SeqCst);
        input
    }
}

fn msg(body: &'static str) -> Vec<Event> {
    vec![
        Event::MessageStart(Head::empty()),
        Event::Data(Bytes::from_static(body.as_bytes())),
        Event::MessageEnd(Tail::none()),
    ]
}

fn messages(bodies: &[&'static str]) -> Vec<Event> {
    let mut v: Vec<Event> = bodies.iter().flat_map(|b| msg(b)).collect();
    v.push(Event::END);
    v
}

/// A session pipeline that echoes (with delays) and counts its instances.
fn counted_sessions() -> (Arc<AtomicUsize>, Arc<Pipeline>) {
    let opened = Arc::new(AtomicUsize::new(0));
    let session = Arc::new(
        Pipeline::builder("session")
            .filter(Counting(opened.clone()))
            .filter(DelayEcho)
            .build()
            .unwrap(),
    );
    (opened, session)
}

fn pipeline(name: &str, f: impl Filter) -> Arc<Pipeline> {
    Arc::new(Pipeline::builder(name).filter(f).build().unwrap())
}

#[tokio::test(start_paused = true)]
async fn demux_replies_in_request_order_while_children_run_concurrently() {
    let demux = Demux::new(pipeline("slow", DelayEcho));
    let started = tokio::time::Instant::now();
    let out = testing::run(&demux, messages(&["300", "100", "200"])).await;
    assert_eq!(data_of(&out), b"300100200");
    assert_eq!(
        kinds_of(&out),
        [
            "MessageStart",
            "Data",
            "MessageEnd",
            "MessageStart",
            "Data",
            "MessageEnd",
            "MessageStart",
            "Data",
            "MessageEnd",
            "StreamEnd"
        ]
    );
    // Concurrent, not sequential: the slowest child bounds the total time.
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn demux_gives_each_message_a_child_context() {
    struct Mark;
    impl Filter for Mark {
        fn describe(&self) -> Description {
            Description::filter("mark")
        }
        fn attach(&self, input: Events, cx: &Context) -> Events {
            let n = cx.parent().and_then(|p| p.get::<u32>()).unwrap_or(0);
            assert!(cx.get::<u32>().is_none(), "child context starts empty");
            cx.insert(n);
            Box::pin(input.map(move |ev| match ev {
                Event::Data(_) => Event::Data(Bytes::from(n.to_string())),
                e => e,
            }))
        }
    }
    let cx = Context::new();
    cx.insert(7u32);
    let out = testing::run_with(
        &Demux::new(pipeline("mark", Mark)),
        messages(&["a", "b"]),
        &cx,
    )
    .await;
    assert_eq!(data_of(&out), b"77");
}

#[tokio::test(start_paused = true)]
async fn demux_child_error_ends_the_stream_with_it() {
    struct Fail;
    impl Filter for Fail {
        fn describe(&self) -> Description {
            Description::filter("fail")
        }
        fn attach(&self, _input: Events, _cx: &Context) -> Events {
            flowgate_pipeline::error_stream(StreamError::new(
                ErrorKind::ConnectFailed,
                Side::Upstream,
            ))
        }
    }
    let out = testing::run(&Demux::new(pipeline("fail", Fail)), messages(&["a", "b"])).await;
    match out.last() {
        Some(Event::StreamEnd(Some(e))) => assert_eq!(e.kind(), ErrorKind::ConnectFailed),
        other => panic!("expected an error end, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn mux_pools_sessions_by_key_and_limits() {
    let (opened, session) = counted_sessions();
    let mux = Mux::with(
        session,
        Dyn::value("k".to_string()),
        MuxOptions {
            max_queue: 4,
            max_idle: Duration::from_secs(5),
            ..Default::default()
        },
    );
    // Two streams, messages in sequence: one session carries all of them.
    for _ in 0..2 {
        let out = testing::run(&mux, messages(&["1", "2", "3"])).await;
        assert_eq!(data_of(&out), b"123");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    assert_eq!(mux.session_count(), 1);
    // After max_idle without work the session closes. (Paused clock: the sleep moves
    // virtual time past max_idle, the point of the test; it takes no real time.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(mux.session_count(), 0);
    let out = testing::run(&mux, messages(&["4"])).await;
    assert_eq!(data_of(&out), b"4");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn mux_idle_time_counts_from_the_last_message() {
    let (opened, session) = counted_sessions();
    let mux = Mux::with(
        session,
        Dyn::value("k".to_string()),
        MuxOptions {
            max_idle: Duration::from_secs(5),
            ..Default::default()
        },
    );
    // Used every 4 s: never idle for 5 s, so one session throughout (its first timer,
    // set when it opened, fires while it is still wanted). Paused clock: the sleeps move
    // virtual time to just under and then just over max_idle, the point of the test.
    for _ in 0..4 {
        let out = testing::run(&mux, messages(&["1"])).await;
        assert_eq!(data_of(&out), b"1");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(mux.session_count(), 1);
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    // 4 s idle so far; a little over 5 s in all closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(mux.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn mux_opens_more_sessions_when_busy_and_retires_after_max_messages() {
    let (opened, session) = counted_sessions();
    let mux = Arc::new(Mux::with(
        session,
        Dyn::value(String::new()),
        MuxOptions {
            max_queue: 1,
            max_messages: 2,
            ..Default::default()
        },
    ));
    // Three concurrent streams with one message each, max_queue 1: three sessions.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let m = mux.clone();
        tasks.push(tokio::spawn(async move {
            data_of(&testing::run(m.as_ref(), messages(&["50"])).await)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), b"50");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    // max_messages 2: a stream of four sequential messages needs two sessions at least.
    let before = opened.load(Ordering::SeqCst);
    let out = testing::run(mux.as_ref(), messages(&["1", "2", "3", "4"])).await;
    assert_eq!(data_of(&out), b"1234");
    assert!(opened.load(Ordering::SeqCst) > before);
}

#[tokio::test(start_paused = true)]
async fn mux_session_failure_reaches_the_waiting_stream() {
    struct Hangup;
    impl Filter for Hangup {
        fn describe(&self) -> Description {
            Description::filter("hangup")
        }
        fn attach(&self, _input: Events, _cx: &Context) -> Events {
            flowgate_pipeline::error_stream(StreamError::new(
                ErrorKind::ConnectionReset,
                Side::Upstream,
            ))
        }
    }
    let mux = Mux::new(pipeline("hangup", Hangup));
    let out = testing::run(&mux, messages(&["a"])).await;
    match out.last() {
        Some(Event::StreamEnd(Some(e))) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected an error end, got {other:?}"),
    }
}

/// Echoes messages; once it has echoed one, a further message makes it fail without a
/// reply while `stale` is set (a pooled connection the other side closed).
struct StaleAfterOne {
    stale: Arc<std::sync::atomic::AtomicBool>,
    retry_safe: bool,
}

impl Filter for StaleAfterOne {
    fn describe(&self) -> Description {
        Description::filter("stale-after-one")
    }
    fn attach(&self, input: Events, _cx: &Context) -> Events {
        let (stale, safe) = (self.stale.clone(), self.retry_safe);
        Box::pin(futures_util::stream::unfold(
            (input, 0usize, false),
            move |(mut input, served, done)| {
                let stale = stale.clone();
                async move {
                    if done {
                        return None;
                    }
                    let ev = input.next().await.unwrap_or(Event::END);
                    match ev {
                        Event::MessageStart(_) if served > 0 && stale.load(Ordering::SeqCst) => {
                            let e = StreamError::new(ErrorKind::ConnectionReset, Side::Upstream)
                                .retry_safe(safe);
                            Some((Event::StreamEnd(Some(e)), (input, served, true)))
                        }
                        Event::MessageEnd(_) => Some((ev, (input, served + 1, false))),
                        ev => {
                            let end = ev.is_end();
                            Some((ev, (input, served, end)))
                        }
                    }
                }
            },
        ))
    }
}

#[tokio::test(start_paused = true)]
async fn mux_sends_a_message_again_when_a_reused_session_fails_retry_safe() {
    for (max_resends, retry_safe, resent) in [(3, true, true), (0, true, false), (3, false, false)]
    {
        let stale = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let session = Arc::new(
            Pipeline::builder("session")
                .filter(Counting(opened.clone()))
                .filter(StaleAfterOne {
                    stale: stale.clone(),
                    retry_safe,
                })
                .build()
                .unwrap(),
        );
        let mux = Mux::with(
            session,
            Dyn::value(String::new()),
            MuxOptions {
                max_resends,
                ..Default::default()
            },
        );
        let out = testing::run(&mux, messages(&["1"])).await;
        assert_eq!(data_of(&out), b"1");
        // The pooled session now fails its next message without replying.
        stale.store(true, Ordering::SeqCst);
        let out = testing::run(&mux, messages(&["2"])).await;
        if resent {
            // Sent again on a fresh session, which answers.
            assert_eq!(data_of(&out), b"2");
            assert!(
                matches!(out.last(), Some(Event::StreamEnd(None))),
                "{out:?}"
            );
            assert_eq!(opened.load(Ordering::SeqCst), 2);
        } else {
            match out.last() {
                Some(Event::StreamEnd(Some(e))) => {
                    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
                }
                other => panic!("expected the session's error, got {other:?}"),
            }
            assert_eq!(opened.load(Ordering::SeqCst), 1);
        }
    }
}

/// Under load many pooled sessions go idle together and the other side closes them
/// together: a message that meets one of them is sent again on a new session, not on
/// another pooled one that is just as stale (which would fail it after the resends ran out).
#[tokio::test(start_paused = true)]
async fn mux_resends_on_a_new_session_when_every_pooled_one_is_stale() {
    let stale = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let session = Arc::new(
        Pipeline::builder("session")
            .filter(Counting(opened.clone()))
            .filter(StaleAfterOne {
                stale: stale.clone(),
                retry_safe: true,
            })
            .build()
            .unwrap(),
    );
    let mux = Mux::with(
        session,
        Dyn::value(String::new()),
        MuxOptions {
            max_resends: 3,
            ..Default::default()
        },
    );
    // Five streams at once: five sessions, each having carried one message.
    let outs = futures_util::future::join_all(
        ["a", "b", "c", "d", "e"].map(|m| testing::run(&mux, messages(&[m]))),
    )
    .await;
    assert!(
        outs.iter()
            .all(|o| matches!(o.last(), Some(Event::StreamEnd(None))))
    );
    let pooled = opened.load(Ordering::SeqCst);
    assert_eq!(pooled, 5);
    // Every pooled session is now stale: the message is answered by one new session.
    stale.store(true, Ordering::SeqCst);
    let out = testing::run(&mux, messages(&["f"])).await;
    assert_eq!(data_of(&out), b"f", "{out:?}");
    assert!(
        matches!(out.last(), Some(Event::StreamEnd(None))),
        "{out:?}"
    );
    assert_eq!(opened.load(Ordering::SeqCst), pooled + 1);
}

#[tokio::test(start_paused = true)]
async fn fork_join_waits_for_children_and_race_takes_the_first() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counting = Arc::new(
        Pipeline::builder("c")
            .filter(Counting(seen.clone()))
            .filter(DelayEcho)
            .build()
            .unwrap(),
    );
    let join = Fork::new(
        ForkMode::Join,
        vec![counting.clone().into(), counting.into()],
    );
    let started = tokio::time::Instant::now();
    let out = testing::run(&join, vec!["200".into(), Event::END]).await;
    assert_eq!(data_of(&out), b"200", "join outputs its input");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "join waited for the children"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    let upper = Arc::new(
        Pipeline::builder("upper")
            .transform("upper", || {
                |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::Data(b) => out(Event::Data(b.to_ascii_uppercase().into())),
                    e => out(e),
                }
            })
            .build()
            .unwrap(),
    );
    let slow = Arc::new(Pipeline::builder("slow").filter(DelayEcho).build().unwrap());
    let race = Fork::new(
        ForkMode::Race,
        vec![slow.clone().into(), upper.clone().into()],
    );
    // Both answer at once: the first in order wins.
    let out = testing::run(&race, vec!["abc".into(), Event::END]).await;
    assert_eq!(data_of(&out), b"abc");
    // The slow one sleeps: the other wins.
    let race = Fork::new(ForkMode::Race, vec![slow.into(), upper.into()]);
    let out = testing::run(&race, vec!["50".into(), "abc".into(), Event::END]).await;
    assert_eq!(data_of(&out), b"50ABC", "a child that answers at once wins");
}

#[tokio::test(start_paused = true)]
async fn fork_mirror_copies_without_changing_the_stream() {
    let copies = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Filter for Sink {
        fn describe(&self) -> Description {
            Description::filter("sink")
        }
        fn attach(&self, input: Events, _cx: &Context) -> Events {
            let store = self.0.clone();
            Box::pin(input.map(move |ev| {
                if let Event::Data(b) = &ev {
                    store.lock().unwrap().extend_from_slice(b);
                }
                ev
            }))
        }
    }
    let mirror = Fork::new(
        ForkMode::Mirror,
        vec![pipeline("sink", Sink(copies.clone())).into()],
    );
    let out = testing::run(&mirror, vec!["one".into(), "two".into(), Event::END]).await;
    assert_eq!(data_of(&out), b"onetwo");
    // The mirror's copy runs on its own task: wait for it (bounded).
    wait_until_async(Duration::from_secs(5), || {
        copies.lock().unwrap().as_slice() == b"onetwo"
    })
    .await;
    assert_eq!(copies.lock().unwrap().as_slice(), b"onetwo");
}

#[tokio::test]
async fn branch_and_pipe_route_by_context() {
    let tag = |t: &'static str| {
        Arc::new(
            Pipeline::builder(t)
                .transform("tag", move || {
                    move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                        Event::Data(_) => out(Event::Data(Bytes::from_static(t.as_bytes()))),
                        e => out(e),
                    }
                })
                .build()
                .unwrap(),
        )
    };
    let branch = Branch::new()
        .when("worker 1", |cx, _| cx.conn().worker == 1, tag("one"))
        .when("has head", |_, head| head.is_some(), tag("msg"))
        .otherwise(tag("other"));
    let cx = Context::new();
    assert_eq!(
        data_of(&testing::run_with(&branch, vec!["x".into(), Event::END], &cx).await),
        b"other"
    );
    assert_eq!(
        data_of(&testing::run_with(&branch, messages(&["x"]), &cx).await),
        b"msg"
    );
    cx.update_conn(|c| c.worker = 1);
    assert_eq!(
        data_of(&testing::run_with(&branch, vec!["x".into(), Event::END], &cx).await),
        b"one"
    );

    let pipe = Pipe::choose(vec![tag("a").into(), tag("b").into()], |cx| {
        Some(cx.conn().worker)
    });
    assert_eq!(
        data_of(&testing::run_with(&pipe, vec!["x".into(), Event::END], &cx).await),
        b"b"
    );
    cx.update_conn(|c| c.worker = 5);
    let out = testing::run_with(&pipe, vec!["x".into(), Event::END], &cx).await;
    assert!(
        matches!(out.last(), Some(Event::StreamEnd(Some(e))) if e.kind() == ErrorKind::NoRoute)
    );
}

#[tokio::test]
async fn back_pressure_a_stalled_consumer_stops_reading_input() {
    // A demux whose front child never finishes: after max_pending messages it stops pulling.
    struct Never;
    impl Filter for Never {
        fn describe(&self) -> Description {
            Description::filter("never")
        }
        fn attach(&self, _input: Events, _cx: &Context) -> Events {
            Box::pin(futures_util::stream::pending())
        }
    }
    let demux =
        Demux::new(pipeline("never", Never)).options(flowgate_pipeline::joint::DemuxOptions {
            max_pending: 2,
            ..Default::default()
        });
    let mut h = Harness::new(&demux);
    for _ in 0..10 {
        for ev in msg("x") {
            h.push(ev);
        }
    }
    assert!(h.try_next().is_none());
    // Two messages taken (6 events) and the start of the third is not read.
    assert_eq!(h.unread_input(), 30 - 6);
}

#[test]
fn module_resolves_names_and_reports_missing_sub_pipelines() {
    let err = Module::builder()
        .pipeline(Pipeline::builder("main").filter(Demux::new(SubPipeline::named("per-request"))))
        .build()
        .err()
        .unwrap();
    assert_eq!(
        err,
        BuildError::MissingSubPipeline {
            pipeline: "main".into(),
            index: 0,
            filter: "demux".into(),
            missing: "per-request".into()
        }
    );
    assert!(
        err.to_string()
            .contains("sub-pipeline `per-request` is not defined")
    );
    // Unbound reference in a standalone pipeline fails too.
    assert!(
        Pipeline::builder("p")
            .filter(Pipe::new(SubPipeline::named("x")))
            .build()
            .is_err()
    );
    // Fork with no target at all.
    let err = Module::builder()
        .pipeline(Pipeline::builder("main").filter(Fork::new(ForkMode::Join, vec![])))
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, BuildError::NoSubPipeline { .. }));

    let m = Module::builder()
        .pipeline(Pipeline::builder("main").filter(Demux::new(SubPipeline::named("per-request"))))
        .pipeline(Pipeline::builder("per-request").filter(DelayEcho))
        .build()
        .unwrap();
    let text = m.get("main").unwrap().describe().to_string();
    assert!(text.contains("pipeline main"), "{text}");
    assert!(
        text.contains("demux") && text.contains("-> per-request"),
        "{text}"
    );
    let json = m.get("main").unwrap().describe().to_json();
    assert_eq!(json["filters"][0]["kind"], "demux");
    assert_eq!(json["filters"][0]["subs"][0], "per-request");
    assert_eq!(json["filters"][0]["options"]["max_pending"], 32);
}

#[tokio::test]
async fn transform_that_ends_early_stops_reading() {
    let p = Pipeline::builder("cut")
        .transform("cut", || {
            |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                Event::Data(b) if b.as_ref() == b"stop" => out(Event::StreamEnd(Some(
                    StreamError::new(ErrorKind::Protocol, Side::Downstream),
                ))),
                e => out(e),
            }
        })
        .build()
        .unwrap();
    let mut h = Harness::new(&p);
    h.push("a".into());
    h.push("stop".into());
    h.push("b".into());
    let out = h.collect().await;
    assert_eq!(kinds_of(&out), ["Data", "StreamEnd(error)"]);
}

/// Answers each message with an interim reply (tail [`Interim`]) and then echoes it.
struct InterimThenEcho;

impl Filter for InterimThenEcho {
    fn describe(&self) -> Description {
        Description::filter("interim-then-echo")
    }
    fn attach(&self, input: Events, _cx: &Context) -> Events {
        Box::pin(input.flat_map(|ev| {
            let evs = match ev {
                Event::MessageStart(h) => vec![
                    Event::MessageStart(Head::empty()),
                    Event::MessageEnd(Tail::new(Interim)),
                    Event::MessageStart(h),
                ],
                ev => vec![ev],
            };
            futures_util::stream::iter(evs)
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn mux_routes_the_final_reply_after_an_interim_one_to_the_same_stream() {
    let opened = Arc::new(AtomicUsize::new(0));
    let session = Arc::new(
        Pipeline::builder("session")
            .filter(Counting(opened.clone()))
            .filter(InterimThenEcho)
            .build()
            .unwrap(),
    );
    let mux = Arc::new(Mux::new(session));
    // Streams in turn on one pooled session: each gets its own interim and final reply.
    for body in ["a", "b", "c"] {
        let out = testing::run(mux.as_ref(), messages(&[body])).await;
        assert_eq!(data_of(&out), body.as_bytes());
        assert_eq!(
            kinds_of(&out),
            [
                "MessageStart",
                "MessageEnd",
                "MessageStart",
                "Data",
                "MessageEnd",
                "StreamEnd"
            ]
        );
        assert!(matches!(&out[1], Event::MessageEnd(t) if t.get::<Interim>().is_some()));
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "the session was reused");
    // Two messages on one stream: two interim + final pairs, in order.
    let out = testing::run(mux.as_ref(), messages(&["1", "2"])).await;
    assert_eq!(data_of(&out), b"12");
    assert_eq!(kinds_of(&out).len(), 11, "{:?}", kinds_of(&out));
}
