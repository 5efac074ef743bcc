//! Graceful shutdown: how a SIGTERM (or SIGINT) turns into every worker draining its
//! connections, and the process exiting with nothing promised lost.
//!
//! The sequence (driven by `main`, see [`crate::server::Server::shutdown`]):
//! 1. [`ShutdownSignal::trigger`] (any thread) sets the flag and wakes each worker's
//!    [`drain_worker`] task (monoio `sync` wakers).
//! 2. Each worker stops accepting, marks itself draining: a request parsed from now on is
//!    answered with `Connection: close`, and a connection waiting idle for its next request is
//!    closed at once ([`DrainWatch`]). Requests in flight go on: their client gets its answer,
//!    or its 202 at its own deadline (a 202 is only written once its job is stored).
//! 3. When its last connection is done, or `--shutdown-grace` has passed, the worker halts:
//!    no further upstream attempt starts (deferred jobs are in the store and resume after the
//!    restart), and it reports to `main`.
//! 4. `main` stores the limiters' final send history, closes the store (flush, clean-shutdown
//!    marker) and exits 0. A second signal exits at once with status 1; the store is
//!    crash-safe, so that loses nothing promised either (the next start treats it as a crash).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use super::worker::Worker;

/// The process-wide "shut down now" flag, with the wakers of the tasks waiting for it.
#[derive(Default)]
pub struct ShutdownSignal {
    started: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl ShutdownSignal {
    fn lock(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the shutdown (idempotent). Callable from any thread.
    pub fn trigger(&self) {
        self.started.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *self.lock());
        for w in waiters {
            w.wake();
        }
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Resolves once the shutdown started. Every pending poll adds a waker (the list is only
    /// emptied by [`ShutdownSignal::trigger`]): this is for a task that waits once, like
    /// [`drain_worker`]; a loop on a worker watches its [`Drain`] instead.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.started() {
                return Poll::Ready(());
            }
            let mut waiters = self.lock();
            // Checked again under the lock: a trigger in between has taken the list already.
            if self.started() {
                return Poll::Ready(());
            }
            waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A worker's drain state: whether it drains, and the idle connections to close when it
/// starts.
#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    /// Set when the worker halted: no new upstream attempt may start.
    halted: Cell<bool>,
    idle: RefCell<Slab<Option<Waker>>>,
    /// Client connections open on this worker.
    connections: Cell<usize>,
}

impl Drain {
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    pub fn halted(&self) -> bool {
        self.halted.get()
    }

    fn start(&self) {
        self.draining.set(true);
        for (_, waker) in self.idle.borrow_mut().iter_mut() {
            if let Some(w) = waker.take() {
                w.wake();
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Counts an open client connection until the guard drops.
    pub fn connection(self: &Rc<Self>) -> ConnectionGuard {
        self.connections.set(self.connections.get() + 1);
        ConnectionGuard(self.clone())
    }

    /// A future that resolves when the worker starts draining (for an idle connection).
    pub fn watch(self: &Rc<Self>) -> DrainWatch {
        DrainWatch {
            drain: self.clone(),
            key: None,
        }
    }
}

/// One open client connection (see [`Drain::connection`]).
pub struct ConnectionGuard(Rc<Drain>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let n = self.0.connections.get();
        self.0.connections.set(n.saturating_sub(1));
    }
}

/// Resolves when its worker starts draining; unregisters itself when dropped.
pub struct DrainWatch {
    drain: Rc<Drain>,
    key: Option<usize>,
}

impl Future for DrainWatch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.draining() {
            return Poll::Ready(());
        }
        let waker = Some(cx.waker().clone());
        match self.key {
            Some(key) => {
                if let Some(slot) = self.drain.idle.borrow_mut().get_mut(key) {
                    *slot = waker;
                }
            }
            None => {
                let key = self.drain.idle.borrow_mut().insert(waker);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut idle = self.drain.idle.borrow_mut();
            if idle.contains(key) {
                idle.remove(key);
            }
        }
    }
}

/// How often a draining worker looks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A worker's shutdown task: waits for the signal, drains, halts, reports `id` on `done`.
pub async fn drain_worker(worker: Rc<Worker>, done: std::sync::mpsc::Sender<usize>) {
    worker.shutdown.wait().await;
    worker.drain.start();
    let until = Instant::now() + worker.routes().config.shutdown_grace;
    while worker.drain.connections() > 0 && Instant::now() < until {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    worker.drain.halted.set(true);
    let _ = done.send(worker.id);
}
