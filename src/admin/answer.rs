//! The admin endpoints' answers, sans-IO: which endpoint a parsed request head asks for, and
//! the complete response bytes (head and body) for it, for a refused head, and for a handler
//! that panicked.
//!
//! Every answer carries `Content-Length` and `Connection: close` (the admin server serves one
//! request per connection, see `crate::admin`). A HEAD request gets the head a GET would get,
//! `Content-Length` included, and no body. JSON bodies end with a newline, like the proxy's
//! own error answers (`crate::error::write_error_response`), and errors have the same shape:
//! `{"error":"<code>","message":"<text>"}`.
//!
//! Not here: sockets, timeouts and the thread (`crate::admin`), the metric values (the
//! `metrics` handler), the readiness rule (the `ready` handler).

use std::io::Write;

use super::AdminHandlers;
use crate::http::request::{Method, RequestError, RequestHead};

/// The `Content-Type` of a JSON answer.
const JSON: &str = "application/json";

/// The paths the admin server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/metrics`: the Prometheus text exposition.
    Metrics,
    /// `/health`: the process is alive and its admin thread answers.
    Health,
    /// `/ready`: the proxy should get traffic.
    Ready,
}

impl Endpoint {
    /// The endpoint of a request path (the target without its query), matched exactly.
    pub fn from_path(path: &[u8]) -> Option<Endpoint> {
        match path {
            b"/metrics" => Some(Endpoint::Metrics),
            b"/health" => Some(Endpoint::Health),
            b"/ready" => Some(Endpoint::Ready),
            _ => None,
        }
    }
}

/// Appends the answer to a parsed request to `out`. `head_buf` is the buffer `head` was parsed
/// from; `body` is scratch space for the response body (cleared first, kept by the caller so
/// its capacity is reused across scrapes). The handlers run here: a panic in one unwinds out
/// of this function, and the caller answers [`write_panic`] instead.
pub fn write_answer(
    head: &RequestHead,
    head_buf: &[u8],
    handlers: &AdminHandlers,
    body: &mut String,
    out: &mut Vec<u8>,
) {
    body.clear();
    let head_only = head.method == Method::Head;
    let Some(endpoint) = Endpoint::from_path(head.path.get(head_buf)) else {
        json_error(
            body,
            "not_found",
            "no such admin endpoint (try /metrics, /health or /ready)",
        );
        write_response(out, 404, JSON, false, body, head_only);
        return;
    };
    if !matches!(head.method, Method::Get | Method::Head) {
        json_error(
            body,
            "method_not_allowed",
            "the admin endpoints answer GET and HEAD only",
        );
        write_response(out, 405, JSON, true, body, false);
        return;
    }
    match endpoint {
        Endpoint::Metrics => {
            (handlers.metrics)(body);
            write_response(
                out,
                200,
                crate::metrics::text::CONTENT_TYPE,
                false,
                body,
                head_only,
            );
        }
        Endpoint::Health => {
            body.push_str("{\"status\":\"live\"}\n");
            write_response(out, 200, JSON, false, body, head_only);
        }
        Endpoint::Ready => match (handlers.ready)() {
            Ok(()) => {
                body.push_str("{\"status\":\"ready\"}\n");
                write_response(out, 200, JSON, false, body, head_only);
            }
            Err(reason) => {
                body.push_str("{\"status\":\"not_ready\",\"reason\":");
                json_string(body, &reason);
                body.push_str("}\n");
                write_response(out, 503, JSON, false, body, head_only);
            }
        },
    }
}

/// Appends the answer to a head the parser refused (400, 431, 505, 417).
pub fn write_refusal(err: &RequestError, body: &mut String, out: &mut Vec<u8>) {
    body.clear();
    json_error(body, err.code(), err.message());
    write_response(out, err.status(), JSON, false, body, false);
}

/// Appends the answer to a head that did not arrive within the read timeout (408).
pub fn write_timeout(body: &mut String, out: &mut Vec<u8>) {
    body.clear();
    json_error(body, "request_timeout", "request head not received in time");
    write_response(out, 408, JSON, false, body, false);
}

/// Appends the answer given when a handler panicked (500). The panic is logged by the caller.
pub fn write_panic(head_only: bool, body: &mut String, out: &mut Vec<u8>) {
    body.clear();
    json_error(
        body,
        "internal_error",
        "the admin handler failed; see the log",
    );
    write_response(out, 500, JSON, false, body, head_only);
}

