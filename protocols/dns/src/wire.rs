//! The pre-validation pass: one walk over untrusted wire bytes that enforces our limits
//! before anything else (hickory-proto included) looks at them.
//!
//! ```text
//!                                 1  1  1  1  1  1
//!   0  1  2  3  4  5  6  7  8  9  0  1  2  3  4  5
//! +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
//! |                      ID                       |
//! |QR|   Opcode  |AA|TC|RD|RA|   Z    |   RCODE   |
//! |                    QDCOUNT                    |
//! |                    ANCOUNT                    |
//! |                    NSCOUNT                    |
//! |                    ARCOUNT                    |
//! +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+   (RFC 1035 §4.1.1)
//! ```
//!
//! What the walk checks, so no later stage has to:
//! - the message is at least a header long and at most [`Limits::max_message`];
//! - the section counts fit the message (each question needs 5 bytes, each record 11) and
//!   stay under [`Limits::max_questions`] / [`Limits::max_records`];
//! - every name, in owner fields and inside the RDATA of the types that hold names, has
//!   labels of at most 63 bytes, is at most 255 bytes uncompressed, uses only the two label
//!   kinds of RFC 1035, and follows compression pointers that point strictly backwards of
//!   the label run they interrupt (so a pointer loop cannot exist) and never into the header;
//! - every RDATA lies inside the message; nothing trails the last record;
//! - at most one OPT record, in the additional section, owned by the root, with options
//!   that fit its RDATA and a well-formed client subnet option (RFC 7871).
//!
//! The walk allocates nothing. It returns a [`WireInfo`] with the header, the first
//! question (its name lower-cased, ready for lookups) and the EDNS facts.

use crate::edns::{ClientSubnet, OPTION_CLIENT_SUBNET};
use crate::types::{rtype, section::Section};

/// The size of the fixed header.
pub const HEADER_LEN: usize = 12;
/// The longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;
/// The longest name in wire form, length bytes and the root label included.
pub const MAX_NAME: usize = 255;

/// Limits for untrusted messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest message accepted. Default 65 535 (the TCP frame limit).
    pub max_message: usize,
    /// The most questions. Default 1 (no server answers more than one).
    pub max_questions: u16,
    /// The most records over the answer, authority and additional sections. Default 512.
    pub max_records: usize,
    /// The most compression pointers followed within one name. Default 32.
    pub max_pointers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 65_535,
            max_questions: 1,
            max_records: 512,
            max_pointers: 32,
        }
    }
}

