//! The `sluice-store` thread, which owns the redb database, and the queue through which every
//! other thread hands it ops ([`StoreHandle`]).
//!
//! Group commit: the thread takes everything queued (up to [`MAX_BATCH_OPS`]), applies it in one
//! write transaction, commits it (one `fsync`), and only then acknowledges the batch's durable
//! waiters. While it commits, new ops queue up and form the next batch, so the number of commits
//! follows the disk's speed, not the number of ops; no timer or artificial delay is involved.
//!
//! The queue lock is held only to push or take entries and to update counts, never across I/O,
//! so a submitting I/O thread never waits for the disk. A [`Durable`] is woken from this thread
//! through its stored `Waker` (monoio's `sync` feature makes cross-thread wakes work).

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};

use redb::Database;

use super::tables::{ApplyError, Tables};
use super::{Op, StoreError};

/// Most ops in one transaction. A backlog larger than this (a long burst while the disk
/// stalled) is committed in several transactions so that the first waiters are acknowledged
/// without waiting for the whole backlog to be written.
pub const MAX_BATCH_OPS: usize = 4096;

/// The thread's name, as `ps -T` and panics show it.
const THREAD_NAME: &str = "sluice-store";

/// Counters, for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Successful commits (each one `fsync`).
    pub commits: u64,
    /// Ops applied in successful commits.
    pub ops_applied: u64,
    /// Ops skipped by their own fault ([`StoreError::Op`]); their batches were committed.
    pub op_errors: u64,
    /// Failed commits ([`StoreError::Commit`]); their ops were not stored.
    pub commit_errors: u64,
    /// Jobs deleted by sweeps.
    pub jobs_swept: u64,
    /// Ops submitted and not yet committed (or failed).
    pub queued: u64,
}

/// Submits ops to the store thread. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when entries are queued or the store is stopping.
    work: Condvar,
    /// Signalled when a batch is settled (committed or failed).
    settled: Condvar,
    commits: AtomicU64,
    ops_applied: AtomicU64,
    op_errors: AtomicU64,
    commit_errors: AtomicU64,
    jobs_swept: AtomicU64,
}

struct Queue {
    entries: VecDeque<Entry>,
    /// Ops submitted so far; the writer settles them in this order.
    submitted: u64,
    /// Ops settled so far (committed, skipped, or lost with a failed commit).
    settled: u64,
    /// Failed commits so far, and the last one's message, for `flush`.
    failures: u64,
    last_failure: Option<String>,
    /// No more ops are accepted; the thread exits once the queue is empty.
    stopping: bool,
}

struct Entry {
    op: Op,
    ack: Option<Arc<Slot>>,
}

/// Where the writer leaves a durable op's outcome for its [`Durable`].
struct Slot {
    state: Mutex<SlotState>,
}

struct SlotState {
    result: Option<Result<(), StoreError>>,
    waker: Option<Waker>,
}

impl Slot {
    fn new(result: Option<Result<(), StoreError>>) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                result,
                waker: None,
            }),
        })
    }

    fn resolve(&self, result: Result<(), StoreError>) {
        let waker = {
            let mut state = lock(&self.state);
            state.result = Some(result);
            state.waker.take()
        };
        // Woken outside the lock: the woken task may poll at once, on another thread.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves once the op it was returned for is committed (`Ok`) or known not to be stored
/// (`Err`). Dropping it does not withdraw the op.
#[must_use = "a durable op is only known to be on disk once this resolves"]
pub struct Durable {
    slot: Arc<Slot>,
}

impl Durable {
    /// The outcome if already known (for callers that have waited otherwise, e.g. `flush`).
    pub(super) fn result_now(&self) -> Option<Result<(), StoreError>> {
        lock(&self.slot.state).result.clone()
    }
}

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.slot.state);
        match &state.result {
            // Cloned, not taken: polling again after completion gives the same answer.
            Some(result) => Poll::Ready(result.clone()),
            None => {
                match &mut state.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

/// Locks, ignoring poisoning: every critical section here leaves the data consistent (pushes,
/// pops and counter updates), so a panic elsewhere while holding it leaves nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreHandle {
    /// Queues `op` to be committed with the next batch, without waiting for it.
    pub fn submit(&self, op: Op) -> Result<(), StoreError> {
        self.push(op, None)
    }

    /// Queues `op`; the returned future resolves once the commit holding it is on disk.
    pub fn submit_durable(&self, op: Op) -> Durable {
        let slot = Slot::new(None);
        if let Err(e) = self.push(op, Some(slot.clone())) {
            slot.resolve(Err(e));
        }
        Durable { slot }
    }

    fn push(&self, op: Op, ack: Option<Arc<Slot>>) -> Result<(), StoreError> {
        let mut q = lock(&self.shared.queue);
        if q.stopping {
            return Err(StoreError::Closed);
        }
        q.entries.push_back(Entry { op, ack });
        q.submitted += 1;
        // Only the writer waits on `work`; waking it when it is busy costs nothing.
        self.shared.work.notify_one();
        Ok(())
    }

    /// Blocks until every op submitted before the call is settled. `Err` if a commit failed
    /// meanwhile (its ops are lost; the error says why). Not for I/O threads: it waits for the
    /// disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut q = lock(&self.shared.queue);
        let target = q.submitted;
        let failures = q.failures;
        while q.settled < target {
            q = self
                .shared
                .settled
                .wait(q)
                .unwrap_or_else(|p| p.into_inner());
        }
        if q.failures != failures {
            let why = q.last_failure.clone().unwrap_or_default();
            return Err(StoreError::Commit(why));
        }
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        let queued = {
            let q = lock(&self.shared.queue);
            q.submitted - q.settled
        };
        let s = &self.shared;
        StoreStats {
            commits: s.commits.load(Ordering::Relaxed),
            ops_applied: s.ops_applied.load(Ordering::Relaxed),
            op_errors: s.op_errors.load(Ordering::Relaxed),
            commit_errors: s.commit_errors.load(Ordering::Relaxed),
            jobs_swept: s.jobs_swept.load(Ordering::Relaxed),
            queued,
        }
    }

    /// Refuses further ops and lets the thread exit once the queue is empty.
    pub(super) fn stop(&self) {
        lock(&self.shared.queue).stopping = true;
        self.shared.work.notify_one();
    }
}

