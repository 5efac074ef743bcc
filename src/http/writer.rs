//! Head writing: the "zero-copy header edits". The upstream request head and the client response
//! head are assembled by copying slices of the frozen input head (method, target, forwarded
//! fields) into a caller-provided `Vec<u8>`, plus the few fields the gateway sets itself. Nothing
//! is re-stringified and nothing allocates beyond the growth of `out`.
//!
//! Owns the layout of outgoing heads and the rule that every body is re-framed (the writer emits
//! the only `Content-Length` / `Transfer-Encoding`). It does not decide policy: which framing,
//! persistence, credentials and extra fields to send are the caller's inputs.
//!
//! Contract for the edit values (`host`, `authorization`, `client_ip`, `proto`, `extra_headers`):
//! they come from validated configuration or the socket and must not contain CR, LF or NUL; this
//! is checked with `debug_assert!` only.

use super::request::{Method, RequestHead};
use super::response::ResponseHead;
use super::{eq_ignore_case, BodyFraming, HeaderSpan, Version};

const CRLF: &[u8] = b"\r\n";
const FIELD_SEP: &[u8] = b": ";
const XFF_SEP: &[u8] = b", ";

/// How the upstream request differs from the client's.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamRequestEdits<'a> {
    /// Origin URL path without trailing '/', may be empty; prepended to the request target.
    pub path_prefix: &'a [u8],
    /// `Host` value for the origin.
    pub host: &'a [u8],
    /// `Authorization` value for the origin; empty means no Authorization field at all.
    pub authorization: &'a [u8],
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: &'a [u8],
    /// `X-Forwarded-Proto` value (`http`); empty means none.
    pub proto: &'a [u8],
    /// Framing to announce: `None`, `Length(n)` or `Chunked` (`CloseDelimited` writes nothing).
    pub framing: BodyFraming,
    /// Further fields, written after the forwarded ones.
    pub extra_headers: &'a [(&'a [u8], &'a [u8])],
}

/// Write the head sent to the origin:
/// `METHOD SP prefix+target SP HTTP/1.1`, `Host`, `Authorization`, every forwarded field verbatim
/// (except `X-Forwarded-For`), `X-Forwarded-For: <existing values>, <client_ip>`,
/// `X-Forwarded-Proto`, the extra fields, the framing field, the empty line.
///
/// Upstream connections are always HTTP/1.1 keep-alive, so no `Connection` field is written.
/// For `OPTIONS *` the target stays `*` (a server-wide request has no path to prefix).
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    head: &RequestHead,
    buf: &[u8],
    edits: &UpstreamRequestEdits,
) {
    write_upstream_request_with_query(out, head, buf, edits, None);
}

