//! The `proxy_pipeline` oracle: one client connection pushed through the proxy's per-request
//! steps, over in-memory byte streams that deliver their bytes in pieces of chosen sizes.
//!
//! # What runs, and what is modelled
//!
//! This is *not* the socket loop (`proxy::serve`): that loop is written against monoio's
//! `TcpStream` and a per-core `Worker` (route tables, pool, job registry, store, timers), which
//! cannot be built from bytes without refactoring `src/proxy` and `src/jobs`. Instead this module
//! replays, in the loop's order, the functions the loop calls for each request, and feeds them
//! from in-memory streams:
//!
//! - real code: `parse_request` on the growing read buffer, `Allowlist::match_path`,
//!   `webhook::strip_callback` and `CallbackUrl::parse`, `write_upstream_request_with_query`,
//!   the body pump `proxy::body::pump` and `read_more` (generic over `AsyncReadRent`, here fed by
//!   [`Pieces`] on a monoio runtime) for the request body and for both ways a response body
//!   leaves (streamed with `forward::client_framing`, or collected for a stored result),
//!   `parse_response`, `write_client_response`, `write_error_response`, `forward::stored_error`
//!   and `forward::stored_edits`;
//! - mirrored here, a few lines each, because they are private to `src/proxy` or take a socket:
//!   the head read loop of `proxy::read_head`, the early answers of `proxy::handle` (404, 413,
//!   400 for a bad `callback`, the `Idempotency-Key` field), `forward::prepare`'s
//!   `100 Continue` and error mapping, `forward::read_response_head`'s 1xx skipping,
//!   `forward::write_stored` and `ClientConn::send_out`'s
//!   body-less answers to HEAD;
//! - not modelled: sluice's own API under `/_sluice/` (the connection model stops there), the
//!   job executor (rate limits, retries, deadlines, `202 Accepted`, dedup: every request gets
//!   one attempt, and an attempt that fails is answered with its final stored error), the
//!   connection pool (each attempt reads the same upstream bytes from their start), shutdown
//!   draining, timeouts (in-memory reads never wait).
//!
//! # Invariant
//!
//! Nothing panics, and for every input:
//!
//! - each upstream request is exactly one well-formed message: its head passes
//!   `request_head::check_upstream_head` (same method, prefixed path, query without
//!   `callback`, framing as the client's, token, one `X-Forwarded-For`, no hop-by-hop or
//!   `Connection`-named field, no `Expect`, the client's other fields in order, then the
//!   `Idempotency-Key` sluice adds), its body by its own framing ends exactly at its end and
//!   decodes to the client's body; only allowlisted paths are forwarded;
//! - the bytes written to the client read, with each request's method, as exactly the answers
//!   given, in order, nothing after them: `100 Continue` where announced, sluice's own error
//!   answers complete, each upstream answer with a head passing
//!   `response_head::check_client_head` and a body that decodes to the upstream's body; an
//!   answer that does not keep the connection is the last one; an upstream body that failed
//!   after its head went out never looks complete to the client (unless the client is HTTP/1.0
//!   and the body is close-delimited, where it cannot be told);
//! - a stored result (`collect_response`) exists exactly when the upstream body is complete
//!   and within the limit, has the body and a head passing `check_client_head` as a GET reads
//!   it, and `write_stored`'s `Connection: close` variant equals what the writer itself writes;
//! - the outcome does not depend on how the bytes arrived: the same input delivered whole gives
//!   the same answers (for sluice's own answers: the same status and persistence; the JSON
//!   message may name another fault of the same refused head), upstream heads and decoded
//!   bodies.
//!
//! # Input layout
//!
//! `[c] [c pattern bytes] [u] [u pattern bytes] [len: u16 LE] [len client bytes] [upstream
//! bytes]`: `c` and `u` (each taken modulo [`MAX_PATTERN`] + 1) are the lengths of the split
//! patterns of the client and upstream streams. A stream's reads deliver at most the next
//! pattern byte's count of bytes (cycling; 0 or an empty pattern: everything left). `len` is
//! clamped to what is there. [`Input::encode`] and `fuzz/seed_corpus.py` write this layout.

use std::cell::RefCell;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::{IoBufMut, IoVecBufMut};
use monoio::io::AsyncReadRent;
use monoio::BufResult;

