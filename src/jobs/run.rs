//! Running one job: rate-limit slot, attempt, retry with backoff, until a terminal state; and
//! answering its client within the deadline, or with `202 Accepted` and carrying on.
//!
//! The job is driven by the task of the client connection that brought it, so the direct path
//! (answer before the deadline, the common case) spawns nothing and allocates nothing: the
//! attempt's response head comes back to the same task and the body streams straight to the
//! client. Two futures race in that task: the driver ([`drive`]) and the deadline. When the
//! deadline wins (or the driver says the answer cannot arrive in time: the next retry or the
//! next rate-limit slot is later than the deadline), the client gets its 202, the client
//! connection moves to a fresh task (so keep-alive goes on), and this task keeps driving the
//! job to its end; the pending upstream read is never dropped, so no response byte is lost.
//!
//! A deferred job is registered in the shared [`Registry`](super::registry::Registry) under a
//! fresh id, where `/_sluice/jobs/<id>` finds it; its final answer is kept there (bounded by
//! `--max-response-body-bytes`) for `/result` and the callback.

use std::cell::{Cell, RefCell, RefMut};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use crate::error::ProxyError;
use crate::http::find_header;
use crate::http::request::{Method, RequestHead};
use crate::jobs::backoff::parse_retry_after;
use crate::jobs::crosscore::{RemoteAnswer, RemoteWait};
use crate::jobs::persist;
use crate::jobs::registry::{CallbackState, JobId, JobRecord, JobState, JobStatus, StoredResponse};
use crate::log::{Level, Target};
use crate::proxy::forward::{
    collect_response, send_attempt, stored_error, stream_response, write_stored, Answer,
};
use crate::proxy::{ClientConn, Next};
use crate::server::worker::Worker;

/// Identifies identical requests (method, path, query without `callback`, body): the first
/// 16 bytes of their SHA-256.
pub type DedupKey = [u8; 16];

/// Request headers that change what the upstream answers; two requests differing in one of
/// them are not identical (a `Range` or `If-None-Match` request must not get another client's
/// full answer, nor the reverse).
const DEDUP_HEADERS: [&[u8]; 10] = [
    b"range",
    b"if-range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"content-type",
];

/// The dedup key of a request: method, path, query (without `callback`), the
/// answer-shaping headers ([`DEDUP_HEADERS`]) and the body.
pub fn dedup_key(
    head: &RequestHead,
    buf: &[u8],
    path: &[u8],
    query: &[u8],
    body: &[u8],
) -> DedupKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |p: &[u8]| {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    };
    part(head.method_span.get(buf));
    part(path);
    part(query);
    for h in head.headers.iter() {
        let name = h.name.get(buf);
        if DEDUP_HEADERS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            // The name matched one of DEDUP_HEADERS, so it is at most 19 bytes.
            let mut lower = [0u8; 32];
            let n = name.len().min(lower.len());
            for (l, b) in lower.iter_mut().zip(name) {
                *l = b.to_ascii_lowercase();
            }
            part(&lower[..n]);
            part(h.value.get(buf));
        }
    }
    part(body);
    let digest = ctx.finish();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

/// What a job needs from the request that created it.
pub struct JobRequest {
    /// The job's id, chosen before its first attempt (it is the `Idempotency-Key`).
    pub id: JobId,
    /// This job's place under `--max-inflight`, released when the job ends.
    pub open: Option<crate::server::worker::OpenJob>,
    /// Limiter this job's attempts take slots from (a number of `routes.limiters`).
    pub limiter: usize,
    /// The route table the request was matched with: the job keeps its settings to the end,
    /// whatever a reload changes meanwhile.
    pub routes: Rc<crate::routing::CoreRoutes>,
    /// The endpoint (allowlist index of `routes`).
    pub endpoint: usize,
    pub method: Method,
    /// The complete upstream request (edited head and body), sent by every attempt. Moves
    /// into the job's cell when the job starts.
    pub bytes: Vec<u8>,
    /// The raw, validated callback URL, if the client gave one.
    pub callback: Option<crate::webhook::CallbackUrl>,
    /// This job's slot in the cross-core table of open keys, when it published its key there.
    pub published: Option<usize>,
}

/// How the driver ended. The answer travels by value on purpose: boxing it would allocate on
/// the direct path, once per request.
#[allow(clippy::large_enum_variant)]
enum Driven {
    /// A terminal response head while the client still waits: stream it.
    Direct(Answer),
    /// A final result in memory.
    Stored(StoredResponse),
}

