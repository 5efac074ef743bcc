//! Upstream rate limiting shared by every worker thread: the process [`Clock`] (nanoseconds
//! since one epoch), the [`Limiter`] that grants send slots, its settings ([`RateSpec`],
//! [`Algorithm`], [`Scope`]), the per-core [`Lease`] a worker keeps on each limiter, and the
//! [`Registry`] that maps endpoints to limiters.
//!
//! A limiter is `Send + Sync` and used through an `Arc` by all cores at once: no locks, no
//! allocation per check, one budget for all cores (never split N ways: an idle core strands
//! nothing beyond a lease's short validity). Two algorithms:
//!
//! - `sliding-window` (`sliding.rs`): exact. In no rolling PERIOD + margin are more than N sends
//!   granted, counted at the `now` of the caller that sends, summed over all threads, whatever
//!   the interleaving. A ring of the last N send times; a grant is one CAS on a ring slot plus
//!   one CAS on a sequence counter. For large limits a worker leases a few ring slots in one
//!   trip and then sends from them with one CAS on a slot no other core is using
//!   ([`Limiter::try_acquire_leased`]); small limits (such as the default `10/1m`) never lease.
//! - `token-bucket` (`bucket.rs`): GCRA on one atomic; a burst of N, then N per PERIOD. Not
//!   leased: GCRA's state is one time, not per-grant records, so it cannot count a leased grant
//!   at the time it is really sent (see `bucket.rs`). One CAS is already cheap.
//!
//! Time is passed in (`now`: nanoseconds since the [`Clock`]'s epoch) so that tests and benches
//! drive it without sleeping. `now` need not be monotonic across threads: a thread that read
//! the clock a moment before another may call later; both algorithms stay exact.
//!
//! Not here: waiting (callers queue and sleep until [`Limiter::try_acquire`]'s or
//! [`Limiter::next_free`]'s time, and keep their [`Lease`]s, see `crate::jobs::slots`), flags
//! (`crate::config`), and writing send times to disk (the caller persists
//! [`Limiter::recent_sends`]).

#![forbid(unsafe_code)]

mod bucket;
mod registry;
mod sliding;
mod spec;

pub use registry::{Registry, ORIGIN_LIMITER};
pub use sliding::Lease;
pub use spec::{
    Algorithm, RateSpec, Scope, DEFAULT_RATE_LIMIT, MAX_DEFAULT_MARGIN, MAX_LIMIT, MAX_PERIOD,
    MIN_PERIOD,
};

use std::fmt;
use std::time::{Duration, Instant};

use bucket::TokenBucket;
use sliding::SlidingWindow;

