//! The exact sliding-window limiter: never more than N grants in any window of length
//! `W = PERIOD + margin`, counted at the `now` each caller passed, summed over all threads.
//! Lock-free: a ring of N atomic slots and an atomic sequence counter; no allocation after `new`.
//!
//! # Design
//!
//! Grants are numbered 0, 1, 2, ... in the order they are made. Grant `k` lives in slot
//! `k % N` of the ring, replacing grant `k - N`, and may be made at `now` only if
//! `now >= r(k - N) + W`, where `r(j)` is the time recorded for grant `j` (the caller's `now`).
//! A slot is one `u64`: bit 63 is the parity of the lap (`k / N`) of the grant it holds, bits
//! 0..63 its recorded time in nanoseconds plus one (0: never used). Slot `i` starts as the
//! never-made grant `i - N` (lap -1, odd). `seq` is the number of the next grant. Granting:
//!
//! 1. Load `seq` (= k), slot `k % N` (`cur`), and `seq` again; if it moved, start over. If
//!    `cur` already holds grant `k` (lap parity of k), its taker has not advanced `seq` yet:
//!    help (CAS `seq` k -> k+1) and start over. Otherwise `cur` is grant `k - N`.
//! 2. If `now < r(k - N) + W`, refuse with that time: exact, as `cur` is grant `k - N`.
//! 3. CAS slot `k % N` from `cur` to (parity of k, `now`). Success *is* the grant (on failure
//!    another thread made grant `k`: start over); then CAS `seq` k -> k+1 (a helper may have).
//!
//! Taking the slot and publishing its time are one CAS, so no thread ever waits for another
//! to finish a store: a thread stalled anywhere delays nobody, and every retry means another
//! thread made progress (lock-free). A refusal is three loads; a grant adds two CASes.
//!
//! # Why it is exact
//!
//! *Each slot CAS replaces exactly grant `k - N`, and grants are made in order.* `seq` reaches
//! `k + 1` only after slot `k % N` holds grant `k` (its taker or a helper saw it there), and all
//! loads are Acquire and all CASes AcqRel, so a thread that loads `seq == k` finds every grant
//! `j < k` (or a later one) in slot `j % N`. If it loads `seq == k` both before and after loading slot `k % N`,
//! the slot held grant `k - N` or grant `k` in between (any later grant's taker loaded a larger
//! `seq` first, which the second load would then see), and the lap parity tells those two
//! apart: one bit is enough. The slot CAS then succeeds only if the slot still holds that exact
//! value, and a slot never holds a value twice: the next one has the other parity, every later
//! one a larger time (`r(k) >= r(k - N) + W`, `W >= 1 ms`). No ABA.
//!
//! *Any N + 1 grants span at least W.* Two of them share a slot (pigeonhole on `k % N`), say
//! grants `i < j`; along that slot's chain `i, i + N, ..., j` every grant was recorded at least
//! W after the one it replaced, so `r(j) >= r(i) + W`. Hence no half-open window `[s, s + W)`
//! holds more than N grants, and the upstream's `[s, s + PERIOD)` windows fewer still. Nothing
//! here assumes the callers' `now`s arrive in order: a thread that read the clock early and
//! calls late is judged against its own slot's predecessor.
//!
//! Restored grants ([`SlidingWindow::force`]) skip step 2 but are recorded at
//! `max(time, r(k - N) + W)`, so the chain rule, and with it the bound, holds for all recorded
//! times. For a restored history that itself respects the limit (what `recent_sends` returns,
//! sorted), recorded times equal the given ones; an impossible history is pushed later, which
//! only delays new grants.
//!
//! # Range
//!
//! Times are nanoseconds in 63 bits: 292 years from the epoch. `now` is clamped to that, so a
//! limiter past it refuses instead of wrapping (only restoring sends there could repeat a slot
//! value, 292 years on). `seq` would need 2^64 grants to wrap.

use std::num::NonZeroU32;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire},
};

use super::CachePadded;

