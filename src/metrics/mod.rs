//! Metrics: per-core counters, gauges and histograms, aggregated over all workers when
//! scraped, and their Prometheus text exposition ([`text`]).
//!
//! Each worker owns one [`CoreMetrics`] shard and is its only writer: counting is a relaxed
//! load and store on a cache line no other core writes (no lock prefix, no contention), so it
//! costs the proxy path a few instructions. A scrape (the admin thread, see `crate::admin`)
//! reads every shard with relaxed loads and sums them: each value is exact, the set is not an
//! atomic snapshot (as with every Prometheus client library).
//!
//! Labels that come from configuration (endpoints, limiters) are interned once, when a route
//! table is built (start-up, reload), into process-wide slots; the hot path indexes arrays by
//! slot. There are [`ENDPOINT_SLOTS`] endpoint and [`LIMITER_SLOTS`] limiter slots; names beyond
//! them share the last slot, labelled `_other` (a configuration that large is unusual, and a
//! label's cardinality must stay bounded anyway). A slot keeps its name for the life of the
//! process, so a reload that removes an endpoint keeps its series (Prometheus counters must
//! not vanish and come back at zero).
//!
//! What is counted, and where: see the README's "Metrics" section, which lists every family.

pub mod text;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use text::Kind;

/// Endpoint label slots (the last one is `_other`).
pub const ENDPOINT_SLOTS: usize = 64;
/// Limiter label slots (the last one is `_other`).
pub const LIMITER_SLOTS: usize = 64;
/// The request-counter slot of requests answered before any endpoint matched (not
/// allowlisted, unparsable, or sluice's own `/_sluice/` paths): labelled `endpoint="(none)"`.
pub const NO_ENDPOINT: u16 = ENDPOINT_SLOTS as u16;
/// The label of [`NO_ENDPOINT`].
pub const NO_ENDPOINT_LABEL: &str = "(none)";
/// The label of the shared overflow slot.
pub const OTHER_LABEL: &str = "_other";

/// Histogram bucket upper bounds, in seconds: from a fast loopback answer (1 ms) to the
/// minutes a slow or rate-limited upstream can take.
pub const BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// [`BUCKETS_SECONDS`] in microseconds (what observations are compared with).
const BUCKETS_MICROS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

// --- Cells ------------------------------------------------------------------------------------

/// Whether the cells count. Always `true` here; `bench/metrics_cost.sh` builds a copy with it
/// `false` (every counting store compiled out) to measure what counting costs the proxy path.
pub const COUNTING: bool = true;

/// A counter written by one thread (its shard's worker).
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        if !COUNTING {
            return;
        }
        // Single writer: a plain load and store, no read-modify-write instruction.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge written by one thread. Shards hold deltas (a value counted up on one core is
/// counted down on the same core), so the sum over shards is the process's value.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, d: i64) {
        if !COUNTING {
            return;
        }
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(d),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn set(&self, v: i64) {
        if !COUNTING {
            return;
        }
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of durations over [`BUCKETS_SECONDS`], written by one thread.
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last cell counts those above every bound.
    buckets: [Counter; BUCKETS_MICROS.len() + 1],
    sum_micros: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum_micros: Counter::default(),
        }
    }
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: Duration) {
        if !COUNTING {
            return;
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[i].inc();
        self.sum_micros.add(micros);
    }
}

/// A histogram summed over shards.
#[derive(Default)]
struct HistogramSum {
    buckets: [u64; BUCKETS_MICROS.len() + 1],
    sum_micros: u64,
}

impl HistogramSum {
    fn add(&mut self, h: &Histogram) {
        for (sum, cell) in self.buckets.iter_mut().zip(&h.buckets) {
            *sum = sum.wrapping_add(cell.get());
        }
        self.sum_micros = self.sum_micros.wrapping_add(h.sum_micros.get());
    }

    fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    fn write(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        text::histogram(
            out,
            name,
            labels,
            &BUCKETS_SECONDS,
            &self.buckets[..BUCKETS_SECONDS.len()],
            self.sum_micros as f64 / 1e6,
            self.count(),
        );
    }
}

// --- What is counted --------------------------------------------------------------------------

