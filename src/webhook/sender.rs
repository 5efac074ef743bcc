//! The webhook sender: one per worker core, making delivery attempts as async tasks on that
//! core's monoio runtime, with every wait (retry schedules, the request timeout) on the core's
//! timer wheel ([`crate::timer::Timers`]).
//!
//! This module owns the sockets of a delivery and the bookkeeping of its records; the wire
//! format is in `request.rs`, the schedule in `schedule.rs`, and the bookkeeping of one result
//! in `delivery::settle`.
//!
//! # Design: one task per delivery
//! [`Sender::submit`] puts the record in the core's [`Slab`] of records and spawns one task
//! (with [`crate::server::spawn_guarded`]) that owns that slab index for the delivery's whole
//! life. The task loops: sleep on the wheel until the record is due -> attempt -> `settle` ->
//! report -> (retrying) write the new record back in its slab entry and sleep again, or (final)
//! remove the entry and end. Why a task per delivery rather than one per-core loop: a slow
//! receiver then costs its own task a socket and nothing else, a sleeping delivery costs one
//! wheel entry (O(1) insert and cancel, no allocation in steady state) and a small task (the
//! attempt's future is boxed only while it runs), and there is no queue to order or scan: the
//! wheel is the queue.
//!
//! A record is never only on a task's stack: the slab entry holds it while the task sleeps and
//! while an attempt (on a copy) runs, so [`Sender::take_undelivered`] can hand back every
//! undelivered record, queued or in flight, for a later persistence layer.
//!
//! # Shutdown
//! [`Sender::shutdown`] stops taking work (a submit gets its record back in [`SenderClosed`]),
//! ends every task that waits for a due time (its timer is cancelled, its record stays), waits up
//! to a grace period for attempts under way (their reports are made; one that must retry is kept,
//! not requeued), then calls [`Sender::take_undelivered`]. That one hands back every remaining
//! record in due order and ends every task at its next poll: an attempt still under way is
//! dropped with its connection (it may have reached the receiver: delivery is at-least-once).
//!
//! # One attempt
//! Check the host against `--callback-allow`; resolve a name with `getaddrinfo` on the runtime's
//! blocking pool (`monoio::spawn_blocking`: it blocks, so never on the I/O thread; IP literals
//! skip it), bounded by [`SenderConfig::request_timeout`] on its own; keep the allowed addresses;
//! connect (TCP to each address in turn, then monoio-rustls for https); send the head and body;
//! read the response head (skipping 1xx); classify it; read and discard at most
//! [`MAX_DRAINED_BODY_BYTES`] of the body within [`BODY_DRAIN_TIMEOUT`]; close.
//! [`SenderConfig::request_timeout`] bounds connect + send + response head together: every I/O
//! future races one wheel timer, and on timeout the future and its connection are dropped (a
//! monoio-rustls stream whose read was dropped must never be read again; a connection here is
//! never reused anyway). A panic inside an attempt is caught and counts as a failed attempt, so
//! the record is retried, not lost.
//!
//! A task runs on the core that submitted the delivery, and the report hook is called there.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::{TlsConnector, TlsError};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use slab::Slab;

use super::allow::{CallbackAllow, HostCheck};
use super::delivery::{
    settle, AttemptFailure, AttemptResult, Delivery, DeliveryOutcome, DeliveryReport,
};
use super::request::{classify, encode_head, parse_head, BodyDrain, MAX_RESPONSE_HEAD_BYTES};
use super::schedule::{RetryPolicy, SplitMix64};
use super::sign::WebhookSecret;
use super::url::{CallbackHost, CallbackScheme};
use crate::server::{spawn_guarded, CatchUnwind};
use crate::timer::{Sleep, Timers};
use crate::upstream::UpstreamStream;

/// Default bound on connect + send + response head of one attempt. The Standard Webhooks
/// guidance is 15-30 s; the short end keeps a hanging receiver from holding a socket long.
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

