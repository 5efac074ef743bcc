//! The webhook sender: a small pool of dedicated std threads that make delivery attempts with
//! blocking I/O, fed by a time-ordered queue.
//!
//! Why threads and blocking sockets: a delivery needs DNS (`getaddrinfo` blocks), a connect, a
//! TLS handshake and a wait of up to the request timeout, none of which may ever run on the
//! gateway's I/O threads. [`SenderHandle::submit`] only takes a mutex that is never held across
//! I/O, so any thread (an I/O thread included) can call it.
//!
//! The queue is a `Mutex<BinaryHeap>` ordered by due time plus a `Condvar`: workers sleep until
//! the earliest delivery is due or something is submitted. A record is never only on a thread's
//! stack: while an attempt runs, a copy sits in the in-flight table, so [`Sender::shutdown`]
//! can hand back every undelivered record (queued or still in flight) for persistence.
//!
//! One attempt: check the host against `--callback-allow`, resolve, keep the allowed addresses,
//! connect (TCP, then rustls for https), send the head and body, read the response head and at
//! most [`MAX_DRAINED_BODY_BYTES`] of the body, close. [`SenderConfig::request_timeout`] bounds
//! connect + send + response head together; name resolution is bounded by the system resolver's
//! own timeouts. The wire format is in `request.rs`, the schedule in `schedule.rs`, and the
//! bookkeeping of one result in `delivery::settle`.

use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::allow::{CallbackAllow, HostCheck};
use super::delivery::{settle, AttemptFailure, AttemptResult, Delivery, DeliveryReport};
use super::request::{classify, encode_head, parse_head, BodyDrain, MAX_RESPONSE_HEAD_BYTES};
use super::schedule::{RetryPolicy, SplitMix64};
use super::sign::WebhookSecret;
use super::url::{CallbackHost, CallbackScheme};

/// Default number of sender threads. Deliveries are rare next to requests and each is mostly
/// waiting; two let one slow receiver not hold up everyone else.
pub const DEFAULT_THREADS: usize = 2;

/// Default bound on connect + send + response head of one attempt. The Standard Webhooks
/// guidance is 15-30 s; the short end keeps a hanging receiver from holding a thread long.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// At most this much of a response body is read (and discarded) after the head. Receivers'
/// bodies are irrelevant; reading a little lets a well-behaved receiver finish writing before we
/// close, and the cap stops a receiver from streaming at us forever.
pub const MAX_DRAINED_BODY_BYTES: usize = 64 * 1024;

/// How long the body drain may take at most (within the request timeout). The outcome is
/// already known from the head; this only avoids resetting a receiver mid-write.
pub const BODY_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Bodies up to this size are copied behind the head and sent with one write (one segment for
/// small webhooks); larger ones are written separately, without a copy.
const INLINE_BODY_BYTES: usize = 16 * 1024;

/// Read buffer step, in bytes.
const READ_CHUNK_BYTES: usize = 4096;

/// The hook that receives a [`DeliveryReport`] after every attempt. Called on a sender thread;
/// it must not block for long (hand the report to a channel or update a map). A panic in it is
/// caught and ignored.
pub type ReportHook = Arc<dyn Fn(DeliveryReport) + Send + Sync>;

/// Everything the sender needs. Build with [`SenderConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Worker threads (at least 1).
    pub threads: usize,
    pub retry: RetryPolicy,
    /// Bound on connect + send + response head of one attempt.
    pub request_timeout: Duration,
    /// With a secret, deliveries carry the Standard Webhooks `webhook-*` headers.
    pub secret: Option<WebhookSecret>,
    pub allow: CallbackAllow,
    /// TLS for https callbacks; `sluice::upstream::tls::client_config` gives the web PKI plus
    /// `--ca-file`.
    pub tls: Arc<ClientConfig>,
}

impl SenderConfig {
    /// Defaults: [`DEFAULT_THREADS`] threads, [`RetryPolicy::default`] (first retry within ~5 s,
    /// at most 10 min apart, give up after 24 h), [`DEFAULT_REQUEST_TIMEOUT`], unsigned, every
    /// target allowed.
    pub fn new(tls: Arc<ClientConfig>) -> SenderConfig {
        SenderConfig {
            threads: DEFAULT_THREADS,
            retry: RetryPolicy::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            secret: None,
            allow: CallbackAllow::default(),
            tls,
        }
    }

    /// Checks every field; the error names the rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.threads == 0 {
            return Err("webhook sender: at least 1 thread is needed".into());
        }
        if self.request_timeout.is_zero() {
            return Err("webhook sender: the request timeout must be more than 0".into());
        }
        self.retry.validate()
    }
}

