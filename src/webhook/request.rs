//! The delivery exchange on the wire, sans-IO: encoding the `POST` head, reading the receiver's
//! verdict out of its response head, and tracking how much of a response body is left to
//! discard.
//!
//! The sender (`sender.rs`) owns the sockets and only moves bytes between them and these
//! functions; every rule here is a byte-slice test.

use std::time::{Duration, SystemTime};

use super::delivery::{AttemptResult, Delivery};
use super::schedule::parse_retry_after;
use super::sign::{sign, WebhookSecret};
use crate::http::chunked::{Chunk, ChunkedDecoder};
use crate::http::request::Method;
use crate::http::response::parse_response;
use crate::http::{find_header, BodyFraming, HeadLimits};

/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

/// Longest job id sent, in bytes: ids are sluice's own (short); the bound keeps a bad record
/// from producing a huge header.
pub const MAX_JOB_ID_BYTES: usize = 256;

/// Longest `Content-Type` forwarded, in bytes (real media types are a few dozen bytes).
pub const MAX_CONTENT_TYPE_BYTES: usize = 1024;

/// Largest response head read from a receiver, in bytes. A receiver's answer only matters for
/// its status and `Retry-After`; 16 KiB is plenty and bounds the memory per attempt.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields accepted in a receiver's response head.
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// The status line and headers of the receiver's answer that the sender acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// Bytes of the head in the buffer; the body (or the next head after a 1xx) follows.
    pub head_len: usize,
    pub framing: BodyFraming,
}