use crate::error::{write_error_response, ProxyError};
use crate::http::request::{parse_request, Method, RequestHead};
use crate::http::response::{parse_response, ResponseHead};
use crate::http::writer::{
    write_client_response, write_upstream_request_with_query, ClientResponseEdits,
    UpstreamRequestEdits,
};
use crate::http::{find_header, BodyFraming, HeadLimits, Version};
use crate::proxy::body::{pump, read_more, Collect, Encode, PumpError, READ_CHUNK_BYTES};
use crate::proxy::forward::{client_framing, stored_edits, stored_error};
use crate::proxy::RESERVED_PREFIX;
use crate::routing::Allowlist;
use crate::webhook::{strip_callback, CallbackUrl};

use super::request_head::{check_allowlist, check_upstream_head, fuzz_edits};
use super::response_head::check_client_head;
use super::{read_body, roomy_limits, Body};

/// Longest split pattern, in bytes.
pub const MAX_PATTERN: usize = 8;

/// Requests handled per input at most (pipelined requests beyond are left unread).
pub const MAX_REQUESTS: usize = 8;

/// Every safe path is forwarded; unsafe ones (dot segments, encoded slashes, ...) get 404.
pub const ALLOWLIST: &str = "/,/*";

/// `--max-request-body-bytes` of the model: small, so the fuzzer reaches the 413 paths.
pub const MAX_REQUEST_BODY_BYTES: u64 = 1024;

/// `--max-response-body-bytes` of the model (the limit of a stored result).
pub const MAX_RESPONSE_BODY_BYTES: u64 = 1024;

/// The `Idempotency-Key` sluice adds when the client sent none (`--idempotency-key` on).
pub const IDEMPOTENCY_KEY: &[u8] = b"00000000000000000000000000000001";

const IDEMPOTENCY_FIELD: [(&[u8], &[u8]); 1] = [(b"Idempotency-Key", IDEMPOTENCY_KEY)];

/// Minimum free space before each head read, as `proxy::read_head` asks.
const HEAD_READ_BYTES: usize = 4 * 1024;

/// Read timeout handed to the real read functions: in-memory reads are ready at once, so it is
/// never reached.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What `forward::prepare` writes before reading a body the client announced with `Expect`.
const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One decoded input; see the module docs for the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Input<'a> {
    pub client_pattern: &'a [u8],
    pub upstream_pattern: &'a [u8],
    pub client: &'a [u8],
    pub upstream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits `input` per the layout; `None` when it is too short for its own lengths.
    pub fn parse(input: &'a [u8]) -> Option<Input<'a>> {
        let (client_pattern, rest) = take_pattern(input)?;
        let (upstream_pattern, rest) = take_pattern(rest)?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (client, upstream) = rest.split_at(len);
        Some(Input {
            client_pattern,
            upstream_pattern,
            client,
            upstream,
        })
    }

    /// The bytes [`Input::parse`] reads back as `self` (patterns longer than [`MAX_PATTERN`]
    /// and client bytes beyond `u16::MAX` are cut).
    pub fn encode(&self) -> Vec<u8> {
        let client_pattern = &self.client_pattern[..self.client_pattern.len().min(MAX_PATTERN)];
        let upstream_pattern =
            &self.upstream_pattern[..self.upstream_pattern.len().min(MAX_PATTERN)];
        let client = &self.client[..self.client.len().min(usize::from(u16::MAX))];
        let mut out = Vec::new();
        for pattern in [client_pattern, upstream_pattern] {
            out.push(pattern.len() as u8);
            out.extend_from_slice(pattern);
        }
        out.extend_from_slice(&(client.len() as u16).to_le_bytes());
        out.extend_from_slice(client);
        out.extend_from_slice(self.upstream);
        out
    }
}