/// Per-core state of one open job, shared (same thread, no locks) by its driver, its creating
/// client and any identical requests attached to it (dedup).
pub struct JobCell {
    /// The job's id (see [`JobRequest::id`]).
    id: Cell<JobId>,
    /// Whether the creating client still waits for the answer (no 202 yet).
    client_waiting: Cell<bool>,
    /// Set by the driver when the answer cannot arrive before the creator's deadline.
    defer_now: Cell<bool>,
    /// The registry entry, once any of the job's clients got a 202.
    record: RefCell<Option<Arc<JobRecord>>>,
    attempts: Cell<u32>,
    last_status: Cell<Option<u16>>,
    /// Next attempt time (nanos on the worker clock), while retrying.
    next_attempt: Cell<Option<u64>>,
    status: Cell<JobStatus>,
    /// Job creation time (nanos on the worker clock).
    created: Cell<u64>,
    /// The creating client's deadline (nanos on the worker clock).
    deadline: Cell<u64>,
    /// Distinct callback URLs of the clients that got a 202.
    callbacks: RefCell<Vec<crate::webhook::CallbackUrl>>,
    /// Attached duplicates still waiting for the answer itself.
    attached: Cell<usize>,
    /// The final answer, once there is one (for attached duplicates).
    result: RefCell<Option<StoredResponse>>,
    waiters: RefCell<Vec<Waker>>,
    /// True while the driver waits in a rate-limit queue (nothing sent yet for this attempt).
    waiting_for_slot: Cell<bool>,
    /// Set once the job's terminal state is recorded.
    finished: Cell<bool>,
    /// The slot of this job's key in the cross-core table, while published.
    published: Cell<Option<usize>>,
    /// Duplicates on other cores attached to this job.
    remote: RefCell<Vec<Arc<RemoteWait>>>,
    /// The upstream request every attempt sends. Shared, not copied: an attempt hands the
    /// kernel a clone of the `Rc` (the bytes stay put and unchanged while the write is in
    /// flight), and the bytes stay readable meanwhile, so that whoever defers the job can store
    /// them. Changed only through [`JobCell::request_mut`].
    request: RefCell<Rc<Vec<u8>>>,
    method: Cell<Method>,
    /// The limiter the job's attempts take slots from (a number of `routes`' limiters).
    limiter: Cell<usize>,
    /// The route table the job started with (`None` until set: then the worker's current).
    routes: RefCell<Option<Rc<crate::routing::CoreRoutes>>>,
    /// The job's endpoint in `routes`; `None` for a job resumed from the store (it runs
    /// with the global retry policy).
    endpoint: Cell<Option<usize>>,
    /// True once the job's row is in the store: its progress and end are recorded there.
    persisted: Cell<bool>,
    /// Counted as deferred in the metrics (a 202 was given, or it resumed from the store).
    deferred: Cell<bool>,
    /// The terminal result for the metrics (`Some(succeeded)`); `None` when the job ends
    /// without one (cancelled, or left to the store at shutdown).
    end: Cell<Option<bool>>,
}

