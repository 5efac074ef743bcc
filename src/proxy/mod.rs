//! The client side of a connection: read request heads, decide what each request gets, answer
//! in order. This is where a request enters sluice; follow it from [`serve`].
//!
//! For each request on a keep-alive connection:
//! 1. [`read_head`] reads until a complete head is buffered (idle and header timeouts apply)
//!    and parses it (`http::request`); a bad head answers 400/431/505 and closes.
//! 2. The path is matched against the allowlist (`routing`); no match answers 404 without
//!    touching the origin.
//! 3. [`forward::forward`] sends it to the origin and streams the answer back.
//!
//! Requests are handled one after the other, so pipelined requests are answered in order; the
//! bytes of the next request simply wait in the read buffer.
//!
//! Idle keep-alive connections are cheap: a connection that waited `--client-park-ms` for its next
//! request gives its read buffer back to the worker's pool and moves to a small task that only
//! waits for the socket to become readable ([`parked`], under 1 KiB instead of the request
//! task's ~8 KiB plus an 8 KiB buffer); the next request starts a request task again (two
//! allocations and one readiness wait, a few microseconds, only after an idle gap). The read
//! it was waiting in is cancelled through monoio's `Canceller` and awaited, so a request that
//! arrived at that moment is kept, never lost. The default 50 ms is far above the gap between requests of
//! a busy connection (those never park) and far below a client pool's idle time; measured with
//! `bench/idle_conns.py`: 10,000 idle connections cost about 2.9 KiB each (README).
//!
//! Decisions written down here:
//! - After an error answer the connection is closed when the request had a body sluice did not
//!   read (the next request's start would be unknown). Closing goes through a short "lingering
//!   close" (shut down the write side, drain input for up to [`LINGER`]) so the client reads the
//!   error instead of a reset.
//! - `Expect: 100-continue` is answered by sluice itself once the request is accepted for
//!   forwarding; the origin never sees `Expect`. A rejected request gets its final status
//!   without a 100.

pub mod body;
pub mod forward;
pub mod trace;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use smallvec::SmallVec;

use crate::error::write_error_response;
use crate::http::request::{parse_request, Method, RequestError, RequestHead};
use crate::http::BodyFraming;
use crate::metrics::Reject;
use crate::server::worker::Worker;
use body::{flush_out, read_more};

/// Upper bound on the lingering close: how long sluice keeps draining a client's input after
/// its last answer, so the answer is read rather than reset.
pub const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained during a lingering close.
pub const LINGER_MAX_BYTES: usize = 64 * 1024;
/// Minimum free space before each head read: a whole client buffer, so a head and a small
/// body arrive in one read (see [`crate::server::worker::CLIENT_READ_BUF_BYTES`]).
const HEAD_READ_BYTES: usize = crate::server::worker::CLIENT_READ_BUF_BYTES;

/// One client connection's state.
pub struct ClientConn {
    pub stream: TcpStream,
    /// Bytes read and not yet consumed (a partial head, body bytes, pipelined requests).
    pub buf: BytesMut,
    /// Output scratch buffer, reused for every write on this connection.
    pub out: Vec<u8>,
    /// The client's address as text, for `X-Forwarded-For`.
    pub peer_ip: SmallVec<[u8; 48]>,
    /// Whether the request being answered is a HEAD: answers sluice writes itself then carry
    /// their head (with its Content-Length) but no body.
    pub head_request: bool,
    /// Cancels the idle read when the connection parks (kept for the connection's life, so a
    /// read allocates nothing).
    pub canceller: Canceller,
    /// Counted in `sluice_client_connections_open` until the connection is dropped (by
    /// whichever task ends it).
    pub counted: crate::metrics::Open,
    /// The record of the request being answered (see [`trace`]).
    pub trace: trace::RequestTrace,
}