/// Free space ensured in the read buffer before each read, in bytes.
const READ_CHUNK_BYTES: usize = 4096;

/// Phase names of [`AttemptFailure::Timeout`] (shown as "callback timed out {phase}").
const RESOLVING: &str = "resolving the host name";
const CONNECTING: &str = "connecting";
const HANDSHAKE: &str = "in the TLS handshake";
const SENDING: &str = "sending the request";
const WAITING: &str = "waiting for the response head";

/// The hook that receives a [`DeliveryReport`] after every attempt. Called on the worker thread
/// that made the attempt, between its I/O: it must not block (update a map, send on a channel).
/// A panic in it is caught and ignored.
pub type ReportHook = Arc<dyn Fn(DeliveryReport) + Send + Sync>;

/// Everything the sender needs; one `Arc` is shared by the senders of all cores. Build with
/// [`SenderConfig::new`], adjust fields, and check with [`SenderConfig::validate`] before use.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub retry: RetryPolicy,
    /// Bound on connect + send + response head of one attempt (and, separately, on resolving
    /// the host name).
    pub request_timeout: Duration,
    /// With a secret, deliveries carry the Standard Webhooks `webhook-*` headers.
    pub secret: Option<WebhookSecret>,
    pub allow: CallbackAllow,
    /// TLS for https callbacks; `sluice::upstream::tls::client_config` gives the web PKI plus
    /// `--ca-file`.
    pub tls: Arc<ClientConfig>,
}

impl SenderConfig {
    /// Defaults: [`RetryPolicy::default`] (first retry within ~5 s, at most 10 min apart, give
    /// up after 24 h), [`DEFAULT_REQUEST_TIMEOUT`], unsigned, every target allowed.
    pub fn new(tls: Arc<ClientConfig>) -> SenderConfig {
        SenderConfig {
            retry: RetryPolicy::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            secret: None,
            allow: CallbackAllow::default(),
            tls,
        }
    }

    /// Checks every field; the error names the rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout.is_zero() {
            return Err("webhook sender: the request timeout must be more than 0".into());
        }
        self.retry.validate()
    }
}

/// `submit` after shutdown started: the record is handed back, never dropped.
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

/// Where the sender is in its life. Ordered: each phase only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Taking work.
    Open,
    /// `shutdown` started: no new work, no new attempts; attempts under way finish.
    Closing,
    /// Records handed back: every task ends at its next poll.
    Stopped,
}

/// One undelivered record, at the slab index its task owns.
struct Entry {
    record: Delivery,
    /// When the next attempt is due, on the timer clock (nanoseconds since its epoch).
    due: u64,
    /// Submission order: records due at the same time are handed back in this order.
    seq: u64,
    /// Whether an attempt (on a copy of `record`) is under way.
    in_flight: bool,
    /// The task's waker while it waits, so that shutdown can end the wait.
    waker: Option<Waker>,
}

struct Inner {
    /// Replaced by a reload; each attempt takes the current one when it starts.
    config: RefCell<Arc<SenderConfig>>,
    timers: Rc<Timers>,
    report: ReportHook,
    /// From the first configuration: TLS roots (`--ca-file`) are fixed at start-up.
    tls: TlsConnector,
    records: RefCell<Slab<Entry>>,
    next_seq: Cell<u64>,
    phase: Cell<Phase>,
    /// Entries with `in_flight` set.
    in_flight: Cell<usize>,
    /// `shutdown`'s waker while it waits for attempts under way.
    idle: RefCell<Option<Waker>>,
    /// Retry jitter.
    rng: RefCell<SplitMix64>,
    /// This core's counters (`sluice_callback_deliveries_total`).
    metrics: Rc<crate::metrics::Shard>,
}

/// One core's webhook sender. Cheap to clone (an `Rc`); `!Send`: every clone belongs to the
/// worker thread that made it. See the module documentation for the design.
#[derive(Clone)]
pub struct Sender {
    inner: Rc<Inner>,
}

