//! The non-blocking writer: every log line goes through one logger thread, which alone writes
//! to stderr. No other thread ever blocks on stderr, and I/O worker threads allocate nothing
//! per line in steady state.
//!
//! # How a line travels
//! 1. The logging thread formats the line into its own thread-local buffer (a `Vec<u8>` that is
//!    reused; nothing is allocated unless it must grow).
//! 2. The buffer is *handed over* whole, as one batch of lines, on a bounded channel
//!    ([`QUEUE_BATCHES`]) to the logger thread. An I/O worker thread (registered with
//!    [`buffer_this_thread`]) hands over when its buffer passes [`HANDOVER_BYTES`], and at least
//!    every [`FLUSH_INTERVAL`] from a task of its own calling [`flush_thread`], so lines are
//!    late by at most that much even when traffic stops. Any other thread (main, the store
//!    writer, blocking pools: rare lines) hands over after every line.
//! 3. The logger thread writes each batch with one `write` and sends the emptied buffer back to
//!    the thread it came from (a small bounded channel per thread), which takes it as its next
//!    buffer: in steady state buffers go round, none is allocated. A worker thread starts with
//!    [`WORKER_SPARE_BUFFERS`] spares; when none has come back yet at a hand-over (the logger
//!    is behind), it keeps filling its buffer while there is room ([`LINE_ROOM_BYTES`]), and
//!    only then allocates one more (which joins the pool).
//!
//! Never blocking has a price: when the logger falls behind and the queue is full, a hand-over
//! drops the batch's lines and counts them ([`dropped_lines`], exported by the metrics) instead
//! of waiting. So does a failed write to stderr.
//!
//! At exit, [`flush`] (or dropping the [`LogGuard`] that [`start`] returns) asks every worker
//! thread to hand over what it holds, waits (bounded by [`FLUSH_WAIT`]) until each has, then
//! until the logger wrote everything queued before. Before [`start`] (and in unit tests, which
//! never start it) lines are written to stderr directly by the thread that logs them.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A worker thread hands its buffer over once it holds this many bytes (about a hundred
/// access-log lines): one channel send and one `write` per this much output.
pub const HANDOVER_BYTES: usize = 16 * 1024;
/// Longest time a line waits in a worker thread's buffer (each worker runs a task that hands
/// over at this interval; see `server::flush_log`).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Batches queued for the logger thread at most (with [`HANDOVER_BYTES`], about 4 MiB); beyond
/// it, hand-overs drop their lines instead of waiting.
pub const QUEUE_BATCHES: usize = 256;
/// Emptied buffers waiting to go back to each thread; more are freed.
const RETURNED_BUFFERS: usize = 8;
/// Spare buffers a worker thread starts with (beside the one it fills), so that a hand-over
/// finds a free buffer even while the logger still writes the last few: the logger may lag
/// this many batches before a worker has to allocate one more (which then stays in the pool).
const WORKER_SPARE_BUFFERS: usize = 3;
/// Capacity of a worker thread's buffers: a full batch, and as much again to keep filling while
/// the logger has not given a spare back yet (see [`LINE_ROOM_BYTES`]).
const WORKER_BUF_BYTES: usize = 2 * HANDOVER_BYTES;
/// A worker thread past [`HANDOVER_BYTES`] without a spare buffer keeps filling its buffer
/// while at least this much room is left (a typical line is well under it); then it allocates
/// one more buffer (which stays in the pool) rather than grow the full one.
const LINE_ROOM_BYTES: usize = 4 * 1024;
/// Initial capacity of any other thread's buffer (it holds one line at a time).
const OTHER_BUF_BYTES: usize = 512;
/// A buffer that grew beyond this (a very long line) is freed instead of going back.
const MAX_RECYCLED_BYTES: usize = 256 * 1024;
/// Longest wait of [`flush`]: for the workers to hand over, then for the logger to write. A
/// worker that is stuck (or a stderr nobody reads) must not hold the process exit for ever.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How often [`flush`] looks whether every worker has handed over.
const FLUSH_POLL: Duration = Duration::from_millis(2);

/// Lines dropped since start: the logger was behind (queue full), or writing failed.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The running logger thread's queue.
static LOGGER: OnceLock<SyncSender<Msg>> = OnceLock::new();
/// Incremented by each [`flush`]; a worker thread that handed over stores the value it saw.
static FLUSH_EPOCH: AtomicU64 = AtomicU64::new(0);
/// What each registered worker thread saw of [`FLUSH_EPOCH`] at its last hand-over
/// (`u64::MAX` once the thread ended). Locked only to register a thread and by [`flush`].
static BUFFERED: Mutex<Vec<Arc<AtomicU64>>> = Mutex::new(Vec::new());