/// The class of a status code sent to a client, as a label index.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Why sluice refused a request itself (`sluice_rejected_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The path is not on the allowlist (404).
    NotAllowlisted,
    /// The method is not allowed on the endpoint (405).
    MethodNotAllowed,
    /// Malformed or unsupported HTTP, or an invalid callback parameter (400, 417, 505).
    BadRequest,
    /// The request head or body is over its limit (431, 413).
    TooLarge,
    /// `--max-inflight` open jobs reached (503 over_capacity).
    OverCap,
    /// The client was too slow to send its request (408).
    Timeout,
}

impl Reject {
    const ALL: [Reject; 6] = [
        Reject::NotAllowlisted,
        Reject::MethodNotAllowed,
        Reject::BadRequest,
        Reject::TooLarge,
        Reject::OverCap,
        Reject::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Reject::NotAllowlisted => "not_allowlisted",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::BadRequest => "bad_request",
            Reject::TooLarge => "too_large",
            Reject::OverCap => "over_cap",
            Reject::Timeout => "timeout",
        }
    }

    /// The reason behind one of the JSON error codes of a refused request (`None`: not a
    /// refusal, e.g. an upstream failure answered as 502). `not_found` is not mapped: the job
    /// API answers it too; the allowlist check counts its refusals itself.
    pub fn from_code(code: &str) -> Option<Reject> {
        Some(match code {
            "method_not_allowed" => Reject::MethodNotAllowed,
            "bad_request" | "version_not_supported" | "expectation_failed" => Reject::BadRequest,
            "payload_too_large" | "header_too_large" => Reject::TooLarge,
            "over_capacity" => Reject::OverCap,
            "request_timeout" => Reject::Timeout,
            _ => return None,
        })
    }
}

/// How one upstream attempt ended (`sluice_upstream_attempts_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A response head with this status.
    Status(u16),
    /// No response (head) within the upstream timeouts.
    Timeout,
    /// No connection (refused, unreachable, TLS handshake failed).
    ConnectError,
    /// The connection failed or closed while sending or receiving.
    IoError,
    /// The origin's answer was not valid HTTP.
    BadResponse,
}

impl Attempt {
    const LABELS: [&'static str; 9] = [
        "2xx",
        "3xx",
        "4xx",
        "429",
        "5xx",
        "timeout",
        "connect_error",
        "io_error",
        "bad_response",
    ];

    fn index(self) -> usize {
        match self {
            Attempt::Status(429) => 3,
            Attempt::Status(s) if s < 300 => 0,
            Attempt::Status(s) if s < 400 => 1,
            Attempt::Status(s) if s < 500 => 2,
            Attempt::Status(_) => 4,
            Attempt::Timeout => 5,
            Attempt::ConnectError => 6,
            Attempt::IoError => 7,
            Attempt::BadResponse => 8,
        }
    }
}

/// How one callback delivery attempt ended (`sluice_callback_deliveries_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callback {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed; another is scheduled.
    Retrying,
    /// The attempt failed and the schedule is exhausted: the delivery is given up.
    Failed,
    /// The receiver answered `410 Gone`: delivery stopped for good.
    Gone,
    /// Never sent: the target is outside `--callback-allow`.
    Rejected,
}

impl Callback {
    const ALL: [Callback; 5] = [
        Callback::Delivered,
        Callback::Retrying,
        Callback::Failed,
        Callback::Gone,
        Callback::Rejected,
    ];

    fn label(self) -> &'static str {
        match self {
            Callback::Delivered => "delivered",
            Callback::Retrying => "retrying",
            Callback::Failed => "failed",
            Callback::Gone => "gone",
            Callback::Rejected => "rejected",
        }
    }
}

// --- Shards -----------------------------------------------------------------------------------

/// One worker's counters. Aligned so that no two shards share a cache line.
#[repr(align(128))]
pub struct CoreMetrics {
    /// Per endpoint slot (and [`NO_ENDPOINT`]) and status class sent to the client.
    requests: [[Counter; 5]; ENDPOINT_SLOTS + 1],
    rejected: [Counter; Reject::ALL.len()],
    attempts: [[Counter; Attempt::LABELS.len()]; ENDPOINT_SLOTS],
    upstream_seconds: [Histogram; ENDPOINT_SLOTS],
    retries: [Counter; ENDPOINT_SLOTS],
    limiter_wait: [Histogram; LIMITER_SLOTS],
    limiter_queue: [Gauge; LIMITER_SLOTS],
    /// Jobs not yet in a terminal state.
    jobs_open: Gauge,
    /// Of those, the ones whose client got a 202 (or that were resumed from the store).
    jobs_deferred_open: Gauge,
    jobs_deferred: Counter,
    jobs_succeeded: Counter,
    jobs_failed: Counter,
    callbacks: [Counter; Callback::ALL.len()],
    connections_open: Gauge,
    connections: Counter,
    upstream_open: Gauge,
    upstream_idle: Gauge,
    upstream_connects: Counter,
}

