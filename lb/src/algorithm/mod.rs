//! Load-balancing algorithms.
//!
//! Each algorithm is a small module that builds an immutable *table* from the eligible
//! endpoints and their effective weights, then picks from it with at most a few atomic
//! operations. A table is rebuilt whenever the backend set, health, ejections, slow start
//! or locality change the effective weights, and swapped in with one `ArcSwap` store, so
//! readers never lock.
//!
//! | algorithm | uses key | weights | state on the pick path |
//! |---|---|---|---|
//! | [`Algorithm::RoundRobin`] | no | no | one atomic counter |
//! | [`Algorithm::WeightedRoundRobin`] | no | nginx's smooth WRR | a mutex (plain RR when weights are equal) |
//! | [`Algorithm::Random`] | no | yes | none |
//! | [`Algorithm::LeastRequest`] | no | yes | none (power of two choices over in-flight counts) |
//! | [`Algorithm::PeakEwma`] | no | yes | none (P2C over latency × load) |
//! | [`Algorithm::RingHash`] | yes | yes | none (ketama-compatible continuum) |
//! | [`Algorithm::Maglev`] | yes | yes | none (Maglev lookup table) |

pub(crate) mod least_request;
pub(crate) mod maglev;
pub(crate) mod peak_ewma;
pub(crate) mod random;
pub(crate) mod ring_hash;
pub(crate) mod round_robin;
pub(crate) mod smooth_wrr;
pub(crate) mod sticky;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
use crate::error::ConfigError;

pub use maglev::DEFAULT_TABLE_SIZE;

/// Builds a Maglev lookup table on its own, for data planes that keep their own copy
/// (an XDP program's map, say): slot `i` holds the index into `names` of its backend.
///
/// `table_size` should be a prime larger than `names.len()`; weights of 0 count as 1.
///
/// ```
/// let t = flowgate_lb::algorithm::maglev_table(&["a:1", "b:1"], &[1, 1], 7);
/// assert_eq!(t.len(), 7);
/// assert!(t.iter().all(|&i| i < 2));
/// ```
pub fn maglev_table(names: &[&str], weights: &[u32], table_size: u32) -> Vec<u32> {
    maglev::build_table(names, weights, table_size)
}
pub use sticky::StickyConfig;

/// Which algorithm a balancer uses.
///
/// ```
/// use flowgate_lb::Algorithm;
/// let a: Algorithm = serde_json::from_str(r#"{"type": "maglev", "table_size": 65537}"#).unwrap();
/// assert_eq!(a, Algorithm::Maglev { table_size: 65537 });
/// // A name alone is the algorithm with its default options.
/// let b: Algorithm = serde_json::from_str(r#""maglev""#).unwrap();
/// assert_eq!(b, Algorithm::maglev());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    remote = "Self",
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Algorithm {
    /// Each eligible backend in turn, ignoring weights.
    RoundRobin,
    /// nginx's smooth weighted round robin: exact shares over every cycle of
    /// `sum(weights)` picks, with the heavy backends interleaved, not bunched.
    WeightedRoundRobin,
    /// Weighted random.
    Random,
    /// Least request: two random backends, the one with fewer requests in flight per
    /// unit of weight wins (power of two choices).
    LeastRequest,
    /// Peak-EWMA: two random backends, the lower `latency × (in_flight + 1) / weight` wins.
    PeakEwma {
        /// Time constant of the latency average (default 10 s).
        #[serde(default = "default_decay", with = "crate::duration")]
        decay: Duration,
        /// Latency assumed for a backend with no sample yet (default 1 ms... in nanoseconds
        /// precision; a low value makes new backends attractive).
        #[serde(default = "default_rtt", with = "crate::duration")]
        default_rtt: Duration,
    },
    /// Consistent hashing on a ketama-compatible continuum: `4 × hashes_per_backend`
    /// points per backend at equal weights (libketama uses 40 hashes: 160 points).
    RingHash {
        /// MD5 hashes per backend at equal weights; each gives 4 points (default 40).
        #[serde(default = "default_hashes")]
        hashes_per_backend: u32,
    },
    /// Maglev consistent hashing with a prime lookup-table size (default 65537).
    Maglev {
        /// Slots in the lookup table; must be a prime larger than the backend count.
        #[serde(default = "default_table_size")]
        table_size: u32,
    },
}

fn default_decay() -> Duration {
    Duration::from_secs(10)
}
fn default_rtt() -> Duration {
    Duration::from_millis(1)
}
fn default_hashes() -> u32 {
    40
}
fn default_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}

/// The algorithm names, as written in configuration files.
pub const ALGORITHM_NAMES: &str =
    "round_robin, weighted_round_robin, random, least_request, peak_ewma, ring_hash, maglev";