/// Encodes the request head (request line to the empty line) into `out`. With a secret, adds the
/// Standard Webhooks headers signed for `timestamp_secs`. Fails, without writing anything
/// useful, when a field of the record cannot be put in a header (a permanent rejection).
pub fn encode_head(
    d: &Delivery,
    signing: Option<(&WebhookSecret, u64)>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    if d.job_id.is_empty()
        || d.job_id.len() > MAX_JOB_ID_BYTES
        || !d.job_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "job id must be 1-{MAX_JOB_ID_BYTES} visible ASCII characters to be sent in a header"
        ));
    }
    if let Some(ct) = &d.content_type {
        let valid = !ct.is_empty()
            && ct.len() <= MAX_CONTENT_TYPE_BYTES
            && ct
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
            && ct.trim() == ct;
        if !valid {
            return Err("the job's Content-Type is not a valid header value".to_string());
        }
    }
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(d.url.target().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut header = |name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        if !value.is_empty() {
            out.push(b' ');
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    };
    header("Host", d.url.authority());
    header("User-Agent", USER_AGENT);
    if let Some(ct) = &d.content_type {
        header("Content-Type", ct);
    }
    header("Content-Length", &d.body.len().to_string());
    // One connection per delivery: deliveries are rare and spread over time, so a pool would
    // almost never get a hit, and `close` makes the receiver's framing irrelevant to us.
    header("Connection", "close");
    header("Sluice-Job-Id", &d.job_id);
    header("Sluice-Status", d.status.as_str());
    header(
        "Sluice-Upstream-Status",
        &d.upstream_status.map(|s| s.to_string()).unwrap_or_default(),
    );
    header("Sluice-Attempts", &d.attempts.to_string());
    if let Some((secret, timestamp)) = signing {
        header("webhook-id", &d.job_id);
        header("webhook-timestamp", &timestamp.to_string());
        header(
            "webhook-signature",
            &sign(secret, &d.job_id, timestamp, &d.body),
        );
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Parses the receiver's response head at the start of `buf`. `Ok(None)`: incomplete. Errors
/// are the receiver's fault (an invalid head) and count as a failed attempt. `now` resolves an
/// HTTP-date `Retry-After`.
pub fn parse_head(buf: &[u8], now: SystemTime) -> Result<Option<ResponseHead>, &'static str> {
    let limits = HeadLimits {
        max_head_bytes: MAX_RESPONSE_HEAD_BYTES,
        max_headers: MAX_RESPONSE_HEADERS,
    };
    let Some(head) = parse_response(buf, &limits, Method::Post).map_err(|e| e.message())? else {
        return Ok(None);
    };
    if head.status == 101 {
        return Err("unexpected 101 Switching Protocols");
    }
    let retry_after = find_header(&head.headers, buf, b"retry-after")
        .and_then(|value| parse_retry_after(value, now));
    Ok(Some(ResponseHead {
        status: head.status,
        retry_after,
        head_len: head.head_len,
        framing: head.framing,
    }))
}

/// What a final status means: 2xx delivered, 410 stop, anything else (3xx included: redirects
/// are not followed, a callback URL must be the final one) a failed attempt.
pub fn classify(head: &ResponseHead) -> AttemptResult {
    match head.status {
        200..=299 => AttemptResult::Delivered {
            status: head.status,
        },
        410 => AttemptResult::Gone,
        status => AttemptResult::Failed(super::delivery::AttemptFailure::Status {
            status,
            retry_after: head.retry_after,
        }),
    }
}

/// Tracks the end of a response body that is read only to be discarded.
#[derive(Clone, Debug)]
pub enum BodyDrain {
    /// Bytes still expected.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the receiver closes.
    UntilClose,
    Done,
}

impl BodyDrain {
    pub fn new(framing: BodyFraming) -> BodyDrain {
        match framing {
            BodyFraming::None | BodyFraming::Length(0) => BodyDrain::Done,
            BodyFraming::Length(n) => BodyDrain::Length(n),
            BodyFraming::Chunked => BodyDrain::Chunked(ChunkedDecoder::new()),
            BodyFraming::CloseDelimited => BodyDrain::UntilClose,
        }
    }

    /// Consumes body bytes; returns whether the body is complete. A malformed chunked body
    /// also ends the drain (the head already decided the outcome).
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        match self {
            BodyDrain::Done => {}
            BodyDrain::UntilClose => {}
            BodyDrain::Length(left) => {
                *left = left.saturating_sub(bytes.len() as u64);
                if *left == 0 {
                    *self = BodyDrain::Done;
                }
            }
            BodyDrain::Chunked(decoder) => loop {
                match decoder.decode(bytes) {
                    Ok((_, Chunk::Done)) | Err(_) => {
                        *self = BodyDrain::Done;
                        break;
                    }
                    Ok((_, Chunk::NeedMore)) => break,
                    Ok((used, Chunk::Data(_))) => bytes = &bytes[used..],
                }
            },
        }
        matches!(self, BodyDrain::Done)
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyDrain::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::delivery::{AttemptFailure, JobOutcome};
    use crate::webhook::sign::verify;
    use crate::webhook::url::CallbackUrl;
    use bytes::Bytes;
    use std::time::UNIX_EPOCH;

    fn delivery() -> Delivery {
        Delivery {
            job_id: "job_abc".into(),
            url: CallbackUrl::parse_str("https://Hooks.Example:8443/in?x=1").unwrap(),
            body: Bytes::from_static(b"body\r\n\0bytes"),
            content_type: Some("text/plain; charset=utf-8".into()),
            status: JobOutcome::Succeeded,
            upstream_status: Some(200),
            attempts: 2,
            delivery_attempts: 0,
            first_try_at: UNIX_EPOCH,
            next_attempt_at: None,
        }
    }

    fn head_text(d: &Delivery, signing: Option<(&WebhookSecret, u64)>) -> String {
        let mut out = Vec::new();
        encode_head(d, signing, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn unsigned_head() {
        let want = format!(
            "POST /in?x=1 HTTP/1.1\r\nHost: hooks.example:8443\r\nUser-Agent: {USER_AGENT}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nConnection: close\r\n\
             Sluice-Job-Id: job_abc\r\nSluice-Status: succeeded\r\nSluice-Upstream-Status: 200\r\n\
             Sluice-Attempts: 2\r\n\r\n"
        );
        assert_eq!(head_text(&delivery(), None), want);
        assert!(USER_AGENT.starts_with("sluice/0."));
    }

    #[test]
    fn failed_job_without_type_or_status() {
        let mut d = delivery();
        d.content_type = None;
        d.upstream_status = None;
        d.status = JobOutcome::Failed;
        d.body = Bytes::new();
        let text = head_text(&d, None);
        assert!(
            !text.to_ascii_lowercase().contains("content-type"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 0\r\n"), "{text}");
        assert!(
            text.contains("\r\nSluice-Status: failed\r\nSluice-Upstream-Status:\r\n"),
            "{text}"
        );
    }

    #[test]
    fn signed_head_verifies() {
        let secret = WebhookSecret::from_bytes(&[3u8; 32]).unwrap();
        let d = delivery();
        let text = head_text(&d, Some((&secret, 1_700_000_000)));
        assert!(text.contains("\r\nwebhook-id: job_abc\r\nwebhook-timestamp: 1700000000\r\nwebhook-signature: v1,"), "{text}");
        let sig = text
            .lines()
            .find_map(|l| l.strip_prefix("webhook-signature: "))
            .unwrap();
        assert!(verify(&secret, "job_abc", 1_700_000_000, &d.body, sig));
        // Re-signed for another timestamp: a different signature, same id.
        let later = head_text(&d, Some((&secret, 1_700_000_060)));
        assert!(later.contains("webhook-id: job_abc\r\n"));
        assert!(!later.contains(sig));
    }

    #[test]
    fn unsendable_records_are_refused() {
        for id in ["", "a b", "a\r\nX: y", "caf\u{e9}"] {
            let d = Delivery {
                job_id: id.into(),
                ..delivery()
            };
            assert!(
                encode_head(&d, None, &mut Vec::new())
                    .unwrap_err()
                    .contains("job id"),
                "{id:?}"
            );
        }
        let long = Delivery {
            job_id: "a".repeat(MAX_JOB_ID_BYTES + 1),
            ..delivery()
        };
        assert!(encode_head(&long, None, &mut Vec::new()).is_err());
        for ct in ["", "text/plain\r\nX: y", " text/plain", "a\0b"] {
            let d = Delivery {
                content_type: Some(ct.into()),
                ..delivery()
            };
            assert!(
                encode_head(&d, None, &mut Vec::new())
                    .unwrap_err()
                    .contains("Content-Type"),
                "{ct:?}"
            );
        }
    }

    fn head(buf: &[u8]) -> ResponseHead {
        parse_head(buf, UNIX_EPOCH).unwrap().unwrap()
    }

    #[test]
    fn verdicts() {
        let cases: &[(&[u8], AttemptResult)] = &[
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                AttemptResult::Delivered { status: 200 },
            ),
            (
                b"HTTP/1.0 204 No Content\r\n\r\n",
                AttemptResult::Delivered { status: 204 },
            ),
            (
                b"HTTP/1.1 299 X\r\n\r\n",
                AttemptResult::Delivered { status: 299 },
            ),
            (b"HTTP/1.1 410 Gone\r\n\r\n", AttemptResult::Gone),
            (
                b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\n\r\n",
                AttemptResult::Failed(AttemptFailure::Status {
                    status: 302,
                    retry_after: None,
                }),
            ),
            (
                b"HTTP/1.1 404 Not Found\r\n\r\n",
                AttemptResult::Failed(AttemptFailure::Status {
                    status: 404,
                    retry_after: None,
                }),
            ),
            (
                b"HTTP/1.1 503 Busy\r\nRetry-After: 120\r\n\r\n",
                AttemptResult::Failed(AttemptFailure::Status {
                    status: 503,
                    retry_after: Some(Duration::from_secs(120)),
                }),
            ),
            (
                b"HTTP/1.1 429 Slow\r\nretry-after: Thu, 01 Jan 1970 00:01:00 GMT\r\n\r\n",
                AttemptResult::Failed(AttemptFailure::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(60)),
                }),
            ),
            (
                b"HTTP/1.1 500 X\r\nRetry-After: soon\r\n\r\n",
                AttemptResult::Failed(AttemptFailure::Status {
                    status: 500,
                    retry_after: None,
                }),
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(
                &classify(&head(buf)),
                want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn partial_interim_and_invalid_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", UNIX_EPOCH),
            Ok(None)
        );
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let interim = head(buf);
        assert_eq!(interim.status, 100);
        let fin = head(&buf[interim.head_len..]);
        assert_eq!((fin.status, fin.framing), (200, BodyFraming::Length(2)));
        assert!(parse_head(b"HTTP/1.1 101 Switching\r\n\r\n", UNIX_EPOCH).is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", UNIX_EPOCH).is_err());
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD_BYTES)
        );
        assert!(parse_head(huge.as_bytes(), UNIX_EPOCH).is_err());
    }

    #[test]
    fn drains() {
        let mut d = BodyDrain::new(BodyFraming::Length(5));
        assert!(!d.feed(b"abc"));
        assert!(d.feed(b"de"));
        assert!(BodyDrain::new(BodyFraming::None).is_done());
        assert!(BodyDrain::new(BodyFraming::Length(0)).is_done());
        let mut c = BodyDrain::new(BodyFraming::Chunked);
        assert!(!c.feed(b"3\r\nab"));
        assert!(!c.feed(b"c\r\n"));
        assert!(c.feed(b"0\r\n\r\n"));
        let mut bad = BodyDrain::new(BodyFraming::Chunked);
        assert!(bad.feed(b"zz\r\n"));
        let mut close = BodyDrain::new(BodyFraming::CloseDelimited);
        assert!(!close.feed(b"anything"));
    }
}
