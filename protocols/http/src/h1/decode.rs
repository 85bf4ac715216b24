//! The HTTP/1 decoders: bytes in, [`Frame`]s out.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, request, response};

use super::head::{self, Framing, header_map};
use super::{H1Error, Limits};

/// One step of a decoded message: the head, a piece of the body, or the end.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a head is made once per message and moved once
pub enum Frame<H> {
    /// The head, and how its body is delimited.
    Head(H, Framing),
    /// A piece of the body (shares the read buffer; never copied).
    Data(Bytes),
    /// The end of the message, with trailers when a chunked body had any.
    End(Option<HeaderMap>),
}

/// Where the decoder is within the current message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    /// A body of known length; bytes still to come.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Inside chunk data; bytes still to come.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkCrlf,
    /// The trailer section after the last chunk.
    Trailers,
    /// A body delimited by the end of the connection.
    UntilClose,
    /// Raw bytes after CONNECT or 101.
    Tunnel,
    /// After an error or the end of a close-delimited body: nothing more is decoded.
    Done,
}

/// The framing machine shared by both decoders.
#[derive(Debug)]
struct Body {
    state: State,
    limits: Limits,
    /// Body bytes of the current message so far.
    seen: u64,
    /// How far the search for the end of a head (or trailer section) has got.
    scanned: usize,
}

impl Body {
    fn new(limits: Limits) -> Self {
        Body {
            state: State::Head,
            limits,
            seen: 0,
            scanned: 0,
        }
    }

    /// Enters the body of a message whose head was just decoded. An empty body is
    /// `Length(0)`: its End comes on the next call, after the head.
    fn start(&mut self, framing: Framing) {
        self.seen = 0;
        self.state = match framing {
            Framing::Empty => State::Length(0),
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::UntilClose,
            Framing::Tunnel => State::Tunnel,
        };
    }

    fn count(&mut self, n: usize) -> Result<(), H1Error> {
        self.seen = self.seen.saturating_add(n as u64);
        match self.limits.max_body {
            Some(max) if self.seen > max && self.state != State::Tunnel => {
                Err(H1Error::BodyTooLarge(max))
            }
            _ => Ok(()),
        }
    }

    /// Decodes body bytes: `Ok(None)` needs more input.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<()>>, H1Error> {
        loop {
            match self.state {
                State::Head | State::Done => return Ok(None),
                State::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    self.count(n)?;
                    let data = buf.split_to(n).freeze();
                    // At zero, the End comes on the next call (`take_length_end`).
                    self.state = State::Length(left - n as u64);
                    return Ok(Some(Frame::Data(data)));
                }
                State::UntilClose | State::Tunnel => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len();
                    self.count(n)?;
                    return Ok(Some(Frame::Data(buf.split().freeze())));
                }
                State::ChunkSize => {
                    let Some(size) = chunk_size(buf, self.limits.max_line)? else {
                        return Ok(None);
                    };
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    self.count(n)?;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkCrlf
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Some(Frame::Data(data)));
                }
                State::ChunkCrlf => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::BadChunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(trailers) = trailers(buf, &self.limits, &mut self.scanned)? else {
                        return Ok(None);
                    };
                    self.state = State::Head;
                    return Ok(Some(Frame::End(trailers)));
                }
            }
        }
    }

    /// The End after a length-delimited body.
    fn take_length_end(&mut self) -> Option<Frame<()>> {
        if self.state == State::Length(0) {
            self.state = State::Head;
            return Some(Frame::End(None));
        }
        None
    }

    /// The connection ended: finish a close-delimited body, or fail mid-message.
    fn eof(&mut self, buf: &BytesMut) -> Result<Option<Frame<()>>, H1Error> {
        match self.state {
            State::UntilClose | State::Tunnel => {
                self.state = State::Done;
                Ok(Some(Frame::End(None)))
            }
            State::Head if buf.is_empty() => Ok(None),
            State::Done => Ok(None),
            _ => {
                self.state = State::Done;
                Err(H1Error::Incomplete)
            }
        }
    }
}