impl JobCell {
    /// The request bytes, to change. When an attempt's write still holds them (a dropped
    /// attempt whose write the kernel has not finished: rare), the cell takes a fresh buffer
    /// and leaves those bytes to the write.
    fn request_mut(&self) -> RefMut<'_, Vec<u8>> {
        RefMut::map(self.request.borrow_mut(), |shared| {
            if Rc::get_mut(shared).is_none() {
                *shared = Rc::default();
            }
            // Unique now: `make_mut` hands out the buffer itself, never a clone.
            Rc::make_mut(shared)
        })
    }

    pub fn new(created: u64, deadline: u64) -> JobCell {
        JobCell {
            id: Cell::new(JobId([0; 16])),
            client_waiting: Cell::new(true),
            defer_now: Cell::new(false),
            record: RefCell::new(None),
            attempts: Cell::new(0),
            last_status: Cell::new(None),
            next_attempt: Cell::new(None),
            status: Cell::new(JobStatus::Pending),
            created: Cell::new(created),
            deadline: Cell::new(deadline),
            callbacks: RefCell::new(Vec::new()),
            attached: Cell::new(0),
            result: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            waiting_for_slot: Cell::new(false),
            finished: Cell::new(false),
            published: Cell::new(None),
            remote: RefCell::new(Vec::new()),
            request: RefCell::new(Rc::new(Vec::new())),
            method: Cell::new(Method::Get),
            limiter: Cell::new(0),
            routes: RefCell::new(None),
            endpoint: Cell::new(None),
            persisted: Cell::new(false),
            deferred: Cell::new(false),
            end: Cell::new(None),
        }
    }

    /// Makes a pooled cell new again (it is reused only when nobody else holds it).
    pub fn reset(&self, created: u64, deadline: u64) {
        self.client_waiting.set(true);
        self.defer_now.set(false);
        *self.record.borrow_mut() = None;
        self.attempts.set(0);
        self.last_status.set(None);
        self.next_attempt.set(None);
        self.status.set(JobStatus::Pending);
        self.created.set(created);
        self.deadline.set(deadline);
        self.callbacks.borrow_mut().clear();
        self.attached.set(0);
        *self.result.borrow_mut() = None;
        self.waiters.borrow_mut().clear();
        self.waiting_for_slot.set(false);
        self.finished.set(false);
        self.published.set(None);
        self.remote.borrow_mut().clear();
        self.request_mut().clear();
        self.persisted.set(false);
        self.deferred.set(false);
        self.end.set(None);
    }

    /// The job as a store row: its request without the token, every callback it may owe
    /// (remote duplicates' included: one that gets its answer directly may still be called
    /// back after a crash, which at-least-once allows).
    fn row(&self, worker: &Worker) -> Option<crate::store::JobRow> {
        let id = self.id.get();
        let mut request = Vec::new();
        let redacted = persist::redact(&self.request.borrow()[..], &id.to_hex(), &mut request);
        if let Err(why) = redacted {
            crate::log::error(format_args!("job {} not stored: {why}", id.as_string()));
            return None;
        }
        let method = request
            .split(|&b| b == b' ')
            .next()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default();
        let mut callbacks: Vec<String> = self
            .callbacks
            .borrow()
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        for wait in self.remote.borrow().iter() {
            if let Some(url) = &wait.callback {
                if !callbacks.iter().any(|c| c == url.as_str()) {
                    callbacks.push(url.as_str().to_string());
                }
            }
        }
        let callback_state = if callbacks.is_empty() {
            crate::store::CallbackState::None
        } else {
            crate::store::CallbackState::Pending
        };
        Some(crate::store::JobRow {
            id: id.0,
            created_at_ms: persist::unix_ms(worker.system_time_at(self.created.get())),
            method,
            endpoint: self
                .routes(worker)
                .limiters
                .name(self.limiter.get())
                .to_string(),
            request,
            callbacks,
            attempts: self.attempts.get(),
            next_attempt_at_ms: self
                .next_attempt
                .get()
                .map(|t| persist::unix_ms(worker.system_time_at(t))),
            status: persist::status_to_row(self.status.get()),
            last_upstream_status: self.last_status.get(),
            finished_at_ms: None,
            result: None,
            callback_state,
        })
    }

    /// The route table of this job.
    fn routes(&self, worker: &Worker) -> Rc<crate::routing::CoreRoutes> {
        match &*self.routes.borrow() {
            Some(r) => r.clone(),
            None => worker.routes(),
        }
    }

    /// Writes the whole job to the store (a deferral or a new callback); the returned commit
    /// is awaited before a 202 promises anything. `None` without a store.
    fn persist(&self, worker: &Worker) -> Option<crate::store::Durable> {
        let store = worker.store.as_ref()?;
        let row = self.row(worker)?;
        self.persisted.set(true);
        Some(store.submit_durable(crate::store::Op::PutJob(Box::new(row))))
    }

    /// Records an attempt's outcome in the store (batched, not awaited), once the job is there.
    fn record_progress(&self, worker: &Worker) {
        let Some(store) = worker.store.as_ref().filter(|_| self.persisted.get()) else {
            return;
        };
        let status = self.status.get();
        if status.is_terminal() {
            return;
        }
        let _ = store.submit(crate::store::Op::JobProgress {
            id: self.id.get().0,
            attempts: self.attempts.get(),
            next_attempt_at_ms: self
                .next_attempt
                .get()
                .map(|t| persist::unix_ms(worker.system_time_at(t))),
            status: persist::status_to_row(status),
            last_upstream_status: self.last_status.get(),
        });
    }

    /// Records the job's end in the store, once the job is there.
    fn record_end(&self, worker: &Worker, status: JobStatus, stored: &StoredResponse) {
        let Some(store) = worker.store.as_ref().filter(|_| self.persisted.get()) else {
            return;
        };
        let _ = store.submit(crate::store::Op::JobFinished {
            id: self.id.get().0,
            status: persist::status_to_row(status),
            attempts: self.attempts.get(),
            last_upstream_status: self.last_status.get(),
            finished_at_ms: persist::unix_ms(SystemTime::now()),
            result: Some(persist::result_to_row(stored)),
        });
    }

    /// Copies the job's progress into its registry entry, if it has one.
    fn publish(&self, worker: &Worker) {
        if let Some(record) = self.record.borrow().as_ref() {
            let mut s = record.lock();
            s.status = self.status.get();
            s.attempts = self.attempts.get();
            s.last_upstream_status = self.last_status.get();
            s.next_attempt_at = self.next_attempt.get().map(|t| worker.system_time_at(t));
        }
    }

    /// The job's registry entry, registering the job under a fresh id if no client of it was
    /// deferred before.
    fn ensure_record(&self, worker: &Worker) -> Arc<JobRecord> {
        if let Some(record) = self.record.borrow().as_ref() {
            return record.clone();
        }
        let record = worker.registry.insert_with_id(
            self.id.get(),
            JobState {
                status: self.status.get(),
                attempts: self.attempts.get(),
                last_upstream_status: self.last_status.get(),
                next_attempt_at: self.next_attempt.get().map(|t| worker.system_time_at(t)),
                created_at: worker.system_time_at(self.created.get()),
                finished_at: None,
                result: None,
                callback: CallbackState::None,
            },
        );
        *self.record.borrow_mut() = Some(record.clone());
        record
    }

    /// Adds a deferred client's callback, once per distinct URL.
    fn add_callback(&self, url: Option<crate::webhook::CallbackUrl>) {
        let Some(url) = url else { return };
        let mut callbacks = self.callbacks.borrow_mut();
        if !callbacks.iter().any(|c| c.as_str() == url.as_str()) {
            callbacks.push(url);
        }
        if let Some(record) = self.record.borrow().as_ref() {
            record.lock().callback = CallbackState::Pending;
        }
    }

    /// Whether the answer must be kept in memory rather than streamed to the creator: someone
    /// else (an attached duplicate, a deferred client) needs it too.
    fn must_store(&self) -> bool {
        !self.client_waiting.get()
            || self.attached.get() > 0
            || self.record.borrow().is_some()
            || !self.remote.borrow().is_empty()
    }

    /// Publishes the final answer to attached duplicates, here and on other cores; the
    /// callbacks of remote duplicates that were deferred join the job's callbacks.
    fn complete(&self, stored: &StoredResponse) {
        *self.result.borrow_mut() = Some(stored.clone());
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        let remote = std::mem::take(&mut *self.remote.borrow_mut());
        for wait in remote {
            if let Some(url) = wait.complete(stored) {
                self.add_callback(Some(url));
            }
        }
    }
}

/// Takes a job's key out of this core's dedup map (if it is still this job's) and out of the
/// cross-core table: later identical requests start a job of their own.
fn forget_key(worker: &Worker, key: Option<DedupKey>, cell: &Rc<JobCell>) {
    let Some(key) = key else { return };
    {
        let mut dedup = worker.dedup.borrow_mut();
        if dedup.get(&key).is_some_and(|c| Rc::ptr_eq(c, cell)) {
            dedup.remove(&key);
        }
    }
    if let Some(at) = cell.published.take() {
        worker.open_keys.release(at, &key, worker.id);
    }
}

