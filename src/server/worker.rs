//! Per-core state: everything one worker thread's tasks share, without locks.
//!
//! A [`Worker`] lives in an `Rc` on its own thread (monoio tasks are `!Send`): the read-only
//! [`Shared`] state of the process (start-up configuration, origin, the current route table
//! with the reloadable configuration, deferred-job registry: `Arc`s shared with the other
//! workers), and this
//! core's own parts: the upstream keep-alive pool, the timer service, the webhook sender, the
//! rate-limit wait queues, a random generator for retry jitter, and pools of reusable buffers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;

use crate::config::Config;
use crate::jobs::backoff::Rng;
use crate::jobs::crosscore::OpenKeys;
use crate::jobs::registry::{JobId, JobRecord, JobStatus, Registry, StoredResponse};
use crate::jobs::run::{DedupKey, JobCell};
use crate::jobs::slots::SlotQueues;
use crate::routing::Routes;
use crate::timer::Timers;
use crate::upstream::pool::Pool;
use crate::upstream::Upstream;
use crate::webhook::{CallbackUrl, Delivery, JobOutcome, ReportHook, Sender};

/// Initial capacity of a client connection's read buffer. Typical request heads are well under
/// 1 KiB; 8 KiB takes a head and a small body (an API call's few KiB of JSON) in one read (at
/// 4 KiB, a 4 KiB POST needed a second read: 5 ring operations per request instead of 4,
/// measured). The buffer grows (up to `--max-head-bytes` for heads) only when needed, and a
/// parked idle connection holds none (nginx's `client_body_buffer_size` is 8-16 KiB too).
pub const CLIENT_READ_BUF_BYTES: usize = 8 * 1024;
/// Client read buffers kept for reuse per worker; beyond this, returned buffers are freed.
pub const MAX_POOLED_CLIENT_BUFS: usize = 1024;
/// Initial capacity of a client connection's output buffer: the head and body of a small
/// answer fit; it grows (to about one streamed piece of a larger body) only when needed.
pub const CLIENT_OUT_BUF_BYTES: usize = 1024;
/// Client output buffers kept for reuse per worker.
pub const MAX_POOLED_CLIENT_OUT_BUFS: usize = 256;
/// An output buffer that grew beyond this (a large stored answer written whole) is freed
/// rather than kept.
pub const MAX_POOLED_CLIENT_OUT_BUF_BYTES: usize = 64 * 1024;
/// Request buffers (upstream request bytes of open jobs) kept for reuse per worker.
pub const MAX_POOLED_REQUEST_BUFS: usize = 256;
/// Initial capacity of a new request buffer. A typical upstream request head (request line, a
/// dozen headers, the token, `X-Forwarded-For`, `Idempotency-Key`) fits, so growing the pool
/// costs one allocation per buffer instead of a series of reallocations as it fills.
pub const REQUEST_BUF_BYTES: usize = 1024;
/// A request buffer that grew beyond this (a large body) is freed rather than kept.
pub const MAX_POOLED_REQUEST_BUF_BYTES: usize = 64 * 1024;
/// Job cells kept for reuse per worker.
pub const MAX_POOLED_JOB_CELLS: usize = 1024;
/// Resolution of the per-core timer wheel (deadlines, retry schedules).
pub const TIMER_TICK: Duration = Duration::from_millis(1);

/// The current route table (allowlist, endpoint settings, limiters) and its generation. The
/// main thread replaces it on a reload; a worker compares the generation before each request
/// (one atomic load of a line that is almost never written) and takes the new table when it
/// moved. The lock is taken only then, once per worker and reload.
pub struct RoutesSlot {
    generation: AtomicU64,
    current: Mutex<Arc<Routes>>,
}

