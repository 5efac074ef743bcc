//! The per-request record ([`RequestTrace`]) and the one place where every client request
//! ends ([`finish`]): what the access log (and the request metrics) hang off.
//!
//! # How a request is recorded
//! Each [`ClientConn`] carries one `RequestTrace` (a small `Copy` struct, reused for every
//! request on the connection, never allocated):
//!
//! 1. [`RequestTrace::begin`] when the connection loop has a request to answer: a parsed head,
//!    or a refused one (no request line then).
//! 2. Whatever writes the answer fills in what it knows: status and body bytes
//!    ([`RequestTrace::answered`]; sluice's own error answers use
//!    [`RequestTrace::rejected`], which adds the JSON error code as the reason), and along the
//!    way the endpoint (allowlist index), the job id, the origin's status and the attempts.
//! 3. [`finish`] once, when the request is over: in the connection loop after `handle`
//!    returns (and after the early error answers of a refused head), in the task that writes a
//!    deferred job's 202 (the connection moved there: the loop sees `Next::Detached` and does
//!    not finish it), and where a waiting client's connection is dropped because the client
//!    left. [`finish`] is idempotent (a finished record is closed), so a request is counted
//!    exactly once whichever path it took.
//!
//! A request that ends without any answer (the client went away mid-body, or while its job
//! waited) is recorded with status [`CLIENT_CLOSED`] (499, nginx's convention) and reason
//! `client_closed`. A streamed answer that broke after its head went out keeps the origin's
//! status with reason `response_truncated`.
//!
//! **Metrics hang off [`finish`]**: it is the single choke point that sees every answered
//! request with its outcome; count there, nowhere else.

use crate::http::request::{Method, RequestHead};
use crate::http::{Span, Version};
use crate::jobs::registry::JobId;
use crate::log::access::{AccessRecord, RequestLine};
use crate::log::AccessLog;
use crate::server::worker::Worker;
use crate::timer::Timers;

use super::ClientConn;

/// Status recorded for a request that ended without an answer because the client left
/// (nginx's 499; never sent to anyone).
pub const CLIENT_CLOSED: u16 = 499;

/// The request line of a parsed head, as offsets into the head's bytes (kept `Copy`: the bytes
/// are handed to [`finish`]).
#[derive(Clone, Copy, Debug)]
pub struct TraceLine {
    pub method: Method,
    pub method_span: Span,
    pub path: Span,
    pub query: Option<Span>,
    pub version: Version,
}

/// What is known about the request being answered on a connection (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTrace {
    /// Begun and not yet finished.
    open: bool,
    /// The access-log mode when the request began (a reload applies from the next request).
    access: AccessLog,
    /// When the request head was complete (worker clock nanoseconds, `Timers::now`); read
    /// only for the access log (0 when it is off: no clock read per request for nothing).
    pub started: u64,
    /// `None` when the head was refused before a request line could be parsed.
    pub line: Option<TraceLine>,
    /// The status sent; 0 until an answer was written.
    pub status: u16,
    /// Body bytes sent (0 for HEAD and bodiless answers).
    pub body_bytes: u64,
    /// The allowlist index the path matched (in the route table of the request).
    pub endpoint: Option<u16>,
    /// The matched endpoint's label slot in `sluice_requests_total` (from the same table as
    /// `endpoint`); [`crate::metrics::NO_ENDPOINT`] when none matched.
    pub metric: u16,
    /// Why sluice answered itself: the JSON error code (`not_found`, `payload_too_large`,
    /// `over_capacity`, ...), `client_closed` or `response_truncated`.
    pub reason: Option<&'static str>,
    /// The job that answered (or was looked up at `/_sluice/jobs/<id>`).
    pub job: Option<JobId>,
    /// The origin's last status for this request's job.
    pub upstream_status: Option<u16>,
    /// Upstream attempts of this request's job so far.
    pub attempts: u32,
}