/// `submit` after `shutdown` started: the record is handed back, never dropped.
#[derive(Debug)]
pub struct SenderClosed(pub Box<Delivery>);

impl std::fmt::Display for SenderClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "webhook sender is shut down; delivery for job {} not queued",
            self.0.job_id
        )
    }
}

impl std::error::Error for SenderClosed {}

/// A queued delivery. The heap is a max-heap, so the order is reversed: earliest due first,
/// then submission order.
struct Queued {
    due: Instant,
    seq: u64,
    delivery: Delivery,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Default)]
struct State {
    queue: BinaryHeap<Queued>,
    /// Records whose attempt is under way, by sequence number.
    in_flight: HashMap<u64, Delivery>,
    next_seq: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Workers wait here for due work, new work or shutdown.
    work: Condvar,
    /// `shutdown` waits here for the in-flight table to empty.
    idle: Condvar,
    config: SenderConfig,
    report: ReportHook,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data updated in single steps; a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, state: &mut State, delivery: Delivery) {
        let due = due_instant(delivery.next_attempt_at);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.queue.push(Queued { due, seq, delivery });
        self.work.notify_one();
    }
}

/// The `Instant` for a wall-clock due time (`None` or past: now).
fn due_instant(at: Option<SystemTime>) -> Instant {
    let now = Instant::now();
    let wait = at
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::ZERO);
    now.checked_add(wait).unwrap_or(now)
}

/// A cheap, cloneable, thread-safe submission handle.
#[derive(Clone)]
pub struct SenderHandle {
    shared: Arc<Shared>,
}

impl SenderHandle {
    /// Queues a delivery, due at `next_attempt_at` (or now). Never blocks on I/O. After
    /// shutdown the record comes back in the error.
    pub fn submit(&self, delivery: Delivery) -> Result<(), SenderClosed> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(SenderClosed(Box::new(delivery)));
        }
        self.shared.push(&mut state, delivery);
        Ok(())
    }

    /// Deliveries not finished yet: queued plus in flight.
    pub fn pending(&self) -> usize {
        let state = self.shared.lock();
        state.queue.len() + state.in_flight.len()
    }
}

/// The running sender: its threads and queue. Keep it where the process shuts down (it is
/// consumed by [`Sender::shutdown`]) and give other threads a [`SenderHandle`]. Dropping it
/// without `shutdown` stops the threads after their current attempt and loses the queued
/// records.
pub struct Sender {
    handle: SenderHandle,
    threads: Vec<JoinHandle<()>>,
}

impl Sender {
    /// Validates `config` and spawns its worker threads (named `sluice-webhook-N`).
    pub fn start(config: SenderConfig, report: ReportHook) -> Result<Sender, String> {
        config.validate()?;
        let count = config.threads;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            config,
            report,
        });
        let mut threads = Vec::with_capacity(count);
        for n in 0..count {
            let worker_shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-webhook-{n}"))
                .spawn(move || worker(&worker_shared));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    let sender = Sender {
                        handle: SenderHandle { shared },
                        threads,
                    };
                    sender.shutdown(Duration::ZERO);
                    return Err(format!("webhook sender: cannot start a thread: {e}"));
                }
            }
        }
        Ok(Sender {
            handle: SenderHandle { shared },
            threads,
        })
    }

    /// A handle for submitting from other threads.
    pub fn handle(&self) -> SenderHandle {
        self.handle.clone()
    }

    /// See [`SenderHandle::submit`].
    pub fn submit(&self, delivery: Delivery) -> Result<(), SenderClosed> {
        self.handle.submit(delivery)
    }

    /// See [`SenderHandle::pending`].
    pub fn pending(&self) -> usize {
        self.handle.pending()
    }

    /// Stops taking work, waits up to `grace` for attempts under way (their reports are made),
    /// and returns every undelivered record: the queued ones and those whose attempt outlived
    /// `grace` (such an attempt may still succeed; delivery is at-least-once). Threads still in
    /// an attempt after `grace` are left to finish on their own and may still call the report
    /// hook.
    pub fn shutdown(mut self, grace: Duration) -> Vec<Delivery> {
        let shared = &self.handle.shared;
        let now = Instant::now();
        let deadline = now
            .checked_add(grace)
            .unwrap_or(now + Duration::from_secs(86_400));
        let mut state = shared.lock();
        state.closed = true;
        shared.work.notify_all();
        while !state.in_flight.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = shared
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let all_idle = state.in_flight.is_empty();
        let mut left: Vec<Queued> = std::mem::take(&mut state.queue).into_vec();
        left.sort_by_key(|q| (q.due, q.seq));
        let mut records: Vec<Delivery> = left.into_iter().map(|q| q.delivery).collect();
        let mut running: Vec<(u64, Delivery)> = state.in_flight.drain().collect();
        running.sort_by_key(|(seq, _)| *seq);
        records.extend(running.into_iter().map(|(_, d)| d));
        drop(state);
        if all_idle {
            // Every worker is between attempts and sees `closed`: joining is immediate.
            for thread in std::mem::take(&mut self.threads) {
                let _ = thread.join();
            }
        }
        records
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // Without this the workers would wait on the condvar forever.
        self.handle.shared.lock().closed = true;
        self.handle.shared.work.notify_all();
    }
}

