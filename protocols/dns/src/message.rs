//! The bridge to hickory-proto: full decoding (after our validation pass) and encoding of
//! [`Message`]s, and RDATA built with hickory's record types.
//!
//! hickory-proto owns the record types and their encodings; this crate puts its own
//! limits in front of hickory's decoder, so every byte string hickory sees has already
//! passed [`validate`].

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, DecodeError};

use crate::wire::{Limits, NameKey, WireError, WireInfo, validate};

/// Why a message could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The bytes broke a limit or the wire format (our validation pass).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// hickory-proto could not decode bytes that passed our validation pass (an RDATA it
    /// rejects, for example).
    #[error("hickory-proto could not decode the message: {0}")]
    Decode(#[source] DecodeError),
    /// hickory-proto could not encode a message or record.
    #[error("hickory-proto could not encode: {0}")]
    Encode(#[source] ProtoError),
    /// A name that is not a valid domain name.
    #[error("`{name}` is not a valid domain name")]
    BadName {
        /// The text given.
        name: String,
    },
    /// An encoded message larger than allowed.
    #[error("encoded message of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Validates `msg` against `limits`, then decodes it with hickory-proto.
///
/// ```
/// use flowgate_dns::{Limits, decode, query};
/// use flowgate_dns::hickory::rr::RecordType;
/// let q = query("example.com", RecordType::AAAA, 9, true, Some(1232)).unwrap();
/// let (m, info) = decode(&q, &Limits::default()).unwrap();
/// assert_eq!(m.metadata.id, 9);
/// assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
/// assert_eq!(info.client_udp_payload(), 1232);
/// ```
pub fn decode(msg: &[u8], limits: &Limits) -> Result<(Message, WireInfo), DnsError> {
    let info = validate(msg, limits)?;
    let m = Message::from_vec(msg).map_err(DnsError::Decode)?;
    Ok((m, info))
}

/// Encodes `m` with hickory-proto, refusing a result longer than `max`.
pub fn encode(m: &Message, max: usize) -> Result<Vec<u8>, DnsError> {
    let v = m.to_vec().map_err(DnsError::Encode)?;
    if v.len() > max {
        return Err(DnsError::TooLarge { len: v.len(), max });
    }
    Ok(v)
}

/// Parses a domain name (absolute whether or not it ends with a dot).
pub fn name(text: &str) -> Result<Name, DnsError> {
    let bad = || DnsError::BadName {
        name: text.to_string(),
    };
    let mut n = Name::from_ascii(text).map_err(|_| bad())?;
    n.set_fqdn(true);
    name_key(&n).map_err(|_| bad())?;
    Ok(n)
}

/// The lookup key of a hickory name.
pub fn name_key(n: &Name) -> Result<NameKey, DnsError> {
    let bad = || DnsError::BadName {
        name: n.to_string(),
    };
    let mut buf = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_canonical_form(true);
    n.emit(&mut enc).map_err(|_| bad())?;
    let mut key = NameKey::root();
    let limits = Limits::default();
    // Reuse the wire walker: it lower-cases and checks lengths.
    let mut msg = vec![0u8; crate::wire::HEADER_LEN];
    msg.extend_from_slice(&buf);
    crate::wire::walk_name(&msg, crate::wire::HEADER_LEN, &limits, Some(&mut key))
        .map_err(|_| bad())?;
    Ok(key)
}

/// The RDATA of `rdata` in uncompressed wire form, ready for
/// [`ResponseWriter`](crate::ResponseWriter).
///
/// ```
/// use flowgate_dns::{name, rdata_wire};
/// use flowgate_dns::hickory::rr::{RData, rdata::SRV};
/// let srv = RData::SRV(SRV::new(0, 5, 8080, name("e0.api.svc.test").unwrap()));
/// let w = rdata_wire(&srv).unwrap();
/// assert_eq!(&w[..6], &[0, 0, 0, 5, 0x1f, 0x90]);
/// assert_eq!(&w[6..9], b"\x02e0");
/// ```
pub fn rdata_wire(rdata: &RData) -> Result<Vec<u8>, DnsError> {
    let mut buf = Vec::with_capacity(32);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_canonical_form(true);
    rdata.emit(&mut enc).map_err(DnsError::Encode)?;
    Ok(buf)
}

/// Builds a query for `qname`/`qtype` (class IN) with hickory-proto, with an OPT record
/// advertising `edns_payload` when given.
pub fn query(
    qname: &str,
    qtype: RecordType,
    id: u16,
    recursion_desired: bool,
    edns_payload: Option<u16>,
) -> Result<Vec<u8>, DnsError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = recursion_desired;
    m.add_query(Query::query(name(qname)?, qtype));
    if let Some(p) = edns_payload {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    encode(&m, 65_535)
}