fn take_pattern(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = input.split_first()?;
    let len = usize::from(len) % (MAX_PATTERN + 1);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Runs every check of this oracle on `input` (see the module docs for the layout).
pub fn check(input: &[u8]) {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let split = block_on(serve(&input));
    let split_view = check_transcript(&split, &input);
    if !(input.client_pattern.is_empty() && input.upstream_pattern.is_empty()) {
        let whole_input = Input {
            client_pattern: &[],
            upstream_pattern: &[],
            ..input
        };
        let whole = block_on(serve(&whole_input));
        let whole_view = check_transcript(&whole, &whole_input);
        assert_eq!(
            split_view, whole_view,
            "the outcome depends on how the bytes arrived"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The in-memory transport.
// ---------------------------------------------------------------------------------------------

/// A byte stream read in pieces: each read returns at most the next pattern count of bytes
/// (cycling through the pattern; 0 or an empty pattern: all that is left), then end of stream.
pub struct Pieces<'a> {
    rest: &'a [u8],
    pattern: &'a [u8],
    turn: usize,
    len: usize,
}

impl<'a> Pieces<'a> {
    pub fn new(bytes: &'a [u8], pattern: &'a [u8]) -> Pieces<'a> {
        Pieces {
            rest: bytes,
            pattern,
            turn: 0,
            len: bytes.len(),
        }
    }

    /// Bytes handed out so far.
    pub fn consumed(&self) -> usize {
        self.len - self.rest.len()
    }

    fn next_piece(&mut self) -> &'a [u8] {
        let size = match self.pattern.get(self.turn % self.pattern.len().max(1)) {
            Some(&n) if n > 0 => usize::from(n).min(self.rest.len()),
            _ => self.rest.len(),
        };
        self.turn = self.turn.wrapping_add(1);
        &self.rest[..size]
    }
}

// The copy itself is monoio's reader for `&[u8]`; this only limits how much one read sees.
impl AsyncReadRent for Pieces<'_> {
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        let mut piece = self.next_piece();
        let size = piece.len();
        async move {
            let (res, buf) = piece.read(buf).await;
            self.rest = &self.rest[size - piece.len()..];
            (res, buf)
        }
    }

    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        let mut piece = self.next_piece();
        let size = piece.len();
        async move {
            let (res, buf) = piece.readv(buf).await;
            self.rest = &self.rest[size - piece.len()..];
            (res, buf)
        }
    }
}

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

thread_local! {
    /// One runtime per thread, reused for every input (building one costs an epoll fd).
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
}

thread_local! {
    /// The per-core timer service the read path bounds its reads with (its driver need not run:
    /// in-memory reads complete before any timeout).
    static TIMERS: std::rc::Rc<crate::timer::Timers> =
        crate::timer::Timers::new(std::time::Instant::now(), crate::timer::DEFAULT_TICK);
}

fn pipeline_timers() -> std::rc::Rc<crate::timer::Timers> {
    TIMERS.with(|t| t.clone())
}

/// Runs `fut` to completion on this thread's runtime (the real read path needs monoio's timer).
fn block_on<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rt =
            slot.get_or_insert_with(
                || match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => panic!("cannot build the monoio runtime for the pipeline model: {e}"),
                },
            );
        rt.block_on(fut)
    })
}

// ---------------------------------------------------------------------------------------------
// The connection model.
// ---------------------------------------------------------------------------------------------

/// One answer on the client connection, in the order the client reads them.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `100 Continue` before the request body was read.
    Continue,
    /// An answer sluice wrote itself (an error) to a request made with `method`.
    Own {
        method: Method,
        status: u16,
        keep_alive: bool,
    },
    /// The upstream's answer to `exchanges[exchange]`, streamed with `edits`. `complete: false`:
    /// the upstream body failed, so the connection ends after whatever went out.
    Upstream {
        exchange: usize,
        edits: ClientResponseEdits,
        complete: bool,
    },
}

/// One request sent upstream and what came back.
struct Exchange {
    head: RequestHead,
    head_bytes: Bytes,
    /// The query replacement given to the writer (the query without `callback`).
    query: Option<Vec<u8>>,
    /// Whether sluice added its `Idempotency-Key`.
    idempotency: bool,
    /// The body as the client framed it.
    client_body: Vec<u8>,
    /// The complete upstream request, head then body; the head is `upstream_head_len` bytes.
    upstream_request: Vec<u8>,
    upstream_head_len: usize,
    /// The final response head, or the error that stood for it.
    response: Result<Response, ProxyError>,
}

struct Response {
    head: ResponseHead,
    bytes: Bytes,
    /// Where its body starts in the upstream bytes.
    body_start: usize,
    /// What `collect_response` made of it (or why it failed).
    stored: Result<Stored, PumpError>,
}

struct Stored {
    head: Vec<u8>,
    body: Vec<u8>,
    edits: ClientResponseEdits,
}

#[derive(Default)]
struct Transcript {
    client_out: Vec<u8>,
    answers: Vec<Answer>,
    exchanges: Vec<Exchange>,
}