impl Sender {
    /// A sender for this core. `config` must have passed [`SenderConfig::validate`] (the
    /// gateway checks it once at start-up, before any worker starts). `timers` is this core's
    /// timer service, whose driver must run; the runtime must have a blocking pool attached
    /// (`attach_thread_pool`) for host-name lookups.
    pub fn new(
        config: Arc<SenderConfig>,
        timers: Rc<Timers>,
        report: ReportHook,
        metrics: Rc<crate::metrics::Shard>,
    ) -> Sender {
        let tls = TlsConnector::from(Arc::clone(&config.tls));
        Sender {
            inner: Rc::new(Inner {
                metrics,
                config: RefCell::new(config),
                timers,
                report,
                tls,
                records: RefCell::new(Slab::new()),
                next_seq: Cell::new(0),
                phase: Cell::new(Phase::Open),
                in_flight: Cell::new(0),
                idle: RefCell::new(None),
                rng: RefCell::new(SplitMix64::from_entropy()),
            }),
        }
    }

    /// Queues a delivery, due at `next_attempt_at` (or now), and spawns its task on this core.
    /// Never blocks; call it from a task on this core's runtime. After shutdown started, the
    /// record comes back in the error.
    pub fn submit(&self, delivery: Delivery) -> Result<(), SenderClosed> {
        let inner = &self.inner;
        if inner.phase.get() != Phase::Open {
            return Err(SenderClosed(Box::new(delivery)));
        }
        let due = due_nanos(
            inner.timers.now(),
            SystemTime::now(),
            delivery.next_attempt_at,
        );
        let seq = inner.next_seq.get();
        inner.next_seq.set(seq.wrapping_add(1));
        let key = inner.records.borrow_mut().insert(Entry {
            record: delivery,
            due,
            seq,
            in_flight: false,
            waker: None,
        });
        spawn_guarded(deliver(Rc::clone(inner), key));
        Ok(())
    }

    /// New settings (a reload, validated by the caller): attempts that start from now on use
    /// them (signing secret, allow list, timeout, retry schedule); an attempt under way
    /// finishes with the settings it started with. TLS roots stay those of the first
    /// configuration.
    pub fn set_config(&self, config: Arc<SenderConfig>) {
        let inner = &self.inner;
        if Arc::ptr_eq(&inner.config.borrow(), &config) {
            return;
        }
        *inner.config.borrow_mut() = config;
    }

    /// Deliveries not finished yet: waiting for their due time plus in flight.
    pub fn pending(&self) -> usize {
        self.inner.records.borrow().len()
    }

    /// Stops taking work, waits up to `grace` (on the timer wheel) for attempts under way (their
    /// reports are made), and returns every undelivered record: see
    /// [`Sender::take_undelivered`]. Records that wait for a later attempt do not hold it up.
    pub async fn shutdown(&self, grace: Duration) -> Vec<Delivery> {
        let inner = &self.inner;
        if inner.phase.get() == Phase::Open {
            inner.phase.set(Phase::Closing);
            // End the waits for due times; tasks in an attempt go on.
            let sleepers: Vec<Waker> = inner
                .records
                .borrow_mut()
                .iter_mut()
                .filter(|(_, e)| !e.in_flight)
                .filter_map(|(_, e)| e.waker.take())
                .collect();
            sleepers.into_iter().for_each(Waker::wake);
        }
        let mut timer = inner.timers.sleep(grace);
        poll_fn(|cx| {
            if inner.in_flight.get() == 0 || Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let replaced = inner.idle.borrow_mut().replace(cx.waker().clone());
            drop(replaced);
            Poll::Pending
        })
        .await;
        self.take_undelivered()
    }

