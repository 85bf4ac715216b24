//! Building responses straight on the wire: the fast path for authoritative answers,
//! error responses, and truncation.
//!
//! A response starts from the query: the ID, opcode, RD and CD bits and the question bytes
//! are copied as they came (so the client's 0x20 case mix survives); answers that own the
//! question's name point at it (`0xC00C`). The OPT record is echoed when the query had one.

use crate::edns::{ClientSubnet, write_opt};
use crate::types::{class, rcode};
use crate::wire::{HEADER_LEN, Header, Limits, WireInfo, flags, validate};

/// The owner of a record being written.
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    /// The question's name (written as a pointer to it).
    Question,
    /// Another name, in uncompressed wire form.
    Wire(&'a [u8]),
}

/// Writes a response to a validated query.
///
/// ```
/// use flowgate_dns::{Limits, ResponseWriter, Owner, validate, types::{rcode, rtype}};
/// let q = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x00\x00\x01\x00\x01";
/// let info = validate(q, &Limits::default()).unwrap();
/// let mut w = ResponseWriter::new(q, &info, rcode::NOERROR, true);
/// w.answer(Owner::Question, rtype::A, 30, &[10, 0, 0, 1]);
/// let resp = w.finish(None);
/// let r = validate(&resp, &Limits::default()).unwrap();
/// assert_eq!((r.header.id, r.header.ancount), (7, 1));
/// ```
#[derive(Debug)]
pub struct ResponseWriter {
    buf: Vec<u8>,
    counts: [u16; 3],
    section: usize,
    echo_opt: Option<(u16, bool)>,
    ecs: Option<ClientSubnet>,
}

impl ResponseWriter {
    /// A response to `query` with response code `rcode` (low four bits) and the AA bit.
    pub fn new(query: &[u8], info: &WireInfo, rcode: u8, authoritative: bool) -> Self {
        let mut buf = Vec::with_capacity(512);
        let q = info.header;
        let mut f = flags::QR | (q.flags & (flags::OPCODE_MASK | flags::RD | flags::CD));
        if authoritative {
            f |= flags::AA;
        }
        f |= u16::from(rcode & 0x0f);
        let qd = u16::from(info.question.is_some());
        let h = Header {
            id: q.id,
            flags: f,
            qdcount: qd,
            ..Header::default()
        };
        buf.resize(HEADER_LEN, 0);
        h.write(&mut buf);
        if let Some(question) = &info.question
            && let Some(b) = query.get(question.start..question.end)
        {
            buf.extend_from_slice(b);
        }
        ResponseWriter {
            buf,
            counts: [0; 3],
            section: 0,
            echo_opt: info.opt.map(|o| (o.udp_payload, o.dnssec_ok)),
            ecs: None,
        }
    }

    /// Sets RA (recursion available).
    pub fn recursion_available(&mut self, ra: bool) {
        let mut f = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        if ra {
            f |= flags::RA;
        } else {
            f &= !flags::RA;
        }
        self.buf[2..4].copy_from_slice(&f.to_be_bytes());
    }

    /// Echoes a client subnet option with this scope in the OPT record (RFC 7871 §7.2.1).
    pub fn client_subnet_scope(&mut self, ecs: ClientSubnet, scope_prefix: u8) {
        self.ecs = Some(ClientSubnet {
            scope_prefix,
            ..ecs
        });
    }

    fn record(&mut self, sec: usize, owner: Owner<'_>, rt: u16, ttl: u32, rdata: &[u8]) {
        // Sections are written in order; a record for an earlier section is ignored.
        if sec < self.section {
            return;
        }
        self.section = sec;
        match owner {
            Owner::Question => self.buf.extend_from_slice(&[0xc0, 0x0c]),
            Owner::Wire(n) => self.buf.extend_from_slice(n),
        }
        self.buf.extend_from_slice(&rt.to_be_bytes());
        self.buf.extend_from_slice(&class::IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        self.buf
            .extend_from_slice(&(rdata.len().min(65_535) as u16).to_be_bytes());
        self.buf.extend_from_slice(rdata);
        self.counts[sec] = self.counts[sec].saturating_add(1);
    }

    /// Adds an answer record of class IN.
    pub fn answer(&mut self, owner: Owner<'_>, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.record(0, owner, rtype, ttl, rdata);
    }

    /// Adds an authority record of class IN.
    pub fn authority(&mut self, owner: Owner<'_>, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.record(1, owner, rtype, ttl, rdata);
    }

    /// Adds an additional record of class IN.
    pub fn additional(&mut self, owner: Owner<'_>, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.record(2, owner, rtype, ttl, rdata);
    }

    /// Records written so far: answer, authority, additional (OPT not counted).
    pub fn counts(&self) -> [u16; 3] {
        self.counts
    }

    /// The length so far (without the OPT record `finish` may add).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= HEADER_LEN
    }

