//! The token-bucket limiter as GCRA (the generic cell rate algorithm, as in the `governor`
//! crate): a burst of N, then one grant per emission interval `T = PERIOD / N`, on one atomic
//! `u64`. Lock-free (a CAS loop) and exact for what it promises.
//!
//! State: the theoretical arrival time `tat`, the time at which the bucket would be full again.
//! A grant at `now` moves it to `next = max(tat, now) + T` and is allowed iff
//! `next - now <= N * T` (at most N grants of debt). A refusal names the earliest time that
//! holds, `next - N * T`. `T` is rounded *up* to whole nanoseconds, so the rate is never above
//! N/PERIOD.
//!
//! Invariant: any interval of length L holds at most `N + L / T <= N + L * N / PERIOD` grants.
//! Proof: let the grants in `[a, a + L]` be 1..m in CAS order. Each raises `tat` by at least T
//! and the first leaves it at least `a + T`, so grant m leaves `tat >= a + m * T`; it was
//! allowed, so `a + m * T - (a + L) <= tat - now_m <= N * T`. No assumption on the order of the
//! `now`s: out-of-order callers are as safe as in-order ones.
//!
//! Unlike the sliding window, a token bucket lets up to 2N sends fall in one rolling PERIOD
//! (a full burst just before and after a refill), so it takes no safety margin.
//!
//! Not leased (the sliding window leases, see `sliding.rs`). GCRA's whole state is one time:
//! it keeps no record per grant that a lease's owner could later rewrite to the real send time,
//! so a leased grant would count at the lease time while it is sent up to a validity later. A
//! batch of m leased at `a` and sent at `a + d` next to a full burst made at `a + d` by another
//! core puts `N + m` sends in an instant the rule above allows only N: the invariant would
//! weaken by m per outstanding lease. Returning unused grants cannot repair that either (the
//! early accounting is what breaks it, not the unused grants). One CAS on one line is already
//! the cheapest shared grant (about half the sliding window's), so the bucket stays shared.

use std::num::NonZeroU32;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire},
};

use super::CachePadded;

/// GCRA over one atomic theoretical arrival time.
pub(crate) struct TokenBucket {
    /// Theoretical arrival time, nanoseconds since the epoch (0: full from the start).
    tat: CachePadded<AtomicU64>,
    /// Emission interval T: PERIOD / N nanoseconds, rounded up, at least 1.
    interval: u64,
    /// Burst tolerance N * T: how far `tat` may run ahead of `now`.
    tolerance: u64,
    /// N.
    limit: u64,
}

impl TokenBucket {
    /// A full bucket of `limit` grants refilling over `period` nanoseconds.
    pub(crate) fn new(limit: NonZeroU32, period: u64) -> TokenBucket {
        let n = u64::from(limit.get());
        let interval = period.div_ceil(n).max(1);
        TokenBucket {
            tat: CachePadded(AtomicU64::new(0)),
            interval,
            tolerance: interval.saturating_mul(n),
            limit: n,
        }
    }

    /// `tat` after one more grant from state `tat` at `now` (`None`: past `u64` time).
    fn after_grant(&self, tat: u64, now: u64) -> Option<u64> {
        tat.max(now).checked_add(self.interval)
    }