/// Runs the job for the client in `slot` and answers it. Returns what the connection loop
/// does next; [`Next::Detached`] when the connection moved to another task. With a dedup
/// `key`, identical requests arriving while the job is open attach to it ([`attach`]).
pub async fn serve_job(
    worker: &Rc<Worker>,
    slot: &mut Option<ClientConn>,
    head: &RequestHead,
    head_bytes: &bytes::Bytes,
    mut request: JobRequest,
    key: Option<DedupKey>,
) -> Next {
    let now = worker.timers.now();
    let deadline = now.saturating_add(duration_nanos(
        request.routes.endpoint(request.endpoint).deadline,
    ));
    let guard = JobGuard {
        worker,
        cell: worker.take_job_cell(now, deadline),
        key,
    };
    let cell = &guard.cell;
    worker.metrics.job_opened(false);
    cell.id.set(request.id);
    cell.method.set(request.method);
    cell.limiter.set(request.limiter);
    cell.endpoint.set(Some(request.endpoint));
    *cell.routes.borrow_mut() = Some(request.routes.clone());
    std::mem::swap(&mut *cell.request_mut(), &mut request.bytes);
    worker.give_request_buf(std::mem::take(&mut request.bytes));
    if let Some(key) = key {
        worker.dedup.borrow_mut().insert(key, cell.clone());
        cell.published.set(request.published.take());
    }
    let callback = request.callback.take();
    // In a function of its own, so the driver's state is gone (its memory reused) while the
    // answer streams: the connection's task stays small.
    let Some(outcome) = until_driven(
        worker, slot, head, head_bytes, cell, key, callback, deadline,
    )
    .await
    else {
        return Next::Close;
    };
    if let Some(conn) = slot.as_mut() {
        conn.trace
            .job(cell.id.get(), cell.attempts.get(), cell.last_status.get());
    }
    worker.give_request_buf(std::mem::take(&mut *cell.request_mut()));
    let stored = match outcome {
        Driven::Direct(answer) => {
            // Streamed to its only client: nobody else waits (see `must_store`).
            cell.finished.set(true);
            cell.end.set(Some((200..300).contains(&answer.head.status)));
            drop(request.open.take());
            return match slot.as_mut() {
                Some(conn) => stream_response(worker, &request.routes, conn, head, answer).await,
                None => Next::Close,
            };
        }
        Driven::Stored(stored) => stored,
    };
    // Release the job's place before its terminal state becomes visible, so that whoever sees
    // "finished" also sees the capacity again.
    drop(request.open.take());
    cell.complete(&stored);
    let record = cell.record.borrow().clone();
    if let Some(record) = record {
        finish(worker, cell, &record, &stored);
    }
    match slot.as_mut() {
        Some(conn) if cell.client_waiting.get() => {
            write_stored(conn, &stored, head.keep_alive).await
        }
        Some(_) => Next::Close,
        None => Next::Detached,
    }
}

/// Drives the job until it has an outcome for this request: while the client waits (until
/// `deadline`), then, after a deferral or when the client left with a callback owed, until the
/// end. `None`: the client left before anything was sent and nobody else wants the answer (the
/// job is cancelled). Where the client's connection leaves this task (the client went away,
/// or its 202 is written by a task of its own), its request is finished there
/// (`proxy::trace::finish`), with `head_bytes`.
#[allow(clippy::too_many_arguments)] // one call site; each argument is a different borrow
async fn until_driven(
    worker: &Rc<Worker>,
    slot: &mut Option<ClientConn>,
    head: &RequestHead,
    head_bytes: &bytes::Bytes,
    cell: &Rc<JobCell>,
    key: Option<DedupKey>,
    callback: Option<crate::webhook::CallbackUrl>,
    deadline: u64,
) -> Option<Driven> {
    let mut driver = pin!(drive(worker, cell, key));
    let mut timer = pin!(worker.timers.sleep_until(deadline));
    let first = Race {
        driver: driver.as_mut(),
        deadline: timer.as_mut(),
        cell,
        client: slot.as_ref().map(|c| &c.stream),
        watch: None,
    }
    .await;
    match first {
        RaceEnd::Driven(driven) => Some(driven),
        RaceEnd::ClientGone => {
            cell.client_waiting.set(false);
            if let Some(conn) = slot.as_mut() {
                conn.trace
                    .job(cell.id.get(), cell.attempts.get(), cell.last_status.get());
                crate::proxy::trace::finish(worker, conn, head_bytes);
            }
            *slot = None;
            let others = cell.attached.get() > 0 || cell.record.borrow().is_some();
            if cell.attempts.get() == 0 && callback.is_none() && !others {
                // Nothing was sent and nobody else wants the answer: cancel. Dropping the
                // driver leaves the rate-limit queue.
                forget_key(worker, key, cell);
                crate::log::debug(format_args!("job cancelled: its client went away"));
                return None;
            }
            if callback.is_some() {
                cell.ensure_record(worker);
                cell.add_callback(callback);
                // Nobody waits for a 202 here, but the callback is owed: store the job.
                drop(cell.persist(worker));
            }
            Some(driver.await)
        }
        RaceEnd::Defer => {
            // Deferred: register, answer 202, hand the connection to a new task, and keep
            // driving the job here.
            cell.client_waiting.set(false);
            let record = cell.ensure_record(worker);
            cell.add_callback(callback);
            worker.metrics.job_deferred();
            cell.deferred.set(true);
            let routes = cell.routes(worker);
            let endpoint = cell
                .endpoint
                .get()
                .map_or("", |e| routes.allowlist.entry(e));
            crate::log::event(
                Target::Jobs,
                Level::Info,
                format_args!(
                    "job {} accepted: endpoint {endpoint}, deadline passed after {} attempts; \
                 202 sent, the job goes on",
                    record.id.as_string(),
                    cell.attempts.get()
                ),
            );
            let durable = cell.persist(worker);
            if let Some(mut conn) = slot.take() {
                // The 202 is written by the connection's new task (once the job is
                // stored): a client that does not read must not stall this job (or the
                // rate-limit queue it heads). That task finishes the request.
                conn.trace
                    .job(cell.id.get(), cell.attempts.get(), cell.last_status.get());
                let (w, record, keep_alive) = (worker.clone(), record.clone(), head.keep_alive);
                let head_bytes = head_bytes.clone();
                crate::server::spawn_guarded(async move {
                    let next =
                        answer_accepted_durably(&mut conn, &record, keep_alive, durable).await;
                    crate::proxy::trace::finish(&w, &mut conn, &head_bytes);
                    drop(head_bytes);
                    if next == Next::KeepAlive {
                        crate::proxy::continue_serving(w, conn).await;
                    }
                });
            }
            Some(driver.await)
        }
    }
}

