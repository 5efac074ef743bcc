//! Process layout: one pinned thread per worker, each with its own monoio runtime (io_uring,
//! or epoll when io_uring is unavailable), its own `SO_REUSEPORT` listener and its own
//! [`worker::Worker`] state. Workers share nothing mutable: the kernel spreads connections over
//! the listeners, and each connection lives and dies on one core.
//!
//! Start-up order (all on the main thread, blocking calls allowed here and only here):
//! resolve the origin and build TLS (`upstream::Upstream::prepare`), refuse a port that another
//! process already listens on (a probe bind without `SO_REUSEPORT`: with it, Linux would let a
//! second process share the port silently), open the store and read back the previous run
//! ([`recover`]: finished jobs into the registry, open jobs and pending deliveries shared out
//! to the workers, send history into the limiters), then start worker 0, learn the bound port
//! (for `-p 0`), start the others on the same port, and wait until every worker reports its
//! listener and driver. Each worker then resumes its share of the previous run.
//!
//! Shutdown ([`Server::shutdown`], on SIGTERM/SIGINT from `main`): see [`shutdown`].

pub mod shutdown;
pub mod signals;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use monoio::net::{ListenerOpts, TcpListener};
use monoio::time::TimeDriver;
use monoio::{FusionDriver, FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::Config;
use crate::upstream::Upstream;
use worker::{Shared, Worker};

/// io_uring submission queue entries per worker. Every pending socket read is an entry in
/// flight, so this bounds how many operations a worker can queue at once before submitting.
pub const URING_ENTRIES: u32 = 16 * 1024;
/// Accept operations each io_uring worker keeps in flight (see `accept_loop`).
pub const ACCEPTS_IN_FLIGHT: usize = 16;
/// Listen backlog per listener (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;
/// How often each worker closes pooled upstream connections that passed their idle timeout,
/// as a fraction of that timeout.
const POOL_SWEEPS_PER_IDLE_TIMEOUT: u32 = 4;
/// Threads of each worker's blocking pool (`monoio::spawn_blocking`). Only webhook host-name
/// lookups (`getaddrinfo` blocks) run there; deliveries are rare next to requests, and two let
/// one slow lookup not hold up the next.
pub const BLOCKING_THREADS: usize = 2;
/// Worker threads are named this plus their number (`sluice-worker-0`): it shows in `top -H`
/// and debuggers, and lets a test's counting allocator tell worker threads from its own
/// (`tests/zero_alloc.rs`). Short enough that Linux's 15-byte thread names keep the prefix.
pub const WORKER_THREAD_PREFIX: &str = "sluice-worker-";
/// How often finished jobs past their retention are removed from the registry.
const JOB_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The I/O driver a worker runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// The CPUs this process may run on (`sched_getaffinity`), e.g. as restricted by `taskset`,
/// cgroups cpusets or Docker's `--cpuset-cpus`. Falls back to `0..available_parallelism`.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is a plain bit array for which all-zero is a valid value, and
    // `sched_getaffinity` writes at most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `i` is below CPU_SETSIZE, the bit size of `set`.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
            .collect();
        if !cpus.is_empty() {
            return cpus;
        }
    }
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (0..n).collect()
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    pub driver: Driver,
    pub workers: usize,
    threads: Vec<JoinHandle<()>>,
    /// The job store, closed (flushed, marked clean) at shutdown.
    pub store: Option<crate::store::Store>,
    pub shared: Arc<Shared>,
    /// Workers report here when they drained.
    drained: mpsc::Receiver<usize>,
}

