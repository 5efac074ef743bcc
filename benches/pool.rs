//! Benchmarks of the per-core keep-alive pool with plain `u32` connections: the steady-state
//! checkout and return of one request, a return into a full pool (evicting the oldest), a
//! checkout that first has to drop expired connections, and the periodic sweep.
//!
//! Time is passed in (`now`), so no benchmark sleeps or reads the clock inside the loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sluice::upstream::pool::Pool;

/// Samples per benchmark (criterion's minimum is 10); see `benches/http.rs`.
const SAMPLE_SIZE: usize = 20;
/// Time spent measuring each benchmark.
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
/// Time spent warming each benchmark up.
const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// Idle connections kept per core (the order of magnitude of the `--max-idle` default).
const MAX_IDLE: usize = 64;
/// Idle timeout of the pool under test.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
}

/// A pool holding `n` connections that went idle at `since`.
fn filled(n: usize, since: Instant) -> Pool<u32> {
    let mut pool = Pool::new(MAX_IDLE, IDLE_TIMEOUT);
    for conn in 0..n {
        pool.put(u32::try_from(conn).unwrap_or(u32::MAX), since);
    }
    pool
}

fn pool(c: &mut Criterion) {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(1);
    let expired = t0 + IDLE_TIMEOUT * 2;

    let mut group = c.benchmark_group("pool");
    // One request's worth: check out the freshest connection, use it, return it.
    let mut warm = filled(MAX_IDLE / 2, t0);
    group.bench_function("take_put_hit", |b| {
        b.iter(|| {
            let conn = warm.take(black_box(later));
            if let Some(conn) = conn {
                warm.put(conn, later);
            }
            conn
        })
    });
    // A miss on an empty pool (the connect path's first step).
    let mut empty: Pool<u32> = Pool::new(MAX_IDLE, IDLE_TIMEOUT);
    group.bench_function("take_empty", |b| b.iter(|| empty.take(black_box(later))));
    // Returning into a full pool closes the oldest idle connection.
    let mut full = filled(MAX_IDLE, t0);
    group.bench_function("put_full_evicts_oldest", |b| {
        b.iter(|| full.put(black_box(7), later))
    });
    // A checkout that finds only expired connections and drops them all.
    group.bench_function("take_drops_64_expired", |b| {
        b.iter_batched(
            || filled(MAX_IDLE, t0),
            |mut p| p.take(black_box(expired)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sweep_64_half_expired", |b| {
        b.iter_batched(
            || {
                let mut p = filled(MAX_IDLE / 2, t0);
                for conn in 0..MAX_IDLE / 2 {
                    p.put(u32::try_from(conn).unwrap_or(u32::MAX), expired);
                }
                p
            },
            |mut p| {
                p.sweep(black_box(expired + Duration::from_secs(1)));
                p
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = pool
}
criterion_main!(benches);
