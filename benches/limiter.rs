//! Benchmarks of the shared rate limiters' `try_acquire`: a grant on one thread (sliding window
//! with a large and a small ring, token bucket), a refusal, and grants and refusals with two
//! threads contending for one limiter.
//!
//! Time is a counter passed in, advanced far enough per call that every call is granted (the
//! refusal benchmark excepted); the single-thread benchmarks assert that, so a slow-path
//! mistake cannot pass for speed. With two threads each has its own fake clock; if one falls
//! far behind (descheduled), it is refused and jumps to the time named, and the refusals are
//! printed. Contended numbers are wall time per grant while both threads run (aggregate
//! throughput: two grants per that time). Settings are small so `cargo bench` stays quick.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::limit::{Algorithm, Limiter, RateSpec};

/// Samples per benchmark (criterion's minimum is 10); see `benches/http.rs`.
const SAMPLE_SIZE: usize = 20;
/// Time spent measuring each benchmark.
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
/// Time spent warming each benchmark up.
const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// The largest limit (10 000 000 per second): a ring of 80 MB for the sliding window.
const HUGE: &str = "10000000/1s";
/// Fake nanoseconds between two calls on one thread under `HUGE`: 1 µs, so that a slot comes
/// round again only after 10 s of fake time, beyond the window, and every call is granted
/// (with two threads, after 5 s: still beyond it).
const HUGE_STEP: u64 = 1_000;
/// The signing API's limit: a ring of 10 slots that stays in L1.
const SMALL: &str = "10/1m";

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
}

fn limiter(spec: &str, algorithm: Algorithm) -> Limiter {
    let spec = RateSpec::parse(spec).expect("benchmark spec parses");
    Limiter::new(spec, algorithm, spec.default_margin())
}

/// Makes `iters` grants on this thread, each call `step` fake nanoseconds after the previous;
/// `now` carries on across criterion's batches. A refused call moves `now` to the time the
/// limiter named and calls again (as a waiting caller would, without the sleep). Returns the
/// wall time and the number of refusals.
fn grants(limiter: &Limiter, now: &mut u64, step: u64, iters: u64) -> (Duration, u64) {
    let mut refused = 0;
    let start = Instant::now();
    for _ in 0..iters {
        *now += step;
        while let Err(retry) = black_box(limiter.try_acquire(black_box(*now))) {
            refused += 1;
            *now = retry;
        }
    }
    (start.elapsed(), refused)
}

/// [`grants`] with no refusal allowed.
fn granted_in_a_row(limiter: &Limiter, now: &mut u64, step: u64, iters: u64) -> Duration {
    let (elapsed, refused) = grants(limiter, now, step, iters);
    assert_eq!(refused, 0, "a benchmark meant to be granted was refused");
    elapsed
}

/// Runs `work` on each of two threads at once and returns the wall time from their common
/// start until both are done, with what each returned.
fn on_two_threads<T: Send>(work: impl Fn() -> T + Sync) -> (Duration, Vec<T>) {
    let start = Barrier::new(3);
    let (began, results) = thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (start, work) = (&start, &work);
                s.spawn(move || {
                    start.wait();
                    work()
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let results: Vec<T> = workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread"))
            .collect();
        (began, results)
    });
    (began.elapsed(), results)
}

/// [`grants`] on two threads at once, each with its own fake clock starting at `*now`; moves
/// `*now` past both clocks and adds the refusals to `refused`.
fn contended(
    limiter: &Limiter,
    now: &mut u64,
    step: u64,
    iters: u64,
    refused: &mut u64,
) -> Duration {
    let base = *now;
    let (elapsed, ends) = on_two_threads(|| {
        let mut mine = base;
        let (_, refusals) = grants(limiter, &mut mine, step, iters);
        (mine, refusals)
    });
    for (end, refusals) in ends {
        *now = (*now).max(end);
        *refused += refusals;
    }
    elapsed
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter");
    for (name, spec, algorithm, step) in [
        (
            "sliding_window_grant_huge_ring",
            HUGE,
            Algorithm::SlidingWindow,
            HUGE_STEP,
        ),
        (
            "token_bucket_grant",
            HUGE,
            Algorithm::TokenBucket,
            HUGE_STEP,
        ),
    ] {
        let l = limiter(spec, algorithm);
        let mut now = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| granted_in_a_row(&l, &mut now, step, iters))
        });
    }
    // 10/1m with a 1 s margin: one slot frees every 6.1 s of fake time.
    let small = limiter(SMALL, Algorithm::SlidingWindow);
    let small_step = 6_100_000_000;
    let mut now = 0;
    group.bench_function("sliding_window_grant_small_ring", |b| {
        b.iter_custom(|iters| granted_in_a_row(&small, &mut now, small_step, iters))
    });
    // A full window: every call is refused (the common case under load).
    let full = limiter(SMALL, Algorithm::SlidingWindow);
    while full.try_acquire(0).is_ok() {}
    group.bench_function("sliding_window_refuse", |b| {
        b.iter(|| full.try_acquire(black_box(1)))
    });
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter_contended_2_threads");
    for (name, algorithm) in [
        ("sliding_window_grant", Algorithm::SlidingWindow),
        ("token_bucket_grant", Algorithm::TokenBucket),
    ] {
        let l = limiter(HUGE, algorithm);
        let (mut now, mut refused) = (0, 0);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| contended(&l, &mut now, HUGE_STEP, iters, &mut refused))
        });
        // Refusals happen only when one thread's fake clock falls far behind the other's.
        eprintln!("limiter_contended_2_threads/{name}: {refused} refusals");
    }
    // Two cores polling a full window: refusals only load, so the lines stay shared.
    let full = limiter(SMALL, Algorithm::SlidingWindow);
    while full.try_acquire(0).is_ok() {}
    group.bench_function("sliding_window_refuse", |b| {
        b.iter_custom(|iters| {
            on_two_threads(|| {
                for _ in 0..iters {
                    assert!(black_box(full.try_acquire(black_box(1))).is_err());
                }
            })
            .0
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = single_thread, two_threads
}
criterion_main!(benches);
