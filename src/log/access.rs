//! The access log's two line formats, sans-IO: an [`AccessRecord`] in, one line appended to a
//! buffer (the calling thread's log buffer: nothing is allocated).
//!
//! Text (`--access-log text`), nginx-like, absent values as `-`:
//!
//! ```text
//! 2026-11-26T10:00:00.123Z 10.0.0.7 "GET /crypto/sign?message=hi&callback=<redacted> HTTP/1.1" 200 17 1.532 endpoint=/crypto/sign job=3f2a… upstream=200 attempts=1 reason=-
//! ```
//!
//! Fields: time (UTC, milliseconds), client address, request line (`"-"` when no request line
//! could be parsed), status, body bytes sent, duration in milliseconds (from the complete
//! request head to the end of the answer, microsecond resolution), then the allowlist entry
//! that matched, the job id, the origin's status, the upstream attempts, and the reason (the
//! JSON error code of an answer sluice made itself, `client_closed` or `response_truncated`).
//!
//! JSON (`--access-log json`): one object per line with the same fields:
//! `{"time":…,"client":…,"method":…,"path":…,"query":…,"protocol":…,"status":…,"bytes":…,
//! "duration_ms":…,"endpoint":…,"job":…,"upstream":…,"attempts":…,"reason":…}` (`null` when
//! absent).
//!
//! Client-controlled bytes (method, path, query) are escaped ([`super::escape`]). The value of
//! every `callback` query parameter is written `<redacted>`: a callback URL may carry a secret
//! of the caller's. Request headers are never logged (`Authorization` least of all).

use std::time::SystemTime;

use super::escape;

/// What the request line said (absent when the head could not be parsed).
#[derive(Clone, Copy, Debug)]
pub struct RequestLine<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub protocol: &'static str,
}

/// One answered request, as the access log shows it.
#[derive(Clone, Copy, Debug)]
pub struct AccessRecord<'a> {
    pub time: SystemTime,
    pub client: &'a [u8],
    pub request: Option<RequestLine<'a>>,
    pub status: u16,
    pub body_bytes: u64,
    pub duration_micros: u64,
    pub endpoint: Option<&'a str>,
    /// The job id in hex.
    pub job: Option<&'a [u8; 32]>,
    pub upstream: Option<u16>,
    pub attempts: u32,
    pub reason: Option<&'a str>,
}

/// What a `callback` parameter's value is replaced with.
pub const REDACTED: &[u8] = b"<redacted>";

/// Writes one access-log line in `mode` through the calling thread's log buffer (see
/// `log::writer`; nothing is written for `Off`). The caller checked `log::access_log()`.
pub fn log(mode: super::AccessLog, record: &AccessRecord<'_>) {
    match mode {
        super::AccessLog::Off => {}
        super::AccessLog::Text => super::writer::write_line(|buf| write_text(buf, record)),
        super::AccessLog::Json => super::writer::write_line(|buf| write_json(buf, record)),
    }
}

