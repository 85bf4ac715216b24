//! Parsing message heads with `httparse`, strictly, into `http` types without copying
//! header values.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, request, response,
};

use super::{H1Error, Limits};

/// Header slots parsed on the stack; `Limits::max_headers` is capped to this.
pub(crate) const MAX_HEADERS: usize = 128;

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
    /// After this message the connection carries raw bytes (CONNECT, 101 Switching Protocols).
    Tunnel,
}

/// Finds the end of a head (just after its empty line) in `buf`, scanning only bytes not
/// scanned before: feeding a head one byte at a time costs linear, not quadratic, time.
/// Every LF must follow a CR (no bare LF). `scanned` keeps the position between calls; it
/// is reset when a head is found.
pub(crate) fn find_end(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, H1Error> {
    let start = (*scanned).min(buf.len());
    for i in memchr::memchr_iter(b'\n', &buf[start..]).map(|i| i + start) {
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(H1Error::BareLf);
        }
        // An empty line: this LF ends "\r\n\r\n" (i >= 3 and the line before is empty).
        if i >= 3 && buf[i - 2] == b'\n' {
            *scanned = 0;
            return Ok(Some(i + 1));
        }
    }
    // Resume at the last byte: a CR there may be followed by the LF we look for.
    *scanned = buf.len().saturating_sub(1).max(start);
    Ok(None)
}

fn map_err(e: httparse::Error) -> H1Error {
    match e {
        httparse::Error::TooManyHeaders => H1Error::TooManyHeaders(MAX_HEADERS),
        httparse::Error::Version => H1Error::Version,
        httparse::Error::HeaderName => H1Error::BadHead("invalid header field name"),
        httparse::Error::HeaderValue => H1Error::BadHead("invalid header field value"),
        httparse::Error::NewLine => H1Error::BadHead("invalid line ending"),
        httparse::Error::Status => H1Error::BadHead("invalid status"),
        httparse::Error::Token => H1Error::BadHead("invalid token"),
    }
}

