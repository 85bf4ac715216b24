//! The PROXY protocol (HAProxy's, versions 1 and 2): carrying the client's address across a
//! proxy hop.
//!
//! [`decode`] is a sans-IO decoder with hard limits; [`encode_v1`] / [`encode_v2`] write
//! headers. [`AcceptProxyProtocol`] reads a header at the start of a stream and records the
//! addresses in the context (`peer` = the original client, `original_dst` = where it
//! connected); [`ConnectProxyProtocol`] writes one in front of what goes upstream.
//!
//! ```
//! use flowgate_pipeline::feed::feed;
//! use flowgate_filters_net::proxy_protocol::{decode, encode_v2, Command};
//! let src = "192.0.2.1:40000".parse().unwrap();
//! let dst = "198.51.100.7:443".parse().unwrap();
//! let bytes = encode_v2(Some((src, dst)));
//! let (h, used) = decode(&bytes, 4096).unwrap().unwrap();
//! assert_eq!((h.version, h.command, h.source, h.destination), (2, Command::Proxy, Some(src), Some(dst)));
//! assert_eq!(used, bytes.len());
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Event, Filter, Side, StreamError, Transform,
};
use serde::{Deserialize, Serialize};

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
pub const V1_MAX: usize = 107;

/// Whether the header carries addresses (`Proxy`) or is a health check of the proxy itself
/// (`Local`: use the connection's own addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Addresses of the proxied connection follow.
    Proxy,
    /// The proxy speaks for itself.
    Local,
}

/// A decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// PROXY or LOCAL.
    pub command: Command,
    /// The original client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
    /// Version 2 TLVs (type, value).
    pub tlvs: Vec<(u8, Bytes)>,
}

/// Why a header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The stream does not start with a PROXY header.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A version 1 line is malformed.
    #[error("malformed PROXY v1 header: {0}")]
    BadV1(&'static str),
    /// A version 2 header is malformed.
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
    /// The header is longer than allowed.
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    /// The header's version is not accepted by this listener.
    #[error("PROXY protocol version {0} is not accepted here")]
    VersionRefused(u8),
}

