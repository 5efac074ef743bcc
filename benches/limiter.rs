//! Benchmarks of the shared rate limiters' `try_acquire`: a grant on one thread (sliding window
//! with a large and a small ring, token bucket), a refusal, and grants and refusals with two
//! threads contending for one limiter; and the same with leases (`try_acquire_leased`, a limiter
//! built for two workers, one [`Lease`] per thread), next to the shared path (a limiter built
//! with `Limiter::new`, which never leases: lease size 1, one CAS on shared state per grant).
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
use sluice::limit::{Algorithm, Lease, Limiter, RateSpec};

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
/// A limit that leases small batches (19 per lease over two workers): a 160 KB ring.
const MID: &str = "20000/1s";
/// Fake nanoseconds between two calls under `MID`: 60 µs, so that a slot comes round again
/// only after 1.2 s of fake time, beyond the 1.05 s window (a lease of 19 then takes 1.1 ms,
/// a little over the 1 ms validity: leases settle near 16).
const MID_STEP: u64 = 60_000;
/// Workers the leasing limiters are built for (one lease holder per benchmark thread).
const WORKERS: usize = 2;

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

/// A sliding window built for [`WORKERS`] lease holders; asserts that it leases.
fn leasing(spec: &str) -> Limiter {
    let spec = RateSpec::parse(spec).expect("benchmark spec parses");
    let l = Limiter::with_workers(
        spec,
        Algorithm::SlidingWindow,
        spec.default_margin(),
        WORKERS,
    );
    assert!(
        l.lease_size() > 1,
        "a leasing benchmark limiter that does not lease"
    );
    l
}

/// Makes `iters` grants on this thread, each call `step` fake nanoseconds after the previous;
/// `now` carries on across criterion's batches. With a `lease`, through
/// `try_acquire_leased`. A refused call moves `now` to the time the limiter named and calls
/// again (as a waiting caller would, without the sleep). Returns the wall time and the number
/// of refusals.
fn grants(
    limiter: &Limiter,
    mut lease: Option<&mut Lease>,
    now: &mut u64,
    step: u64,
    iters: u64,
) -> (Duration, u64) {
    let mut refused = 0;
    let start = Instant::now();
    for _ in 0..iters {
        *now += step;
        loop {
            let outcome = match lease.as_deref_mut() {
                Some(lease) => limiter.try_acquire_leased(lease, black_box(*now)),
                None => limiter.try_acquire(black_box(*now)),
            };
            match black_box(outcome) {
                Ok(()) => break,
                Err(retry) => {
                    refused += 1;
                    *now = retry;
                }
            }
        }
    }
    (start.elapsed(), refused)
}

/// [`grants`] with no refusal allowed.
fn granted_in_a_row(
    limiter: &Limiter,
    lease: Option<&mut Lease>,
    now: &mut u64,
    step: u64,
    iters: u64,
) -> Duration {
    let (elapsed, refused) = grants(limiter, lease, now, step, iters);
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

/// [`grants`] on two threads at once, each with its own fake clock starting at `*now` and,
/// with `leases`, its own lease (kept across criterion's batches: a lease holder claims a board
/// record for good); moves `*now` past both clocks and adds the refusals to `refused`.
fn contended(
    limiter: &Limiter,
    leases: Option<&mut [Lease; 2]>,
    now: &mut u64,
    step: u64,
    iters: u64,
    refused: &mut u64,
) -> Duration {
    let base = *now;
    let start = Barrier::new(3);
    let mut holders: [Option<&mut Lease>; 2] = match leases {
        Some([a, b]) => [Some(a), Some(b)],
        None => [None, None],
    };
    let (began, ends) = thread::scope(|s| {
        let workers: Vec<_> = holders
            .iter_mut()
            .map(|lease| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let mut mine = base;
                    let (_, refusals) =
                        grants(limiter, lease.as_deref_mut(), &mut mine, step, iters);
                    (mine, refusals)
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let ends: Vec<(u64, u64)> = workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread"))
            .collect();
        (began, ends)
    });
    let elapsed = began.elapsed();
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
        (
            "sliding_window_grant_mid_ring",
            MID,
            Algorithm::SlidingWindow,
            MID_STEP,
        ),
    ] {
        let l = limiter(spec, algorithm);
        let mut now = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| granted_in_a_row(&l, None, &mut now, step, iters))
        });
    }
    // The same grants from leases: one holder, no other core.
    for (name, spec, step) in [
        ("sliding_window_grant_leased_huge_ring", HUGE, HUGE_STEP),
        ("sliding_window_grant_leased_mid_ring", MID, MID_STEP),
    ] {
        let l = leasing(spec);
        let (mut now, mut lease) = (0, Lease::new());
        group.bench_function(name, |b| {
            b.iter_custom(|iters| granted_in_a_row(&l, Some(&mut lease), &mut now, step, iters))
        });
    }
    // 10/1m with a 1 s margin: one slot frees every 6.1 s of fake time.
    let small = limiter(SMALL, Algorithm::SlidingWindow);
    let small_step = 6_100_000_000;
    let mut now = 0;
    group.bench_function("sliding_window_grant_small_ring", |b| {
        b.iter_custom(|iters| granted_in_a_row(&small, None, &mut now, small_step, iters))
    });
    // A full window: every call is refused (the common case under load).
    let full = limiter(SMALL, Algorithm::SlidingWindow);
    while full.try_acquire(0).is_ok() {}
    group.bench_function("sliding_window_refuse", |b| {
        b.iter(|| full.try_acquire(black_box(1)))
    });
    // A full leasing window: the refusal also looks at the reach and the lease board.
    let full = leasing(MID);
    while full.try_acquire(0).is_ok() {}
    let mut lease = Lease::new();
    group.bench_function("sliding_window_refuse_leasing", |b| {
        b.iter(|| full.try_acquire_leased(&mut lease, black_box(1)))
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
            b.iter_custom(|iters| contended(&l, None, &mut now, HUGE_STEP, iters, &mut refused))
        });
        // Refusals happen only when one thread's fake clock falls far behind the other's.
        eprintln!("limiter_contended_2_threads/{name}: {refused} refusals");
    }
    // Leased (the huge ring only: with two private fake clocks that drift apart, a smaller
    // ring would measure refusals, not grants).
    let l = leasing(HUGE);
    let (mut now, mut refused, mut leases) = (0, 0, [Lease::new(), Lease::new()]);
    group.bench_function("sliding_window_grant_leased", |b| {
        b.iter_custom(|iters| {
            contended(
                &l,
                Some(&mut leases),
                &mut now,
                HUGE_STEP,
                iters,
                &mut refused,
            )
        })
    });
    eprintln!("limiter_contended_2_threads/sliding_window_grant_leased: {refused} refusals");
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
