//! # flowgate-pipeline
//!
//! The core of Flowgate, after Pipy: a connection is a stream of four kinds of
//! [`Event`]s, and a proxy is a [`Pipeline`] of small [`Filter`]s that map an input stream to
//! an output stream. Joint filters ([`joint`]) start sub-pipelines — per stream, per message,
//! per pooled session, or as copies. A [`server::Server`] runs pipelines on TCP and UDP
//! listeners over N worker threads, drains them on shutdown, and swaps them on reload
//! without dropping a connection.
//!
//! ```
//! use flowgate_pipeline::{Event, Pipeline, joint::Demux, testing};
//!
//! // One sub-pipeline per message: here each request gets an upper-cased copy back.
//! let per_message = Pipeline::builder("per-message")
//!     .transform("upper", || |ev: Event, out: &mut dyn FnMut(Event)| match ev {
//!         Event::Data(b) => out(Event::Data(b.to_ascii_uppercase().into())),
//!         e => out(e),
//!     })
//!     .build()?;
//! let main = Pipeline::builder("main").filter(Demux::new(per_message)).build()?;
//!
//! let head = flowgate_pipeline::Head::empty();
//! let tail = flowgate_pipeline::Tail::none();
//! let out = testing::run_blocking(&main, vec![
//!     Event::MessageStart(head.clone()), "hello".into(), Event::MessageEnd(tail.clone()),
//!     Event::MessageStart(head), "world".into(), Event::MessageEnd(tail),
//!     Event::END,
//! ]);
//! assert_eq!(testing::data_of(&out), b"HELLOWORLD");
//! # Ok::<(), flowgate_pipeline::BuildError>(())
//! ```
//!
//! See `ARCHITECTURE.md` at the repository root for the event flow.

mod context;
mod describe;
mod drain;
mod dynamic;
mod event;
pub mod feed;
mod filter;
pub mod joint;
mod pipeline;
pub mod registry;
/// Durations in configurations (`flowgate_config::duration`, re-exported).
pub use flowgate_config::duration as serde_duration;
pub mod server;
pub mod testing;

pub use context::{ConnInfo, Context, TlsInfo};
pub use describe::Description;
pub use drain::Drain;
pub use dynamic::Dyn;
pub use event::{ErrorKind, Event, Head, Side, StreamError, Tail};
pub use filter::{
    Events, Filter, SubPipeline, Transform, TransformStream, error_stream, events_from,
};
/// Old option names refused with a pointer to the new one (`flowgate_config::renamed`).
pub use flowgate_config::renamed;
pub use flowgate_config::{Size, parse_size};
pub use pipeline::{BuildError, Module, ModuleBuilder, Pipeline, PipelineBuilder, rebind_requests};
