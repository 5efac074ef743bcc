//! Per-core timers for async tasks: [`Timers`] lets a task sleep until a deadline with O(1)
//! insert and cancel, on one [`wheel::TimerWheel`] per worker thread driven by one monoio task.
//!
//! This module owns the async glue only: the wheel's data structure and its rules (tick
//! resolution, order, never early) live in [`wheel`], sans-IO. Time here is `u64` nanoseconds
//! since an epoch `Instant` given to [`Timers::new`], so deadlines are plain numbers that other
//! per-core state (job TTLs, retry times) can store and compare without holding `Instant`s.
//!
//! # How it runs
//! Each worker creates one `Rc<Timers>` and spawns [`Timers::run`] once on its runtime (which must
//! be built with `enable_timer()`). A [`Sleep`] inserts its waker slot into the wheel when
//! created; dropping it unlinks the slot (O(1)), so a timeout that did not fire costs nothing
//! later. The driver loops: advance the wheel to the current time, wake every task whose timer
//! fired, then sleep on one monoio timer until the wheel's next wake time, or park when the wheel
//! is empty. A task that inserts a timer earlier than the driver's sleep (or any timer while the
//! driver is parked) wakes the driver, which re-arms. So monoio's own timer wheel holds one entry
//! per core however many tasks sleep here.
//!
//! Why not `monoio::time::sleep` in every task: it works (its entries are intrusive too), but its
//! deadlines are `Instant`s at millisecond granularity and its future must be pinned. Deadlines
//! here are plain `u64`s on the same clock as the sans-IO state that computes them (job TTLs,
//! retry times), [`Sleep`] is `Unpin` (it can sit in a struct or state machine unpinned), and the
//! wheel's rules are tested without a runtime.

pub mod wheel;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use self::wheel::{InvalidTick, TimerKey, TimerWheel};

/// Default wheel resolution: timers fire less than 1 ms after their deadline, finer than any
/// timeout or backoff in the gateway needs.
pub const DEFAULT_TICK: Duration = Duration::from_millis(1);

/// Timers pre-allocated per core (the slab grows beyond this when needed, then stays).
const INITIAL_CAPACITY: usize = 1024;
/// Wakers one round of the driver holds before waking them, pre-allocated (16 bytes each;
/// the list grows beyond this when more fire at once, then stays).
const FIRED_CAPACITY: usize = 64;

/// What the wheel holds per timer: the waker of the task awaiting the [`Sleep`] (none before it
/// is first polled).
type Slot = Option<Waker>;

/// One core's timer service. Not `Send`: shared as `Rc<Timers>` among the tasks of one thread.
pub struct Timers {
    epoch: Instant,
    state: RefCell<State>,
    /// Whether a [`Timers::run`] driver is active (a second one returns at once).
    driving: Cell<bool>,
}

struct State {
    wheel: TimerWheel<Slot>,
    /// The driver's waker while it sleeps or parks.
    driver: Option<Waker>,
    /// When the driver will wake up by itself: `None` while parked (no timers) or not started.
    driver_until: Option<u64>,
    /// Set when an insert asked the driver to re-arm; cleared by the driver.
    rearm: bool,
}

