//! Hop-by-hop and connection-specific fields: which fields describe one connection rather
//! than the message, the `Connection` field's token list, and how a proxy strips them
//! before it sends a message on (HTTP/1 to HTTP/1 here; HTTP/1 ↔ HTTP/2 in
//! [`h2`](crate::h2), built on [`strip_connection_specific`]).
//!
//! The fields, and the rule each one follows:
//!
//! | field | HTTP/1 hop (RFC 9110 §7.6.1) | HTTP/2 (RFC 9113 §8.2.2) |
//! |---|---|---|
//! | `Connection` | removed, and every field it names | forbidden |
//! | `Keep-Alive` | removed (RFC 9110 §7.6.1 names it) | forbidden |
//! | `Proxy-Connection` | removed (never standard, still sent) | forbidden |
//! | `TE` | removed (hop-by-hop, RFC 9110 §10.1.4) | forbidden but `TE: trailers` |
//! | `Upgrade` | removed (RFC 9110 §7.8), but an upgrade keeps its own | forbidden |
//! | `Transfer-Encoding` | kept: it frames the body, re-encoded on each hop | forbidden |
//!
//! Fields named in `Connection` go too, except the ones a message is framed and routed by
//! (`Content-Length`, `Transfer-Encoding`, `Host`, see [`PROTECTED`]): a
//! `Connection: content-length` must not make the next hop read the body as another
//! request (smuggling), nor a `Connection: host` leave a request without its authority.
//! Connection options that name no field (`close`, `keep-alive`, `upgrade`) are read
//! where they mean something ([`strip_response`] returns `close`, an upgrade keeps its
//! `Upgrade`).
//!
//! Bounded: [`tokens`] is a lazy split with no allocation, and a `Connection` list of any
//! length costs time linear in its bytes and memory for at most one name per field the
//! message really has (a name is kept only when the map holds that field, and once).
//!
//! ```
//! use flowgate_http::hop;
//! let (mut parts, ()) = http::Response::builder()
//!     .header("connection", "close, x-private")
//!     .header("x-private", "1")
//!     .header("content-length", "2")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let closes = hop::strip_response(&mut parts, false);
//! assert!(closes);
//! assert_eq!(parts.headers.len(), 1);
//! assert_eq!(parts.headers["content-length"], "2");
//! ```

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Version, response};

/// Every hop-by-hop or connection-specific field name, lower-case: the union of what
/// HTTP/1 proxies remove and what HTTP/2 forbids (see the [module docs](self) for the
/// rule of each). `Transfer-Encoding` is only removed on the way to HTTP/2; see
/// [`is_hop_by_hop`] and [`is_connection_specific`].
pub const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// The fields a `Connection` list cannot remove: a message is framed (`Content-Length`,
/// `Transfer-Encoding`) and routed (`Host`) by them.
pub const PROTECTED: [HeaderName; 3] = [CONTENT_LENGTH, TRANSFER_ENCODING, HOST];

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Whether `name` is a hop-by-hop field an HTTP/1 proxy never forwards as it is:
/// `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`. Not
/// `Transfer-Encoding`, which frames the body on this hop and the next.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == UPGRADE
        || name.as_str() == KEEP_ALIVE
        || name.as_str() == PROXY_CONNECTION
}

/// Whether HTTP/2 forbids `name` (RFC 9113 §8.2.2): the [`is_hop_by_hop`] fields and
/// `Transfer-Encoding` (`TE: trailers` is the one exception, see
/// [`strip_connection_specific`]).
pub fn is_connection_specific(name: &HeaderName) -> bool {
    is_hop_by_hop(name) || name == TRANSFER_ENCODING
}

/// The comma-separated tokens of every `name` field (`Connection: close, x-a`), trimmed
/// of spaces and tabs, empty ones left out; values that are not visible ASCII are
/// skipped. Compare them case-insensitively. Lazy: nothing is allocated.
pub fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

/// Whether a `name` field lists `token` (case-insensitively).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The fields of `headers` that its `Connection` list names, less the [`PROTECTED`] ones:
/// each at most once, and only when `headers` has it, so the result is never longer than
/// the map however long the list is.
pub fn named_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named: Vec<HeaderName> = Vec::new();
    for t in tokens(headers, CONNECTION) {
        // The look-up lower-cases on the stack; a name is only built for a field that is
        // there and not seen yet.
        if !headers.contains_key(t) || named.iter().any(|n| n.as_str().eq_ignore_ascii_case(t)) {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(t.as_bytes())
            && !PROTECTED.contains(&name)
        {
            named.push(name);
        }
    }
    named
}

