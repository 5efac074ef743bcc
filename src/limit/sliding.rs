//! The exact sliding-window limiter: never more than N sends in any window of length
//! `W = PERIOD + margin`, counted at the `now` each sending caller passed, summed over all
//! threads. Lock-free: a ring of N atomic slots, an atomic sequence counter and, for large
//! limits, a board of lease records (one per worker); no allocation after `new`.
//!
//! Large limits hand out grants in *leases*: a caller (one per core, holding a [`Lease`])
//! reserves a few ring slots in one trip to the shared state and then sends from them one
//! compare-and-swap (CAS) at a time, on slots no other core is using. A leased slot counts as
//! occupied until its owner sends from it (its time becomes the real send time) or, after a
//! short validity, another core takes it over. Small limits never lease (see "Lease size").
//!
//! # Slots
//!
//! A slot is one `u64`: bit 63 is the parity of the lap of the grant it holds (below), bit 62
//! says whether that grant is *leased* (reserved, not sent yet), bits 0..62 hold a time plus
//! one (0: the slot was never used). So a slot holds one of:
//!
//! - `unused`: before its first grant;
//! - `sent(t)`: a send at `t`, the `now` of the caller that sent it;
//! - `leased(l)`: a grant reserved at `l` (the `now` of the caller that leased it), unsent.
//!
//! Two times derive from a slot value `x`. Its *floor* is the least time the next value written
//! into the slot may carry: `floor(unused) = 0`, `floor(sent(t)) = t + W`,
//! `floor(leased(l)) = l`. Its *free time* is when a caller that does not own it may replace
//! it: `free(unused) = 0`, `free(sent(t)) = t + W`, `free(leased(l)) = l + V`, with `V >= 1 ns`
//! the lease validity. `free(x) >= floor(x)` always.
//!
//! # Why it is exact
//!
//! This part needs nothing from the rest of the design. Every write to a slot is a CAS from
//! the value `x` the writer read to a value `y` whose time is at least `floor(x)`:
//!
//! | write (function)                          | from `x`    | to `y`                  | check            |
//! |-------------------------------------------|-------------|-------------------------|------------------|
//! | grant at the head (`claim`)               | any         | `sent(now)`             | `now >= free(x)` |
//! | grant ahead of the head (`look_ahead`)    | any         | `sent(now)`             | `now >= free(x)` |
//! | lease a slot (`take_lease`)               | any         | `leased(now)`           | `now >= free(x)` |
//! | owner sends from it (`use_lease`)         | `leased(l)` | `sent(now)`             | `now >= l`       |
//! | another core takes it over (`scan_board`) | `leased(l)` | `sent(now)`             | `now >= l + V`   |
//! | restore history (`force`)                 | any         | `sent(max(t, free(x)))` | none needed      |
//!
//! *Claim 1: two sends `sent(s)` and, later in the same slot, `sent(u)` have `u >= s + W`.*
//! Right after `sent(s)` the slot's floor is `s + W`. Writing `leased(l)` needs `l >= floor`
//! and leaves the floor at `l`, so the floor never drops until the next send; that send needs
//! `u >= floor >= s + W`. By induction over the sends in between, the claim holds for any two.
//!
//! *Claim 2: no half-open window `[a, a + W)` holds more than N sends.* Of N + 1 sends, two are
//! in one slot (N slots), and by claim 1 they are at least W apart. The upstream's windows
//! `[a, a + PERIOD)` are shorter still.
//!
//! The rule is checked per slot, by the CAS that writes: it holds whoever writes (the owner of
//! a lease, another core, a restorer), whatever `seq` says, in whatever order the callers'
//! `now`s arrive, and however stale the writer's other reads were. A lease cannot break it:
//! its slots hold `leased(l)` (no send) until a CAS turns one into the real `sent(now)`, which
//! is then judged like any send. Unused leased slots are never sends; [`recent_sends`] skips
//! them.
//!
//! *Claim 3 (no ABA): a slot never holds the same value twice.* A write either keeps the lap
//! and turns `leased(l)` into `sent(u)` with `u >= l`, or starts the slot's next lap with a time
//! at least `free(x)`, strictly above `x`'s (`W, V >= 1`). So along a slot's history the pair
//! (time, leased before sent) strictly grows, and a CAS from `x` succeeds only if the slot held
//! `x` all along since it was read.
//!
//! Everything below only decides which slot a caller tries and when: liveness, not safety.
//!
//! # Grants in ring order
//!
//! Grants are numbered 0, 1, 2, ... Grant `k` lives in slot `k % N`, replacing grant `k - N`;
//! its lap is `k / N` and slot `i` starts as the never-made grant `i - N` (lap -1, odd). `seq`
//! is the number of the next grant; every grant below `seq` is in its slot (*placed*). The
//! *head* is slot `seq % N`; the *reach* is grants `seq .. seq + M` (M the lease size, below N;
//! 1 without leases). Nobody places a grant beyond the reach. Taking a grant without a lease:
//!
//! 1. Load `seq` (= k), slot `k % N` (`cur`), and `seq` again; if it moved, start over. If
//!    `cur` has the lap parity of k, grant k is placed and `seq` not yet advanced: help
//!    (below) and start over. Otherwise `cur` is grant `k - N`: `seq` did not move while `cur`
//!    was read, and any later grant's taker would have read a larger `seq` first.
//! 2. If `now >= free(cur)`, CAS slot `k % N` from `cur` to `sent(now)`. Success *is* the grant
//!    (on failure another thread placed grant k: start over); then advance `seq`.
//! 3. Else look ahead: the first grant `j` of the reach whose slot holds grant `j - N` (lap
//!    parity) free at `now` is placed there instead (after checking that `seq` is still k);
//!    `seq` stays at k until the head is placed. A late send (a slot whose time is later than
//!    its neighbours') thus does not hold up the slots behind it.
//! 4. If none is free, try to take over an expired lease (below); else refuse with the
//!    earliest free time among the head, the reach and the leases: exact as a retry time.
//!
//! Advancing (`advance`, by the taker or any helper) moves `seq` from `k` past grant k and past
//! the placed grants right behind it, in one CAS. A slot `j` of the reach holds grant `j - N`
//! or grant `j`, never another lap's: grants below `seq` are placed, and none is placed past
//! the reach; if `seq` is still `k` at the CAS, it was `k` during those reads. So lap parity
//! alone tells placed grants apart, and `seq` never passes an unplaced grant. A thread stalled
//! anywhere delays nobody: every retry means another thread made progress (lock-free).
//!
//! Without leases (`M = 1`: no look-ahead, no board), grant k is refused exactly when the
//! slot's last send is less than W old, and the refusal names the time it expires: exact both
//! ways, in ring order, as before leases.
//!
//! # Leases
//!
//! A caller with a [`Lease`] on a limiter whose M is above 1 first sends from its lease: one
//! CAS on its next leased slot, from the `leased(l)` it wrote to `sent(now)` (only if
//! `now >= l`; an earlier `now`, from a clock read before the lease, takes the shared path
//! instead and keeps the lease). When the lease is spent, it takes a new one (`take_lease`):
//!
//! 1. Step 1 above at head k.
//! 2. Read the slots of the reach after the head, within this lap (a lease never wraps round
//!    the ring's end, so one `leased(now)` value fits all its slots), and mark those holding
//!    grant `j - N` free at `now`; then check that `seq` is still k.
//! 3. Publish the run in the holder's board record (below), then CAS each marked slot from
//!    what was read to `leased(now)`: the lease is the slots won.
//! 4. If the head is free, CAS it to `sent(now)`: this call's grant; advance `seq` past the
//!    head and the lease in one CAS. Otherwise (or if another caller took the head) this call
//!    sends from its lease, or, having won nothing, starts over.
//!
//! So per lease, the holder touches the contended lines (`seq`, the head) once, and its own
//! slots twice per grant (lease, send). Nobody else writes those slots while the lease is
//! young: other callers place grants at the head and the reach, past the lease.
//!
//! *Taking over a lease.* An unused leased slot is free for anyone from `l + V`; its owner may
//! still send from it until someone does (a CAS decides). Two ways reach it. At the head a lap
//! later, or within its reach: steps 2 and 3 treat it like any slot with its free time, and
//! place the next lap's grant over it (the leased grant is then void). Out of ring order,
//! through the *board*: one record per worker (claimed by a [`Lease`] on its first lease)
//! naming the ring positions of its current lease. A caller about to refuse reads the records
//! and scans each lease's slots from the back (the owner sends from the front): the first
//! `leased(l)` it meets with `l + V <= now` it CASes to `sent(now)` in the same lap, as its own
//! send; one not yet expired gives the refusal's retry time instead. A record whose run has no
//! leased slot left is cleared (a CAS, so a newer lease published meanwhile stays). Records
//! are hints: a stale or torn one only costs a scan or a missed take-over, never exactness.
//!
//! Hence an idle core strands nothing for longer than V: its current lease is on the board
//! (published before its slots are leased, and kept until spent, as the holder takes no other
//! lease meanwhile) and free for every other core at `l + V`. [`SlidingWindow::next_free`]
//! counts it at that time, so waiters on other cores wake then.
//!
//! # Lease size
//!
//! `V` is 1 ms, or W/64 when the window is shorter than 64 ms. The limiter's `M` is the least
//! of [`MAX_LEASE`], what the whole limit grants in one validity (`N * V / W`), and
//! `N / (16 * workers)` (all workers' leases together at most 1/16 of the window's budget).
//! Below 2, or with one worker (no contention to avoid), `M = 1`: no board, no leases, no
//! look-ahead, each grant one CAS on shared state as before. `10/1m` gives 1; `20000/1s` (50 ms
//! margin) gives 19; `10000000/1s` gives 32.
//!
//! Each holder then sizes its own leases, up to M, to what it sends in one validity: a lease
//! spent within V doubles the next one; one that took longer gives the next one the grants
//! that fit in V at the pace it was spent (at least 1). So a core leases what it will send
//! before anyone else could take it over, and a quiet core leases one grant at a time.
//!
//! # Costs
//!
//! Taking a lease of m grants is m CASes on the ring (the head, this call's grant, and m - 1
//! slots behind it), one CAS on `seq` and a store to the board; each of the m - 1 leased
//! grants then costs one CAS on a line this core alone writes. A refusal reads the head, the
//! reach (M slots, M <= 32: up to 256 contiguous bytes) and one board record per worker, plus
//! a slot of each lease met there. Without leases it stays three loads.
//!
//! A leased slot's place in the ring is its lease time `l`, its send time is later: at most
//! about V later normally (owners size leases to V; take-overs happen at `l + V` when the
//! window is full). A lap later the ring may wait that much for it, or longer for a lease
//! whose owner stalled past V and then sent from it; look-ahead lets the rest of the reach go
//! first. This can only delay grants, never add one; the measured cost under saturation is
//! within noise of the shared path (see the stress tests).
//!
//! Restored grants ([`SlidingWindow::force`]) skip the check but are recorded at
//! `max(time, free(cur))`, so the floor rule holds for them too. For a restored history that
//! itself respects the limit (what `recent_sends` returns, sorted), recorded times equal the
//! given ones; an impossible history is pushed later, which only delays new grants.
//!
//! # Range
//!
//! Times are nanoseconds in 62 bits: 146 years from the epoch. `now` is clamped to that, so a
//! limiter past it refuses instead of wrapping (only restoring sends there could repeat a slot
//! value, 146 years on). `seq` would need 2^64 grants to wrap.
//!
//! [`recent_sends`]: SlidingWindow::recent_sends

