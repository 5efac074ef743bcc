//! One upstream attempt and the two ways its answer leaves: streamed to the waiting client, or
//! collected into memory for a deferred job.
//!
//! - [`prepare`] turns an accepted client request into the complete upstream request (edited
//!   head plus the whole body, read from the client first, bounded by
//!   `--max-request-body-bytes`): every attempt of a job, first or retry, sends these bytes.
//! - [`send_attempt`] takes a pooled connection (or opens one within the connect timeout),
//!   writes the request and reads the response head, skipping 1xx. A pooled connection that
//!   fails before any response byte (the origin closed it while idle: the unavoidable HTTP/1.1
//!   keep-alive race) is replaced by a fresh one, once.
//! - [`stream_response`] writes the edited response head and streams the body to the client,
//!   re-framed as the client needs; [`collect_response`] reads it into memory for a job's
//!   result and callback.
//!
//! A connection goes back to the pool only when its response was read to the exact end its
//! framing announced; one that saw a timeout, error or unread body is dropped (closed).

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use crate::error::ProxyError;
use crate::http::request::{Method, RequestHead};
use crate::http::response::{parse_response, ResponseHead};
use crate::http::writer::{
    write_client_response, write_upstream_request_with_query, ClientResponseEdits,
    UpstreamRequestEdits,
};
use crate::http::{find_header, BodyFraming, Version};
use crate::jobs::registry::StoredResponse;
use crate::routing::Routes;
use crate::server::worker::Worker;
use crate::timer::Timers;
use crate::upstream::UpstreamConn;

use super::body::{flush_out, pump, read_more, Collect, Encode, PumpError, READ_CHUNK_BYTES};
use super::{ClientConn, Next};

const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a request could not be prepared; the connection loop answers and closes.
pub enum PrepareError {
    /// The client went away or failed mid-body: nothing to answer.
    Gone,
    /// Answer with this status/code/message and close.
    Answer(u16, &'static str, &'static str),
}

/// Reads the whole request body from the client (answering `100 Continue` first when asked)
/// and writes the complete upstream request into `out`, returning where the body starts: the edited head (with `query`
/// replacing the query string when given) followed by the body in the request's own framing
/// (a chunked body is decoded strictly and re-encoded as one chunk).
#[allow(clippy::too_many_arguments)] // one call site; each argument is a different borrow
pub async fn prepare(
    timers: &Rc<Timers>,
    routes: &Routes,
    conn: &mut ClientConn,
    head: &RequestHead,
    bytes: &Bytes,
    query: Option<&[u8]>,
    extra_headers: &[(&[u8], &[u8])],
    out: &mut Vec<u8>,
) -> Result<usize, PrepareError> {
    let config = &routes.config;
    let has_body = !matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
    if head.expect_continue && has_body && head.version == Version::Http11 {
        conn.out.clear();
        conn.out.extend_from_slice(CONTINUE_100);
        flush_out(&mut conn.stream, &mut conn.out)
            .await
            .map_err(|_| PrepareError::Gone)?;
    }
    let edits = UpstreamRequestEdits {
        path_prefix: config.origin.path_prefix.as_bytes(),
        host: config.origin.authority.as_bytes(),
        authorization: config.token.expose().as_bytes(),
        client_ip: &conn.peer_ip,
        proto: b"http",
        framing: head.framing,
        extra_headers,
    };
    out.clear();
    write_upstream_request_with_query(out, head, bytes, &edits, query);
    let head_len = out.len();
    // The body is appended right behind the head, in the request's own framing (a chunked
    // body is decoded strictly and re-encoded). Both buffers are reused across requests.
    let limit = config.max_request_body_bytes;
    let mut sink = Collect {
        body: std::mem::take(out),
        limit: usize::MAX,
    };
    let encode = if head.framing == BodyFraming::Chunked {
        Encode::Chunked
    } else {
        Encode::Raw
    };
    let mut scratch = std::mem::take(&mut conn.out);
    scratch.clear();
    let result = pump(
        &mut conn.stream,
        &mut conn.buf,
        head.framing,
        encode,
        &mut sink,
        &mut scratch,
        timers,
        config.timeouts.client_body,
        limit,
    )
    .await;
    *out = sink.body;
    conn.out = scratch;
    conn.out.clear();
    match result {
        Ok(_) => Ok(head_len),
        Err(PumpError::ReadTimeout) => Err(PrepareError::Answer(
            408,
            "request_timeout",
            "the request body was not received in time",
        )),
        Err(PumpError::TooLarge) | Err(PumpError::Write(_)) => Err(PrepareError::Answer(
            413,
            "payload_too_large",
            "the request body is larger than allowed",
        )),
        Err(PumpError::Framing(_)) => Err(PrepareError::Answer(
            400,
            "bad_request",
            "invalid chunked request body",
        )),
        Err(PumpError::ReadEof) | Err(PumpError::ReadIo(_)) => Err(PrepareError::Gone),
    }
}

