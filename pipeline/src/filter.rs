//! The filter interface.
//!
//! A [`Filter`] is an immutable prototype built once from its configuration. Each stream that
//! passes through gets its own instance: [`Filter::attach`] takes the stream's input events
//! and returns its output events. Everything is pull-based, so back-pressure is free: a filter
//! asks its input for the next event only when its own consumer asks it for one, and the
//! socket at the head of the chain is read only when the socket at the tail can take more.
//!
//! Filters that do no I/O and need no timers implement the synchronous [`Transform`] fast
//! path instead; a [`Pipeline`](crate::Pipeline) fuses consecutive transforms into one stage.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use futures_core::Stream;

use crate::{Context, Description, ErrorKind, Event, Pipeline, Side, StreamError};

/// A stream of events: the input and the output of every filter.
pub type Events = Pin<Box<dyn Stream<Item = Event> + Send + 'static>>;

/// A filter prototype: an immutable, shared description of a step of a pipeline, whose
/// [`attach`](Filter::attach) makes the instance for one stream.
pub trait Filter: Send + Sync + 'static {
    /// What this filter is, how it is set up and which sub-pipelines it starts.
    fn describe(&self) -> Description;

    /// Creates the per-stream instance: maps `input` to the output stream.
    ///
    /// The default runs the filter's [`Transform`].
    fn attach(&self, input: Events, cx: &Context) -> Events {
        match self.transform(cx) {
            Some(t) => Box::pin(TransformStream::new(input, vec![t])),
            None => error_stream(StreamError::new(ErrorKind::Internal, Side::Internal)),
        }
    }

    /// The synchronous per-stream instance, for filters that have one.
    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        None
    }

    /// The sub-pipelines this filter starts, so a module can resolve them by name.
    fn subs(&self) -> Vec<SubPipeline> {
        Vec::new()
    }

    /// The sub-pipeline this filter runs once per request (a connection manager's, or a
    /// demux's per message) rather than once per connection: what a newer configuration
    /// may hand live connections ([`rebind_requests`](crate::rebind_requests)). `None` (the
    /// default) for most filters.
    fn request_pipeline(&self) -> Option<SubPipeline> {
        None
    }

    /// What the filter knows now, for an admin endpoint — a balancer's endpoints with
    /// their health, say; `None` (the default) for filters without live state.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A synchronous filter instance: takes one event, emits zero or more.
///
/// ```
/// use flowgate_pipeline::{Event, Transform};
/// // Upper-cases ASCII payloads.
/// struct Upper;
/// impl Transform for Upper {
///     fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
///         match ev {
///             Event::Data(b) => out(Event::Data(b.to_ascii_uppercase().into())),
///             other => out(other),
///         }
///     }
/// }
/// ```
pub trait Transform: Send + 'static {
    /// Handles one input event, emitting output events through `out`.
    ///
    /// A transform that emits a [`Event::StreamEnd`] ends the stream: no more input is read.
    fn on_event(&mut self, event: Event, out: &mut dyn FnMut(Event));
}

impl<F> Transform for F
where
    F: FnMut(Event, &mut dyn FnMut(Event)) + Send + 'static,
{
    fn on_event(&mut self, event: Event, out: &mut dyn FnMut(Event)) {
        self(event, out)
    }
}

fn run_chain(chain: &mut [Box<dyn Transform>], ev: Event, out: &mut VecDeque<Event>) {
    match chain.split_first_mut() {
        None => out.push_back(ev),
        Some((first, rest)) => first.on_event(ev, &mut |e| run_chain(rest, e, out)),
    }
}

/// Runs a chain of transforms over an input stream: the fused fast path.
pub struct TransformStream {
    input: Events,
    chain: Vec<Box<dyn Transform>>,
    out: VecDeque<Event>,
    input_done: bool,
    finished: bool,
}

