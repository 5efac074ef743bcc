//! Process layout: one pinned thread per worker, each with its own monoio runtime (io_uring,
//! or epoll when io_uring is unavailable), its own `SO_REUSEPORT` listener and its own
//! [`worker::Worker`] state. Workers share nothing mutable: the kernel spreads connections over
//! the listeners, and each connection lives and dies on one core.
//!
//! Start-up order (all on the main thread, blocking calls allowed here and only here):
//! resolve the origin and build TLS (`upstream::Upstream::prepare`), refuse a port that another
//! process already listens on (a probe bind without `SO_REUSEPORT`: with it, Linux would let a
//! second process share the port silently), then start worker 0, learn the bound port (for
//! `-p 0`), start the others on the same port, and wait until every worker reports its
//! listener and driver.

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
/// Listen backlog per listener (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;
/// How often each worker closes pooled upstream connections that passed their idle timeout,
/// as a fraction of that timeout.
const POOL_SWEEPS_PER_IDLE_TIMEOUT: u32 = 4;
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
}

impl Server {
    /// Starts every worker and returns once all of them listen. Errors are one line.
    pub fn start(config: Arc<Config>, upstream: Arc<Upstream>) -> Result<Server, String> {
        let requested = SocketAddr::new(config.listen, config.port);
        if config.port != 0 {
            refuse_port_in_use(requested)?;
        }
        let shared = Arc::new(shared_state(config.clone(), upstream)?);
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
                .name(format!("sluice-worker-{id}"))
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
        })
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
    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
        crate::log::warn(format_args!("worker {id}: cannot pin to CPU {cpu}: {e}"));
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
        if id == 0 {
            monoio::spawn(sweep_jobs(worker.clone()));
        }
        accept_loop(worker, listener).await;
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
        .build()
}

/// Accepts connections forever. One `accept` future at a time, never dropped mid-flight
/// (monoio 0.2.4 can leak an accepted fd when an `accept` loses a cancellation race).
async fn accept_loop(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                spawn_guarded(crate::proxy::serve(worker.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
                crate::log::warn(format_args!("worker {}: accept failed: {e}", worker.id));
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Spawns a task on this worker whose panic closes only that task (see [`CatchUnwind`]).
pub fn spawn_guarded<F: Future<Output = ()> + 'static>(fut: F) {
    monoio::spawn(async move {
        if CatchUnwind(Box::pin(fut)).await.is_err() {
            crate::log::error(format_args!(
                "a connection task panicked; the connection was closed, the worker goes on"
            ));
        }
    });
}

/// Runs a future and turns a panic inside it into an `Err`, so that a bug triggered by one
/// connection closes that connection instead of taking the whole worker (and every other
/// connection on it) down. Requires `panic = "unwind"`, which the release profile sets.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

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
/// webhook sender (its threads start here, off the I/O threads).
fn shared_state(config: Arc<Config>, upstream: Arc<Upstream>) -> Result<Shared, String> {
    let ex = &config.executor;
    let limiters = crate::limit::Registry::new(
        config.allowlist.len(),
        ex.rate_limit,
        ex.rate_limit_algorithm,
        ex.rate_limit_scope,
        ex.rate_limit_margin,
        config.workers,
    );
    let registry = Arc::new(crate::jobs::registry::Registry::new(ex.job_retention));
    let report_registry = registry.clone();
    let report = Arc::new(move |report: crate::webhook::DeliveryReport| {
        crate::jobs::registry::record_delivery(&report_registry, &report);
    });
    let tls = crate::upstream::tls::client_config(config.ca_file.as_deref())?;
    let mut sender_config = crate::webhook::SenderConfig::new(Arc::new(tls));
    sender_config.secret = ex.webhook_secret.clone();
    sender_config.allow = ex.callback_allow.clone();
    sender_config.retry = ex.webhook_retry;
    sender_config.request_timeout = ex.webhook_timeout;
    let webhooks = crate::webhook::Sender::start(sender_config, report)
        .map_err(|e| format!("cannot start the webhook sender: {e}"))?;
    Ok(Shared {
        config: config.clone(),
        upstream,
        limiters: Arc::new(limiters),
        registry,
        webhooks: webhooks.handle(),
        sender: std::sync::Mutex::new(Some(webhooks)),
        open_jobs: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        epoch: std::time::Instant::now(),
        epoch_wall: std::time::SystemTime::now(),
    })
}

/// Removes finished deferred jobs past their retention time (one worker does it for all).
async fn sweep_jobs(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(JOB_SWEEP_INTERVAL).await;
        worker.registry.sweep(std::time::SystemTime::now());
    }
}

/// Periodically closes pooled upstream connections past their idle timeout.
async fn sweep_pool(worker: Rc<Worker>) {
    let every = worker.pool.borrow().idle_timeout() / POOL_SWEEPS_PER_IDLE_TIMEOUT;
    let every = every.max(std::time::Duration::from_millis(10));
    loop {
        monoio::time::sleep(every).await;
        worker.pool.borrow_mut().sweep(std::time::Instant::now());
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