fn worker(shared: &Shared) {
    let mut rng = SplitMix64::from_entropy();
    let mut head_buf = Vec::new();
    loop {
        let (seq, delivery) = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                let now = Instant::now();
                match state.queue.peek().map(|top| top.due) {
                    Some(due) if due <= now => break,
                    Some(due) => {
                        state = shared
                            .work
                            .wait_timeout(state, due - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner()),
                }
            }
            let Some(next) = state.queue.pop() else {
                continue;
            };
            state.in_flight.insert(next.seq, next.delivery.clone());
            (next.seq, next.delivery)
        };

        let config = &shared.config;
        let result = catch_unwind(AssertUnwindSafe(|| {
            attempt(config, &delivery, &mut head_buf)
        }))
        .unwrap_or(AttemptResult::Failed(AttemptFailure::Internal(
            "delivery attempt panicked",
        )));
        let report = settle(delivery, result, &config.retry, SystemTime::now(), &mut rng);
        // Order matters: a finished record leaves the books before its report (so `pending()`
        // is already 0 when the owner hears "delivered"); a retried one is requeued only after
        // its report (so its next attempt, maybe on another thread, cannot report first).
        if report.outcome.is_final() {
            finish(shared, seq, None);
            report_to(shared, report);
        } else {
            let record = report.record.clone();
            report_to(shared, report);
            finish(shared, seq, Some(record));
        }
    }
}

/// Calls the report hook; a panic in it is contained (the worker and the record survive).
fn report_to(shared: &Shared, report: DeliveryReport) {
    let hook = &shared.report;
    let _ = catch_unwind(AssertUnwindSafe(|| hook(report)));
}

/// Ends an attempt in the books: out of the in-flight table, back in the queue if retried.
fn finish(shared: &Shared, seq: u64, retry: Option<Delivery>) {
    let mut state = shared.lock();
    state.in_flight.remove(&seq);
    if let Some(record) = retry {
        shared.push(&mut state, record);
    }
    if state.in_flight.is_empty() {
        shared.idle.notify_all();
    }
}

/// The time budget of one attempt.
struct Deadline(Instant);

impl Deadline {
    fn remaining(&self, phase: &'static str) -> Result<Duration, AttemptFailure> {
        self.0
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(AttemptFailure::Timeout(phase))
    }
}

/// One attempt, start to close.
fn attempt(config: &SenderConfig, d: &Delivery, head: &mut Vec<u8>) -> AttemptResult {
    let signing = config
        .secret
        .as_ref()
        .map(|s| (s, unix_secs(SystemTime::now())));
    if let Err(reason) = encode_head(d, signing, head) {
        return AttemptResult::Rejected(reason);
    }
    let addrs = match target_addrs(&config.allow, d.url.host(), d.url.port()) {
        Ok(addrs) => addrs,
        Err(result) => return result,
    };
    let now = Instant::now();
    let deadline = Deadline(now.checked_add(config.request_timeout).unwrap_or(now));
    match exchange(config, d, head, &addrs, &deadline) {
        Ok(result) => result,
        Err(failure) => AttemptResult::Failed(failure),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The allow check, resolution, and the addresses that may be dialled.
fn target_addrs(
    allow: &CallbackAllow,
    host: &CallbackHost,
    port: u16,
) -> Result<Vec<SocketAddr>, AttemptResult> {
    let verdict = allow.check_host(host);
    if let HostCheck::Denied(reason) = verdict {
        return Err(AttemptResult::Rejected(reason));
    }
    let resolved: Vec<SocketAddr> = match host {
        CallbackHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        CallbackHost::Name(name) => match (name.as_str(), port).to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                return Err(AttemptResult::Failed(AttemptFailure::Resolve(format!(
                    "{name}: {e}"
                ))))
            }
        },
    };
    if resolved.is_empty() {
        return Err(AttemptResult::Failed(AttemptFailure::Resolve(format!(
            "{host}: no addresses"
        ))));
    }
    if verdict == HostCheck::CheckAddresses {
        let allowed = allow.filter_addrs(&resolved);
        if allowed.is_empty() {
            return Err(AttemptResult::Rejected(CallbackAllow::denied_addrs_reason(
                host, &resolved,
            )));
        }
        return Ok(allowed);
    }
    Ok(resolved)
}