    /// Stops the sender at once and hands back every undelivered record (those waiting for an
    /// attempt and those in flight, whose attempt is abandoned), in due order. Every task ends
    /// at its next poll, cancelling its timer; none reports again. Later submissions are
    /// refused with [`SenderClosed`].
    pub fn take_undelivered(&self) -> Vec<Delivery> {
        let inner = &self.inner;
        inner.phase.set(Phase::Stopped);
        inner.in_flight.set(0);
        let idle = inner.idle.borrow_mut().take();
        if let Some(waker) = idle {
            waker.wake();
        }
        let mut entries: Vec<Entry> = inner.records.borrow_mut().drain().collect();
        entries.sort_by_key(|e| (e.due, e.seq));
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(waker) = entry.waker {
                waker.wake();
            }
            records.push(entry.record);
        }
        records
    }
}

impl Inner {
    /// Polls `fut` to completion, unless the sender reaches `stop` first (checked before every
    /// poll): then `None`, and `fut` is dropped by the caller.
    async fn unless<F: Future>(&self, key: usize, stop: Phase, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if self.phase.get() >= stop {
                return Poll::Ready(None);
            }
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let replaced = match self.records.borrow_mut().get_mut(key) {
                Some(entry) => match &entry.waker {
                    Some(w) if w.will_wake(cx.waker()) => None,
                    _ => entry.waker.replace(cx.waker().clone()),
                },
                None => None,
            };
            // Dropped outside the borrow: dropping a waker may run arbitrary code.
            drop(replaced);
            Poll::Pending
        })
        .await
    }

    /// Marks the entry in flight and copies its record for the attempt; `None` when the entry
    /// is gone (handed back).
    fn begin(&self, key: usize) -> Option<Delivery> {
        let mut records = self.records.borrow_mut();
        let entry = records.get_mut(key)?;
        entry.in_flight = true;
        self.in_flight.set(self.in_flight.get() + 1);
        Some(entry.record.clone())
    }

    /// Ends an attempt in the books: the entry leaves the slab when the delivery is over, or
    /// takes the record with its next due time. Wakes `shutdown` when no attempt is left.
    fn end(&self, key: usize, report: &DeliveryReport) {
        {
            let mut records = self.records.borrow_mut();
            if report.outcome.is_final() {
                if records.contains(key) {
                    records.remove(key);
                }
            } else if let Some(entry) = records.get_mut(key) {
                entry.record = report.record.clone();
                entry.due = due_nanos(
                    self.timers.now(),
                    SystemTime::now(),
                    entry.record.next_attempt_at,
                );
                entry.in_flight = false;
            }
        }
        let left = self.in_flight.get().saturating_sub(1);
        self.in_flight.set(left);
        if left == 0 {
            let idle = self.idle.borrow_mut().take();
            if let Some(waker) = idle {
                waker.wake();
            }
        }
    }

    /// Calls the report hook; a panic in it is contained (the task and the record survive).
    fn report_to(&self, report: DeliveryReport) {
        let hook = &self.report;
        if catch_unwind(AssertUnwindSafe(|| hook(report))).is_err() {
            crate::log::error(format_args!("the webhook report hook panicked"));
        }
    }
}

/// The task of one delivery: the slab entry `key` is its record until the delivery is over or
/// handed back.
async fn deliver(inner: Rc<Inner>, key: usize) {
    loop {
        let Some(due) = inner.records.borrow().get(key).map(|e| e.due) else {
            return;
        };
        let wait = inner.timers.sleep_until(due);
        if inner.unless(key, Phase::Closing, wait).await.is_none() {
            // Shutdown: the record stays in the slab for `take_undelivered`.
            return;
        }
        let Some(record) = inner.begin(key) else {
            return;
        };
        // Boxed only while it runs, so a sleeping delivery's task stays small. A panic inside
        // the attempt is caught here: a failed attempt, retried like any other.
        let running = CatchUnwind(Box::pin(attempt(&inner, &record)));
        let result = match inner.unless(key, Phase::Stopped, running).await {
            // Handed back: the record is no longer ours; the attempt and its socket are dropped.
            None => return,
            Some(Ok(result)) => result,
            Some(Err(())) => {
                crate::log::error(format_args!(
                    "a webhook delivery attempt for job {} panicked; it will be retried",
                    record.job_id
                ));
                AttemptResult::Failed(AttemptFailure::Internal("delivery attempt panicked"))
            }
        };
        let report = {
            let retry = inner.config.borrow().retry;
            let mut rng = inner.rng.borrow_mut();
            settle(record, result, &retry, SystemTime::now(), &mut *rng)
        };
        count_and_log(&inner.metrics, &report);
        let done = report.outcome.is_final();
        // A finished record leaves the books before its report, so `pending()` is already 0
        // when the owner hears "delivered".
        inner.end(key, &report);
        inner.report_to(report);
        if done {
            return;
        }
    }
}