/// Cleans up after a job whose task ended without reaching a terminal state (cancelled, or a
/// caught panic): its dedup entry goes, attached duplicates are released, and a deferred job's
/// record is closed as failed instead of staying "pending" for ever.
struct JobGuard<'a> {
    worker: &'a Worker,
    cell: Rc<JobCell>,
    key: Option<DedupKey>,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let deferred = self.cell.deferred.get();
        match self.cell.end.get() {
            Some(succeeded) => self.worker.metrics.job_finished(succeeded, deferred),
            None => self.worker.metrics.job_abandoned(deferred),
        }
        forget_key(self.worker, self.key, &self.cell);
        let ended = self.cell.finished.get() || self.cell.result.borrow().is_some();
        if ended {
            self.worker.give_job_cell(self.cell.clone());
            return;
        }
        let stored =
            StoredResponse::sluice_error(500, "internal_error", "the job ended without an answer");
        self.cell.complete(&stored);
        self.cell
            .record_end(self.worker, JobStatus::Failed, &stored);
        let record = self.cell.record.borrow().clone();
        if let Some(record) = record {
            let mut s = record.lock();
            s.status = JobStatus::Failed;
            s.finished_at = Some(SystemTime::now());
            s.result = Some(stored);
        }
        self.worker.give_job_cell(self.cell.clone());
    }
}