/// The fields of a request head to send on to the next HTTP/1 hop, in order: all but the
/// [`is_hop_by_hop`] ones and those [`named_in_connection`]; an `upgrade` request keeps its
/// `Upgrade` (the caller adds `connection: upgrade`, see [`strip_request`]).
pub fn forwarded_request_fields(
    headers: &HeaderMap,
    upgrade: bool,
) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named = named_in_connection(headers);
    headers.iter().filter(move |(name, _)| {
        if is_hop_by_hop(name) {
            upgrade && *name == UPGRADE
        } else {
            !named.contains(name)
        }
    })
}

/// Removes a request's hop-by-hop fields in place (the fields
/// [`forwarded_request_fields`] leaves out); an `upgrade` request keeps its `Upgrade` and
/// gets `connection: upgrade`.
pub fn strip_request(headers: &mut HeaderMap, upgrade: bool) {
    for name in named_in_connection(headers) {
        headers.remove(name);
    }
    for name in [CONNECTION, TE] {
        headers.remove(name);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Drops the hop-by-hop fields of a response head before it goes on to the next HTTP/1
/// hop: the [`is_hop_by_hop`] ones and those [`named_in_connection`]. A response that
/// switches protocols (`tunnel`) keeps its `Upgrade` and says `connection: upgrade`.
/// Returns whether the sender closes the connection after this response
/// (`Connection: close`, or HTTP/1.0 without `keep-alive`).
pub fn strip_response(parts: &mut response::Parts, tunnel: bool) -> bool {
    let headers = &mut parts.headers;
    let http10 = parts.version == Version::HTTP_10;
    // Most responses have at most `Connection: keep-alive`: one pass over the names.
    if !headers.keys().any(is_hop_by_hop) {
        return http10;
    }
    let (mut close, mut keep_alive) = (false, false);
    for t in tokens(headers, CONNECTION) {
        close |= t.eq_ignore_ascii_case("close");
        keep_alive |= t.eq_ignore_ascii_case(KEEP_ALIVE);
    }
    for name in named_in_connection(headers) {
        if !(tunnel && name == UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [CONNECTION, TE] {
        headers.remove(name);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION] {
        headers.remove(name);
    }
    if tunnel {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
    close || (http10 && !keep_alive)
}

/// Removes the fields HTTP/2 forbids (RFC 9113 §8.2.2): the [`is_connection_specific`]
/// ones and those [`named_in_connection`] — with `keep_te_trailers` (a request) all but
/// `TE: trailers`, which is then the one `TE` value left.
pub fn strip_connection_specific(headers: &mut HeaderMap, keep_te_trailers: bool) {
    for name in named_in_connection(headers) {
        headers.remove(name);
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION] {
        headers.remove(name);
    }
    let keep_te = keep_te_trailers && has_token(headers, TE, "trailers");
    headers.remove(TE);
    if keep_te {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_lists_agree() {
        for n in HOP_BY_HOP {
            let name = HeaderName::from_static(n);
            assert!(is_connection_specific(&name), "{n}");
            assert_eq!(is_hop_by_hop(&name), n != "transfer-encoding", "{n}");
        }
        assert!(!is_hop_by_hop(&CONTENT_LENGTH) && !is_connection_specific(&HOST));
    }

    #[test]
    fn tokens_are_split_trimmed_and_case_kept() {
        let h = map(&[
            ("connection", " Close ,,\tX-A\t, ,"),
            ("connection", "keep-alive"),
        ]);
        let t: Vec<&str> = tokens(&h, CONNECTION).collect();
        assert_eq!(t, ["Close", "X-A", "keep-alive"]);
        assert!(has_token(&h, CONNECTION, "close"));
        assert!(has_token(&h, CONNECTION, "KEEP-ALIVE"));
        assert!(!has_token(&h, CONNECTION, "upgrade"));
        // Empty and all-separator values have no tokens; a non-ASCII value is skipped.
        let mut h = map(&[("connection", ""), ("connection", " , ,\t")]);
        h.append(
            CONNECTION,
            HeaderValue::from_bytes(b"x-\xff, close").unwrap(),
        );
        assert_eq!(tokens(&h, CONNECTION).count(), 0);
    }

    #[test]
    fn named_fields_are_bounded_by_the_map_not_the_list() {
        // 20 000 tokens, all but a few naming fields the message does not have, and one
        // repeated thousands of times in odd casing.
        let mut list = String::new();
        for i in 0..10_000 {
            list.push_str(&format!("x-absent-{i}, X-Hop,"));
        }
        list.push_str(" content-length, HOST, transfer-encoding, bad name, x-kept:");
        let mut h = map(&[
            ("x-hop", "1"),
            ("host", "a"),
            ("content-length", "1"),
            ("x-kept", "1"),
        ]);
        h.insert(CONNECTION, HeaderValue::from_str(&list).unwrap());
        let named = named_in_connection(&h);
        assert_eq!(named, [HeaderName::from_static("x-hop")]);
        strip_request(&mut h, false);
        assert_eq!(names(&h), ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn a_request_keeps_its_framing_its_host_and_an_upgrade_its_own() {
        let h = map(&[
            ("host", "x"),
            (
                "connection",
                "keep-alive, x-secret, Content-Length, host, close",
            ),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("x-kept", "2"),
        ]);
        let kept: Vec<&str> = forwarded_request_fields(&h, false)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(kept, ["host", "content-length", "x-kept"]);
        let kept: Vec<&str> = forwarded_request_fields(&h, true)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(kept, ["host", "upgrade", "content-length", "x-kept"]);
        // In place, the same fields (and an upgrade says so).
        let mut plain = h.clone();
        strip_request(&mut plain, false);
        assert_eq!(names(&plain), ["content-length", "host", "x-kept"]);
        let mut up = h;
        strip_request(&mut up, true);
        assert_eq!(
            names(&up),
            ["connection", "content-length", "host", "upgrade", "x-kept"]
        );
        assert_eq!(up[CONNECTION], "upgrade");
    }

    fn response(version: Version, fields: &[(&str, &str)]) -> response::Parts {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.version = version;
        parts.headers = map(fields);
        parts
    }

    #[test]
    fn a_response_says_whether_the_sender_closes() {
        let mut p = response(
            Version::HTTP_11,
            &[
                ("connection", "keep-alive, X-Private"),
                ("keep-alive", "timeout=5"),
                ("x-private", "1"),
                ("upgrade", "h2c"),
                ("te", "x"),
                ("x-kept", "1"),
            ],
        );
        assert!(!strip_response(&mut p, false));
        assert_eq!(names(&p.headers), ["x-kept"]);
        let mut p = response(
            Version::HTTP_11,
            &[
                ("Connection", "CLOSE, transfer-encoding"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert!(strip_response(&mut p, false));
        assert_eq!(names(&p.headers), ["transfer-encoding"]);
        assert!(strip_response(&mut response(Version::HTTP_10, &[]), false));
        let mut p = response(Version::HTTP_10, &[("connection", "Keep-Alive")]);
        assert!(!strip_response(&mut p, false) && p.headers.is_empty());
        let mut p = response(
            Version::HTTP_11,
            &[
                ("connection", "upgrade, x-a"),
                ("upgrade", "websocket"),
                ("x-a", "1"),
            ],
        );
        strip_response(&mut p, true);
        assert_eq!(names(&p.headers), ["connection", "upgrade"]);
        assert_eq!(p.headers[CONNECTION], "upgrade");
    }

    #[test]
    fn connection_fields_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_connection_specific(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn http2_forbids_every_connection_specific_field_but_te_trailers() {
        let all = [
            ("connection", "close, x-hop, host"),
            ("x-hop", "1"),
            ("host", "a"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip, Trailers"),
            ("x-keep", "1"),
        ];
        let mut h = map(&all);
        strip_connection_specific(&mut h, true);
        assert_eq!(names(&h), ["host", "te", "x-keep"]);
        assert_eq!(h[TE], "trailers");
        let mut h = map(&all);
        strip_connection_specific(&mut h, false);
        assert_eq!(names(&h), ["host", "x-keep"]);
        let mut h = map(&[("te", "gzip")]);
        strip_connection_specific(&mut h, true);
        assert!(h.is_empty());
    }
}