/// Bit 63 of a slot: the parity of the lap (`k / N`) of the grant stored in it.
const LAP_BIT: u64 = 1 << 63;
/// Bits 0..63 of a slot: the grant's recorded time plus one; 0 means the slot was never used.
const TIME_MASK: u64 = LAP_BIT - 1;
/// The latest recordable time, 2^63 - 2 ns (about 292 years after the epoch).
const MAX_TIME: u64 = TIME_MASK - 1;
/// A slot before its first grant: the never-made grant of lap -1 (odd), no time.
const UNUSED: u64 = LAP_BIT;

/// A slot value for a grant of lap parity `odd` recorded at `time` (clamped to `MAX_TIME`).
fn pack(odd: bool, time: u64) -> u64 {
    let lap = if odd { LAP_BIT } else { 0 };
    // `MAX_TIME + 1 == TIME_MASK`: cannot overflow into the lap bit.
    lap | time.min(MAX_TIME).saturating_add(1)
}

/// The lap parity of the grant in a slot value.
fn is_odd(slot: u64) -> bool {
    slot & LAP_BIT != 0
}

/// The recorded time of the grant in a slot value; `None` if the slot was never used.
fn time_of(slot: u64) -> Option<u64> {
    (slot & TIME_MASK).checked_sub(1)
}

/// Exact sliding window over the last N grants.
pub(crate) struct SlidingWindow {
    /// Number of the next grant (grants made so far, give or take one not yet advanced).
    seq: CachePadded<AtomicU64>,
    /// Slot `k % N` holds grant `k` (or grant `k - N` until grant `k` is made).
    ring: Box<[AtomicU64]>,
    /// N, as the type `seq` is divided by.
    n: u64,
    /// PERIOD + margin in nanoseconds (saturated).
    window: u64,
}

/// A consistent look at the ring: `seq` was `k` before and after `cur` was loaded.
struct View<'a> {
    k: u64,
    slot: &'a AtomicU64,
    /// Lap parity of grant `k`.
    odd: bool,
    /// Slot `k % N`, holding grant `k - N`.
    cur: u64,
}

impl SlidingWindow {
    /// A window of `window` nanoseconds allowing `limit` grants; allocates `8 * limit` bytes.
    pub(crate) fn new(limit: NonZeroU32, window: u64) -> SlidingWindow {
        let n = limit.get();
        SlidingWindow {
            seq: CachePadded(AtomicU64::new(0)),
            ring: (0..n).map(|_| AtomicU64::new(UNUSED)).collect(),
            n: u64::from(n),
            // Never empty: slot times must strictly grow (see "No ABA"). Limiters pass >= 1 ms.
            window: window.max(1),
        }
    }

    /// The slot at ring position `pos` (`pos < N`, always: it is a remainder mod N).
    fn slot(&self, pos: u64) -> &AtomicU64 {
        let index = usize::try_from(pos).expect("a ring position fits usize: the ring does");
        &self.ring[index]
    }

    /// Advances `seq` past grant `k` if nobody has yet.
    fn advance(&self, k: u64) {
        // 2^64 grants (584 years at a billion a second) would saturate rather than wrap.
        let _ = self
            .seq
            .0
            .compare_exchange(k, k.saturating_add(1), AcqRel, Acquire);
    }