    /// Finishes the message: the OPT record (when the query had one) advertising
    /// `payload` (default: 1232), and the counts.
    pub fn finish(mut self, payload: Option<u16>) -> Vec<u8> {
        let mut ar = self.counts[2];
        if let Some((_, dnssec_ok)) = self.echo_opt {
            write_opt(
                &mut self.buf,
                payload.unwrap_or(crate::edns::DEFAULT_PAYLOAD),
                dnssec_ok,
                self.ecs.as_ref(),
            );
            ar = ar.saturating_add(1);
        }
        self.buf[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        self.buf[10..12].copy_from_slice(&ar.to_be_bytes());
        self.buf
    }
}

/// The answer to bytes that are not a valid query: FORMERR with the sender's ID, or `None`
/// when nothing should be sent (shorter than a header, or a response — answering those
/// would let two servers loop).
///
/// ```
/// let junk = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c";
/// let r = flowgate_dns::formerr(junk).unwrap();
/// assert_eq!(&r[..4], b"\xab\xcd\x81\x01"); // same ID, QR|RD, FORMERR
/// assert!(flowgate_dns::formerr(b"\xab\xcd").is_none());
/// ```
pub fn formerr(msg: &[u8]) -> Option<Vec<u8>> {
    error_response(msg, rcode::FORMERR)
}

/// A bare response (no question, no records) to the header in `msg`, with `code`; `None`
/// for a message shorter than a header or one that is already a response.
pub fn error_response(msg: &[u8], code: u8) -> Option<Vec<u8>> {
    let q = Header::read(msg)?;
    if q.is_response() {
        return None;
    }
    let h = Header {
        id: q.id,
        flags: flags::QR
            | (q.flags & (flags::OPCODE_MASK | flags::RD | flags::CD))
            | u16::from(code & 0x0f),
        ..Header::default()
    };
    let mut out = vec![0u8; HEADER_LEN];
    h.write(&mut out);
    Some(out)
}

/// A response to a valid query carrying only the question (and the OPT record when the
/// query had one): REFUSED, SERVFAIL, NOTIMP, or NXDOMAIN without an SOA.
pub fn answer_code(query: &[u8], info: &WireInfo, code: u8, ra: bool) -> Vec<u8> {
    let mut w = ResponseWriter::new(query, info, code, false);
    w.recursion_available(ra);
    w.finish(None)
}

/// Makes `response` fit in `max` bytes: unchanged if it does, else a TC=1 copy holding the
/// header, the question and the OPT record (when they fit), so the client retries over TCP
/// (RFC 1035 §4.2.1, RFC 7766). A response that does not validate is cut to its header.
///
/// ```
/// use flowgate_dns::{Limits, ResponseWriter, Owner, truncate, validate, types::{rcode, rtype}};
/// let q = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x00\x00\x01\x00\x01";
/// let info = validate(q, &Limits::default()).unwrap();
/// let mut w = ResponseWriter::new(q, &info, rcode::NOERROR, true);
/// for i in 0..40u8 { w.answer(Owner::Question, rtype::A, 30, &[10, 0, 0, i]); }
/// let big = w.finish(None);
/// assert!(big.len() > 512);
/// let small = truncate(&big, 512);
/// let r = validate(&small, &Limits::default()).unwrap();
/// assert!(r.header.truncated());
/// assert_eq!((r.header.qdcount, r.header.ancount), (1, 0));
/// ```
pub fn truncate(response: &[u8], max: usize) -> Vec<u8> {
    if response.len() <= max {
        return response.to_vec();
    }
    let limits = Limits {
        max_records: usize::from(u16::MAX) * 3,
        max_questions: u16::MAX,
        ..Limits::default()
    };
    let Some(mut h) = Header::read(response) else {
        return Vec::new();
    };
    h.flags |= flags::TC;
    h.ancount = 0;
    h.nscount = 0;
    h.arcount = 0;
    let mut out = vec![0u8; HEADER_LEN];
    if let Ok(info) = validate(response, &limits)
        && info.question_end <= max
    {
        out.extend_from_slice(&response[HEADER_LEN..info.question_end]);
        if let Some(opt) = info.opt
            && out.len() + (opt.end - opt.offset) <= max
        {
            out.extend_from_slice(&response[opt.offset..opt.end]);
            h.arcount = 1;
        }
    } else {
        h.qdcount = 0;
    }
    h.write(&mut out);
    out
}

/// Sets the ID of a message in place.
pub fn set_id(msg: &mut [u8], id: u16) {
    if let Some(b) = msg.get_mut(..2) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}
