//! # flowgate-dns
//!
//! DNS for Flowgate, sans-IO: messages on [hickory-proto](hickory_proto) behind our own
//! limits, EDNS0 and client subnet helpers, fast response building for authoritative
//! answers, truncation, and a TTL cache with an injected clock. No sockets, no runtime.
//!
//! ```
//! use flowgate_dns::{Limits, Owner, ResponseWriter, query, truncate, validate};
//! use flowgate_dns::hickory::rr::RecordType;
//! use flowgate_dns::types::{rcode, rtype};
//!
//! // A client asks for api.svc.test A (built with hickory-proto), without EDNS.
//! let q = query("API.svc.test", RecordType::A, 42, true, None)?;
//! // Untrusted bytes are validated first: limits, pointers, lengths, EDNS.
//! let info = validate(&q, &Limits::default())?;
//! let question = info.question.unwrap();
//! assert_eq!(question.name.to_string(), "api.svc.test.");
//!
//! // Answer on the wire: the question is copied, answers point at it.
//! let mut w = ResponseWriter::new(&q, &info, rcode::NOERROR, true);
//! for i in 1..=50u8 {
//!     w.answer(Owner::Question, rtype::A, 30, &[10, 0, 0, i]);
//! }
//! let resp = w.finish(None);
//!
//! // Too big for a client without EDNS: send TC=1 so it retries over TCP.
//! let udp = truncate(&resp, usize::from(info.client_udp_payload()));
//! assert!(validate(&udp, &Limits::default())?.header.truncated());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Map
//! - [`wire`]: the validation pass over untrusted bytes ([`validate`], [`Limits`],
//!   [`WireError`]) and [`NameKey`], a lower-cased wire name for lookups.
//! - [`builder`]: [`ResponseWriter`], [`formerr`], [`truncate`].
//! - [`edns`]: the OPT record and [`ClientSubnet`].
//! - [`message`]: [`decode`] / [`encode`] with hickory-proto, RDATA from hickory's types.
//! - [`cache`]: [`TtlCache`](cache::TtlCache) and the DNS caching rules (RFC 2308).

pub mod builder;
pub mod cache;
pub mod edns;
pub mod message;
pub mod types;
pub mod wire;

/// hickory-proto, re-exported so users name the same version.
pub use hickory_proto as hickory;

pub use builder::{Owner, ResponseWriter, answer_code, error_response, formerr, set_id, truncate};
pub use edns::ClientSubnet;
pub use message::{DnsError, decode, encode, name, name_key, query, rdata_wire};
pub use wire::{Header, Limits, NameKey, Question, WireError, WireInfo, validate};
