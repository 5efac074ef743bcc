//! Waiting for a rate-limit slot: one FIFO queue per limiter on each core.
//!
//! The limiters themselves (`crate::limit`) are shared by all cores and answer "yes" or "not
//! before time T" without blocking. This module turns that into a fair wait on one core: a
//! request that finds the limiter closed joins the back of its limiter's queue; only the
//! request at the front sleeps on a timer (until the time the limiter named), the others wait
//! to be woken by the one before them. Nothing polls: a waiter runs only when its timer fires
//! or the queue moves. Leaving the queue (cancellation, deadline) wakes the next waiter.
//!
//! Across cores the fronts of the per-core queues compete through the shared limiter; the
//! limiter keeps the total exact whatever the interleaving. Each queue also keeps this core's
//! [`Lease`] on its limiter: for large limits the limiter hands this core a small batch of
//! grants at once, which this core's requests then use without touching the other cores'
//! cache lines (grants a core leases and leaves unused go to the others after at most 1 ms).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::limit::{Lease, Registry as Limiters};
use crate::metrics::CoreMetrics;
use crate::timer::Timers;

struct Waiter {
    ticket: u64,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
    /// This core's lease on the queue's limiter.
    lease: Lease,
}

impl Queue {
    fn front_ticket(&self) -> Option<u64> {
        self.waiting.front().map(|w| w.ticket)
    }

    fn wake_front(&mut self) {
        if let Some(w) = self.waiting.front_mut() {
            if let Some(waker) = w.waker.take() {
                waker.wake();
            }
        }
    }

    fn remove(&mut self, ticket: u64) {
        if let Some(pos) = self.waiting.iter().position(|w| w.ticket == ticket) {
            self.waiting.remove(pos);
            if pos == 0 {
                self.wake_front();
            }
        }
    }
}

/// This core's wait queues, one per limiter.
pub struct SlotQueues {
    queues: RefCell<Vec<Queue>>,
}

/// Removes a ticket from its queue when the waiting future is dropped before it got a slot,
/// and counts it out of the queue-depth gauge either way.
struct TicketGuard<'a> {
    queues: &'a SlotQueues,
    limiter: usize,
    ticket: Option<u64>,
    metrics: &'a CoreMetrics,
    slot: u16,
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        self.metrics.limiter_queue(self.slot, -1);
        if let Some(ticket) = self.ticket {
            self.queues.queues.borrow_mut()[self.limiter].remove(ticket);
        }
    }
}

impl SlotQueues {
    pub fn new(limiters: usize) -> SlotQueues {
        SlotQueues {
            queues: RefCell::new((0..limiters).map(|_| Queue::default()).collect()),
        }
    }

    /// The earliest time (`>= now`) this core may get a slot of `limiter`: `now` while its
    /// lease on it has a grant left, else [`crate::limit::Limiter::next_free`].
    pub fn next_free(&self, limiters: &Limiters, limiter: usize, now: u64) -> u64 {
        let queue = self.ensure(limiters.queue(limiter));
        limiters
            .limiter(limiter)
            .next_free_leased(&self.queues.borrow()[queue].lease, now)
    }

    /// Requests waiting on this core in wait queue `queue` (see
    /// [`crate::limit::Registry::queue`]).
    pub fn depth(&self, queue: usize) -> usize {
        self.queues
            .borrow()
            .get(queue)
            .map_or(0, |q| q.waiting.len())
    }

    /// Makes sure wait queue `queue` exists (a reload may add limiters); returns `queue`.
    fn ensure(&self, queue: usize) -> usize {
        let mut queues = self.queues.borrow_mut();
        if queues.len() <= queue {
            queues.resize_with(queue + 1, Queue::default);
        }
        queue
    }

    /// Waits until `limiter` grants a send slot, in FIFO order with the other waiters of this
    /// core, and returns when it was granted on `timers`' clock: `now` (the caller's reading
    /// of that clock) when a slot is free at once, so the common case reads the clock once.
    /// Dropping the future leaves the queue. A wait is counted in `metrics`' queue depth of the
    /// limiter's label `slot` while it lasts.
    pub async fn acquire(
        &self,
        limiters: &Limiters,
        limiter: usize,
        timers: &Rc<Timers>,
        metrics: &CoreMetrics,
        slot: u16,
        now: u64,
    ) -> u64 {
        let lim = limiters.limiter(limiter);
        // From here on `limiter` is this core's queue of that limiter.
        let limiter = self.ensure(limiters.queue(limiter));
        // Fast path: nobody queued here and a slot is free.
        {
            let mut queues = self.queues.borrow_mut();
            let q = &mut queues[limiter];
            if q.waiting.is_empty() && lim.try_acquire_leased(&mut q.lease, now).is_ok() {
                return now;
            }
        }
        let ticket = {
            let mut queues = self.queues.borrow_mut();
            let q = &mut queues[limiter];
            let ticket = q.next_ticket;
            q.next_ticket = q.next_ticket.wrapping_add(1);
            q.waiting.push_back(Waiter {
                ticket,
                waker: None,
            });
            ticket
        };
        metrics.limiter_queue(slot, 1);
        let mut guard = TicketGuard {
            queues: self,
            limiter,
            ticket: Some(ticket),
            metrics,
            slot,
        };
        loop {
            // Wait to reach the front of the queue.
            poll_fn(|cx| {
                let mut queues = self.queues.borrow_mut();
                let q = &mut queues[limiter];
                if q.front_ticket() == Some(ticket) {
                    return Poll::Ready(());
                }
                if let Some(w) = q.waiting.iter_mut().find(|w| w.ticket == ticket) {
                    w.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            })
            .await;
            let now = timers.now();
            let granted = {
                let mut queues = self.queues.borrow_mut();
                lim.try_acquire_leased(&mut queues[limiter].lease, now)
            };
            match granted {
                Ok(()) => {
                    guard.ticket = None;
                    let mut queues = self.queues.borrow_mut();
                    let q = &mut queues[limiter];
                    q.waiting.pop_front();
                    q.wake_front();
                    return now;
                }
                Err(retry_at) => timers.sleep_until(retry_at).await,
            }
        }
    }
}