impl RoutesSlot {
    pub fn new(routes: Routes) -> RoutesSlot {
        RoutesSlot {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(routes)),
        }
    }

    /// The current table.
    pub fn current(&self) -> Arc<Routes> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `routes` the table of new requests on every worker.
    pub fn replace(&self, routes: Arc<Routes>) {
        let mut g = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = routes;
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// State shared by all workers (read-only or internally synchronised).
pub struct Shared {
    /// The configuration the process started with: only for what a reload cannot change
    /// (listen address, workers, origin, data dir). Everything else is read from the current
    /// route table (`routes`), which a reload replaces.
    pub start_config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    /// The route table new requests use (replaced by a reload).
    pub routes: Arc<RoutesSlot>,
    pub registry: Arc<Registry>,
    /// Called after every delivery attempt, on the worker that made it: records the outcome on
    /// the job.
    pub webhook_report: ReportHook,
    /// Open jobs across all workers (for `--max-inflight`).
    pub open_jobs: Arc<AtomicUsize>,
    /// Open dedup keys across workers and the workers' mailboxes (cross-core dedup).
    pub open_keys: Arc<OpenKeys>,
    /// The job store (`None` with `--no-persist`).
    pub store: Option<crate::store::StoreHandle>,
    /// Per worker: what it picks up from the previous run at start.
    pub recovered: Vec<std::sync::Mutex<super::Recovery>>,
    /// Set by SIGTERM/SIGINT: every worker drains (see `server::shutdown`).
    pub shutdown: Arc<super::shutdown::ShutdownSignal>,
    /// Where each worker reports that it drained.
    pub drained: std::sync::Mutex<std::sync::mpsc::Sender<usize>>,
    /// The process clock's zero: worker clocks count nanoseconds from here.
    pub epoch: Instant,
    /// Wall-clock time at `epoch`, to show times in job status documents.
    pub epoch_wall: SystemTime,
    /// Every worker's counters (each worker writes its own shard).
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub struct Worker {
    pub id: usize,
    /// This core's metric counters.
    pub metrics: Rc<crate::metrics::Shard>,
    pub upstream: Arc<Upstream>,
    routes_slot: Arc<RoutesSlot>,
    /// This core's copy of the current route table (an `Rc`, so a job takes it without
    /// touching a shared cache line) and the generation it is from.
    routes: RefCell<Rc<crate::routing::CoreRoutes>>,
    routes_generation: Cell<u64>,
    pub registry: Arc<Registry>,
    /// This core's webhook sender: deliveries of jobs that ended here run as tasks on this
    /// core; `webhooks.shutdown(grace)` hands back the undelivered ones.
    pub webhooks: Sender,
    pub open_jobs: Arc<AtomicUsize>,
    pub open_keys: Arc<OpenKeys>,
    pub store: Option<crate::store::StoreHandle>,
    pub shutdown: Arc<super::shutdown::ShutdownSignal>,
    /// This worker's drain state (connections open, draining, halted).
    pub drain: Rc<super::shutdown::Drain>,
    pub pool: RefCell<Pool>,
    pub timers: Rc<Timers>,
    pub slots: SlotQueues,
    pub rng: RefCell<Rng>,
    /// Open jobs of this core by dedup key (see `jobs::run::attach`; other cores find them
    /// through `open_keys`).
    pub dedup: RefCell<HashMap<DedupKey, Rc<JobCell>>>,
    /// Job cells kept for reuse, so the direct path allocates none per request.
    job_cells: RefCell<Vec<Rc<JobCell>>>,
    /// Ids for new jobs.
    pub ids: RefCell<IdPool>,
    /// Connections parked since the allocator was last asked to hand memory back (see
    /// `server::release_memory`).
    pub parks: Cell<u64>,
    epoch_wall: SystemTime,
    bufs: RefCell<Vec<BytesMut>>,
    out_bufs: RefCell<Vec<Vec<u8>>>,
    /// Idle-read cancellers of ended connections (see `proxy::idle_read`), kept so that a new
    /// connection allocates none.
    cancellers: RefCell<Vec<monoio::io::Canceller>>,
    request_bufs: RefCell<Vec<Vec<u8>>>,
}

impl Worker {
    pub fn new(id: usize, shared: &Shared) -> Worker {
        let routes = shared.routes.current();
        let config = &routes.config;
        let pool = Pool::new(config.upstream_max_idle, config.timeouts.upstream_idle);
        // Jitter only needs to differ between workers and runs, not to be secret.
        let seed = shared
            .epoch
            .elapsed()
            .as_nanos()
            .wrapping_add(id as u128 * 0x9E37_79B9_7F4A_7C15) as u64
            | 1;
        let timers = Timers::new(shared.epoch, TIMER_TICK);
        let metrics = Rc::new(shared.metrics.shard(id));
        let webhooks = Sender::new(
            routes.webhook.clone(),
            timers.clone(),
            shared.webhook_report.clone(),
            metrics.clone(),
        );
        Worker {
            id,
            metrics,
            upstream: shared.upstream.clone(),
            routes_generation: Cell::new(shared.routes.generation()),
            routes: RefCell::new(Rc::new(crate::routing::CoreRoutes(routes.clone()))),
            routes_slot: shared.routes.clone(),
            registry: shared.registry.clone(),
            webhooks,
            open_jobs: shared.open_jobs.clone(),
            open_keys: shared.open_keys.clone(),
            store: shared.store.clone(),
            shutdown: shared.shutdown.clone(),
            drain: Rc::new(super::shutdown::Drain::default()),
            pool: RefCell::new(pool),
            timers,
            slots: SlotQueues::new(0),
            rng: RefCell::new(Rng::new(seed)),
            dedup: RefCell::new(HashMap::new()),
            job_cells: RefCell::new(Vec::new()),
            ids: RefCell::new(IdPool::new()),
            parks: Cell::new(0),
            epoch_wall: shared.epoch_wall,
            bufs: RefCell::new(Vec::new()),
            out_bufs: RefCell::new(Vec::new()),
            cancellers: RefCell::new(Vec::new()),
            request_bufs: RefCell::new(Vec::new()),
        }
    }

    /// The route table (and reloadable configuration) for a new request: this core's copy,
    /// refreshed first when a reload replaced the shared one. A refresh also hands the new
    /// settings to this core's upstream pool and webhook sender.
    pub fn routes(&self) -> Rc<crate::routing::CoreRoutes> {
        let generation = self.routes_slot.generation();
        if generation != self.routes_generation.get() {
            let routes = self.routes_slot.current();
            let config = &routes.config;
            self.pool
                .borrow_mut()
                .set_limits(config.upstream_max_idle, config.timeouts.upstream_idle);
            self.webhooks.set_config(routes.webhook.clone());
            *self.routes.borrow_mut() = Rc::new(crate::routing::CoreRoutes(routes));
            self.routes_generation.set(generation);
        }
        self.routes.borrow().clone()
    }

    /// Counts a new open job, or refuses it when `cap` (`--max-inflight`) jobs are open already.
    /// The slot is released when the returned guard drops (the job reached a terminal state).
    pub fn open_job(&self, cap: usize) -> Option<OpenJob> {
        let before = self.open_jobs.fetch_add(1, Ordering::AcqRel);
        if before >= cap {
            self.open_jobs.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenJob {
            count: self.open_jobs.clone(),
        })
    }

    /// Counts a job resumed from the store: it was promised before, so it is never refused,
    /// even above the cap (new requests wait until the count is under it again).
    pub fn open_job_forced(&self) -> OpenJob {
        self.open_jobs.fetch_add(1, Ordering::AcqRel);
        OpenJob {
            count: self.open_jobs.clone(),
        }
    }

    /// Wall-clock time of a worker-clock instant (nanoseconds since the epoch).
    pub fn system_time_at(&self, nanos: u64) -> SystemTime {
        self.epoch_wall + Duration::from_nanos(nanos)
    }

    /// A read buffer for a new client connection, reused when one is free.
    pub fn take_buf(&self) -> BytesMut {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(CLIENT_READ_BUF_BYTES))
    }

    /// Gives a client read buffer back when its connection ends.
    pub fn give_buf(&self, mut buf: BytesMut) {
        buf.clear();
        // Each request head was split off the front of the buffer (and frozen): take the whole
        // allocation back, which copies nothing once no head refers to it any more. A buffer
        // that cannot offer the standard size without allocating is not worth keeping.
        if !buf.try_reclaim(CLIENT_READ_BUF_BYTES) {
            return;
        }
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_POOLED_CLIENT_BUFS {
            bufs.push(buf);
        }
    }

    /// A canceller for a new client connection's idle reads, reused when one is free.
    pub fn take_canceller(&self) -> monoio::io::Canceller {
        self.cancellers.borrow_mut().pop().unwrap_or_default()
    }

    /// Gives a connection's canceller back when the connection ends. One that cancelled is
    /// never given back (cancelling replaces it), so every pooled one is fresh.
    pub fn give_canceller(&self, canceller: monoio::io::Canceller) {
        let mut cancellers = self.cancellers.borrow_mut();
        if cancellers.len() < MAX_POOLED_CLIENT_BUFS {
            cancellers.push(canceller);
        }
    }

    /// An output buffer for a new client connection, reused when one is free (so that a
    /// client sending one request per connection does not grow a fresh one every time).
    pub fn take_out_buf(&self) -> Vec<u8> {
        self.out_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CLIENT_OUT_BUF_BYTES))
    }

    /// Gives a client output buffer back when its connection ends.
    pub fn give_out_buf(&self, mut buf: Vec<u8>) {
        if buf.capacity() < CLIENT_OUT_BUF_BYTES || buf.capacity() > MAX_POOLED_CLIENT_OUT_BUF_BYTES
        {
            return;
        }
        buf.clear();
        let mut bufs = self.out_bufs.borrow_mut();
        if bufs.len() < MAX_POOLED_CLIENT_OUT_BUFS {
            bufs.push(buf);
        }
    }

    /// A job cell for a new job: a pooled one when free.
    pub fn take_job_cell(&self, created: u64, deadline: u64) -> Rc<JobCell> {
        match self.job_cells.borrow_mut().pop() {
            Some(cell) => {
                cell.reset(created, deadline);
                cell
            }
            None => Rc::new(JobCell::new(created, deadline)),
        }
    }

    /// Returns a finished job's cell for reuse, unless someone (an attached duplicate) still
    /// holds it.
    pub fn give_job_cell(&self, cell: Rc<JobCell>) {
        // Two references: this one and the caller's guard, which drops right after.
        if Rc::strong_count(&cell) > 2 {
            return;
        }
        let mut cells = self.job_cells.borrow_mut();
        if cells.len() < MAX_POOLED_JOB_CELLS {
            cells.push(cell);
        }
    }

    /// A buffer for a job's upstream request bytes, reused when one is free.
    pub fn take_request_buf(&self) -> Vec<u8> {
        self.request_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(REQUEST_BUF_BYTES))
    }

    /// Returns a request buffer for reuse.
    pub fn give_request_buf(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_POOLED_REQUEST_BUF_BYTES {
            return;
        }
        buf.clear();
        let mut bufs = self.request_bufs.borrow_mut();
        if bufs.len() < MAX_POOLED_REQUEST_BUFS {
            bufs.push(buf);
        }
    }

    /// Hands a finished deferred job's callback to this core's webhook sender (never blocks).
    pub fn submit_callback(
        &self,
        record: &JobRecord,
        url: CallbackUrl,
        stored: &StoredResponse,
        status: JobStatus,
        attempts: u32,
        persisted: bool,
    ) {
        // The webhook settings of now: a reload may have happened since this core last took
        // a request (this refreshes them).
        drop(self.routes());
        let outcome = if status == JobStatus::Succeeded {
            JobOutcome::Succeeded
        } else {
            JobOutcome::Failed
        };
        let delivery = Delivery::new(
            record.id.as_string(),
            url,
            stored.body.clone(),
            stored.content_type.clone(),
            outcome,
            stored.from_upstream.then_some(stored.status),
            attempts,
            SystemTime::now(),
        );
        // Stored first: from here on a crash cannot lose the callback (its job row is there).
        if let Some(store) = self.store.as_ref().filter(|_| persisted) {
            let row = crate::jobs::persist::delivery_to_row(&delivery, record.id.0);
            let _ = store.submit(crate::store::Op::PutDelivery(row));
        }
        if let Err(closed) = self.webhooks.submit(delivery) {
            // Only after shutdown started; the stored delivery (if any) is sent after restart.
            crate::log::warn(format_args!(
                "callback of job {} not queued: the webhook sender is shut down",
                closed.0.job_id
            ));
        }
    }
}