/// Lines dropped since start because the logger fell behind or stderr failed (a process-wide
/// counter; the metrics export it).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn count_dropped(lines: u32) {
    DROPPED.fetch_add(u64::from(lines), Ordering::Relaxed);
}

enum Msg {
    /// Whole lines, and where to send the emptied buffer.
    Batch {
        buf: Vec<u8>,
        lines: u32,
        back: Option<SyncSender<Vec<u8>>>,
    },
    /// Everything queued before was written: acknowledge.
    Flush(SyncSender<()>),
}

/// Flushes the log when dropped (see [`flush`]); returned by [`start`], held by `main`.
#[must_use = "dropping the guard flushes the log at once"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Starts the logger thread, which writes every batch to `sink` (stderr in the binary; tests
/// may pass another writer). Lines logged before go to stderr directly. Errors (a second
/// start, no thread) are one line.
pub fn start(sink: Box<dyn Write + Send>) -> Result<LogGuard, String> {
    let (tx, rx) = sync_channel::<Msg>(QUEUE_BATCHES);
    if LOGGER.set(tx).is_err() {
        return Err("the logger is already running".to_string());
    }
    std::thread::Builder::new()
        .name("sluice-log".to_string())
        .spawn(move || run(rx, sink))
        .map_err(|e| format!("cannot start the logger thread: {e}"))?;
    Ok(LogGuard(()))
}

/// The logger thread: write each batch, return its buffer, acknowledge flushes.
fn run(rx: Receiver<Msg>, mut sink: Box<dyn Write + Send>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Batch {
                mut buf,
                lines,
                back,
            } => {
                if sink.write_all(&buf).is_err() {
                    count_dropped(lines);
                }
                buf.clear();
                if let Some(back) = back.filter(|_| buf.capacity() <= MAX_RECYCLED_BYTES) {
                    // A full or gone return channel frees the buffer.
                    let _ = back.try_send(buf);
                }
            }
            Msg::Flush(ack) => {
                let _ = sink.flush();
                let _ = ack.try_send(());
            }
        }
    }
}

/// Where the logger thread sends one thread's emptied buffers, and where that thread takes them.
type ReturnChannel = (SyncSender<Vec<u8>>, Receiver<Vec<u8>>);

/// One thread's buffer and its way back from the logger.
struct Local {
    buf: Vec<u8>,
    lines: u32,
    /// Set by [`buffer_this_thread`]: hand over by size and timer, not after every line.
    buffered: Option<Arc<AtomicU64>>,
    /// Emptied buffers come back on this channel (made on the first hand-over).
    back: Option<ReturnChannel>,
}

impl Local {
    const fn new() -> Local {
        Local {
            buf: Vec::new(),
            lines: 0,
            buffered: None,
            back: None,
        }
    }

    fn capacity(&self) -> usize {
        if self.buffered.is_some() {
            WORKER_BUF_BYTES
        } else {
            OTHER_BUF_BYTES
        }
    }

    /// Appends one line (`write` adds everything but the final newline).
    fn append(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.buf.capacity() == 0 {
            self.buf = self
                .back
                .as_ref()
                .and_then(|(_, spares)| spares.try_recv().ok())
                .unwrap_or_else(|| Vec::with_capacity(self.capacity()));
        }
        write(&mut self.buf);
        self.buf.push(b'\n');
        self.lines += 1;
        if self.buffered.is_none() {
            self.hand_over(true);
        } else if self.buf.len() >= HANDOVER_BYTES {
            // While the buffer has room, a worker waits for a spare rather than allocate one.
            let room = self.buf.capacity() - self.buf.len();
            self.hand_over(room < LINE_ROOM_BYTES);
        }
    }