/// The timer-clock due time of a record: `now` (timer clock) plus the time from `wall_now` to
/// `at`; `now` when `at` is `None` or past; saturating far in the future.
fn due_nanos(now: u64, wall_now: SystemTime, at: Option<SystemTime>) -> u64 {
    let wait = at
        .and_then(|at| at.duration_since(wall_now).ok())
        .unwrap_or(Duration::ZERO);
    now.saturating_add(duration_nanos(wait))
}

/// A duration in nanoseconds, saturating.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs `op` until it completes or `timer` fires: `None` on timeout (then `op` is dropped,
/// and with it any I/O it had under way). `op` is polled first, so an operation that is ready
/// when the deadline passes still counts.
async fn within<F: Future>(timer: &mut Sleep, op: F) -> Option<F::Output> {
    let mut op = pin!(op);
    poll_fn(|cx| {
        if let Poll::Ready(out) = op.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if Pin::new(&mut *timer).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// One attempt, start to close.
/// Counts an attempt's outcome and writes the job lifecycle line for it (the callback's host
/// only: its path and query may carry a receiver's secret).
fn count_and_log(metrics: &crate::metrics::CoreMetrics, report: &DeliveryReport) {
    use crate::log::{event, Level, Target};
    use crate::metrics::Callback;
    let (job, host, n) = (&report.job_id, report.url.authority(), report.attempt);
    match &report.outcome {
        DeliveryOutcome::Delivered { status } => {
            metrics.callback(Callback::Delivered);
            event(
                Target::Webhook,
                Level::Info,
                format_args!(
                    "job {job}: callback delivered to {host} (status {status}, attempt {n})"
                ),
            );
        }
        DeliveryOutcome::Retrying { failure, next_in } => {
            metrics.callback(Callback::Retrying);
            event(
                Target::Webhook,
                Level::Info,
                format_args!(
                    "job {job}: callback attempt {n} to {host} failed ({failure}); next in {} ms",
                    next_in.as_millis()
                ),
            );
        }
        DeliveryOutcome::GaveUp { reason, last } => {
            let gone = matches!(last, AttemptFailure::Status { status: 410, .. });
            metrics.callback(if gone {
                Callback::Gone
            } else {
                Callback::Failed
            });
            event(
                Target::Webhook,
                Level::Warn,
                format_args!("job {job}: callback to {host} failed after {n} attempts: {reason}"),
            );
        }
        DeliveryOutcome::Rejected { reason } => {
            metrics.callback(Callback::Rejected);
            event(
                Target::Webhook,
                Level::Warn,
                format_args!("job {job}: callback to {host} rejected, nothing sent: {reason}"),
            );
        }
    }
}

async fn attempt(inner: &Inner, d: &Delivery) -> AttemptResult {
    let config = inner.config.borrow().clone();
    let signing = config
        .secret
        .as_ref()
        .map(|s| (s, unix_secs(SystemTime::now())));
    let mut head = Vec::new();
    if let Err(reason) = encode_head(d, signing, &mut head) {
        return AttemptResult::Rejected(reason);
    }
    let addrs = match target_addrs(
        &inner.timers,
        &config.allow,
        d.url.host(),
        d.url.port(),
        config.request_timeout,
    )
    .await
    {
        Ok(addrs) => addrs,
        Err(result) => return result,
    };
    let deadline = inner
        .timers
        .now()
        .saturating_add(duration_nanos(config.request_timeout));
    match exchange(inner, d, head, &addrs, deadline).await {
        Ok(result) => result,
        Err(failure) => AttemptResult::Failed(failure),
    }
}

/// The allow check, resolution (names only, off the I/O thread, bounded by `limit`), and the
/// addresses that may be dialled. A host outside the list is rejected before any lookup.
async fn target_addrs(
    timers: &Rc<Timers>,
    allow: &CallbackAllow,
    host: &CallbackHost,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, AttemptResult> {
    let verdict = allow.check_host(host);
    if let HostCheck::Denied(reason) = verdict {
        return Err(AttemptResult::Rejected(reason));
    }
    let resolved: Vec<SocketAddr> = match host {
        CallbackHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        CallbackHost::Name(name) => resolve(timers, name, port, limit)
            .await
            .map_err(AttemptResult::Failed)?,
    };
    screen_addrs(allow, host, verdict, resolved)
}

/// Looks `name` up with the system resolver on the runtime's blocking pool. Past `limit` the
/// attempt stops waiting (the lookup itself ends on the pool within the resolver's timeouts).
async fn resolve(
    timers: &Rc<Timers>,
    name: &str,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, AttemptFailure> {
    let owned = name.to_string();
    let lookup = monoio::spawn_blocking(move || {
        (owned.as_str(), port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>())
    });
    let mut timer = timers.sleep(limit);
    match within(&mut timer, lookup).await {
        None => Err(AttemptFailure::Timeout(RESOLVING)),
        Some(Err(_cancelled)) => Err(AttemptFailure::Internal(
            "the host name lookup was cancelled",
        )),
        Some(Ok(Err(e))) => Err(AttemptFailure::Resolve(format!("{name}: {e}"))),
        Some(Ok(Ok(addrs))) => Ok(addrs),
    }
}

/// The resolved addresses that may be dialled, sans-IO: all of them unless the host's verdict
/// asks for an address check; an empty result is a resolution failure, an empty allowed subset
/// a rejection.
fn screen_addrs(
    allow: &CallbackAllow,
    host: &CallbackHost,
    verdict: HostCheck,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, AttemptResult> {
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

/// Maps an I/O error of a phase to a failure: TLS errors (rustls's, wrapped by monoio-rustls)
/// or the rest.
fn io_failure(e: io::Error, phase: &'static str) -> AttemptFailure {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return AttemptFailure::Tls(tls.to_string());
    }
    AttemptFailure::Io(format!("{phase}: {e}"))
}

/// TCP to the first address that accepts, then TLS for https; within `timer`.
async fn open(
    inner: &Inner,
    d: &Delivery,
    addrs: &[SocketAddr],
    timer: &mut Sleep,
) -> Result<UpstreamStream, AttemptFailure> {
    let mut errors = Vec::new();
    let mut tcp = None;
    for addr in addrs {
        match within(timer, TcpStream::connect_addr(*addr)).await {
            None => return Err(AttemptFailure::Timeout(CONNECTING)),
            Some(Ok(stream)) => {
                tcp = Some(stream);
                break;
            }
            Some(Err(e)) => errors.push(format!("{addr}: {e}")),
        }
    }
    let Some(tcp) = tcp else {
        return Err(AttemptFailure::Connect(errors.join("; ")));
    };
    // Head and body go out in as few writes as possible; no point waiting for ACKs (Nagle).
    let _ = tcp.set_nodelay(true);
    if d.url.scheme() == CallbackScheme::Http {
        return Ok(UpstreamStream::Plain(tcp));
    }
    let name = match d.url.host() {
        CallbackHost::Name(name) => ServerName::try_from(name.clone())
            .map_err(|e| AttemptFailure::Tls(format!("invalid server name {name}: {e}")))?,
        // An IP literal: verified against the certificate's IP addresses, no SNI sent.
        CallbackHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    match within(timer, inner.tls.connect(name, tcp)).await {
        None => Err(AttemptFailure::Timeout(HANDSHAKE)),
        Some(Ok(tls)) => Ok(UpstreamStream::Tls(Box::new(tls))),
        Some(Err(TlsError::Rustls(e))) => Err(AttemptFailure::Tls(e.to_string())),
        Some(Err(TlsError::Io(e))) => Err(io_failure(e, HANDSHAKE)),
    }
}

/// Connect, send, read the verdict, drain a little, close. Connect + send + response head are
/// bounded by `deadline` (timer clock).
async fn exchange(
    inner: &Inner,
    d: &Delivery,
    mut head: Vec<u8>,
    addrs: &[SocketAddr],
    deadline: u64,
) -> Result<AttemptResult, AttemptFailure> {
    let mut timer = inner.timers.sleep_until(deadline);
    let mut conn = open(inner, d, addrs, &mut timer).await?;

    if d.body.len() <= INLINE_BODY_BYTES {
        head.extend_from_slice(&d.body);
        write_all(&mut conn, head, &mut timer).await?;
    } else {
        write_all(&mut conn, head, &mut timer).await?;
        write_all(&mut conn, d.body.clone(), &mut timer).await?;
    }
    match within(&mut timer, conn.flush()).await {
        None => return Err(AttemptFailure::Timeout(SENDING)),
        Some(Err(e)) => return Err(io_failure(e, SENDING)),
        Some(Ok(())) => {}
    }

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
        match read_more(&mut conn, &mut buf, &mut timer).await {
            None => return Err(AttemptFailure::Timeout(WAITING)),
            Some(Err(e)) => return Err(io_failure(e, WAITING)),
            Some(Ok(0)) => {
                return Err(AttemptFailure::Io(
                    "the receiver closed the connection before a complete response head".into(),
                ))
            }
            Some(Ok(_)) => {}
        }
    };
    let result = classify(&response);

    // Discard a bounded part of the body; its errors no longer matter. The request timer
    // leaves the wheel now rather than when the attempt ends.
    drop(timer);
    let drain_deadline = deadline.min(
        inner
            .timers
            .now()
            .saturating_add(duration_nanos(BODY_DRAIN_TIMEOUT)),
    );
    let mut timer = inner.timers.sleep_until(drain_deadline);
    let mut drain = BodyDrain::new(response.framing);
    let mut seen = buf.len() - response.head_len;
    drain.feed(&buf[response.head_len..]);
    // Whether the stream may still be written: not after a dropped read or an error.
    let mut usable = true;
    while !drain.is_done() && seen < MAX_DRAINED_BODY_BYTES {
        buf.clear();
        match read_more(&mut conn, &mut buf, &mut timer).await {
            Some(Ok(0)) => break,
            Some(Ok(n)) => {
                seen += n;
                drain.feed(&buf);
            }
            None | Some(Err(_)) => {
                usable = false;
                break;
            }
        }
    }
    if usable {
        if let UpstreamStream::Tls(tls) = &mut conn {
            // close_notify, so the receiver sees a clean end; bounded like the drain.
            let _ = within(&mut timer, tls.shutdown()).await;
        }
    }
    Ok(result)
}

/// Writes all of `buf` within `timer`.
async fn write_all<B: IoBuf + 'static>(
    conn: &mut UpstreamStream,
    buf: B,
    timer: &mut Sleep,
) -> Result<(), AttemptFailure> {
    match within(timer, conn.write_all(buf)).await {
        None => Err(AttemptFailure::Timeout(SENDING)),
        Some((Ok(_), _)) => Ok(()),
        Some((Err(e), _)) => Err(io_failure(e, SENDING)),
    }
}

/// One read appended to `buf` within `timer`: the byte count (0 at end of stream), or `None` on
/// timeout. After a timeout `buf` is left empty and the connection must not be read again.
async fn read_more(
    conn: &mut UpstreamStream,
    buf: &mut Vec<u8>,
    timer: &mut Sleep,
) -> Option<io::Result<usize>> {
    buf.reserve(READ_CHUNK_BYTES);
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (res, slice) = within(timer, conn.read(owned.slice_mut(len..cap))).await?;
    *buf = slice.into_inner();
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(due_nanos(500, wall, None), 500);
        assert_eq!(due_nanos(500, wall, Some(UNIX_EPOCH)), 500, "past: now");
        assert_eq!(
            due_nanos(500, wall, Some(wall + Duration::from_millis(60))),
            500 + 60_000_000
        );
        assert_eq!(
            due_nanos(u64::MAX - 1, wall, Some(wall + Duration::from_secs(1))),
            u64::MAX,
            "saturates"
        );
    }

    #[test]
    fn config_validation() {
        let tls = Arc::new(crate::upstream::tls::client_config(None).unwrap());
        let mut c = SenderConfig::new(tls);
        assert_eq!(c.validate(), Ok(()));
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("timeout"));
        c.request_timeout = DEFAULT_REQUEST_TIMEOUT;
        c.retry.first_delay = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("first delay"));
    }

    #[test]
    fn screening_resolved_addresses() {
        let name = CallbackHost::Name("hooks.example".into());
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:80".parse().unwrap(),
            "10.1.2.3:80".parse().unwrap(),
        ];
        let open = CallbackAllow::default();
        assert_eq!(
            screen_addrs(&open, &name, HostCheck::Allowed, addrs.clone()),
            Ok(addrs.clone())
        );
        let nets = CallbackAllow::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            screen_addrs(&nets, &name, HostCheck::CheckAddresses, addrs.clone()),
            Ok(vec![addrs[1]])
        );
        let none = CallbackAllow::parse("192.168.0.0/16").unwrap();
        assert!(matches!(
            screen_addrs(&none, &name, HostCheck::CheckAddresses, addrs),
            Err(AttemptResult::Rejected(reason)) if reason.contains("--callback-allow")
        ));
        assert!(matches!(
            screen_addrs(&open, &name, HostCheck::Allowed, Vec::new()),
            Err(AttemptResult::Failed(AttemptFailure::Resolve(_)))
        ));
    }

    /// A runtime without a blocking pool: any lookup would panic ("execute blocking task
    /// without thread pool attached"), so these checks prove that none is made.
    #[test]
    fn rejected_targets_and_ip_literals_never_resolve() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("a monoio runtime");
        rt.block_on(async {
            let timers = Timers::new(std::time::Instant::now(), Duration::from_millis(1));
            let limit = Duration::from_secs(1);
            let allow = CallbackAllow::parse("*.example.com").unwrap();
            // A name outside the list: the denial comes first, so it is Rejected, not a lookup.
            let host = CallbackHost::Name("nonexistent.invalid".into());
            assert!(matches!(
                target_addrs(&timers, &allow, &host, 80, limit).await,
                Err(AttemptResult::Rejected(_))
            ));
            let ip = CallbackHost::Ip("127.0.0.1".parse().unwrap());
            assert!(matches!(
                target_addrs(&timers, &allow, &ip, 80, limit).await,
                Err(AttemptResult::Rejected(_))
            ));
            let open = CallbackAllow::default();
            assert_eq!(
                target_addrs(&timers, &open, &ip, 81, limit).await,
                Ok(vec!["127.0.0.1:81".parse().unwrap()])
            );
        });
    }

    #[test]
    fn io_failures_keep_rustls_errors_apart() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(
            matches!(io_failure(tls, HANDSHAKE), AttemptFailure::Tls(e) if e.contains("certificate"))
        );
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(
            io_failure(reset, WAITING),
            AttemptFailure::Io("waiting for the response head: reset by peer".into())
        );
    }
}