impl CoreMetrics {
    fn new() -> CoreMetrics {
        CoreMetrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| Counter::default())),
            rejected: std::array::from_fn(|_| Counter::default()),
            attempts: std::array::from_fn(|_| std::array::from_fn(|_| Counter::default())),
            upstream_seconds: std::array::from_fn(|_| Histogram::default()),
            retries: std::array::from_fn(|_| Counter::default()),
            limiter_wait: std::array::from_fn(|_| Histogram::default()),
            limiter_queue: std::array::from_fn(|_| Gauge::default()),
            jobs_open: Gauge::default(),
            jobs_deferred_open: Gauge::default(),
            jobs_deferred: Counter::default(),
            jobs_succeeded: Counter::default(),
            jobs_failed: Counter::default(),
            callbacks: std::array::from_fn(|_| Counter::default()),
            connections_open: Gauge::default(),
            connections: Counter::default(),
            upstream_open: Gauge::default(),
            upstream_idle: Gauge::default(),
            upstream_connects: Counter::default(),
        }
    }

    /// A request answered to its client with `status`; `endpoint` is its endpoint's slot
    /// ([`NO_ENDPOINT`] when none matched).
    #[inline]
    pub fn request(&self, endpoint: u16, status: u16) {
        let slot = usize::from(endpoint).min(ENDPOINT_SLOTS);
        self.requests[slot][class_index(status)].inc();
    }

    #[inline]
    pub fn rejected(&self, reason: Reject) {
        let i = Reject::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejected[i].inc();
    }

    /// One upstream attempt and how long it took (request sent to response head, or failure).
    #[inline]
    pub fn attempt(&self, endpoint: u16, result: Attempt, took: Duration) {
        let slot = endpoint_index(endpoint);
        self.attempts[slot][result.index()].inc();
        self.upstream_seconds[slot].observe(took);
    }

    /// A retry scheduled after a failed attempt.
    #[inline]
    pub fn retry(&self, endpoint: u16) {
        self.retries[endpoint_index(endpoint)].inc();
    }

    /// Time an attempt waited for a rate-limit slot (zero when one was free).
    #[inline]
    pub fn limiter_waited(&self, limiter: u16, waited: Duration) {
        self.limiter_wait[limiter_index(limiter)].observe(waited);
    }

    /// A job entered (`+1`) or left (`-1`) a limiter's wait queue on this core.
    #[inline]
    pub fn limiter_queue(&self, limiter: u16, delta: i64) {
        self.limiter_queue[limiter_index(limiter)].add(delta);
    }

    /// A job started (a request became a job, or a stored job resumed: `deferred`).
    #[inline]
    pub fn job_opened(&self, deferred: bool) {
        self.jobs_open.add(1);
        if deferred {
            self.jobs_deferred_open.add(1);
        }
    }

    /// A waiting client got a 202 for its job.
    #[inline]
    pub fn job_deferred(&self) {
        self.jobs_deferred.inc();
        self.jobs_deferred_open.add(1);
    }

    /// A job reached a terminal state (`deferred`: it had been promised by a 202 or resumed).
    #[inline]
    pub fn job_finished(&self, succeeded: bool, deferred: bool) {
        self.jobs_open.add(-1);
        if deferred {
            self.jobs_deferred_open.add(-1);
        }
        if succeeded {
            self.jobs_succeeded.inc();
        } else {
            self.jobs_failed.inc();
        }
    }

    /// A job left without a terminal state (its worker halted at shutdown; it is in the store).
    #[inline]
    pub fn job_abandoned(&self, deferred: bool) {
        self.jobs_open.add(-1);
        if deferred {
            self.jobs_deferred_open.add(-1);
        }
    }

    #[inline]
    pub fn callback(&self, result: Callback) {
        let i = Callback::ALL.iter().position(|c| *c == result).unwrap_or(0);
        self.callbacks[i].inc();
    }

    /// A client connection was accepted (`+1`) or closed (`-1`).
    #[inline]
    pub fn connection(&self, delta: i64) {
        self.connections_open.add(delta);
        if delta > 0 {
            self.connections.inc();
        }
    }

    /// An upstream connection was opened (`+1`) or closed (`-1`).
    #[inline]
    pub fn upstream_connection(&self, delta: i64) {
        self.upstream_open.add(delta);
        if delta > 0 {
            self.upstream_connects.inc();
        }
    }

    /// This core's idle pooled upstream connections.
    #[inline]
    pub fn upstream_idle(&self, idle: usize) {
        self.upstream_idle
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
    }
}