    /// Step 1 of the design: a consistent view of the next grant's slot, helping a grant whose
    /// taker has not advanced `seq` yet.
    fn view(&self) -> View<'_> {
        loop {
            let k = self.seq.0.load(Acquire);
            let pos = k % self.n;
            let odd = (k / self.n) % 2 == 1;
            let slot = self.slot(pos);
            let cur = slot.load(Acquire);
            if self.seq.0.load(Acquire) != k {
                continue;
            }
            if is_odd(cur) == odd {
                self.advance(k);
                continue;
            }
            return View { k, slot, odd, cur };
        }
    }

    /// Step 3: replaces grant `k - N` with grant `k` recorded at `stamp`; `false` if another
    /// thread made grant `k` first.
    fn claim(&self, view: &View<'_>, stamp: u64) -> bool {
        let won = view
            .slot
            .compare_exchange(view.cur, pack(view.odd, stamp), AcqRel, Acquire)
            .is_ok();
        if won {
            self.advance(view.k);
        }
        won
    }

    /// When grant `k` (whose slot holds `cur`) may be made: `None` if the slot is unused.
    fn free_at(&self, cur: u64) -> Option<u64> {
        time_of(cur).map(|last| last.saturating_add(self.window))
    }

    pub(crate) fn try_acquire(&self, now: u64) -> Result<(), u64> {
        let now = now.min(MAX_TIME);
        loop {
            let view = self.view();
            if let Some(free) = self.free_at(view.cur) {
                if now < free {
                    return Err(free);
                }
            }
            if self.claim(&view, now) {
                return Ok(());
            }
        }
    }

    pub(crate) fn next_free(&self, now: u64) -> u64 {
        self.free_at(self.view().cur)
            .map_or(now, |free| free.max(now))
    }

    /// Records a grant at `time` (or later, see the design) without refusing: restoring
    /// history.
    pub(crate) fn force(&self, time: u64) {
        let time = time.min(MAX_TIME);
        loop {
            let view = self.view();
            let stamp = self.free_at(view.cur).map_or(time, |free| free.max(time));
            if self.claim(&view, stamp) {
                return;
            }
        }
    }

    pub(crate) fn recent_sends(&self, now: u64) -> Vec<u64> {
        let now = now.min(MAX_TIME);
        let mut sends: Vec<u64> = self
            .ring
            .iter()
            .filter_map(|slot| time_of(slot.load(Acquire)))
            .filter(|&t| t.saturating_add(self.window) > now)
            .collect();
        sends.sort_unstable();
        sends
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_in_window, XorShift};
    use super::super::{Algorithm, Limiter, RateSpec};
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn window(limit: u32, window: u64) -> SlidingWindow {
        SlidingWindow::new(NonZeroU32::new(limit).unwrap(), window)
    }

    #[test]
    fn slot_packing_round_trips() {
        for odd in [false, true] {
            for t in [0, 1, 12_345, MAX_TIME - 1, MAX_TIME] {
                let v = pack(odd, t);
                assert_eq!(is_odd(v), odd);
                assert_eq!(time_of(v), Some(t));
            }
            assert_eq!(time_of(pack(odd, u64::MAX)), Some(MAX_TIME));
        }
        assert!(is_odd(UNUSED));
        assert_eq!(time_of(UNUSED), None);
    }

    #[test]
    fn n_sends_then_retry_at_first_send_plus_period_plus_margin() {
        let spec = RateSpec::parse("10/1m").unwrap();
        let l = Limiter::new(spec, Algorithm::SlidingWindow, spec.default_margin());
        let t0 = 5 * SEC;
        // The first send at t0, the others spread over the next 9 ms.
        for i in 0..10 {
            assert_eq!(l.try_acquire(t0 + i * MS), Ok(()), "send {i}");
        }
        let retry = t0 + 60 * SEC + SEC;
        assert_eq!(l.try_acquire(t0 + 9 * MS), Err(retry));
        assert_eq!(l.try_acquire(retry - 1), Err(retry));
        assert_eq!(l.next_free(t0), retry);
        assert_eq!(l.try_acquire(retry), Ok(()));
        // The window slid by one send: the next frees 1 ms later.
        assert_eq!(l.try_acquire(retry), Err(retry + MS));
    }

    #[test]
    fn all_at_one_instant() {
        let w = window(4, 100);
        for _ in 0..4 {
            assert_eq!(w.try_acquire(0), Ok(()));
        }
        assert_eq!(w.try_acquire(0), Err(100));
        assert_eq!(w.try_acquire(99), Err(100));
        for _ in 0..4 {
            assert_eq!(w.try_acquire(100), Ok(()));
        }
        assert_eq!(w.try_acquire(150), Err(200));
    }

    #[test]
    fn limit_of_one() {
        let w = window(1, 10);
        assert_eq!(w.try_acquire(3), Ok(()));
        assert_eq!(w.try_acquire(3), Err(13));
        assert_eq!(w.next_free(5), 13);
        assert_eq!(w.try_acquire(13), Ok(()));
        assert_eq!(w.try_acquire(22), Err(23));
    }

    #[test]
    fn next_free_takes_nothing() {
        let w = window(2, 10);
        for _ in 0..100 {
            assert_eq!(w.next_free(0), 0);
        }
        assert_eq!(w.try_acquire(0), Ok(()));
        assert_eq!(w.try_acquire(0), Ok(()));
        assert_eq!(w.next_free(4), 10);
        assert_eq!(w.next_free(30), 30);
    }

    /// A caller whose `now` is older than the last grant is judged against the grant its
    /// slot replaces, and recorded at its own time.
    #[test]
    fn out_of_order_nows_are_judged_per_slot() {
        let w = window(2, 10);
        assert_eq!(w.try_acquire(0), Ok(()));
        assert_eq!(w.try_acquire(50), Ok(()));
        assert_eq!(w.try_acquire(10), Ok(())); // replaces 0
        assert_eq!(w.try_acquire(59), Err(60)); // would replace 50
        assert_eq!(w.try_acquire(60), Ok(()));
        assert_eq!(w.try_acquire(15), Err(20)); // would replace 10
        assert_eq!(w.try_acquire(55), Ok(()));
        assert_eq!(w.recent_sends(60), vec![55, 60]);
        let mut granted = vec![0, 50, 10, 60, 55];
        granted.sort_unstable();
        assert_eq!(max_in_window(&granted, 10), 2);
    }

    /// A taker stalled between its slot CAS and its `seq` CAS holds nobody up: the next
    /// caller advances `seq` for it.
    #[test]
    fn a_stalled_taker_is_helped() {
        let w = window(2, 10);
        let view = w.view();
        assert!(view
            .slot
            .compare_exchange(view.cur, pack(view.odd, 0), AcqRel, Acquire)
            .is_ok());
        assert_eq!(w.seq.0.load(Acquire), 0);
        assert_eq!(w.try_acquire(1), Ok(()));
        assert_eq!(w.seq.0.load(Acquire), 2);
        assert_eq!(w.try_acquire(1), Err(10));
    }

    /// A caller stalled after looking at the ring cannot land its grant once others have
    /// moved on, not even a lap later when the slot's lap parity matches again.
    #[test]
    fn a_stalled_claimer_cannot_overwrite_later_grants() {
        let w = window(2, 10);
        let stale = w.view();
        assert_eq!(w.try_acquire(0), Ok(()));
        assert!(!w.claim(&stale, 0));
        for t in [0, 10, 10, 20] {
            assert_eq!(w.try_acquire(t), Ok(()));
        }
        // Slot 0 now holds grant 4: lap 2, even like grant 0 that `stale` was about to make.
        assert!(!w.claim(&stale, 20));
        assert_eq!(w.seq.0.load(Acquire), 5);
        assert_eq!(w.recent_sends(20), vec![20]);
    }

    /// Random attempts at non-decreasing times: never more than N in a window, and every
    /// refusal is necessary and names the exact time the oldest of the last N sends expires.
    #[test]
    fn random_monotone_schedule_is_exact_both_ways() {
        for (seed, n, win) in [
            (1, 1, 7 * MS),
            (2, 3, 50 * MS),
            (3, 10, 61 * SEC),
            (4, 97, MS),
        ] {
            let mut rng = XorShift::new(seed);
            let w = window(n, win);
            let n = usize::try_from(n).unwrap();
            let mut accepted: Vec<u64> = Vec::new();
            let mut now = rng.below(win);
            for _ in 0..20_000 {
                // Mostly small steps, sometimes a burst at one instant, sometimes a long gap.
                now += match rng.below(10) {
                    0..=2 => 0,
                    3..=8 => rng.below(3 * win / u64::try_from(n).unwrap() + 1),
                    _ => rng.below(3 * win),
                };
                match w.try_acquire(now) {
                    Ok(()) => accepted.push(now),
                    Err(retry) => {
                        assert!(retry > now);
                        let oldest_of_last_n = accepted[accepted.len() - n];
                        assert_eq!(retry, oldest_of_last_n + win, "seed {seed}");
                    }
                }
            }
            assert!(max_in_window(&accepted, win) <= n, "seed {seed}");
            assert!(accepted.len() > 1_000, "seed {seed}: {}", accepted.len());
        }
    }

    /// Attempts whose `now` jitters backwards (threads that read the clock early and call
    /// late): the granted times still never put more than N in a window.
    #[test]
    fn random_out_of_order_schedule_stays_within_the_limit() {
        for (seed, n, win) in [
            (11, 1, 10 * MS),
            (12, 2, 10 * MS),
            (13, 5, 30 * MS),
            (14, 64, MS),
        ] {
            let mut rng = XorShift::new(seed);
            let w = window(n, win);
            let mut accepted = Vec::new();
            let mut clock = 10 * win;
            for _ in 0..20_000 {
                clock += rng.below(win / u64::from(n) + 1);
                let now = clock - rng.below(win);
                if w.try_acquire(now).is_ok() {
                    accepted.push(now);
                }
            }
            accepted.sort_unstable();
            assert!(
                max_in_window(&accepted, win) <= usize::try_from(n).unwrap(),
                "seed {seed}"
            );
            assert!(accepted.len() > 100, "seed {seed}");
        }
    }

    /// Four threads hammer one limiter while one of them advances a shared fake clock: the
    /// union of granted times is exact, and no capacity is stranded.
    #[test]
    fn threads_share_one_exact_budget() {
        const THREADS: u64 = 4;
        const ATTEMPTS: usize = 100_000;
        /// Fake nanoseconds the clock thread advances per attempt.
        const STEP: u64 = 500;
        let (n, period, margin) = (32_u32, MS, 50_000);
        let spec = RateSpec::new(n, Duration::from_nanos(period)).unwrap();
        let limiter = Arc::new(Limiter::new(
            spec,
            Algorithm::SlidingWindow,
            Duration::from_nanos(margin),
        ));
        let clock = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(usize::try_from(THREADS).unwrap()));
        let handles: Vec<_> = (0..THREADS)
            .map(|id| {
                let (limiter, clock) = (limiter.clone(), clock.clone());
                let start = start.clone();
                std::thread::spawn(move || {
                    let mut granted = Vec::new();
                    let mut rng = XorShift::new(id + 1);
                    start.wait();
                    for _ in 0..ATTEMPTS {
                        // Thread 0 drives the clock; 1 reads it; 2 and 3 act as if they had
                        // read it up to a window ago (`now`s out of order).
                        let now = match id {
                            0 => clock.fetch_add(STEP, Relaxed) + STEP,
                            1 => clock.load(Relaxed),
                            _ => clock
                                .load(Relaxed)
                                .saturating_sub(rng.below(period + margin)),
                        };
                        if limiter.try_acquire(now).is_ok() {
                            granted.push(now);
                        }
                    }
                    granted
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        let n = usize::try_from(n).unwrap();
        let win = period + margin;
        assert!(max_in_window(&all, period) <= n);
        assert!(max_in_window(&all, win) <= n);
        // Demand never stops, so the ideal is N at 0, W, 2W, ... up to the last clock value.
        let end = clock.load(Relaxed);
        let ideal = n * usize::try_from(end / win + 1).unwrap();
        assert!(all.len() <= ideal, "{} > ideal {ideal}", all.len());
        assert!(
            all.len() + n >= ideal,
            "{} stranded (ideal {ideal})",
            ideal - all.len()
        );
    }

    #[test]
    fn restored_sends_count() {
        let w = window(3, 100);
        w.force(1_000);
        w.force(1_010);
        assert_eq!(w.try_acquire(1_020), Ok(()));
        assert_eq!(w.try_acquire(1_050), Err(1_100));
        assert_eq!(w.try_acquire(1_100), Ok(()));
        assert_eq!(w.recent_sends(1_100), vec![1_010, 1_020, 1_100]);
    }

    #[test]
    fn restoring_more_than_n_keeps_the_latest_n() {
        let l = Limiter::new(
            RateSpec::new(2, Duration::from_millis(10)).unwrap(),
            Algorithm::SlidingWindow,
            Duration::ZERO,
        );
        // A history the limit forbids (five sends in 4 ms) is recorded as if each send had
        // waited its turn: 1, 2, 11, 12 and 21 ms.
        l.restore_sends(&[5 * MS, MS, 3 * MS, 4 * MS, 2 * MS]);
        assert_eq!(l.recent_sends(5 * MS), vec![12 * MS, 21 * MS]);
        assert_eq!(l.try_acquire(6 * MS), Err(22 * MS));
        assert_eq!(l.try_acquire(22 * MS), Ok(()));
        // A history within the limit is recorded as given.
        let w = window(2, 10 * MS);
        for t in [MS, 2 * MS, 11 * MS, 15 * MS] {
            w.force(t);
        }
        assert_eq!(w.recent_sends(15 * MS), vec![11 * MS, 15 * MS]);
        // Restoring the same instant twice still takes two slots.
        let w = window(2, 10);
        w.force(7);
        w.force(7);
        assert_eq!(w.try_acquire(8), Err(17));
    }

    /// What one limiter persists, another restores: the restarted one grants nothing the
    /// first would not have.
    #[test]
    fn recent_sends_restore_into_a_new_limiter() {
        let mut rng = XorShift::new(99);
        let (n, win) = (5, 40 * MS);
        let before = window(n, win);
        let mut now = 0;
        for _ in 0..1_000 {
            now += rng.below(4 * MS);
            let _ = before.try_acquire(now);
        }
        let saved = before.recent_sends(now);
        assert!(!saved.is_empty() && saved.len() <= 5);
        assert!(saved.windows(2).all(|p| p[0] <= p[1]));
        let after = window(n, win);
        saved.iter().for_each(|&t| after.force(t));
        for _ in 0..1_000 {
            now += rng.below(4 * MS);
            assert_eq!(after.next_free(now), before.next_free(now));
            assert_eq!(after.try_acquire(now), before.try_acquire(now));
        }
    }

    #[test]
    fn recent_sends_drop_expired_sends() {
        let w = window(4, 100);
        for t in [0, 10, 20] {
            assert_eq!(w.try_acquire(t), Ok(()));
        }
        assert_eq!(w.recent_sends(20), vec![0, 10, 20]);
        assert_eq!(w.recent_sends(100), vec![10, 20]);
        assert_eq!(w.recent_sends(120), Vec::<u64>::new());
    }

    #[test]
    fn extreme_times_and_windows_refuse_instead_of_overflowing() {
        // A window that saturates u64 never frees a slot once used.
        let w = window(2, u64::MAX);
        assert_eq!(w.try_acquire(5), Ok(()));
        assert_eq!(w.try_acquire(5), Ok(()));
        assert_eq!(w.try_acquire(u64::MAX), Err(u64::MAX));
        assert_eq!(w.next_free(6), u64::MAX);
        // Past the recordable range, `now` is clamped: N grants, then refusals.
        let w = window(2, 10);
        assert_eq!(w.try_acquire(u64::MAX), Ok(()));
        assert_eq!(w.try_acquire(u64::MAX), Ok(()));
        assert_eq!(w.try_acquire(u64::MAX), Err(MAX_TIME + 10));
        assert_eq!(w.recent_sends(u64::MAX), vec![MAX_TIME, MAX_TIME]);
    }
}
