//! Forwarding one allowlisted request to the origin and streaming the answer back.
//!
//! The steps, in order: (1) answer `100 Continue` if asked; (2) decide whether the request can
//! be replayed (no body, or a Content-Length body of at most [`REPLAY_BODY_LIMIT`] bytes, read
//! in full first); (3) take a pooled connection (replayable requests only) or open a fresh one;
//! (4) write the edited head (token, host, forwarding headers; see `http::writer`) and stream
//! the body; (5) read the response head, skipping 1xx; (6) write the edited response head and
//! stream the body, re-framed for the client; (7) pool the connection only if the response
//! was read to its end cleanly.
//!
//! A reused connection that fails before any response byte arrived (the origin closed it while
//! idle: the unavoidable HTTP/1.1 keep-alive race) is retried once on a fresh connection. Only
//! replayable requests ride on pooled connections, so the retry always has the whole request;
//! larger or chunked bodies stream on a fresh connection.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use crate::error::ProxyError;
use crate::http::request::{Method, RequestHead};
use crate::http::response::{parse_response, ResponseHead};
use crate::http::writer::{
    write_client_response, write_upstream_request, ClientResponseEdits, UpstreamRequestEdits,
};
use crate::http::{BodyFraming, Version};
use crate::server::worker::Worker;
use crate::upstream::UpstreamConn;

use super::body::{flush_out, pump, read_more, Encode, PumpError, READ_CHUNK_BYTES};
use super::{answer_error, ClientConn, Next};

/// Largest request body kept in memory so the request can be replayed on a fresh connection
/// (64 KiB: signing and verification calls are far smaller; bigger uploads stream instead).
pub const REPLAY_BODY_LIMIT: u64 = 64 * 1024;

const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Forwards `head` (whose spans point into `bytes`) and answers the client.
pub async fn forward(
    worker: &Worker,
    conn: &mut ClientConn,
    head: &RequestHead,
    bytes: &Bytes,
) -> Next {
    let config = &worker.config;
    let timeouts = &config.timeouts;
    let has_body = !matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));

    // (1) The client waits for our go-ahead before sending the body.
    if head.expect_continue && has_body && head.version == Version::Http11 {
        conn.out.clear();
        conn.out.extend_from_slice(CONTINUE_100);
        if flush_out(&mut conn.stream, &mut conn.out).await.is_err() {
            return Next::Close;
        }
    }

    // (2) Small Content-Length bodies are read in full so the request can be replayed.
    let replay_len = match head.framing {
        BodyFraming::None => Some(0usize),
        BodyFraming::Length(n) if n <= REPLAY_BODY_LIMIT => Some(n as usize),
        _ => None,
    };
    if let Some(n) = replay_len {
        while conn.buf.len() < n {
            let missing = n - conn.buf.len();
            match read_more(
                &mut conn.stream,
                &mut conn.buf,
                missing,
                timeouts.client_body,
            )
            .await
            {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let _ = answer_error(
                        conn,
                        408,
                        "request_timeout",
                        "the request body was not received in time",
                        false,
                    )
                    .await;
                    return Next::LingerClose;
                }
                Err(_) => return Next::Close,
            }
        }
    }

    // Bodies keep their framing upstream: a Content-Length body stays one, a chunked body is
    // decoded strictly and re-encoded.
    let upstream_framing = head.framing;
    let edits = UpstreamRequestEdits {
        path_prefix: config.origin.path_prefix.as_bytes(),
        host: config.origin.authority.as_bytes(),
        authorization: config.token.expose().as_bytes(),
        client_ip: &conn.peer_ip,
        proto: b"http",
        framing: upstream_framing,
        extra_headers: &[],
    };

    // (3)-(5) Send the request and wait for the response head, retrying once on a fresh
    // connection when a pooled one turns out to be dead.
    let mut attempt = 0;
    let (mut upstream, response, response_bytes) = loop {
        attempt += 1;
        let pooled = if replay_len.is_some() {
            worker.pool.borrow_mut().take(Instant::now())
        } else {
            None
        };
        let mut upstream = match pooled {
            Some(c) => c,
            None => {
                match monoio::time::timeout(timeouts.upstream_connect, worker.upstream.connect())
                    .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return fail(conn, e, replay_len, head.keep_alive).await,
                    Err(_) => {
                        let e = ProxyError::UpstreamConnectTimeout;
                        return fail(conn, e, replay_len, head.keep_alive).await;
                    }
                }
            }
        };
        conn.out.clear();
        write_upstream_request(&mut conn.out, head, bytes, &edits);
        let sent = match replay_len {
            Some(n) => {
                conn.out.extend_from_slice(&conn.buf[..n]);
                flush_out(&mut upstream.stream, &mut conn.out)
                    .await
                    .map_err(ProxyError::UpstreamIo)
            }
            None => {
                let encode = if upstream_framing == BodyFraming::Chunked {
                    Encode::Chunked
                } else {
                    Encode::Raw
                };
                match pump(
                    &mut conn.stream,
                    &mut conn.buf,
                    head.framing,
                    encode,
                    &mut upstream.stream,
                    &mut conn.out,
                    timeouts.client_body,
                    config.max_request_body_bytes,
                )
                .await
                {
                    Ok(_) => Ok(()),
                    Err(PumpError::Write(e)) => Err(ProxyError::UpstreamIo(e)),
                    Err(client_fault) => return fail_client_body(conn, client_fault).await,
                }
            }
        };
        let result = match sent {
            Ok(()) => read_response_head(worker, &mut upstream, head.method).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((response, response_bytes)) => break (upstream, response, response_bytes),
            Err(e) => {
                let stale = upstream.reused
                    && upstream.buf.is_empty()
                    && replay_len.is_some()
                    && is_stale_error(&e);
                drop(upstream);
                if stale && attempt == 1 {
                    continue;
                }
                return fail(conn, e, replay_len, head.keep_alive).await;
            }
        }
    };
    // The replayable body has been sent for good: consume it from the client buffer.
    if let Some(n) = replay_len {
        conn.buf.advance(n);
    }

    // (6) Answer the client, re-framing the body as the client needs.
    let client_keep_alive = head.keep_alive;
    let (client_framing, encode, keep_alive) =
        client_framing(response.framing, head.version, client_keep_alive);
    conn.out.clear();
    write_client_response(
        &mut conn.out,
        &response,
        &response_bytes,
        &ClientResponseEdits {
            framing: client_framing,
            keep_alive,
            client_version: head.version,
            // A HEAD or 304 answer keeps the origin's Content-Length: it describes the
            // representation, not this (empty) body.
            keep_content_length: head.method == Method::Head || response.status == 304,
        },
    );
    drop(response_bytes);
    let pumped = pump(
        &mut upstream.stream,
        &mut upstream.buf,
        response.framing,
        encode,
        &mut conn.stream,
        &mut conn.out,
        timeouts.upstream_read,
        u64::MAX,
    )
    .await;
    match pumped {
        Ok(_) => {
            // (7) Only a connection whose response ended exactly where its framing said goes
            // back to the pool.
            let reusable = response.keep_alive
                && response.framing != BodyFraming::CloseDelimited
                && upstream.buf.is_empty();
            if reusable {
                upstream.reused = true;
                worker.pool.borrow_mut().put(upstream, Instant::now());
            }
            if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        // The head is out: the only honest signal left is closing the connection.
        Err(_) => Next::Close,
    }
}