impl Server {
    /// Starts every worker and returns once all of them listen. Errors are one line.
    pub fn start(config: Arc<Config>, upstream: Arc<Upstream>) -> Result<Server, String> {
        let requested = SocketAddr::new(config.listen, config.port);
        if config.port != 0 {
            refuse_port_in_use(requested)?;
        }
        // The store first: a corrupt one stops start-up before anything listens.
        let (store, recovered, previous_run) = match &config.data_dir {
            Some(dir) => {
                let existed = dir.join(crate::store::DB_FILE).exists();
                let (store, recovered) = crate::store::Store::open(dir)?;
                (Some(store), recovered, existed)
            }
            None => (None, crate::store::Recovered::default(), false),
        };
        let handle = store.as_ref().map(|s| s.handle());
        let (drained_tx, drained) = mpsc::channel();
        let shared = Arc::new(shared_state(config.clone(), upstream, handle, drained_tx)?);
        recover(&shared, recovered, previous_run);
        let cpus = allowed_cpus();
        let (tx, rx) = mpsc::channel::<Result<(SocketAddr, Driver), String>>();
        let mut threads = Vec::with_capacity(config.workers);
        let mut bound = requested;
        let mut driver = Driver::Epoll;
        for id in 0..config.workers {
            let cpu = cpus[id % cpus.len()];
            let (shared, tx) = (shared.clone(), tx.clone());
            let addr = bound;
            let handle = std::thread::Builder::new()
                .name(format!("{WORKER_THREAD_PREFIX}{id}"))
                .spawn(move || run_worker(id, cpu, addr, shared, tx))
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
            threads.push(handle);
            // Wait for this worker's listener before starting the next: worker 0 decides the
            // port when `-p 0` asked for any.
            match rx.recv() {
                Ok(Ok((addr, d))) => {
                    bound = addr;
                    if id == 0 {
                        driver = d;
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a worker thread died during start-up".to_string()),
            }
        }
        Ok(Server {
            local_addr: bound,
            driver,
            workers: config.workers,
            threads,
            store,
            shared,
            drained,
        })
    }

    /// The graceful shutdown (see [`shutdown`]): signals every worker, waits until each has
    /// drained (bounded by `--shutdown-grace` plus a second), stores the final send history and
    /// closes the store. The worker threads are left to the process exit.
    pub fn shutdown(self) -> Result<(), String> {
        let Server {
            shared,
            store,
            drained,
            workers,
            ..
        } = self;
        shared.shutdown.trigger();
        let until = std::time::Instant::now()
            + shared.routes.current().config.shutdown_grace
            + std::time::Duration::from_secs(1);
        let mut left = workers;
        while left > 0 {
            let wait = until.saturating_duration_since(std::time::Instant::now());
            match drained.recv_timeout(wait) {
                Ok(_) => left -= 1,
                Err(_) => break,
            }
        }
        if left > 0 {
            crate::log::event(
                crate::log::Target::Server,
                crate::log::Level::Warn,
                format_args!(
                    "{left} workers did not drain in time; their open jobs are in the store"
                ),
            );
        }
        let Some(store) = store else {
            return Ok(());
        };
        // Every worker halted (no attempt starts any more): this history is complete.
        let now = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        store_sends(
            &shared.routes.current().limiters,
            now,
            unix_nanos(shared.epoch_wall),
            &store.handle(),
            None,
        );
        let path = store.path().display().to_string();
        store
            .close()
            .map_err(|e| format!("closing the store {path}: {e}"))
    }

    /// Blocks until every worker thread ends (they run until the process exits).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Fails when another socket already listens on `addr`. The probe binds without
/// `SO_REUSEPORT`, so any listener on the port (ours included) makes it fail.
fn refuse_port_in_use(addr: SocketAddr) -> Result<(), String> {
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "--port: {addr} is already in use by another process"
        )),
        Err(e) => Err(format!("--listen/--port: cannot listen on {addr}: {e}")),
    }
}