/// How far [`Clock::instant_at`] reaches when the exact instant is not representable (only for
/// "never" times near `u64::MAX` nanoseconds): far beyond any process lifetime.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The process-wide time base of every limiter: nanoseconds since `epoch`. Create one at
/// start-up and copy it to every worker, so all threads count from the same zero.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Clock {
        Clock::with_epoch(Instant::now())
    }

    /// A clock whose zero is `epoch`.
    pub fn with_epoch(epoch: Instant) -> Clock {
        Clock { epoch }
    }

    /// The zero instant.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds since the epoch (u64 lasts 584 years).
    pub fn now_nanos(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// `at` as nanoseconds since the epoch; instants before the epoch are 0.
    pub fn nanos_at(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// The instant `nanos` after the epoch (for timers). A time too far ahead for `Instant`
    /// (a limiter's "never", `u64::MAX`) becomes 100 years after the epoch.
    pub fn instant_at(&self, nanos: u64) -> Instant {
        let epoch = self.epoch;
        epoch
            .checked_add(Duration::from_nanos(nanos))
            .or_else(|| epoch.checked_add(FAR_FUTURE))
            .unwrap_or(epoch)
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Keeps a hot atomic on its own cache line(s) so that threads CAS-ing it do not also evict
/// the read-only fields next to it. 128 bytes: x86 prefetches lines in pairs, and Apple and
/// some Arm cores have 128-byte lines.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct CachePadded<T>(pub(crate) T);

/// One shared rate limiter. `Send + Sync`; share it with an `Arc`.
pub struct Limiter {
    spec: RateSpec,
    algorithm: Algorithm,
    margin: Duration,
    inner: Inner,
}

enum Inner {
    Sliding(SlidingWindow),
    Bucket(TokenBucket),
}

impl Limiter {
    /// A limiter with no sends yet that never leases (as if one worker used it): every grant
    /// goes through the shared state. `margin` widens the sliding window (the window is
    /// PERIOD + margin); the token bucket ignores it (it promises a rate, not a window).
    /// A sliding window allocates 8 bytes per unit of `spec.limit()` (80 MB at [`MAX_LIMIT`]).
    pub fn new(spec: RateSpec, algorithm: Algorithm, margin: Duration) -> Limiter {
        Limiter::with_workers(spec, algorithm, margin, 1)
    }

    /// [`Limiter::new`] for `workers` cores that each keep a [`Lease`] on it: a sliding window
    /// with a large enough limit leases grants in small batches to whoever holds one (see
    /// [`Limiter::lease_size`]); the board of lease records takes 128 bytes per worker.
    pub fn with_workers(
        spec: RateSpec,
        algorithm: Algorithm,
        margin: Duration,
        workers: usize,
    ) -> Limiter {
        let inner = match algorithm {
            Algorithm::SlidingWindow => Inner::Sliding(SlidingWindow::new(
                spec.limit(),
                nanos(spec.period()).saturating_add(nanos(margin)),
                workers,
            )),
            Algorithm::TokenBucket => {
                Inner::Bucket(TokenBucket::new(spec.limit(), nanos(spec.period())))
            }
        };
        Limiter {
            spec,
            algorithm,
            margin,
            inner,
        }
    }

    /// Takes one send slot at `now`, or says when to try again: `Err(t)` with `t > now`, the
    /// earliest time a slot can be free as far as this limiter knows (`u64::MAX`: never).
    /// Another thread may take that slot first; try again then.
    #[inline]
    pub fn try_acquire(&self, now: u64) -> Result<(), u64> {
        match &self.inner {
            Inner::Sliding(w) => w.try_acquire(now),
            Inner::Bucket(b) => b.try_acquire(now),
        }
    }

    /// [`Limiter::try_acquire`] for a caller that keeps `lease` on this limiter (one per core
    /// and limiter): sends from the lease if it has a grant left, else takes a new lease (a
    /// batch of up to [`Limiter::lease_size`] grants, this call's among them, sized to what
    /// this caller sends in one validity) from the shared state.
    /// The same exactness: a leased grant counts as a send only once used, at the `now` of the
    /// call that uses it, and occupies its place until then or until another core takes it
    /// over after a short validity (at most 1 ms). A limiter that does not lease (token
    /// bucket, small limits, one worker) treats this as `try_acquire`.
    #[inline]
    pub fn try_acquire_leased(&self, lease: &mut Lease, now: u64) -> Result<(), u64> {
        match &self.inner {
            Inner::Sliding(w) => w.try_acquire_leased(lease, now),
            Inner::Bucket(b) => b.try_acquire(now),
        }
    }

    /// The earliest time (`>= now`) a slot may be free, without taking one: `now` when one is
    /// free now. For wait queues. Grants leased by other cores count as taken until they are
    /// used or their validity ends.
    pub fn next_free(&self, now: u64) -> u64 {
        match &self.inner {
            Inner::Sliding(w) => w.next_free(now),
            Inner::Bucket(b) => b.next_free(now),
        }
    }

    /// [`Limiter::next_free`] for the holder of `lease`: `now` while its lease can send now.
    pub fn next_free_leased(&self, lease: &Lease, now: u64) -> u64 {
        match &self.inner {
            Inner::Sliding(w) => w.next_free_leased(lease, now),
            Inner::Bucket(b) => b.next_free(now),
        }
    }

    /// Grants per lease: 1 when this limiter does not lease (token bucket; a sliding window
    /// with one worker, or a limit too small for a batch to be a small share of it).
    pub fn lease_size(&self) -> u32 {
        match &self.inner {
            Inner::Sliding(w) => u32::try_from(w.lease_size()).unwrap_or(u32::MAX),
            Inner::Bucket(_) => 1,
        }
    }

    /// The limit this limiter enforces.
    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// The algorithm enforcing it.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The safety margin it was built with (used by the sliding window only).
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Send times (nanoseconds, ascending) that still count against the limit at `now`, to
    /// persist across a restart. Sliding window: each send less than PERIOD + margin before
    /// `now`, at the time it was sent at (or recorded at, for restored ones); leased grants not
    /// used yet are not sends and are left out.
    /// Token bucket: at most N equivalent send times that rebuild the bucket's current state.
    /// A snapshot: sends granted while it is taken may or may not appear.
    pub fn recent_sends(&self, now: u64) -> Vec<u64> {
        match &self.inner {
            Inner::Sliding(w) => w.recent_sends(now),
            Inner::Bucket(b) => b.recent_sends(now),
        }
    }

    /// Counts `sends` (nanoseconds on this process's clock, any order) as granted, without
    /// checking them against the limit, so that sends made before a restart keep counting
    /// and the restarted process cannot exceed the limit. Meant for start-up, before traffic;
    /// safe (though it may only delay later grants) at any time.
    pub fn restore_sends(&self, sends: &[u64]) {
        let mut sorted = sends.to_vec();
        sorted.sort_unstable();
        match &self.inner {
            Inner::Sliding(w) => sorted.iter().for_each(|&t| w.force(t)),
            Inner::Bucket(b) => sorted.iter().for_each(|&t| b.force(t)),
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("spec", &self.spec.to_string())
            .field("algorithm", &self.algorithm)
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}

/// Helpers shared by the limiter tests: a seeded PRNG (no crates) and the invariant checks.
#[cfg(test)]
pub(crate) mod testing {
    /// xorshift64*: deterministic, good enough to scatter attempt times.
    pub(crate) struct XorShift(u64);

    impl XorShift {
        pub(crate) fn new(seed: u64) -> XorShift {
            XorShift(seed.max(1))
        }

        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform-ish in `0..bound` (`bound > 0`).
        pub(crate) fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// The most sends of `sorted` (ascending) inside any half-open window `[t, t + len)` that
    /// starts at a send (the busiest window always starts at one).
    pub(crate) fn max_in_window(sorted: &[u64], len: u64) -> usize {
        let mut best = 0;
        let mut end = 0;
        for (start, &t) in sorted.iter().enumerate() {
            let limit = t.saturating_add(len);
            end = end.max(start);
            while end < sorted.len() && sorted[end] < limit {
                end += 1;
            }
            best = best.max(end - start);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn limiters_are_shareable_across_threads() {
        assert_send_sync::<Limiter>();
        assert_send_sync::<Registry>();
        assert_send_sync::<Arc<Limiter>>();
    }

    #[test]
    fn clock_counts_from_its_epoch() {
        let epoch = Instant::now();
        let clock = Clock::with_epoch(epoch);
        let at = epoch + Duration::from_millis(1500);
        assert_eq!(clock.nanos_at(at), 1_500_000_000);
        assert_eq!(clock.instant_at(1_500_000_000), at);
        assert_eq!(clock.nanos_at(clock.instant_at(42)), 42);
        assert_eq!(clock.epoch(), epoch);
        // Before the epoch is the epoch; "never" is far away but representable.
        assert_eq!(Clock::with_epoch(at).nanos_at(epoch), 0);
        assert!(clock.instant_at(u64::MAX) > at);
        let a = clock.now_nanos();
        let b = clock.now_nanos();
        assert!(b >= a);
    }

    #[test]
    fn limiter_reports_its_settings() {
        let spec = RateSpec::parse("5/2s").unwrap();
        for algorithm in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            let l = Limiter::new(spec, algorithm, spec.default_margin());
            assert_eq!(l.spec(), spec);
            assert_eq!(l.algorithm(), algorithm);
            assert_eq!(l.margin(), Duration::from_millis(100));
            assert!(format!("{l:?}").contains("5/2s"));
        }
    }

    #[test]
    fn both_algorithms_grant_a_burst_of_n_then_refuse() {
        let spec = RateSpec::parse("3/1s").unwrap();
        for algorithm in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            let l = Limiter::new(spec, algorithm, Duration::ZERO);
            let t = 7_000_000_000;
            for _ in 0..3 {
                assert_eq!(l.next_free(t), t);
                assert_eq!(l.try_acquire(t), Ok(()), "{algorithm}");
            }
            let retry = l.try_acquire(t).unwrap_err();
            assert!(retry > t, "{algorithm}");
            assert_eq!(l.next_free(t), retry, "{algorithm}");
            assert_eq!(l.try_acquire(retry), Ok(()), "{algorithm}");
        }
    }

    #[test]
    fn restore_accepts_any_order() {
        let spec = RateSpec::parse("3/1s").unwrap();
        let l = Limiter::new(spec, Algorithm::SlidingWindow, Duration::ZERO);
        let (s, ms) = (1_000_000_000, 1_000_000);
        l.restore_sends(&[s + 2 * ms, s, s + ms]);
        assert_eq!(l.recent_sends(s + 2 * ms), vec![s, s + ms, s + 2 * ms]);
        assert_eq!(l.try_acquire(s + 2 * ms), Err(2 * s));
    }
}
