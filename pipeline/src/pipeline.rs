//! Pipelines (ordered filters, themselves a filter) and modules (named pipelines that refer
//! to each other).

use std::collections::HashMap;
use std::sync::Arc;

use crate::filter::TransformStream;
use crate::{Context, Description, Events, Filter, SubPipeline, Transform};

/// Why a pipeline or module could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// A joint filter refers to a pipeline that does not exist.
    #[error(
        "pipeline `{pipeline}`, filter #{index} ({filter}): sub-pipeline `{missing}` is not defined"
    )]
    MissingSubPipeline {
        /// The pipeline holding the joint filter.
        pipeline: String,
        /// The filter's position in that pipeline (0-based).
        index: usize,
        /// The filter's kind.
        filter: String,
        /// The name that could not be resolved.
        missing: String,
    },
    /// A joint filter was built without the sub-pipeline it needs.
    #[error("pipeline `{pipeline}`, filter #{index} ({filter}): needs a sub-pipeline and has none")]
    NoSubPipeline {
        /// The pipeline holding the joint filter.
        pipeline: String,
        /// The filter's position in that pipeline (0-based).
        index: usize,
        /// The filter's kind.
        filter: String,
    },
    /// Two pipelines share a name.
    #[error("pipeline `{0}` is defined twice")]
    DuplicatePipeline(String),
}

/// An ordered list of filters. A pipeline is itself a [`Filter`].
///
/// ```
/// use flowgate_pipeline::{Event, Pipeline, Transform, testing};
/// let p = Pipeline::builder("shout")
///     .transform("upper", || |ev: Event, out: &mut dyn FnMut(Event)| match ev {
///         Event::Data(b) => out(Event::Data(b.to_ascii_uppercase().into())),
///         other => out(other),
///     })
///     .build()
///     .unwrap();
/// let out = testing::run_blocking(&p, vec!["hi".into(), Event::END]);
/// assert_eq!(testing::data_of(&out), b"HI");
/// ```
pub struct Pipeline {
    name: String,
    filters: Vec<Arc<dyn Filter>>,
}

impl Pipeline {
    /// Starts a pipeline called `name`.
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        PipelineBuilder {
            name: name.into(),
            filters: Vec::new(),
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its filters, in order.
    pub fn filters(&self) -> &[Arc<dyn Filter>] {
        &self.filters
    }

    fn check_bound(&self) -> Result<(), BuildError> {
        for (index, f) in self.filters.iter().enumerate() {
            for sub in f.subs() {
                if sub.get().is_none() {
                    return Err(self.sub_error(index, f.as_ref(), &sub));
                }
            }
        }
        Ok(())
    }

    fn sub_error(&self, index: usize, f: &dyn Filter, sub: &SubPipeline) -> BuildError {
        let filter = f.describe().kind;
        if sub.name().is_empty() {
            BuildError::NoSubPipeline {
                pipeline: self.name.clone(),
                index,
                filter,
            }
        } else {
            BuildError::MissingSubPipeline {
                pipeline: self.name.clone(),
                index,
                filter,
                missing: sub.name().to_string(),
            }
        }
    }
}

impl Filter for Pipeline {
    fn describe(&self) -> Description {
        Description {
            kind: "pipeline".into(),
            name: self.name.clone(),
            filters: self.filters.iter().map(|f| f.describe()).collect(),
            ..Default::default()
        }
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let mut stream = input;
        let mut chain: Vec<Box<dyn Transform>> = Vec::new();
        for f in &self.filters {
            if let Some(t) = f.transform(cx) {
                chain.push(t);
                continue;
            }
            if !chain.is_empty() {
                stream = Box::pin(TransformStream::new(stream, std::mem::take(&mut chain)));
            }
            stream = f.attach(stream, cx);
        }
        if !chain.is_empty() {
            stream = Box::pin(TransformStream::new(stream, chain));
        }
        stream
    }