/// Framing, encoding and keep-alive for the client's copy of the response body.
fn client_framing(
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

/// Reads the origin's response head into the connection's buffer, skipping 1xx interim
/// responses, within `--upstream-response-timeout-ms`.
async fn read_response_head(
    worker: &Worker,
    upstream: &mut UpstreamConn,
    method: Method,
) -> Result<(ResponseHead, Bytes), ProxyError> {
    let deadline = Instant::now() + worker.config.timeouts.upstream_response;
    let mut seen_any = false;
    loop {
        if !upstream.buf.is_empty() {
            seen_any = true;
            match parse_response(&upstream.buf, &worker.limits, method) {
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
        let left = deadline.saturating_duration_since(Instant::now());
        if left == Duration::ZERO {
            return Err(ProxyError::UpstreamTimeout);
        }
        match read_more(
            &mut upstream.stream,
            &mut upstream.buf,
            READ_CHUNK_BYTES,
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

/// Answers a forwarding failure with its JSON error. `replay_len` is the size of a body that
/// was read in full (it is consumed now, so the next request starts at its own first byte);
/// `None` means a streamed body may be partly unread, so the connection closes after the answer.
/// A close after an unread body lingers; otherwise it is immediate.
async fn fail(
    conn: &mut ClientConn,
    e: ProxyError,
    replay_len: Option<usize>,
    client_keep_alive: bool,
) -> Next {
    let (status, code) = e.status();
    crate::log::debug(format_args!("forwarding failed: {e}"));
    if matches!(e, ProxyError::UpstreamTls(_)) {
        crate::log::warn(format_args!("upstream TLS failure: {e}"));
    }
    let keep_alive = match replay_len {
        Some(n) => {
            conn.buf.advance(n);
            client_keep_alive
        }
        None => {
            conn.buf.clear();
            false
        }
    };
    match answer_error(conn, status, code, e.message(), keep_alive).await {
        Err(_) => Next::Close,
        Ok(()) if keep_alive => Next::KeepAlive,
        Ok(()) if replay_len.is_some() => Next::Close,
        Ok(()) => Next::LingerClose,
    }
}

/// The client's body broke while it was being streamed upstream.
async fn fail_client_body(conn: &mut ClientConn, e: PumpError) -> Next {
    conn.buf.clear();
    let (status, code, message) = match e {
        PumpError::ReadTimeout => (
            408,
            "request_timeout",
            "the request body was not received in time",
        ),
        PumpError::TooLarge => (
            413,
            "payload_too_large",
            "the request body is larger than allowed",
        ),
        PumpError::Framing(_) => (400, "bad_request", "invalid chunked request body"),
        // The client closed or reset: nobody is left to answer.
        _ => return Next::Close,
    };
    let _ = answer_error(conn, status, code, message, false).await;
    Next::LingerClose
}