use std::num::NonZeroU32;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire, Release},
};

use super::CachePadded;

/// Bit 63 of a slot: the parity of the lap (`k / N`) of the grant stored in it.
const LAP_BIT: u64 = 1 << 63;
/// Bit 62 of a slot: the grant is leased (reserved for one caller), not sent.
const LEASED_BIT: u64 = 1 << 62;
/// Bits 0..62 of a slot: the grant's time plus one; 0 means the slot was never used.
const TIME_MASK: u64 = LEASED_BIT - 1;
/// The latest recordable time, 2^62 - 2 ns (about 146 years after the epoch).
const MAX_TIME: u64 = TIME_MASK - 1;
/// A slot before its first grant: the never-made grant of lap -1 (odd), no time.
const UNUSED: u64 = LAP_BIT;

/// Most grants in one lease: tens of grants amortise the shared CASes well, and 32 slots are
/// 256 bytes of ring (two 128-byte line pairs) that the lessee alone writes.
pub(crate) const MAX_LEASE: u32 = 32;
/// Longest lease validity: how long an unused leased slot stays its owner's alone (1 ms, in
/// nanoseconds): a core that goes idle holds capacity back at most this long.
const MAX_LEASE_VALIDITY: u64 = 1_000_000;
/// ... but at most the window divided by this (1.6 %), so that the validity stays a small
/// fraction of the window when PERIOD is a few milliseconds: leased slots are sent up to about
/// V later than their place in the ring says, which can hold the ring back by that much a
/// window later (see "Costs").
const VALIDITY_DIVISOR: u64 = 64;
/// All workers' leases together hold at most N divided by this: a lease is a small share of
/// the budget, or there is none.
const LEASE_SHARE_DIVISOR: u64 = 16;

/// A slot value for a send of lap parity `odd` at `time` (clamped to `MAX_TIME`).
fn pack(odd: bool, time: u64) -> u64 {
    let lap = if odd { LAP_BIT } else { 0 };
    // `MAX_TIME + 1 == TIME_MASK`: cannot overflow into the flag bits.
    lap | time.min(MAX_TIME).saturating_add(1)
}

/// A slot value for a grant of lap parity `odd` leased at `time` (clamped to `MAX_TIME`).
fn pack_leased(odd: bool, time: u64) -> u64 {
    pack(odd, time) | LEASED_BIT
}

/// The lap parity of the grant in a slot value.
fn is_odd(slot: u64) -> bool {
    slot & LAP_BIT != 0
}

/// Whether a slot value is a leased, unsent grant.
fn is_leased(slot: u64) -> bool {
    slot & LEASED_BIT != 0
}

/// The time in a slot value (send or lease time); `None` if the slot was never used.
fn time_of(slot: u64) -> Option<u64> {
    (slot & TIME_MASK).checked_sub(1)
}

/// The send time in a slot value; `None` if it holds no send (unused or leased).
fn sent_at(slot: u64) -> Option<u64> {
    if is_leased(slot) {
        None
    } else {
        time_of(slot)
    }
}

/// A board record that a lease claimed: bit 63. 0 is a record nobody claimed.
const RECORD_OWNED: u64 = 1 << 63;
/// Bits 0..32 of a record: the ring position of the lease's first leased slot.
const RECORD_POS_MASK: u64 = (1 << 32) - 1;
/// Bits 32..40: how many slots the lease has (0: no lease now). `MAX_LEASE` fits.
const RECORD_COUNT_SHIFT: u32 = 32;
const RECORD_COUNT_MASK: u64 = 0xff << RECORD_COUNT_SHIFT;
/// Bits 40..63: a generation that changes with every lease the record's owner publishes, so
/// that clearing a spent record by CAS cannot clear a newer one (23 bits: ABA would take
/// 8 million leases during one stalled scan, and would cost only a missed take-over).
const RECORD_GEN_SHIFT: u32 = 40;
const RECORD_GEN_MASK: u64 = (1 << 23) - 1;

/// The record of a lease of `count` slots from ring position `pos`, generation `generation`.
fn record(pos: u64, count: u64, generation: u64) -> u64 {
    RECORD_OWNED
        | (generation & RECORD_GEN_MASK) << RECORD_GEN_SHIFT
        | (count << RECORD_COUNT_SHIFT & RECORD_COUNT_MASK)
        | (pos & RECORD_POS_MASK)
}