impl ClientConn {
    /// Writes `out` (a complete response) to the client, leaving out the body when answering
    /// a HEAD request.
    pub async fn send_out(&mut self) -> std::io::Result<()> {
        if self.head_request {
            if let Some(end) = self.out.windows(4).position(|w| w == b"\r\n\r\n") {
                self.out.truncate(end + 4);
            }
        }
        flush_out(&mut self.stream, &mut self.out).await
    }
}

/// Serves one accepted client connection until it closes.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let conn = ClientConn {
        stream,
        buf: worker.take_buf(),
        out: worker.take_out_buf(),
        peer_ip: ip_text(peer.ip()),
        head_request: false,
        canceller: worker.take_canceller(),
        counted: crate::metrics::Open::client(&worker.metrics),
        trace: trace::RequestTrace::default(),
    };
    continue_serving(worker, conn).await;
}

/// Serves requests on `conn` until it closes, or until a deferred job moves it to a new task
/// (which calls this again).
pub async fn continue_serving(worker: Rc<Worker>, conn: ClientConn) {
    let _open = worker.drain.connection();
    let mut slot = Some(conn);
    let end = serve_requests(&worker, &mut slot).await;
    if let Some(mut conn) = slot {
        match end {
            End::Close => {}
            End::Linger => lingering_close(&worker.timers, &mut conn).await,
            End::Park(idle) => {
                worker.parks.set(worker.parks.get().saturating_add(1));
                worker.give_buf(std::mem::take(&mut conn.buf));
                worker.give_out_buf(std::mem::take(&mut conn.out));
                crate::server::spawn_guarded(parked(worker.clone(), conn, idle));
                return;
            }
        }
        let ClientConn {
            buf,
            out,
            canceller,
            ..
        } = conn;
        worker.give_buf(buf);
        worker.give_out_buf(out);
        worker.give_canceller(canceller);
    }
}

/// A parked idle connection (see the module documentation): waits, without a read buffer,
/// until the client sends its next request (then a request task takes over), the idle timeout
/// `idle` runs out, the client closes, or the worker drains (then the connection closes).
async fn parked(worker: Rc<Worker>, conn: ClientConn, idle: Duration) {
    let _open = worker.drain.connection();
    if worker.drain.draining() {
        return;
    }
    let ready = {
        let mut readable = std::pin::pin!(conn.stream.readable(false));
        let mut expired = worker.timers.sleep(idle);
        let mut drain = worker.drain.watch();
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(r) = readable.as_mut().poll(cx) {
                return std::task::Poll::Ready(r.is_ok());
            }
            if std::pin::Pin::new(&mut expired).poll(cx).is_ready()
                || std::pin::Pin::new(&mut drain).poll(cx).is_ready()
            {
                return std::task::Poll::Ready(false);
            }
            std::task::Poll::Pending
        })
        .await
    };
    if ready {
        let mut conn = conn;
        conn.buf = worker.take_buf();
        conn.out = worker.take_out_buf();
        crate::server::spawn_guarded(continue_serving(worker.clone(), conn));
    } else {
        worker.give_canceller(conn.canceller);
    }
}

/// How the request loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Close,
    /// Close after draining unread input (see [`lingering_close`]).
    Linger,
    /// Idle: park the connection for at most this long (see [`parked`]).
    Park(Duration),
}

/// What happens to the connection after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    /// Close now (nothing unread that matters, or the client is gone).
    Close,
    /// Close after draining unread input, so the last answer is not lost to a reset.
    LingerClose,
    /// The connection moved to another task (its job was deferred); this task is done with it.
    Detached,
}