    fn subs(&self) -> Vec<SubPipeline> {
        self.filters.iter().flat_map(|f| f.subs()).collect()
    }
}

/// The per-request references ([`Filter::request_pipeline`]) reachable from `roots` through
/// the per-connection ones (not below them), each once.
fn request_references(roots: &[Arc<Pipeline>]) -> Vec<SubPipeline> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<SubPipeline> = Vec::new();
    let mut todo: Vec<Arc<Pipeline>> = roots.to_vec();
    while let Some(p) = todo.pop() {
        if !seen.insert(Arc::as_ptr(&p)) {
            continue;
        }
        for f in &p.filters {
            let per_request = f.request_pipeline();
            for sub in f.subs() {
                if per_request.as_ref().is_some_and(|r| r.same_as(&sub)) {
                    if !out.iter().any(|o| o.same_as(&sub)) {
                        out.push(sub);
                    }
                } else if let Some(next) = sub.get() {
                    todo.push(next);
                }
            }
        }
    }
    out
}

/// Hands the live connections of a running configuration a newer one's per-request
/// pipelines: every per-request reference ([`Filter::request_pipeline`], a connection
/// manager's) reachable from `running` without passing one is pointed at the pipeline
/// the same reference in `newer` runs, matched by name (a name two of `newer`'s
/// references give to different pipelines is left alone). The next request on such a
/// connection runs the newer configuration from there down, whole; what happens per
/// connection (TLS, the choice of chain) stays as it started. Meant for two
/// configurations whose per-connection part is the same. Returns how many references
/// moved.
///
/// ```
/// use flowgate_pipeline::{Event, Module, Pipeline, joint::Demux, SubPipeline, rebind_requests};
/// let module = |tag: &'static str| {
///     Module::builder()
///         .pipeline(Pipeline::builder("front").filter(Demux::new(SubPipeline::named("back"))))
///         .pipeline(Pipeline::builder("back").transform("tag", move || {
///             move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
///                 Event::MessageStart(h) => out(Event::MessageStart(h)),
///                 other => out(other),
///             }
///         }))
///         .build()
///         .unwrap()
/// };
/// let (old, new) = (module("old"), module("new"));
/// let front = old.get("front").unwrap().clone();
/// let newer_back = new.get("back").unwrap().clone();
/// assert_eq!(rebind_requests(&[front.clone()], &[new.get("front").unwrap().clone()]), 1);
/// let demux = &front.filters()[0];
/// let now = demux.request_pipeline().unwrap().get().unwrap();
/// assert!(std::sync::Arc::ptr_eq(&now, &newer_back));
/// ```
pub fn rebind_requests(running: &[Arc<Pipeline>], newer: &[Arc<Pipeline>]) -> usize {
    let mut by_name: std::collections::HashMap<String, Option<Arc<Pipeline>>> =
        std::collections::HashMap::new();
    for r in request_references(newer) {
        let Some(target) = r.get() else {
            continue;
        };
        by_name
            .entry(r.name().to_string())
            .and_modify(|e| {
                if e.as_ref().is_some_and(|t| !Arc::ptr_eq(t, &target)) {
                    *e = None;
                }
            })
            .or_insert(Some(target));
    }
    let mut moved = 0;
    for sub in request_references(running) {
        let Some(Some(target)) = by_name.get(sub.name()) else {
            continue;
        };
        if sub.get().is_some_and(|now| Arc::ptr_eq(&now, target)) {
            continue;
        }
        sub.rebind(Arc::clone(target));
        moved += 1;
    }
    moved
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pipeline({}, {} filters)", self.name, self.filters.len())
    }
}

/// Builds a [`Pipeline`].
pub struct PipelineBuilder {
    name: String,
    filters: Vec<Arc<dyn Filter>>,
}

impl PipelineBuilder {
    /// Appends a filter.
    #[must_use]
    pub fn filter(mut self, f: impl Filter) -> Self {
        self.filters.push(Arc::new(f));
        self
    }

    /// Appends a shared filter prototype.
    #[must_use]
    pub fn filter_arc(mut self, f: Arc<dyn Filter>) -> Self {
        self.filters.push(f);
        self
    }

