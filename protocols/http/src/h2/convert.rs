//! Heads between HTTP/1 (the shape the pipeline carries: `Host`, one `Cookie`, framing
//! fields) and HTTP/2 (`:authority`, no connection-specific fields, RFC 9113 §8.2).

use http::header::{CONTENT_LENGTH, COOKIE, HOST, HeaderValue, TRANSFER_ENCODING};
use http::uri::Scheme;
use http::{Request, Response, Uri, Version, request, response};

use crate::h1::{H1Error, canonical_content_length};
use crate::hop::strip_connection_specific;

/// The HTTP/2 form of an HTTP/1-shaped request head: an absolute URI — the URI's scheme or
/// else `default_scheme`, its authority or else `Host` (which `:authority` then carries,
/// so the field goes) — and none of the fields HTTP/2 forbids
/// ([`strip_connection_specific`], keeping `TE: trailers`).
///
/// With no authority known the URI stays as it is and the version HTTP/1.1, which makes
/// an HTTP/2 client send `:scheme http` and the path alone.
///
/// ```
/// use flowgate_http::h2::request_to_h2;
/// let (parts, ()) = http::Request::get("/a?b")
///     .header("host", "api.test")
///     .header("connection", "keep-alive")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let req = request_to_h2(&parts, &http::uri::Scheme::HTTPS);
/// assert_eq!(req.uri(), "https://api.test/a?b");
/// assert!(req.headers().is_empty());
/// ```
pub fn request_to_h2(parts: &request::Parts, default_scheme: &Scheme) -> Request<()> {
    let mut headers = parts.headers.clone();
    strip_connection_specific(&mut headers, true);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let scheme = parts.uri.scheme().unwrap_or(default_scheme);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let absolute = authority.and_then(|a| {
        Uri::builder()
            .scheme(scheme.clone())
            .authority(a.as_str())
            .path_and_query(path)
            .build()
            .ok()
    });
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    match absolute {
        Some(uri) => {
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            // `:authority` carries it.
            headers.remove(HOST);
        }
        None => {
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = Version::HTTP_11;
        }
    }
    *req.headers_mut() = headers;
    req
}

/// Converts an HTTP/2 request head into the shape HTTP/1 requests have: a `Host` field
/// from `:authority` (unless there is one), one `Cookie` field (RFC 9113 §8.2.3),
/// `Content-Length` in canonical form, and `Transfer-Encoding: chunked` for a body
/// (`has_body`) of unknown length, so an HTTP/1 next hop gets a request framed as this one
/// was. A malformed `Content-Length` (several fields, not decimal digits) is an error: the
/// request is malformed (RFC 9113 §8.1.1).
pub fn request_from_h2(
    mut parts: request::Parts,
    has_body: bool,
) -> Result<request::Parts, H1Error> {
    canonical_content_length(&mut parts.headers, None)?;
    if !parts.headers.contains_key(HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(HOST, v);
    }
    // HTTP/2 may split Cookie into several fields; HTTP/1 wants one.
    if parts.headers.get_all(COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = parts
            .headers
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            parts.headers.insert(COOKIE, v);
        }
    }
    if has_body && !parts.headers.contains_key(CONTENT_LENGTH) {
        parts
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    Ok(parts)
}

/// The HTTP/2 form of a response head (final or interim): its status and its fields less
/// the ones HTTP/2 forbids ([`strip_connection_specific`], `TE` included).
pub fn response_to_h2(parts: &response::Parts) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = parts.status;
    *r.headers_mut() = parts.headers.clone();
    strip_connection_specific(r.headers_mut(), false);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn request_heads_become_http2_heads() {
        let (parts, ()) = http::Request::get("/a?b=1")
            .header("host", "api.test:8080")
            .header("connection", "close, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "5")
            .header("proxy-connection", "x")
            .header("upgrade", "h2c")
            .header("te", "trailers")
            .header("x-keep", "1")
            .body(())
            .unwrap()
            .into_parts();
        let req = request_to_h2(&parts, &Scheme::HTTPS);
        assert_eq!(req.uri().to_string(), "https://api.test:8080/a?b=1");
        assert_eq!(req.version(), Version::HTTP_2);
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-keep"]);
        // An absolute URI keeps its own scheme and authority.
        let (parts, ()) = http::Request::get("http://b.test/x")
            .header("host", "other")
            .body(())
            .unwrap()
            .into_parts();
        let req = request_to_h2(&parts, &Scheme::HTTPS);
        assert_eq!(req.uri(), "http://b.test/x");
        assert!(req.headers().is_empty());
        // Without a Host there is no authority to send.
        let (parts, ()) = http::Request::get("/x")
            .header("te", "gzip")
            .body(())
            .unwrap()
            .into_parts();
        let req = request_to_h2(&parts, &Scheme::HTTP);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.version(), Version::HTTP_11);
        assert!(req.headers().is_empty());
        // `Connection: host` does not take the authority away; a Host that is no
        // authority leaves the URI relative.
        let (parts, ()) = http::Request::get("/y")
            .header("host", "c.test")
            .header("connection", "Host")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            request_to_h2(&parts, &Scheme::HTTP).uri(),
            "http://c.test/y"
        );
        let (parts, ()) = http::Request::get("/y")
            .header("host", "bad host")
            .body(())
            .unwrap()
            .into_parts();
        let req = request_to_h2(&parts, &Scheme::HTTP);
        assert_eq!(
            (req.uri().to_string().as_str(), req.version()),
            ("/y", Version::HTTP_11)
        );
    }

    #[test]
    fn request_from_h2_gets_host_and_chunked_framing() {
        let (parts, ()) = http::Request::builder()
            .uri("https://example.com:8443/a?b")
            .body(())
            .unwrap()
            .into_parts();
        let p = request_from_h2(parts.clone(), true).unwrap();
        assert_eq!(p.headers[HOST], "example.com:8443");
        assert_eq!(p.headers[TRANSFER_ENCODING], "chunked");
        let p = request_from_h2(parts, false).unwrap();
        assert!(!p.headers.contains_key(TRANSFER_ENCODING));
        let (mut parts, ()) = http::Request::builder()
            .uri("https://example.com/")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .headers
            .append("x-other", HeaderValue::from_static("1"));
        let p = request_from_h2(parts, false).unwrap();
        let cookies: Vec<_> = p.headers.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    #[test]
    fn request_from_h2_content_length_is_canonical_or_refused() {
        let with_length = |values: &[&'static str]| {
            let (mut parts, ()) = http::Request::post("https://example.com/")
                .body(())
                .unwrap()
                .into_parts();
            for v in values {
                parts
                    .headers
                    .append(CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            request_from_h2(parts, true)
        };
        let p = with_length(&["0300"]).unwrap();
        assert_eq!(p.headers[CONTENT_LENGTH], "300");
        assert!(!p.headers.contains_key(TRANSFER_ENCODING));
        assert_eq!(
            with_length(&["3", "3"]).unwrap_err(),
            H1Error::DuplicateContentLength
        );
        assert_eq!(with_length(&["+3"]).unwrap_err(), H1Error::BadContentLength);
    }

    #[test]
    fn responses_lose_their_connection_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("close, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = http::StatusCode::EARLY_HINTS;
        parts.headers = h;
        let r = response_to_h2(&parts);
        assert_eq!(r.status(), http::StatusCode::EARLY_HINTS);
        assert_eq!(r.headers().len(), 1);
        assert!(r.headers().contains_key("x-keep"));
    }
}
