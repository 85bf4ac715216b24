//! # flowgate-config
//!
//! The configuration vocabulary every Flowgate crate shares: durations and sizes parsed
//! one way, the one validation error, serde defaults.
//!
//! ```
//! use std::time::Duration;
//! use flowgate_config::{ConfigError, Size};
//!
//! #[derive(serde::Deserialize)]
//! struct Pool {
//!     #[serde(with = "flowgate_config::duration")]
//!     max_idle: Duration,
//!     max_body: Size,
//!     #[serde(default = "flowgate_config::default_true")]
//!     reuse: bool,
//! }
//!
//! let pool: Pool = serde_json::from_str(r#"{ "max_idle": "90s", "max_body": "1MiB" }"#).unwrap();
//! assert_eq!((pool.max_idle, pool.max_body, pool.reuse), (Duration::from_secs(90), Size(1 << 20), true));
//! let e = ConfigError::new("max_idle", "must be above zero");
//! assert_eq!(e.to_string(), "field `max_idle`: must be above zero");
//! ```

use std::fmt;

pub mod duration;
pub mod renamed;
mod size;

pub use size::{Size, parse_size};

/// A validation error: which field (a dotted path inside the component's options, such as
/// `balance.algorithm.table_size` or `endpoints[2]`), and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct ConfigError {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, problem: impl fmt::Display) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// `true`: the serde default of every boolean option that is on unless turned off
/// (`#[serde(default = "flowgate_config::default_true")]`).
pub fn default_true() -> bool {
    true
}
