//! The persistence store: deferred jobs, pending webhook deliveries and the limiters' recent send
//! history, kept in one redb file in the data dir so that they survive a restart (including
//! `kill -9`).
//!
//! - [`codec`]: the row types ([`JobRow`], [`DeliveryRow`], ...) and their strict, versioned
//!   binary encoding (sans-IO).
//! - `tables`: the tables in the file, applying an [`Op`] in a write transaction, and reading
//!   everything back at start-up ([`Recovered`]).
//! - `writer`: the `sluice-store` thread that owns the database, and [`StoreHandle`], through
//!   which any thread submits ops without blocking on I/O. The thread takes everything queued,
//!   applies it in one write transaction and commits it with one `fsync` (group commit), then
//!   acknowledges: a burst of thousands of `202`s shares a few `fsync`s instead of queueing on
//!   one each.
//!
//! Not here: which ops to submit when, and how rows map to the executor's types (the executor),
//! nor when to sweep or heartbeat (timers of the caller). Times are passed in, never read here.
//!
//! # Durability
//! [`StoreHandle::submit_durable`] returns a [`Durable`] future that resolves once the commit
//! holding the op is on disk (redb's `Durability::Immediate`: the commit `fsync`s). A job is
//! written this way before its `202`. Progress that can be replayed harmlessly (attempt counts,
//! heartbeats, send-history snapshots) may go through [`StoreHandle::submit`], batched with the
//! rest but not awaited.
//!
//! # Failures
//! [`Store::open`] refuses a file it cannot read completely: a damaged redb file (checked in
//! full at open), a row the codec rejects, a key that does not match its row, a layout version
//! it does not know, or a file another process holds. The error names the file (and the table
//! and key for a bad row); nothing is skipped or discarded. A commit that fails later is
//! reported to the durable waiters of its batch and logged; the thread carries on with the
//! next batch.

pub mod codec;
mod tables;
mod writer;

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use redb::{Builder, Database, DatabaseError};

pub use codec::{
    CallbackState, DecodeError, DeliveryRow, JobRow, JobStatus, Outcome, Record, ResultRow,
    SendsRow,
};
pub use writer::{Durable, StoreHandle, StoreStats};

/// The database file inside the data dir.
pub const DB_FILE: &str = "sluice.redb";

/// Mode of a data dir this module creates: owner only, since stored requests may carry
/// credentials and personal data.
const DIR_MODE: u32 = 0o700;
/// Mode of a database file this module creates (same reason).
const FILE_MODE: u32 = 0o600;
/// redb's page cache, bytes. Its default (1 GiB) is sized for a database that is read; this one
/// is written, read back once at start-up, and otherwise only read-modify-written row by row.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// One change to the store. Ops are applied in submission order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a job (boxed: a job row is far larger than every other op).
    PutJob(Box<JobRow>),
    /// An attempt was made or scheduled. `status` must be pending or retrying.
    JobProgress {
        id: [u8; 16],
        attempts: u32,
        next_attempt_at_ms: Option<u64>,
        status: JobStatus,
        last_upstream_status: Option<u16>,
    },
    /// The job reached its final status (succeeded or failed). Its stored request is dropped:
    /// it is never sent again.
    JobFinished {
        id: [u8; 16],
        status: JobStatus,
        attempts: u32,
        last_upstream_status: Option<u16>,
        finished_at_ms: u64,
        result: Option<ResultRow>,
    },
    /// Insert or replace the delivery keyed by `(job_id, url)` (a new delivery, or its next
    /// attempt time after a failed attempt).
    PutDelivery(DeliveryRow),
    /// The delivery was acknowledged, or given up: it is deleted. `callback_state`, when given,
    /// becomes the job's callback state shown by `/_sluice/jobs/<id>`.
    DeliveryDone {
        job_id: [u8; 16],
        url: String,
        callback_state: Option<CallbackState>,
    },
    /// Replace a limiter's send history (unix nanoseconds); an empty list deletes it.
    SendHistory { limiter: String, sends_ns: Vec<u64> },
    /// The process was alive at `at_ms` (unix ms); after a crash, the last heartbeat bounds
    /// when it died.
    Heartbeat { at_ms: u64 },
    /// Delete finished jobs with `finished_at_ms < finished_before_ms`, except those with a
    /// delivery still stored (an unsettled callback keeps its job; the delivery's own give-up
    /// cap bounds how long). At most `MAX_SWEEP_VISITS` expired jobs are looked at per op; the
    /// rest wait for the next sweep.
    Sweep { finished_before_ms: u64 },
    /// Set the clean-shutdown marker. Any op committed after it clears it again, so it only
    /// stays set if nothing followed. [`Store::close`] submits it.
    MarkCleanShutdown,
}