/// A duplicate of an open job on this core: wait for the job's answer until this client's own
/// deadline, then answer 202 with the job's id (registering the job if needed); its callback,
/// if new, is notified too.
pub async fn attach(
    worker: &Rc<Worker>,
    conn: &mut ClientConn,
    head: &RequestHead,
    cell: Rc<JobCell>,
    callback: Option<crate::webhook::CallbackUrl>,
    wait: Duration,
) -> Next {
    let deadline = worker.timers.now().saturating_add(duration_nanos(wait));
    cell.attached.set(cell.attached.get() + 1);
    conn.trace.job = Some(cell.id.get());
    let mut timer = pin!(worker.timers.sleep_until(deadline));
    let answered = poll_fn(|cx| {
        if cell.result.borrow().is_some() {
            return Poll::Ready(true);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        cell.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .await;
    cell.attached.set(cell.attached.get().saturating_sub(1));
    // What the shared job did (this request made no attempt of its own).
    conn.trace
        .job(cell.id.get(), cell.attempts.get(), cell.last_status.get());
    if answered {
        let stored = cell.result.borrow().clone();
        if let Some(stored) = stored {
            return write_stored(conn, &stored, head.keep_alive).await;
        }
    }
    let record = cell.ensure_record(worker);
    cell.add_callback(callback);
    let durable = cell.persist(worker);
    answer_accepted_durably(conn, &record, head.keep_alive, durable).await
}

/// A duplicate of a job that another core (`owner`) runs: post it to that core, then wait for
/// the answer until this client's own deadline, then answer 202 with the job's id (the owner
/// notifies this client's callback). `None` when the owner no longer has the job: the caller
/// runs the request as a job of its own.
pub async fn attach_remote(
    worker: &Rc<Worker>,
    conn: &mut ClientConn,
    head: &RequestHead,
    owner: usize,
    key: DedupKey,
    callback: Option<crate::webhook::CallbackUrl>,
    deadline: Duration,
) -> Option<Next> {
    let wait = RemoteWait::new(key, callback);
    if !worker.open_keys.post(owner, wait.clone()) {
        return None;
    }
    let deadline = worker.timers.now().saturating_add(duration_nanos(deadline));
    let mut timer = worker.timers.sleep_until(deadline);
    let mut passed = false;
    let answer = poll_fn(|cx| {
        passed = passed || Pin::new(&mut timer).poll(cx).is_ready();
        wait.poll_answer(passed, cx.waker())
    })
    .await;
    match answer {
        RemoteAnswer::Answer(stored) => Some(write_stored(conn, &stored, head.keep_alive).await),
        RemoteAnswer::Accepted(record) => {
            Some(answer_accepted(conn, &record, head.keep_alive).await)
        }
        RemoteAnswer::Gone => None,
    }
}

/// This core's side of cross-core dedup: takes duplicates posted by other cores and attaches
/// each to the open job for its key (registering the job, so that a duplicate deferred to a
/// 202 has an id to give), or tells it the job is gone. Runs for the worker's life.
pub async fn serve_remote_duplicates(worker: Rc<Worker>) {
    let mut batch = Vec::new();
    loop {
        worker.open_keys.receive(worker.id, &mut batch).await;
        for wait in batch.drain(..) {
            let open = worker.dedup.borrow().get(&wait.key).cloned();
            match open {
                Some(cell) if !cell.finished.get() && cell.result.borrow().is_none() => {
                    let record = cell.ensure_record(&worker);
                    cell.remote.borrow_mut().push(wait.clone());
                    // The duplicate may answer 202 as soon as it is attached: store the job
                    // (with its callback) first.
                    match cell.persist(&worker) {
                        None => {
                            if let Some(url) = wait.attached(record) {
                                cell.add_callback(Some(url));
                            }
                        }
                        Some(durable) => {
                            let cell = cell.clone();
                            crate::server::spawn_guarded(async move {
                                if let Err(e) = durable.await {
                                    crate::log::error(format_args!(
                                        "job {} not stored: {e}",
                                        record.id.as_string()
                                    ));
                                }
                                if let Some(url) = wait.attached(record) {
                                    cell.add_callback(Some(url));
                                }
                            });
                        }
                    }
                }
                _ => wait.gone(),
            }
        }
    }
}

/// Resumes a job stored by a previous run. Its clients got their 202 long ago, so it runs
/// detached to its end and notifies its callbacks. A job that cannot be resumed (its request
/// is unreadable, its endpoint is no longer configured) fails, and its callbacks say so.
pub fn resume(worker: &Rc<Worker>, row: crate::store::JobRow) {
    let id = JobId(row.id);
    let Some(record) = worker.registry.get(&id) else {
        return;
    };
    let now = worker.timers.now();
    let wall = SystemTime::now();
    let age = wall
        .duration_since(persist::from_unix_ms(row.created_at_ms))
        .unwrap_or_default();
    let created = now.saturating_sub(duration_nanos(age));
    let cell = worker.take_job_cell(created, created);
    let routes = worker.routes();
    cell.endpoint.set(None);
    *cell.routes.borrow_mut() = Some(routes.clone());
    cell.id.set(id);
    cell.client_waiting.set(false);
    *cell.record.borrow_mut() = Some(record.clone());
    cell.attempts.set(row.attempts);
    cell.last_status.set(row.last_upstream_status);
    cell.status.set(persist::status_from_row(row.status));
    cell.persisted.set(true);
    for url in &row.callbacks {
        match crate::webhook::CallbackUrl::parse_str(url) {
            Ok(url) => cell.add_callback(Some(url)),
            Err(why) => crate::log::error(format_args!(
                "job {}: stored callback {url:?} dropped: {why}",
                id.as_string()
            )),
        }
    }
    let start_at = row.next_attempt_at_ms.map(|ms| {
        let wait = persist::from_unix_ms(ms)
            .duration_since(wall)
            .unwrap_or_default();
        now.saturating_add(duration_nanos(wait))
    });
    let key = id.to_hex();
    let problem = {
        let mut request = cell.request_mut();
        let idempotency = routes.config.idempotency_key.then_some(&key[..]);
        let token = routes.config.token.expose().as_bytes();
        match persist::restore(&row.request, token, idempotency, &mut request) {
            Err(why) => Some(why),
            Ok(()) => {
                let mut parts = request.split(|&b| b == b' ');
                let method = parts.next().unwrap_or(b"");
                cell.method.set(Method::from_bytes(method));
                // Its endpoint's settings (retry policy) when its path is still allowlisted:
                // the stored target carries the origin's path prefix, the allowlist does not.
                let target = parts.next().unwrap_or(b"");
                let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
                let prefix = routes.config.origin.path_prefix.as_bytes();
                let path = path.strip_prefix(prefix).unwrap_or(path);
                cell.endpoint.set(routes.allowlist.match_path(path));
                match routes.limiters.index_of(&row.endpoint) {
                    Some(i) => {
                        cell.limiter.set(i);
                        None
                    }
                    None => Some("its endpoint is no longer configured"),
                }
            }
        }
    };
    let open = worker.open_job_forced();
    crate::server::spawn_guarded(run_resumed(worker.clone(), cell, start_at, open, problem));
}

/// The task of a resumed job (see [`resume`]).
async fn run_resumed(
    worker: Rc<Worker>,
    cell: Rc<JobCell>,
    start_at: Option<u64>,
    open: crate::server::worker::OpenJob,
    problem: Option<&'static str>,
) {
    let guard = JobGuard {
        worker: &worker,
        cell,
        key: None,
    };
    let cell = &guard.cell;
    worker.metrics.job_opened(true);
    cell.deferred.set(true);
    let stored = match problem {
        Some(why) => {
            crate::log::error(format_args!(
                "stored job {} cannot be resumed: {why}",
                cell.id.get().as_string()
            ));
            StoredResponse::sluice_error(502, "not_resumable", why)
        }
        None => {
            if let Some(at) = start_at {
                worker.timers.sleep_until(at).await;
            }
            match drive(&worker, cell, None).await {
                Driven::Stored(stored) => stored,
                // Not reached (nobody waits, so the answer is always stored), but harmless.
                Driven::Direct(answer) => {
                    let routes = cell.routes(&worker);
                    match collect_response(&worker, &routes, answer, cell.method.get()).await {
                        Ok(stored) => stored,
                        Err(e) => stored_error(&e),
                    }
                }
            }
        }
    };
    worker.give_request_buf(std::mem::take(&mut *cell.request_mut()));
    drop(open);
    cell.complete(&stored);
    let record = cell.record.borrow().clone();
    if let Some(record) = record {
        finish(&worker, cell, &record, &stored);
    }
}

/// Records the final state of a deferred job and hands its callbacks to the webhook sender.
fn finish(worker: &Worker, cell: &JobCell, record: &Arc<JobRecord>, stored: &StoredResponse) {
    let succeeded = stored.from_upstream && (200..300).contains(&stored.status);
    let status = if succeeded {
        JobStatus::Succeeded
    } else {
        JobStatus::Failed
    };
    cell.status.set(status);
    cell.next_attempt.set(None);
    cell.finished.set(true);
    cell.end.set(Some(succeeded));
    {
        // One lock: whoever sees the terminal status also finds the result.
        let mut s = record.lock();
        s.status = status;
        s.attempts = cell.attempts.get();
        s.last_upstream_status = cell.last_status.get();
        s.next_attempt_at = None;
        s.finished_at = Some(SystemTime::now());
        s.result = Some(stored.clone());
    }
    crate::log::event(
        Target::Jobs,
        Level::Info,
        format_args!(
            "job {} {} after {} attempts: {} {}",
            record.id.as_string(),
            status.as_str(),
            cell.attempts.get(),
            stored.status,
            if stored.from_upstream {
                "from the origin"
            } else {
                "from sluice"
            }
        ),
    );
    cell.record_end(worker, status, stored);
    let persisted = cell.persisted.get();
    for url in cell.callbacks.borrow_mut().drain(..) {
        worker.submit_callback(record, url, stored, status, cell.attempts.get(), persisted);
    }
}

/// Drives the job's attempts until a terminal state.
async fn drive(worker: &Rc<Worker>, ctl: &Rc<JobCell>, key: Option<DedupKey>) -> Driven {
    let routes = ctl.routes(worker);
    let policy = match ctl.endpoint.get() {
        Some(e) => &routes.endpoint(e).retry,
        None => &routes.retry,
    };
    let limiters = &routes.limiters;
    let timers = &worker.timers;
    let metrics = &**worker.metrics;
    // The endpoint's metric slot; a resumed job whose path matches no endpoint any more
    // counts in the shared overflow slot.
    let endpoint_slot = ctl
        .endpoint
        .get()
        .map_or(u16::MAX, |e| routes.endpoint(e).metric);
    loop {
        let wait_from = timers.now();
        // Do not hold the caller when the next slot is certainly too late.
        if ctl.client_waiting.get() {
            let free_at = worker
                .slots
                .next_free(limiters, ctl.limiter.get(), wait_from);
            if free_at > ctl.deadline.get() {
                ctl.defer_now.set(true);
            }
        }
        ctl.waiting_for_slot.set(true);
        let limiter_slot = routes
            .limiter_slots
            .get(ctl.limiter.get())
            .copied()
            .unwrap_or(u16::MAX);
        let sent_at = worker
            .slots
            .acquire(
                limiters,
                ctl.limiter.get(),
                timers,
                metrics,
                limiter_slot,
                wait_from,
            )
            .await;
        ctl.waiting_for_slot.set(false);
        metrics.limiter_waited(limiter_slot, nanos(sent_at.saturating_sub(wait_from)));
        if worker.drain.halted() {
            // Shutting down: no attempt starts any more (the slot taken stays counted, which
            // is only cautious); a deferred job is in the store and resumes after the restart.
            return std::future::pending().await;
        }
        let attempt = ctl.attempts.get().saturating_add(1);
        ctl.attempts.set(attempt);
        ctl.next_attempt.set(None);
        ctl.publish(worker);
        ctl.record_progress(worker);
        // A shared view (no copy); no borrow of the cell is held across the await.
        let request = Rc::clone(&ctl.request.borrow());
        let result = send_attempt(worker, &routes, request, ctl.method.get()).await;
        let took = nanos(timers.now().saturating_sub(sent_at));
        metrics.attempt(endpoint_slot, attempt_result(&result), took);
        if crate::log::enabled(Target::Jobs, Level::Debug) || ctl.deferred.get() {
            log_attempt(ctl, attempt, &result, took);
        }
        let (retriable, retry_after) = match &result {
            Ok(answer) => {
                ctl.last_status.set(Some(answer.head.status));
                let retry_after =
                    find_header(&answer.head.headers, &answer.head_bytes, b"retry-after")
                        .and_then(|v| parse_retry_after(v, unix_now()));
                (policy.retry_on.status(answer.head.status), retry_after)
            }
            Err(e) => (is_retriable(e, policy), None),
        };
        if retriable {
            let delay = policy.delay(attempt, retry_after, &mut worker.rng.borrow_mut());
            let now = timers.now();
            let next = now.saturating_add(duration_nanos(delay));
            if policy.may_retry(attempt, ctl.created.get(), next) {
                metrics.retry(endpoint_slot);
                if ctl.deferred.get() {
                    crate::log::event(
                        Target::Jobs,
                        Level::Info,
                        format_args!(
                            "job {}: retry {} scheduled in {} ms",
                            ctl.id.get().as_string(),
                            attempt + 1,
                            delay.as_millis()
                        ),
                    );
                }
                // Close the failed attempt's connection (its body is not wanted).
                drop(result);
                ctl.status.set(JobStatus::Retrying);
                ctl.next_attempt.set(Some(next));
                ctl.publish(worker);
                ctl.record_progress(worker);
                if ctl.client_waiting.get() && next > ctl.deadline.get() {
                    ctl.defer_now.set(true);
                }
                timers.sleep_until(next).await;
                continue;
            }
        }
        // Terminal: later identical requests start a job of their own.
        forget_key(worker, key, ctl);
        return match result {
            Ok(answer) if !ctl.must_store() => Driven::Direct(answer),
            Ok(answer) => match collect_response(worker, &routes, answer, ctl.method.get()).await {
                Ok(stored) => Driven::Stored(stored),
                Err(e) => Driven::Stored(stored_error(&e)),
            },
            Err(e) => Driven::Stored(stored_error(&e)),
        };
    }
}

/// How an attempt ended, for `sluice_upstream_attempts_total`.
fn attempt_result(result: &Result<Answer, ProxyError>) -> crate::metrics::Attempt {
    use crate::metrics::Attempt;
    match result {
        Ok(answer) => Attempt::Status(answer.head.status),
        Err(ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout) => Attempt::Timeout,
        Err(ProxyError::UpstreamConnect(_) | ProxyError::UpstreamTls(_)) => Attempt::ConnectError,
        Err(ProxyError::UpstreamMalformed(_)) => Attempt::BadResponse,
        Err(_) => Attempt::IoError,
    }
}

/// The job lifecycle line of an attempt: at info for a job that was promised (202 or
/// resumed), at debug for one whose client still waits (the access log covers those).
fn log_attempt(ctl: &JobCell, attempt: u32, result: &Result<Answer, ProxyError>, took: Duration) {
    let id = ctl.id.get();
    let args = |outcome: &dyn std::fmt::Display| {
        format!(
            "job {}: attempt {attempt}: {outcome} in {} ms",
            id.as_string(),
            took.as_millis()
        )
    };
    let line = match result {
        Ok(answer) => args(&format_args!("status {}", answer.head.status)),
        Err(e) => args(e),
    };
    let level = if ctl.deferred.get() {
        Level::Info
    } else {
        Level::Debug
    };
    crate::log::event(Target::Jobs, level, format_args!("{line}"));
}

/// Whether a transport failure may be retried under the operator's `--retry-on`.
fn is_retriable(e: &ProxyError, policy: &crate::jobs::backoff::RetryPolicy) -> bool {
    match e {
        ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => {
            policy.retry_on.timeout()
        }
        ProxyError::UpstreamConnect(_) | ProxyError::UpstreamIo(_) | ProxyError::UpstreamClosed => {
            policy.retry_on.connect_error()
        }
        _ => false,
    }
}

/// Waits until the job is stored (when there is a store), then writes the 202. A job the store
/// refused is not promised: the client gets a 503 (the job still runs, in memory).
async fn answer_accepted_durably(
    conn: &mut ClientConn,
    record: &JobRecord,
    keep_alive: bool,
    durable: Option<crate::store::Durable>,
) -> Next {
    if let Some(durable) = durable {
        if let Err(e) = durable.await {
            crate::log::error(format_args!(
                "job {} not stored, no 202 given: {e}",
                record.id.as_string()
            ));
            return crate::proxy::reply_error(
                conn,
                503,
                "store_unavailable",
                "the job could not be stored, so it is not promised; retry later",
                keep_alive,
            )
            .await;
        }
    }
    answer_accepted(conn, record, keep_alive).await
}

/// Writes `202 Accepted` with the job's `Location` and status document.
async fn answer_accepted(conn: &mut ClientConn, record: &JobRecord, keep_alive: bool) -> Next {
    use crate::http::writer::write_usize;
    let id = record.id.to_hex();
    let mut body: smallvec::SmallVec<[u8; 160]> = smallvec::SmallVec::new();
    body.extend_from_slice(b"{\"id\":\"");
    body.extend_from_slice(&id);
    body.extend_from_slice(b"\",\"status\":\"pending\",\"status_url\":\"/_sluice/jobs/");
    body.extend_from_slice(&id);
    body.extend_from_slice(b"\"}\n");
    conn.out.clear();
    conn.out.extend_from_slice(
        b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nLocation: /_sluice/jobs/",
    );
    conn.out.extend_from_slice(&id);
    conn.out.extend_from_slice(b"\r\nContent-Length: ");
    write_usize(&mut conn.out, body.len());
    if !keep_alive {
        conn.out.extend_from_slice(b"\r\nConnection: close");
    }
    conn.out.extend_from_slice(b"\r\n\r\n");
    conn.out.extend_from_slice(&body);
    let sent = if conn.head_request { 0 } else { body.len() };
    conn.trace.answered(202, sent as u64);
    conn.trace.job = Some(record.id);
    match conn.send_out().await {
        Ok(()) if keep_alive => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// How the race between the driver, the deadline and the client ended.
enum RaceEnd<O> {
    /// The driver finished first.
    Driven(O),
    /// The client must get its 202 now (deadline reached, or the answer cannot be in time).
    Defer,
    /// The client closed its connection while the job waited for a rate-limit slot.
    ClientGone,
}

/// Polls the driver first, then the defer flag, the client (only while the job waits for a
/// rate-limit slot: that is when a disconnect can still cancel it), then the deadline. The
/// driver is not consumed: after `Defer` or `ClientGone` it is awaited again.
struct Race<'a, D, T> {
    driver: Pin<&'a mut D>,
    deadline: Pin<&'a mut T>,
    cell: &'a JobCell,
    client: Option<&'a monoio::net::TcpStream>,
    watch: Option<Pin<Box<dyn Future<Output = ()> + 'a>>>,
}

impl<D: Future, T: Future> Future for Race<'_, D, T> {
    type Output = RaceEnd<D::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.driver.as_mut().poll(cx) {
            return Poll::Ready(RaceEnd::Driven(v));
        }
        if self.cell.defer_now.get() {
            return Poll::Ready(RaceEnd::Defer);
        }
        match self.client {
            Some(stream) if self.cell.waiting_for_slot.get() => {
                // Armed only on this slow path: the direct path pays nothing for it.
                let watch = self
                    .watch
                    .get_or_insert_with(|| Box::pin(client_gone(stream)));
                if watch.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(RaceEnd::ClientGone);
                }
            }
            _ => self.watch = None,
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RaceEnd::Defer);
        }
        Poll::Pending
    }
}

