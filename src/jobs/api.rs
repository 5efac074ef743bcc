//! sluice's own job endpoints under the reserved prefix `/_sluice/` (never forwarded):
//!
//! - `GET /_sluice/jobs/<id>`: the job's state as JSON (`pending`, `retrying`, `succeeded`,
//!   `failed`; attempts; last upstream status; next attempt time; callback state).
//! - `GET /_sluice/jobs/<id>/result`: the final upstream response as it came (status, headers
//!   without hop-by-hop ones, body) once there is one; `409 Conflict` while the job is open.
//!
//! Unknown ids answer 404; other paths under the prefix 404; other methods 405. `HEAD` works
//! like `GET` without a body.

use bytes::Bytes;

use crate::http::request::{Method, RequestHead};
use crate::http::writer::write_usize;
use crate::jobs::registry::{status_json, JobId};
use crate::proxy::forward::write_stored;
use crate::proxy::{reply_error, ClientConn, Next};
use crate::server::worker::Worker;

const JOBS_PREFIX: &[u8] = b"/_sluice/jobs/";

/// Answers a request under `/_sluice/`.
pub async fn handle(
    worker: &Worker,
    conn: &mut ClientConn,
    head: &RequestHead,
    bytes: &Bytes,
    keep_alive: bool,
) -> Next {
    let path = head.path.get(bytes);
    let Some(rest) = path.strip_prefix(JOBS_PREFIX) else {
        return reply_error(
            conn,
            404,
            "not_found",
            "no such sluice endpoint",
            keep_alive,
        )
        .await;
    };
    let (id, want_result) = match rest.strip_suffix(b"/result") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if !matches!(head.method, Method::Get | Method::Head) {
        return reply_error(
            conn,
            405,
            "method_not_allowed",
            "job endpoints answer GET and HEAD only",
            keep_alive,
        )
        .await;
    }
    let record = JobId::parse(id).and_then(|id| worker.registry.get(&id));
    let Some(record) = record else {
        return reply_error(
            conn,
            404,
            "not_found",
            "no such job (unknown or expired)",
            keep_alive,
        )
        .await;
    };
    conn.trace.job = Some(record.id);
    if want_result {
        let result = record.lock().result.clone();
        let Some(stored) = result else {
            return reply_error(
                conn,
                409,
                "not_finished",
                "the job has no final answer yet; poll its status",
                keep_alive,
            )
            .await;
        };
        // A close lingers: the request may have had a body that was not read.
        return match write_stored(conn, &stored, keep_alive).await {
            Next::Close if !keep_alive => Next::LingerClose,
            next => next,
        };
    }
    let json = status_json(&record);
    conn.out.clear();
    conn.out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: ",
    );
    write_usize(&mut conn.out, json.len());
    if !keep_alive {
        conn.out.extend_from_slice(b"\r\nConnection: close");
    }
    conn.out.extend_from_slice(b"\r\n\r\n");
    conn.out.extend_from_slice(json.as_bytes());
    let sent = if conn.head_request { 0 } else { json.len() };
    conn.trace.answered(200, sent as u64);
    // `send_out` leaves the body out for HEAD.
    match conn.send_out().await {
        Ok(()) if keep_alive => Next::KeepAlive,
        Ok(()) => Next::LingerClose,
        Err(_) => Next::Close,
    }
}