/// The request loop.
async fn serve_requests(worker: &Rc<Worker>, slot: &mut Option<ClientConn>) -> End {
    loop {
        let Some(conn) = slot.as_mut() else {
            return End::Close;
        };
        // Until a head is parsed no request is being answered: the answer to a refused or late
        // head carries its body even right after a HEAD request.
        conn.head_request = false;
        let (mut head, bytes) = match read_head(worker, conn).await {
            HeadRead::Head(head, bytes) => (head, bytes),
            HeadRead::Closed => return End::Close,
            HeadRead::Park(idle) => return End::Park(idle),
            HeadRead::Invalid(e) => {
                conn.trace.begin(&worker.timers, None);
                let _ = answer_error(conn, e.status(), e.code(), e.message(), false).await;
                trace::finish(worker, conn, &[]);
                return End::Linger;
            }
            HeadRead::TimedOut => {
                conn.trace.begin(&worker.timers, None);
                let _ = answer_error(
                    conn,
                    408,
                    "request_timeout",
                    "the request head was not received in time",
                    false,
                )
                .await;
                trace::finish(worker, conn, &[]);
                return End::Linger;
            }
        };
        conn.trace.begin(&worker.timers, Some(&head));
        conn.head_request = head.method == Method::Head;
        if worker.drain.draining() {
            // Shutting down: this is the connection's last answer (`Connection: close`).
            head.keep_alive = false;
        }
        let next = handle(worker, slot, &head, &bytes).await;
        // The request is over (unless its connection moved to another task, which finishes
        // it there: then the slot is empty).
        if let Some(conn) = slot.as_mut() {
            trace::finish(worker, conn, &bytes);
        }
        drop(bytes);
        match next {
            Next::KeepAlive => {}
            Next::Close | Next::Detached => return End::Close,
            Next::LingerClose => return End::Linger,
        }
    }
}

/// The reserved path prefix of sluice's own endpoints; never forwarded.
pub const RESERVED_PREFIX: &[u8] = b"/_sluice/";