/// Decodes a header at the start of `buf`. `Ok(None)`: need more bytes. `Ok(Some((h, n)))`:
/// the header took `n` bytes. Never reads past `max` bytes (version 2 headers longer than
/// `max` are refused).
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Header, usize)>, ProxyError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] && !buf.is_empty() {
        if buf.len() < 16 {
            return Ok(None);
        }
        return decode_v2(buf, max);
    }
    let p_len = buf.len().min(6);
    if buf[..p_len] == b"PROXY "[..p_len] {
        return decode_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn decode_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::TooLong(V1_MAX));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&window[..end]).map_err(|_| ProxyError::BadV1("not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let proto = parts.next().ok_or(ProxyError::BadV1("no protocol"))?;
    let used = end + 2;
    if proto == "UNKNOWN" {
        let h = Header {
            version: 1,
            command: Command::Proxy,
            source: None,
            destination: None,
            tlvs: vec![],
        };
        return Ok(Some((h, used)));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(ProxyError::BadV1("expected 4 fields after the protocol"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = s.parse().map_err(|_| ProxyError::BadV1("bad address"))?;
        match (proto, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            ("TCP4" | "TCP6", _) => Err(ProxyError::BadV1("address family does not match")),
            _ => Err(ProxyError::BadV1("protocol is not TCP4, TCP6 or UNKNOWN")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.len() > 1 && s.starts_with('0') {
            return Err(ProxyError::BadV1("port with a leading zero"));
        }
        s.parse().map_err(|_| ProxyError::BadV1("bad port"))
    };
    let h = Header {
        version: 1,
        command: Command::Proxy,
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
        tlvs: vec![],
    };
    Ok(Some((h, used)))
}

fn decode_v2(buf: &[u8], max: usize) -> Result<Option<(Header, usize)>, ProxyError> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2("version is not 2"));
    }
    let command = match ver_cmd & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Err(ProxyError::BadV2("unknown command")),
    };
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + len;
    if total > max {
        return Err(ProxyError::TooLong(max));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let (addrs, rest): ((Option<SocketAddr>, Option<SocketAddr>), &[u8]) = match fam >> 4 {
        0 => ((None, None), body),
        1 => {
            if body.len() < 12 {
                return Err(ProxyError::BadV2("IPv4 address block too short"));
            }
            let s = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let d = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            let sp = u16::from_be_bytes([body[8], body[9]]);
            let dp = u16::from_be_bytes([body[10], body[11]]);
            (
                (
                    Some(SocketAddr::new(s.into(), sp)),
                    Some(SocketAddr::new(d.into(), dp)),
                ),
                &body[12..],
            )
        }
        2 => {
            if body.len() < 36 {
                return Err(ProxyError::BadV2("IPv6 address block too short"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[0..16]);
            d.copy_from_slice(&body[16..32]);
            let sp = u16::from_be_bytes([body[32], body[33]]);
            let dp = u16::from_be_bytes([body[34], body[35]]);
            (
                (
                    Some(SocketAddr::new(Ipv6Addr::from(s).into(), sp)),
                    Some(SocketAddr::new(Ipv6Addr::from(d).into(), dp)),
                ),
                &body[36..],
            )
        }
        // AF_UNIX: addresses we cannot use; keep the TLVs after the 216-byte block.
        3 => ((None, None), body.get(216..).unwrap_or(&[])),
        _ => return Err(ProxyError::BadV2("unknown address family")),
    };
    let mut tlvs = Vec::new();
    let mut t = rest;
    while !t.is_empty() {
        if t.len() < 3 {
            return Err(ProxyError::BadV2("truncated TLV"));
        }
        let ty = t[0];
        let l = u16::from_be_bytes([t[1], t[2]]) as usize;
        let v = t
            .get(3..3 + l)
            .ok_or(ProxyError::BadV2("TLV longer than the header"))?;
        tlvs.push((ty, Bytes::copy_from_slice(v)));
        t = &t[3 + l..];
    }
    let (source, destination) = if command == Command::Local {
        (None, None)
    } else {
        addrs
    };
    Ok(Some((
        Header {
            version: 2,
            command,
            source,
            destination,
            tlvs,
        },
        total,
    )))
}

/// Writes a version 1 header (`PROXY UNKNOWN` when the addresses are missing or of
/// different families).
pub fn encode_v1(addrs: Option<(SocketAddr, SocketAddr)>) -> Bytes {
    let line = match addrs {
        Some((s, d)) if s.is_ipv4() && d.is_ipv4() => {
            format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        Some((s, d)) if s.is_ipv6() && d.is_ipv6() => {
            format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        _ => "PROXY UNKNOWN\r\n".to_string(),
    };
    Bytes::from(line)
}

/// Writes a version 2 header (a LOCAL header when the addresses are missing or of
/// different families).
pub fn encode_v2(addrs: Option<(SocketAddr, SocketAddr)>) -> Bytes {
    let mut b = BytesMut::with_capacity(52);
    b.put_slice(&V2_SIGNATURE);
    match addrs {
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            b.put_u8(0x21);
            b.put_u8(0x11);
            b.put_u16(12);
            b.put_slice(&s.ip().octets());
            b.put_slice(&d.ip().octets());
            b.put_u16(s.port());
            b.put_u16(d.port());
        }
        Some((SocketAddr::V6(s), SocketAddr::V6(d))) => {
            b.put_u8(0x21);
            b.put_u8(0x21);
            b.put_u16(36);
            b.put_slice(&s.ip().octets());
            b.put_slice(&d.ip().octets());
            b.put_u16(s.port());
            b.put_u16(d.port());
        }
        _ => {
            b.put_u8(0x20);
            b.put_u8(0x00);
            b.put_u16(0);
        }
    }
    b.freeze()
}

// === AcceptProxyProtocol ===

/// Configuration of [`AcceptProxyProtocol`] (`accept-proxy-protocol:` in YAML).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptProxyProtocolConfig {
    /// Versions accepted. Default `[1, 2]`.
    #[serde(default = "default_versions")]
    pub versions: Vec<u8>,
    /// Whether a stream without a header is refused (true, the default) or passed on as is.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub required: bool,
    /// The longest header accepted, in bytes. Default 4096.
    #[serde(default = "default_max")]
    pub max_header: usize,
}

fn default_versions() -> Vec<u8> {
    vec![1, 2]
}
fn default_max() -> usize {
    4096
}

impl Default for AcceptProxyProtocolConfig {
    fn default() -> Self {
        AcceptProxyProtocolConfig {
            versions: default_versions(),
            required: true,
            max_header: default_max(),
        }
    }
}

impl FilterConfig for AcceptProxyProtocolConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.versions.is_empty() || self.versions.iter().any(|v| *v != 1 && *v != 2) {
            return Err(ConfigError::new("versions", "list 1, 2 or both"));
        }
        if self.max_header < 16 || self.max_header > 65_551 {
            return Err(ConfigError::new(
                "max_header",
                "must be between 16 and 65551",
            ));
        }
        Ok(Arc::new(AcceptProxyProtocol { config: *self }))
    }
}

/// Reads a PROXY protocol header at the start of the stream, records the client's address
/// as the context's `peer` (and the destination as `original_dst`), and passes the rest of
/// the stream on. A malformed or missing (when required) header ends the stream with a
/// `Protocol` error; nothing after it is read.
pub struct AcceptProxyProtocol {
    config: AcceptProxyProtocolConfig,
}

impl AcceptProxyProtocol {
    /// Accepts versions 1 and 2 and requires a header.
    pub fn new() -> Self {
        AcceptProxyProtocol {
            config: AcceptProxyProtocolConfig::default(),
        }
    }
}

impl Default for AcceptProxyProtocol {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for AcceptProxyProtocol {
    fn describe(&self) -> Description {
        Description::filter("accept-proxy-protocol").options(&self.config)
    }

    fn transform(&self, cx: &Context) -> Option<Box<dyn Transform>> {
        Some(Box::new(AcceptState {
            cx: cx.clone(),
            config: self.config.clone(),
            buf: Some(BytesMut::new()),
        }))
    }
}

struct AcceptState {
    cx: Context,
    config: AcceptProxyProtocolConfig,
    /// Bytes seen before the header is complete; `None` once it is parsed.
    buf: Option<BytesMut>,
}

fn refuse(e: ProxyError) -> Event {
    Event::StreamEnd(Some(
        StreamError::new(ErrorKind::Protocol, Side::Downstream).with_cause(e),
    ))
}

impl Transform for AcceptState {
    fn on_event(&mut self, ev: Event, out: &mut dyn FnMut(Event)) {
        let Some(buf) = &mut self.buf else {
            return out(ev);
        };
        match ev {
            Event::Data(b) => {
                buf.extend_from_slice(&b);
                match decode(buf, self.config.max_header) {
                    Ok(None) => {}
                    Ok(Some((h, used))) => {
                        if !self.config.versions.contains(&h.version) {
                            self.buf = None;
                            return out(refuse(ProxyError::VersionRefused(h.version)));
                        }
                        if h.command == Command::Proxy {
                            self.cx.update_conn(|c| {
                                if h.source.is_some() {
                                    c.peer = h.source;
                                }
                                if h.destination.is_some() {
                                    c.original_dst = h.destination;
                                }
                            });
                        }
                        let rest = buf.split_off(used).freeze();
                        self.buf = None;
                        if !rest.is_empty() {
                            out(Event::Data(rest));
                        }
                    }
                    Err(ProxyError::NotProxy) if !self.config.required => {
                        let all = buf.split().freeze();
                        self.buf = None;
                        out(Event::Data(all));
                    }
                    Err(e) => {
                        self.buf = None;
                        out(refuse(e));
                    }
                }
            }
            Event::StreamEnd(e) => {
                self.buf = None;
                out(Event::StreamEnd(e));
            }
            // Messages cannot come before the header; drop them.
            _ => {}
        }
    }
}

// === ConnectProxyProtocol ===

/// Configuration of [`ConnectProxyProtocol`] (`connect-proxy-protocol:` in YAML).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectProxyProtocolConfig {
    /// 1 or 2. Default 2.
    #[serde(default = "default_version")]
    pub version: u8,
}

fn default_version() -> u8 {
    2
}

impl FilterConfig for ConnectProxyProtocolConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.version != 1 && self.version != 2 {
            return Err(ConfigError::new("version", "must be 1 or 2"));
        }
        Ok(Arc::new(ConnectProxyProtocol {
            version: self.version,
        }))
    }
}