/// Reads one chunk-size line (`1a;ext=v\r\n`): `Ok(None)` needs more input.
fn chunk_size(buf: &mut BytesMut, max_line: usize) -> Result<Option<u64>, H1Error> {
    let window = &buf[..buf.len().min(max_line)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() >= max_line {
            return Err(H1Error::BadChunk("chunk-size line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(H1Error::BadChunk("bare LF after chunk size"));
    }
    let line = &window[..lf - 1];
    let hex_len = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if hex_len == 0 {
        return Err(H1Error::BadChunk("missing chunk size"));
    }
    if hex_len > 15 {
        return Err(H1Error::BadChunk("chunk size too large"));
    }
    let mut size = 0u64;
    for b in &line[..hex_len] {
        let d = (*b as char).to_digit(16).unwrap_or(0);
        size = (size << 4) | u64::from(d);
    }
    // After the size: nothing, or an extension: BWS ";" …, with visible characters only.
    let rest = &line[hex_len..];
    let ext = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map(|i| &rest[i..]);
    match ext {
        None if rest.is_empty() => {}
        None => return Err(H1Error::BadChunk("whitespace after chunk size")),
        Some(e) if e[0] == b';' && e.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) => {}
        Some(_) => return Err(H1Error::BadChunk("invalid chunk size or extension")),
    }
    buf.advance(lf + 1);
    Ok(Some(size))
}

/// The most fields a trailer section may have.
const MAX_TRAILERS: usize = 32;

/// Reads the trailer section up to its empty line: `Ok(None)` needs more input.
fn trailers(
    buf: &mut BytesMut,
    limits: &Limits,
    scanned: &mut usize,
) -> Result<Option<Option<HeaderMap>>, H1Error> {
    if buf.len() >= 2 && &buf[..2] == b"\r\n" {
        buf.advance(2);
        return Ok(Some(None));
    }
    if buf.first() == Some(&b'\n') {
        return Err(H1Error::BadChunk("bare LF after the last chunk"));
    }
    let Some(end) = head::find_end(buf, scanned)? else {
        if buf.len() > limits.max_head_bytes {
            return Err(H1Error::HeadTooLarge(limits.max_head_bytes));
        }
        return Ok(None);
    };
    if end > limits.max_head_bytes {
        return Err(H1Error::HeadTooLarge(limits.max_head_bytes));
    }
    let section = buf.split_to(end).freeze();
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let parsed = match httparse::parse_headers(&section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(H1Error::BadChunk("malformed trailer section"));
        }
    };
    let map = header_map(&section, parsed, limits)?;
    Ok(Some((!map.is_empty()).then_some(map)))
}

fn body_frame<H>(f: Frame<()>) -> Frame<H> {
    match f {
        Frame::Data(d) => Frame::Data(d),
        Frame::End(t) => Frame::End(t),
        Frame::Head((), _) => Frame::End(None),
    }
}

// === RequestDecoder ===

/// Decodes requests (the server side), pipelined requests one after another.
///
/// ```
/// use bytes::BytesMut;
/// use flowgate_http::h1::{Frame, Framing, RequestDecoder};
/// let mut d = RequestDecoder::default();
/// let mut buf = BytesMut::from(&b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"[..]);
/// let Some(Frame::Head(head, Framing::Length(2))) = d.decode(&mut buf)? else { panic!() };
/// assert_eq!(head.uri.path(), "/up");
/// assert!(matches!(d.decode(&mut buf)?, Some(Frame::Data(b)) if b == "hi"));
/// assert!(matches!(d.decode(&mut buf)?, Some(Frame::End(None))));
/// # Ok::<(), flowgate_http::h1::H1Error>(())
/// ```
#[derive(Debug)]
pub struct RequestDecoder {
    body: Body,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl RequestDecoder {
    /// A decoder with these limits.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            body: Body::new(limits),
        }
    }

    /// Decodes the next frame from `buf`, taking the bytes it used. `Ok(None)`: more input
    /// is needed. After an error the connection must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<request::Parts>>, H1Error> {
        let r = self.decode_inner(buf);
        if r.is_err() {
            self.body.state = State::Done;
        }
        r
    }

    fn decode_inner(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<request::Parts>>, H1Error> {
        if let Some(end) = self.body.take_length_end() {
            return Ok(Some(body_frame(end)));
        }
        if self.body.state != State::Head {
            return Ok(self.body.decode(buf)?.map(body_frame));
        }
        // RFC 9112 §2.2: ignore empty lines before a request line.
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.body.scanned = 0;
        }
        let Some((parts, framing)) =
            head::parse_request(buf, &self.body.limits, &mut self.body.scanned)?
        else {
            return Ok(None);
        };
        self.body.start(framing);
        Ok(Some(Frame::Head(parts, framing)))
    }

    /// Decodes at the end of the connection: the rest of what `buf` holds, then `Ok(None)`;
    /// an unfinished message is an [`H1Error::Incomplete`].
    pub fn decode_eof(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<request::Parts>>, H1Error> {
        if let Some(f) = self.decode(buf)? {
            return Ok(Some(f));
        }
        Ok(self.body.eof(buf)?.map(body_frame))
    }

    /// Whether the decoder is between messages.
    pub fn is_idle(&self) -> bool {
        self.body.state == State::Head
    }
}

// === ResponseDecoder ===

/// Decodes responses (the client side). The framing of a response depends on the request
/// it answers (`HEAD`, `CONNECT`), so tell the decoder each request's method, in order, with
/// [`ResponseDecoder::expect`].
#[derive(Debug)]
pub struct ResponseDecoder {
    body: Body,
    methods: VecDeque<Method>,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl ResponseDecoder {
    /// A decoder with these limits.
    pub fn new(limits: Limits) -> Self {
        ResponseDecoder {
            body: Body::new(limits),
            methods: VecDeque::new(),
        }
    }

    /// Records that a request with `method` was sent (its response comes in this order).
    pub fn expect(&mut self, method: Method) {
        self.methods.push_back(method);
    }

    /// Decodes the next frame from `buf`. `Ok(None)`: more input is needed.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<response::Parts>>, H1Error> {
        let r = self.decode_inner(buf);
        if r.is_err() {
            self.body.state = State::Done;
        }
        r
    }

    fn decode_inner(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<response::Parts>>, H1Error> {
        if let Some(end) = self.body.take_length_end() {
            return Ok(Some(body_frame(end)));
        }
        if self.body.state != State::Head {
            return Ok(self.body.decode(buf)?.map(body_frame));
        }
        let method = self.methods.front().cloned().unwrap_or(Method::GET);
        let Some((parts, framing)) =
            head::parse_response(buf, &self.body.limits, &method, &mut self.body.scanned)?
        else {
            return Ok(None);
        };
        // An interim (1xx other than 101) response leaves the request waiting for its final one.
        let interim = parts.status.is_informational() && framing != Framing::Tunnel;
        if !interim {
            self.methods.pop_front();
        }
        self.body.start(framing);
        Ok(Some(Frame::Head(parts, framing)))
    }

    /// Decodes at the end of the connection (which ends a close-delimited body).
    pub fn decode_eof(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<response::Parts>>, H1Error> {
        if let Some(f) = self.decode(buf)? {
            return Ok(Some(f));
        }
        Ok(self.body.eof(buf)?.map(body_frame))
    }

    /// Whether the decoder is between messages.
    pub fn is_idle(&self) -> bool {
        self.body.state == State::Head
    }
}