/// Resolves when the client closed its connection (end of stream or error). Pipelined bytes
/// are left in the socket; if any arrive, the client is evidently still there and this never
/// resolves.
async fn client_gone(stream: &monoio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        // SAFETY: `byte` is a valid, writable 1-byte buffer for the duration of the call, and
        // the descriptor belongs to `stream`, which outlives this borrow. MSG_PEEK leaves the
        // byte in the socket; MSG_DONTWAIT keeps the call from blocking the I/O thread.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return,
            n if n > 0 => return std::future::pending().await,
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::WouldBlock
                    && err.kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
            }
        }
    }
}

/// Nanoseconds on the worker clock as a `Duration`.
fn nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_held_by_a_write_stay_unchanged_while_the_job_refills_its_own() {
        let cell = JobCell::new(0, 0);
        cell.request_mut()
            .extend_from_slice(b"GET /a HTTP/1.1\r\n\r\n");
        // An attempt's write in flight holds a clone (what `send_attempt` hands the kernel).
        let in_flight = Rc::clone(&cell.request.borrow());
        assert!(
            Rc::ptr_eq(&in_flight, &cell.request.borrow()),
            "shared, not copied"
        );
        // The job is reset and refilled meanwhile (a dropped attempt, the cell reused).
        cell.request_mut().clear();
        cell.request_mut()
            .extend_from_slice(b"GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(&in_flight[..], b"GET /a HTTP/1.1\r\n\r\n");
        assert_eq!(&cell.request.borrow()[..], b"GET /b HTTP/1.1\r\n\r\n");
        // Once the write let go, the cell changes its buffer in place (no new allocation).
        drop(in_flight);
        let before = Rc::as_ptr(&cell.request.borrow());
        cell.request_mut().push(b'!');
        assert_eq!(Rc::as_ptr(&cell.request.borrow()), before);
        assert_eq!(&cell.request.borrow()[..], b"GET /b HTTP/1.1\r\n\r\n!");
    }
}