impl Transcript {
    /// `ClientConn::send_out` of a complete answer: the head only for a HEAD request.
    fn send(&mut self, mut out: Vec<u8>, head_request: bool) {
        if head_request {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                out.truncate(end + 4);
            }
        }
        self.client_out.extend_from_slice(&out);
    }

    /// `proxy::reply_error`: a JSON error answer.
    fn error(&mut self, method: Method, status: u16, code: &str, why: &str, keep_alive: bool) {
        let mut out = Vec::new();
        write_error_response(&mut out, status, code, why, keep_alive);
        self.send(out, method == Method::Head);
        self.answers.push(Answer::Own {
            method,
            status,
            keep_alive,
        });
    }
}

fn pipeline_allowlist() -> &'static Allowlist {
    static LIST: OnceLock<Allowlist> = OnceLock::new();
    LIST.get_or_init(|| match Allowlist::parse(ALLOWLIST) {
        Ok(list) => list,
        Err(e) => panic!("the pipeline allowlist is invalid: {e}"),
    })
}

/// The request loop of one connection (`proxy::serve_requests` and `proxy::handle`).
async fn serve(input: &Input<'_>) -> Transcript {
    let mut t = Transcript::default();
    let mut client = Pieces::new(input.client, input.client_pattern);
    let mut buf = BytesMut::new();
    let limits = HeadLimits::default();
    for _ in 0..MAX_REQUESTS {
        // proxy::read_head
        let (head, bytes) = loop {
            if !buf.is_empty() {
                match parse_request(&buf, &limits) {
                    Ok(Some(head)) => {
                        let bytes = buf.split_to(head.head_len).freeze();
                        break (head, bytes);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // The method of a refused head is unknown: the answer has its body.
                        t.error(Method::Get, e.status(), e.code(), e.message(), false);
                        return t;
                    }
                }
            }
            match read_more(
                &mut client,
                &mut buf,
                HEAD_READ_BYTES,
                &pipeline_timers(),
                READ_TIMEOUT,
            )
            .await
            {
                Ok(0) | Err(_) => return t,
                Ok(_) => {}
            }
        };
        // proxy::handle
        let method = head.method;
        let has_body = !matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
        let keep_alive_without_body = head.keep_alive && !has_body;
        let path = head.path.get(&bytes);
        if path.starts_with(RESERVED_PREFIX) {
            return t;
        }
        if pipeline_allowlist().match_path(path).is_none() {
            t.error(
                method,
                404,
                "not_found",
                "not forwarded",
                keep_alive_without_body,
            );
            if keep_alive_without_body {
                continue;
            }
            return t;
        }
        if let BodyFraming::Length(n) = head.framing {
            if n > MAX_REQUEST_BODY_BYTES {
                t.error(method, 413, "payload_too_large", "too large", false);
                return t;
            }
        }
        let mut query = None;
        if let Some(q) = head.query {
            let mut stripped = Vec::new();
            let refused = match strip_callback(q.get(&bytes), &mut stripped) {
                Ok(None) => None,
                Ok(Some(value)) => match CallbackUrl::parse(value) {
                    Ok(_) => {
                        query = Some(stripped);
                        None
                    }
                    Err(why) => Some(why),
                },
                Err(why) => Some(why),
            };
            if let Some(why) = refused {
                t.error(method, 400, "bad_request", why, keep_alive_without_body);
                if keep_alive_without_body {
                    continue;
                }
                return t;
            }
        }
        let idempotency = find_header(&head.headers, &bytes, b"idempotency-key").is_none();

        // forward::prepare
        if head.expect_continue && has_body && head.version == Version::Http11 {
            t.client_out.extend_from_slice(CONTINUE_100);
            t.answers.push(Answer::Continue);
        }
        let edits = upstream_edits(&head, idempotency);
        let mut request = Vec::new();
        write_upstream_request_with_query(&mut request, &head, &bytes, &edits, query.as_deref());
        let upstream_head_len = request.len();
        let body_start = client.consumed() - buf.len();
        let mut sink = Collect {
            body: request,
            limit: usize::MAX,
        };
        let encode = if head.framing == BodyFraming::Chunked {
            Encode::Chunked
        } else {
            Encode::Raw
        };
        let mut scratch = Vec::new();
        let pumped = pump(
            &mut client,
            &mut buf,
            head.framing,
            encode,
            &mut sink,
            &mut scratch,
            &pipeline_timers(),
            READ_TIMEOUT,
            MAX_REQUEST_BODY_BYTES,
        )
        .await;
        match pumped {
            Ok(_) => {}
            Err(PumpError::TooLarge | PumpError::Write(_)) => {
                t.error(method, 413, "payload_too_large", "too large", false);
                return t;
            }
            Err(PumpError::Framing(_)) => {
                t.error(method, 400, "bad_request", "bad chunked body", false);
                return t;
            }
            Err(PumpError::ReadTimeout) => {
                t.error(method, 408, "request_timeout", "too slow", false);
                return t;
            }
            Err(PumpError::ReadEof | PumpError::ReadIo(_)) => return t,
        }
        let body_end = client.consumed() - buf.len();
        let mut exchange = Exchange {
            head,
            head_bytes: bytes,
            query,
            idempotency,
            client_body: input.client[body_start..body_end].to_vec(),
            upstream_request: sink.body,
            upstream_head_len,
            response: Err(ProxyError::UpstreamClosed),
        };

        // forward::send_attempt, then forward::stream_response or write_stored of the error.
        let mut upstream = Pieces::new(input.upstream, input.upstream_pattern);
        let mut ubuf = BytesMut::new();
        let read = read_response_head(&mut upstream, &mut ubuf, method).await;
        let (response, response_bytes) = match read {
            Ok(read) => read,
            Err(e) => {
                let keep_alive = exchange.head.keep_alive;
                write_stored_error(&mut t, &e, method, keep_alive);
                exchange.response = Err(e);
                t.exchanges.push(exchange);
                if keep_alive {
                    continue;
                }
                return t;
            }
        };
        let body_start = upstream.consumed() - ubuf.len();
        let request = &exchange.head;
        let (framing, encode, keep_alive) =
            client_framing(response.framing, request.version, request.keep_alive);
        let edits = ClientResponseEdits {
            framing,
            keep_alive,
            client_version: request.version,
            keep_content_length: method == Method::Head || response.status == 304,
        };
        let mut out = Vec::new();
        write_client_response(&mut out, &response, &response_bytes, &edits);
        let mut sink = Collect {
            body: std::mem::take(&mut t.client_out),
            limit: usize::MAX,
        };
        let pumped = pump(
            &mut upstream,
            &mut ubuf,
            response.framing,
            encode,
            &mut sink,
            &mut out,
            &pipeline_timers(),
            READ_TIMEOUT,
            u64::MAX,
        )
        .await;
        t.client_out = sink.body;
        let stored = collect_response(input, &response, method).await;
        exchange.response = Ok(Response {
            head: response,
            bytes: response_bytes,
            body_start,
            stored,
        });
        t.answers.push(Answer::Upstream {
            exchange: t.exchanges.len(),
            edits,
            complete: pumped.is_ok(),
        });
        t.exchanges.push(exchange);
        if pumped.is_err() || !keep_alive {
            return t;
        }
    }
    t
}