impl RequestTrace {
    /// Starts the record of a new request (`head` is `None` for a refused head), now on the
    /// worker's clock.
    pub fn begin(&mut self, timers: &Timers, head: Option<&RequestHead>) {
        let access = crate::log::access_log();
        *self = RequestTrace {
            open: true,
            access,
            started: if access == AccessLog::Off {
                0
            } else {
                timers.now()
            },
            metric: crate::metrics::NO_ENDPOINT,
            line: head.map(|h| TraceLine {
                method: h.method,
                method_span: h.method_span,
                path: h.path,
                query: h.query,
                version: h.version,
            }),
            ..RequestTrace::default()
        };
    }

    /// Whether the record was begun and not finished yet.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// An answer went out (or was written out) with this status and body size.
    pub fn answered(&mut self, status: u16, body_bytes: u64) {
        self.status = status;
        self.body_bytes = body_bytes;
    }

    /// sluice answered with its own JSON error `reason` (the error code).
    pub fn rejected(&mut self, status: u16, reason: &'static str, body_bytes: u64) {
        self.answered(status, body_bytes);
        self.reason = Some(reason);
    }

    /// Records the job's progress: its id, attempts and the origin's last status.
    pub fn job(&mut self, id: JobId, attempts: u32, upstream_status: Option<u16>) {
        self.job = Some(id);
        self.attempts = attempts;
        self.upstream_status = upstream_status;
    }
}

/// The reason of a stored answer sluice made itself (a job that got no usable upstream answer).
pub fn stored_reason(status: u16) -> &'static str {
    match status {
        502 => "bad_gateway",
        504 => "gateway_timeout",
        _ => "internal_error",
    }
}

/// Ends the request recorded in `conn.trace`, once: every path a client request can end by
/// calls this (see the module documentation), and a second call does nothing. `head_bytes`
/// are the bytes of the request's head (what the trace's spans point into; empty for a refused
/// head). Counts the request in `sluice_requests_total` and writes the access-log line when
/// `--access-log` was on when the request began.
pub fn finish(worker: &Worker, conn: &mut ClientConn, head_bytes: &[u8]) {
    let trace = &mut conn.trace;
    if !trace.open {
        return;
    }
    trace.open = false;
    if trace.status == 0 {
        trace.status = CLIENT_CLOSED;
        trace.reason.get_or_insert("client_closed");
    }
    worker.metrics.request(trace.metric, trace.status);
    if trace.access != AccessLog::Off {
        access_line(worker, trace.access, trace, &conn.peer_ip, head_bytes);
    }
}

/// Writes the access-log line of a finished request (into this thread's log buffer).
#[cold]
fn access_line(
    worker: &Worker,
    mode: AccessLog,
    trace: &RequestTrace,
    client: &[u8],
    head_bytes: &[u8],
) {
    let span = |s: Span| {
        head_bytes
            .get(s.start as usize..s.end as usize)
            .unwrap_or(b"")
    };
    let request = trace.line.map(|line| RequestLine {
        method: span(line.method_span),
        path: span(line.path),
        query: line.query.map(span),
        protocol: match line.version {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        },
    });
    // The entry's pattern from this core's current table: a reload between the match and now
    // that reordered the allowlist could name another entry (rare, and only in this log).
    let routes = trace.endpoint.map(|_| worker.routes());
    let endpoint = match (&routes, trace.endpoint) {
        (Some(r), Some(i)) if usize::from(i) < r.allowlist.len() => {
            Some(r.allowlist.entry(usize::from(i)))
        }
        _ => None,
    };
    let job = trace.job.map(|id| id.to_hex());
    let duration_nanos = worker.timers.now().saturating_sub(trace.started);
    let record = AccessRecord {
        time: std::time::SystemTime::now(),
        client,
        request,
        status: trace.status,
        body_bytes: trace.body_bytes,
        duration_micros: duration_nanos / 1000,
        endpoint,
        job: job.as_ref(),
        upstream: trace.upstream_status,
        attempts: trace.attempts,
        reason: trace.reason,
    };
    crate::log::access::log(mode, &record);
}

/// Body bytes of a complete answer in `out` (what follows the head's empty line), or 0 when
/// the body is not sent (a HEAD request's answer).
pub fn body_len(out: &[u8], head_request: bool) -> u64 {
    if head_request {
        return 0;
    }
    out.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| (out.len() - at - 4) as u64)
}
