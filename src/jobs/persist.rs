//! Jobs and the store, the pure part: how a job's request is written to disk (without the
//! token) and made sendable again after a restart (with the token of the new run), and the
//! conversions between the executor's types and the store's rows.
//!
//! What is written when (the I/O part lives with the job's life in `run.rs`):
//! - a job is stored (durably, before the 202 goes out) when its first client is deferred, and
//!   again whenever a deferred duplicate adds a callback;
//! - each attempt's outcome and next attempt time are recorded (batched, not awaited);
//! - the final answer and one delivery per callback are recorded when the job ends;
//! - each delivery report updates or removes its delivery.
//!
//! A stored request is the upstream request as first sent, minus its `Authorization` field
//! (the token never reaches the disk) and minus the `Idempotency-Key` sluice added (the job id
//! puts it back). [`restore`] inserts the current token and key behind the request line; the
//! target and every other field stay as first sent (a changed origin path prefix applies to new
//! jobs only).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::jobs::registry::{CallbackState, JobStatus, StoredResponse};
use crate::store;

/// Why a stored request cannot be used.
pub const BAD_STORED_REQUEST: &str = "the stored request has no complete head";

/// The end of the head (index just past the empty line), if `bytes` has one.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The field name of a header line (`name: value`), if it has one.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some(&line[..colon])
}

fn field_value(line: &[u8]) -> &[u8] {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    let v = line.get(colon + 1..).unwrap_or(b"");
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or(b"")
}

/// Writes `upstream` (a request as sluice sends it) to `out` without its `Authorization`
/// fields and without an `Idempotency-Key` whose value is `job_key` (the one sluice added).
pub fn redact(upstream: &[u8], job_key: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let end = head_end(upstream).ok_or(BAD_STORED_REQUEST)?;
    let (head, body) = upstream.split_at(end);
    out.clear();
    out.reserve(upstream.len());
    // Every line of the head ends with CRLF; the last (empty) one is written back at the end.
    let mut lines = head[..end - 2].split(|&b| b == b'\n');
    if let Some(request_line) = lines.next() {
        out.extend_from_slice(request_line);
        out.push(b'\n');
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let drop = match field_name(line) {
            Some(n) if n.eq_ignore_ascii_case(b"authorization") => true,
            Some(n) if n.eq_ignore_ascii_case(b"idempotency-key") => {
                field_value(line.strip_suffix(b"\r").unwrap_or(line)) == job_key
            }
            _ => false,
        };
        if !drop {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(())
}

/// Writes a stored request to `out` ready to send: `Authorization: <token>` (unless the token
/// is empty) and `Idempotency-Key: <key>` (when given and the request has none) right behind
/// the request line.
pub fn restore(
    stored: &[u8],
    token: &[u8],
    idempotency_key: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let end = head_end(stored).ok_or(BAD_STORED_REQUEST)?;
    let line_end = stored
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| i + 2)
        .ok_or(BAD_STORED_REQUEST)?;
    let has_key = stored[line_end..end]
        .split(|&b| b == b'\n')
        .filter_map(field_name)
        .any(|n| n.eq_ignore_ascii_case(b"idempotency-key"));
    out.clear();
    out.reserve(stored.len() + token.len() + 64);
    out.extend_from_slice(&stored[..line_end]);
    if !token.is_empty() {
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(token);
        out.extend_from_slice(b"\r\n");
    }
    if let (Some(key), false) = (idempotency_key, has_key) {
        out.extend_from_slice(b"Idempotency-Key: ");
        out.extend_from_slice(key);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&stored[line_end..]);
    Ok(())
}

/// Unix milliseconds of a wall-clock time (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of unix milliseconds.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub fn status_to_row(s: JobStatus) -> store::JobStatus {
    match s {
        JobStatus::Pending => store::JobStatus::Pending,
        JobStatus::Retrying => store::JobStatus::Retrying,
        JobStatus::Succeeded => store::JobStatus::Succeeded,
        JobStatus::Failed => store::JobStatus::Failed,
    }
}

pub fn status_from_row(s: store::JobStatus) -> JobStatus {
    match s {
        store::JobStatus::Pending => JobStatus::Pending,
        store::JobStatus::Retrying => JobStatus::Retrying,
        store::JobStatus::Succeeded => JobStatus::Succeeded,
        store::JobStatus::Failed => JobStatus::Failed,
    }
}

pub fn callback_to_row(c: &CallbackState) -> store::CallbackState {
    match c {
        CallbackState::None => store::CallbackState::None,
        CallbackState::Pending => store::CallbackState::Pending,
        CallbackState::Delivered => store::CallbackState::Delivered,
        CallbackState::Failed(why) => store::CallbackState::Failed(why.clone()),
    }
}

pub fn callback_from_row(c: &store::CallbackState) -> CallbackState {
    match c {
        store::CallbackState::None => CallbackState::None,
        store::CallbackState::Pending => CallbackState::Pending,
        store::CallbackState::Delivered => CallbackState::Delivered,
        store::CallbackState::Failed(why) => CallbackState::Failed(why.clone()),
    }
}