/// Decides what one parsed request gets.
async fn handle(
    worker: &Rc<Worker>,
    slot: &mut Option<ClientConn>,
    head: &RequestHead,
    bytes: &Bytes,
) -> Next {
    let Some(conn) = slot.as_mut() else {
        return Next::Close;
    };
    let has_body = !matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
    // Without reading the body, the next request's start is unknown: close after answering.
    let keep_alive_without_body = head.keep_alive && !has_body;
    let path = head.path.get(bytes);
    if path.starts_with(RESERVED_PREFIX) {
        return crate::jobs::api::handle(worker, conn, head, bytes, keep_alive_without_body).await;
    }
    // This request's route table: a reload after this point does not change its settings.
    let routes = worker.routes();
    let config = &routes.config;
    let Some(endpoint) = routes.allowlist.match_path(path) else {
        conn.counted.metrics().rejected(Reject::NotAllowlisted);
        return reply_error(
            conn,
            404,
            "not_found",
            "this path is not forwarded by the gateway",
            keep_alive_without_body,
        )
        .await;
    };
    conn.trace.endpoint = u16::try_from(endpoint).ok();
    let settings = routes.endpoint(endpoint);
    conn.trace.metric = settings.metric;
    if !settings.allows(head.method) {
        return reply_method_not_allowed(conn, &settings.allow, keep_alive_without_body).await;
    }
    if let BodyFraming::Length(n) = head.framing {
        if n > config.max_request_body_bytes {
            return reply_error(
                conn,
                413,
                "payload_too_large",
                "the request body is larger than allowed",
                false,
            )
            .await;
        }
    }
    // The `callback` query parameter belongs to sluice: validate it and strip it before
    // anything is sent upstream.
    let mut query_buf = worker.take_request_buf();
    let mut callback = None;
    let mut query: Option<&[u8]> = None;
    if let Some(q) = head.query {
        let raw = q.get(bytes);
        match crate::webhook::strip_callback(raw, &mut query_buf) {
            Ok(None) => {}
            Ok(Some(value)) => match crate::webhook::CallbackUrl::parse(value) {
                Ok(url) => {
                    callback = Some(url);
                    query = Some(&query_buf);
                }
                Err(why) => {
                    worker.give_request_buf(query_buf);
                    return reply_error(conn, 400, "bad_request", why, keep_alive_without_body)
                        .await;
                }
            },
            Err(why) => {
                worker.give_request_buf(query_buf);
                return reply_error(conn, 400, "bad_request", why, keep_alive_without_body).await;
            }
        }
    }
    // The job's id exists from the first attempt: it is the `Idempotency-Key` every attempt
    // carries (unless the client brought its own key), and the id a 202 would give.
    let id = worker.ids.borrow_mut().next_id();
    conn.trace.job = Some(id);
    let id_hex = id.to_hex();
    let idempotency: &[(&[u8], &[u8])] = if config.idempotency_key
        && crate::http::find_header(&head.headers, bytes, b"idempotency-key").is_none()
    {
        &[(b"Idempotency-Key", &id_hex)]
    } else {
        &[]
    };
    let mut request = worker.take_request_buf();
    let prepared = forward::prepare(
        &worker.timers,
        &routes,
        conn,
        head,
        bytes,
        query,
        idempotency,
        &mut request,
    )
    .await;
    let body_start = match prepared {
        Ok(at) => at,
        Err(forward::PrepareError::Gone) => {
            worker.give_request_buf(query_buf);
            worker.give_request_buf(request);
            return Next::Close;
        }
        Err(forward::PrepareError::Answer(status, code, message)) => {
            worker.give_request_buf(query_buf);
            worker.give_request_buf(request);
            conn.buf.clear();
            return reply_error(conn, status, code, message, false).await;
        }
    };
    // Every forwarded request is an open job until its terminal state. The place is taken
    // only once the body is in, so slow uploads cannot hold `--max-inflight` hostage.
    let Some(open_job) = worker.open_job(config.executor.max_inflight) else {
        worker.give_request_buf(query_buf);
        worker.give_request_buf(request);
        return reply_overloaded(conn, head.keep_alive).await;
    };
    // Identical requests attach to an open job instead of calling the upstream again.
    let key = if settings.dedup.applies(head.method) && head.framing != BodyFraming::Chunked {
        let q = query.or(head.query.map(|q| q.get(bytes))).unwrap_or(b"");
        Some(crate::jobs::run::dedup_key(
            head,
            bytes,
            path,
            q,
            request.get(body_start..).unwrap_or(b""),
        ))
    } else {
        None
    };
    worker.give_request_buf(query_buf);
    let mut published = None;
    if let Some(key) = key {
        let open = worker.dedup.borrow().get(&key).cloned();
        if let Some(cell) = open {
            worker.give_request_buf(request);
            drop(open_job);
            return crate::jobs::run::attach(worker, conn, head, cell, callback, settings.deadline)
                .await;
        }
        // Not open here: maybe on another core. The request (and its place under
        // `--max-inflight`) is kept while it waits, in case that job ends before it attaches.
        use crate::jobs::crosscore::Claim;
        match worker.open_keys.claim(&key, worker.id) {
            Claim::Owner(at) => published = Some(at),
            Claim::Open(owner) => {
                let remote = crate::jobs::run::attach_remote(
                    worker,
                    conn,
                    head,
                    owner,
                    key,
                    callback.clone(),
                    settings.deadline,
                )
                .await;
                if let Some(next) = remote {
                    worker.give_request_buf(request);
                    return next;
                }
            }
            Claim::Unavailable => {}
        }
    }
    let job = crate::jobs::run::JobRequest {
        id,
        open: Some(open_job),
        limiter: routes.limiters.for_endpoint(endpoint).0,
        routes: routes.clone(),
        endpoint,
        method: head.method,
        bytes: request,
        callback,
        published,
    };
    crate::jobs::run::serve_job(worker, slot, head, bytes, job, key).await
}

/// `405 Method Not Allowed` with `Allow`: the endpoint's `methods` do not include this one.
async fn reply_method_not_allowed(conn: &mut ClientConn, allow: &str, keep_alive: bool) -> Next {
    conn.counted.metrics().rejected(Reject::MethodNotAllowed);
    conn.out.clear();
    crate::error::write_error_response(
        &mut conn.out,
        405,
        "method_not_allowed",
        "this method is not allowed on this path",
        keep_alive,
    );
    // `Allow` goes right after the status line (the head is sluice's own, so this is safe).
    if let Some(at) = conn.out.windows(2).position(|w| w == b"\r\n") {
        let header = format!("\r\nAllow: {allow}");
        conn.out.splice(at..at, header.bytes());
    }
    let body = trace::body_len(&conn.out, conn.head_request);
    conn.trace.rejected(405, "method_not_allowed", body);
    match conn.send_out().await {
        Ok(()) if keep_alive => Next::KeepAlive,
        Ok(()) => Next::LingerClose,
        Err(_) => Next::Close,
    }
}

