//! The filter registry: filter names → typed configurations → filter prototypes.
//!
//! A configuration file lists filters as one-key maps (`- connect: {endpoints: …}`). Each name
//! is looked up here; the options are deserialized straight into that filter's own
//! `XxxConfig` type, so an unknown field or a wrong type is reported by the YAML reader at the
//! exact line and column. [`FilterConfig::build`] then validates the values and builds the
//! prototype.
//!
//! ```
//! use std::sync::Arc;
//! use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig, FilterSpec, Registry};
//! use flowgate_pipeline::{Description, Filter};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct NothingConfig {}
//! struct Nothing;
//! impl Filter for Nothing {
//!     fn describe(&self) -> Description { Description::filter("nothing") }
//! }
//! impl FilterConfig for NothingConfig {
//!     fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
//!         Ok(Arc::new(Nothing))
//!     }
//! }
//!
//! let mut reg = Registry::new();
//! reg.register::<NothingConfig>("nothing");
//! let reg = Arc::new(reg);
//! let spec: FilterSpec = reg.activate(|| serde_json::from_str(r#"{"nothing": {}}"#)).unwrap();
//! assert_eq!(spec.name, "nothing");
//! let err = reg.activate(|| serde_json::from_str::<FilterSpec>(r#"{"nope": {}}"#)).err().unwrap();
//! assert!(err.to_string().contains("unknown filter `nope`"));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::Filter;

pub use flowgate_config::{ConfigError, default_true};

/// What a filter configuration may need while building: where relative paths start, and
/// the values built once for the whole configuration ([`shared`](Self::shared)).
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    base_dir: PathBuf,
    shared: Arc<std::sync::Mutex<SharedValues>>,
}

/// Values built once per configuration, by type and key.
#[derive(Default)]
struct SharedValues(
    std::collections::HashMap<(std::any::TypeId, String), Arc<dyn std::any::Any + Send + Sync>>,
);

impl std::fmt::Debug for SharedValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} shared values", self.0.len())
    }
}

impl BuildContext {
    /// Relative paths resolve against `base_dir` (the config file's directory).
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        BuildContext {
            base_dir: base_dir.into(),
            shared: Arc::default(),
        }
    }

    /// The value of type `T` built for `key` in this configuration, built by `make` the
    /// first time: what many filters of one configuration name alike (a TLS client
    /// configuration a thousand clusters share) is built, and held, once. An error is not
    /// kept: the next asker tries again.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use flowgate_pipeline::registry::BuildContext;
    /// let cx = BuildContext::new(".");
    /// let a = cx.shared("roots:ca.pem", || Ok::<_, ()>(Arc::new(vec![1u8])))?;
    /// let b = cx.shared("roots:ca.pem", || Ok::<_, ()>(Arc::new(vec![2u8])))?;
    /// assert!(Arc::ptr_eq(&a, &b));
    /// # Ok::<(), ()>(())
    /// ```
    pub fn shared<T, E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Arc<T>, E>
    where
        T: std::any::Any + Send + Sync,
    {
        let id = (std::any::TypeId::of::<T>(), key.to_string());
        let found = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .get(&id)
            .cloned();
        if let Some(v) = found.and_then(|v| v.downcast::<T>().ok()) {
            return Ok(v);
        }
        let v = make()?;
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .insert(id, v.clone());
        Ok(v)
    }

    /// Resolves a path from the configuration.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// A filter's typed configuration.
pub trait FilterConfig: Send + 'static {
    /// Validates the values and builds the filter prototype.
    fn build(self: Box<Self>, cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError>;
}

type Decode = fn(
    &mut dyn erased_serde::Deserializer<'_>,
) -> Result<Box<dyn FilterConfig>, erased_serde::Error>;

fn decode<C: FilterConfig + DeserializeOwned>(
    d: &mut dyn erased_serde::Deserializer<'_>,
) -> Result<Box<dyn FilterConfig>, erased_serde::Error> {
    Ok(Box::new(erased_serde::deserialize::<C>(d)?))
}

/// Maps filter names to their configuration types.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, Decode>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Arc<Registry>>> = const { RefCell::new(None) };
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the configuration type `C` under `name` (replacing an earlier entry).
    pub fn register<C: FilterConfig + DeserializeOwned>(&mut self, name: &str) -> &mut Self {
        self.entries.insert(name.to_string(), decode::<C>);
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Runs `f` (which deserializes [`FilterSpec`]s) with this registry active on this thread.
    pub fn activate<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        let prev = ACTIVE.with(|a| a.borrow_mut().replace(self.clone()));
        let r = f();
        ACTIVE.with(|a| *a.borrow_mut() = prev);
        r
    }
}

/// One filter entry of a configuration: its name and typed options.
pub struct FilterSpec {
    /// The filter's registered name.
    pub name: String,
    /// Its options.
    pub config: Box<dyn FilterConfig>,
}

impl fmt::Debug for FilterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FilterSpec({})", self.name)
    }
}

fn lookup<E: de::Error>(name: &str) -> Result<Decode, E> {
    ACTIVE.with(|a| {
        let a = a.borrow();
        let Some(reg) = a.as_ref() else {
            return Err(E::custom(
                "no filter registry is active (use Registry::activate)",
            ));
        };
        match reg.entries.get(name) {
            Some(d) => Ok(*d),
            None => {
                let known: Vec<&str> = reg.names().collect();
                Err(E::custom(format!(
                    "unknown filter `{name}` (known filters: {})",
                    known.join(", ")
                )))
            }
        }
    })
}

struct ConfigSeed(Decode);

impl<'de> DeserializeSeed<'de> for ConfigSeed {
    type Value = Box<dyn FilterConfig>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut erased = <dyn erased_serde::Deserializer>::erase(d);
        (self.0)(&mut erased).map_err(de::Error::custom)
    }
}

struct SpecVisitor;

impl<'de> Visitor<'de> for SpecVisitor {
    type Value = FilterSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a filter: its name, or a map of its name to its options")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<FilterSpec, E> {
        let decode = lookup::<E>(name)?;
        // A bare name means "all defaults": deserialize the options from an empty map.
        let empty = de::value::MapDeserializer::<_, E>::new(std::iter::empty::<((), ())>());
        let mut erased = <dyn erased_serde::Deserializer>::erase(empty);
        let config = decode(&mut erased).map_err(E::custom)?;
        Ok(FilterSpec {
            name: name.to_string(),
            config,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FilterSpec, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                "an empty map is not a filter: write `- name: {options}`",
            ));
        };
        let decode = lookup::<A::Error>(&name)?;
        let config = map.next_value_seed(ConfigSeed(decode))?;
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "filter `{name}`: a filter entry has exactly one key, the filter's name \
                 (did you indent its options one level too little?)"
            )));
        }
        Ok(FilterSpec { name, config })
    }
}

impl<'de> Deserialize<'de> for FilterSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SpecVisitor)
    }
}
