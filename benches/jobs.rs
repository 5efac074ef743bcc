//! Benchmarks of what creating a job costs on the worker, step by step and in total, with the
//! real library functions on a real [`Worker`] (built with `server::shared_state`, no threads
//! or runtime): a job id from the worker's id pool, the `--max-inflight` place, the dedup key
//! (SHA-256 of method, path, query, answer-shaping headers and body), this core's map of open
//! keys and the cross-core table of open keys, a job cell taken from the worker's pool (reset)
//! and given back; and, for a deferred job only, its record inserted into the shared registry.
//!
//! `direct_job_get_dedup` strings the direct path's steps together for a GET under the default
//! `--dedup safe` with two workers (what `proxy::handle` and `jobs::run::serve_job` do besides
//! I/O). Not measured here: parsing and writing heads (`benches/http.rs`), the rate-limit grant
//! (`benches/limiter.rs`), the timers (`benches/timer.rs`), sockets.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::config::Config;
use sluice::http::request::parse_request;
use sluice::http::HeadLimits;
use sluice::jobs::crosscore::Claim;
use sluice::jobs::registry::{CallbackState, JobId, JobState, JobStatus};
use sluice::jobs::run::dedup_key;
use sluice::server::worker::{IdPool, Worker};
use sluice::upstream::Upstream;

/// Samples per benchmark (criterion's minimum is 10); see `benches/http.rs`.
const SAMPLE_SIZE: usize = 20;
/// Time spent measuring each benchmark.
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
/// Time spent warming each benchmark up.
const WARM_UP_TIME: Duration = Duration::from_millis(500);
/// `--max-inflight` of the benchmark worker (the default; it sizes the cross-core table).
const MAX_INFLIGHT: usize = 10_000;
/// Records inserted into one registry before it is replaced (outside the timing): the
/// registry holds between 0 and this many deferred jobs while measured.
const REGISTRY_BATCH: usize = 10_000;
/// The deadline of the benchmark jobs (the `--ingress-request-timeout-ms` default).
const DEADLINE: Duration = Duration::from_secs(2);