/// Seconds a client is asked to wait (`Retry-After`) when `--max-inflight` jobs are open.
const OVERLOAD_RETRY_AFTER_SECS: u32 = 1;

/// `503 Service Unavailable` with `Retry-After`: too many open jobs.
async fn reply_overloaded(conn: &mut ClientConn, keep_alive: bool) -> Next {
    conn.counted.metrics().rejected(Reject::OverCap);
    conn.out.clear();
    crate::error::write_error_response_with(
        &mut conn.out,
        503,
        "over_capacity",
        "too many open jobs; retry later",
        keep_alive,
        Some(OVERLOAD_RETRY_AFTER_SECS),
    );
    let body = trace::body_len(&conn.out, conn.head_request);
    conn.trace.rejected(503, "over_capacity", body);
    match conn.send_out().await {
        Ok(()) if keep_alive => Next::KeepAlive,
        Ok(()) => Next::LingerClose,
        Err(_) => Next::Close,
    }
}

/// Writes a JSON error answer and says what to do with the connection.
pub async fn reply_error(
    conn: &mut ClientConn,
    status: u16,
    code: &'static str,
    message: &str,
    keep_alive: bool,
) -> Next {
    match answer_error(conn, status, code, message, keep_alive).await {
        Err(_) => Next::Close,
        Ok(()) if keep_alive => Next::KeepAlive,
        Ok(()) => Next::LingerClose,
    }
}

/// Writes a sluice-generated JSON error answer (and records it, with `code` as the reason;
/// counted as a rejection when `code` is one).
pub async fn answer_error(
    conn: &mut ClientConn,
    status: u16,
    code: &'static str,
    message: &str,
    keep_alive: bool,
) -> std::io::Result<()> {
    if let Some(reason) = Reject::from_code(code) {
        conn.counted.metrics().rejected(reason);
    }
    conn.out.clear();
    write_error_response(&mut conn.out, status, code, message, keep_alive);
    let body = trace::body_len(&conn.out, conn.head_request);
    conn.trace.rejected(status, code, body);
    conn.send_out().await
}

// The head travels by value on purpose: boxing it would allocate once per request.
/// How an idle wait for the next request ended.
enum IdleRead {
    /// The read completed (bytes, EOF or an error).
    Read(std::io::Result<usize>),
    /// The worker drains: close.
    Drain,
    /// Nothing arrived within `--client-park-ms`: park.
    Park,
}

/// Waits up to `park_after` (`--client-park-ms`) for the first bytes of the next request. When the wait ends
/// without them (park or drain), the read is cancelled and awaited: bytes that arrived at that
/// moment are kept and returned as a read.
async fn idle_read(worker: &Worker, conn: &mut ClientConn, park_after: Duration) -> IdleRead {
    if conn.buf.capacity() - conn.buf.len() < HEAD_READ_BYTES {
        conn.buf.reserve(HEAD_READ_BYTES);
    }
    let owned = std::mem::take(&mut conn.buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let mut read = std::pin::pin!(conn
        .stream
        .cancelable_read(owned.slice_mut(len..cap), conn.canceller.handle()));
    let mut park = worker.timers.sleep(park_after);
    let mut drain = worker.drain.watch();
    let raced = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(done) = read.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(done));
        }
        if std::pin::Pin::new(&mut drain).poll(cx).is_ready() {
            return std::task::Poll::Ready(Err(IdleRead::Drain));
        }
        std::pin::Pin::new(&mut park)
            .poll(cx)
            .map(|()| Err(IdleRead::Park))
    })
    .await;
    let (done, why) = match raced {
        Ok(done) => (done, None),
        Err(why) => {
            // Cancel and wait for the read to finish: it may have received bytes meanwhile.
            conn.canceller = std::mem::take(&mut conn.canceller).cancel();
            (read.await, Some(why))
        }
    };
    let (result, slice) = done;
    conn.buf = slice.into_inner();
    match (result, why) {
        (Ok(n), _) => IdleRead::Read(Ok(n)),
        (Err(_), Some(why)) => why,
        (Err(e), None) => IdleRead::Read(Err(e)),
    }
}