/// Starts the writer thread on an open database.
pub(super) fn spawn(
    db: Database,
    path: PathBuf,
) -> std::io::Result<(StoreHandle, JoinHandle<Result<(), String>>)> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            entries: VecDeque::new(),
            submitted: 0,
            settled: 0,
            failures: 0,
            last_failure: None,
            stopping: false,
        }),
        work: Condvar::new(),
        settled: Condvar::new(),
        commits: AtomicU64::new(0),
        ops_applied: AtomicU64::new(0),
        op_errors: AtomicU64::new(0),
        commit_errors: AtomicU64::new(0),
        jobs_swept: AtomicU64::new(0),
    });
    let thread_shared = shared.clone();
    let thread = thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || run(db, &thread_shared, &path))?;
    Ok((StoreHandle { shared }, thread))
}

/// On the way out of the thread, however it leaves (a panic included): refuse new ops and fail
/// whatever is still queued, so that no waiter hangs on a thread that is gone.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let orphans: Vec<Entry> = {
            let mut q = lock(&self.0.queue);
            q.stopping = true;
            q.settled = q.submitted;
            q.entries.drain(..).collect()
        };
        for entry in orphans {
            if let Some(ack) = entry.ack {
                ack.resolve(Err(StoreError::Closed));
            }
        }
        self.0.settled.notify_all();
    }
}

fn run(db: Database, shared: &Shared, path: &std::path::Path) -> Result<(), String> {
    let _guard = ExitGuard(shared);
    // The marker is in the file (set by the last committed op); cleared by the next other op.
    let mut marked_clean = false;
    loop {
        let batch: Vec<Entry> = {
            let mut q = lock(&shared.queue);
            while q.entries.is_empty() && !q.stopping {
                q = shared.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.entries.is_empty() {
                break;
            }
            let n = q.entries.len().min(MAX_BATCH_OPS);
            q.entries.drain(..n).collect()
        };
        commit_batch(&db, shared, path, batch, &mut marked_clean);
    }
    db.close()
        .map_err(|e| format!("store {}: close failed: {e}", path.display()))
}

/// Applies `batch` in one transaction, commits, acknowledges, and settles it.
fn commit_batch(
    db: &Database,
    shared: &Shared,
    path: &std::path::Path,
    batch: Vec<Entry>,
    marked_clean: &mut bool,
) {
    let n = batch.len() as u64;
    let mut acks = Vec::with_capacity(batch.len());
    let mut ops = Vec::with_capacity(batch.len());
    for entry in batch {
        ops.push(entry.op);
        acks.push(entry.ack);
    }
    let mut clean = *marked_clean;
    let mut swept = 0;
    let outcome = (|| -> Result<Vec<Result<(), StoreError>>, String> {
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        let mut results = Vec::with_capacity(ops.len());
        {
            let mut tables = Tables::open(&txn).map_err(|e| e.to_string())?;
            for op in ops {
                let marker = matches!(op, Op::MarkCleanShutdown);
                if clean && !marker {
                    tables.set_clean(false).map_err(|e| e.to_string())?;
                    clean = false;
                }
                match tables.apply(op) {
                    Ok(applied) => {
                        swept += applied.swept;
                        clean |= marker;
                        results.push(Ok(()));
                    }
                    Err(ApplyError::Skipped(why)) => {
                        crate::log::event(
                            crate::log::Target::Store,
                            crate::log::Level::Warn,
                            format_args!("store {}: {why}", path.display()),
                        );
                        results.push(Err(StoreError::Op(why)));
                    }
                    // Dropping the transaction aborts it.
                    Err(ApplyError::Storage(e)) => return Err(e.to_string()),
                }
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(results)
    })();

    // The batch counts as settled before any of its acks resolve: whoever sees an ack also sees
    // the queue without it (`stats().queued`).
    {
        let mut q = lock(&shared.queue);
        q.settled += n;
        if let Err(why) = &outcome {
            q.failures += 1;
            q.last_failure = Some(why.clone());
        }
    }
    match outcome {
        Ok(results) => {
            *marked_clean = clean;
            let skipped = results.iter().filter(|r| r.is_err()).count() as u64;
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.ops_applied.fetch_add(n - skipped, Ordering::Relaxed);
            shared.op_errors.fetch_add(skipped, Ordering::Relaxed);
            shared.jobs_swept.fetch_add(swept, Ordering::Relaxed);
            for (ack, result) in acks.into_iter().zip(results) {
                if let Some(ack) = ack {
                    ack.resolve(result);
                }
            }
        }
        Err(why) => {
            crate::log::event(
                crate::log::Target::Store,
                crate::log::Level::Error,
                format_args!(
                    "store {}: commit of {n} ops failed, they are not stored: {why}",
                    path.display()
                ),
            );
            shared.commit_errors.fetch_add(1, Ordering::Relaxed);
            for ack in acks.into_iter().flatten() {
                ack.resolve(Err(StoreError::Commit(why.clone())));
            }
        }
    }
    shared.settled.notify_all();
}