/// Like [`write_upstream_request`], but with the query string replaced: `Some(q)` sends
/// `path?q` (or just `path` when `q` is empty), `None` keeps the target as received. The job
/// executor uses it to drop its own `callback` parameter from the query.
pub fn write_upstream_request_with_query(
    out: &mut Vec<u8>,
    head: &RequestHead,
    buf: &[u8],
    edits: &UpstreamRequestEdits,
    query: Option<&[u8]>,
) {
    debug_assert!(
        is_clean(edits.path_prefix) && is_clean(edits.host) && is_clean(edits.authorization)
    );
    debug_assert!(is_clean(edits.client_ip) && is_clean(edits.proto));
    debug_assert!(edits
        .extra_headers
        .iter()
        .all(|(n, v)| is_clean(n) && is_clean(v)));

    out.extend_from_slice(head.method_span.get(buf));
    out.push(b' ');
    let target = head.target.get(buf);
    if !(head.method == Method::Options && target == b"*") {
        out.extend_from_slice(edits.path_prefix);
    }
    match query {
        None => out.extend_from_slice(target),
        Some(q) => {
            out.extend_from_slice(head.path.get(buf));
            if !q.is_empty() {
                out.push(b'?');
                out.extend_from_slice(q);
            }
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    write_field(out, b"Host", edits.host);
    if !edits.authorization.is_empty() {
        write_field(out, b"Authorization", edits.authorization);
    }

    let is_xff = |h: &HeaderSpan| eq_ignore_case(h.name.get(buf), b"x-forwarded-for");
    for h in head.headers.iter().filter(|h| h.forward && !is_xff(h)) {
        write_field(out, h.name.get(buf), h.value.get(buf));
    }

    // X-Forwarded-For: the client's chain (all forwarded XFF fields, in order), then the peer.
    let mut wrote_any = false;
    let existing = head
        .headers
        .iter()
        .filter(|h| h.forward && is_xff(h))
        .map(|h| h.value.get(buf));
    for value in existing
        .chain(std::iter::once(edits.client_ip))
        .filter(|v| !v.is_empty())
    {
        out.extend_from_slice(if wrote_any {
            XFF_SEP
        } else {
            b"X-Forwarded-For: "
        });
        out.extend_from_slice(value);
        wrote_any = true;
    }
    if wrote_any {
        out.extend_from_slice(CRLF);
    }

    if !edits.proto.is_empty() {
        write_field(out, b"X-Forwarded-Proto", edits.proto);
    }
    for (name, value) in edits.extra_headers {
        write_field(out, name, value);
    }
    write_framing(out, edits.framing);
    out.extend_from_slice(CRLF);
}

/// How the client response differs from the upstream's.
#[derive(Clone, Copy, Debug)]
pub struct ClientResponseEdits {
    /// Framing sent to the client: `Length` writes Content-Length, `Chunked` writes
    /// Transfer-Encoding (never for an HTTP/1.0 client), `None` / `CloseDelimited` nothing.
    pub framing: BodyFraming,
    /// Whether the client connection stays open; `false` writes `Connection: close`.
    pub keep_alive: bool,
    pub client_version: Version,
    /// With `framing: None` (an answer to HEAD, or a 304), still announce the upstream's
    /// `Content-Length` value (`head.content_length`) so the client sees the size of the
    /// representation. Ignored for other framings.
    pub keep_content_length: bool,
}

/// Write the head sent to the client: `HTTP/1.1 {status} {reason}`, every forwarded upstream field
/// verbatim, the framing field, `Connection: close` when not keeping the connection, or
/// `Connection: keep-alive` for a kept HTTP/1.0 client, then the empty line.
pub fn write_client_response(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    buf: &[u8],
    edits: &ClientResponseEdits,
) {
    debug_assert!(
        !(edits.framing == BodyFraming::Chunked && edits.client_version == Version::Http10),
        "HTTP/1.0 clients do not understand chunked"
    );
    write_status_line(out, head.status, head.reason.get(buf));
    for h in head.headers.iter().filter(|h| h.forward) {
        write_field(out, h.name.get(buf), h.value.get(buf));
    }
    match (edits.framing, head.content_length) {
        (BodyFraming::None, Some(n)) if edits.keep_content_length => write_content_length(out, n),
        (framing, _) => write_framing(out, framing),
    }
    if !edits.keep_alive {
        write_field(out, b"Connection", b"close");
    } else if edits.client_version == Version::Http10 {
        write_field(out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(CRLF);
}

/// `HTTP/1.1 {status} {reason}\r\n`. The status is written as three digits (callers pass
/// 100..=599; anything else is clamped into a 3-digit field rather than panicking).
pub fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    let status = status.min(999);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason);
    out.extend_from_slice(CRLF);
}

/// The usual reason phrase for statuses sluice generates itself (empty for others; a status
/// line with an empty reason is valid).
pub fn canonical_reason(status: u16) -> &'static [u8] {
    match status {
        100 => b"Continue",
        200 => b"OK",
        201 => b"Created",
        202 => b"Accepted",
        204 => b"No Content",
        301 => b"Moved Permanently",
        302 => b"Found",
        304 => b"Not Modified",
        400 => b"Bad Request",
        401 => b"Unauthorized",
        403 => b"Forbidden",
        404 => b"Not Found",
        405 => b"Method Not Allowed",
        408 => b"Request Timeout",
        409 => b"Conflict",
        410 => b"Gone",
        411 => b"Length Required",
        413 => b"Content Too Large",
        414 => b"URI Too Long",
        415 => b"Unsupported Media Type",
        417 => b"Expectation Failed",
        429 => b"Too Many Requests",
        431 => b"Request Header Fields Too Large",
        500 => b"Internal Server Error",
        501 => b"Not Implemented",
        502 => b"Bad Gateway",
        503 => b"Service Unavailable",
        504 => b"Gateway Timeout",
        505 => b"HTTP Version Not Supported",
        _ => b"",
    }
}

/// `name: value\r\n`.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(FIELD_SEP);
    out.extend_from_slice(value);
    out.extend_from_slice(CRLF);
}

