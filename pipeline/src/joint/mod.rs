//! Joint filters: filters that start sub-pipelines.
//!
//! | filter | starts | output |
//! |---|---|---|
//! | [`Pipe`] | one sub-pipeline per stream, chosen per stream | the sub-pipeline's output |
//! | [`Branch`] | the first arm whose condition holds on the first event | that arm's output (or the input, if none) |
//! | [`Demux`] | one sub-pipeline per message, with a child context | the replies, in request order |
//! | [`Mux`] | keyed session sub-pipelines shared by many streams (a connection pool) | each stream's replies |
//! | [`Fork`] | one sub-pipeline per target, fed a copy of the input | mirror / join / race |

mod branch;
pub mod config;
mod demux;
mod fork;
mod mux;
mod pipe;

pub use branch::{Branch, Condition};
pub use demux::{Continued, Demux, DemuxOptions};
pub use fork::{Fork, ForkMode};
pub use mux::{Interim, Mux, MuxOptions};
pub use pipe::Pipe;

use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};

use futures_core::Stream;

use crate::{Event, Events};

/// A stream that yields `first`, then everything of `rest`.
pub(crate) struct Prepend {
    first: Option<Event>,
    rest: Events,
}

impl Prepend {
    pub(crate) fn boxed(first: Event, rest: Events) -> Events {
        Box::pin(Prepend {
            first: Some(first),
            rest,
        })
    }
}

impl Stream for Prepend {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        if let Some(ev) = self.first.take() {
            return Poll::Ready(Some(ev));
        }
        self.rest.as_mut().poll_next(cx)
    }
}