/// The body of one worker thread: pin, build the runtime, bind, report, serve forever.
fn run_worker(
    id: usize,
    cpu: usize,
    addr: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<(SocketAddr, Driver), String>>,
) {
    // This thread's log lines are batched and handed over by `flush_log` (never written here).
    crate::log::buffer_this_thread();
    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
        crate::log::event(
            crate::log::Target::Server,
            crate::log::Level::Warn,
            format_args!("worker {id}: cannot pin to CPU {cpu}: {e}"),
        );
    }
    let runtime = build_runtime(true).or_else(|_| build_runtime(false));
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(format!(
                "worker {id}: cannot build the I/O runtime: {e}"
            )));
            return;
        }
    };
    let driver = match &runtime {
        FusionRuntime::Uring(_) => Driver::IoUring,
        FusionRuntime::Legacy(_) => Driver::Epoll,
    };
    shared.metrics.set_driver(driver.as_str());
    runtime.block_on(async move {
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(LISTEN_BACKLOG);
        let listener = match TcpListener::bind_with_config(addr, &opts) {
            Ok(l) => l,
            Err(e) => {
                let msg = if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!("--port: {addr} is already in use by another process")
                } else {
                    format!("--listen/--port: cannot listen on {addr}: {e}")
                };
                let _ = tx.send(Err(msg));
                return;
            }
        };
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                let _ = tx.send(Err(format!("cannot read the listener address: {e}")));
                return;
            }
        };
        let _ = tx.send(Ok((local, driver)));
        drop(tx);
        let worker = Rc::new(Worker::new(id, &shared));
        monoio::spawn(worker.timers.clone().run());
        monoio::spawn(sweep_pool(worker.clone()));
        monoio::spawn(release_memory(worker.clone()));
        monoio::spawn(flush_log(worker.clone()));
        if shared.start_config.workers > 1 {
            monoio::spawn(crate::jobs::run::serve_remote_duplicates(worker.clone()));
        }
        let done = shared
            .drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        monoio::spawn(shutdown::drain_worker(worker.clone(), done));
        if let (0, Some(store)) = (id, shared.store.clone()) {
            monoio::spawn(snapshot_sends(worker.clone(), store));
        }
        // This worker's share of the previous run: jobs to resume, callbacks to deliver.
        let recovery = shared
            .recovered
            .get(id)
            .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default();
        for row in recovery.jobs {
            crate::jobs::run::resume(&worker, row);
        }
        for delivery in recovery.deliveries {
            let _ = worker.webhooks.submit(delivery);
        }
        if id == 0 {
            monoio::spawn(sweep_jobs(worker.clone()));
        }
        // io_uring completes one accept per pending operation and loop turn: with one in
        // flight, a burst of a thousand connections would wait for a thousand turns of a busy
        // worker (seconds). epoll's accept drains the backlog in one go without yielding.
        let listener = Rc::new(listener);
        let loops = match driver {
            Driver::IoUring => ACCEPTS_IN_FLIGHT,
            Driver::Epoll => 1,
        };
        for _ in 1..loops {
            monoio::spawn(accept_loop(worker.clone(), listener.clone()));
        }
        accept_loop(worker, listener).await;
        // Shutting down: the listener is closed; the runtime keeps running the connections,
        // jobs and the drain task until the process exits.
        std::future::pending::<()>().await;
    });
}

/// Builds this worker's runtime: io_uring when the kernel allows it (monoio probes once per
/// process; `MONOIO_FORCE_LEGACY_DRIVER=1` forces epoll), else epoll. With `coop`, the ring is
/// set up with `IORING_SETUP_COOP_TASKRUN` (Linux 5.19+): completions are processed when the
/// worker enters the kernel anyway, instead of interrupting it with an IPI for each one, which
/// a thread-per-core server never needs. Older kernels refuse the flag; the caller retries
/// without it.
fn build_runtime(
    coop: bool,
) -> std::io::Result<FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    if coop {
        urb.setup_coop_taskrun();
    }
    RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(
            BLOCKING_THREADS,
        )))
        .build()
}