/// The result of one attempt that reached the origin and got a response head.
pub struct Answer {
    pub upstream: UpstreamConn,
    pub head: ResponseHead,
    pub head_bytes: Bytes,
}

/// Sends `request` (complete upstream request bytes) and reads the response head.
///
/// The kernel reads the bytes straight from the job's shared buffer: the write holds a clone
/// of the `Rc` (no copy), so the job can still read them (a deferral stores them) and send them
/// again on a retry.
pub async fn send_attempt(
    worker: &Worker,
    routes: &Routes,
    request: Rc<Vec<u8>>,
    method: Method,
) -> Result<Answer, ProxyError> {
    let timeouts = &routes.config.timeouts;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let pooled = {
            let mut pool = worker.pool.borrow_mut();
            let pooled = pool.take(Instant::now());
            worker.metrics.upstream_idle(pool.idle_count());
            pooled
        };
        let mut upstream = match pooled {
            Some(c) => c,
            None => {
                // Boxed: a connect (TCP, maybe a TLS handshake) is rare once the pool is warm,
                // and its large state would otherwise sit in every connection's task.
                let mut connect = Box::pin(worker.upstream.connect(&worker.metrics));
                match worker
                    .timers
                    .within(timeouts.upstream_connect, connect.as_mut())
                    .await
                {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(e),
                    None => return Err(ProxyError::UpstreamConnectTimeout),
                }
            }
        };
        let sent = send_shared(&mut upstream, &request).await;
        let result = match sent {
            Ok(()) => read_response_head(&worker.timers, routes, &mut upstream, method).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((head, head_bytes)) => {
                return Ok(Answer {
                    upstream,
                    head,
                    head_bytes,
                })
            }
            Err(e) => {
                let stale = upstream.reused && upstream.buf.is_empty() && is_stale_error(&e);
                drop(upstream);
                if stale && attempt == 1 {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// Writes all of `request` to the upstream; the write holds its own clone of the `Rc`.
async fn send_shared(upstream: &mut UpstreamConn, request: &Rc<Vec<u8>>) -> Result<(), ProxyError> {
    use monoio::io::AsyncWriteRentExt;
    let (res, _) = upstream.stream.write_all(Rc::clone(request)).await;
    res.map(|_| ()).map_err(ProxyError::UpstreamIo)
}

/// Framing, encoding and keep-alive for the client's copy of the response body.
pub(crate) fn client_framing(
    upstream: BodyFraming,
    version: Version,
    keep_alive: bool,
) -> (BodyFraming, Encode, bool) {
    match (upstream, version) {
        (BodyFraming::None, _) => (BodyFraming::None, Encode::Raw, keep_alive),
        (BodyFraming::Length(n), _) => (BodyFraming::Length(n), Encode::Raw, keep_alive),
        (BodyFraming::Chunked | BodyFraming::CloseDelimited, Version::Http11) => {
            (BodyFraming::Chunked, Encode::Chunked, keep_alive)
        }
        // An HTTP/1.0 client cannot read chunks: send the body raw and end it by closing.
        (BodyFraming::Chunked | BodyFraming::CloseDelimited, Version::Http10) => {
            (BodyFraming::CloseDelimited, Encode::Raw, false)
        }
    }
}

/// Writes the edited response head and streams the body to the waiting client; pools the
/// upstream connection when its response ended cleanly.
pub async fn stream_response(
    worker: &Worker,
    routes: &Routes,
    conn: &mut ClientConn,
    request: &RequestHead,
    answer: Answer,
) -> Next {
    let Answer {
        mut upstream,
        head: response,
        head_bytes,
    } = answer;
    let (framing, encode, keep_alive) =
        client_framing(response.framing, request.version, request.keep_alive);
    conn.trace.upstream_status = Some(response.status);
    conn.out.clear();
    write_client_response(
        &mut conn.out,
        &response,
        &head_bytes,
        &ClientResponseEdits {
            framing,
            keep_alive,
            client_version: request.version,
            // A HEAD or 304 answer keeps the origin's Content-Length: it describes the
            // representation, not this (empty) body.
            keep_content_length: request.method == Method::Head || response.status == 304,
        },
    );
    drop(head_bytes);
    let pumped = pump(
        &mut upstream.stream,
        &mut upstream.buf,
        response.framing,
        encode,
        &mut conn.stream,
        &mut conn.out,
        &worker.timers,
        routes.config.timeouts.upstream_read,
        u64::MAX,
    )
    .await;
    match pumped {
        Ok(moved) => {
            conn.trace.answered(response.status, moved);
            release(worker, upstream, &response);
            if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        // The head is out: the only honest signal left is closing the connection.
        Err(_) => {
            conn.trace.answered(response.status, 0);
            conn.trace.reason = Some("response_truncated");
            Next::Close
        }
    }
}

/// Reads the whole response into memory (at most `--max-response-body-bytes`) as a stored
/// result: a complete HTTP/1.1 head describing the kept body ([`stored_edits`]), and the body.
pub async fn collect_response(
    worker: &Worker,
    routes: &Routes,
    answer: Answer,
    method: Method,
) -> Result<StoredResponse, ProxyError> {
    let Answer {
        mut upstream,
        head: response,
        head_bytes,
    } = answer;
    let limit = routes.config.executor.max_response_body_bytes;
    let mut sink = Collect {
        body: Vec::new(),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let mut scratch = Vec::new();
    let pumped = pump(
        &mut upstream.stream,
        &mut upstream.buf,
        response.framing,
        Encode::Raw,
        &mut sink,
        &mut scratch,
        &worker.timers,
        routes.config.timeouts.upstream_read,
        limit,
    )
    .await;
    match pumped {
        Ok(_) => {}
        Err(PumpError::ReadTimeout) => return Err(ProxyError::UpstreamTimeout),
        Err(PumpError::ReadIo(e)) => return Err(ProxyError::UpstreamIo(e)),
        Err(PumpError::ReadEof) => {
            return Err(ProxyError::UpstreamMalformed(
                "connection closed inside the body",
            ))
        }
        Err(PumpError::Framing(why)) => return Err(ProxyError::UpstreamMalformed(why)),
        Err(PumpError::TooLarge) | Err(PumpError::Write(_)) => {
            return Err(ProxyError::UpstreamMalformed(
                "response body larger than --max-response-body-bytes",
            ))
        }
    }
    release(worker, upstream, &response);
    let body = Bytes::from(sink.body);
    let _ = method;
    let mut head = Vec::with_capacity(head_bytes.len() + 32);
    write_client_response(
        &mut head,
        &response,
        &head_bytes,
        &stored_edits(response.status, body.len()),
    );
    let content_type = find_header(&response.headers, &head_bytes, b"content-type")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    Ok(StoredResponse {
        status: response.status,
        head: Bytes::from(head),
        body,
        content_type,
        from_upstream: true,
    })
}

/// The edits of a stored answer's head. A stored answer is served later to `GET /result` too,
/// so it must describe exactly the bytes kept: `Content-Length` of the kept body (a HEAD job's
/// answer is stored with `Content-Length: 0`), except for the statuses that never have a body
/// whatever the method: a 304 keeps the origin's Content-Length (it describes the
/// representation), a 204 gets none (RFC 9110 section 8.6: a 204 must not carry one).
pub(crate) fn stored_edits(status: u16, body_len: usize) -> ClientResponseEdits {
    let framing = if status == 204 || status == 304 {
        BodyFraming::None
    } else {
        BodyFraming::Length(body_len as u64)
    };
    ClientResponseEdits {
        framing,
        keep_alive: true,
        client_version: Version::Http11,
        keep_content_length: status == 304,
    }
}

/// A sluice-generated error as a stored result (the job's answer when no upstream answer
/// could be had).
pub fn stored_error(e: &ProxyError) -> StoredResponse {
    let (status, code) = e.status();
    StoredResponse::sluice_error(status, code, e.message())
}

/// Writes a stored result to a waiting client, adding `Connection: close` when the connection
/// ends after it.
pub async fn write_stored(
    conn: &mut ClientConn,
    stored: &StoredResponse,
    keep_alive: bool,
) -> Next {
    conn.out.clear();
    let head = &stored.head[..];
    if keep_alive {
        conn.out.extend_from_slice(head);
    } else {
        conn.out
            .extend_from_slice(&head[..head.len().saturating_sub(2)]);
        conn.out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    conn.out.extend_from_slice(&stored.body);
    let body = if conn.head_request {
        0
    } else {
        stored.body.len() as u64
    };
    conn.trace.answered(stored.status, body);
    if !stored.from_upstream {
        conn.trace.reason = Some(super::trace::stored_reason(stored.status));
    }
    match conn.send_out().await {
        Ok(()) if keep_alive => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Returns a connection whose response ended exactly where its framing said to the pool.
fn release(worker: &Worker, mut upstream: UpstreamConn, response: &ResponseHead) {
    let reusable = response.keep_alive
        && response.framing != BodyFraming::CloseDelimited
        && upstream.buf.is_empty();
    if reusable {
        upstream.reused = true;
        // A large body grew the read buffer (see `body::LARGE_READ_CHUNK_BYTES`): an idle
        // pooled connection goes back to the standard size.
        if upstream.buf.capacity() > 2 * crate::upstream::UPSTREAM_READ_BUF_BYTES {
            upstream.buf = bytes::BytesMut::with_capacity(crate::upstream::UPSTREAM_READ_BUF_BYTES);
        }
        let mut pool = worker.pool.borrow_mut();
        pool.put(upstream, Instant::now());
        worker.metrics.upstream_idle(pool.idle_count());
    }
}

/// Reads the origin's response head into the connection's buffer, skipping 1xx interim
/// responses, within `--upstream-response-timeout-ms`.
async fn read_response_head(
    timers: &Rc<Timers>,
    routes: &Routes,
    upstream: &mut UpstreamConn,
    method: Method,
) -> Result<(ResponseHead, Bytes), ProxyError> {
    let timeout = routes.config.timeouts.upstream_response;
    // Set at the first read (the one clock read of the common case: one read, whole head).
    let mut deadline: Option<Instant> = None;
    let mut seen_any = false;
    loop {
        if !upstream.buf.is_empty() {
            seen_any = true;
            match parse_response(&upstream.buf, &routes.head_limits, method) {
                Ok(Some(head)) if head.status == 101 => {
                    return Err(ProxyError::UpstreamMalformed(
                        "unexpected 101 Switching Protocols",
                    ))
                }
                Ok(Some(head)) if head.status < 200 => {
                    upstream.buf.advance(head.head_len);
                    continue;
                }
                Ok(Some(head)) => {
                    let bytes = upstream.buf.split_to(head.head_len).freeze();
                    return Ok((head, bytes));
                }
                Ok(None) => {}
                Err(e) => return Err(ProxyError::UpstreamMalformed(e.message())),
            }
        }
        let left = match deadline {
            None => {
                deadline = Some(Instant::now() + timeout);
                timeout
            }
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
        };
        if left == Duration::ZERO {
            return Err(ProxyError::UpstreamTimeout);
        }
        match read_more(
            &mut upstream.stream,
            &mut upstream.buf,
            READ_CHUNK_BYTES,
            timers,
            left,
        )
        .await
        {
            Ok(0) if seen_any => {
                return Err(ProxyError::UpstreamMalformed(
                    "connection closed inside the response head",
                ))
            }
            Ok(0) => return Err(ProxyError::UpstreamClosed),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::UpstreamTimeout)
            }
            Err(e) => return Err(ProxyError::UpstreamIo(e)),
        }
    }
}

/// A failure that a dead pooled connection produces before any response byte.
fn is_stale_error(e: &ProxyError) -> bool {
    matches!(e, ProxyError::UpstreamClosed | ProxyError::UpstreamIo(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeadLimits;

    fn stored_head(upstream: &[u8], body_len: usize) -> String {
        let head = match parse_response(upstream, &HeadLimits::default(), Method::Get) {
            Ok(Some(head)) => head,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        write_client_response(
            &mut out,
            &head,
            upstream,
            &stored_edits(head.status, body_len),
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Found by the `proxy_pipeline` oracle on its seeds: a stored 204 was written with
    /// `Content-Length: 0`, which a 204 must not carry.
    #[test]
    fn stored_heads_describe_the_kept_body() {
        assert_eq!(
            stored_head(b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n", 0),
            "HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"
        );
        assert_eq!(
            stored_head(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                0
            ),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        );
        assert_eq!(
            stored_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 5),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        );
    }
}