fn upstream_edits(head: &RequestHead, idempotency: bool) -> UpstreamRequestEdits<'static> {
    UpstreamRequestEdits {
        framing: head.framing,
        extra_headers: if idempotency { &IDEMPOTENCY_FIELD } else { &[] },
        ..fuzz_edits()
    }
}

/// `forward::read_response_head` on a fresh upstream connection: 1xx heads are skipped, 101 is
/// refused.
async fn read_response_head(
    upstream: &mut Pieces<'_>,
    buf: &mut BytesMut,
    method: Method,
) -> Result<(ResponseHead, Bytes), ProxyError> {
    let limits = HeadLimits::default();
    let mut seen_any = false;
    loop {
        if !buf.is_empty() {
            seen_any = true;
            match parse_response(buf, &limits, method) {
                Ok(Some(head)) if head.status == 101 => {
                    return Err(ProxyError::UpstreamMalformed("unexpected 101"))
                }
                Ok(Some(head)) if head.status < 200 => {
                    buf.advance(head.head_len);
                    continue;
                }
                Ok(Some(head)) => {
                    let bytes = buf.split_to(head.head_len).freeze();
                    return Ok((head, bytes));
                }
                Ok(None) => {}
                Err(e) => return Err(ProxyError::UpstreamMalformed(e.message())),
            }
        }
        match read_more(
            upstream,
            buf,
            READ_CHUNK_BYTES,
            &pipeline_timers(),
            READ_TIMEOUT,
        )
        .await
        {
            Ok(0) if seen_any => {
                return Err(ProxyError::UpstreamMalformed("closed inside the head"))
            }
            Ok(0) => return Err(ProxyError::UpstreamClosed),
            Ok(_) => {}
            Err(e) => return Err(ProxyError::UpstreamIo(e)),
        }
    }
}