/// Appends a complete response: status line, `Content-Type`, `Content-Length` (of `body`, also
/// for HEAD), `Allow: GET, HEAD` when asked, `Connection: close`, then `body` unless `head_only`.
fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    allow: bool,
    body: &str,
    head_only: bool,
) {
    let reason = crate::error::reason_phrase(status);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if allow {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

/// `{"error":"<code>","message":"<message>"}\n`
fn json_error(body: &mut String, code: &str, message: &str) {
    body.push_str("{\"error\":");
    json_string(body, code);
    body.push_str(",\"message\":");
    json_string(body, message);
    body.push_str("}\n");
}

/// Appends `s` as a JSON string literal (quotes, backslashes and control characters escaped):
/// a readiness reason is text from elsewhere in the process.
fn json_string(body: &mut String, s: &str) {
    body.push('"');
    for c in s.chars() {
        match c {
            '"' => body.push_str("\\\""),
            '\\' => body.push_str("\\\\"),
            '\n' => body.push_str("\\n"),
            '\r' => body.push_str("\\r"),
            '\t' => body.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(body, "\\u{:04x}", u32::from(c));
            }
            c => body.push(c),
        }
    }
    body.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::http::request::parse_request;
    use crate::http::HeadLimits;

    fn handlers(ready: Result<(), &'static str>) -> AdminHandlers {
        AdminHandlers {
            metrics: Arc::new(|out: &mut String| {
                out.push_str("# HELP m M.\n# TYPE m gauge\nm 1\n")
            }),
            ready: Arc::new(move || ready.map_err(str::to_string)),
        }
    }

    /// The complete answer to `request` as text.
    fn answer(request: &str, ready: Result<(), &'static str>) -> String {
        let buf = request.as_bytes();
        let mut out = Vec::new();
        let mut body = String::new();
        match parse_request(buf, &HeadLimits::default()) {
            Ok(Some(head)) => write_answer(&head, buf, &handlers(ready), &mut body, &mut out),
            Ok(None) => panic!("incomplete head: {request:?}"),
            Err(e) => write_refusal(&e, &mut body, &mut out),
        }
        String::from_utf8(out).unwrap()
    }

    fn get(target: &str) -> String {
        answer(&format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()))
    }

    #[test]
    fn endpoints_answer_exact_bytes() {
        assert_eq!(
            get("/health"),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\
             Connection: close\r\n\r\n{\"status\":\"live\"}\n"
        );
        assert_eq!(
            get("/ready?verbose=1"),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\
             Connection: close\r\n\r\n{\"status\":\"ready\"}\n"
        );
        assert_eq!(
            get("/metrics"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 31\r\nConnection: close\r\n\r\n# HELP m M.\n# TYPE m gauge\nm 1\n"
        );
    }

    #[test]
    fn not_ready_names_the_reason_escaped() {
        let text = answer(
            "GET /ready HTTP/1.1\r\nHost: a\r\n\r\n",
            Err("shutting \"down\"\\\n"),
        );
        let body = "{\"status\":\"not_ready\",\"reason\":\"shutting \\\"down\\\"\\\\\\n\"}\n";
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[test]
    fn head_gets_the_get_head_without_a_body() {
        for path in ["/health", "/ready", "/metrics", "/nope"] {
            let full = get(path);
            let head_only = answer(&format!("HEAD {path} HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
            let end = full.find("\r\n\r\n").unwrap() + 4;
            assert_eq!(head_only, full[..end], "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        for path in ["/", "/metrics/", "/Health", "/readyz", "/crypto/sign"] {
            let text = get(path);
            assert!(
                text.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{path}: {text}"
            );
            assert!(text.ends_with(
                "\r\n\r\n{\"error\":\"not_found\",\"message\":\"no such admin endpoint (try /metrics, /health or /ready)\"}\n"
            ));
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            let text = answer(
                &format!("{method} /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
                Ok(()),
            );
            assert!(
                text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
                "{method}: {text}"
            );
            assert!(text.contains("\r\nAllow: GET, HEAD\r\n"), "{text}");
            assert!(text.contains("{\"error\":\"method_not_allowed\""), "{text}");
        }
    }

    #[test]
    fn refused_heads_get_the_parser_status() {
        let text = answer("GET /metrics HTTP/1.1\r\n\r\n", Ok(()));
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("{\"error\":\"bad_request\""), "{text}");
        let text = answer("GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n", Ok(()));
        assert!(text.starts_with("HTTP/1.1 505 "), "{text}");
    }

    #[test]
    fn timeout_and_panic_answers() {
        let (mut body, mut out) = (String::new(), Vec::new());
        write_timeout(&mut body, &mut out);
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        write_panic(false, &mut body, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
        assert!(text.ends_with(
            "{\"error\":\"internal_error\",\"message\":\"the admin handler failed; see the log\"}\n"
        ));
    }

    #[test]
    fn json_strings_escape_control_characters() {
        let mut s = String::new();
        json_string(&mut s, "a\u{1}b\tc\rd");
        assert_eq!(s, "\"a\\u0001b\\tc\\rd\"");
    }
}