    /// Sends the buffered lines to the logger thread and takes a spare buffer to go on with;
    /// never waits (a full queue drops the lines). Without a spare (the logger has not given
    /// one back yet), it keeps the lines unless `force`d, which allocates a new buffer.
    fn hand_over(&mut self, force: bool) {
        if self.buf.is_empty() {
            return;
        }
        let Some(logger) = LOGGER.get() else {
            // Not started: this thread writes itself (start-up, unit tests, benches).
            if std::io::stderr().write_all(&self.buf).is_err() {
                count_dropped(self.lines);
            }
            self.lines = 0;
            self.buf.clear();
            return;
        };
        let capacity = self.capacity();
        let (back, spares) = self
            .back
            .get_or_insert_with(|| sync_channel(RETURNED_BUFFERS));
        let spare = match spares.try_recv() {
            Ok(spare) => spare,
            Err(_) if !force => return,
            Err(_) => Vec::with_capacity(capacity),
        };
        let lines = std::mem::take(&mut self.lines);
        let buf = std::mem::replace(&mut self.buf, spare);
        let batch = Msg::Batch {
            buf,
            lines,
            back: Some(back.clone()),
        };
        if let Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) =
            logger.try_send(batch)
        {
            count_dropped(lines);
            if let Msg::Batch { mut buf, .. } = msg {
                // Go on with the old buffer; the spare goes back where it came from.
                buf.clear();
                let spare = std::mem::replace(&mut self.buf, buf);
                let _ = back.try_send(spare);
            }
        }
    }
}

impl Drop for Local {
    /// A thread that ends hands over what it still holds, and no flush waits for it any more.
    fn drop(&mut self) {
        self.hand_over(true);
        if let Some(seen) = &self.buffered {
            seen.store(u64::MAX, Ordering::Release);
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local::new()) };
}

/// Appends one line through this thread's buffer. `write` appends the line without its final
/// newline. A line that cannot be buffered (logging from inside a log call, or while the thread
/// ends) is counted as dropped.
pub(crate) fn write_line(write: impl FnOnce(&mut Vec<u8>)) {
    let written = LOCAL.try_with(|local| match local.try_borrow_mut() {
        Ok(mut local) => {
            local.append(write);
            true
        }
        Err(_) => false,
    });
    if written != Ok(true) {
        count_dropped(1);
    }
}

/// Marks the calling thread as an I/O worker: its lines are handed over by size
/// ([`HANDOVER_BYTES`]) and by its calls to [`flush_thread`], which it must make at least
/// every [`FLUSH_INTERVAL`]; [`flush`] waits for its next one. Its buffers are allocated here
/// (with [`WORKER_SPARE_BUFFERS`] spares), not while it serves.
pub fn buffer_this_thread() {
    let seen = Arc::new(AtomicU64::new(FLUSH_EPOCH.load(Ordering::Acquire)));
    BUFFERED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(seen.clone());
    let _ = LOCAL.try_with(|local| {
        if let Ok(mut local) = local.try_borrow_mut() {
            local.buffered = Some(seen);
            let (spares, _) = local
                .back
                .get_or_insert_with(|| sync_channel(RETURNED_BUFFERS));
            for _ in 0..WORKER_SPARE_BUFFERS {
                let _ = spares.try_send(Vec::with_capacity(WORKER_BUF_BYTES));
            }
        }
    });
}

/// Hands the calling thread's buffered lines to the logger (cheap when there are none): what a
/// worker's periodic task calls (see [`buffer_this_thread`]).
pub fn flush_thread() {
    let _ = LOCAL.try_with(|local| {
        if let Ok(mut local) = local.try_borrow_mut() {
            let epoch = FLUSH_EPOCH.load(Ordering::Acquire);
            let seen = local.buffered.as_ref().map(|s| s.load(Ordering::Relaxed));
            // A flush asked for everything: hand over even without a spare. Otherwise a
            // logger that is behind lets the lines wait here (they would only queue there).
            local.hand_over(seen.is_none_or(|seen| seen < epoch));
            if let Some(seen) = &local.buffered {
                // After the hand-over: a flush that sees this value finds those lines queued.
                seen.store(epoch, Ordering::Release);
            }
        }
    });
}

/// Writes out every line logged so far, on any thread: this thread's, each worker thread's
/// (at its next [`flush_thread`], at most [`FLUSH_INTERVAL`] away), and the logger's queue.
/// Blocks (bounded by [`FLUSH_WAIT`]): for the main thread at exit, never an I/O thread.
pub fn flush() {
    flush_thread();
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let deadline = Instant::now() + FLUSH_WAIT;
    let epoch = FLUSH_EPOCH.fetch_add(1, Ordering::AcqRel) + 1;
    let workers: Vec<Arc<AtomicU64>> = BUFFERED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    while workers.iter().any(|w| w.load(Ordering::Acquire) < epoch) {
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(FLUSH_POLL);
    }
    let (ack, acked) = sync_channel(1);
    let mut msg = Msg::Flush(ack);
    loop {
        match logger.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(FLUSH_POLL);
            }
            Err(_) => return,
        }
    }
    let _ = acked.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}