    pub(crate) fn try_acquire(&self, now: u64) -> Result<(), u64> {
        let mut tat = self.tat.0.load(Acquire);
        loop {
            let Some(next) = self.after_grant(tat, now) else {
                return Err(u64::MAX);
            };
            let earliest = next.saturating_sub(self.tolerance);
            if earliest > now {
                return Err(earliest);
            }
            match self.tat.0.compare_exchange_weak(tat, next, AcqRel, Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    pub(crate) fn next_free(&self, now: u64) -> u64 {
        match self.after_grant(self.tat.0.load(Acquire), now) {
            Some(next) => next.saturating_sub(self.tolerance).max(now),
            None => u64::MAX,
        }
    }

    /// Records a grant at `time` without checking the burst (restoring history).
    pub(crate) fn force(&self, time: u64) {
        let _ = self.tat.0.fetch_update(AcqRel, Acquire, |tat| {
            Some(tat.max(time).saturating_add(self.interval))
        });
    }

    /// The bucket's current debt as sends made at `now` (or, if `now` lags the bucket by more
    /// than a burst, at the earliest time that rebuilds it): forcing them into a full bucket
    /// gives a `tat` at least the current one (rounded up to a whole T). At most N.
    pub(crate) fn recent_sends(&self, now: u64) -> Vec<u64> {
        let tat = self.tat.0.load(Acquire);
        let at = now.max(tat.saturating_sub(self.tolerance));
        let debt = tat
            .saturating_sub(at)
            .div_ceil(self.interval)
            .min(self.limit);
        let count = usize::try_from(debt).unwrap_or(usize::MAX);
        vec![at; count]
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::XorShift;
    use super::super::{Algorithm, Limiter, RateSpec};
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn bucket(limit: u32, period: u64) -> TokenBucket {
        TokenBucket::new(NonZeroU32::new(limit).unwrap(), period)
    }

    /// Whether every closed interval between two grants of `sorted` holds at most
    /// `n + length * n / period` of them.
    fn within_rate(sorted: &[u64], n: u64, period: u64) -> bool {
        sorted.iter().enumerate().all(|(i, &start)| {
            sorted[i..].iter().enumerate().all(|(j, &end)| {
                let count = u128::try_from(j).unwrap() + 1;
                count * u128::from(period)
                    <= u128::from(n) * u128::from(period) + u128::from(end - start) * u128::from(n)
            })
        })
    }

    #[test]
    fn burst_of_n_then_one_per_interval() {
        let b = bucket(5, SEC);
        let t = 3 * SEC;
        for _ in 0..5 {
            assert_eq!(b.try_acquire(t), Ok(()));
        }
        let interval = SEC / 5;
        assert_eq!(b.try_acquire(t), Err(t + interval));
        assert_eq!(b.next_free(t), t + interval);
        assert_eq!(b.try_acquire(t + interval), Ok(()));
        assert_eq!(b.try_acquire(t + interval), Err(t + 2 * interval));
        // Half an interval later still nothing; a whole period later, a full burst again.
        assert_eq!(b.try_acquire(t + 2 * interval - 1), Err(t + 2 * interval));
        let later = t + interval + SEC;
        for _ in 0..5 {
            assert_eq!(b.try_acquire(later), Ok(()));
        }
        assert!(b.try_acquire(later).is_err());
    }

    #[test]
    fn interval_rounds_up() {
        let b = bucket(3, SEC);
        assert_eq!(b.interval, 333_333_334);
        // N above the period's nanoseconds: one grant per nanosecond, never faster.
        let b = bucket(10_000_000, MS);
        assert_eq!(b.interval, 1);
    }

    #[test]
    fn through_the_limiter() {
        let spec = RateSpec::parse("2/1s").unwrap();
        // The margin is ignored by the token bucket.
        let l = Limiter::new(spec, Algorithm::TokenBucket, Duration::from_secs(5));
        assert_eq!(l.try_acquire(0), Ok(()));
        assert_eq!(l.try_acquire(0), Ok(()));
        assert_eq!(l.try_acquire(0), Err(SEC / 2));
        assert_eq!(l.try_acquire(SEC / 2), Ok(()));
    }

    #[test]
    fn random_schedules_stay_within_burst_plus_rate() {
        for (seed, n, period, backwards) in [
            (21, 1, 10 * MS, 0),
            (22, 4, 100 * MS, 0),
            (23, 10, 60 * SEC, 0),
            (24, 3, 30 * MS, 30 * MS),
            (25, 50, MS, MS),
        ] {
            let mut rng = XorShift::new(seed);
            let b = bucket(n, period);
            let interval = period.div_ceil(u64::from(n));
            let mut accepted = Vec::new();
            let mut clock = 10 * period;
            for _ in 0..6_000 {
                clock += match rng.below(8) {
                    0..=2 => 0,
                    3..=6 => rng.below(2 * interval),
                    _ => rng.below(2 * period),
                };
                let now = clock - rng.below(backwards + 1);
                match b.try_acquire(now) {
                    Ok(()) => accepted.push(now),
                    Err(retry) => assert!(retry > now),
                }
            }
            accepted.sort_unstable();
            assert!(within_rate(&accepted, u64::from(n), period), "seed {seed}");
            assert!(accepted.len() > 1_000, "seed {seed}: {}", accepted.len());
        }
    }

    #[test]
    fn threads_share_one_bucket() {
        const THREADS: u64 = 4;
        const ATTEMPTS: usize = 50_000;
        /// Fake nanoseconds the clock thread advances per attempt.
        const STEP: u64 = 200;
        let (n, period) = (8, MS);
        let b = Arc::new(bucket(n, period));
        let clock = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(usize::try_from(THREADS).unwrap()));
        let handles: Vec<_> = (0..THREADS)
            .map(|id| {
                let (b, clock) = (b.clone(), clock.clone());
                let start = start.clone();
                std::thread::spawn(move || {
                    let mut granted = Vec::new();
                    start.wait();
                    for _ in 0..ATTEMPTS {
                        let now = if id == 0 {
                            clock.fetch_add(STEP, Relaxed) + STEP
                        } else {
                            clock.load(Relaxed)
                        };
                        if b.try_acquire(now).is_ok() {
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
        assert!(within_rate(&all, u64::from(n), period));
        // The ideal: a burst of N, then one per interval up to the last clock value.
        let end = clock.load(Relaxed);
        let ideal = u64::from(n) + end / (period / u64::from(n));
        let granted = u64::try_from(all.len()).unwrap();
        assert!(
            granted <= ideal && granted + u64::from(n) >= ideal,
            "{granted} vs {ideal}"
        );
    }

    #[test]
    fn recent_sends_rebuild_the_bucket() {
        let b = bucket(4, 400);
        assert_eq!(b.recent_sends(0), Vec::<u64>::new());
        for _ in 0..3 {
            assert_eq!(b.try_acquire(1_000), Ok(()));
        }
        // Debt 300 at 1000 = three sends; at 1150, 1.5 sends, rounded up to 2.
        assert_eq!(b.recent_sends(1_000), vec![1_000; 3]);
        assert_eq!(b.recent_sends(1_150), vec![1_150; 2]);
        for now in [1_000, 1_150, 1_299, 1_300, 2_000] {
            let restored = bucket(4, 400);
            b.recent_sends(now).iter().for_each(|&t| restored.force(t));
            assert!(restored.next_free(now) >= b.next_free(now), "at {now}");
            assert!(restored.tat.0.load(Relaxed) >= b.tat.0.load(Relaxed) || now >= 1_300);
        }
        // A caller far behind the bucket gets at most N sends, late enough to rebuild it.
        assert_eq!(b.recent_sends(0), vec![1_300 - 400; 4]);
    }

    #[test]
    fn restored_sends_count() {
        let l = Limiter::new(
            RateSpec::parse("3/3s").unwrap(),
            Algorithm::TokenBucket,
            Duration::ZERO,
        );
        l.restore_sends(&[SEC, SEC, SEC]);
        assert_eq!(l.try_acquire(SEC), Err(2 * SEC));
        assert_eq!(l.try_acquire(2 * SEC), Ok(()));
        assert_eq!(l.try_acquire(2 * SEC), Err(3 * SEC));
    }

    #[test]
    fn end_of_time_refuses() {
        let b = bucket(2, 10);
        assert_eq!(b.try_acquire(u64::MAX), Err(u64::MAX));
        assert_eq!(b.next_free(u64::MAX), u64::MAX);
        assert_eq!(b.try_acquire(u64::MAX - 10), Ok(()));
        b.force(u64::MAX);
        assert_eq!(b.try_acquire(u64::MAX - 5), Err(u64::MAX));
    }
}
