//! Errors.

use thiserror::Error;

/// A configuration that cannot work, found when building a component.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Maglev needs a prime table size.
    #[error("maglev table size {table_size} is not a prime")]
    MaglevTableSize {
        /// The size given.
        table_size: u32,
    },
    /// A ring needs at least one hash per backend.
    #[error("ring hash needs hashes_per_backend >= 1")]
    RingPoints,
    /// Peak-EWMA needs a decay time above zero.
    #[error("peak-EWMA decay must be above zero")]
    ZeroDecay,
    /// A ratio or percentage outside its range.
    #[error("{field} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// Which setting.
        field: &'static str,
        /// The value given.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// A duration that must be above zero is zero.
    #[error("{field} must be above zero")]
    ZeroDuration {
        /// Which setting.
        field: &'static str,
    },
}

pub(crate) fn check_range(
    field: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), ConfigError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}