#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(RequestHead, Bytes),
    /// The client closed (or failed) between requests, or mid-head: nothing to answer.
    Closed,
    Invalid(RequestError),
    /// A started head was not completed within `--client-header-timeout-ms`.
    TimedOut,
    /// Idle for `--client-park-ms`: park the connection for at most this much longer.
    Park(Duration),
}

/// Reads until `conn.buf` holds a complete request head, then splits the head off as frozen
/// bytes (the parsed spans point into them). An idle connection waits up to
/// `--client-idle-timeout-ms` for a first byte; once a head has started, it must complete
/// within `--client-header-timeout-ms`.
async fn read_head(worker: &Worker, conn: &mut ClientConn) -> HeadRead {
    let routes = worker.routes();
    let timeouts = &routes.config.timeouts;
    let mut header_deadline: Option<Instant> = None;
    loop {
        if !conn.buf.is_empty() {
            match parse_request(&conn.buf, &routes.head_limits) {
                Ok(Some(head)) => {
                    let bytes = conn.buf.split_to(head.head_len).freeze();
                    return HeadRead::Head(head, bytes);
                }
                Ok(None) => {}
                Err(e) => return HeadRead::Invalid(e),
            }
        }
        let timeout = match header_deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None if conn.buf.is_empty() => timeouts.client_idle,
            None => {
                let deadline = Instant::now() + timeouts.client_header;
                header_deadline = Some(deadline);
                timeouts.client_header
            }
        };
        let started = !conn.buf.is_empty();
        // Idle between requests: a shutdown closes the connection; a long wait parks it.
        if !started && worker.drain.draining() {
            return HeadRead::Closed;
        }
        let park_after = timeouts.client_park;
        let read = if !started && timeout > park_after {
            match idle_read(worker, conn, park_after).await {
                IdleRead::Read(r) => r,
                IdleRead::Drain => return HeadRead::Closed,
                IdleRead::Park => return HeadRead::Park(timeout.saturating_sub(park_after)),
            }
        } else {
            read_more(
                &mut conn.stream,
                &mut conn.buf,
                HEAD_READ_BYTES,
                &worker.timers,
                timeout,
            )
            .await
        };
        match read {
            Ok(0) => return HeadRead::Closed,
            // A head that is still incomplete starts the header deadline in the next turn
            // (the `None` arm above): a complete one costs no clock read.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && started => {
                return HeadRead::TimedOut
            }
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// Shuts down the write side (the client sees the end of our answer), then reads and discards
/// input for a short while so that unread request bytes do not turn the close into a reset
/// that could destroy the answer in flight.
async fn lingering_close(timers: &Rc<crate::timer::Timers>, conn: &mut ClientConn) {
    if conn.stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0usize;
    conn.buf.clear();
    while drained < LINGER_MAX_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match read_more(
            &mut conn.stream,
            &mut conn.buf,
            HEAD_READ_BYTES,
            timers,
            left,
        )
        .await
        {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                drained += n;
                conn.buf.clear();
            }
        }
    }
}

/// Formats an IP address for `X-Forwarded-For` without allocating (IPv4-mapped IPv6 addresses
/// are shown as IPv4).
fn ip_text(ip: IpAddr) -> SmallVec<[u8; 48]> {
    use std::io::Write;
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let mut out = SmallVec::new();
    let _ = write!(out, "{ip}");
    out
}
