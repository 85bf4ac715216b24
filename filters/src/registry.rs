//! Registers every filter of the enabled features under its configuration name.

use flowgate_pipeline::registry::Registry;

/// A registry with every filter of this crate's enabled features.
///
/// ```
/// let reg = flowgate_filters::registry::standard();
/// assert!(reg.names().any(|n| n == "connect"));
/// ```
pub fn standard() -> Registry {
    let mut r = Registry::new();
    register(&mut r);
    r
}

/// Adds every filter of this crate's enabled features to `r`.
pub fn register(r: &mut Registry) {
    #[cfg(feature = "net")]
    crate::net::register(r);
    #[cfg(feature = "http")]
    crate::http::register(r);
    #[cfg(feature = "mqtt")]
    crate::mqtt::register(r);
    #[cfg(feature = "dns")]
    crate::dns::register(r);
    #[cfg(not(any(feature = "net", feature = "http")))]
    let _ = r;
}