/// `forward::write_stored` of `forward::stored_error`, through `ClientConn::send_out`.
fn write_stored_error(t: &mut Transcript, e: &ProxyError, method: Method, keep_alive: bool) {
    let stored = stored_error(e);
    let mut out = Vec::new();
    out.extend_from_slice(&stored_head(&stored.head, keep_alive));
    out.extend_from_slice(&stored.body);
    t.send(out, method == Method::Head);
    t.answers.push(Answer::Own {
        method,
        status: stored.status,
        keep_alive,
    });
}

/// The head `forward::write_stored` sends for a stored `head`.
fn stored_head(head: &[u8], keep_alive: bool) -> Vec<u8> {
    if keep_alive {
        return head.to_vec();
    }
    let mut out = head[..head.len().saturating_sub(2)].to_vec();
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// `forward::collect_response` on a second fresh connection: the stored result of a job.
async fn collect_response(
    input: &Input<'_>,
    streamed: &ResponseHead,
    method: Method,
) -> Result<Stored, PumpError> {
    let mut upstream = Pieces::new(input.upstream, input.upstream_pattern);
    let mut buf = BytesMut::new();
    let (response, bytes) = match read_response_head(&mut upstream, &mut buf, method).await {
        Ok(read) => read,
        Err(e) => panic!("a second read of the same upstream bytes failed: {e:?}"),
    };
    assert_eq!(
        &response, streamed,
        "a second read of the same head differs"
    );
    let mut sink = Collect {
        body: Vec::new(),
        limit: MAX_RESPONSE_BODY_BYTES as usize,
    };
    let mut scratch = Vec::new();
    pump(
        &mut upstream,
        &mut buf,
        response.framing,
        Encode::Raw,
        &mut sink,
        &mut scratch,
        &pipeline_timers(),
        READ_TIMEOUT,
        MAX_RESPONSE_BODY_BYTES,
    )
    .await?;
    let edits = stored_edits(response.status, sink.body.len());
    let mut head = Vec::new();
    write_client_response(&mut head, &response, &bytes, &edits);
    Ok(Stored {
        head,
        body: sink.body,
        edits,
    })
}

// ---------------------------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------------------------

/// What must not depend on how the bytes arrived: per answer its kind and, when complete, its
/// head and decoded body; per exchange the upstream head, the decoded upstream body and the
/// stored result.
#[derive(Debug, PartialEq, Eq)]
struct View {
    answers: Vec<AnswerView>,
    exchanges: Vec<ExchangeView>,
}

/// Status, persistence, head and decoded body (the last two empty where they may differ).
type AnswerView = (u16, bool, Vec<u8>, Vec<u8>);

/// Upstream head, decoded upstream body, and the stored head and body if any.
type ExchangeView = (Vec<u8>, Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

fn check_transcript(t: &Transcript, input: &Input) -> View {
    let mut view = View {
        answers: Vec::new(),
        exchanges: Vec::new(),
    };
    for ex in &t.exchanges {
        view.exchanges.push(check_exchange(ex, input));
    }
    check_client_stream(t, input, &mut view);
    view
}

/// The upstream request of `ex` is one well-formed message carrying the client's body; the
/// stored result is right. Returns the exchange's part of the [`View`].
fn check_exchange(ex: &Exchange, input: &Input) -> ExchangeView {
    let path = ex.head.path.get(&ex.head_bytes);
    assert!(
        pipeline_allowlist().match_path(path).is_some() && !path.starts_with(RESERVED_PREFIX),
        "forwarded a path that is not allowed: {path:?}"
    );
    check_allowlist(pipeline_allowlist(), path);
    let (head, body) = ex.upstream_request.split_at(ex.upstream_head_len);
    let edits = upstream_edits(&ex.head, ex.idempotency);
    let again = check_upstream_head(&ex.head, &ex.head_bytes, head, &edits, ex.query.as_deref());
    let sent = read_body(again.framing, body);
    assert!(
        sent.complete && sent.consumed == body.len(),
        "the upstream request is not exactly one message ({} body bytes, {} framed)",
        body.len(),
        sent.consumed
    );
    let received = read_body(ex.head.framing, &ex.client_body);
    assert!(
        received.complete && received.consumed == ex.client_body.len(),
        "the pump took a different body than the client framed"
    );
    assert_eq!(sent.data, received.data, "the upstream body differs");

    let stored = match &ex.response {
        Err(_) => None,
        Ok(response) => {
            let reference = upstream_body(response, input);
            let fits = reference.data.len() as u64 <= MAX_RESPONSE_BODY_BYTES;
            match &response.stored {
                Ok(stored) => {
                    assert!(
                        reference.complete && fits,
                        "stored a body that is not the upstream's"
                    );
                    assert_eq!(stored.body, reference.data, "stored body differs");
                    check_client_head(
                        &response.head,
                        &response.bytes,
                        &stored.edits,
                        &stored.head,
                        Method::Get,
                    );
                    let mut closing = Vec::new();
                    let edits = ClientResponseEdits {
                        keep_alive: false,
                        ..stored.edits
                    };
                    write_client_response(&mut closing, &response.head, &response.bytes, &edits);
                    assert_eq!(
                        stored_head(&stored.head, false),
                        closing,
                        "write_stored's Connection: close differs from the writer's"
                    );
                    Some((stored.head.clone(), stored.body.clone()))
                }
                Err(e) => {
                    assert!(
                        !reference.complete || !fits,
                        "no stored result for a complete upstream body within the limit: {e:?}"
                    );
                    None
                }
            }
        }
    };
    (head.to_vec(), sent.data, stored)
}

/// The upstream's body as an independent reader of the whole upstream bytes sees it.
fn upstream_body(response: &Response, input: &Input) -> Body {
    let rest = input.upstream.get(response.body_start..).unwrap_or(&[]);
    read_body(response.head.framing, rest)
}

/// The bytes written to the client read back as exactly the answers given.
fn check_client_stream(t: &Transcript, input: &Input, view: &mut View) {
    let out = &t.client_out[..];
    let mut pos = 0;
    let count = t.answers.len();
    for (i, answer) in t.answers.iter().enumerate() {
        let last = i + 1 == count;
        let rest = &out[pos..];
        match *answer {
            Answer::Continue => {
                let head = parse_answer(rest, Method::Get);
                assert_eq!(head.status, 100, "expected 100 Continue");
                pos += head.head_len;
                view.answers.push((100, true, Vec::new(), Vec::new()));
            }
            Answer::Own {
                method,
                status,
                keep_alive,
            } => {
                let head = parse_answer(rest, method);
                assert_eq!(head.status, status, "wrong status");
                assert_eq!(head.keep_alive, keep_alive, "wrong persistence");
                assert!(keep_alive || last, "answers after a closing answer");
                let body = read_body(head.framing, &rest[head.head_len..]);
                assert!(body.complete, "own answer {status} incomplete");
                if method != Method::Head {
                    assert!(matches!(head.framing, BodyFraming::Length(n) if n > 0));
                }
                // The JSON message may name a different first fault when a refused head arrives
                // in pieces (e.g. a bare CR seen by the pre-scan or by httparse): the status
                // must not change, the message may.
                view.answers
                    .push((status, keep_alive, Vec::new(), Vec::new()));
                pos += head.head_len + body.consumed;
            }
            Answer::Upstream {
                exchange,
                edits,
                complete,
            } => {
                let Some(ex) = t.exchanges.get(exchange) else {
                    panic!("answer for a missing exchange {exchange}");
                };
                let Ok(response) = &ex.response else {
                    panic!("upstream answer without a response");
                };
                let method = ex.head.method;
                let reference = upstream_body(response, input);
                if !complete {
                    assert!(last, "answers after a failed upstream body");
                    assert!(!reference.complete, "the upstream body was complete");
                    view.answers
                        .push((response.head.status, false, Vec::new(), Vec::new()));
                    if rest.is_empty() {
                        // The pump failed before anything went out: the client sees a close.
                        continue;
                    }
                }
                let head = check_client_head(&response.head, &response.bytes, &edits, rest, method);
                let body = read_body(head.framing, &rest[head.head_len..]);
                assert!(edits.keep_alive || last, "answers after a closing answer");
                if complete {
                    assert!(
                        reference.complete,
                        "streamed an incomplete upstream body whole"
                    );
                    assert!(body.complete, "client body incomplete");
                    assert_eq!(
                        body.data, reference.data,
                        "client body differs from upstream's"
                    );
                    view.answers.push((
                        head.status,
                        edits.keep_alive,
                        rest[..head.head_len].to_vec(),
                        body.data,
                    ));
                } else {
                    assert!(
                        reference.data.starts_with(&body.data),
                        "a cut body is not a prefix of the upstream's"
                    );
                    assert!(
                        !body.complete || head.framing == BodyFraming::CloseDelimited,
                        "a failed upstream body looks complete to the client"
                    );
                }
                pos += head.head_len + body.consumed;
            }
        }
    }
    assert_eq!(
        pos,
        out.len(),
        "bytes after the last answer: {:?}",
        String::from_utf8_lossy(&out[pos.min(out.len())..])
    );
}

/// The answer head at the start of `rest`, as a client that sent `method` reads it.
fn parse_answer(rest: &[u8], method: Method) -> ResponseHead {
    match parse_response(rest, &roomy_limits(rest.len()), method) {
        Ok(Some(head)) => head,
        other => panic!(
            "the client cannot read an answer: {other:?}\n{}",
            String::from_utf8_lossy(rest)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(client: &'a [u8], upstream: &'a [u8], pattern: &'a [u8]) -> Vec<u8> {
        Input {
            client_pattern: pattern,
            upstream_pattern: pattern,
            client,
            upstream,
        }
        .encode()
    }

    #[test]
    fn layout_round_trip() {
        let bytes = input(b"GET", b"HTTP", b"\x01\x02");
        let parsed = Input::parse(&bytes);
        assert_eq!(
            parsed,
            Some(Input {
                client_pattern: b"\x01\x02",
                upstream_pattern: b"\x01\x02",
                client: b"GET",
                upstream: b"HTTP",
            })
        );
        assert_eq!(Input::parse(b"\x03ab"), None);
        // A client length past the end is clamped: everything is client bytes.
        let short = Input::parse(b"\x00\x00\xff\xffGET");
        assert_eq!(
            short.map(|i| (i.client, i.upstream)),
            Some((&b"GET"[..], &b""[..]))
        );
    }

    #[test]
    fn pieces_follow_the_pattern() {
        let bytes = b"abcdefgh";
        let mut src = Pieces::new(bytes, &[3, 0]);
        let mut buf = BytesMut::new();
        let mut reads = Vec::new();
        block_on(async {
            loop {
                match read_more(&mut src, &mut buf, 16, &pipeline_timers(), READ_TIMEOUT).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => reads.push(n),
                }
            }
        });
        assert_eq!(reads, [3, 5]);
        assert_eq!(&buf[..], bytes);
        assert_eq!(src.consumed(), 8);
    }

    /// A keep-alive connection with a chunked POST (100-continue, callback stripped), a HEAD
    /// and a 404, answered by a chunked upstream, read byte by byte.
    #[test]
    fn a_busy_connection_passes() {
        let client = b"POST /v1/x?a=1&callback=https%3A%2F%2Fhook.example%2Fh HTTP/1.1\r\n\
            Host: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n\
            3\r\nabc\r\n0\r\n\r\n\
            HEAD /v1/y HTTP/1.1\r\nHost: h\r\n\r\n\
            GET /a/../b HTTP/1.1\r\nHost: h\r\n\r\n\
            GET / HTTP/1.0\r\n\r\n";
        let upstream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for pattern in [&b""[..], b"\x01", b"\x07\x00\x02"] {
            let bytes = input(client, upstream, pattern);
            check(&bytes);
            let Some(parsed) = Input::parse(&bytes) else {
                panic!("layout");
            };
            let t = block_on(serve(&parsed));
            let kinds: Vec<_> = t
                .answers
                .iter()
                .map(|a| match a {
                    Answer::Continue => 100,
                    Answer::Own { status, .. } => *status,
                    Answer::Upstream { .. } => 200,
                })
                .collect();
            assert_eq!(kinds, [100, 200, 200, 404, 200]);
            assert_eq!(t.exchanges.len(), 3);
            let first = &t.exchanges[0].upstream_request;
            assert!(first.starts_with(b"POST /api/v1/x?a=1 HTTP/1.1\r\n"));
        }
    }

    /// A truncated upstream body ends the connection without looking complete.
    #[test]
    fn a_cut_upstream_body_is_not_complete() {
        let client = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n";
        let upstream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        check(&input(client, upstream, b""));
        let bytes = input(client, upstream, b"\x02");
        check(&bytes);
        let Some(parsed) = Input::parse(&bytes) else {
            panic!("layout");
        };
        let t = block_on(serve(&parsed));
        assert!(matches!(
            t.answers[..],
            [Answer::Upstream {
                complete: false,
                ..
            }]
        ));
    }
}