/// Why bytes are not an acceptable DNS message. Offsets are from the start of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than a header.
    #[error("message of {len} bytes is shorter than the 12-byte header")]
    TooShort {
        /// The message length.
        len: usize,
    },
    /// Longer than the limit.
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLong {
        /// The message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More questions than allowed.
    #[error("{count} questions, the limit is {max}")]
    TooManyQuestions {
        /// QDCOUNT.
        count: u16,
        /// The limit.
        max: u16,
    },
    /// More records than allowed.
    #[error("{count} records, the limit is {max}")]
    TooManyRecords {
        /// ANCOUNT + NSCOUNT + ARCOUNT.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The counts promise more than the message can hold.
    #[error("the section counts need at least {needed} bytes, the message has {len}")]
    CountsExceedMessage {
        /// The smallest message the counts allow.
        needed: usize,
        /// The message length.
        len: usize,
    },
    /// The message ends inside a field.
    #[error("message truncated at offset {offset}")]
    Truncated {
        /// Where the missing bytes start.
        offset: usize,
    },
    /// A label length byte in 64..=127: a label longer than 63 bytes (or the obsolete
    /// extended label type).
    #[error("label of {len} bytes at offset {offset} (the limit is 63)")]
    LabelTooLong {
        /// The label's length byte offset.
        offset: usize,
        /// The length it claims.
        len: u8,
    },
    /// A label type byte 0b10xxxxxx, reserved by RFC 1035.
    #[error("reserved label type 0x{byte:02x} at offset {offset}")]
    BadLabelType {
        /// Where.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A name longer than 255 bytes uncompressed.
    #[error("name at offset {offset} is longer than 255 bytes")]
    NameTooLong {
        /// Where the name starts.
        offset: usize,
    },
    /// A compression pointer that does not point strictly backwards of the labels it ends,
    /// or points into the header: a loop, a self-reference or a forward reference.
    #[error("compression pointer at offset {offset} to {target} does not point backwards")]
    BadPointer {
        /// The pointer's offset.
        offset: usize,
        /// Its target.
        target: usize,
    },
    /// More compression pointers in one name than allowed.
    #[error("more than {max} compression pointers in the name at offset {offset}")]
    TooManyPointers {
        /// Where the name starts.
        offset: usize,
        /// The limit.
        max: usize,
    },
    /// A record's RDATA does not hold what its type requires (a name running past it,
    /// fixed fields missing).
    #[error("RDATA of type {rtype} at offset {offset} is malformed")]
    BadRdata {
        /// The RDATA's offset.
        offset: usize,
        /// The record type.
        rtype: u16,
    },
    /// Bytes after the last record.
    #[error("{len} bytes after the last record at offset {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        len: usize,
    },
    /// An OPT record outside the additional section, not owned by the root, or a second one.
    #[error("misplaced or repeated OPT record at offset {offset}")]
    BadOpt {
        /// The record's offset.
        offset: usize,
    },
    /// An EDNS option that does not fit the OPT RDATA, or a malformed client subnet option.
    #[error("malformed EDNS option {code} at offset {offset}")]
    BadOption {
        /// The option's offset.
        offset: usize,
        /// Its code.
        code: u16,
    },
}

// === impl Header ===

/// The fixed header, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The query ID.
    pub id: u16,
    /// The second 16-bit word: QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE.
    pub flags: u16,
    /// Questions.
    pub qdcount: u16,
    /// Answer records.
    pub ancount: u16,
    /// Authority records.
    pub nscount: u16,
    /// Additional records.
    pub arcount: u16,
}

/// Flag bits of [`Header::flags`].
pub mod flags {
    /// A response.
    pub const QR: u16 = 0x8000;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Recursion available.
    pub const RA: u16 = 0x0080;
    /// Authentic data (RFC 4035).
    pub const AD: u16 = 0x0020;
    /// Checking disabled (RFC 4035).
    pub const CD: u16 = 0x0010;
    /// The opcode field.
    pub const OPCODE_MASK: u16 = 0x7800;
}

impl Header {
    /// Reads the header; `None` when `msg` is shorter than 12 bytes.
    pub fn read(msg: &[u8]) -> Option<Header> {
        let h = msg.get(..HEADER_LEN)?;
        let w = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header {
            id: w(0),
            flags: w(2),
            qdcount: w(4),
            ancount: w(6),
            nscount: w(8),
            arcount: w(10),
        })
    }

    /// Writes the header into the first 12 bytes of `out` (which must be that long).
    pub fn write(&self, out: &mut [u8]) {
        if let Some(h) = out.get_mut(..HEADER_LEN) {
            for (i, v) in [
                self.id,
                self.flags,
                self.qdcount,
                self.ancount,
                self.nscount,
                self.arcount,
            ]
            .into_iter()
            .enumerate()
            {
                h[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        self.flags & flags::QR != 0
    }

    /// The opcode (0 = QUERY).
    pub fn opcode(&self) -> u8 {
        ((self.flags & flags::OPCODE_MASK) >> 11) as u8
    }

    /// Whether TC is set.
    pub fn truncated(&self) -> bool {
        self.flags & flags::TC != 0
    }

    /// The low four bits of the response code.
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }
}

// === impl NameKey ===

/// A name in uncompressed wire form, lower-cased: the key for lookups and caches.
///
/// ```
/// use flowgate_dns::NameKey;
/// let n = NameKey::from_dotted("API.svc.Test.").unwrap();
/// assert_eq!(n.to_string(), "api.svc.test.");
/// assert!(n.is_subdomain_of(&NameKey::from_dotted("svc.test").unwrap()));
/// assert!(!n.is_subdomain_of(&NameKey::from_dotted("vc.test").unwrap()));
/// ```
#[derive(Clone, Copy)]
pub struct NameKey {
    buf: [u8; MAX_NAME],
    len: u8,
}

impl Default for NameKey {
    fn default() -> Self {
        Self::root()
    }
}

impl PartialEq for NameKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for NameKey {}

impl std::hash::Hash for NameKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NameKey({self})")
    }
}

