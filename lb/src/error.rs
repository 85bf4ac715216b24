//! Errors: a configuration that cannot work is a [`ConfigError`] (the one every Flowgate
//! crate reports: which field, and what is wrong with it).

pub use flowgate_config::ConfigError;

pub(crate) fn check_range(
    field: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), ConfigError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}