impl TransformStream {
    /// Runs `chain` (in order) over `input`.
    pub fn new(input: Events, chain: Vec<Box<dyn Transform>>) -> Self {
        TransformStream {
            input,
            chain,
            out: VecDeque::new(),
            input_done: false,
            finished: false,
        }
    }
}

impl Stream for TransformStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(ev) = this.out.pop_front() {
                if ev.is_end() {
                    this.finished = true;
                    this.out.clear();
                }
                return Poll::Ready(Some(ev));
            }
            if this.input_done {
                // The chain swallowed the end: end anyway, a stream always ends with StreamEnd.
                this.finished = true;
                return Poll::Ready(Some(Event::END));
            }
            match this.input.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) => {
                    this.input_done = ev.is_end();
                    run_chain(&mut this.chain, ev, &mut this.out);
                }
                Poll::Ready(None) => {
                    this.input_done = true;
                    run_chain(&mut this.chain, Event::END, &mut this.out);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A stream that yields the given events, then ends.
pub fn events_from(events: impl IntoIterator<Item = Event>) -> Events {
    Box::pin(futures_util::stream::iter(
        events.into_iter().collect::<Vec<_>>(),
    ))
}

/// A stream that ends at once with `err`.
pub fn error_stream(err: StreamError) -> Events {
    events_from([Event::StreamEnd(Some(err))])
}

// === impl SubPipeline ===

/// A reference from a joint filter to the pipeline it starts.
///
/// It is either bound at once (built from a pipeline) or named, and bound when the
/// [`Module`](crate::Module) that holds both is built. A module whose filter names a pipeline
/// it does not have fails to build. A bound reference can be pointed at another pipeline
/// of the same name later ([`SubPipeline::rebind`]): streams attached from then on run the
/// new one — how a running configuration takes a newer one's pipelines without its live
/// connections being closed.
#[derive(Clone)]
pub struct SubPipeline {
    name: Arc<str>,
    slot: Arc<arc_swap::ArcSwapOption<Pipeline>>,
}

impl SubPipeline {
    /// A reference to the pipeline called `name`, bound when the module is built.
    pub fn named(name: impl Into<Arc<str>>) -> Self {
        SubPipeline {
            name: name.into(),
            slot: Arc::new(arc_swap::ArcSwapOption::empty()),
        }
    }

    /// The name of the referenced pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline, once bound.
    pub fn get(&self) -> Option<Arc<Pipeline>> {
        self.slot.load_full()
    }

    /// Binds the reference (the first binding wins). Returns whether it is bound now.
    pub fn bind(&self, p: Arc<Pipeline>) -> bool {
        if self.slot.load().is_none() {
            self.slot.store(Some(p));
        }
        true
    }

    /// Points the reference at `p` from now on (streams already attached keep theirs).
    pub fn rebind(&self, p: Arc<Pipeline>) {
        self.slot.store(Some(p));
    }

    /// Whether `other` is this same reference (a clone of it), not just one of the same
    /// name.
    pub fn same_as(&self, other: &SubPipeline) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot)
    }

    /// Attaches the referenced pipeline to `input`, or ends with a `NoRoute` error if the
    /// reference was never bound (a module always binds it; this is a guard, not a path).
    pub fn attach(&self, input: Events, cx: &Context) -> Events {
        match &*self.slot.load() {
            Some(p) => p.attach(input, cx),
            None => error_stream(StreamError::new(ErrorKind::NoRoute, Side::Internal)),
        }
    }
}

impl From<Arc<Pipeline>> for SubPipeline {
    fn from(p: Arc<Pipeline>) -> Self {
        let name: Arc<str> = p.name().into();
        SubPipeline {
            name,
            slot: Arc::new(arc_swap::ArcSwapOption::new(Some(p))),
        }
    }
}

impl From<Pipeline> for SubPipeline {
    fn from(p: Pipeline) -> Self {
        Arc::new(p).into()
    }
}

impl std::fmt::Debug for SubPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SubPipeline({}{})",
            self.name,
            if self.get().is_some() {
                ""
            } else {
                ", unbound"
            }
        )
    }
}