impl std::fmt::Display for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut any = false;
        for label in self.labels() {
            any = true;
            for &b in label {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            f.write_str(".")?;
        }
        if !any {
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl NameKey {
    /// The root name.
    pub fn root() -> Self {
        NameKey {
            buf: [0; MAX_NAME],
            len: 1,
        }
    }

    /// Parses `a.b.c` or `a.b.c.` (no escapes), lower-casing it; `None` for an empty label,
    /// a label over 63 bytes or a name over 255.
    pub fn from_dotted(name: &str) -> Option<Self> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut k = NameKey {
            buf: [0; MAX_NAME],
            len: 0,
        };
        let mut n = 0usize;
        if !name.is_empty() {
            for label in name.split('.') {
                let l = label.len();
                if l == 0 || l > MAX_LABEL || n + 1 + l + 1 > MAX_NAME {
                    return None;
                }
                k.buf[n] = l as u8;
                for (i, b) in label.bytes().enumerate() {
                    k.buf[n + 1 + i] = b.to_ascii_lowercase();
                }
                n += 1 + l;
            }
        }
        k.buf[n] = 0;
        k.len = (n + 1) as u8;
        Some(k)
    }

    /// The wire form, root label included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The labels, left to right, without the root.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        let b = self.as_bytes();
        let mut i = 0usize;
        std::iter::from_fn(move || {
            let l = usize::from(*b.get(i)?);
            if l == 0 {
                return None;
            }
            let label = b.get(i + 1..i + 1 + l)?;
            i += 1 + l;
            Some(label)
        })
    }

    /// How many labels (the root not counted).
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// Whether this name equals `zone` or lies under it (label-aligned).
    pub fn is_subdomain_of(&self, zone: &NameKey) -> bool {
        self.strip_zone(zone).is_some()
    }

    /// The labels in front of `zone` (as a wire prefix without the root), if this name is
    /// `zone` or under it.
    pub fn strip_zone(&self, zone: &NameKey) -> Option<&[u8]> {
        let me = self.as_bytes();
        let z = zone.as_bytes();
        if z.len() > me.len() {
            return None;
        }
        let cut = me.len() - z.len();
        if me[cut..] != *z {
            return None;
        }
        // `cut` must fall on a label boundary.
        let mut i = 0usize;
        while i < cut {
            i += 1 + usize::from(me[i]);
        }
        (i == cut).then(|| &me[..cut])
    }

    /// The name with its first label removed; `None` at the root.
    pub fn parent(&self) -> Option<NameKey> {
        let b = self.as_bytes();
        let l = usize::from(*b.first()?);
        if l == 0 {
            return None;
        }
        let mut k = NameKey::root();
        let rest = b.get(1 + l..)?;
        k.buf[..rest.len()].copy_from_slice(rest);
        k.len = rest.len() as u8;
        Some(k)
    }

    /// This name with its suffix `old` replaced by `new` (`a.old.` → `a.new.`); `None`
    /// when it is not under `old` or the result is too long.
    pub fn replace_suffix(&self, old: &NameKey, new: &NameKey) -> Option<NameKey> {
        let prefix = self.strip_zone(old)?;
        let n = new.as_bytes();
        if prefix.len() + n.len() > MAX_NAME {
            return None;
        }
        let mut k = NameKey::root();
        k.buf[..prefix.len()].copy_from_slice(prefix);
        k.buf[prefix.len()..prefix.len() + n.len()].copy_from_slice(n);
        k.len = (prefix.len() + n.len()) as u8;
        Some(k)
    }

    /// `label` + this name; `None` when too long or the label is empty or over 63 bytes.
    pub fn prepend(&self, label: &[u8]) -> Option<NameKey> {
        let l = label.len();
        if l == 0 || l > MAX_LABEL || usize::from(self.len) + 1 + l > MAX_NAME {
            return None;
        }
        let mut k = NameKey::root();
        k.buf[0] = l as u8;
        for (i, b) in label.iter().enumerate() {
            k.buf[1 + i] = b.to_ascii_lowercase();
        }
        let me = self.as_bytes();
        k.buf[1 + l..1 + l + me.len()].copy_from_slice(me);
        k.len = (1 + l + me.len()) as u8;
        Some(k)
    }
}