/// Builds a header map from parsed fields whose slices point into `head`, sharing it.
pub(crate) fn header_map(
    head: &Bytes,
    fields: &[httparse::Header<'_>],
    limits: &Limits,
) -> Result<HeaderMap, H1Error> {
    Ok(fields_of(head, fields, limits)?.map)
}

/// A head's fields, and how often the ones framing and routing depend on occur (counted
/// while the map is built, so the common head needs no lookups for them).
struct Fields {
    map: HeaderMap,
    transfer_encoding: usize,
    content_length: usize,
    host: usize,
}

fn fields_of(
    head: &Bytes,
    fields: &[httparse::Header<'_>],
    limits: &Limits,
) -> Result<Fields, H1Error> {
    if fields.len() > limits.max_headers {
        return Err(H1Error::TooManyHeaders(limits.max_headers));
    }
    let mut out = Fields {
        map: HeaderMap::with_capacity(fields.len()),
        transfer_encoding: 0,
        content_length: 0,
        host: 0,
    };
    for f in fields {
        if f.name.len() + f.value.len() + 4 > limits.max_line {
            return Err(H1Error::LineTooLong(limits.max_line));
        }
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| H1Error::BadHead("invalid header field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value))
            .map_err(|_| H1Error::BadHead("invalid header field value"))?;
        if name == TRANSFER_ENCODING {
            out.transfer_encoding += 1;
        } else if name == CONTENT_LENGTH {
            out.content_length += 1;
        } else if name == HOST {
            out.host += 1;
        }
        out.map.append(name, value);
    }
    Ok(out)
}

/// Splits a complete head (up to and including its empty line) off `buf`, or says why not.
fn take_head(
    buf: &mut BytesMut,
    limits: &Limits,
    scanned: &mut usize,
) -> Result<Option<Bytes>, H1Error> {
    match find_end(buf, scanned)? {
        // The head is frozen first: the URI and the header values are slices of it.
        Some(end) if end <= limits.max_head_bytes => Ok(Some(buf.split_to(end).freeze())),
        Some(_) => Err(H1Error::HeadTooLarge(limits.max_head_bytes)),
        None if buf.len() > limits.max_head_bytes => {
            Err(H1Error::HeadTooLarge(limits.max_head_bytes))
        }
        None => Ok(None),
    }
}

fn complete(r: Result<httparse::Status<usize>, httparse::Error>) -> Result<(), H1Error> {
    match r {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        // Cannot happen: the head ends with its empty line.
        Ok(httparse::Status::Partial) => Err(H1Error::BadHead("incomplete head")),
        Err(e) => Err(map_err(e)),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn version(v: Option<u8>) -> Result<Version, H1Error> {
    match v {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(H1Error::Version),
    }
}

/// Content-Length and Transfer-Encoding rules shared by requests and responses
/// (RFC 9112 §6): `Some(framing)` when either is present. Requests accept only a single
/// `chunked` coding; responses accept codings before a final `chunked`, and are read until
/// close when `chunked` is not final.
///
/// The framing fields are left in their canonical spelling, so what a proxy forwards is
/// what it parsed, never the sender's spelling (a lenient next hop might read
/// `Content-Length: 0300` as octal, or skip a `Transfer-Encoding: chunked ,x` it cannot
/// parse): one `Content-Length` in decimal without leading zeros, and one
/// `Transfer-Encoding` listing the codings in lower case, separated by `", "`.
fn length_or_chunked(
    fields: &mut Fields,
    v: Version,
    limits: &Limits,
    request: bool,
) -> Result<Option<Framing>, H1Error> {
    if fields.transfer_encoding == 0 && fields.content_length == 0 {
        return Ok(None);
    }
    if fields.transfer_encoding == 0 {
        return canonical_content_length(&mut fields.map, limits.max_body).map(|n| {
            n.map(|n| {
                if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                }
            })
        });
    }
    let headers = &mut fields.map;
    if headers.contains_key(CONTENT_LENGTH) {
        return Err(H1Error::LengthAndChunked);
    }
    if v == Version::HTTP_10 {
        return Err(H1Error::BadTransferEncoding);
    }
    // Over all Transfer-Encoding fields: `chunked` at most once, and last.
    let (mut codings, mut chunked_at) = (0usize, None);
    let mut canonical = true;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| H1Error::BadTransferEncoding)?;
        for coding in text.split(',') {
            let coding = coding.trim_matches([' ', '\t']);
            if coding.is_empty() || !coding.bytes().all(is_token_byte) {
                return Err(H1Error::BadTransferEncoding);
            }
            if coding.eq_ignore_ascii_case("chunked") {
                if chunked_at.is_some() {
                    return Err(H1Error::BadTransferEncoding);
                }
                chunked_at = Some(codings);
            }
            canonical &= codings == 0 && coding.len() == text.len();
            canonical &= !coding.bytes().any(|b| b.is_ascii_uppercase());
            codings += 1;
        }
    }
    let chunked_last = chunked_at.is_some_and(|i| i + 1 == codings);
    let framing = match (request, chunked_last, codings) {
        (true, true, 1) => Framing::Chunked,
        (true, _, _) => return Err(H1Error::BadTransferEncoding),
        (false, true, _) => Framing::Chunked,
        (false, false, _) if chunked_at.is_none() => Framing::Close,
        (false, false, _) => return Err(H1Error::BadTransferEncoding),
    };
    // The common `Transfer-Encoding: chunked` is already canonical; anything else (upper
    // case, spaces, several fields or codings) is written again as one field.
    if !canonical {
        let mut joined = String::new();
        for value in headers.get_all(TRANSFER_ENCODING) {
            for coding in value.to_str().unwrap_or_default().split(',') {
                if !joined.is_empty() {
                    joined.push_str(", ");
                }
                joined.push_str(&coding.trim_matches([' ', '\t']).to_ascii_lowercase());
            }
        }
        let value = HeaderValue::from_str(&joined).map_err(|_| H1Error::BadTransferEncoding)?;
        headers.insert(TRANSFER_ENCODING, value);
    }
    Ok(Some(framing))
}

/// Checks the `Content-Length` of a head and leaves it in canonical form: `Ok(None)`
/// without one; its value when there is exactly one field holding only decimal digits
/// (at most 19), written again without leading zeros when it had any. Several fields
/// (even equal ones), an empty value, signs, spaces or a list are errors, as is a length
/// above `max_body`.
///
/// The HTTP/1 decoders call it on every head; an HTTP/2 or HTTP/3 server calls it on a
/// request head before the request may be sent on over HTTP/1.
///
/// ```
/// use flowgate_http::h1::{H1Error, canonical_content_length};
/// let mut headers = http::HeaderMap::new();
/// headers.insert("content-length", http::HeaderValue::from_static("0300"));
/// assert_eq!(canonical_content_length(&mut headers, None), Ok(Some(300)));
/// assert_eq!(headers["content-length"], "300");
/// headers.append("content-length", http::HeaderValue::from_static("300"));
/// assert_eq!(canonical_content_length(&mut headers, None), Err(H1Error::DuplicateContentLength));
/// ```
pub fn canonical_content_length(
    headers: &mut HeaderMap,
    max_body: Option<u64>,
) -> Result<Option<u64>, H1Error> {
    let mut all = headers.get_all(CONTENT_LENGTH).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(H1Error::DuplicateContentLength);
    }
    let digits = value.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(H1Error::BadContentLength);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    if let Some(max) = max_body
        && n > max
    {
        return Err(H1Error::BodyTooLarge(max));
    }
    if digits.len() > 1 && digits[0] == b'0' {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(Some(n))
}

/// Parses a request head at the start of `buf`: `Ok(None)` needs more bytes.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
    scanned: &mut usize,
) -> Result<Option<(request::Parts, Framing)>, H1Error> {
    let Some(head) = take_head(buf, limits, scanned)? else {
        return Ok(None);
    };
    // Uninitialised slots: the parser writes only the fields it finds (no 4 KiB memset).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    complete(
        httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            &head,
            &mut fields,
        ),
    )?;
    let v = version(req.version)?;
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| H1Error::BadHead("invalid method"))?;
    let uri = Uri::from_maybe_shared(head.slice_ref(req.path.unwrap_or("").as_bytes()))
        .map_err(|_| H1Error::BadHead("invalid request target"))?;
    let mut fields = fields_of(&head, req.headers, limits)?;
    if v == Version::HTTP_11 && fields.host != 1 {
        return Err(H1Error::Host);
    }
    let framing = if method == Method::CONNECT {
        Framing::Tunnel
    } else {
        length_or_chunked(&mut fields, v, limits, true)?.unwrap_or(Framing::Empty)
    };
    let headers = fields.map;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = v;
    parts.headers = headers;
    Ok(Some((parts, framing)))
}

/// Parses a response head at the start of `buf`, given the method of the request it answers.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
    request_method: &Method,
    scanned: &mut usize,
) -> Result<Option<(response::Parts, Framing)>, H1Error> {
    let Some(head) = take_head(buf, limits, scanned)? else {
        return Ok(None);
    };
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    complete(
        httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            &head,
            &mut fields,
        ),
    )?;
    let v = version(res.version)?;
    let status = StatusCode::from_u16(res.code.unwrap_or(0))
        .map_err(|_| H1Error::BadHead("invalid status"))?;
    let mut fields = fields_of(&head, res.headers, limits)?;
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS
        || (*request_method == Method::CONNECT && status.is_success())
    {
        Framing::Tunnel
    } else if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *request_method == Method::HEAD
    {
        Framing::Empty
    } else {
        length_or_chunked(&mut fields, v, limits, false)?.unwrap_or(Framing::Close)
    };
    let headers = fields.map;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = v;
    parts.headers = headers;
    Ok(Some((parts, framing)))
}