fn endpoint_index(slot: u16) -> usize {
    usize::from(slot).min(ENDPOINT_SLOTS - 1)
}

fn limiter_index(slot: u16) -> usize {
    usize::from(slot).min(LIMITER_SLOTS - 1)
}

// --- Label slots ------------------------------------------------------------------------------

/// Interned label values. Locked only when a route table is built and when scraped.
struct Names {
    names: Mutex<Vec<Box<str>>>,
    slots: usize,
}

impl Names {
    const fn new(slots: usize) -> Names {
        Names {
            names: Mutex::new(Vec::new()),
            slots,
        }
    }

    fn slot(&self, name: &str) -> u16 {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = names.iter().position(|n| &**n == name) {
            return i as u16;
        }
        if names.len() + 1 < self.slots {
            names.push(name.into());
            (names.len() - 1) as u16
        } else {
            (self.slots - 1) as u16
        }
    }

    /// `(slot, label)` of every slot in use, the overflow slot last when used.
    fn labels(&self) -> Vec<(usize, String)> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut labels: Vec<(usize, String)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.to_string()))
            .collect();
        // The overflow slot is always shown: it also counts the attempts of resumed jobs whose
        // path matches no endpoint any more.
        labels.push((self.slots - 1, OTHER_LABEL.to_string()));
        labels
    }
}

static ENDPOINT_NAMES: Names = Names::new(ENDPOINT_SLOTS);
static LIMITER_NAMES: Names = Names::new(LIMITER_SLOTS);

/// The slot of an endpoint label (its allowlist entry as configured, e.g. `/v1/*`).
pub fn endpoint_slot(name: &str) -> u16 {
    ENDPOINT_NAMES.slot(name)
}

/// The slot of a limiter label (its name: an endpoint's entry, a shared group, `origin`).
pub fn limiter_slot(name: &str) -> u16 {
    LIMITER_NAMES.slot(name)
}

// --- The process's metrics --------------------------------------------------------------------

/// Every worker's shard, plus what a scrape reports about the process.
pub struct Metrics {
    cores: Box<[CoreMetrics]>,
    /// The I/O driver, set by the first worker that knows it.
    driver: std::sync::OnceLock<&'static str>,
}

