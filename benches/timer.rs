//! Benchmarks of the sans-IO timer wheel (`sluice::timer::wheel`) with a 1 ms tick: an insert and
//! cancel pair next to 10k pending timers (a request timeout that did not fire), inserting 10k
//! timers and expiring them all (in one advance, and in 1 ms driver steps), and steady-state
//! churn (cancel an old timer, insert a new one, advance the clock) around 10k pending timers.
//!
//! Time is injected, so nothing sleeps; the async `Timers` driver is not measured here. Settings
//! are small so that `cargo bench` stays quick (see `benches/http.rs`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::timer::wheel::{TimerKey, TimerWheel};

/// Samples per benchmark (criterion's minimum is 10).
const SAMPLE_SIZE: usize = 20;
/// Time spent measuring each benchmark.
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
/// Time spent warming each benchmark up.
const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// The wheel resolution the gateway uses.
const TICK: Duration = Duration::from_millis(1);
/// Nanoseconds per millisecond.
const MS: u64 = 1_000_000;
/// Timers pending around the measured operations.
const TIMERS: usize = 10_000;
/// Deadlines of the background and expiring timers spread over this span: 10 s.
const SPREAD_NS: u64 = 10_000 * MS;
/// A request timeout, the typical timer that is inserted and then cancelled.
const TIMEOUT_NS: u64 = 30_000 * MS;
/// Clock step per churn iteration: 10 µs, so 10k iterations pass 100 ms.
const CHURN_STEP_NS: u64 = 10_000;

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
}

/// xorshift64*, for spreading deadlines reproducibly.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A wheel at time `now` with `TIMERS` timers spread over the next `SPREAD_NS`.
fn loaded(now: u64, rng: &mut XorShift) -> (TimerWheel<u64>, Vec<TimerKey>) {
    let mut wheel = TimerWheel::with_capacity(TICK, now, TIMERS * 2);
    let keys = (0..TIMERS as u64)
        .map(|i| wheel.insert(now + 1 + rng.below(SPREAD_NS), i))
        .collect();
    (wheel, keys)
}

fn timer(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer");
    let start = 1_000 * MS;

    // One request timeout armed and disarmed, next to 10k pending timers.
    let (mut wheel, _) = loaded(start, &mut XorShift(1));
    let mut offset = 0;
    group.bench_function("insert_cancel_pair", |b| {
        b.iter(|| {
            offset = (offset + 1) % SPREAD_NS;
            let key = wheel.insert(black_box(start + TIMEOUT_NS + offset), 7);
            wheel.cancel(key)
        })
    });

    group.throughput(Throughput::Elements(TIMERS as u64));
    // Insert 10k timers, then fire them all in one advance past the last deadline.
    group.bench_function("insert_expire_10k_one_advance", |b| {
        b.iter_batched(
            || TimerWheel::with_capacity(TICK, start, TIMERS),
            |mut wheel| {
                let mut rng = XorShift(2);
                for i in 0..TIMERS as u64 {
                    wheel.insert(start + 1 + rng.below(SPREAD_NS), i);
                }
                let mut fired = 0u64;
                wheel.advance(start + SPREAD_NS + MS, &mut |_, v| fired += v);
                black_box(fired);
                wheel
            },
            BatchSize::SmallInput,
        )
    });
    // The same, expired as the driver would: one advance per 1 ms tick (10k advances).
    group.bench_function("insert_expire_10k_1ms_steps", |b| {
        b.iter_batched(
            || TimerWheel::with_capacity(TICK, start, TIMERS),
            |mut wheel| {
                let mut rng = XorShift(3);
                for i in 0..TIMERS as u64 {
                    wheel.insert(start + 1 + rng.below(SPREAD_NS), i);
                }
                let mut fired = 0u64;
                let mut now = start;
                while !wheel.is_empty() {
                    now += MS;
                    wheel.advance(now, &mut |_, v| fired += v);
                }
                black_box(fired);
                wheel
            },
            BatchSize::SmallInput,
        )
    });

    group.throughput(Throughput::Elements(1));
    // Steady state around 10k pending: cancel the timer set 10k iterations ago (often already
    // fired), set a new one up to 10 s out, move the clock 10 µs and advance.
    let mut rng = XorShift(4);
    let (mut wheel, mut keys) = loaded(start, &mut rng);
    let (mut now, mut slot) = (start, 0);
    group.bench_function("churn_cancel_insert_advance", |b| {
        b.iter(|| {
            wheel.cancel(keys[slot]);
            keys[slot] = wheel.insert(now + 1 + rng.below(SPREAD_NS), 1);
            slot = (slot + 1) % TIMERS;
            now += CHURN_STEP_NS;
            let mut fired = 0u64;
            wheel.advance(now, &mut |_, v| fired += v);
            fired
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = timer
}
criterion_main!(benches);