// === impl WireInfo ===

/// The first question of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// QNAME, lower-cased and uncompressed.
    pub name: NameKey,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The offset of the question in the message.
    pub start: usize,
    /// The offset just after it.
    pub end: usize,
}

/// The facts of an OPT pseudo-record (EDNS0, RFC 6891).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opt {
    /// The offset of the record.
    pub offset: usize,
    /// The offset just after it.
    pub end: usize,
    /// The sender's UDP payload size.
    pub udp_payload: u16,
    /// The upper eight bits of the extended RCODE.
    pub ext_rcode: u8,
    /// The EDNS version.
    pub version: u8,
    /// The DO bit.
    pub dnssec_ok: bool,
    /// The client subnet option, if present.
    pub client_subnet: Option<ClientSubnet>,
}

/// What the validation pass learnt about a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireInfo {
    /// The header.
    pub header: Header,
    /// The first question.
    pub question: Option<Question>,
    /// The offset just after the question section.
    pub question_end: usize,
    /// The OPT record.
    pub opt: Option<Opt>,
    /// The message length.
    pub len: usize,
}

impl WireInfo {
    /// The largest UDP response the sender accepts: 512 without EDNS, else its payload
    /// size (never below 512).
    pub fn client_udp_payload(&self) -> u16 {
        self.opt.map_or(512, |o| o.udp_payload.max(512))
    }
}

/// One record, as the walk found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef {
    /// Its section.
    pub section: Section,
    /// The offset of its owner name.
    pub offset: usize,
    /// TYPE.
    pub rtype: u16,
    /// CLASS.
    pub class: u16,
    /// TTL.
    pub ttl: u32,
    /// Where the TTL is (to age cached copies).
    pub ttl_offset: usize,
    /// Where the RDATA starts.
    pub rdata: usize,
    /// RDLENGTH.
    pub rdlen: usize,
}

/// Validates `msg` against `limits` and returns what a server needs to know about it.
///
/// ```
/// use flowgate_dns::{Limits, validate};
/// // A query for example.com A with ID 0x1234.
/// let q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
///           \x07example\x03com\x00\x00\x01\x00\x01";
/// let info = validate(q, &Limits::default()).unwrap();
/// assert_eq!(info.header.id, 0x1234);
/// assert_eq!(info.question.unwrap().name.to_string(), "example.com.");
/// // The same bytes with a pointer that points at itself are refused.
/// let bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01";
/// assert!(validate(bad, &Limits::default()).is_err());
/// ```
pub fn validate(msg: &[u8], limits: &Limits) -> Result<WireInfo, WireError> {
    walk(msg, limits, &mut |_| {})
}