/// Appends the text line (without its newline).
pub fn write_text(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    super::write_time(out, r.time);
    out.push(b' ');
    escape::text(out, r.client);
    out.extend_from_slice(b" \"");
    match &r.request {
        Some(line) => {
            escape::text(out, line.method);
            out.push(b' ');
            escape::text(out, line.path);
            if let Some(q) = line.query {
                out.push(b'?');
                write_query(out, q, escape::text);
            }
            out.push(b' ');
            out.extend_from_slice(line.protocol.as_bytes());
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" ");
    write_u64(out, u64::from(r.status));
    out.push(b' ');
    write_u64(out, r.body_bytes);
    out.push(b' ');
    write_millis(out, r.duration_micros);
    out.extend_from_slice(b" endpoint=");
    match r.endpoint {
        Some(e) => escape::text(out, e.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" job=");
    match r.job {
        Some(hex) => out.extend_from_slice(hex),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" upstream=");
    match r.upstream {
        Some(s) => write_u64(out, u64::from(s)),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" attempts=");
    write_u64(out, u64::from(r.attempts));
    out.extend_from_slice(b" reason=");
    match r.reason {
        Some(reason) => escape::text(out, reason.as_bytes()),
        None => out.push(b'-'),
    }
}

/// Appends the JSON line (without its newline).
pub fn write_json(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    let string = |out: &mut Vec<u8>, bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            out.push(b'"');
            escape::json(out, b);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"time\":\"");
    super::write_time(out, r.time);
    out.extend_from_slice(b"\",\"client\":");
    string(out, Some(r.client));
    let line = r.request.as_ref();
    out.extend_from_slice(b",\"method\":");
    string(out, line.map(|l| l.method));
    out.extend_from_slice(b",\"path\":");
    string(out, line.map(|l| l.path));
    out.extend_from_slice(b",\"query\":");
    match line.and_then(|l| l.query) {
        Some(q) => {
            out.push(b'"');
            write_query(out, q, escape::json);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"protocol\":");
    string(out, line.map(|l| l.protocol.as_bytes()));
    out.extend_from_slice(b",\"status\":");
    write_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes\":");
    write_u64(out, r.body_bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    write_millis(out, r.duration_micros);
    out.extend_from_slice(b",\"endpoint\":");
    string(out, r.endpoint.map(str::as_bytes));
    out.extend_from_slice(b",\"job\":");
    string(out, r.job.map(|j| &j[..]));
    out.extend_from_slice(b",\"upstream\":");
    match r.upstream {
        Some(s) => write_u64(out, u64::from(s)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"attempts\":");
    write_u64(out, u64::from(r.attempts));
    out.extend_from_slice(b",\"reason\":");
    string(out, r.reason.map(str::as_bytes));
    out.push(b'}');
}

/// Writes a query string parameter by parameter, escaped with `escape`, each `callback`
/// parameter's value replaced with [`REDACTED`] (its name as sent, so `callb%61ck` shows too).
fn write_query(out: &mut Vec<u8>, query: &[u8], escape: fn(&mut Vec<u8>, &[u8])) {
    for (i, param) in query.split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let name_len = param.iter().position(|&b| b == b'=').unwrap_or(param.len());
        let name = &param[..name_len];
        if crate::webhook::url::name_is_callback(name) {
            escape(out, name);
            out.push(b'=');
            out.extend_from_slice(REDACTED);
        } else {
            escape(out, param);
        }
    }
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = v;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Microseconds as milliseconds with three decimals (`1532` as `1.532`).
fn write_millis(out: &mut Vec<u8>, micros: u64) {
    write_u64(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const JOB: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn record<'a>(request: Option<RequestLine<'a>>) -> AccessRecord<'a> {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_151_200_123),
            client: b"10.0.0.7",
            request,
            status: 200,
            body_bytes: 17,
            duration_micros: 1532,
            endpoint: Some("/crypto/*"),
            job: Some(JOB),
            upstream: Some(200),
            attempts: 1,
            reason: None,
        }
    }

    fn get<'a>(path: &'a [u8], query: Option<&'a [u8]>) -> Option<RequestLine<'a>> {
        Some(RequestLine {
            method: b"GET",
            path,
            query,
            protocol: "HTTP/1.1",
        })
    }

    fn text(r: &AccessRecord<'_>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, r);
        String::from_utf8(out).unwrap()
    }

    fn json(r: &AccessRecord<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        write_json(&mut out, r);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains('\n'));
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn text_line() {
        let r = record(get(b"/crypto/sign", Some(b"message=hi")));
        assert_eq!(
            text(&r),
            "2025-11-26T10:00:00.123Z 10.0.0.7 \"GET /crypto/sign?message=hi HTTP/1.1\" 200 17 \
             1.532 endpoint=/crypto/* job=0123456789abcdef0123456789abcdef upstream=200 \
             attempts=1 reason=-"
        );
        let r = AccessRecord {
            status: 404,
            body_bytes: 0,
            duration_micros: 7,
            endpoint: None,
            job: None,
            upstream: None,
            attempts: 0,
            reason: Some("not_found"),
            ..record(get(b"/other", None))
        };
        assert_eq!(
            text(&r),
            "2025-11-26T10:00:00.123Z 10.0.0.7 \"GET /other HTTP/1.1\" 404 0 0.007 endpoint=- \
             job=- upstream=- attempts=0 reason=not_found"
        );
        let r = AccessRecord {
            status: 400,
            ..record(None)
        };
        assert!(text(&r).contains(" 10.0.0.7 \"-\" 400 17 "), "{}", text(&r));
    }

    #[test]
    fn json_line_has_the_same_fields() {
        let v = json(&record(get(b"/crypto/sign", Some(b"message=hi"))));
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2025-11-26T10:00:00.123Z",
                "client": "10.0.0.7",
                "method": "GET",
                "path": "/crypto/sign",
                "query": "message=hi",
                "protocol": "HTTP/1.1",
                "status": 200,
                "bytes": 17,
                "duration_ms": 1.532,
                "endpoint": "/crypto/*",
                "job": "0123456789abcdef0123456789abcdef",
                "upstream": 200,
                "attempts": 1,
                "reason": null,
            })
        );
        let v = json(&AccessRecord {
            endpoint: None,
            job: None,
            upstream: None,
            reason: Some("bad_request"),
            ..record(None)
        });
        for null in [
            "method", "path", "query", "protocol", "endpoint", "job", "upstream",
        ] {
            assert!(v[null].is_null(), "{null}: {v}");
        }
        assert_eq!(v["reason"], "bad_request");
    }

    #[test]
    fn callbacks_are_redacted_in_both_formats() {
        let q: &[u8] =
            b"a=1&callback=https%3A%2F%2Fh%2Fx%3Ftoken%3Dsecret&callb%61ck=x&cb=keep&callback";
        let r = record(get(b"/x", Some(q)));
        let t = text(&r);
        assert!(
            t.contains(
                "\"GET /x?a=1&callback=<redacted>&callb%61ck=<redacted>&cb=keep&callback=<redacted> HTTP/1.1\""
            ),
            "{t}"
        );
        assert!(!t.contains("secret"));
        let v = json(&r);
        assert_eq!(
            v["query"],
            "a=1&callback=<redacted>&callb%61ck=<redacted>&cb=keep&callback=<redacted>"
        );
    }

    #[test]
    fn client_bytes_are_escaped() {
        let r = record(Some(RequestLine {
            method: b"G\"ET",
            path: b"/a\"b\\c\x1b",
            query: Some(b"q=\"\n\xff"),
            protocol: "HTTP/1.0",
        }));
        let t = text(&r);
        assert!(
            t.contains("\"G\\\"ET /a\\\"b\\\\c\\x1b?q=\\\"\\x0a\\xff HTTP/1.0\""),
            "{t}"
        );
        let v = json(&r);
        assert_eq!(v["method"], "G\"ET");
        assert_eq!(v["path"], "/a\"b\\c\u{1b}");
        assert_eq!(v["query"], "q=\"\n\u{fffd}");
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        write_u64(&mut out, 0);
        out.push(b' ');
        write_u64(&mut out, u64::MAX);
        out.push(b' ');
        write_millis(&mut out, 0);
        out.push(b' ');
        write_millis(&mut out, 12_345_678);
        assert_eq!(out, b"0 18446744073709551615 0.000 12345.678");
    }
}