/// A GET with the headers a browser-ish client sends (as in `benches/http.rs`); three of them
/// (`Accept`, `Accept-Encoding`, `Accept-Language`) enter the dedup key.
const GET: &[u8] = b"GET /v1/accounts/42/balance?currency=EUR&verbose=1 HTTP/1.1\r\n\
    Host: gateway.internal:8080\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
    Accept: application/json, text/plain;q=0.9, */*;q=0.8\r\n\
    Accept-Language: en-GB,en;q=0.5\r\n\
    Accept-Encoding: gzip, deflate, br\r\n\
    Authorization: Bearer client-side-token-that-sluice-replaces\r\n\
    Connection: keep-alive\r\n\
    X-Request-Id: 7f9c2ba4-e88f-11ee-a951-0242ac120002\r\n\r\n";

/// A POST head whose 1 KiB body enters the dedup key (under `--dedup all`).
const POST_HEAD: &[u8] = b"POST /crypto/sign HTTP/1.1\r\n\
    Host: gateway.internal:8080\r\n\
    Content-Type: application/json\r\n\
    Content-Length: 1024\r\n\r\n";
const POST_BODY_BYTES: usize = 1024;

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
}

/// A real worker (worker 0 of two, `--dedup safe`), as `Server::start` builds it, without its
/// thread, runtime or listener.
fn worker() -> Worker {
    let args = [
        "sluice",
        "-t",
        "tok",
        "--paths",
        "/crypto/sign,/v1/*",
        "-o",
        "http://127.0.0.1:9",
        "--workers",
        "2",
        "--no-persist",
    ];
    let config = match Config::from_args(args) {
        Ok(c) => Arc::new(c),
        Err(_) => panic!("benchmark command line rejected"),
    };
    let upstream = Arc::new(Upstream::prepare(&config).expect("prepare the upstream"));
    let (drained, _) = std::sync::mpsc::channel();
    let shared = sluice::server::shared_state(config, upstream, None, drained)
        .expect("build the shared state");
    Worker::new(0, &shared)
}

fn jobs(c: &mut Criterion) {
    let worker = worker();
    let limits = HeadLimits::default();
    let Ok(Some(get)) = parse_request(GET, &limits) else {
        panic!("benchmark GET does not parse");
    };
    let get_path = get.path.get(GET);
    let get_query = get.query.map_or(&b""[..], |q| q.get(GET));
    let Ok(Some(post)) = parse_request(POST_HEAD, &limits) else {
        panic!("benchmark POST does not parse");
    };
    let post_body = vec![b'x'; POST_BODY_BYTES];
    let deadline = u64::try_from(DEADLINE.as_nanos()).unwrap_or(u64::MAX);

    let mut group = c.benchmark_group("jobs");
    // The job id (the `Idempotency-Key` of every attempt): 16 bytes cut from a block of OS
    // randomness refilled every 256 ids (the refill's syscall is amortised in), as hex.
    let mut ids = IdPool::new();
    group.bench_function("id_next_hex", |b| b.iter(|| ids.next_id().to_hex()));
    // The job's place under `--max-inflight` (one shared atomic, taken and released).
    group.bench_function("open_job_place", |b| {
        b.iter(|| worker.open_job(black_box(MAX_INFLIGHT)).is_some())
    });
    group.bench_function("dedup_key/get_8_headers", |b| {
        b.iter(|| dedup_key(&get, black_box(GET), get_path, get_query, b""))
    });
    group.bench_function("dedup_key/post_1kib_body", |b| {
        b.iter(|| {
            dedup_key(
                &post,
                black_box(POST_HEAD),
                post.path.get(POST_HEAD),
                b"",
                &post_body,
            )
        })
    });
    let key = dedup_key(&get, GET, get_path, get_query, b"");
    // The cross-core table: claim the key when the job opens, release it when it ends.
    group.bench_function("open_keys_claim_release", |b| {
        b.iter(|| {
            if let Claim::Owner(at) = worker.open_keys.claim(black_box(&key), worker.id) {
                worker.open_keys.release(at, &key, worker.id);
            }
        })
    });
    // The job cell: popped from the worker's pool and reset, then given back (as the job's
    // guard does when it drops).
    group.bench_function("job_cell_take_reset_give", |b| {
        b.iter(|| {
            let now = worker.timers.now();
            let cell = worker.take_job_cell(now, now + deadline);
            worker.give_job_cell(cell.clone());
            drop(cell);
        })
    });
    // Everything the direct path does to create and close a deduplicable job on the worker.
    group.bench_function("direct_job_get_dedup", |b| {
        b.iter(|| {
            let id = worker.ids.borrow_mut().next_id();
            let hex = id.to_hex();
            let open = worker.open_job(MAX_INFLIGHT);
            let key = dedup_key(&get, black_box(GET), get_path, get_query, b"");
            let attached = worker.dedup.borrow().get(&key).cloned();
            let published = match worker.open_keys.claim(&key, worker.id) {
                Claim::Owner(at) => Some(at),
                _ => None,
            };
            let now = worker.timers.now();
            let cell = worker.take_job_cell(now, now + deadline);
            worker.dedup.borrow_mut().insert(key, cell.clone());
            // ... the job runs and ends ...
            worker.dedup.borrow_mut().remove(&key);
            if let Some(at) = published {
                worker.open_keys.release(at, &key, worker.id);
            }
            worker.give_job_cell(cell.clone());
            drop(cell);
            drop(open);
            (hex, attached.is_some())
        })
    });
    // A deferred job's record in the shared registry (a sharded mutex map), as the job's
    // first 202 registers it. The registry is replaced every REGISTRY_BATCH inserts, outside
    // the timing, so it stays at a realistic size.
    group.bench_function("registry_insert_deferred", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(REGISTRY_BATCH as u64);
                let registry = sluice::jobs::registry::Registry::new();
                let fresh: Vec<JobId> = (0..batch).map(|_| ids.next_id()).collect();
                let created_at = SystemTime::now();
                let start = Instant::now();
                for &id in &fresh {
                    let record = registry.insert_with_id(
                        id,
                        JobState {
                            status: JobStatus::Pending,
                            attempts: 1,
                            last_upstream_status: None,
                            next_attempt_at: None,
                            created_at,
                            finished_at: None,
                            result: None,
                            callback: CallbackState::None,
                        },
                    );
                    black_box(record);
                }
                spent += start.elapsed();
                left -= batch;
            }
            spent
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = jobs
}
criterion_main!(benches);