/// The ring positions `(first, count)` a record names.
fn record_run(record: u64) -> (u64, u64) {
    (
        record & RECORD_POS_MASK,
        (record & RECORD_COUNT_MASK) >> RECORD_COUNT_SHIFT,
    )
}

/// One caller's lease on one limiter: the ring slots it leased and sends from, and its record
/// on the limiter's board. Per-core state: each worker keeps one per limiter (see
/// `crate::jobs::slots`) and passes it to [`super::Limiter::try_acquire_leased`]; no atomics,
/// nothing shared. A limiter built for W workers serves W lease holders (the first W to lease
/// claim its board records for good); further holders take grants one at a time.
///
/// A `Lease` belongs to one limiter. Passing it to another costs leases, never exactness: a
/// slot is only ever CASed from the exact value it holds, and a `leased` slot may become a
/// send by anyone under the rules in this module's doc.
#[derive(Debug, Default)]
pub struct Lease {
    /// Which board record this holder publishes its leases in.
    entry: Entry,
    /// Ring position of bit 0 of `unused`.
    first: u64,
    /// Bit `i`: slot `first + i` was leased here and, as far as the holder knows, not sent.
    unused: u32,
    /// Grants the current lease gave (the head included), for sizing the next one.
    granted: u32,
    /// The value every leased slot holds while unused: `leased(l)` with the lease's lap.
    expect: u64,
    /// Grants to ask for in the next lease (the head included); 0: the limiter's M.
    size: u32,
    /// Bumped per published lease (see `RECORD_GEN_SHIFT`).
    generation: u64,
}

impl Lease {
    /// A holder with no lease yet.
    pub fn new() -> Lease {
        Lease::default()
    }

