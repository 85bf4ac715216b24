//! # flowgate-bgp
//!
//! A BGP-4 speaker for the L4 tier of a load balancer: it announces VIPs to routers so
//! they spread traffic over every healthy node by ECMP, and withdraws a VIP when the
//! service behind it fails its health probe. Independent of the pipeline core.
//!
//! - [`packet`]: a sans-IO codec for every BGP message, with multiprotocol IPv4/IPv6,
//!   4-octet AS, extended messages and RFC 7606 error handling.
//! - [`speaker`]: per-peer sessions (active or passive), timers, retries with backoff,
//!   adj-RIB-in / adj-RIB-out, and the `announce` / `withdraw` / `peers` / `events` API.
//! - [`vip`]: VIPs announced while a TCP or HTTP probe of the local service passes.
//!
//! ```
//! use flowgate_bgp::packet::{Codec, Message, Prefix, Update};
//! use flowgate_bgp::bytes::BytesMut;
//!
//! // Withdraw one VIP, on the wire and back.
//! let vip: Prefix = "192.0.2.10/32".parse()?;
//! let update = Message::Update(Update { withdrawn: vec![vip], ..Default::default() });
//! let mut codec = Codec::new();
//! let mut wire = BytesMut::new();
//! codec.encode(&update, &mut wire)?;
//! assert_eq!(codec.decode(&mut wire)?, Some(update));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Tested against GoBGP, BIRD 2 and FRR in network namespaces; see `tests/` and the
//! crate README.

pub mod packet;
pub mod speaker;
pub mod vip;

/// The `bytes` crate, re-exported for [`packet::Codec`]'s buffer types.
pub use bytes;