impl Metrics {
    pub fn new(workers: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            cores: (0..workers.max(1)).map(|_| CoreMetrics::new()).collect(),
            driver: std::sync::OnceLock::new(),
        })
    }

    /// Records the I/O driver in use (the first call wins: every worker uses the same).
    pub fn set_driver(&self, driver: &'static str) {
        let _ = self.driver.set(driver);
    }

    /// Worker `index`'s shard (the last one for an index out of range).
    pub fn shard(self: &Arc<Self>, index: usize) -> Shard {
        Shard {
            index: index.min(self.cores.len() - 1),
            metrics: self.clone(),
        }
    }

    /// Writes every family, summed over the shards.
    pub fn render(&self, out: &mut String, gauges: &ProcessGauges) {
        let endpoints = ENDPOINT_NAMES.labels();
        let limiters = LIMITER_NAMES.labels();
        let sum = |f: &dyn Fn(&CoreMetrics) -> u64| -> u64 {
            self.cores.iter().fold(0u64, |a, c| a.wrapping_add(f(c)))
        };
        let sum_i = |f: &dyn Fn(&CoreMetrics) -> i64| -> i64 {
            self.cores.iter().fold(0i64, |a, c| a.wrapping_add(f(c)))
        };

        text::family(
            out,
            "sluice_io_driver",
            Kind::Gauge,
            "The I/O driver the workers run on (1 for the one in use).",
        );
        let driver = self.driver.get().copied().unwrap_or("starting");
        text::sample(out, "sluice_io_driver", &[("driver", driver)], 1);
        text::family(
            out,
            "sluice_workers",
            Kind::Gauge,
            "Worker threads (one runtime per core).",
        );
        text::sample(out, "sluice_workers", &[], self.cores.len() as u64);

        text::family(
            out,
            "sluice_requests_total",
            Kind::Counter,
            "Client requests answered, by endpoint and class of the status sent.",
        );
        let mut request_rows = endpoints.clone();
        request_rows.push((usize::from(NO_ENDPOINT), NO_ENDPOINT_LABEL.to_string()));
        for (slot, name) in &request_rows {
            for (c, class) in CLASSES.iter().enumerate() {
                let v = sum(&|m| m.requests[*slot][c].get());
                text::sample(
                    out,
                    "sluice_requests_total",
                    &[("endpoint", name), ("class", class)],
                    v,
                );
            }
        }

        text::family(
            out,
            "sluice_rejected_total",
            Kind::Counter,
            "Requests sluice refused itself, by reason (not forwarded).",
        );
        for (i, r) in Reject::ALL.iter().enumerate() {
            let v = sum(&|m| m.rejected[i].get());
            text::sample(out, "sluice_rejected_total", &[("reason", r.label())], v);
        }

        text::family(
            out,
            "sluice_upstream_attempts_total",
            Kind::Counter,
            "Upstream attempts, by endpoint and result (status class, 429, or the failure).",
        );
        for (slot, name) in &endpoints {
            for (i, result) in Attempt::LABELS.iter().enumerate() {
                let v = sum(&|m| m.attempts[*slot][i].get());
                text::sample(
                    out,
                    "sluice_upstream_attempts_total",
                    &[("endpoint", name), ("result", result)],
                    v,
                );
            }
        }

        text::family(
            out,
            "sluice_upstream_duration_seconds",
            Kind::Histogram,
            "Upstream attempt latency: request sent to response head (or failure).",
        );
        for (slot, name) in &endpoints {
            let mut h = HistogramSum::default();
            for m in self.cores.iter() {
                h.add(&m.upstream_seconds[*slot]);
            }
            h.write(
                out,
                "sluice_upstream_duration_seconds",
                &[("endpoint", name)],
            );
        }

        text::family(
            out,
            "sluice_retries_total",
            Kind::Counter,
            "Retries scheduled after a failed attempt, by endpoint.",
        );
        for (slot, name) in &endpoints {
            let v = sum(&|m| m.retries[*slot].get());
            text::sample(out, "sluice_retries_total", &[("endpoint", name)], v);
        }

        text::family(
            out,
            "sluice_ratelimit_wait_seconds",
            Kind::Histogram,
            "Time an attempt waited for a rate-limit slot, by limiter (0 when one was free).",
        );
        for (slot, name) in &limiters {
            let mut h = HistogramSum::default();
            for m in self.cores.iter() {
                h.add(&m.limiter_wait[*slot]);
            }
            h.write(out, "sluice_ratelimit_wait_seconds", &[("limiter", name)]);
        }
        text::family(
            out,
            "sluice_ratelimit_queue_depth",
            Kind::Gauge,
            "Attempts waiting for a rate-limit slot now, by limiter.",
        );
        for (slot, name) in &limiters {
            let v = sum_i(&|m| m.limiter_queue[*slot].get());
            text::sample_i64(out, "sluice_ratelimit_queue_depth", &[("limiter", name)], v);
        }

        text::family(
            out,
            "sluice_jobs_open",
            Kind::Gauge,
            "Jobs not finished: a client still waits (waiting) or got a 202 (deferred).",
        );
        let open = sum_i(&|m| m.jobs_open.get());
        let deferred_open = sum_i(&|m| m.jobs_deferred_open.get());
        text::sample_i64(
            out,
            "sluice_jobs_open",
            &[("state", "waiting")],
            open - deferred_open,
        );
        text::sample_i64(
            out,
            "sluice_jobs_open",
            &[("state", "deferred")],
            deferred_open,
        );
        text::family(
            out,
            "sluice_jobs_deferred_total",
            Kind::Counter,
            "Jobs whose client got 202 Accepted.",
        );
        text::sample(
            out,
            "sluice_jobs_deferred_total",
            &[],
            sum(&|m| m.jobs_deferred.get()),
        );
        text::family(
            out,
            "sluice_jobs_finished_total",
            Kind::Counter,
            "Jobs that reached a terminal state, by result.",
        );
        text::sample(
            out,
            "sluice_jobs_finished_total",
            &[("result", "succeeded")],
            sum(&|m| m.jobs_succeeded.get()),
        );
        text::sample(
            out,
            "sluice_jobs_finished_total",
            &[("result", "failed")],
            sum(&|m| m.jobs_failed.get()),
        );
        text::family(
            out,
            "sluice_jobs_tracked",
            Kind::Gauge,
            "Jobs in the status registry (open, and finished within their retention).",
        );
        text::sample(out, "sluice_jobs_tracked", &[], gauges.jobs_tracked);

        text::family(
            out,
            "sluice_callback_deliveries_total",
            Kind::Counter,
            "Callback delivery attempts, by result.",
        );
        for (i, c) in Callback::ALL.iter().enumerate() {
            let v = sum(&|m| m.callbacks[i].get());
            text::sample(
                out,
                "sluice_callback_deliveries_total",
                &[("result", c.label())],
                v,
            );
        }

        text::family(
            out,
            "sluice_client_connections_open",
            Kind::Gauge,
            "Client connections open now.",
        );
        text::sample_i64(
            out,
            "sluice_client_connections_open",
            &[],
            sum_i(&|m| m.connections_open.get()),
        );
        text::family(
            out,
            "sluice_client_connections_total",
            Kind::Counter,
            "Client connections accepted.",
        );
        text::sample(
            out,
            "sluice_client_connections_total",
            &[],
            sum(&|m| m.connections.get()),
        );
        text::family(
            out,
            "sluice_upstream_connections",
            Kind::Gauge,
            "Upstream connections open now: idle in the keep-alive pools, or active.",
        );
        let upstream_open = sum_i(&|m| m.upstream_open.get());
        let idle = sum_i(&|m| m.upstream_idle.get());
        text::sample_i64(
            out,
            "sluice_upstream_connections",
            &[("state", "idle")],
            idle,
        );
        text::sample_i64(
            out,
            "sluice_upstream_connections",
            &[("state", "active")],
            upstream_open - idle,
        );
        text::family(
            out,
            "sluice_upstream_connects_total",
            Kind::Counter,
            "Upstream connections opened.",
        );
        text::sample(
            out,
            "sluice_upstream_connects_total",
            &[],
            sum(&|m| m.upstream_connects.get()),
        );
        text::family(
            out,
            "sluice_log_lines_dropped_total",
            Kind::Counter,
            "Log lines dropped because the log writer fell behind.",
        );
        text::sample(
            out,
            "sluice_log_lines_dropped_total",
            &[],
            gauges.log_lines_dropped,
        );
    }
}