/// Validates `msg` and lists its records (answer, authority, additional; OPT included).
pub fn records(msg: &[u8], limits: &Limits) -> Result<(WireInfo, Vec<RecordRef>), WireError> {
    let mut v = Vec::new();
    let info = walk(msg, limits, &mut |r| v.push(r))?;
    Ok((info, v))
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, WireError> {
    match msg.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(WireError::Truncated { offset: at }),
    }
}

fn u32_at(msg: &[u8], at: usize) -> Result<u32, WireError> {
    match msg.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(WireError::Truncated { offset: at }),
    }
}

/// Walks the name at `pos`; returns the offset after it (after its first pointer, or its
/// root label). When `out` is given, the uncompressed, lower-cased name is written to it.
pub(crate) fn walk_name(
    msg: &[u8],
    pos: usize,
    limits: &Limits,
    mut out: Option<&mut NameKey>,
) -> Result<usize, WireError> {
    let mut p = pos;
    let mut run_start = pos;
    let mut end = None;
    let mut total = 0usize;
    let mut pointers = 0usize;
    loop {
        let b = *msg.get(p).ok_or(WireError::Truncated { offset: p })?;
        match b & 0xc0 {
            0x00 => {
                let len = usize::from(b);
                total += 1 + len;
                if total > MAX_NAME {
                    return Err(WireError::NameTooLong { offset: pos });
                }
                if len == 0 {
                    if let Some(o) = out.as_deref_mut() {
                        o.buf[total - 1] = 0;
                        o.len = total as u8;
                    }
                    return Ok(end.unwrap_or(p + 1));
                }
                let label = msg
                    .get(p + 1..p + 1 + len)
                    .ok_or(WireError::Truncated { offset: p + 1 })?;
                if let Some(o) = out.as_deref_mut() {
                    let at = total - len;
                    o.buf[at - 1] = b;
                    for (d, s) in o.buf[at..at + len].iter_mut().zip(label) {
                        *d = s.to_ascii_lowercase();
                    }
                }
                p += 1 + len;
            }
            0xc0 => {
                let target = usize::from(u16_at(msg, p)? & 0x3fff);
                if target >= run_start || target < HEADER_LEN {
                    return Err(WireError::BadPointer { offset: p, target });
                }
                pointers += 1;
                if pointers > limits.max_pointers {
                    return Err(WireError::TooManyPointers {
                        offset: pos,
                        max: limits.max_pointers,
                    });
                }
                if end.is_none() {
                    end = Some(p + 2);
                }
                run_start = target;
                p = target;
            }
            0x40 => return Err(WireError::LabelTooLong { offset: p, len: b }),
            _ => return Err(WireError::BadLabelType { offset: p, byte: b }),
        }
    }
}

/// Checks the names inside the RDATA of the types that carry them.
fn check_rdata(
    msg: &[u8],
    rt: u16,
    start: usize,
    end: usize,
    limits: &Limits,
) -> Result<(), WireError> {
    let bad = WireError::BadRdata {
        offset: start,
        rtype: rt,
    };
    // (fixed bytes before the names, number of names, fixed bytes after them)
    let (pre, names, post) = match rt {
        rtype::NS | rtype::CNAME | rtype::PTR | rtype::DNAME => (0, 1, 0),
        rtype::MX => (2, 1, 0),
        rtype::SRV => (6, 1, 0),
        rtype::SOA => (0, 2, 20),
        rtype::A if end - start != 4 => return Err(bad),
        rtype::AAAA if end - start != 16 => return Err(bad),
        _ => return Ok(()),
    };
    let mut p = start + pre;
    if p > end {
        return Err(bad);
    }
    for _ in 0..names {
        p = walk_name(msg, p, limits, None)?;
        if p > end {
            return Err(bad);
        }
    }
    if p + post != end {
        return Err(bad);
    }
    Ok(())
}

