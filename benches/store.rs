//! Durable job puts into the store (real file in the temp dir, every commit `fsync`ed): what a
//! burst of `202 Accepted`s costs, with and without group commit.
//!
//! - `burst_4_threads`: 4 submitting threads, each with all its puts in flight at once (an I/O
//!   thread with many connections that each await their put), so the writer commits whatever
//!   queued during the previous `fsync`: group commit.
//! - `closed_loop_4_threads`: 4 threads, one put in flight each (at most 4 per commit).
//! - `one_commit_per_put`: one thread, each put awaited before the next: one `fsync` per job,
//!   the cost group commit avoids.
//!
//! A put is a realistic job row: a ~300-byte request and one callback. Throughput is reported
//! in jobs (elements) per second; after each benchmark the ops per commit are printed. Run
//! with `cargo bench --bench store`.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::store::{CallbackState, JobRow, JobStatus, Op, Store, StoreHandle};

/// Samples per benchmark (criterion's minimum is 10): every sample is real disk writes.
const SAMPLE_SIZE: usize = 10;
/// Time spent measuring each benchmark.
const MEASUREMENT_TIME: Duration = Duration::from_secs(4);
/// Time spent warming each benchmark up.
const WARM_UP_TIME: Duration = Duration::from_secs(1);
/// Submitting threads in the multi-threaded benchmarks.
const THREADS: u64 = 4;
/// Size of the stored request (head and body) of every job.
const REQUEST_BYTES: usize = 300;

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
}

/// Drives a future on this thread, parking between polls.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// Unique job ids across all benchmarks (each put is a new row, as each 202 is).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn job() -> Op {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    let mut request = format!(
        "POST /v1/charges HTTP/1.1\r\nhost: api.example\r\ncontent-type: application/json\r\n\
         idempotency-key: bench-{n}\r\ncontent-length: 100\r\n\r\n"
    )
    .into_bytes();
    request.resize(REQUEST_BYTES, b'x');
    Op::PutJob(Box::new(JobRow {
        id,
        created_at_ms: 1_700_000_000_000 + n,
        method: "POST".into(),
        endpoint: "/v1/charges".into(),
        request,
        callbacks: vec!["https://hooks.example/sluice/done".into()],
        attempts: 0,
        next_attempt_at_ms: None,
        status: JobStatus::Pending,
        last_upstream_status: None,
        finished_at_ms: None,
        result: None,
        callback_state: CallbackState::Pending,
    }))
}

/// Runs `per_thread(handle, n)` on `THREADS` threads started together; returns the wall time.
fn on_threads(h: &StoreHandle, iters: u64, per_thread: fn(&StoreHandle, u64)) -> Duration {
    let barrier = Arc::new(Barrier::new(THREADS as usize + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            // The iterations split over the threads, remainder to the first ones.
            let n = iters / THREADS + u64::from(t < iters % THREADS);
            let h = h.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                per_thread(&h, n);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for w in workers {
        w.join().expect("bench thread");
    }
    start.elapsed()
}

fn burst(h: &StoreHandle, n: u64) {
    let pending: Vec<_> = (0..n).map(|_| h.submit_durable(job())).collect();
    for d in pending {
        block_on(d).expect("durable put");
    }
}

fn closed_loop(h: &StoreHandle, n: u64) {
    for _ in 0..n {
        block_on(h.submit_durable(job())).expect("durable put");
    }
}

fn bench_store(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sluice-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::open(&dir).expect("open bench store");
    let h = store.handle();

    let mut group = c.benchmark_group("store_durable_put");
    group.throughput(Throughput::Elements(1));
    let report = |name: &str, before: sluice::store::StoreStats, h: &StoreHandle| {
        let after = h.stats();
        let ops = after.ops_applied - before.ops_applied;
        let commits = (after.commits - before.commits).max(1);
        eprintln!(
            "{name}: {ops} puts in {commits} commits, {:.1} puts per commit",
            ops as f64 / commits as f64
        );
    };

    let before = h.stats();
    group.bench_function("burst_4_threads", |b| {
        b.iter_custom(|iters| on_threads(&h, iters, burst))
    });
    report("burst_4_threads", before, &h);

    let before = h.stats();
    group.bench_function("closed_loop_4_threads", |b| {
        b.iter_custom(|iters| on_threads(&h, iters, closed_loop))
    });
    report("closed_loop_4_threads", before, &h);

    let before = h.stats();
    group.bench_function("one_commit_per_put", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            closed_loop(&h, iters);
            start.elapsed()
        })
    });
    report("one_commit_per_put", before, &h);
    group.finish();

    store.close().expect("close bench store");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = quick();
    targets = bench_store
}
criterion_main!(benches);
