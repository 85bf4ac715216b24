//! Old option names that were replaced, kept only to refuse them with a pointer to the new
//! name.
//!
//! A config struct that renamed `target` to `endpoints` keeps a hidden field under the old
//! name whose type is [`Renamed`]; reading a file that still uses the old name then fails
//! at that field's line with "`target` is now `endpoints`" instead of a bare "unknown
//! field".
//!
//! ```
//! use flowgate_config::renamed::{Renamed, Target};
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Connect {
//!     endpoints: Vec<String>,
//!     #[serde(default, rename = "target")]
//!     _target: Renamed<Target>,
//! }
//!
//! let e = serde_json::from_str::<Connect>(r#"{ "target": ["127.0.0.1:80"] }"#).unwrap_err();
//! assert!(e.to_string().contains("`target` is now `endpoints`"), "{e}");
//! let ok: Connect = serde_json::from_str(r#"{ "endpoints": ["127.0.0.1:80"] }"#).unwrap();
//! assert_eq!(ok.endpoints, ["127.0.0.1:80"]);
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, de};

/// An old name and the name that replaced it.
pub trait OldName {
    /// The name files used to write.
    const OLD: &'static str;
    /// What to write instead.
    const NEW: &'static str;
}

/// A field under an old name: absent it is nothing (its `Default`), present it fails to
/// deserialize with an error naming [`OldName::NEW`]. Never serialized (mark the field
/// `skip_serializing`).
pub struct Renamed<N>(PhantomData<fn() -> N>);

impl<N> Default for Renamed<N> {
    fn default() -> Self {
        Renamed(PhantomData)
    }
}

impl<N> Clone for Renamed<N> {
    fn clone(&self) -> Self {
        Renamed(PhantomData)
    }
}

impl<N: OldName> fmt::Debug for Renamed<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Renamed({} -> {})", N::OLD, N::NEW)
    }
}

impl<N> PartialEq for Renamed<N> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<'de, N: OldName> Deserialize<'de> for Renamed<N> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(format_args!(
            "`{}` is now `{}` (see CONFIG.md)",
            N::OLD,
            N::NEW
        )))
    }
}

macro_rules! old_names {
    ($($(#[$doc:meta])* $ty:ident: $old:literal => $new:literal,)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $ty;
        impl OldName for $ty {
            const OLD: &'static str = $old;
            const NEW: &'static str = $new;
        }
    )*};
}

old_names! {
    /// `connect`'s `target`.
    Target: "target" => "endpoints",
    /// `balance-http`'s `targets`.
    Targets: "targets" => "endpoints",
    /// `proxy-mqtt`'s `brokers`.
    Brokers: "brokers" => "endpoints",
    /// `dns-forward`'s `upstreams`.
    Upstreams: "upstreams" => "endpoints",
    /// The gateway backends' `policy`.
    Policy: "policy" => "balance",
    /// `mux-http`'s and `balance-http`'s `version`.
    Version: "version" => "protocol",
    /// The gateway backends' `outlier`.
    Outlier: "outlier" => "balance.outlier",
    /// The gateway backends' `slow_start`.
    SlowStart: "slow_start" => "balance.slow_start",
    /// An endpoint's `addr` (flowgate-lb's `Backend`).
    Addr: "addr" => "address",
}