    /// Grants left in the current lease, as far as this holder knows.
    pub fn remaining(&self) -> u32 {
        self.unused.count_ones()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Entry {
    /// Not tried yet.
    #[default]
    Unclaimed,
    /// Owns board record `i`.
    Claimed(usize),
    /// The board was full (or empty): this holder does not lease.
    Full,
}

/// What sending from the current lease came to.
enum LeaseUse {
    Sent,
    /// `now` is before the lease time: the lease stays, this call takes a grant elsewhere.
    TooEarly,
    /// No leased slot left (spent or taken over).
    Spent,
}

/// Exact sliding window over the last N grants.
pub(crate) struct SlidingWindow {
    /// Number of the next grant (grants placed so far, give or take some not yet advanced).
    seq: CachePadded<AtomicU64>,
    /// Slot `k % N` holds grant `k` (or grant `k - N` until grant `k` is placed).
    ring: Box<[AtomicU64]>,
    /// N, as the type `seq` is divided by.
    n: u64,
    /// PERIOD + margin in nanoseconds (saturated, at least 1).
    window: u64,
    /// M: grants per lease (1: this limiter does not lease).
    lease: u64,
    /// V: how long a leased slot is its owner's alone, nanoseconds (at least 1).
    validity: u64,
    /// Lease records, one per worker (empty when `lease == 1`); see `record`.
    board: Box<[CachePadded<AtomicU64>]>,
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

/// V and M for a limit of `n` per `window` nanoseconds shared by `workers` (see "Lease size").
fn lease_plan(n: u64, window: u64, workers: usize) -> (u64, u64) {
    let validity = (window / VALIDITY_DIVISOR).clamp(1, MAX_LEASE_VALIDITY);
    if workers < 2 {
        return (validity, 1);
    }
    let per_validity = u128::from(n) * u128::from(validity) / u128::from(window.max(1));
    let by_rate = u64::try_from(per_validity).unwrap_or(u64::MAX);
    let workers = u64::try_from(workers).unwrap_or(u64::MAX);
    let by_share = n / LEASE_SHARE_DIVISOR.saturating_mul(workers);
    let size = by_rate.min(by_share).min(u64::from(MAX_LEASE));
    (validity, size.max(1))
}

impl SlidingWindow {
    /// A window of `window` nanoseconds allowing `limit` grants, shared by `workers` lease
    /// holders; allocates `8 * limit` bytes (plus 128 per worker when it leases).
    pub(crate) fn new(limit: NonZeroU32, window: u64, workers: usize) -> SlidingWindow {
        let n = u64::from(limit.get());
        // Never empty: slot times must strictly grow (see "No ABA"). Limiters pass >= 1 ms.
        let window = window.max(1);
        let (validity, lease) = lease_plan(n, window, workers);
        let board_len = if lease > 1 { workers } else { 0 };
        SlidingWindow {
            seq: CachePadded(AtomicU64::new(0)),
            ring: (0..limit.get()).map(|_| AtomicU64::new(UNUSED)).collect(),
            n,
            window,
            lease,
            validity,
            board: (0..board_len).map(|_| CachePadded::default()).collect(),
        }
    }

    /// Grants per lease (1: no leases).
    pub(crate) fn lease_size(&self) -> u64 {
        self.lease
    }

    /// The slot at ring position `pos` (`pos < N`, always: it is a remainder mod N).
    #[inline]
    fn slot(&self, pos: u64) -> &AtomicU64 {
        let index = usize::try_from(pos).expect("a ring position fits usize: the ring does");
        &self.ring[index]
    }

    /// The slot at a position read from a lease or a record: `None` if out of the ring (only
    /// for a [`Lease`] passed to the wrong limiter).
    #[inline]
    fn slot_at(&self, pos: u64) -> Option<&AtomicU64> {
        usize::try_from(pos).ok().and_then(|i| self.ring.get(i))
    }

    /// Lap parity of grant `k`.
    #[inline]
    fn odd(&self, k: u64) -> bool {
        (k / self.n) % 2 == 1
    }

    /// Advances `seq` from `k` past grant `k` and the placed grants right behind it (a
    /// lease's run), if nobody has yet. Grant `k` must be placed.
    #[inline]
    fn advance(&self, k: u64) {
        // 2^64 grants (584 years at a billion a second) would saturate rather than wrap.
        let mut end = k.saturating_add(1);
        if self.lease > 1 {
            // Only leases and look-ahead place grants ahead of `seq`, within the reach.
            let reach = k.saturating_add(self.lease);
            while end < reach && is_odd(self.slot(end % self.n).load(Acquire)) == self.odd(end) {
                end += 1;
            }
        }
        let _ = self.seq.0.compare_exchange(k, end, AcqRel, Acquire);
    }

    /// Step 1 of the design: a consistent view of the next grant's slot, helping a grant whose
    /// taker has not advanced `seq` yet.
    #[inline]
    fn view(&self) -> View<'_> {
        loop {
            let k = self.seq.0.load(Acquire);
            let pos = k % self.n;
            let odd = self.odd(k);
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

    /// Places grant `k` as a send at `stamp` over grant `k - N`; `false` if another thread
    /// placed grant `k` first.
    #[inline]
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

    /// When a caller that does not own it may replace slot value `slot`: `None` if unused.
    #[inline]
    fn free_at(&self, slot: u64) -> Option<u64> {
        let hold = if is_leased(slot) {
            self.validity
        } else {
            self.window
        };
        time_of(slot).map(|t| t.saturating_add(hold))
    }

    /// A grant without a lease (or for a holder whose lease is unusable at `now`): the head,
    /// or if it is not free, the first free slot within reach.
    #[inline]
    pub(crate) fn try_acquire(&self, now: u64) -> Result<(), u64> {
        let now = now.min(MAX_TIME);
        if self.lease == 1 {
            self.try_acquire_in_order(now)
        } else {
            self.try_acquire_within_reach(now)
        }
    }

    /// [`SlidingWindow::try_acquire`] for a limiter that leases: the head, else look ahead.
    #[inline(never)]
    fn try_acquire_within_reach(&self, now: u64) -> Result<(), u64> {
        loop {
            let view = self.view();
            match self.free_at(view.cur) {
                Some(free) if now < free => match self.look_ahead(&view, now, free, view.k, true) {
                    Some(outcome) => return outcome,
                    None => continue,
                },
                _ => {
                    if self.claim(&view, now) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// [`SlidingWindow::try_acquire`] for a limiter that does not lease (`M = 1`): no reach,
    /// no board, and no slot ever holds a leased value; the head only, as before leases.
    #[inline]
    fn try_acquire_in_order(&self, now: u64) -> Result<(), u64> {
        loop {
            let view = self.view();
            if let Some(last) = time_of(view.cur) {
                let free = last.saturating_add(self.window);
                if now < free {
                    return Err(free);
                }
            }
            if self.claim(&view, now) {
                return Ok(());
            }
        }
    }

    /// Steps 3 and 4 when nothing up to grant `after` is free at `now` (the earliest of those
    /// frees at `earliest`): with `take`, places a send at `now` in the first free unplaced
    /// slot of the rest of the reach (`after + 1 .. seq + M`), else tries to take over an
    /// expired lease on the board, else refuses with the earliest free time among them.
    /// Without `take`, only that time (`now` if one is free now). `None`: the view went stale,
    /// start over.
    fn look_ahead(
        &self,
        view: &View<'_>,
        now: u64,
        earliest: u64,
        after: u64,
        take: bool,
    ) -> Option<Result<(), u64>> {
        let mut earliest = earliest;
        let reach = view.k.saturating_add(self.lease);
        for j in after.saturating_add(1)..reach {
            let slot = self.slot(j % self.n);
            let v = slot.load(Acquire);
            if is_odd(v) == self.odd(j) {
                continue; // placed already
            }
            match self.free_at(v) {
                Some(free) if now < free => earliest = earliest.min(free),
                _ if !take => return Some(Err(now)),
                _ => {
                    // `seq` still k: `v` is grant j - N (see "Grants in ring order").
                    if self.seq.0.load(Acquire) != view.k {
                        return None;
                    }
                    let won = slot
                        .compare_exchange(v, pack(self.odd(j), now), AcqRel, Acquire)
                        .is_ok();
                    return won.then_some(Ok(()));
                }
            }
        }
        Some(match self.scan_board(now, take) {
            Ok(()) => Ok(()),
            Err(lease_free) => Err(earliest.min(lease_free)),
        })
    }

    /// A grant for a lease holder: from its lease, or a new lease, or (no board record, no
    /// leases here) the shared path.
    #[inline]
    pub(crate) fn try_acquire_leased(&self, lease: &mut Lease, now: u64) -> Result<(), u64> {
        let now = now.min(MAX_TIME);
        if lease.unused != 0 {
            match self.use_lease(lease, now) {
                LeaseUse::Sent => return Ok(()),
                LeaseUse::TooEarly => return self.try_acquire(now),
                LeaseUse::Spent => {}
            }
        }
        match self.entry(lease) {
            Some(entry) => self.take_lease(lease, entry, now),
            None => self.try_acquire(now),
        }
    }

    /// The holder's board record, claiming a free one on its first lease; `None` if this
    /// limiter does not lease or the board is full.
    fn entry(&self, lease: &mut Lease) -> Option<&AtomicU64> {
        match lease.entry {
            Entry::Claimed(i) => self.board.get(i).map(|record| &record.0),
            Entry::Full => None,
            Entry::Unclaimed => {
                for (i, record) in self.board.iter().enumerate() {
                    if record
                        .0
                        .compare_exchange(0, RECORD_OWNED, AcqRel, Acquire)
                        .is_ok()
                    {
                        lease.entry = Entry::Claimed(i);
                        return Some(&record.0);
                    }
                }
                lease.entry = Entry::Full;
                None
            }
        }
    }

    /// Sends from the holder's lease: its next leased slot still holding `expect` becomes
    /// `sent(now)`.
    #[inline]
    fn use_lease(&self, lease: &mut Lease, now: u64) -> LeaseUse {
        let Some(leased_at) = time_of(lease.expect) else {
            self.retire(lease);
            return LeaseUse::Spent;
        };
        if now < leased_at {
            return LeaseUse::TooEarly;
        }
        let sent = pack(is_odd(lease.expect), now);
        while lease.unused != 0 {
            let i = lease.unused.trailing_zeros();
            lease.unused &= lease.unused - 1;
            let Some(slot) = self.slot_at(lease.first.saturating_add(u64::from(i))) else {
                continue;
            };
            // Fails only if another core took the slot over (its `now` past the validity).
            if slot
                .compare_exchange(lease.expect, sent, AcqRel, Acquire)
                .is_ok()
            {
                if lease.unused == 0 {
                    self.spent(lease, now);
                }
                return LeaseUse::Sent;
            }
        }
        self.spent(lease, now);
        LeaseUse::Spent
    }

    /// Ends the holder's lease: clears its board record (keeping it claimed).
    fn retire(&self, lease: &mut Lease) {
        lease.unused = 0;
        if let Entry::Claimed(i) = lease.entry {
            if let Some(entry) = self.board.get(i) {
                entry.0.store(record(0, 0, lease.generation), Release);
            }
        }
    }

    /// Ends a lease spent (used up or taken over) at `now`, and sizes the next one to what the
    /// holder sends in one validity: twice as large if this one was spent within V, else the
    /// grants it gave scaled by V over the time they took (at least 1).
    fn spent(&self, lease: &mut Lease, now: u64) {
        self.retire(lease);
        let cap = u32::try_from(self.lease).unwrap_or(MAX_LEASE);
        let took = time_of(lease.expect).map_or(0, |leased_at| now.saturating_sub(leased_at));
        lease.size = if took < self.validity {
            let size = if lease.size == 0 { cap } else { lease.size };
            size.saturating_mul(2)
        } else {
            let fits = u128::from(lease.granted) * u128::from(self.validity) / u128::from(took);
            u32::try_from(fits).unwrap_or(cap)
        }
        .clamp(1, cap);
    }

    /// Takes a new lease at the head (see "Leases"): the head for this call if it is free,
    /// and every free unplaced slot behind it within the lease size and this lap.
    fn take_lease(&self, lease: &mut Lease, entry: &AtomicU64, now: u64) -> Result<(), u64> {
        let size = match lease.size {
            0 => self.lease,
            size => u64::from(size).min(self.lease),
        };
        let mut ahead = [0_u64; MAX_LEASE as usize];
        loop {
            let view = self.view();
            let head_free = self.free_at(view.cur).unwrap_or(0);
            let pos = view.k % self.n;
            let first = pos + 1;
            // Within this lap (one `leased(now)` value fits the whole lease).
            let room = size.saturating_sub(1).min(self.n - first);
            let (mut free, mut earliest): (u32, u64) = (0, head_free);
            for (i, (j, value)) in (first..first + room).zip(ahead.iter_mut()).enumerate() {
                *value = self.slot(j).load(Acquire);
                if is_odd(*value) != view.odd {
                    match self.free_at(*value) {
                        Some(at) if now < at => earliest = earliest.min(at),
                        _ => free |= 1 << i,
                    }
                }
            }
            if now < head_free && free == 0 {
                // Nothing to lease here; a single grant may still be free past the lap's end.
                let scanned = view.k.saturating_add(room);
                match self.look_ahead(&view, now, earliest, scanned, true) {
                    Some(outcome) => return outcome,
                    None => continue,
                }
            }
            if self.seq.0.load(Acquire) != view.k {
                continue;
            }
            let leased = pack_leased(view.odd, now);
            let mut won: u32 = 0;
            if free != 0 {
                // Published before any slot is leased: a holder stalled from here on strands
                // nothing another core cannot find.
                let span = u64::from(u32::BITS - free.leading_zeros());
                lease.generation = lease.generation.wrapping_add(1);
                entry.store(record(first, span, lease.generation), Release);
                for (i, (j, &value)) in (first..first + room).zip(ahead.iter()).enumerate() {
                    if free & 1 << i != 0
                        && self
                            .slot(j)
                            .compare_exchange(value, leased, AcqRel, Acquire)
                            .is_ok()
                    {
                        won |= 1 << i;
                    }
                }
            }
            lease.first = first;
            lease.unused = won;
            lease.expect = leased;
            let head = now >= head_free && self.claim(&view, now);
            lease.granted = won.count_ones() + u32::from(head);
            if won == 0 {
                self.retire(lease);
                if size <= 1 && head {
                    // A lease of the head alone, used at once: ask for more next time.
                    lease.size = 2;
                }
            }
            if head {
                return Ok(());
            }
            // The head is not free or went to another caller: send from the lease.
            if won != 0 {
                if let LeaseUse::Sent = self.use_lease(lease, now) {
                    return Ok(());
                }
            }
        }
    }

    /// Looks through the board's leases for a leased slot free at `now` (see "Taking over a
    /// lease"): with `take`, CASes the first one found to `sent(now)` and returns `Ok`.
    /// Otherwise `Err` with the earliest time one frees (`<= now` if one is free now without
    /// `take`; `u64::MAX` if there is none). Clears records whose runs hold no leased slot.
    fn scan_board(&self, now: u64, take: bool) -> Result<(), u64> {
        let mut earliest = u64::MAX;
        for entry in self.board.iter() {
            let rec = entry.0.load(Acquire);
            let (first, count) = record_run(rec);
            let mut leased_left = false;
            // From the back: the owner sends from the front.
            'run: for pos in (first..first.saturating_add(count)).rev() {
                let Some(slot) = self.slot_at(pos) else {
                    continue;
                };
                let mut v = slot.load(Acquire);
                while is_leased(v) {
                    leased_left = true;
                    let free = self.free_at(v).unwrap_or(0);
                    if now < free || !take {
                        // The rest of the run was leased at the same time: frees no earlier.
                        earliest = earliest.min(free);
                        break 'run;
                    }
                    match slot.compare_exchange(v, pack(is_odd(v), now), AcqRel, Acquire) {
                        Ok(_) => return Ok(()),
                        Err(actual) => v = actual,
                    }
                }
            }
            if count > 0 && !leased_left {
                let _ = entry
                    .0
                    .compare_exchange(rec, rec & !RECORD_COUNT_MASK, AcqRel, Acquire);
            }
        }
        Err(earliest)
    }

    /// The earliest time (`>= now`) a caller without a usable lease may get a grant: `now` if
    /// the head or a slot within reach is free, else the earliest of their free times and the
    /// board's leases'.
    pub(crate) fn next_free(&self, now: u64) -> u64 {
        let now = now.min(MAX_TIME);
        loop {
            let view = self.view();
            let head_free = match self.free_at(view.cur) {
                Some(free) if now < free => free,
                _ => return now,
            };
            match self.look_ahead(&view, now, head_free, view.k, false) {
                Some(Err(free)) => return free.max(now),
                Some(Ok(())) => return now,
                None => continue,
            }
        }
    }

    /// [`SlidingWindow::next_free`] for a lease holder: `now` while its lease can send now.
    pub(crate) fn next_free_leased(&self, lease: &Lease, now: u64) -> u64 {
        let now = now.min(MAX_TIME);
        let usable = lease.unused != 0
            && time_of(lease.expect).is_some_and(|leased_at| leased_at <= now)
            && self
                .slot_at(
                    lease
                        .first
                        .saturating_add(u64::from(lease.unused.trailing_zeros())),
                )
                .is_some_and(|slot| slot.load(Acquire) == lease.expect);
        if usable {
            now
        } else {
            self.next_free(now)
        }
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

    /// Sends (not leased slots) less than W before `now`, ascending.
    pub(crate) fn recent_sends(&self, now: u64) -> Vec<u64> {
        let now = now.min(MAX_TIME);
        let mut sends: Vec<u64> = self
            .ring
            .iter()
            .filter_map(|slot| sent_at(slot.load(Acquire)))
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
        SlidingWindow::new(NonZeroU32::new(limit).unwrap(), window, 1)
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

    // ---- Leases ----

    /// A leasing window for the tests below: N = 2048 per 1 ms, two workers. V = W/64 =
    /// 15.6 µs; M = min(32, N*V/W = 32, N/(16*2) = 64) = 32.
    const LN: u32 = 2048;
    const LV: u64 = MS / 64;
    const LM: u64 = 32;

    fn leasing(workers: usize) -> SlidingWindow {
        let w = SlidingWindow::new(NonZeroU32::new(LN).unwrap(), MS, workers);
        let m = match workers {
            0 | 1 => 1,
            2 => LM,
            _ => (u64::from(LN) / 16 / u64::try_from(workers).unwrap()).min(LM),
        };
        assert_eq!((w.lease, w.validity), (m, LV));
        w
    }

    fn seq(w: &SlidingWindow) -> u64 {
        w.seq.0.load(Acquire)
    }

    /// Grants left in a lease, as the `u64` the tests count in.
    fn left(lease: &Lease) -> u64 {
        u64::from(lease.remaining())
    }

    #[test]
    fn leased_slot_packing_round_trips() {
        for odd in [false, true] {
            for t in [0, 1, MAX_TIME] {
                let v = pack_leased(odd, t);
                assert_eq!((is_odd(v), is_leased(v)), (odd, true));
                assert_eq!(time_of(v), Some(t));
                assert_eq!(sent_at(v), None);
                assert_eq!(sent_at(pack(odd, t)), Some(t));
                assert!(!is_leased(pack(odd, t)));
            }
        }
        assert!(!is_leased(UNUSED));
        let r = record(LN as u64 - 1, u64::from(MAX_LEASE), 5);
        assert_eq!(record_run(r), (LN as u64 - 1, u64::from(MAX_LEASE)));
        assert_eq!(record_run(r & !RECORD_COUNT_MASK).1, 0);
        assert_ne!(r & !RECORD_COUNT_MASK, 0);
        assert_ne!(record(7, 3, 5), record(7, 3, 6));
    }

    /// Small limits never lease; large ones lease tens of grants, never more than 1/16 of N
    /// over all workers, and never more than the whole limit grants in one validity.
    #[test]
    fn lease_size_adapts_to_the_rate() {
        let plan = |text: &str, workers| {
            let spec = RateSpec::parse(text).unwrap();
            let l = Limiter::with_workers(
                spec,
                Algorithm::SlidingWindow,
                spec.default_margin(),
                workers,
            );
            u64::from(l.lease_size())
        };
        assert_eq!(plan("10/1m", 2), 1);
        assert_eq!(plan("10/1m", 64), 1);
        assert_eq!(plan("1000/1s", 8), 1); // 0.95 grants per ms: nothing to batch
        assert_eq!(plan("20000/1s", 1), 1); // one worker: nobody to contend with
        assert_eq!(plan("20000/1s", 2), 19); // 20000 * 1 ms / 1.05 s
        assert_eq!(plan("20000/1s", 128), 9); // 20000 / (16 * 128)
        assert_eq!(plan("10000000/1s", 2), 32);
        assert_eq!(plan("2000/1ms", 2), 31); // 2000 * 16.4 µs / 1.05 ms
        assert_eq!(plan("2000/1ms", 64), 1);
        for (text, workers) in [("20000/1s", 2), ("2000/1ms", 2), ("50000/1m", 4)] {
            let spec = RateSpec::parse(text).unwrap();
            let n = u64::from(spec.limit().get());
            let m = plan(text, workers);
            assert!(m * 16 * u64::try_from(workers).unwrap() <= n, "{text}");
        }
        let spec = RateSpec::parse("20000/1s").unwrap();
        let bucket = Limiter::with_workers(spec, Algorithm::TokenBucket, Duration::ZERO, 2);
        assert_eq!(bucket.lease_size(), 1);
        // V: 1 ms, or W/64 for short windows.
        let w = SlidingWindow::new(NonZeroU32::new(20_000).unwrap(), 1_050 * MS, 2);
        assert_eq!(w.validity, MS);
        let w = SlidingWindow::new(NonZeroU32::new(2_000).unwrap(), 1_050_000, 2);
        assert_eq!(w.validity, 16_406);
    }

    /// One trip to the shared state (`seq` moves once, by M), then M - 1 grants from the lease
    /// without touching `seq` or the head; the sends are recorded at their real times.
    #[test]
    fn a_lease_is_one_trip_then_local_grants_at_their_send_times() {
        let w = leasing(2);
        let mut a = Lease::new();
        assert_eq!(w.try_acquire_leased(&mut a, 0), Ok(()));
        assert_eq!(seq(&w), LM);
        assert_eq!(left(&a), LM - 1);
        // Leased, not sent: the ring holds one send.
        assert_eq!(w.recent_sends(0), vec![0]);
        for i in 1..LM {
            assert_eq!(w.next_free_leased(&a, i * 10), i * 10);
            assert_eq!(w.try_acquire_leased(&mut a, i * 10), Ok(()));
            assert_eq!(seq(&w), LM, "grant {i} touched seq");
        }
        assert_eq!(left(&a), 0);
        let sent: Vec<u64> = (0..LM).map(|i| i * 10).collect();
        assert_eq!(w.recent_sends(LM * 10), sent);
        // Spent: the next call takes the next lease.
        assert_eq!(w.try_acquire_leased(&mut a, 400), Ok(()));
        assert_eq!(seq(&w), 2 * LM);
        assert_eq!(left(&a), LM - 1);
    }

    /// Another core's unused leased slots are occupied (it is refused although only N - 31
    /// were sent) and are not sends; it waits only until the lease's validity ends.
    #[test]
    fn leased_slots_are_occupied_but_not_sends() {
        let w = leasing(2);
        let (mut a, mut b) = (Lease::new(), Lease::new());
        assert_eq!(w.try_acquire_leased(&mut a, 0), Ok(()));
        let mut granted = 1;
        while w.try_acquire_leased(&mut b, 0).is_ok() {
            granted += 1;
        }
        assert_eq!(granted, u64::from(LN) - (LM - 1));
        assert_eq!(w.recent_sends(0).len(), usize::try_from(granted).unwrap());
        // Not a whole window: until a's lease may be taken over.
        assert_eq!(w.try_acquire_leased(&mut b, 0), Err(LV));
        assert_eq!(w.try_acquire(LV - 1), Err(LV));
        assert_eq!(w.next_free(LV - 1), LV);
        assert_eq!(w.next_free_leased(&b, 5), LV);
        // The owner still may send from it, at once.
        assert_eq!(w.next_free_leased(&a, 5), 5);
        assert_eq!(w.try_acquire_leased(&mut a, 5), Ok(()));
    }

    /// Core a leases in the middle of the ring and goes idle; core b is refused only until
    /// the validity ends, then takes over all of a's unused grants (through the board, out of
    /// ring order: the head is still a whole window away), and a gets none back.
    #[test]
    fn an_idle_core_strands_nothing_beyond_the_lease_validity() {
        let w = leasing(2);
        let (mut a, mut b) = (Lease::new(), Lease::new());
        let mut sends = Vec::new();
        for _ in 0..100 {
            assert_eq!(w.try_acquire(0), Ok(()));
            sends.push(0);
        }
        let t_a = 10;
        assert_eq!(w.try_acquire_leased(&mut a, t_a), Ok(()));
        sends.push(t_a);
        assert_eq!(left(&a), LM - 1);
        let t_b = 20;
        while w.try_acquire_leased(&mut b, t_b).is_ok() {
            sends.push(t_b);
        }
        assert_eq!(
            sends.len(),
            usize::try_from(u64::from(LN) - (LM - 1)).unwrap()
        );
        let expiry = t_a + LV;
        assert_eq!(w.try_acquire_leased(&mut b, t_b), Err(expiry));
        assert_eq!(w.try_acquire_leased(&mut b, expiry - 1), Err(expiry));
        assert_eq!(w.next_free(expiry - 1), expiry);
        let ring_full = seq(&w);
        // At the expiry, b takes over exactly a's 31 unused grants, then waits for the head.
        for i in 0..LM - 1 {
            assert_eq!(
                w.try_acquire_leased(&mut b, expiry),
                Ok(()),
                "take-over {i}"
            );
            sends.push(expiry);
        }
        assert_eq!(w.try_acquire_leased(&mut b, expiry), Err(MS));
        assert_eq!(seq(&w), ring_full, "taken over in place, not at the head");
        assert_eq!(w.next_free(expiry), MS);
        // a comes back: its grants are gone, it is refused like everyone.
        assert_eq!(w.try_acquire_leased(&mut a, expiry + 5), Err(MS));
        assert_eq!(left(&a), 0);
        // The board no longer names a's spent lease.
        assert!(w.board.iter().all(|r| record_run(r.0.load(Acquire)).1 == 0));
        assert_eq!(sends.len(), usize::try_from(LN).unwrap());
        sends.sort_unstable();
        assert_eq!(w.recent_sends(expiry), sends);
        assert_eq!(max_in_window(&sends, MS), usize::try_from(LN).unwrap());
    }

    /// A holder that never comes back is also overtaken at the head a lap later: its leased
    /// slots are replaced by the next lap's grants as soon as they are free.
    #[test]
    fn the_head_replaces_an_expired_lease_a_lap_later() {
        let w = leasing(2);
        let mut a = Lease::new();
        assert_eq!(w.try_acquire_leased(&mut a, 0), Ok(()));
        let mut granted = 1;
        while w.try_acquire(0).is_ok() {
            granted += 1;
        }
        assert_eq!(granted, u64::from(LN) - (LM - 1));
        assert_eq!(seq(&w), u64::from(LN));
        // A window later every slot is free, the leased ones included (free since LV).
        for _ in 0..LN {
            assert_eq!(w.try_acquire(MS), Ok(()));
        }
        assert_eq!(seq(&w), 2 * u64::from(LN));
        assert_eq!(w.try_acquire(MS), Err(2 * MS));
        assert_eq!(w.try_acquire_leased(&mut a, MS), Err(2 * MS));
        assert_eq!(w.recent_sends(MS), vec![MS; usize::try_from(LN).unwrap()]);
    }

    /// A holder's next lease is sized to what it sends in one validity: a lease spent slowly
    /// shrinks the next one to the grants that fit in V, one spent within V doubles it (up to
    /// M), one of the head alone grows to 2.
    #[test]
    fn a_lease_is_sized_to_what_its_holder_sends_per_validity() {
        let w = leasing(2);
        let mut a = Lease::new();
        // 32 grants, one per V/4: spent after 7.75 V, so 32 / 7.75 = 4 fit in one V.
        for i in 0..LM {
            assert_eq!(w.try_acquire_leased(&mut a, i * LV / 4), Ok(()));
        }
        let t = LM * LV / 4;
        assert_eq!(w.try_acquire_leased(&mut a, t), Ok(()));
        assert_eq!(left(&a), 3);
        for _ in 0..3 {
            assert_eq!(w.try_acquire_leased(&mut a, t + 1), Ok(()));
        }
        // Spent at once: twice as large.
        assert_eq!(w.try_acquire_leased(&mut a, t + 2), Ok(()));
        assert_eq!(left(&a), 7);
        // Spent after 3 V: 8 grants, about 2.7 per V.
        for _ in 0..7 {
            assert_eq!(w.try_acquire_leased(&mut a, t + 3 * LV + 2), Ok(()));
        }
        assert_eq!(w.try_acquire_leased(&mut a, t + 3 * LV + 3), Ok(()));
        assert_eq!(left(&a), 1);
        assert_eq!(w.try_acquire_leased(&mut a, t + 3 * LV + 3), Ok(()));
        // A lease of the head alone, used at once, asks for 2 next.
        let mut b = Lease::new();
        b.size = 1;
        assert_eq!(w.try_acquire_leased(&mut b, t + 3 * LV + 4), Ok(()));
        assert_eq!((left(&b), b.size), (0, 2));
        assert_eq!(w.try_acquire_leased(&mut b, t + 3 * LV + 4), Ok(()));
        assert_eq!(left(&b), 1);
    }

    /// Past the validity the owner still sends from its lease as long as nobody took it over;
    /// a slot another core took is skipped (the CAS fails), never sent twice.
    #[test]
    fn an_owner_sends_from_its_lease_past_the_validity_unless_taken_over() {
        let w = leasing(2);
        let (mut a, mut b) = (Lease::new(), Lease::new());
        for _ in 0..100 {
            assert_eq!(w.try_acquire(0), Ok(()));
        }
        // a's lease in the middle of the ring, out of the head's reach a lap later.
        assert_eq!(w.try_acquire_leased(&mut a, 0), Ok(()));
        assert_eq!(w.try_acquire_leased(&mut a, 10 * LV), Ok(()));
        assert_eq!((seq(&w), left(&a)), (100 + LM, LM - 2));
        // b fills the ring, then takes over (from the back) all but a's next slot.
        while w.try_acquire_leased(&mut b, 10 * LV).is_ok() {
            if w.recent_sends(10 * LV).len() == usize::try_from(LN).unwrap() - 1 {
                break;
            }
        }
        assert_eq!(
            w.recent_sends(10 * LV).len(),
            usize::try_from(LN).unwrap() - 1
        );
        // a's next slot is still its own; after it, everything else was taken.
        assert_eq!(w.try_acquire_leased(&mut a, 10 * LV + 1), Ok(()));
        assert_eq!(w.try_acquire_leased(&mut a, 10 * LV + 1), Err(MS));
        assert_eq!(left(&a), 0);
        assert_eq!(
            w.recent_sends(10 * LV + 1).len(),
            usize::try_from(LN).unwrap()
        );
    }

    /// A call whose `now` is older than its lease (a clock read before the lease was taken)
    /// cannot send from it: it takes a shared grant, and the lease stays for later calls.
    #[test]
    fn a_now_before_the_lease_time_keeps_the_lease() {
        let w = leasing(2);
        let mut a = Lease::new();
        assert_eq!(w.try_acquire_leased(&mut a, 1_000), Ok(()));
        assert_eq!((seq(&w), left(&a)), (LM, LM - 1));
        assert_eq!(w.try_acquire_leased(&mut a, 500), Ok(()));
        assert_eq!((seq(&w), left(&a)), (LM + 1, LM - 1));
        assert_eq!(w.try_acquire_leased(&mut a, 1_001), Ok(()));
        assert_eq!((seq(&w), left(&a)), (LM + 1, LM - 2));
        assert_eq!(w.recent_sends(1_001), vec![500, 1_000, 1_001]);
    }

    /// The board has one record per worker: further holders take grants one at a time, and a
    /// one-worker window never leases.
    #[test]
    fn holders_beyond_the_workers_take_grants_one_at_a_time() {
        let w = leasing(2);
        let (mut a, mut b, mut c) = (Lease::new(), Lease::new(), Lease::new());
        assert_eq!(w.try_acquire_leased(&mut a, 0), Ok(()));
        assert_eq!(w.try_acquire_leased(&mut b, 0), Ok(()));
        assert_eq!(seq(&w), 2 * LM);
        assert_eq!(w.try_acquire_leased(&mut c, 0), Ok(()));
        assert_eq!((seq(&w), left(&c)), (2 * LM + 1, 0));
        let one = leasing(1);
        assert_eq!(one.lease, 1);
        assert!(one.board.is_empty());
        let mut d = Lease::new();
        assert_eq!(one.try_acquire_leased(&mut d, 0), Ok(()));
        assert_eq!((seq(&one), left(&d)), (1, 0));
    }

    /// A holder's CASes go to its own run: a lease taken while another caller grabs the head
    /// still grants this call from the lease, and `seq` passes the whole run (helpers too).
    #[test]
    fn a_lease_whose_head_is_taken_sends_from_its_run() {
        let w = leasing(2);
        let mut a = Lease::new();
        // Another caller places grant 0 but stalls before advancing `seq`.
        let view = w.view();
        assert!(view
            .slot
            .compare_exchange(view.cur, pack(view.odd, 0), AcqRel, Acquire)
            .is_ok());
        assert_eq!(seq(&w), 0);
        // a helps it along, then leases from grant 1 on.
        assert_eq!(w.try_acquire_leased(&mut a, 0), Ok(()));
        assert_eq!((seq(&w), left(&a)), (1 + LM, LM - 1));
        // A caller that placed a head and leased a run behind it, stalled before advancing:
        // one helper CAS moves `seq` past the whole run.
        let w = leasing(2);
        let view = w.view();
        for j in 1..5 {
            let slot = w.slot(j);
            let cur = slot.load(Acquire);
            assert!(slot
                .compare_exchange(cur, pack_leased(false, 0), AcqRel, Acquire)
                .is_ok());
        }
        assert!(view
            .slot
            .compare_exchange(view.cur, pack(view.odd, 0), AcqRel, Acquire)
            .is_ok());
        assert_eq!(w.try_acquire(0), Ok(()));
        assert_eq!(seq(&w), 6);
        assert_eq!(w.recent_sends(0), vec![0, 0]);
    }

    /// Single-threaded interleaving of four lease holders and shared callers, at random,
    /// jittered `now`s, with holders going idle for long stretches: never more than N sends in
    /// a window, every refusal names a later time, and `recent_sends` reports exactly the
    /// sends (no leased slot) that are less than W old.
    #[test]
    fn random_leased_schedule_is_exact_and_reports_only_sends() {
        for (seed, workers, back) in [(31, 2, 0), (32, 4, 0), (33, 4, MS / 3), (34, 3, MS)] {
            let mut rng = XorShift::new(seed);
            let w = leasing(workers);
            let mut holders: Vec<Lease> = (0..workers).map(|_| Lease::new()).collect();
            let mut sends = Vec::new();
            let mut leased_sends = 0;
            let (mut clock, mut latest) = (10 * MS, 0);
            let step = MS / u64::from(LN);
            for attempt in 0..60_000 {
                clock += match rng.below(4) {
                    0 => 0,
                    _ => rng.below(step),
                };
                let now = clock - rng.below(back + 1);
                latest = latest.max(now);
                // Holder 0 is idle in every other phase of 10 000 attempts.
                let who = rng.below(u64::try_from(workers).unwrap() + 1);
                let idle = who == 0 && (attempt / 10_000) % 2 == 1;
                let outcome = match usize::try_from(who).unwrap() {
                    _ if idle => continue,
                    i if i < workers => {
                        let before = holders[i].remaining();
                        let outcome = w.try_acquire_leased(&mut holders[i], now);
                        if outcome.is_ok() && holders[i].remaining() + 1 == before {
                            leased_sends += 1;
                        }
                        outcome
                    }
                    _ => w.try_acquire(now),
                };
                match outcome {
                    Ok(()) => sends.push(now),
                    Err(retry) => assert!(retry > now, "seed {seed}"),
                }
            }
            sends.sort_unstable();
            let n = usize::try_from(LN).unwrap();
            assert!(max_in_window(&sends, MS) <= n, "seed {seed}");
            let young: Vec<u64> = sends.iter().copied().filter(|&t| t + MS > latest).collect();
            assert_eq!(w.recent_sends(latest), young, "seed {seed}");
            assert!(sends.len() > 10_000, "seed {seed}: {}", sends.len());
            if back == 0 {
                // (With `now`s jittered by more than V, few calls fall in a lease's validity.)
                assert!(
                    leased_sends > sends.len() / 3,
                    "seed {seed}: {leased_sends}"
                );
            }
        }
    }

    /// Look-ahead: a slot whose send came late (here, a caller's `now` 500 ns after the
    /// others') does not hold up the slots behind it next lap; up to M - 1 of them are granted
    /// past it, and `seq` passes them all once the late slot is granted. Without leases
    /// (M = 1) the ring waits in order, as before.
    #[test]
    fn a_late_slot_does_not_block_the_slots_behind_it() {
        let w = leasing(2);
        assert_eq!(w.try_acquire(500), Ok(()));
        for _ in 1..LN {
            assert_eq!(w.try_acquire(0), Ok(()));
        }
        let lap = u64::from(LN);
        assert_eq!(seq(&w), lap);
        // Slot 0 frees at 500 + W, slots 1.. at W.
        assert_eq!(w.next_free(MS), MS);
        for i in 1..LM {
            assert_eq!(w.try_acquire(MS), Ok(()), "slot {i}");
        }
        assert_eq!(seq(&w), lap, "the head is still slot 0");
        assert_eq!(w.next_free(MS), MS + 500);
        assert_eq!(w.try_acquire(MS), Err(MS + 500));
        assert_eq!(w.try_acquire(MS + 500), Ok(()));
        assert_eq!(
            seq(&w),
            lap + LM,
            "one advance past the head and the slots behind it"
        );
        let mut young = vec![MS; usize::try_from(LM - 1).unwrap()];
        young.push(MS + 500);
        assert_eq!(w.recent_sends(MS + 500), young);
        let mut sends = vec![0; usize::try_from(LN - 1).unwrap()];
        sends.push(500);
        sends.extend(young);
        assert_eq!(max_in_window(&sends, MS), usize::try_from(LN).unwrap());
        // The same history without leases: in ring order.
        let w = window(LN, MS);
        assert_eq!(w.try_acquire(500), Ok(()));
        for _ in 1..LN {
            assert_eq!(w.try_acquire(0), Ok(()));
        }
        assert_eq!(w.try_acquire(MS), Err(MS + 500));
        assert_eq!(w.next_free(MS), MS + 500);
    }

    /// A lease holder behind a late head leases the free slots within reach and sends from
    /// them at once; `seq` stays at the head.
    #[test]
    fn a_lease_can_be_taken_behind_a_late_head() {
        let w = leasing(2);
        assert_eq!(w.try_acquire(500), Ok(()));
        for _ in 1..LN {
            assert_eq!(w.try_acquire(0), Ok(()));
        }
        let mut a = Lease::new();
        assert_eq!(w.try_acquire_leased(&mut a, MS), Ok(()));
        assert_eq!((seq(&w), left(&a)), (u64::from(LN), LM - 2));
        for _ in 0..LM - 2 {
            assert_eq!(w.try_acquire_leased(&mut a, MS + 1), Ok(()));
        }
        assert_eq!(w.try_acquire_leased(&mut a, MS + 1), Err(MS + 500));
        assert_eq!(w.try_acquire_leased(&mut a, MS + 500), Ok(()));
    }

    /// What [`hammer`] saw: every send's time and, per thread, (sends, sends from a lease).
    struct Hammered {
        sends: Vec<u64>,
        per_thread: Vec<(usize, usize)>,
    }

    /// Four threads hammer one limiter of N = 4096 per 1 ms + 50 µs built for `workers`
    /// (4: M = 32, V = 16.4 µs; 1: no leases, today's shared path), each through its own
    /// [`Lease`], on a shared fake clock that every attempt advances by `step` (so demand per
    /// fake nanosecond does not depend on how the threads are scheduled). Thread 2 passes a
    /// `now` up to a window old (clock read early, call made late); thread 3 stops after a
    /// quarter of its attempts, holding whatever lease it had (an idle core). Checks exactness
    /// for PERIOD and W; returns what it saw.
    fn hammer(step: u64, attempts: usize, workers: usize) -> Hammered {
        const THREADS: u64 = 4;
        let (n, period, margin) = (4_096_u32, MS, 50_000);
        let spec = RateSpec::new(n, Duration::from_nanos(period)).unwrap();
        let limiter = Arc::new(Limiter::with_workers(
            spec,
            Algorithm::SlidingWindow,
            Duration::from_nanos(margin),
            workers,
        ));
        assert_eq!(limiter.lease_size(), if workers > 1 { 32 } else { 1 });
        let clock = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(usize::try_from(THREADS).unwrap()));
        let handles: Vec<_> = (0..THREADS)
            .map(|id| {
                let (limiter, clock) = (limiter.clone(), clock.clone());
                let start = start.clone();
                std::thread::spawn(move || {
                    let mut lease = Lease::new();
                    let (mut granted, mut from_lease) = (Vec::new(), 0_usize);
                    let mut rng = XorShift::new(id + 1);
                    start.wait();
                    for attempt in 0..attempts {
                        if id == 3 && attempt == attempts / 4 {
                            break;
                        }
                        let mut now = clock.fetch_add(step, Relaxed) + step;
                        if id == 2 {
                            now = now.saturating_sub(rng.below(period + margin));
                        }
                        let before = lease.remaining();
                        if limiter.try_acquire_leased(&mut lease, now).is_ok() {
                            granted.push(now);
                            if lease.remaining() + 1 == before {
                                from_lease += 1;
                            }
                        }
                    }
                    (granted, from_lease)
                })
            })
            .collect();
        let (mut sends, mut per_thread) = (Vec::new(), Vec::new());
        for h in handles {
            let (granted, from_lease) = h.join().unwrap();
            per_thread.push((granted.len(), from_lease));
            sends.extend(granted);
        }
        sends.sort_unstable();
        let n = usize::try_from(n).unwrap();
        assert!(max_in_window(&sends, period) <= n);
        assert!(max_in_window(&sends, period + margin) <= n);
        Hammered { sends, per_thread }
    }

    /// Demand five times the limit: the window is full all the time, slots free one by one,
    /// and leases, take-overs and shared grants race for them. Exact (checked in `hammer`).
    /// Leases cost little: as many sends as the same run without leases, give or take one
    /// window's budget over the run's 15 windows. (Measured: the two differ by -0.45 N to
    /// +0.35 N, median -0.02 N, mostly OS scheduling of 4 threads on 2 cores; with that noise
    /// a tighter bound would be flaky. The stranding bound itself is checked exactly by
    /// `an_idle_core_strands_nothing_beyond_the_lease_validity`.)
    #[test]
    fn threads_with_leases_stay_exact_when_saturated() {
        // 4096 per 1.05 ms is 3.9 per µs; one attempt per 50 ns is 20 per µs.
        let leased = hammer(50, 100_000, 4);
        let shared = hammer(50, 100_000, 1);
        let (got, base, n) = (leased.sends.len(), shared.sends.len(), 4_096);
        assert!(got + n >= base, "{got} sent with leases, {base} without");
        assert!(base > 12 * n, "{base}: the shared path itself stalled");
    }

    /// Demand at about half the limit: the callers on time (threads 0, 1, 3) are almost never
    /// refused and send mostly from their leases (one trip to the shared state per lease),
    /// still exactly. Thread 2, whose `now`s are mostly older than its lease, mostly takes the
    /// shared path. (Measured: at least 99.3 % sent and 94 % of those from leases.)
    ///
    /// How many sends come from leases depends on how the OS schedules four threads, so this is
    /// a performance property, not a correctness one (exactness is checked above): on a loaded
    /// 2-core machine it failed about one run in five. Run it on a quiet machine with
    /// `cargo test --release --lib -- --ignored threads_with_leases`; `cargo bench --bench
    /// limiter` measures the leased path's cost.
    #[test]
    #[ignore = "scheduling-dependent performance property; see the doc comment"]
    fn threads_with_leases_send_mostly_from_leases_below_the_limit() {
        // One attempt per 500 ns is 2 per µs, about half of 3.9.
        let attempts = 50_000;
        let h = hammer(500, attempts, 4);
        for (id, &(sent, from_lease)) in h.per_thread.iter().enumerate() {
            if id == 2 {
                continue;
            }
            let tried = if id == 3 { attempts / 4 } else { attempts };
            assert!(sent * 100 >= tried * 98, "thread {id}: {sent} of {tried}");
            assert!(
                from_lease * 100 >= sent * 85,
                "thread {id}: {from_lease} of {sent}"
            );
        }
    }
}