/// Accepts connections until shutdown. One `accept` future at a time per loop, never dropped
/// mid-flight (monoio 0.2.4 can leak an accepted fd when an `accept` loses a cancellation race);
/// with io_uring, [`ACCEPTS_IN_FLIGHT`] loops share the listener.
async fn accept_loop(worker: Rc<Worker>, listener: Rc<TcpListener>) {
    // Raced with the worker's drain, which starts when the shutdown signal arrives: then the
    // pending accept is dropped (monoio may leak one fd then; the process is exiting) and the
    // listener closes. One watch for the whole loop: it keeps one waker slot, updated in place.
    let mut stop = worker.drain.watch();
    loop {
        let accepted = {
            let mut accept = std::pin::pin!(listener.accept());
            std::future::poll_fn(|cx| {
                if Pin::new(&mut stop).poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                accept.as_mut().poll(cx).map(Some)
            })
            .await
        };
        let Some(accepted) = accepted else {
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                spawn_guarded(crate::proxy::serve(worker.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
                crate::log::event(
                    crate::log::Target::Server,
                    crate::log::Level::Warn,
                    format_args!("worker {}: accept failed: {e}", worker.id),
                );
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Spawns a task on this worker whose panic closes only that task (see [`CatchUnwind`]).
pub fn spawn_guarded<F: Future<Output = ()> + 'static>(fut: F) {
    monoio::spawn(Guarded(fut));
}

/// The future of a [`spawn_guarded`] task: `F` inline (one allocation per task, the task's own,
/// and room for `F` once: an `async` block that captured `fut` and pinned it inside would hold
/// it twice), a panic caught and logged.
struct Guarded<F>(F);

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: structural pinning of the only field: `Guarded` never moves `F` out, has no
        // `Drop` impl, and is `Unpin` only when `F` is.
        let fut = unsafe { self.map_unchecked_mut(|g| &mut g.0) };
        match Pin::new(&mut CatchUnwind(fut)).poll(cx) {
            Poll::Ready(Err(())) => {
                crate::log::event(
                    crate::log::Target::Server,
                    crate::log::Level::Error,
                    format_args!(
                        "a connection task panicked; the connection was closed, the worker goes on"
                    ),
                );
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs a future and turns a panic inside it into an `Err`, so that a bug triggered by one
/// connection closes that connection instead of taking the whole worker (and every other
/// connection on it) down. Requires `panic = "unwind"`, which the release profile sets. Holds
/// the future behind any pinned pointer (`Pin<&mut F>` pinned in a task, or `Pin<Box<F>>`).
pub(crate) struct CatchUnwind<P>(pub(crate) Pin<P>);

impl<P> Future for CatchUnwind<P>
where
    P: std::ops::DerefMut<Target: Future> + Unpin,
{
    type Output = Result<<P::Target as Future>::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Builds the state all workers share: rate limiters, the deferred-job registry and the
/// webhook sender's configuration and report hook (each worker runs its own sender).
/// [`Server::start`] calls it; it is public so that `benches/jobs.rs` can build a real
/// [`Worker`] without starting threads.
pub fn shared_state(
    config: Arc<Config>,
    upstream: Arc<Upstream>,
    store: Option<crate::store::StoreHandle>,
    drained: mpsc::Sender<usize>,
) -> Result<Shared, String> {
    let ex = &config.executor;
    let routes = crate::routing::Routes::build(config.clone(), None)?;
    let registry = Arc::new(crate::jobs::registry::Registry::new());
    // The process clock starts one day in the past (less on a machine up for less than that), so
    // that send times restored from before a restart are still positive on it.
    let now = std::time::Instant::now();
    let back = [86_400u64, 3_600, 60, 1, 0]
        .into_iter()
        .map(std::time::Duration::from_secs)
        .find(|d| now.checked_sub(*d).is_some())
        .unwrap_or_default();
    let epoch = now.checked_sub(back).unwrap_or(now);
    let epoch_wall = std::time::SystemTime::now()
        .checked_sub(back)
        .unwrap_or_else(std::time::SystemTime::now);
    let report_registry = registry.clone();
    let report_store = store.clone();
    let report = Arc::new(move |report: crate::webhook::DeliveryReport| {
        crate::jobs::registry::record_delivery(&report_registry, &report);
        if let Some(store) = &report_store {
            record_delivery_in_store(store, &report);
        }
    });
    Ok(Shared {
        start_config: config.clone(),
        upstream,
        routes: Arc::new(worker::RoutesSlot::new(routes)),
        registry,
        webhook_report: report,
        open_jobs: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        open_keys: Arc::new(crate::jobs::crosscore::OpenKeys::new(
            config.workers,
            ex.max_inflight,
        )),
        store,
        shutdown: Arc::new(shutdown::ShutdownSignal::default()),
        drained: std::sync::Mutex::new(drained),
        recovered: (0..config.workers)
            .map(|_| std::sync::Mutex::new(Recovery::default()))
            .collect(),
        epoch,
        epoch_wall,
        metrics: crate::metrics::Metrics::new(config.workers),
    })
}

/// A delivery report in the store: a final one removes the delivery (and sets the job's
/// callback state), a retry stores the delivery's next attempt.
fn record_delivery_in_store(
    store: &crate::store::StoreHandle,
    report: &crate::webhook::DeliveryReport,
) {
    use crate::webhook::DeliveryOutcome;
    let Some(id) = crate::jobs::registry::JobId::parse(report.job_id.as_bytes()) else {
        return;
    };
    let op = match &report.outcome {
        DeliveryOutcome::Retrying { .. } => crate::store::Op::PutDelivery(
            crate::jobs::persist::delivery_to_row(&report.record, id.0),
        ),
        outcome => crate::store::Op::DeliveryDone {
            job_id: id.0,
            url: report.url.as_str().to_string(),
            callback_state: Some(match outcome {
                DeliveryOutcome::Delivered { .. } => crate::store::CallbackState::Delivered,
                DeliveryOutcome::GaveUp { reason, .. } | DeliveryOutcome::Rejected { reason } => {
                    crate::store::CallbackState::Failed(reason.clone())
                }
                DeliveryOutcome::Retrying { .. } => crate::store::CallbackState::Pending,
            }),
        },
    };
    let _ = store.submit(op);
}

/// How often worker 0 stores the limiters' send history and a heartbeat.
pub const SEND_SNAPSHOT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Puts the previous run's send history back into the limiters. After a crash, sends made
/// between the last stored snapshot and the crash are unknown: sluice assumes the worst, that
/// each window was filled up to its limit at the moment of the crash (the last heartbeat plus
/// two snapshot intervals; now, if the previous run died before its first heartbeat), so the
/// limit holds across the crash at the cost of up to one window of caution. After a clean
/// shutdown the stored history is exact.
fn restore_sends(
    shared: &Shared,
    sends: &[(String, Vec<u64>)],
    heartbeat: Option<u64>,
    crashed: bool,
) {
    let epoch_ns = unix_nanos(shared.epoch_wall);
    let now = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    // Process-clock nanoseconds of a unix time; before the epoch counts as the epoch (later
    // than it was: only more cautious).
    let local = |unix_ns: u64| unix_ns.saturating_sub(epoch_ns).min(now);
    let crash_at = crashed.then(|| match heartbeat {
        Some(ms) => local(
            ms.saturating_mul(1_000_000)
                .saturating_add(u64::try_from(SEND_SNAPSHOT_INTERVAL.as_nanos()).unwrap_or(0) * 2),
        ),
        None => now,
    });
    let routes = shared.routes.current();
    for i in 0..routes.limiters.len() {
        let limiter = routes.limiters.limiter(i);
        let name = routes.limiters.name(i);
        let mut times: Vec<u64> = sends
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.iter().map(|&u| local(u)).collect())
            .unwrap_or_default();
        if let Some(crash) = crash_at {
            let spec = limiter.spec();
            let window =
                u64::try_from((spec.period() + limiter.margin()).as_nanos()).unwrap_or(u64::MAX);
            let counted = times
                .iter()
                .filter(|&&t| t.saturating_add(window) > crash)
                .count();
            let limit = usize::try_from(spec.limit().get()).unwrap_or(usize::MAX);
            let unknown = limit.saturating_sub(counted);
            times.extend(std::iter::repeat_n(crash, unknown));
        }
        if !times.is_empty() {
            limiter.restore_sends(&times);
        }
    }
}

fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Worker 0's task: every [`SEND_SNAPSHOT_INTERVAL`], each limiter's recent sends and a
/// heartbeat go to the store (batched, not awaited).
async fn snapshot_sends(worker: Rc<Worker>, store: crate::store::StoreHandle) {
    let epoch_ns = unix_nanos(worker.system_time_at(0));
    loop {
        monoio::time::sleep(SEND_SNAPSHOT_INTERVAL).await;
        store_sends(
            &worker.routes().limiters,
            worker.timers.now(),
            epoch_ns,
            &store,
            Some(SNAPSHOT_MAX_LIMIT),
        );
    }
}

/// Limiters with a larger N are left out of the periodic snapshots: listing their sends costs
/// O(N) every interval (a `20000/1s` limit at full rate is 20,000 times 4 per second). They
/// lose nothing: after a crash, [`restore_sends`] assumes the window was full at the crash
/// anyway (one window of caution), and a clean shutdown stores their exact history.
pub const SNAPSHOT_MAX_LIMIT: u32 = 4096;

/// Submits the sends that still count at `now` (process clock) of every limiter (with an N up
/// to `max_limit`, if given), and a heartbeat.
fn store_sends(
    limiters: &crate::limit::Registry,
    now: u64,
    epoch_ns: u64,
    store: &crate::store::StoreHandle,
    max_limit: Option<u32>,
) {
    for i in 0..limiters.len() {
        if max_limit.is_some_and(|max| limiters.limiter(i).spec().limit().get() > max) {
            continue;
        }
        let sends_ns = limiters
            .limiter(i)
            .recent_sends(now)
            .into_iter()
            .map(|t| t.saturating_add(epoch_ns))
            .collect();
        let limiter = limiters.name(i).to_string();
        let _ = store.submit(crate::store::Op::SendHistory { limiter, sends_ns });
    }
    let at_ms = crate::jobs::persist::unix_ms(std::time::SystemTime::now());
    let _ = store.submit(crate::store::Op::Heartbeat { at_ms });
}

/// What one worker picks up at start from the previous run: jobs to resume, deliveries to send.
#[derive(Default)]
pub struct Recovery {
    pub jobs: Vec<crate::store::JobRow>,
    pub deliveries: Vec<crate::webhook::Delivery>,
}

/// Puts the previous run's state in place: every stored job in the registry (finished ones
/// for `/result`, open ones to be resumed), open jobs and pending deliveries spread over the
/// workers, and the limiters' send history (see [`restore_sends`]).
fn recover(shared: &Shared, recovered: crate::store::Recovered, previous_run: bool) {
    use crate::jobs::persist;
    use crate::jobs::registry::{JobId, JobState};
    let workers = shared.recovered.len().max(1);
    let (mut open, mut finished) = (0usize, 0usize);
    for row in recovered.jobs {
        let status = persist::status_from_row(row.status);
        let state = JobState {
            status,
            attempts: row.attempts,
            last_upstream_status: row.last_upstream_status,
            next_attempt_at: row.next_attempt_at_ms.map(persist::from_unix_ms),
            created_at: persist::from_unix_ms(row.created_at_ms),
            finished_at: row.finished_at_ms.map(persist::from_unix_ms),
            result: row.result.clone().map(persist::result_from_row),
            callback: persist::callback_from_row(&row.callback_state),
        };
        shared.registry.insert_with_id(JobId(row.id), state);
        if row.status.is_finished() {
            finished += 1;
            continue;
        }
        let at = open % workers;
        open += 1;
        if let Some(slot) = shared.recovered.get(at) {
            slot.lock()
                .unwrap_or_else(|p| p.into_inner())
                .jobs
                .push(row);
        }
    }
    let mut deliveries = 0usize;
    for row in recovered.deliveries {
        match persist::delivery_from_row(row) {
            Ok(d) => {
                let at = deliveries % workers;
                deliveries += 1;
                if let Some(slot) = shared.recovered.get(at) {
                    slot.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .deliveries
                        .push(d);
                }
            }
            Err(why) => crate::log::event(
                crate::log::Target::Store,
                crate::log::Level::Error,
                format_args!("stored delivery dropped: {why}"),
            ),
        }
    }
    // A previous run that did not close the store cleanly may have sent more than it stored.
    let crashed = previous_run && !recovered.clean_shutdown;
    restore_sends(
        shared,
        &recovered.sends,
        recovered.last_heartbeat_ms,
        crashed,
    );
    if open + finished + deliveries > 0 || crashed {
        crate::log::event(crate::log::Target::Store, crate::log::Level::Info, format_args!(
            "store: {open} open jobs resumed, {finished} finished jobs kept, {deliveries} callbacks to deliver{}",
            if crashed {
                " (the previous run did not shut down cleanly)"
            } else {
                ""
            }
        ));
    }
}

/// Removes finished deferred jobs past their retention time (one worker does it for all).
async fn sweep_jobs(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(JOB_SWEEP_INTERVAL).await;
        let now = std::time::SystemTime::now();
        let retention = worker.routes().config.executor.job_retention;
        worker.registry.sweep(now, retention);
        // The store forgets them too (a job whose callback is still pending stays until the
        // delivery settles): the data dir does not grow without bound.
        if let Some(store) = &worker.store {
            let before = now.checked_sub(retention).unwrap_or(std::time::UNIX_EPOCH);
            let finished_before_ms = crate::jobs::persist::unix_ms(before);
            let _ = store.submit(crate::store::Op::Sweep { finished_before_ms });
        }
    }
}

/// How often each worker looks whether it should hand freed memory back (see
/// [`release_memory`]).
const RELEASE_MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Connections parked since the last look that make it worth it: each freed a request task
/// and a read buffer (about 19 KiB).
const RELEASE_AFTER_PARKS: u64 = 256;

/// Hands memory freed by parked connections back to the operating system. A burst of
/// connections that then go idle leaves their request tasks' memory free inside the allocator,
/// where glibc keeps it resident; `malloc_trim` returns those pages (an madvise per free run,
/// no I/O; a few milliseconds at most, and only after a burst of parks). Other allocators
/// (musl) are left alone.
async fn release_memory(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(RELEASE_MEMORY_EVERY).await;
        if worker.parks.replace(0) >= RELEASE_AFTER_PARKS {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only walks glibc's own heaps under their locks; it takes no
            // pointer from us.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Hands this worker's buffered log lines to the logger thread every
/// [`crate::log::FLUSH_INTERVAL`], so a line is never held longer even when traffic stops (a
/// busy worker hands over sooner, by size). On the worker's own timer wheel: a sleep allocates
/// nothing, and an empty buffer costs one thread-local look.
async fn flush_log(worker: Rc<Worker>) {
    loop {
        worker.timers.sleep(crate::log::FLUSH_INTERVAL).await;
        crate::log::flush_thread();
    }
}

/// Periodically closes pooled upstream connections past their idle timeout.
async fn sweep_pool(worker: Rc<Worker>) {
    let every = worker.pool.borrow().idle_timeout() / POOL_SWEEPS_PER_IDLE_TIMEOUT;
    let every = every.max(std::time::Duration::from_millis(10));
    loop {
        monoio::time::sleep(every).await;
        {
            let mut pool = worker.pool.borrow_mut();
            pool.sweep(std::time::Instant::now());
            worker.metrics.upstream_idle(pool.idle_count());
        }
        // A core without traffic still takes up a reload (its webhook sender's settings, its
        // pool limits) within one sweep.
        drop(worker.routes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_does_not_stop_the_runtime() {
        let mut rt = RuntimeBuilder::<FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let bad = monoio::spawn(CatchUnwind(Box::pin(async { panic!("boom") })));
            let good = monoio::spawn(CatchUnwind(Box::pin(async { 7 })));
            let (bad, good): (Result<(), ()>, Result<i32, ()>) = (bad.await, good.await);
            assert!(bad.is_err());
            assert_eq!(good, Ok(7));
        });
    }

    #[test]
    fn allowed_cpus_is_not_empty() {
        assert!(!allowed_cpus().is_empty());
    }
}
