//! Response head parsing: turns the bytes an upstream sent into a [`ResponseHead`] of spans and
//! decides how its body is delimited (RFC 9112 section 6.3).
//!
//! Owns the response-side framing and persistence rules and which upstream fields reach the
//! client. It does not own status mapping or retries: every [`ResponseError`] is the upstream's
//! fault and the caller answers 502 and drops the upstream connection.
//!
//! Interim (1xx) heads are returned like any other (`status < 200`, framing `None`) so the caller
//! can skip them and parse again after `head_len`; `101 Switching Protocols` is the caller's
//! problem (sluice never asks for an upgrade). Leading empty lines are skipped as for requests.

use std::fmt;

use super::{
    collect_headers, connection_tokens, content_length, mark_forward, raw_headers, scan_head,
    transfer_codings, BodyFraming, HeadLimits, Headers, ScanError, Span, Version, MAX_HEADERS_CAP,
};
use crate::http::request::Method;

/// A parsed response head. All spans index the buffer given to [`parse_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    /// The reason phrase as sent (possibly empty; obs-text kept verbatim).
    pub reason: Span,
    pub headers: Headers,
    pub framing: BodyFraming,
    /// Whether the upstream connection may be reused after this response.
    pub keep_alive: bool,
    /// Bytes of the head, leading empty lines and the final CRLFCRLF included.
    pub head_len: usize,
    /// The validated Content-Length value, if one was sent, whatever the framing. A response to
    /// HEAD or a 304 has framing `None` but may still announce the length the client should see
    /// (see `writer::ClientResponseEdits::keep_content_length`).
    pub content_length: Option<u64>,
}

/// Why a response head was refused. Always the upstream's fault: the caller answers 502.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The head is larger than `max_head_bytes`.
    HeadTooLarge,
    /// More header fields than `max_headers`.
    TooManyHeaders,
    /// Anything malformed or ambiguous, with the rule it broke.
    Malformed(&'static str),
}

impl ResponseError {
    /// Status for the client: always 502 Bad Gateway.
    pub fn status(&self) -> u16 {
        502
    }

    pub fn message(&self) -> &'static str {
        match self {
            ResponseError::HeadTooLarge => "upstream response head too large",
            ResponseError::TooManyHeaders => "upstream response has too many header fields",
            ResponseError::Malformed(reason) => reason,
        }
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ResponseError {}

/// `HTTP/1.1 200`: the status line up to the space before the reason.
const STATUS_LINE_PREFIX_LEN: usize = 12;

/// Status codes outside this range are invalid (RFC 9110 section 15).
const VALID_STATUS: std::ops::RangeInclusive<u16> = 100..=599;

/// Fields never copied to the client: the writer re-frames every body.
const RESPONSE_DROP: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];

/// Parse a response head at the start of `buf`. `request_method` is the method of the request
/// this answers (a response to HEAD has no body whatever it announces).
///
/// `Ok(None)`: not complete yet. `Ok(Some(head))`: `head.head_len` bytes form the head.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    request_method: Method,
) -> Result<Option<ResponseHead>, ResponseError> {
    let scan = scan_head(buf, limits.max_head_bytes).map_err(scan_error)?;
    let region = &buf[..scan.scanned];

    let mut raw = raw_headers();
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        region,
        &mut raw[..max_headers],
    );
    let n = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return match scan.head_len {
                Some(_) => Err(ResponseError::Malformed("malformed response head")),
                None => Ok(None),
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(e) => return Err(ResponseError::Malformed(httparse_reason(e))),
    };
    let Some(head_len) = scan.head_len.filter(|&len| len == n) else {
        return Err(ResponseError::Malformed("malformed response head"));
    };

    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(ResponseError::Malformed("malformed status line"));
    };
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(ResponseError::Malformed("unsupported HTTP version")),
    };
    if !VALID_STATUS.contains(&status) {
        return Err(ResponseError::Malformed("status code out of range"));
    }
    let reason = reason_span(buf, scan.first_line)
        .ok_or(ResponseError::Malformed("malformed status line"))?;

    let mut headers = collect_headers(buf, res.headers)
        .ok_or(ResponseError::Malformed("malformed header field"))?;
    let length = content_length(&headers, buf).map_err(ResponseError::Malformed)?;
    let framing = framing(&headers, buf, status, request_method, length)?;
    let tokens = connection_tokens(&headers, buf);
    // RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; the
    // connection must be closed after it whatever it says.
    let te_in_http10 = version == Version::Http10 && transfer_codings(&headers, buf).present;
    let keep_alive = framing != BodyFraming::CloseDelimited
        && !tokens.close
        && !te_in_http10
        && (version == Version::Http11 || tokens.keep_alive);
    mark_forward(&mut headers, buf, &RESPONSE_DROP);

    Ok(Some(ResponseHead {
        version,
        status,
        reason,
        headers,
        framing,
        keep_alive,
        head_len,
        content_length: length,
    }))
}

