//! Configurations of the joint filters, for YAML files (`pipe`, `demux`, `mux`, `fork`).
//!
//! ```yaml
//! - pipe: { pipeline: plugins }
//! - demux: { pipeline: per-request, max_pending: 32 }
//! - mux: { pipeline: upstream-session, max_idle: 10s, max_queue: 1, max_messages: 1000 }
//! - fork: { mode: mirror, pipelines: [shadow] }
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Demux, DemuxOptions, Fork, ForkMode, Mux, MuxOptions, Pipe};
use crate::registry::{BuildContext, ConfigError, FilterConfig, Registry};
use crate::{Dyn, Filter, SubPipeline};

/// `pipe:` — run the stream through another pipeline.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipeConfig {
    /// The pipeline's name.
    pub pipeline: String,
}

impl FilterConfig for PipeConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(Pipe::new(SubPipeline::named(self.pipeline))))
    }
}

/// `demux:` — one sub-pipeline per message, replies in order.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemuxConfig {
    /// The per-message pipeline.
    pub pipeline: String,
    /// Messages in flight before input stops being read. Default 32.
    #[serde(default = "d_pending")]
    pub max_pending: usize,
}

fn d_pending() -> usize {
    DemuxOptions::default().max_pending
}

impl FilterConfig for DemuxConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_pending == 0 {
            return Err(ConfigError::new("max_pending", "must be at least 1"));
        }
        let opts = DemuxOptions {
            max_pending: self.max_pending,
            ..Default::default()
        };
        Ok(Arc::new(
            Demux::new(SubPipeline::named(self.pipeline)).options(opts),
        ))
    }
}

/// `mux:` — share keyed session pipelines between streams (a connection pool).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MuxConfig {
    /// The session pipeline.
    pub pipeline: String,
    /// Close a session idle this long. Default 10 s.
    #[serde(default = "m_idle", with = "crate::serde_duration")]
    pub max_idle: Duration,
    /// Messages in flight per session. Default 1.
    #[serde(default = "m_queue")]
    pub max_queue: usize,
    /// Retire a session after this many messages (0: never). Default 0.
    #[serde(default)]
    pub max_messages: u64,
}

fn m_idle() -> Duration {
    MuxOptions::default().max_idle
}
fn m_queue() -> usize {
    1
}

impl FilterConfig for MuxConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_queue == 0 {
            return Err(ConfigError::new("max_queue", "must be at least 1"));
        }
        let opts = MuxOptions {
            max_idle: self.max_idle,
            max_queue: self.max_queue,
            max_messages: self.max_messages,
            ..Default::default()
        };
        Ok(Arc::new(Mux::with(
            SubPipeline::named(self.pipeline),
            Dyn::value(String::new()),
            opts,
        )))
    }
}

/// `fork:` — copies of the stream to other pipelines.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForkConfig {
    /// `mirror`, `join` or `race`.
    pub mode: ForkMode,
    /// The pipelines that get a copy.
    pub pipelines: Vec<String>,
}

impl<'de> Deserialize<'de> for ForkMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "mirror" => Ok(ForkMode::Mirror),
            "join" => Ok(ForkMode::Join),
            "race" => Ok(ForkMode::Race),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["mirror", "join", "race"],
            )),
        }
    }
}

impl FilterConfig for ForkConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.pipelines.is_empty() {
            return Err(ConfigError::new("pipelines", "name at least one pipeline"));
        }
        let subs = self.pipelines.into_iter().map(SubPipeline::named).collect();
        Ok(Arc::new(Fork::new(self.mode, subs)))
    }
}

/// Registers `pipe`, `demux`, `mux` and `fork`.
pub fn register(r: &mut Registry) {
    r.register::<PipeConfig>("pipe");
    r.register::<DemuxConfig>("demux");
    r.register::<MuxConfig>("mux");
    r.register::<ForkConfig>("fork");
}