    /// Appends a transform made fresh for every stream by `make`.
    #[must_use]
    pub fn transform<T, M>(self, name: &'static str, make: M) -> Self
    where
        T: Transform,
        M: Fn() -> T + Send + Sync + 'static,
    {
        self.filter(FnTransform { name, make })
    }

    /// Builds the pipeline. Every joint filter's sub-pipeline must be bound already; to refer
    /// to pipelines by name, build a [`Module`] instead.
    pub fn build(self) -> Result<Pipeline, BuildError> {
        let p = self.build_unchecked();
        p.check_bound()?;
        Ok(p)
    }

    /// Builds the pipeline without checking that its sub-pipeline references are bound: for
    /// a filter that wraps a pipeline of its own and reports the inner references from its
    /// [`Filter::subs`], so the enclosing [`Module`] binds them.
    pub fn build_deferred(self) -> Pipeline {
        self.build_unchecked()
    }

    fn build_unchecked(self) -> Pipeline {
        Pipeline {
            name: self.name,
            filters: self.filters,
        }
    }
}

struct FnTransform<M> {
    name: &'static str,
    make: M,
}

impl<T, M> Filter for FnTransform<M>
where
    T: Transform,
    M: Fn() -> T + Send + Sync + 'static,
{
    fn describe(&self) -> Description {
        Description::filter(self.name)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        Some(Box::new((self.make)()))
    }
}

// === impl Module ===

/// A set of named pipelines whose joint filters refer to each other by name, as a Pipy
/// module or a Flowgate YAML file does.
///
/// ```
/// use flowgate_pipeline::{BuildError, Module, Pipeline, SubPipeline, joint::Pipe};
/// let err = Module::builder()
///     .pipeline(Pipeline::builder("main").filter(Pipe::new(SubPipeline::named("missing"))))
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, BuildError::MissingSubPipeline { .. }));
/// ```
#[derive(Default, Debug)]
pub struct Module {
    pipelines: HashMap<String, Arc<Pipeline>>,
    order: Vec<String>,
}

impl Module {
    /// Starts a module.
    pub fn builder() -> ModuleBuilder {
        ModuleBuilder::default()
    }

    /// The pipeline called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.pipelines.get(name)
    }

    /// All pipelines, in the order they were added.
    pub fn pipelines(&self) -> impl Iterator<Item = &Arc<Pipeline>> {
        self.order.iter().filter_map(|n| self.pipelines.get(n))
    }

    /// Describes every pipeline of the module.
    pub fn describe(&self) -> Vec<Description> {
        self.pipelines().map(|p| p.describe()).collect()
    }
}

/// Builds a [`Module`].
#[derive(Default)]
pub struct ModuleBuilder {
    pipelines: Vec<PipelineBuilder>,
}

impl ModuleBuilder {
    /// Adds a pipeline.
    #[must_use]
    pub fn pipeline(mut self, p: PipelineBuilder) -> Self {
        self.pipelines.push(p);
        self
    }

    /// Adds a pipeline (by mutable reference, for loops).
    pub fn add(&mut self, p: PipelineBuilder) {
        self.pipelines.push(p);
    }

    /// Builds every pipeline and binds every named sub-pipeline reference.
    pub fn build(self) -> Result<Module, BuildError> {
        let mut m = Module::default();
        for b in self.pipelines {
            let p = b.build_unchecked();
            if m.pipelines.contains_key(p.name()) {
                return Err(BuildError::DuplicatePipeline(p.name().to_string()));
            }
            m.order.push(p.name().to_string());
            m.pipelines.insert(p.name().to_string(), Arc::new(p));
        }
        for name in &m.order {
            let Some(p) = m.pipelines.get(name) else {
                continue;
            };
            for (index, f) in p.filters.iter().enumerate() {
                for sub in f.subs() {
                    if sub.get().is_some() {
                        continue;
                    }
                    match m.pipelines.get(sub.name()) {
                        Some(target) if !sub.name().is_empty() => {
                            sub.bind(target.clone());
                        }
                        _ => return Err(p.sub_error(index, f.as_ref(), &sub)),
                    }
                }
            }
        }
        Ok(m)
    }
}