/// Job ids for this core: 16 bytes each, cut from a block of OS randomness refilled once per
/// [`ID_BLOCK`] ids, so a new job costs no syscall. Ids must be unguessable: an id is all it
/// takes to read a job's result.
pub struct IdPool {
    block: [u8; ID_BLOCK * 16],
    next: usize,
}

/// Ids per refill of an [`IdPool`].
pub const ID_BLOCK: usize = 256;

impl IdPool {
    pub fn new() -> IdPool {
        IdPool {
            block: [0; ID_BLOCK * 16],
            next: ID_BLOCK,
        }
    }

    pub fn next_id(&mut self) -> JobId {
        if self.next >= ID_BLOCK {
            use ring::rand::SecureRandom;
            if ring::rand::SystemRandom::new()
                .fill(&mut self.block)
                .is_err()
            {
                // Never on Linux after boot; the registry's own generator has a fallback.
                return JobId::random();
            }
            self.next = 0;
        }
        let at = self.next * 16;
        self.next += 1;
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.block[at..at + 16]);
        JobId(id)
    }
}

impl Default for IdPool {
    fn default() -> Self {
        IdPool::new()
    }
}

/// One open job counted against `--max-inflight`; dropping it releases the slot.
pub struct OpenJob {
    count: Arc<AtomicUsize>,
}

impl Drop for OpenJob {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}