pub fn result_to_row(r: &StoredResponse) -> store::ResultRow {
    store::ResultRow {
        status: r.status,
        head: r.head.to_vec(),
        body: r.body.to_vec(),
        content_type: r.content_type.clone(),
        from_upstream: r.from_upstream,
    }
}

pub fn result_from_row(r: store::ResultRow) -> StoredResponse {
    StoredResponse {
        status: r.status,
        head: r.head.into(),
        body: r.body.into(),
        content_type: r.content_type,
        from_upstream: r.from_upstream,
    }
}

pub fn delivery_to_row(d: &crate::webhook::Delivery, job_id: [u8; 16]) -> store::DeliveryRow {
    store::DeliveryRow {
        job_id,
        url: d.url.as_str().to_string(),
        body: d.body.to_vec(),
        content_type: d.content_type.clone(),
        outcome: match d.status {
            crate::webhook::JobOutcome::Succeeded => store::Outcome::Succeeded,
            crate::webhook::JobOutcome::Failed => store::Outcome::Failed,
        },
        upstream_status: d.upstream_status,
        attempts: d.attempts,
        delivery_attempts: d.delivery_attempts,
        first_try_at_ms: unix_ms(d.first_try_at),
        next_attempt_at_ms: d.next_attempt_at.map(unix_ms),
    }
}

/// A stored delivery as a record the sender takes; `Err` names what is wrong.
pub fn delivery_from_row(row: store::DeliveryRow) -> Result<crate::webhook::Delivery, String> {
    let url = crate::webhook::CallbackUrl::parse_str(&row.url)
        .map_err(|e| format!("stored callback {:?}: {e}", row.url))?;
    Ok(crate::webhook::Delivery {
        job_id: crate::jobs::registry::JobId(row.job_id).as_string(),
        url,
        body: row.body.into(),
        content_type: row.content_type,
        status: match row.outcome {
            store::Outcome::Succeeded => crate::webhook::JobOutcome::Succeeded,
            store::Outcome::Failed => crate::webhook::JobOutcome::Failed,
        },
        upstream_status: row.upstream_status,
        attempts: row.attempts,
        delivery_attempts: row.delivery_attempts,
        first_try_at: from_unix_ms(row.first_try_at_ms),
        next_attempt_at: row.next_attempt_at_ms.map(from_unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT: &[u8] = b"POST /v1/sign?m=1 HTTP/1.1\r\nHost: api.example\r\nAuthorization: secret-token\r\nX-Forwarded-For: 10.0.0.1\r\nIdempotency-Key: abc123\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn redact_drops_the_token_and_our_key_only() {
        let mut out = Vec::new();
        redact(SENT, b"abc123", &mut out).unwrap();
        assert_eq!(
            out,
            b"POST /v1/sign?m=1 HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 4\r\n\r\nbody"
        );
        // A client's own key (another value) stays.
        redact(SENT, b"other", &mut out).unwrap();
        assert!(out.windows(23).any(|w| w == b"Idempotency-Key: abc123"));
        assert!(!out.windows(13).any(|w| w == b"Authorization"));
    }

    #[test]
    fn restore_puts_token_and_key_back() {
        let mut stored = Vec::new();
        redact(SENT, b"abc123", &mut stored).unwrap();
        let mut out = Vec::new();
        restore(&stored, b"new-token", Some(b"abc123"), &mut out).unwrap();
        assert_eq!(
            out,
            b"POST /v1/sign?m=1 HTTP/1.1\r\nAuthorization: new-token\r\nIdempotency-Key: abc123\r\nHost: api.example\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 4\r\n\r\nbody"
        );
        // Key off, empty token: only the stored bytes.
        restore(&stored, b"", None, &mut out).unwrap();
        assert_eq!(out, stored);
        // A request that kept the client's own key gets no second one.
        let mut kept = Vec::new();
        redact(SENT, b"zzz", &mut kept).unwrap();
        restore(&kept, b"t", Some(b"abc123"), &mut out).unwrap();
        let keys = out
            .windows(16)
            .filter(|w| w.eq_ignore_ascii_case(b"idempotency-key:"))
            .count();
        assert_eq!(keys, 1);
    }

    #[test]
    fn truncated_requests_are_errors_not_panics() {
        let mut out = Vec::new();
        for cut in 0..SENT.len() {
            let part = &SENT[..cut];
            let has_head = part.windows(4).any(|w| w == b"\r\n\r\n");
            assert_eq!(redact(part, b"k", &mut out).is_ok(), has_head, "cut {cut}");
            assert_eq!(restore(part, b"t", Some(b"k"), &mut out).is_ok(), has_head);
        }
    }

    #[test]
    fn times_round_trip() {
        let t = from_unix_ms(1_764_000_000_123);
        assert_eq!(unix_ms(t), 1_764_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