/// Everything read back at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// All stored jobs, open and finished, in id order.
    pub jobs: Vec<JobRow>,
    /// All stored (unsettled) deliveries, in `(job_id, url)` order.
    pub deliveries: Vec<DeliveryRow>,
    /// Each limiter's last send-history snapshot, by name.
    pub sends: Vec<(String, Vec<u64>)>,
    /// The last [`Op::Heartbeat`] committed, if any.
    pub last_heartbeat_ms: Option<u64>,
    /// True when the previous run ended with [`Store::close`] (nothing committed after its
    /// marker); false after a crash, and on a new file.
    pub clean_shutdown: bool,
}

/// Why an op was not (or may not have been) stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The store was closed, or its thread ended, before the op was committed.
    Closed,
    /// The write transaction of the op's batch failed (I/O error, disk full, ...): nothing in
    /// the batch was stored.
    Commit(String),
    /// This op could not be applied (its job is missing, its stored row is unreadable, or it
    /// is inconsistent); the rest of its batch was committed.
    Op(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Closed => f.write_str("the store is closed"),
            StoreError::Commit(e) => write!(f, "store commit failed: {e}"),
            StoreError::Op(e) => write!(f, "store op not applied: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The open store: owns the writer thread. Dropping it without [`Store::close`] commits what is
/// queued but leaves no clean-shutdown marker, as a crash would.
pub struct Store {
    handle: StoreHandle,
    thread: Option<JoinHandle<Result<(), String>>>,
    path: PathBuf,
}

impl Store {
    /// Opens the store in `dir`, creating the dir (mode 0700) and the file [`DB_FILE`] (mode
    /// 0600) if missing, reads everything back, clears the clean-shutdown marker, and starts
    /// the writer thread. Any damage is an error naming the file; see the module docs.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), String> {
        // The dirs this call creates (dir and any missing ancestors), to sync their parents.
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(Path::to_path_buf)
            .collect();
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| format!("data dir {}: cannot be created: {e}", dir.display()))?;
        let path = dir.join(DB_FILE);
        // Created here, not by redb, to choose its mode; redb initialises an empty file.
        let new_file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
        {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(format!("store {}: cannot be created: {e}", path.display())),
        };
        // redb's commits fsync the file, not the directory entries that name it: without this,
        // a power loss soon after the first start could lose the whole (acknowledged) file.
        if new_file {
            sync_dir(dir)?;
        }
        for created in &created {
            match created.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
                // A relative dir of one component: its parent is the working directory.
                _ => sync_dir(Path::new("."))?,
            }
        }
        // redb may panic on a file damaged in ways its checks do not foresee (its debug builds
        // assert); that is a damaged store too, not a crash of sluice.
        let (db, recovered) = panic::catch_unwind(AssertUnwindSafe(|| open_db(&path)))
            .unwrap_or_else(|_| {
                Err(format!(
                    "store {}: damaged (reading it panicked; see above)",
                    path.display()
                ))
            })?;
        let (handle, thread) = writer::spawn(db, path.clone())
            .map_err(|e| format!("store {}: cannot start its thread: {e}", path.display()))?;
        Ok((
            Store {
                handle,
                thread: Some(thread),
                path,
            },
            recovered,
        ))
    }

    /// A handle for submitting ops from any thread.
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits everything queued, marks the clean shutdown, closes the file and joins the
    /// thread. Ops submitted through other handles after this starts are refused
    /// ([`StoreError::Closed`]).
    pub fn close(mut self) -> Result<(), StoreError> {
        let marker = self.handle.submit_durable(Op::MarkCleanShutdown);
        let flushed = self.handle.flush();
        let marked = marker.result_now().unwrap_or(Err(StoreError::Closed));
        let closed = self.stop();
        flushed.and(marked).and(closed)
    }

    /// Stops the thread after it has committed what is queued, and waits for it.
    fn stop(&mut self) -> Result<(), StoreError> {
        self.handle.stop();
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(StoreError::Commit(e)),
            Some(Err(_)) => Err(StoreError::Closed),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            crate::log::event(
                crate::log::Target::Store,
                crate::log::Level::Error,
                format_args!("store {}: {e}", self.path.display()),
            );
        }
    }
}

/// Makes the entries of directory `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("data dir {}: cannot be synced: {e}", dir.display()))
}

/// Opens the file, checks it in full, and reads it back in the start-up transaction.
fn open_db(path: &Path) -> Result<(Database, Recovered), String> {
    let file = path.display();
    let db = Builder::new()
        .set_cache_size(CACHE_BYTES)
        // A plain open trusts a cleanly closed file; the check verifies every page's checksum
        // so that damage is an error here rather than a misread or a panic later.
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => format!(
                "store {file}: in use by another process (another sluice with the same data dir?)"
            ),
            e => format!("store {file}: cannot be opened: {e}"),
        })?;
    let txn = db
        .begin_write()
        .map_err(|e| format!("store {file}: cannot be written: {e}"))?;
    let recovered = {
        let mut tables =
            tables::Tables::open(&txn).map_err(|e| format!("store {file}: cannot be read: {e}"))?;
        tables::recover(&mut tables, path)?
    };
    txn.commit()
        .map_err(|e| format!("store {file}: cannot be written: {e}"))?;
    Ok((db, recovered))
}
