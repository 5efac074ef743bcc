//! The non-blocking log writer in-process (`sluice::log::start` with a test sink): a worker
//! thread's lines arrive in order and whole, handed over by size without any flush, and all of
//! them by `flush`; a stalled sink makes logging threads drop and count lines, never wait; and
//! formatting a line allocates nothing on a worker thread in steady state.
//!
//! One `#[test]`: the logger is one per process, and the phases must not see each other's lines.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sluice::log::{self, Level, Target};

// ---------------------------------------------------------------------------------------------
// Allocations per thread: a const thread-local counter (reading it never allocates).

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting uses a const
// thread-local, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

// ---------------------------------------------------------------------------------------------
// A sink that keeps everything and can be stalled.

#[derive(Clone, Default)]
struct Sink {
    written: Arc<Mutex<Vec<u8>>>,
    writes: Arc<Mutex<usize>>,
    stalled: Arc<AtomicBool>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        while self.stalled.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        *self.writes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// The messages of the lines written so far that contain `marker`.
    fn lines_with(&self, marker: &str) -> Vec<String> {
        let text = String::from_utf8(self.written.lock().unwrap().clone()).expect("UTF-8");
        text.lines()
            .filter(|l| l.contains(marker))
            .map(|l| l.split_once(": ").map_or(l, |(_, m)| m).to_string())
            .collect()
    }
}

/// Runs `f` on a thread marked as an I/O worker (`buffer_this_thread`); returns its result.
fn on_worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        log::buffer_this_thread();
        f()
    })
    .join()
    .expect("worker thread")
}

#[test]
fn the_writer_batches_flushes_drops_and_does_not_allocate() {
    let sink = Sink::default();
    let _guard = log::start(Box::new(sink.clone())).expect("start the logger");
    assert!(
        log::start(Box::new(Sink::default())).is_err(),
        "one logger per process"
    );
    log::set_filter(&log::Filter::default());

    // 1. A worker's lines wait in its buffer until a hand-over; `flush` gets them all, in
    // order. The worker thread keeps running and calls `flush_thread` as a worker's task does.
    let stop = Arc::new(AtomicBool::new(false));
    let (logged_tx, logged) = mpsc::channel();
    let worker = {
        let stop = stop.clone();
        thread::spawn(move || {
            log::buffer_this_thread();
            for i in 0..100 {
                log::event(Target::Proxy, Level::Info, format_args!("phase1 line {i}"));
            }
            logged_tx.send(()).unwrap();
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(log::FLUSH_INTERVAL / 4);
                log::flush_thread();
            }
        })
    };
    logged.recv().unwrap();
    log::flush();
    let got = sink.lines_with("phase1");
    let want: Vec<String> = (0..100).map(|i| format!("phase1 line {i}")).collect();
    assert_eq!(got, want);
    let line = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
    assert!(
        line.lines()
            .any(|l| l.ends_with(" info proxy: phase1 line 0")),
        "{line}"
    );
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();

    // 2. By size: a worker that logs more than HANDOVER_BYTES hands over without any flush.
    let line = "x".repeat(200);
    let lines = log::HANDOVER_BYTES / 200 + 10;
    let before = *sink.writes.lock().unwrap();
    let (done_tx, done) = mpsc::channel::<()>();
    let held = thread::spawn(move || {
        log::buffer_this_thread();
        for i in 0..lines {
            log::event(Target::Jobs, Level::Warn, format_args!("phase2 {i} {line}"));
        }
        // Stay alive (a thread that ends hands over what it holds).
        let _ = done.recv();
    });
    let until = Instant::now() + Duration::from_secs(5);
    while sink.lines_with("phase2").is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(5));
    }
    let arrived = sink.lines_with("phase2").len();
    assert!(
        arrived > 0 && arrived < lines,
        "{arrived} of {lines} lines handed over by size"
    );
    assert!(*sink.writes.lock().unwrap() > before);
    drop(done_tx);
    held.join().unwrap();
    // The thread's end handed over the rest.
    log::flush();
    assert_eq!(sink.lines_with("phase2").len(), lines);

    // 3. A stalled sink: logging never waits; lines beyond the queue are dropped and counted.
    sink.stalled.store(true, Ordering::SeqCst);
    let dropped_before = log::dropped_lines();
    let total = log::QUEUE_BATCHES + 100;
    let (finished_tx, finished) = mpsc::channel();
    thread::spawn(move || {
        // Not a worker: every line is its own hand-over, so the queue fills after a few hundred.
        for i in 0..total {
            log::event(Target::Store, Level::Error, format_args!("phase3 {i}"));
        }
        finished_tx.send(()).unwrap();
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(10)).is_ok(),
        "logging blocked on a stalled sink"
    );
    let dropped = log::dropped_lines() - dropped_before;
    assert!(dropped > 0, "nothing dropped with the queue full");
    sink.stalled.store(false, Ordering::SeqCst);
    log::flush();
    let written = sink.lines_with("phase3").len() as u64;
    assert_eq!(
        written + dropped,
        total as u64,
        "every line written or counted"
    );

    // 4. Steady state on a worker: formatting and handing over allocate nothing (the buffers
    // come back from the logger thread).
    let (steady, warm) = on_worker(|| {
        let burst = |n: usize| {
            for i in 0..n {
                log::event(Target::Access, Level::Info, format_args!("phase4 {i}"));
            }
            log::flush_thread();
            // Let the logger write and return the buffer.
            thread::sleep(Duration::from_millis(20));
        };
        for _ in 0..20 {
            burst(400);
        }
        let before = allocs();
        for _ in 0..20 {
            burst(400);
        }
        (allocs() - before, before)
    });
    assert!(warm > 0, "the counter sees this thread's allocations");
    assert_eq!(
        steady, 0,
        "allocations per 8000 lines on a worker thread in steady state"
    );
    log::flush();
    assert_eq!(sink.lines_with("phase4").len(), 40 * 400);
}
