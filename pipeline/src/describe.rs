//! Self-description of filters and pipelines, as text and JSON.
//!
//! Every filter says what it is (name), how it is set up (options) and which sub-pipelines it
//! starts, so a running topology can be printed by `flowgate check --describe` or served by an
//! admin API, as Pipy's dump does.

use std::fmt::{self, Write};

use serde::Serialize;
use serde_json::Value;

/// The description of one filter or pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Description {
    /// The filter's name (`connect`, `demux`…) or, for a pipeline, `pipeline`.
    pub kind: String,
    /// The instance name: a pipeline's name; empty for most filters.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The filter's options, as JSON.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub options: Value,
    /// The filters of a pipeline, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Description>,
    /// The sub-pipelines a joint filter starts, by name (a name is enough: the pipeline
    /// itself is described once, at the top level).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<String>,
}

impl Description {
    /// A description of a filter of kind `kind` with no options.
    pub fn filter(kind: impl Into<String>) -> Self {
        Description {
            kind: kind.into(),
            ..Default::default()
        }
    }

    /// Adds options (anything serializable).
    #[must_use]
    pub fn options(mut self, options: impl Serialize) -> Self {
        self.options = serde_json::to_value(options).unwrap_or(Value::Null);
        self
    }

    /// Adds a sub-pipeline by name.
    #[must_use]
    pub fn with_sub(mut self, name: impl Into<String>) -> Self {
        self.subs.push(name.into());
        self
    }

    /// The description as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn write_text(&self, out: &mut String, indent: usize) -> fmt::Result {
        let pad = "  ".repeat(indent);
        if self.kind == "pipeline" {
            writeln!(out, "{pad}pipeline {}", self.name)?;
        } else {
            write!(out, "{pad}{}", self.kind)?;
            if !self.name.is_empty() {
                write!(out, " {}", self.name)?;
            }
            if !self.options.is_null() {
                write!(out, " {}", self.options)?;
            }
            for s in &self.subs {
                write!(out, " -> {s}")?;
            }
            writeln!(out)?;
        }
        for f in &self.filters {
            f.write_text(out, indent + 1)?;
        }
        Ok(())
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_text(&mut s, 0)?;
        f.write_str(&s)
    }
}