/// Values a scrape reads from elsewhere in the process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessGauges {
    pub jobs_tracked: u64,
    pub log_lines_dropped: u64,
}

/// A worker's handle on its shard (derefs to [`CoreMetrics`]).
#[derive(Clone)]
pub struct Shard {
    metrics: Arc<Metrics>,
    index: usize,
}

impl std::ops::Deref for Shard {
    type Target = CoreMetrics;

    #[inline]
    fn deref(&self) -> &CoreMetrics {
        &self.metrics.cores[self.index]
    }
}

/// Counts one open connection (client or upstream) in its shard while it lives.
pub struct Open {
    shard: std::rc::Rc<Shard>,
    upstream: bool,
}

impl Open {
    /// A client connection, counted until dropped.
    pub fn client(shard: &std::rc::Rc<Shard>) -> Open {
        shard.connection(1);
        Open {
            shard: shard.clone(),
            upstream: false,
        }
    }

    /// An upstream connection, counted until dropped.
    pub fn upstream(shard: &std::rc::Rc<Shard>) -> Open {
        shard.upstream_connection(1);
        Open {
            shard: shard.clone(),
            upstream: true,
        }
    }
}

impl Open {
    /// The shard this connection is counted in (for the worker's other counters).
    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.shard
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.upstream {
            self.shard.upstream_connection(-1);
        } else {
            self.shard.connection(-1);
        }
    }
}