/// `Content-Length: n\r\n`.
pub fn write_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    write_u64(out, n);
    out.extend_from_slice(CRLF);
}

/// The framing field for `framing`, if any.
pub fn write_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => write_content_length(out, n),
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::CloseDelimited => {}
    }
}

/// Decimal digits of a u64 (u64::MAX has 20).
const MAX_U64_DIGITS: usize = 20;

/// Append `n` in decimal, without allocating.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; MAX_U64_DIGITS];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append `n` in decimal, without allocating.
pub fn write_usize(out: &mut Vec<u8>, n: usize) {
    write_u64(out, n as u64);
}

fn is_clean(s: &[u8]) -> bool {
    !s.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_request;
    use crate::http::response::parse_response;
    use crate::http::HeadLimits;

    fn req(buf: &[u8]) -> RequestHead {
        parse_request(buf, &HeadLimits::default()).unwrap().unwrap()
    }

    fn res(buf: &[u8], method: Method) -> ResponseHead {
        parse_response(buf, &HeadLimits::default(), method)
            .unwrap()
            .unwrap()
    }

    fn edits<'a>(
        framing: BodyFraming,
        extra: &'a [(&'a [u8], &'a [u8])],
    ) -> UpstreamRequestEdits<'a> {
        UpstreamRequestEdits {
            path_prefix: b"/api",
            host: b"origin.example",
            authorization: b"Bearer secret",
            client_ip: b"10.0.0.7",
            proto: b"http",
            framing,
            extra_headers: extra,
        }
    }

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    #[test]
    fn upstream_request_layout() {
        let buf = b"POST /crypto/sign?x=1 HTTP/1.1\r\n\
            Host: gateway.local\r\n\
            Authorization: Bearer client\r\n\
            Connection: keep-alive, X-Private\r\n\
            X-Private: p\r\n\
            Content-Type: application/json\r\n\
            X-Forwarded-For: 1.1.1.1\r\n\
            Content-Length:  2 \r\n\
            X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\
            X-Forwarded-Proto: https\r\n\
            Expect: 100-continue\r\n\
            Accept:   */*  \r\n\r\n{}";
        let head = req(buf);
        let mut out = Vec::new();
        let extra: [(&[u8], &[u8]); 1] = [(b"Idempotency-Key", b"k1")];
        write_upstream_request(&mut out, &head, buf, &edits(head.framing, &extra));
        assert_eq!(
            text(&out),
            "POST /api/crypto/sign?x=1 HTTP/1.1\r\n\
             Host: origin.example\r\n\
             Authorization: Bearer secret\r\n\
             Content-Type: application/json\r\n\
             Accept: */*\r\n\
             X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7\r\n\
             X-Forwarded-Proto: http\r\n\
             Idempotency-Key: k1\r\n\
             Content-Length: 2\r\n\r\n"
        );
    }

    #[test]
    fn upstream_request_minimal() {
        let buf = b"GET /x HTTP/1.0\r\n\r\n";
        let head = req(buf);
        let mut out = Vec::new();
        let e = UpstreamRequestEdits {
            path_prefix: b"",
            host: b"o",
            authorization: b"",
            client_ip: b"127.0.0.1",
            proto: b"",
            framing: BodyFraming::None,
            extra_headers: &[],
        };
        write_upstream_request(&mut out, &head, buf, &e);
        assert_eq!(
            text(&out),
            "GET /x HTTP/1.1\r\nHost: o\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        );
        // Chunked re-framing and OPTIONS *.
        let buf = b"OPTIONS * HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = req(buf);
        out.clear();
        write_upstream_request(&mut out, &head, buf, &edits(BodyFraming::Chunked, &[]));
        assert_eq!(
            text(&out),
            "OPTIONS * HTTP/1.1\r\nHost: origin.example\r\nAuthorization: Bearer secret\r\n\
             X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn upstream_request_is_reparseable() {
        let buf = b"PUT /v1/a%20b HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc";
        let head = req(buf);
        let mut out = Vec::new();
        write_upstream_request(&mut out, &head, buf, &edits(BodyFraming::Length(3), &[]));
        let again = req(&out);
        assert_eq!(again.path.get(&out), b"/api/v1/a%20b");
        assert_eq!(again.framing, BodyFraming::Length(3));
        assert_eq!(again.head_len, out.len());
    }

    #[test]
    fn client_response_layout() {
        let buf = b"HTTP/1.1 201 Created\r\n\
            Content-Type: application/json\r\n\
            Connection: X-Hop\r\n\
            X-Hop: 1\r\n\
            Transfer-Encoding: chunked\r\n\
            Keep-Alive: timeout=5\r\n\
            Location: /jobs/1\r\n\r\n";
        let head = res(buf, Method::Post);
        let mut out = Vec::new();
        let e = ClientResponseEdits {
            framing: BodyFraming::Chunked,
            keep_alive: true,
            client_version: Version::Http11,
            keep_content_length: false,
        };
        write_client_response(&mut out, &head, buf, &e);
        assert_eq!(
            text(&out),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /jobs/1\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        out.clear();
        let e = ClientResponseEdits {
            framing: BodyFraming::CloseDelimited,
            keep_alive: false,
            client_version: Version::Http10,
            keep_content_length: false,
        };
        write_client_response(&mut out, &head, buf, &e);
        assert_eq!(
            text(&out),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /jobs/1\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn client_response_head_and_304_keep_length() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n";
        let head = res(buf, Method::Head);
        assert_eq!(head.framing, BodyFraming::None);
        let mut out = Vec::new();
        let mut e = ClientResponseEdits {
            framing: BodyFraming::None,
            keep_alive: true,
            client_version: Version::Http10,
            keep_content_length: true,
        };
        write_client_response(&mut out, &head, buf, &e);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 1234\r\nConnection: keep-alive\r\n\r\n"
        );
        out.clear();
        e.keep_content_length = false;
        e.client_version = Version::Http11;
        write_client_response(&mut out, &head, buf, &e);
        assert_eq!(text(&out), "HTTP/1.1 200 OK\r\nETag: \"x\"\r\n\r\n");
        // Length framing wins over the upstream's value.
        out.clear();
        e.framing = BodyFraming::Length(7);
        e.keep_content_length = true;
        write_client_response(&mut out, &head, buf, &e);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 7\r\n\r\n"
        );
    }

    #[test]
    fn status_line_and_reason() {
        let buf = b"HTTP/1.1 500 Ori\xebnt\r\nContent-Length: 0\r\n\r\n";
        let head = res(buf, Method::Get);
        let mut out = Vec::new();
        let e = ClientResponseEdits {
            framing: BodyFraming::Length(0),
            keep_alive: true,
            client_version: Version::Http11,
            keep_content_length: false,
        };
        write_client_response(&mut out, &head, buf, &e);
        assert_eq!(out, b"HTTP/1.1 500 Ori\xebnt\r\nContent-Length: 0\r\n\r\n");
        out.clear();
        write_status_line(&mut out, 404, canonical_reason(404));
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\n");
        out.clear();
        write_status_line(&mut out, 299, canonical_reason(299));
        assert_eq!(out, b"HTTP/1.1 299 \r\n");
        out.clear();
        write_status_line(&mut out, 60000, b"x");
        assert_eq!(out, b"HTTP/1.1 999 x\r\n");
        for s in [400, 417, 431, 502, 504, 505, 429] {
            assert!(!canonical_reason(s).is_empty());
        }
    }

    #[test]
    fn decimal_writer() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let mut out = b"x=".to_vec();
        write_usize(&mut out, 4096);
        assert_eq!(out, b"x=4096");
    }
}