fn walk(
    msg: &[u8],
    limits: &Limits,
    visit: &mut dyn FnMut(RecordRef),
) -> Result<WireInfo, WireError> {
    let len = msg.len();
    if len > limits.max_message {
        return Err(WireError::TooLong {
            len,
            max: limits.max_message,
        });
    }
    let header = Header::read(msg).ok_or(WireError::TooShort { len })?;
    if header.qdcount > limits.max_questions {
        return Err(WireError::TooManyQuestions {
            count: header.qdcount,
            max: limits.max_questions,
        });
    }
    let nrec =
        usize::from(header.ancount) + usize::from(header.nscount) + usize::from(header.arcount);
    if nrec > limits.max_records {
        return Err(WireError::TooManyRecords {
            count: nrec,
            max: limits.max_records,
        });
    }
    let needed = HEADER_LEN + 5 * usize::from(header.qdcount) + 11 * nrec;
    if needed > len {
        return Err(WireError::CountsExceedMessage { needed, len });
    }
    let mut p = HEADER_LEN;
    let mut question = None;
    for i in 0..header.qdcount {
        let start = p;
        let mut name = NameKey::root();
        p = walk_name(msg, p, limits, (i == 0).then_some(&mut name))?;
        let qtype = u16_at(msg, p)?;
        let qclass = u16_at(msg, p + 2)?;
        p += 4;
        if i == 0 {
            question = Some(Question {
                name,
                qtype,
                qclass,
                start,
                end: p,
            });
        }
    }
    let question_end = p;
    let mut opt = None;
    let sections = [
        (Section::Answer, header.ancount),
        (Section::Authority, header.nscount),
        (Section::Additional, header.arcount),
    ];
    for (section, count) in sections {
        for _ in 0..count {
            let offset = p;
            p = walk_name(msg, p, limits, None)?;
            let rt = u16_at(msg, p)?;
            let class = u16_at(msg, p + 2)?;
            let ttl = u32_at(msg, p + 4)?;
            let rdlen = usize::from(u16_at(msg, p + 8)?);
            let rdata = p + 10;
            let end = rdata + rdlen;
            if end > len {
                return Err(WireError::Truncated { offset: len });
            }
            if rt == rtype::OPT {
                if section != Section::Additional || opt.is_some() || msg[offset] != 0 {
                    return Err(WireError::BadOpt { offset });
                }
                opt = Some(read_opt(msg, offset, class, ttl, rdata, end)?);
            } else {
                check_rdata(msg, rt, rdata, end, limits)?;
            }
            visit(RecordRef {
                section,
                offset,
                rtype: rt,
                class,
                ttl,
                ttl_offset: p + 4,
                rdata,
                rdlen,
            });
            p = end;
        }
    }
    if p != len {
        return Err(WireError::TrailingBytes {
            offset: p,
            len: len - p,
        });
    }
    Ok(WireInfo {
        header,
        question,
        question_end,
        opt,
        len,
    })
}

fn read_opt(
    msg: &[u8],
    offset: usize,
    class: u16,
    ttl: u32,
    rdata: usize,
    end: usize,
) -> Result<Opt, WireError> {
    let mut client_subnet = None;
    let mut p = rdata;
    while p < end {
        let code = u16_at(msg, p)?;
        let olen = usize::from(u16_at(msg, p + 2)?);
        let data = msg
            .get(p + 4..p + 4 + olen)
            .filter(|_| p + 4 + olen <= end)
            .ok_or(WireError::BadOption { offset: p, code })?;
        if code == OPTION_CLIENT_SUBNET {
            client_subnet =
                Some(ClientSubnet::parse(data).ok_or(WireError::BadOption { offset: p, code })?);
        }
        p += 4 + olen;
    }
    Ok(Opt {
        offset,
        end,
        udp_payload: class,
        ext_rcode: (ttl >> 24) as u8,
        version: (ttl >> 16) as u8,
        dnssec_ok: ttl & 0x8000 != 0,
        client_subnet,
    })
}