impl Timers {
    /// A timer service whose clock counts from `epoch`, with `tick` resolution
    /// ([`DEFAULT_TICK`] in the gateway).
    ///
    /// # Panics
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds; [`Timers::try_new`] reports it.
    pub fn new(epoch: Instant, tick: Duration) -> Rc<Timers> {
        match Self::try_new(epoch, tick) {
            Ok(timers) => timers,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Timers::new`], reporting an invalid tick instead of panicking.
    pub fn try_new(epoch: Instant, tick: Duration) -> Result<Rc<Timers>, InvalidTick> {
        let now = nanos_since(epoch, Instant::now());
        let wheel = TimerWheel::try_with_capacity(tick, now, INITIAL_CAPACITY)?;
        Ok(Rc::new(Timers {
            epoch,
            state: RefCell::new(State {
                wheel,
                driver: None,
                driver_until: None,
                rearm: false,
            }),
            driving: Cell::new(false),
        }))
    }

    /// The epoch deadlines count from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds since the epoch (saturating after 584 years).
    pub fn now(&self) -> u64 {
        nanos_since(self.epoch, Instant::now())
    }

    /// Timers pending (sleeps created and neither fired nor dropped).
    pub fn pending(&self) -> usize {
        self.state.borrow().wheel.len()
    }

    /// A future that completes at or after `deadline` (nanoseconds since the epoch): less than
    /// one tick late when the driver runs on time, never early. Dropping it cancels the timer in
    /// O(1). A deadline already passed completes on first poll without touching the wheel.
    pub fn sleep_until(self: &Rc<Self>, deadline: u64) -> Sleep {
        if deadline <= self.now() {
            return Sleep {
                timers: Rc::clone(self),
                deadline,
                key: None,
            };
        }
        self.insert(deadline)
    }

    /// A sleep for a deadline known to be in the future (one clock read per sleep saved on
    /// the request path, where every read with a timeout makes one).
    fn insert(self: &Rc<Self>, deadline: u64) -> Sleep {
        let (key, driver) = {
            let mut state = self.state.borrow_mut();
            let key = state.wheel.insert(deadline, None);
            let wake = state.wheel.next_wake();
            let earlier = match (wake, state.driver_until) {
                (Some(wake), Some(until)) => wake < until,
                // Parked or not started: any timer needs the driver.
                _ => true,
            };
            let driver = if earlier && !state.rearm {
                state.rearm = true;
                state.driver.take()
            } else {
                None
            };
            (key, driver)
        };
        // Woken outside the borrow: wakers run arbitrary code on drop or wake.
        if let Some(driver) = driver {
            driver.wake();
        }
        Sleep {
            timers: Rc::clone(self),
            deadline,
            key: Some(key),
        }
    }

    /// [`Timers::sleep_until`] `duration` from now (saturating).
    pub fn sleep(self: &Rc<Self>, duration: Duration) -> Sleep {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return self.sleep_until(self.now());
        }
        // `now + nanos` is after `now` (or saturated, which is never due).
        self.insert(self.now().saturating_add(nanos))
    }

    /// The driver: spawn it once per core (`monoio::spawn(timers.clone().run())`); it never
    /// returns while it runs alone. A second concurrent call returns at once, so double spawning
    /// is harmless. Without a driver, sleeps still complete when something else polls them after
    /// their deadline, but nothing wakes them.
    pub async fn run(self: Rc<Self>) {
        if self.driving.replace(true) {
            return;
        }
        let _driving = DrivingGuard(&self.driving);
        // Reused across rounds: no allocation per fired timer in steady state. Sized up front
        // so that the first round in which several timers fire together (a worker's periodic
        // tasks meeting a connection's timeout) does not grow it in the middle of traffic.
        let mut fired: Vec<Waker> = Vec::with_capacity(FIRED_CAPACITY);
        loop {
            let now = self.now();
            let wake_at = {
                let mut state = self.state.borrow_mut();
                state.rearm = false;
                state.wheel.advance(now, &mut |_, slot| fired.extend(slot));
                let wake_at = state.wheel.next_wake();
                state.driver_until = wake_at;
                wake_at
            };
            for waker in fired.drain(..) {
                waker.wake();
            }
            // `None` (parked) when the wheel is empty or the wake time is beyond what `Instant`
            // can express.
            let sleep = wake_at
                .and_then(|at| self.epoch.checked_add(Duration::from_nanos(at)))
                .map(|at| monoio::time::sleep_until(monoio::time::Instant::from_std(at)));
            self.wait(sleep).await;
        }
    }

    /// Waits until `sleep` completes (if any) or an insert asks for a re-arm.
    async fn wait(&self, sleep: Option<monoio::time::Sleep>) {
        let mut sleep = pin!(sleep);
        std::future::poll_fn(|cx| {
            let replaced = {
                let mut state = self.state.borrow_mut();
                if state.rearm {
                    return Poll::Ready(());
                }
                match &state.driver {
                    Some(waker) if waker.will_wake(cx.waker()) => None,
                    _ => state.driver.replace(cx.waker().clone()),
                }
            };
            drop(replaced);
            match sleep.as_mut().as_pin_mut() {
                Some(sleep) => sleep.poll(cx),
                None => Poll::Pending,
            }
        })
        .await;
    }
}

/// Clears [`Timers::driving`] when the driver future ends or is dropped.
struct DrivingGuard<'a>(&'a Cell<bool>);

impl Drop for DrivingGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Nanoseconds from `epoch` to `at` (zero before the epoch, saturating after 584 years).
fn nanos_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Completes at or after its deadline; see [`Timers::sleep_until`]. Dropping it cancels the
/// timer.
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    timers: Rc<Timers>,
    deadline: u64,
    /// The wheel entry; `None` once completed (or when created already due).
    key: Option<TimerKey>,
}

impl Sleep {
    /// The deadline, in nanoseconds since the epoch.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }
}

/// `fut` bounded by a [`Sleep`]: `Some(output)` when `fut` completes first (it is polled
/// first, so an operation ready at the deadline still counts), `None` when the time runs out
/// (the caller then drops `fut`). Made by [`Timers::within`]; `Unpin` and small (the operation
/// stays where the caller pinned it), so a task that awaits an I/O timeout holds a pointer and
/// a timer key, not a second copy of the operation.
pub struct Within<'a, F> {
    fut: Pin<&'a mut F>,
    sleep: Sleep,
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut this.sleep).poll(cx).map(|()| None)
    }
}

impl Timers {
    /// Runs `fut` for at most `duration` (see [`Within`]).
    pub fn within<'a, F: Future>(
        self: &Rc<Self>,
        duration: Duration,
        fut: Pin<&'a mut F>,
    ) -> Within<'a, F> {
        Within {
            fut,
            sleep: self.sleep(duration),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(key) = this.key else {
            return Poll::Ready(());
        };
        // Due although the driver has not fired it yet: complete now and free the slot. With
        // a driver running, the driver fires it (within a tick), so the clock is not read on
        // every poll (each poll of a read with a timeout polls its sleep).
        let due = !this.timers.driving.get() && this.timers.now() >= this.deadline;
        let mut state = this.timers.state.borrow_mut();
        let replaced = match state.wheel.get_mut(key) {
            // Fired: the driver removed it.
            None => None,
            Some(_) if due => state.wheel.cancel(key),
            Some(slot) => {
                let replaced = match slot {
                    Some(waker) if waker.will_wake(cx.waker()) => None,
                    _ => slot.replace(cx.waker().clone()),
                };
                drop(state);
                drop(replaced);
                return Poll::Pending;
            }
        };
        drop(state);
        drop(replaced);
        this.key = None;
        Poll::Ready(())
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // The cancelled waker is dropped after the borrow ends.
            let slot = self.timers.state.borrow_mut().wheel.cancel(key);
            drop(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    /// Nanoseconds per millisecond.
    const MS: u64 = 1_000_000;
    /// Slack for a loaded CI machine: a sleep must complete well before this after its deadline.
    const LATE_LIMIT: Duration = Duration::from_millis(500);

    /// A bound on every async test, so that a driver that fails to wake fails the test instead of
    /// hanging it.
    const TEST_LIMIT: Duration = Duration::from_secs(10);

    fn block_on<F: Future>(future: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("a monoio runtime");
        rt.block_on(async {
            monoio::time::timeout(TEST_LIMIT, future)
                .await
                .expect("the test timed out")
        })
    }

    /// A service with its driver running on the current runtime.
    fn driven() -> Rc<Timers> {
        let timers = Timers::new(Instant::now(), DEFAULT_TICK);
        monoio::spawn(Rc::clone(&timers).run());
        timers
    }

    /// Counts wakes, to observe a timer firing without a task.
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn sleeps_complete_in_deadline_order_and_never_early() {
        block_on(async {
            let timers = driven();
            let start = timers.now();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for offset in [30, 10, 20, 10, 40] {
                let deadline = start + offset * MS;
                let sleep = timers.sleep_until(deadline);
                let (timers, order) = (Rc::clone(&timers), Rc::clone(&order));
                tasks.push(monoio::spawn(async move {
                    sleep.await;
                    order.borrow_mut().push(offset);
                    (deadline, timers.now())
                }));
            }
            assert_eq!(timers.pending(), 5);
            for task in tasks {
                let (deadline, woke) = task.await;
                assert!(woke >= deadline, "woke {} ns early", deadline - woke);
                assert!(Duration::from_nanos(woke - deadline) < LATE_LIMIT);
            }
            assert_eq!(*order.borrow(), vec![10, 10, 20, 30, 40]);
            assert_eq!(timers.pending(), 0);
        });
    }

    #[test]
    fn a_passed_deadline_is_ready_at_once() {
        block_on(async {
            let timers = Timers::new(Instant::now(), DEFAULT_TICK);
            // No driver needed.
            timers.sleep_until(0).await;
            assert_eq!(timers.pending(), 0);
        });
    }

    #[test]
    fn a_dropped_sleep_never_fires_and_frees_its_slot() {
        block_on(async {
            let timers = driven();
            let dropped = Arc::new(CountWakes(AtomicUsize::new(0)));
            let kept = Arc::new(CountWakes(AtomicUsize::new(0)));
            let mut a = timers.sleep(Duration::from_millis(20));
            let mut b = timers.sleep(Duration::from_millis(20));
            // Both polled once, so both wakers are in the wheel; then one is dropped, like a
            // timeout whose operation finished first.
            let waker = Waker::from(Arc::clone(&dropped));
            assert!(Pin::new(&mut a)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            let waker = Waker::from(Arc::clone(&kept));
            assert!(Pin::new(&mut b)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            assert_eq!(timers.pending(), 2);
            drop(a);
            assert_eq!(timers.pending(), 1);
            monoio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(dropped.0.load(Ordering::SeqCst), 0);
            assert_eq!(kept.0.load(Ordering::SeqCst), 1);
            assert_eq!(timers.pending(), 0);
            assert!(Pin::new(&mut b)
                .poll(&mut Context::from_waker(&waker))
                .is_ready());
            // The freed slot is reused.
            timers.sleep(Duration::from_millis(5)).await;
            assert_eq!(timers.pending(), 0);
        });
    }

    #[test]
    fn an_earlier_timer_wakes_a_parked_or_sleeping_driver() {
        block_on(async {
            let timers = driven();
            // Let the driver run and park on the empty wheel.
            monoio::time::sleep(Duration::from_millis(5)).await;
            let started = Instant::now();
            timers.sleep(Duration::from_millis(20)).await;
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(20) && took < LATE_LIMIT,
                "{took:?}"
            );

            // Now the driver sleeps for a long timer ...
            let long = monoio::spawn(timers.sleep(Duration::from_secs(10)));
            monoio::time::sleep(Duration::from_millis(5)).await;
            // ... and a short one must not wait for it. Polling the sleep after its deadline
            // would also complete it, so the bound is on the time taken, not on the timeout.
            let started = Instant::now();
            let short = timers.sleep(Duration::from_millis(20));
            let done = monoio::time::timeout(Duration::from_secs(2), short).await;
            let took = started.elapsed();
            assert!(done.is_ok());
            assert!(
                took >= Duration::from_millis(20) && took < LATE_LIMIT,
                "{took:?}"
            );
            assert_eq!(timers.pending(), 1, "the long timer is still pending");
            drop(long);
        });
    }

    #[test]
    fn a_second_driver_returns_at_once() {
        block_on(async {
            let timers = driven();
            monoio::time::sleep(Duration::from_millis(2)).await;
            let second = monoio::time::timeout(Duration::from_millis(200), timers.clone().run());
            assert!(second.await.is_ok());
            // The first one still drives.
            timers.sleep(Duration::from_millis(5)).await;
        });
    }

    #[test]
    fn rejects_a_zero_tick() {
        assert!(Timers::try_new(Instant::now(), Duration::ZERO).is_err());
    }
}
