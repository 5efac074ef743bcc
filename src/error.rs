//! Errors of the forwarding path and the JSON error responses sluice itself generates.
//!
//! One enum, [`ProxyError`], per boundary crossing: each variant knows where the fault came from
//! ([`Source`]: the client, the upstream, or sluice), whether a later attempt could succeed
//! ([`ProxyError::retryable`], used by the job executor), and which status and JSON error code
//! the client sees. Every sluice-generated error response has the same shape:
//! `{"error":"<code>","message":"<text>"}` with `Content-Type: application/json`; never an empty
//! 500.

use std::fmt;
use std::io;

use crate::http::writer::write_usize;

/// Where a fault came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Internal,
}

/// A failure while forwarding one request.
#[derive(Debug)]
pub enum ProxyError {
    /// Connecting to the origin failed (refused, unreachable, reset during connect).
    UpstreamConnect(io::Error),
    /// The TLS handshake with the origin failed (including certificate errors).
    UpstreamTls(io::Error),
    /// Connecting (TCP plus TLS) took longer than `--upstream-connect-timeout-ms`.
    UpstreamConnectTimeout,
    /// No response head within `--upstream-response-timeout-ms`, or a body read stalled.
    UpstreamTimeout,
    /// Reading from or writing to the origin failed, or it closed early.
    UpstreamIo(io::Error),
    /// The origin closed the connection before sending any response byte.
    UpstreamClosed,
    /// The origin's response could not be parsed or framed.
    UpstreamMalformed(&'static str),
    /// The client's request body ended badly (timeout, reset, invalid chunk).
    ClientBody(&'static str),
    /// The client's request body is larger than `--max-request-body-bytes`.
    ClientBodyTooLarge,
    /// Writing to the client failed: nothing more can be sent.
    ClientGone,
}

impl ProxyError {
    pub fn source(&self) -> Source {
        match self {
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed
            | ProxyError::UpstreamMalformed(_) => Source::Upstream,
            ProxyError::ClientBody(_) | ProxyError::ClientBodyTooLarge | ProxyError::ClientGone => {
                Source::Client
            }
        }
    }

    /// Whether another attempt (on a fresh connection, later) could succeed. Certificate and
    /// protocol errors are not transient; connection failures and timeouts are.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect(_)
                | ProxyError::UpstreamConnectTimeout
                | ProxyError::UpstreamTimeout
                | ProxyError::UpstreamIo(_)
                | ProxyError::UpstreamClosed
        )
    }

    /// The status and JSON error code the client gets.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => {
                (504, "gateway_timeout")
            }
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed
            | ProxyError::UpstreamMalformed(_) => (502, "bad_gateway"),
            ProxyError::ClientBody(_) => (400, "bad_request"),
            ProxyError::ClientBodyTooLarge => (413, "payload_too_large"),
            ProxyError::ClientGone => (400, "bad_request"),
        }
    }

    /// A short message for the JSON body. It never includes upstream bytes or secrets.
    pub fn message(&self) -> &'static str {
        match self {
            ProxyError::UpstreamConnect(_) => "could not connect to the upstream",
            ProxyError::UpstreamTls(_) => "TLS handshake with the upstream failed",
            ProxyError::UpstreamConnectTimeout => "timed out connecting to the upstream",
            ProxyError::UpstreamTimeout => "timed out waiting for the upstream",
            ProxyError::UpstreamIo(_) => "the upstream connection failed",
            ProxyError::UpstreamClosed => "the upstream closed the connection without answering",
            ProxyError::UpstreamMalformed(_) => "the upstream sent a malformed response",
            ProxyError::ClientBody(_) => "the request body could not be read",
            ProxyError::ClientBodyTooLarge => "the request body is larger than allowed",
            ProxyError::ClientGone => "the client went away",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::UpstreamConnect(e) => write!(f, "upstream connect failed: {e}"),
            ProxyError::UpstreamTls(e) => write!(f, "upstream TLS failed: {e}"),
            ProxyError::UpstreamIo(e) => write!(f, "upstream I/O failed: {e}"),
            ProxyError::UpstreamMalformed(why) => write!(f, "malformed upstream response: {why}"),
            ProxyError::ClientBody(why) => write!(f, "client body: {why}"),
            other => f.write_str(other.message()),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::UpstreamConnect(e)
            | ProxyError::UpstreamTls(e)
            | ProxyError::UpstreamIo(e) => Some(e),
            _ => None,
        }
    }
}

/// The reason phrase sluice uses for a status it generates.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Appends a complete sluice-generated JSON error response to `out`. `code` and `message` are
/// static strings chosen by sluice (no escaping needed: they never contain quotes or
/// backslashes, which a debug assertion checks).
pub fn write_error_response(
    out: &mut Vec<u8>,
    status: u16,
    code: &str,
    message: &str,
    keep_alive: bool,
) {
    write_error_response_with(out, status, code, message, keep_alive, None);
}

/// [`write_error_response`] with a `Retry-After: <secs>` header (503 over capacity).
pub fn write_error_response_with(
    out: &mut Vec<u8>,
    status: u16,
    code: &str,
    message: &str,
    keep_alive: bool,
    retry_after_secs: Option<u32>,
) {
    debug_assert!(!code.contains(['"', '\\']) && !message.contains(['"', '\\']));
    // {"error":"<code>","message":"<message>"}\n
    let body_len = 10 + code.len() + 13 + message.len() + 3;
    out.extend_from_slice(b"HTTP/1.1 ");
    write_usize(out, status as usize);
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    if let Some(secs) = retry_after_secs {
        out.extend_from_slice(b"\r\nRetry-After: ");
        write_usize(out, secs as usize);
    }
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    write_usize(out, body_len);
    if keep_alive {
        out.extend_from_slice(b"\r\n\r\n");
    } else {
        out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    }
    let start = out.len();
    out.extend_from_slice(b"{\"error\":\"");
    out.extend_from_slice(code.as_bytes());
    out.extend_from_slice(b"\",\"message\":\"");
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\"}\n");
    debug_assert_eq!(out.len() - start, body_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_shape() {
        let mut out = Vec::new();
        write_error_response(&mut out, 404, "not_found", "path is not allowlisted", false);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("Content-Type: application/json"));
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(
            body,
            "{\"error\":\"not_found\",\"message\":\"path is not allowlisted\"}\n"
        );
    }

    #[test]
    fn classification() {
        assert_eq!(ProxyError::UpstreamTimeout.status().0, 504);
        assert_eq!(ProxyError::UpstreamConnectTimeout.status().0, 504);
        assert_eq!(ProxyError::UpstreamClosed.status().0, 502);
        assert!(ProxyError::UpstreamClosed.retryable());
        assert!(!ProxyError::UpstreamMalformed("x").retryable());
        assert_eq!(ProxyError::ClientGone.source(), Source::Client);
    }
}