/// Plain or TLS connection to the receiver.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => &tls.sock,
        }
    }

    fn set_timeouts(&self, left: Duration) -> io::Result<()> {
        set_timeouts(self.tcp(), left)
    }
}

/// Bounds the next blocking read and write by the time left.
fn set_timeouts(tcp: &TcpStream, left: Duration) -> io::Result<()> {
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.read(buf),
            Conn::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.write(buf),
            Conn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.flush(),
            Conn::Tls(tls) => tls.flush(),
        }
    }
}

/// Maps an I/O error of a phase to a failure: timeouts, TLS errors, the rest.
fn io_failure(e: io::Error, phase: &'static str) -> AttemptFailure {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return AttemptFailure::Timeout(phase);
    }
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return AttemptFailure::Tls(tls.to_string());
    }
    AttemptFailure::Io(format!("{phase}: {e}"))
}

fn connect(addrs: &[SocketAddr], deadline: &Deadline) -> Result<TcpStream, AttemptFailure> {
    const PHASE: &str = "connecting";
    let mut errors = Vec::new();
    for addr in addrs {
        let left = deadline.remaining(PHASE)?;
        match TcpStream::connect_timeout(addr, left) {
            Ok(tcp) => return Ok(tcp),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                errors.push(format!("{addr}: timed out"));
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    if deadline.remaining(PHASE).is_err() {
        return Err(AttemptFailure::Timeout(PHASE));
    }
    Err(AttemptFailure::Connect(errors.join("; ")))
}

fn open(
    config: &SenderConfig,
    d: &Delivery,
    addrs: &[SocketAddr],
    deadline: &Deadline,
) -> Result<Conn, AttemptFailure> {
    let tcp = connect(addrs, deadline)?;
    // Head and body go out in as few writes as possible; no point waiting for ACKs (Nagle).
    let _ = tcp.set_nodelay(true);
    if d.url.scheme() == CallbackScheme::Http {
        return Ok(Conn::Plain(tcp));
    }
    const PHASE: &str = "in the TLS handshake";
    let name = match d.url.host() {
        CallbackHost::Name(name) => ServerName::try_from(name.clone())
            .map_err(|e| AttemptFailure::Tls(format!("invalid server name {name}: {e}")))?,
        CallbackHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    let tls = ClientConnection::new(Arc::clone(&config.tls), name)
        .map_err(|e| AttemptFailure::Tls(e.to_string()))?;
    let mut stream = Box::new(StreamOwned::new(tls, tcp));
    while stream.conn.is_handshaking() {
        set_timeouts(&stream.sock, deadline.remaining(PHASE)?).map_err(|e| io_failure(e, PHASE))?;
        let StreamOwned { conn, sock } = &mut *stream;
        conn.complete_io(sock).map_err(|e| io_failure(e, PHASE))?;
    }
    Ok(Conn::Tls(stream))
}

/// Connect, send, read the verdict, drain a little, close.
fn exchange(
    config: &SenderConfig,
    d: &Delivery,
    head: &mut Vec<u8>,
    addrs: &[SocketAddr],
    deadline: &Deadline,
) -> Result<AttemptResult, AttemptFailure> {
    let mut conn = open(config, d, addrs, deadline)?;

    const SEND: &str = "sending the request";
    if d.body.len() <= INLINE_BODY_BYTES {
        head.extend_from_slice(&d.body);
        write_all(&mut conn, head, deadline, SEND)?;
    } else {
        write_all(&mut conn, head, deadline, SEND)?;
        write_all(&mut conn, &d.body, deadline, SEND)?;
    }
    conn.flush().map_err(|e| io_failure(e, SEND))?;

    const WAIT: &str = "waiting for the response head";
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let response = loop {
        let parsed = parse_head(&buf, SystemTime::now()).map_err(AttemptFailure::BadResponse)?;
        match parsed {
            Some(h) if h.status < 200 => {
                buf.drain(..h.head_len);
                continue;
            }
            Some(h) => break h,
            None => {}
        }
        if buf.len() >= MAX_RESPONSE_HEAD_BYTES {
            return Err(AttemptFailure::BadResponse("response head too large"));
        }
        if read_some(&mut conn, &mut buf, deadline, WAIT)? == 0 {
            return Err(AttemptFailure::Io(
                "the receiver closed the connection before a complete response head".into(),
            ));
        }
    };
    let result = classify(&response);

    // Discard a bounded part of the body; its errors no longer matter.
    let mut drain = BodyDrain::new(response.framing);
    let mut seen = buf.len() - response.head_len;
    drain.feed(&buf[response.head_len..]);
    let drain_deadline = Deadline(deadline.0.min(Instant::now() + BODY_DRAIN_TIMEOUT));
    while !drain.is_done() && seen < MAX_DRAINED_BODY_BYTES {
        buf.clear();
        match read_some(&mut conn, &mut buf, &drain_deadline, "draining") {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen += n;
                drain.feed(&buf);
            }
        }
    }
    if let Conn::Tls(tls) = &mut conn {
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }
    Ok(result)
}

fn write_all(
    conn: &mut Conn,
    mut bytes: &[u8],
    deadline: &Deadline,
    phase: &'static str,
) -> Result<(), AttemptFailure> {
    while !bytes.is_empty() {
        conn.set_timeouts(deadline.remaining(phase)?)
            .map_err(|e| io_failure(e, phase))?;
        match conn.write(bytes) {
            Ok(0) => return Err(AttemptFailure::Io(format!("{phase}: connection closed"))),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(e, phase)),
        }
    }
    Ok(())
}

/// One read appended to `buf`; 0 at end of stream.
fn read_some(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    deadline: &Deadline,
    phase: &'static str,
) -> Result<usize, AttemptFailure> {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        conn.set_timeouts(deadline.remaining(phase)?)
            .map_err(|e| io_failure(e, phase))?;
        match conn.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(e, phase)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_orders_by_due_then_submission() {
        let url = super::super::url::CallbackUrl::parse_str("http://h.example/").unwrap();
        let d = |id: &str| Delivery {
            job_id: id.into(),
            url: url.clone(),
            body: bytes::Bytes::new(),
            content_type: None,
            status: super::super::delivery::JobOutcome::Succeeded,
            upstream_status: None,
            attempts: 1,
            delivery_attempts: 0,
            first_try_at: UNIX_EPOCH,
            next_attempt_at: None,
        };
        let t = Instant::now();
        let mut heap = BinaryHeap::new();
        heap.push(Queued {
            due: t + Duration::from_secs(2),
            seq: 0,
            delivery: d("late"),
        });
        heap.push(Queued {
            due: t,
            seq: 2,
            delivery: d("now-second"),
        });
        heap.push(Queued {
            due: t,
            seq: 1,
            delivery: d("now-first"),
        });
        let order: Vec<String> =
            std::iter::from_fn(|| heap.pop().map(|q| q.delivery.job_id)).collect();
        assert_eq!(order, ["now-first", "now-second", "late"]);
    }

    #[test]
    fn due_times() {
        let before = Instant::now();
        assert!(due_instant(None) >= before);
        assert!(due_instant(Some(UNIX_EPOCH)) <= Instant::now());
        let later = due_instant(Some(SystemTime::now() + Duration::from_secs(60)));
        assert!(later > before + Duration::from_secs(59));
    }

    #[test]
    fn config_validation() {
        let tls = Arc::new(crate::upstream::tls::client_config(None).unwrap());
        let mut c = SenderConfig::new(tls);
        assert_eq!(c.validate(), Ok(()));
        c.threads = 0;
        assert!(c.validate().unwrap_err().contains("1 thread"));
        c.threads = 1;
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("timeout"));
    }

    #[test]
    fn rejected_targets_never_resolve() {
        let allow = CallbackAllow::parse("*.example.com").unwrap();
        // A name that would fail to resolve: the denial comes first, so it is Rejected, not a
        // resolution failure.
        let host = CallbackHost::Name("nonexistent.invalid".into());
        assert!(matches!(
            target_addrs(&allow, &host, 80),
            Err(AttemptResult::Rejected(_))
        ));
        let ip = CallbackHost::Ip("127.0.0.1".parse().unwrap());
        assert!(matches!(
            target_addrs(&allow, &ip, 80),
            Err(AttemptResult::Rejected(_))
        ));
        let open = CallbackAllow::default();
        assert_eq!(
            target_addrs(&open, &ip, 81),
            Ok(vec!["127.0.0.1:81".parse().unwrap()])
        );
    }
}