/// Puts a PROXY protocol header in front of the stream (place it just before `connect`):
/// source = the context's `peer`, destination = its `original_dst`, else its `local`
/// address.
pub struct ConnectProxyProtocol {
    version: u8,
}

impl ConnectProxyProtocol {
    /// Writes headers of `version` (1 or 2; anything else means 2).
    pub fn new(version: u8) -> Self {
        ConnectProxyProtocol {
            version: if version == 1 { 1 } else { 2 },
        }
    }
}

impl Filter for ConnectProxyProtocol {
    fn describe(&self) -> Description {
        Description::filter("connect-proxy-protocol")
            .options(serde_json::json!({ "version": self.version }))
    }

    fn transform(&self, cx: &Context) -> Option<Box<dyn Transform>> {
        // The header is made when the first event passes, not now: a filter earlier in the
        // pipeline (AcceptProxyProtocol) may still change the addresses.
        let cx = cx.clone();
        let version = self.version;
        let mut sent = false;
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            if !sent {
                sent = true;
                let conn = cx.conn();
                let addrs = conn.peer.zip(conn.original_dst.or(conn.local));
                out(Event::Data(if version == 1 {
                    encode_v1(addrs)
                } else {
                    encode_v2(addrs)
                }));
            }
            out(ev)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_pipeline::{ConnInfo, testing};

    #[test]
    fn v1_vectors() {
        let (h, n) = decode(
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET",
            4096,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, 47);
        assert_eq!(h.source, Some("192.168.0.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("192.168.0.11:443".parse().unwrap()));
        let (h, _) = decode(b"PROXY TCP6 ::1 ::2 1 2\r\n", 4096)
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[::1]:1".parse().unwrap()));
        let (h, _) = decode(b"PROXY UNKNOWN\r\n", 4096).unwrap().unwrap();
        assert_eq!(h.source, None);
        assert_eq!(decode(b"PROXY TCP4 1.2.3.4", 4096), Ok(None));
        assert_eq!(decode(b"PRO", 4096), Ok(None));
        assert!(matches!(
            decode(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", 4096),
            Err(ProxyError::BadV1(_))
        ));
        assert!(matches!(
            decode(b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", 4096),
            Err(ProxyError::BadV1(_))
        ));
        assert!(matches!(
            decode(&[b'P'; 200], 4096),
            Err(ProxyError::NotProxy)
        ));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        assert_eq!(decode(&long, 4096), Err(ProxyError::TooLong(V1_MAX)));
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n", 4096),
            Err(ProxyError::NotProxy)
        );
        let s = "10.0.0.1:1000".parse().unwrap();
        let d = "10.0.0.2:80".parse().unwrap();
        assert_eq!(
            &encode_v1(Some((s, d)))[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n"
        );
    }

    #[test]
    fn v2_vectors_and_limits() {
        let s: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let d: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let b = encode_v2(Some((s, d)));
        assert_eq!(b.len(), 16 + 36);
        let (h, n) = decode(&b, 4096).unwrap().unwrap();
        assert_eq!((h.source, h.destination, n), (Some(s), Some(d), 52));
        // Every prefix is "need more", never an error.
        for i in 1..b.len() {
            assert_eq!(decode(&b[..i], 4096), Ok(None), "prefix {i}");
        }
        // LOCAL.
        let (h, _) = decode(&encode_v2(None), 4096).unwrap().unwrap();
        assert_eq!((h.command, h.source), (Command::Local, None));
        // A TLV and an oversized length.
        let mut v = encode_v2(Some((
            "1.1.1.1:1".parse().unwrap(),
            "2.2.2.2:2".parse().unwrap(),
        )))
        .to_vec();
        v[15] += 5;
        v.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']);
        let (h, _) = decode(&v, 4096).unwrap().unwrap();
        assert_eq!(h.tlvs, vec![(4u8, Bytes::from_static(b"hi"))]);
        let mut big = v.clone();
        big[14] = 0xff;
        assert_eq!(decode(&big, 4096), Err(ProxyError::TooLong(4096)));
        let mut bad_tlv = v.clone();
        bad_tlv[15] -= 1;
        bad_tlv.pop();
        assert!(matches!(decode(&bad_tlv, 4096), Err(ProxyError::BadV2(_))));
        let mut bad_ver = v;
        bad_ver[12] = 0x31;
        assert!(matches!(decode(&bad_ver, 4096), Err(ProxyError::BadV2(_))));
    }

    #[test]
    fn accept_records_addresses_and_passes_the_rest() {
        let cx = Context::with_conn(ConnInfo {
            peer: Some("127.0.0.1:9".parse().unwrap()),
            ..Default::default()
        });
        let header = encode_v2(Some((
            "203.0.113.9:4444".parse().unwrap(),
            "10.1.1.1:80".parse().unwrap(),
        )));
        let (a, b) = header.split_at(7);
        let input = vec![
            Event::Data(Bytes::copy_from_slice(a)),
            Event::Data(Bytes::copy_from_slice(b)),
            "payload".into(),
            Event::END,
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(testing::run_with(&AcceptProxyProtocol::new(), input, &cx));
        assert_eq!(testing::data_of(&out), b"payload");
        assert_eq!(cx.conn().peer, Some("203.0.113.9:4444".parse().unwrap()));
        assert_eq!(cx.conn().original_dst, Some("10.1.1.1:80".parse().unwrap()));
    }

    #[test]
    fn accept_refuses_garbage_and_wrong_versions() {
        let out = testing::run_blocking(
            &AcceptProxyProtocol::new(),
            vec!["GET / HTTP/1.1\r\n".into(), "more".into(), Event::END],
        );
        assert_eq!(testing::kinds_of(&out), ["StreamEnd(error)"]);
        let only2 = AcceptProxyProtocol {
            config: AcceptProxyProtocolConfig {
                versions: vec![2],
                ..Default::default()
            },
        };
        let out = testing::run_blocking(&only2, vec!["PROXY UNKNOWN\r\n".into(), Event::END]);
        assert_eq!(testing::kinds_of(&out), ["StreamEnd(error)"]);
        let optional = AcceptProxyProtocol {
            config: AcceptProxyProtocolConfig {
                required: false,
                ..Default::default()
            },
        };
        let out = testing::run_blocking(&optional, vec!["GET /".into(), Event::END]);
        assert_eq!(testing::data_of(&out), b"GET /");
    }

    #[test]
    fn connect_writes_the_header_first() {
        let cx = Context::with_conn(ConnInfo {
            peer: Some("192.0.2.5:1234".parse().unwrap()),
            local: Some("192.0.2.1:80".parse().unwrap()),
            ..Default::default()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(testing::run_with(
            &ConnectProxyProtocol::new(1),
            vec!["x".into(), Event::END],
            &cx,
        ));
        assert_eq!(
            testing::data_of(&out),
            b"PROXY TCP4 192.0.2.5 192.0.2.1 1234 80\r\nx"
        );
    }
}