fn scan_error(e: ScanError) -> ResponseError {
    match e {
        ScanError::TooLarge => ResponseError::HeadTooLarge,
        other => ResponseError::Malformed(other.reason()),
    }
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header field name in response",
        httparse::Error::HeaderValue => "invalid character in response header value",
        httparse::Error::NewLine => "malformed line ending in response",
        httparse::Error::Status => "malformed status line",
        httparse::Error::Token => "malformed status line",
        httparse::Error::TooManyHeaders => "too many header fields in response",
        httparse::Error::Version => "malformed or unsupported HTTP version in response",
    }
}

/// The reason phrase, taken from the raw status line (httparse replaces a reason containing
/// obs-text with a static empty string, which has no offset in the buffer).
fn reason_span(buf: &[u8], first_line: usize) -> Option<Span> {
    let line = buf.get(first_line..)?;
    let cr = line.iter().position(|&b| b == b'\r')?;
    // httparse checked `HTTP/1.x SP 3DIGIT` and then either SP reason or the line end.
    let start = if cr > STATUS_LINE_PREFIX_LEN {
        STATUS_LINE_PREFIX_LEN + 1
    } else {
        cr
    };
    Span::new(first_line.checked_add(start)?, first_line.checked_add(cr)?)
}

/// RFC 9112 section 6.3, in order.
fn framing(
    headers: &Headers,
    buf: &[u8],
    status: u16,
    request_method: Method,
    length: Option<u64>,
) -> Result<BodyFraming, ResponseError> {
    let te = transfer_codings(headers, buf);
    if te.present && length.is_some() {
        // "ought to be handled as an error" (RFC 9112 section 6.3 rule 3): the classic
        // response-splitting shape, even where this response has no body anyway.
        return Err(ResponseError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if request_method == Method::Head || status < 200 || status == 204 || status == 304 {
        return Ok(BodyFraming::None);
    }
    if te.present {
        if te.has_empty {
            return Err(ResponseError::Malformed("empty Transfer-Encoding element"));
        }
        if te.chunked > 1 {
            return Err(ResponseError::Malformed("chunked applied more than once"));
        }
        // A final coding other than chunked: the body runs to the end of the connection.
        return Ok(if te.last_is_chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::CloseDelimited
        });
    }
    Ok(match length {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::CloseDelimited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::eq_ignore_case;

    fn parse(buf: &[u8]) -> Result<Option<ResponseHead>, ResponseError> {
        parse_response(buf, &HeadLimits::default(), Method::Get)
    }

    fn ok_for(buf: &[u8], method: Method) -> ResponseHead {
        match parse_response(buf, &HeadLimits::default(), method) {
            Ok(Some(h)) => h,
            other => panic!(
                "expected a head for {:?}, got {:?}",
                String::from_utf8_lossy(buf),
                other
            ),
        }
    }

    fn ok(buf: &[u8]) -> ResponseHead {
        ok_for(buf, Method::Get)
    }

    fn err(buf: &[u8]) -> ResponseError {
        match parse(buf) {
            Err(e) => e,
            other => panic!(
                "expected an error for {:?}, got {:?}",
                String::from_utf8_lossy(buf),
                other
            ),
        }
    }

    #[test]
    fn simple() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let h = ok(buf);
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.status, 200);
        assert_eq!(h.reason.get(buf), b"OK");
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert_eq!(h.content_length, Some(5));
        assert!(h.keep_alive);
        assert_eq!(h.head_len, buf.len() - 5);
        let fwd: Vec<(&[u8], bool)> = h
            .headers
            .iter()
            .map(|x| (x.name.get(buf), x.forward))
            .collect();
        assert_eq!(fwd, vec![(&b"Content-Length"[..], false), (b"X-A", true)]);
    }

    #[test]
    fn reason_phrases() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"HTTP/1.1 404 Not Found\r\n\r\n", b"Not Found"),
            (b"HTTP/1.1 301\r\n\r\n", b""),
            (b"HTTP/1.1 200 \r\n\r\n", b""),
            (b"HTTP/1.1 200  OK\r\n\r\n", b" OK"),
            (
                b"HTTP/1.1 500 Ori\xebntatieprobleem\r\n\r\n",
                b"Ori\xebntatieprobleem",
            ),
            (b"\r\nHTTP/1.0 200 Fine\tthanks\r\n\r\n", b"Fine\tthanks"),
        ];
        for (buf, want) in cases {
            assert_eq!(
                ok(buf).reason.get(buf),
                want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn malformed_status_lines() {
        for bad in [
            &b"HTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/01.1 200 OK\r\n\r\n",
            b"HTTP/1.01 200 OK\r\n\r\n",
            b"HTTP/1.1\t200 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 2 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/0.9 200 OK\r\n\r\n",
            b"RTSP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 O\x01K\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nFoo: 1\rBar: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n Host: foo\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: \0\r\n\r\n",
            b"\nHTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(err(bad), ResponseError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn framing_rules() {
        let f = |buf: &[u8]| ok(buf).framing;
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, deflate\r\n\r\n"),
            BodyFraming::CloseDelimited
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunkedchunked\r\n\r\n"),
            BodyFraming::CloseDelimited
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"),
            BodyFraming::CloseDelimited
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            BodyFraming::Length(0)
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length:\t42\t\r\n\r\n"),
            BodyFraming::Length(42)
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n"),
            BodyFraming::Length(7)
        );
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n"), BodyFraming::CloseDelimited);
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "103 Early Hints",
            "204 No Content",
            "304 Not Modified",
        ] {
            let buf = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            let h = ok(buf.as_bytes());
            assert_eq!(h.framing, BodyFraming::None, "{status}");
            assert!(h.keep_alive);
            assert_eq!(h.content_length, Some(10));
        }
        let head = ok_for(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            Method::Head,
        );
        assert_eq!(head.framing, BodyFraming::None);
        assert_eq!(head.content_length, Some(10));
        assert_eq!(
            ok_for(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Head
            )
            .framing,
            BodyFraming::None
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n",
        ] {
            assert!(
                matches!(err(bad), ResponseError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |buf: &[u8]| ok(buf).keep_alive;
        assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n"
        ));
        let te10 =
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(ok(te10).framing, BodyFraming::Chunked);
        assert!(!ka(te10));
    }

    #[test]
    fn forward_flags() {
        let buf = b"HTTP/1.1 200 OK\r\n\
            Connection: keep-alive, X-Hop\r\n\
            Keep-Alive: timeout=5\r\n\
            X-Hop: 1\r\n\
            Transfer-Encoding: chunked\r\n\
            Trailer: X-T\r\n\
            Upgrade: h2c\r\n\
            Proxy-Authenticate: Basic\r\n\
            Set-Cookie: a=b\r\n\
            Content-Type: text/plain\r\n\r\n";
        let h = ok(buf);
        let fwd: Vec<&[u8]> = h
            .headers
            .iter()
            .filter(|x| x.forward)
            .map(|x| x.name.get(buf))
            .collect();
        assert_eq!(fwd, vec![&b"Set-Cookie"[..], b"Content-Type"]);
        assert!(h
            .headers
            .iter()
            .any(|x| eq_ignore_case(x.name.get(buf), b"x-hop") && !x.forward));
    }

    #[test]
    fn limits() {
        let buf = b"HTTP/1.1 200 OK\r\nA: b\r\nC: d\r\n\r\n";
        let tight = HeadLimits {
            max_head_bytes: 10,
            max_headers: 10,
        };
        assert_eq!(
            parse_response(buf, &tight, Method::Get),
            Err(ResponseError::HeadTooLarge)
        );
        let one = HeadLimits {
            max_head_bytes: 1000,
            max_headers: 1,
        };
        assert_eq!(
            parse_response(buf, &one, Method::Get),
            Err(ResponseError::TooManyHeaders)
        );
        for e in [
            ResponseError::HeadTooLarge,
            ResponseError::TooManyHeaders,
            ResponseError::Malformed("x"),
        ] {
            assert_eq!(e.status(), 502);
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn interim_then_final() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
        let first = ok(buf);
        assert_eq!(first.status, 100);
        let rest = &buf[first.head_len..];
        let second = ok(rest);
        assert_eq!(second.status, 404);
        assert_eq!(second.reason.get(rest), b"Not Found");
        assert_eq!(second.framing, BodyFraming::Length(3));
    }

    #[test]
    fn split_at_every_offset() {
        let heads: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Empty:\r\n\r\n",
            b"\r\nHTTP/1.0 301 Moved\r\nLocation: /x\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 204\r\n\r\n",
            b"HTTP/1.1 200 Ori\xebnt\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for head in heads {
            let whole = ok(head);
            assert_eq!(whole.head_len, head.len());
            for i in 0..head.len() {
                assert_eq!(
                    parse(&head[..i]),
                    Ok(None),
                    "prefix {i} of {:?}",
                    String::from_utf8_lossy(head)
                );
            }
            let mut more = head.to_vec();
            more.extend_from_slice(b"hello\r\nHTTP/1.1 200 OK\r\n");
            assert_eq!(ok(&more), whole);
        }
    }
}