impl<'de> Deserialize<'de> for Algorithm {
    /// A name (`least_request`: the algorithm with its default options) or a map with
    /// `type:` and the algorithm's options (`{ type: maglev, table_size: 65537 }`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Algorithm;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "an algorithm name ({ALGORITHM_NAMES}) or a map with `type:`"
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Algorithm, E> {
                Algorithm::named(s).ok_or_else(|| {
                    E::custom(format_args!(
                        "unknown algorithm `{s}`, expected one of {ALGORITHM_NAMES}"
                    ))
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Algorithm, A::Error> {
                Algorithm::deserialize(serde::de::value::MapAccessDeserializer::new(m))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Algorithm::serialize(self, s)
    }
}

impl Algorithm {
    /// The algorithm called `name` (one of [`ALGORITHM_NAMES`]) with its default options.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "round_robin" => Self::RoundRobin,
            "weighted_round_robin" => Self::WeightedRoundRobin,
            "random" => Self::Random,
            "least_request" => Self::LeastRequest,
            "peak_ewma" => Self::peak_ewma(),
            "ring_hash" => Self::ketama(),
            "maglev" => Self::maglev(),
            _ => return None,
        })
    }

    /// Peak-EWMA with its defaults.
    pub fn peak_ewma() -> Self {
        Self::PeakEwma {
            decay: default_decay(),
            default_rtt: default_rtt(),
        }
    }

    /// A ketama-compatible ring (160 points per backend at equal weights).
    pub fn ketama() -> Self {
        Self::RingHash {
            hashes_per_backend: default_hashes(),
        }
    }

    /// Maglev with a 65537-slot table.
    pub fn maglev() -> Self {
        Self::Maglev {
            table_size: DEFAULT_TABLE_SIZE,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Self::Maglev { table_size } if !maglev::is_prime(table_size) => Err(ConfigError::new(
                "algorithm.table_size",
                format!("maglev table size {table_size} is not a prime"),
            )),
            Self::RingHash {
                hashes_per_backend: 0,
            } => Err(ConfigError::new(
                "algorithm.hashes_per_backend",
                "ring hash needs at least one hash per backend",
            )),
            Self::PeakEwma { decay, .. } if decay.is_zero() => Err(ConfigError::new(
                "algorithm.decay",
                "peak-EWMA decay must be above zero",
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn tracks_latency(&self) -> bool {
        matches!(self, Self::PeakEwma { .. })
    }
}

/// A built table of one algorithm.
pub(crate) enum Picker {
    RoundRobin(round_robin::RoundRobin),
    SmoothWrr(smooth_wrr::SmoothWrr),
    Random(random::WeightedRandom),
    LeastRequest(least_request::LeastRequest),
    PeakEwma(peak_ewma::PeakEwma),
    RingHash(ring_hash::Ring),
    Maglev(maglev::Maglev),
}

impl Picker {
    pub(crate) fn build(algo: &Algorithm, eps: &[Arc<Endpoint>], weights: &[u32]) -> Self {
        match *algo {
            Algorithm::RoundRobin => Self::RoundRobin(round_robin::RoundRobin::new()),
            Algorithm::WeightedRoundRobin => Self::SmoothWrr(smooth_wrr::SmoothWrr::new(weights)),
            Algorithm::Random => Self::Random(random::WeightedRandom::new(weights)),
            Algorithm::LeastRequest => {
                Self::LeastRequest(least_request::LeastRequest::new(weights))
            }
            Algorithm::PeakEwma { default_rtt, .. } => {
                Self::PeakEwma(peak_ewma::PeakEwma::new(weights, default_rtt))
            }
            Algorithm::RingHash { hashes_per_backend } => {
                let names: Vec<&str> = eps.iter().map(|e| e.name.as_str()).collect();
                Self::RingHash(ring_hash::Ring::build(&names, weights, hashes_per_backend))
            }
            Algorithm::Maglev { table_size } => {
                let names: Vec<&str> = eps.iter().map(|e| e.name.as_str()).collect();
                Self::Maglev(maglev::Maglev::build(&names, weights, table_size))
            }
        }
    }

    /// The index of the picked endpoint; `eps` is never empty.
    #[inline]
    pub(crate) fn pick(&self, key: u64, eps: &[Arc<Endpoint>]) -> usize {
        match self {
            Self::RoundRobin(p) => p.pick(eps.len()),
            Self::SmoothWrr(p) => p.pick(),
            Self::Random(p) => p.pick(),
            Self::LeastRequest(p) => p.pick(eps),
            Self::PeakEwma(p) => p.pick(eps),
            Self::RingHash(p) => p.pick(key),
            Self::Maglev(p) => p.pick(key),
        }
    }
}