impl Shard {
    /// A shard of its own, for parts built outside a server (tests, benches).
    pub fn detached() -> Shard {
        Metrics::new(1).shard(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn shards_sum_on_scrape() {
        let m = Metrics::new(2);
        m.set_driver("io_uring");
        let (a, b) = (m.shard(0), m.shard(1));
        let sign = endpoint_slot("/test-metrics/sign");
        a.request(sign, 200);
        b.request(sign, 204);
        b.request(sign, 502);
        a.request(NO_ENDPOINT, 404);
        a.rejected(Reject::NotAllowlisted);
        a.attempt(sign, Attempt::Status(429), Duration::from_millis(3));
        b.attempt(sign, Attempt::Timeout, Duration::from_secs(2));
        a.connection(1);
        b.connection(1);
        a.connection(-1);
        a.job_opened(false);
        a.job_deferred();
        b.job_opened(true);
        b.job_finished(true, true);
        let mut out = String::new();
        m.render(&mut out, &ProcessGauges::default());
        let ep = "endpoint=\"/test-metrics/sign\"";
        assert_eq!(
            value(
                &out,
                &format!("sluice_requests_total{{{ep},class=\"2xx\"}}")
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &out,
                &format!("sluice_requests_total{{{ep},class=\"5xx\"}}")
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &out,
                "sluice_requests_total{endpoint=\"(none)\",class=\"4xx\"}"
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&out, "sluice_rejected_total{reason=\"not_allowlisted\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &out,
                &format!("sluice_upstream_attempts_total{{{ep},result=\"429\"}}")
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &out,
                &format!("sluice_upstream_duration_seconds_bucket{{{ep},le=\"0.005\"}}")
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &out,
                &format!("sluice_upstream_duration_seconds_bucket{{{ep},le=\"2.5\"}}")
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &out,
                &format!("sluice_upstream_duration_seconds_sum{{{ep}}}")
            )
            .as_deref(),
            Some("2.003")
        );
        assert_eq!(
            value(&out, "sluice_client_connections_open").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&out, "sluice_client_connections_total").as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&out, "sluice_jobs_open{state=\"deferred\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&out, "sluice_jobs_open{state=\"waiting\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&out, "sluice_jobs_finished_total{result=\"succeeded\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&out, "sluice_io_driver{driver=\"io_uring\"}").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn histogram_buckets_take_their_upper_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(1_000)); // exactly 1 ms: the 1 ms bucket
        h.observe(Duration::from_micros(1_001));
        h.observe(Duration::from_secs(3_600)); // above every bound
        let mut sum = HistogramSum::default();
        sum.add(&h);
        assert_eq!(sum.buckets[0], 1);
        assert_eq!(sum.buckets[1], 1);
        assert_eq!(sum.buckets[BUCKETS_MICROS.len()], 1);
        assert_eq!(sum.count(), 3);
    }

    #[test]
    fn label_slots_are_stable_and_bounded() {
        let names = Names::new(4);
        assert_eq!(names.slot("a"), 0);
        assert_eq!(names.slot("b"), 1);
        assert_eq!(names.slot("a"), 0);
        assert_eq!(names.slot("c"), 2);
        // Slot 3 is the overflow slot: every further name shares it.
        assert_eq!(names.slot("d"), 3);
        assert_eq!(names.slot("e"), 3);
        let labels = names.labels();
        assert_eq!(
            labels.last().map(|(i, n)| (*i, n.as_str())),
            Some((3, "_other"))
        );
        assert_eq!(labels.len(), 4);
        assert_eq!(Names::new(4).labels(), vec![(3, "_other".to_string())]);
    }

    #[test]
    fn status_classes_and_attempt_results() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(202), 1);
        assert_eq!(class_index(304), 2);
        assert_eq!(class_index(429), 3);
        assert_eq!(class_index(504), 4);
        assert_eq!(Attempt::LABELS[Attempt::Status(429).index()], "429");
        assert_eq!(Attempt::LABELS[Attempt::Status(404).index()], "4xx");
        assert_eq!(Attempt::LABELS[Attempt::Status(503).index()], "5xx");
        assert_eq!(Attempt::LABELS[Attempt::Status(201).index()], "2xx");
        assert_eq!(
            Reject::from_code("payload_too_large"),
            Some(Reject::TooLarge)
        );
        assert_eq!(Reject::from_code("bad_gateway"), None);
    }
}
