//! A hierarchical timer wheel: O(1) insert and cancel, expiry in tick order, sans-IO.
//!
//! This module owns the data structure only: it never reads a clock, never sleeps and never
//! wakes anything. Time is a `u64` count of nanoseconds since an epoch chosen by the caller, passed
//! to [`TimerWheel::new`] and [`TimerWheel::advance`]; what a timer carries is a generic payload.
//! The async service that puts wakers in it and drives it from a monoio task is
//! [`crate::timer::Timers`].
//!
//! # Layout
//! Time is cut into ticks of `tick` nanoseconds. A timer with deadline `d` belongs to tick
//! `ceil(d / tick)`, the first tick boundary at or after its deadline, so it can never fire early;
//! it fires in the first [`TimerWheel::advance`] whose `now` has reached that boundary, which is
//! less than one tick after `d`.
//!
//! The wheel has [`LEVELS`] levels of [`SLOTS`] slots. Level `L` resolves bits `6L..6L+6` of the
//! tick number: a timer goes to the lowest level at which its tick differs from the current tick
//! (`elapsed`), in the slot named by its tick's bits at that level. So level 0 holds the next 64
//! ticks one per slot, level 1 the next 64 × 64 ticks in 64-tick slots, and so on. When time
//! reaches the start of a slot above level 0, its timers are *cascaded*: re-filed at a lower level
//! relative to the new current tick, or fired if their tick has come. A timer moves down at most
//! once per level, so a 24 h timer at a 1 ms tick (about 2^26 ticks, level 4) moves four times in
//! its life.
//!
//! Eleven levels of six bits cover all 64 bits of a tick number, so every `u64` deadline has a slot:
//! there is no overflow list and no clamping (clamping would fire long timers early). Levels above
//! the highest in use cost nothing: a bitmap of non-empty levels finds the lowest one in one
//! instruction, and a per-level occupancy bitmap finds its next non-empty slot in another, so
//! `advance` costs O(slots with timers + timers fired or cascaded), never O(elapsed ticks).
//!
//! # Memory
//! Timers live in one [`Slab`]; its vacant entries are reused, so a wheel in steady state does not
//! allocate. Each slot is an intrusive doubly linked list threaded through slab indices (`prev`
//! and `next` in the entry), so insert (push at the head) and cancel (unlink) are O(1) without a
//! `Vec` per slot. A [`TimerKey`] is a slab index plus a generation, so a key kept after its timer
//! fired cannot cancel an unrelated timer that reused the index.
//!
//! Timers whose deadline had already passed when inserted go to a separate *due* list that the next
//! `advance` fires first, whatever its `now`.

use std::fmt;
use std::time::Duration;

use slab::Slab;

/// Bits of the tick number resolved by one level: 64 slots, so one `u64` occupancy bitmap per
/// level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
pub const SLOTS: usize = 1 << SLOT_BITS;
/// Mask of a slot number within a level.
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Levels: enough six-bit levels to cover every bit of a `u64` tick number (11 × 6 = 66 ≥ 64), so
/// no deadline is out of range. With a 1 ms tick, the first six levels already reach 2^36 ms
/// (2.2 years); the others only hold deadlines beyond that.
pub const LEVELS: usize = u64::BITS.div_ceil(SLOT_BITS) as usize;
/// List index of the due list (timers inserted with a deadline already passed), after the
/// `LEVELS × SLOTS` wheel slots.
const DUE_LIST: usize = LEVELS * SLOTS;
/// Number of intrusive lists: every slot of every level plus the due list.
const LISTS: usize = DUE_LIST + 1;
/// The "no entry" link. Slab indices are kept below it (see [`TimerWheel::insert`]).
const NIL: u32 = u32::MAX;

/// Names one inserted timer, for [`TimerWheel::cancel`]. Stays valid (and harmless) after the
/// timer fired or was cancelled: the generation tells the timer that later reuses the slot apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

/// The tick given to a constructor is zero or does not fit in `u64` nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InvalidTick;

impl fmt::Display for InvalidTick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the timer wheel tick must be at least 1 ns and at most u64::MAX ns")
    }
}

impl std::error::Error for InvalidTick {}

/// One timer in the slab, linked into exactly one list (a wheel slot or the due list).
struct Entry<T> {
    value: T,
    /// The deadline as given, in nanoseconds since the epoch.
    deadline: u64,
    /// `ceil(deadline / tick)`: the tick at whose start the timer is due.
    tick: u64,
    generation: u32,
    prev: u32,
    next: u32,
    /// The list this entry is linked into: `level * SLOTS + slot`, or `DUE_LIST`.
    list: u16,
}

/// A hierarchical timer wheel of payloads `T`. Core-local: every operation takes `&mut self`;
/// share it through a `RefCell` on one thread.
pub struct TimerWheel<T> {
    entries: Slab<Entry<T>>,
    /// Head of each list (`NIL` when empty).
    heads: [u32; LISTS],
    /// Bit `s` of `occupied[L]` is set when slot `s` of level `L` is non-empty.
    occupied: [u64; LEVELS],
    /// Bit `L` is set when `occupied[L] != 0`.
    levels: u16,
    /// Tick length in nanoseconds (at least 1).
    tick_ns: u64,
    /// The current tick: every slot starting at or before it has been processed. Always
    /// `elapsed * tick_ns <= now`.
    elapsed: u64,
    /// The latest time given to the constructor or `advance` (time never runs backwards here).
    now: u64,
    /// A lower bound of the deadlines in the due list (`u64::MAX` when it was last emptied).
    due_min: u64,
    /// Generation given to the next inserted timer.
    generation: u32,
}

impl<T> TimerWheel<T> {
    /// An empty wheel with `tick` resolution whose clock reads `now` (nanoseconds since the
    /// epoch).
    ///
    /// # Panics
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds (a programming error: ticks are
    /// constants); [`TimerWheel::try_with_capacity`] reports it instead.
    pub fn new(tick: Duration, now: u64) -> Self {
        Self::with_capacity(tick, now, 0)
    }

    /// Like [`TimerWheel::new`], with room for `capacity` timers before the slab grows.
    ///
    /// # Panics
    /// As [`TimerWheel::new`].
    pub fn with_capacity(tick: Duration, now: u64, capacity: usize) -> Self {
        match Self::try_with_capacity(tick, now, capacity) {
            Ok(wheel) => wheel,
            Err(e) => panic!("{e}"),
        }
    }

    /// A wheel with room for `capacity` timers, or [`InvalidTick`] when `tick` is zero or does not
    /// fit in `u64` nanoseconds.
    pub fn try_with_capacity(
        tick: Duration,
        now: u64,
        capacity: usize,
    ) -> Result<Self, InvalidTick> {
        let tick_ns = u64::try_from(tick.as_nanos()).map_err(|_| InvalidTick)?;
        if tick_ns == 0 {
            return Err(InvalidTick);
        }
        Ok(TimerWheel {
            entries: Slab::with_capacity(capacity),
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            levels: 0,
            tick_ns,
            elapsed: now / tick_ns,
            now,
            due_min: u64::MAX,
            generation: 0,
        })
    }

    /// The tick (resolution) of this wheel.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_ns)
    }

    /// The latest time given to the constructor or [`TimerWheel::advance`].
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a timer that fires in the first [`TimerWheel::advance`] whose `now` reaches the tick
    /// boundary at or after `deadline`; a deadline not after the wheel's current time fires on the
    /// next `advance`, whatever its `now`. O(1); allocates only when the slab is full.
    ///
    /// # Panics
    /// When `u32::MAX` timers are pending (slab indices are `u32` to keep entries small; that many
    /// timers would take well over 100 GiB).
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let index = match u32::try_from(self.entries.vacant_key()) {
            Ok(index) if index != NIL => index,
            _ => panic!("a timer wheel holds fewer than u32::MAX timers"),
        };
        let generation = self.generation;
        self.generation = generation.wrapping_add(1);
        let tick = self.tick_of(deadline);
        self.entries.insert(Entry {
            value,
            deadline,
            tick,
            generation,
            prev: NIL,
            next: NIL,
            list: 0,
        });
        if deadline <= self.now || tick <= self.elapsed {
            self.due_min = self.due_min.min(deadline);
            self.link(index, DUE_LIST);
        } else {
            self.link(index, wheel_list(self.elapsed, tick));
        }
        TimerKey { index, generation }
    }

    /// Removes a pending timer and returns its payload; `None` when it already fired or was
    /// cancelled. O(1).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        if self.entries.get(key.index as usize)?.generation != key.generation {
            return None;
        }
        self.unlink(key.index);
        Some(self.entries.remove(key.index as usize).value)
    }

    /// The payload of a pending timer.
    pub fn get_mut(&mut self, key: TimerKey) -> Option<&mut T> {
        let entry = self.entries.get_mut(key.index as usize)?;
        (entry.generation == key.generation).then_some(&mut entry.value)
    }

    /// The deadline a pending timer was inserted with.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        let entry = self.entries.get(key.index as usize)?;
        (entry.generation == key.generation).then_some(entry.deadline)
    }

    /// Moves the clock to `now` and hands every timer that is due to `fired`, in tick order (timers
    /// due in the same tick, and the overdue ones inserted with a deadline already passed, in an
    /// unspecified order). A timer is due when `now` has reached the tick boundary at or after its
    /// deadline, so it never fires before its deadline and at most one tick after it. A `now`
    /// earlier than a previous one is treated as the previous one.
    ///
    /// Costs O(non-empty slots passed + timers fired or cascaded). If `fired` panics, the wheel
    /// stays consistent (the timer being handed over is gone, the others remain).
    pub fn advance(&mut self, now: u64, fired: &mut impl FnMut(TimerKey, T)) {
        let now = now.max(self.now);
        self.now = now;
        let target = now / self.tick_ns;
        while let Some(index) = self.pop_front(DUE_LIST) {
            self.fire(index, fired);
        }
        self.due_min = u64::MAX;
        while let Some((list, start)) = self.next_slot() {
            if start > target {
                break;
            }
            debug_assert!(start >= self.elapsed, "a wheel slot was left behind");
            self.elapsed = self.elapsed.max(start);
            while let Some(index) = self.pop_front(list) {
                let tick = self.entries[index as usize].tick;
                if tick <= self.elapsed {
                    self.fire(index, fired);
                } else {
                    self.link(index, wheel_list(self.elapsed, tick));
                }
            }
        }
        self.elapsed = self.elapsed.max(target);
    }

    /// A lower bound of the earliest pending deadline: never later than it, and earlier by less
    /// than one tick when that timer is in level 0 (the next 64 ticks), by up to its slot's span
    /// when it is further out. `None` when no timer is pending. O(1).
    pub fn next_deadline(&self) -> Option<u64> {
        // Timers in a slot starting at tick `start` have `ceil(d / tick) >= start`, so
        // `d > (start - 1) * tick`.
        let wheel = self.next_slot().map(|(_, start)| {
            start.checked_sub(1).map_or(0, |previous| {
                previous.saturating_mul(self.tick_ns).saturating_add(1)
            })
        });
        // A timer still in the wheel may have a deadline earlier than an overdue one (it passed
        // but its tick is not over), so the due list's bound does not replace the wheel's.
        let due = (self.heads[DUE_LIST] != NIL).then_some(self.due_min);
        match (wheel, due) {
            (Some(wheel), Some(due)) => Some(wheel.min(due)),
            (wheel, due) => wheel.or(due),
        }
    }

    /// The earliest `now` at which [`TimerWheel::advance`] has work (a timer to fire or a slot to
    /// cascade), for a driver that sleeps between advances: it is at or after
    /// [`TimerWheel::next_deadline`] and less than one tick after the earliest deadline, so
    /// sleeping until it neither wakes for nothing nor misses a deadline by a tick. The current
    /// time when overdue timers are waiting; `None` when no timer is pending. O(1).
    pub fn next_wake(&self) -> Option<u64> {
        if self.heads[DUE_LIST] != NIL {
            return Some(self.now);
        }
        let (_, start) = self.next_slot()?;
        Some(start.saturating_mul(self.tick_ns))
    }

    /// `ceil(deadline / tick)`. Cannot overflow: with a 1 ns tick the remainder is zero, and with
    /// a longer one the quotient is at most `u64::MAX / 2`.
    fn tick_of(&self, deadline: u64) -> u64 {
        deadline / self.tick_ns + u64::from(!deadline.is_multiple_of(self.tick_ns))
    }

    /// The earliest non-empty wheel slot: its list index and its start tick. The lowest non-empty
    /// level holds it, since a level's slots all lie beyond the current slot of the level above
    /// it.
    fn next_slot(&self) -> Option<(usize, u64)> {
        let level = self.levels.trailing_zeros();
        let occupied = *self.occupied.get(level as usize)?;
        let shift = level * SLOT_BITS;
        let slot = occupied.trailing_zeros();
        // All slots of a level lie within the block of `SLOTS` slots that contains the current
        // tick (the top level's block is the whole tick range, hence the checked shift).
        let block = 1u64
            .checked_shl(shift + SLOT_BITS)
            .map_or(0, |span| self.elapsed & !(span - 1));
        let start = block | (u64::from(slot) << shift);
        Some((level as usize * SLOTS + slot as usize, start))
    }

    /// Removes a popped entry from the slab and hands it to `fired`.
    fn fire(&mut self, index: u32, fired: &mut impl FnMut(TimerKey, T)) {
        let entry = self.entries.remove(index as usize);
        fired(
            TimerKey {
                index,
                generation: entry.generation,
            },
            entry.value,
        );
    }

    /// Pushes an unlinked entry at the head of `list`.
    fn link(&mut self, index: u32, list: usize) {
        let head = self.heads[list];
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = head;
        // `list < LISTS`, which is far below `u16::MAX`.
        entry.list = list as u16;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[list] = index;
        if list != DUE_LIST {
            let level = list / SLOTS;
            self.occupied[level] |= 1 << (list % SLOTS);
            self.levels |= 1 << level;
        }
    }

    /// Unlinks an entry from its list (the entry stays in the slab).
    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (prev, next, list) = (entry.prev, entry.next, usize::from(entry.list));
        if prev == NIL {
            self.heads[list] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[list] == NIL && list != DUE_LIST {
            let level = list / SLOTS;
            self.occupied[level] &= !(1 << (list % SLOTS));
            if self.occupied[level] == 0 {
                self.levels &= !(1 << level);
            }
        }
    }

    /// Unlinks and returns the head of `list`.
    fn pop_front(&mut self, list: usize) -> Option<u32> {
        let head = self.heads[list];
        if head == NIL {
            return None;
        }
        self.unlink(head);
        Some(head)
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("len", &self.len())
            .field("tick_ns", &self.tick_ns)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// The wheel list for a timer due at `tick` when the current tick is `elapsed` (`tick >
/// elapsed`): the level of the highest bit in which they differ, the slot named by `tick`'s bits
/// at that level.
fn wheel_list(elapsed: u64, tick: u64) -> usize {
    debug_assert!(tick > elapsed);
    let significant = u64::BITS - 1 - ((elapsed ^ tick) | SLOT_MASK).leading_zeros();
    let level = significant / SLOT_BITS;
    let slot = (tick >> (level * SLOT_BITS)) & SLOT_MASK;
    // level < LEVELS and slot < SLOTS: the index is below LISTS.
    level as usize * SLOTS + slot as usize
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Nanoseconds per millisecond.
    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000 * MS;
    const HOUR: u64 = 3_600 * SECOND;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;

    fn wheel(now: u64) -> TimerWheel<u64> {
        TimerWheel::new(Duration::from_millis(1), now)
    }

    /// Advances and returns the payloads fired, in order.
    fn advance(wheel: &mut TimerWheel<u64>, now: u64) -> Vec<u64> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut |_, value| fired.push(value));
        fired
    }

    /// xorshift64* for the randomized tests (no crates, fixed seeds).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform-enough in `0..=max` for a test.
        fn upto(&mut self, max: u64) -> u64 {
            match max.checked_add(1) {
                Some(n) => self.next() % n,
                None => self.next(),
            }
        }
    }

    #[test]
    fn rejects_invalid_ticks() {
        assert_eq!(
            TimerWheel::<()>::try_with_capacity(Duration::ZERO, 0, 0).err(),
            Some(InvalidTick)
        );
        assert_eq!(
            TimerWheel::<()>::try_with_capacity(Duration::MAX, 0, 0).err(),
            Some(InvalidTick)
        );
        assert!(TimerWheel::<()>::try_with_capacity(Duration::from_nanos(1), 0, 8).is_ok());
    }

    #[test]
    fn fires_at_the_deadline_never_before() {
        let mut w = wheel(0);
        w.insert(5 * MS, 1);
        assert_eq!(w.len(), 1);
        assert!(advance(&mut w, 5 * MS - 1).is_empty());
        assert_eq!(advance(&mut w, 5 * MS), vec![1]);
        assert!(w.is_empty());
        assert!(advance(&mut w, 10 * MS).is_empty());
    }

    #[test]
    fn a_deadline_inside_a_tick_fires_at_the_next_tick_boundary() {
        let mut w = wheel(0);
        w.insert(5 * MS + MS / 2, 1);
        // Passed, but the tick is not over: at most one tick late.
        assert!(advance(&mut w, 5 * MS + MS / 2 + 1).is_empty());
        assert_eq!(advance(&mut w, 6 * MS), vec![1]);
    }

    #[test]
    fn a_deadline_already_passed_fires_on_the_next_advance() {
        let mut w = wheel(10 * MS + 300);
        w.insert(0, 1);
        w.insert(10 * MS + 200, 2);
        w.insert(10 * MS + 300, 3);
        w.insert(10 * MS + 301, 4);
        let mut fired = advance(&mut w, 10 * MS + 300);
        fired.sort_unstable();
        assert_eq!(fired, vec![1, 2, 3]);
        // Time running backwards changes nothing.
        assert!(advance(&mut w, 0).is_empty());
        assert_eq!(advance(&mut w, 11 * MS), vec![4]);
    }

    #[test]
    fn cancel_returns_the_payload_once() {
        let mut w = wheel(0);
        let a = w.insert(3 * MS, 1);
        let b = w.insert(3 * MS, 2);
        let c = w.insert(HOUR, 3);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.cancel(c), Some(3));
        assert_eq!(w.len(), 1);
        assert_eq!(advance(&mut w, DAY), vec![2]);
        assert_eq!(w.cancel(b), None, "already fired");
    }

    #[test]
    fn a_stale_key_cannot_touch_a_reused_slot() {
        let mut w = wheel(0);
        let old = w.insert(MS, 1);
        assert_eq!(advance(&mut w, MS), vec![1]);
        let new = w.insert(2 * MS, 2);
        assert_eq!(old.index, new.index, "the slab reuses the index");
        assert_eq!(w.cancel(old), None);
        assert_eq!(w.get_mut(old), None);
        assert_eq!(w.deadline(old), None);
        assert_eq!(w.deadline(new), Some(2 * MS));
        assert_eq!(w.get_mut(new), Some(&mut 2));
        assert_eq!(w.cancel(new), Some(2));
    }

    #[test]
    fn fires_in_deadline_order_across_levels() {
        let mut w = wheel(7 * MS);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut deadlines: Vec<u64> = (0..2_000)
            .map(|_| 7 * MS + 1 + rng.upto(3 * DAY) / MS * MS)
            .collect();
        for &d in &deadlines {
            w.insert(d, d);
        }
        deadlines.sort_unstable();
        assert_eq!(advance(&mut w, 4 * DAY), deadlines);
    }

    #[test]
    fn long_deadlines_fire_exactly_on_time() {
        for (i, &d) in [HOUR, DAY, 3 * DAY, YEAR, 3 * YEAR, 100 * YEAR]
            .iter()
            .enumerate()
        {
            let mut w = wheel(123 * MS);
            w.insert(d, i as u64);
            // In big steps, then right up to the deadline.
            for step in [d / 3, d / 2, d - SECOND, d - 1] {
                assert!(
                    advance(&mut w, step).is_empty(),
                    "deadline {d} fired at {step}"
                );
                assert!(w.next_deadline().is_some_and(|n| n <= d));
            }
            assert_eq!(advance(&mut w, d), vec![i as u64]);
        }
    }

    #[test]
    fn the_whole_u64_range_has_slots() {
        let mut w = TimerWheel::new(Duration::from_nanos(1), 0);
        w.insert(u64::MAX, 1);
        w.insert(u64::MAX - 1, 2);
        w.insert(1 << 63, 3);
        assert!(advance(&mut w, (1 << 63) - 1).is_empty());
        assert_eq!(advance(&mut w, u64::MAX - 1), vec![3, 2]);
        assert_eq!(advance(&mut w, u64::MAX), vec![1]);
        // With a coarser tick the last partial tick is never reached: such a timer never fires,
        // and nothing overflows.
        let mut w = wheel(0);
        w.insert(u64::MAX, 1);
        assert!(advance(&mut w, u64::MAX).is_empty());
        assert_eq!(w.next_wake(), Some(u64::MAX));
        assert!(w.next_deadline().is_some_and(|n| n > u64::MAX - MS));
    }

    #[test]
    fn next_deadline_is_a_lower_bound_and_next_wake_the_boundary() {
        let mut w = wheel(0);
        assert_eq!(w.next_deadline(), None);
        assert_eq!(w.next_wake(), None);
        let d = 5 * MS + MS / 2;
        w.insert(d, 1);
        let next = w.next_deadline().unwrap_or(u64::MAX);
        assert!(next <= d && next > d - MS, "{next}");
        assert_eq!(w.next_wake(), Some(6 * MS));
        // A far timer does not change the answer; an earlier one does.
        w.insert(DAY, 2);
        assert!(w.next_deadline().is_some_and(|n| n <= d));
        w.insert(2 * MS, 3);
        assert!(w.next_deadline().is_some_and(|n| n <= 2 * MS));
        assert_eq!(w.next_wake(), Some(2 * MS));
        // An overdue timer: due now.
        w.insert(0, 4);
        assert_eq!(w.next_deadline(), Some(0));
        assert_eq!(w.next_wake(), Some(0));
        assert_eq!(advance(&mut w, 0), vec![4]);
        // Only the far timer left: the bound is its slot's start, the wake is when it cascades.
        assert_eq!(advance(&mut w, 6 * MS), vec![3, 1]);
        let (bound, wake) = (w.next_deadline(), w.next_wake());
        assert!(bound.is_some_and(|n| n <= DAY), "{bound:?}");
        assert!(wake.is_some_and(|n| n <= DAY && n > 6 * MS), "{wake:?}");
    }

    #[test]
    fn waking_at_next_wake_reaches_a_far_timer_in_a_few_steps() {
        let mut w = wheel(0);
        w.insert(3 * DAY + 17 * MS + 5, 1);
        let mut wakes = 0;
        let mut fired = Vec::new();
        while let Some(at) = w.next_wake() {
            wakes += 1;
            w.advance(at, &mut |_, v| fired.push((at, v)));
        }
        assert_eq!(fired, vec![(3 * DAY + 18 * MS, 1)]);
        // One wake per level the timer cascades through, plus the one that fires it.
        assert!(wakes <= LEVELS, "{wakes} wakes");
    }

    #[test]
    fn slots_are_reused_without_growing() {
        let mut w = TimerWheel::with_capacity(Duration::from_millis(1), 0, 16);
        let capacity = w.entries.capacity();
        for i in 0..10_000u64 {
            let a = w.insert(i * MS + HOUR, i);
            let b = w.insert((i + 1) * MS, i);
            assert_eq!(w.cancel(a), Some(i));
            if i % 2 == 0 {
                assert_eq!(w.cancel(b), Some(i));
            } else {
                assert_eq!(advance(&mut w, (i + 1) * MS), vec![i]);
            }
        }
        assert!(w.is_empty());
        assert_eq!(w.entries.capacity(), capacity);
    }

    #[test]
    fn a_panicking_callback_leaves_the_wheel_consistent() {
        let mut w = wheel(0);
        for i in 0..4 {
            w.insert(MS, i);
        }
        w.insert(2 * MS, 9);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.advance(MS, &mut |_, _| panic!("callback"));
        }));
        assert!(result.is_err());
        assert_eq!(w.len(), 4);
        let mut fired = advance(&mut w, 2 * MS);
        fired.sort_unstable();
        assert_eq!(fired.len(), 4);
        assert_eq!(fired.last(), Some(&9));
        assert!(w.is_empty());
    }

    /// Random inserts, cancels and advances against a `BTreeMap` reference. Checks after every
    /// step: each timer fires exactly once, never before its deadline and never after the tick
    /// boundary that follows it; cancelled and stale keys never fire or cancel; `len` matches;
    /// `next_deadline` is never later than the true earliest deadline and `next_wake` never later
    /// than its tick boundary.
    fn model_test(tick: Duration, seed: u64, steps: usize) {
        let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        let mut rng = XorShift(seed);
        let mut now = rng.upto(DAY);
        let mut w: TimerWheel<u64> = TimerWheel::new(tick, now);
        // id -> (key, deadline); (deadline, id) for the minimum.
        let mut live: BTreeMap<u64, (TimerKey, u64)> = BTreeMap::new();
        let mut by_deadline: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut dead: Vec<TimerKey> = Vec::new();
        let mut next_id = 0u64;
        let mut max_live = 0;
        let boundary = |d: u64| d.div_ceil(tick_ns).saturating_mul(tick_ns);
        for _ in 0..steps {
            match rng.upto(99) {
                0..=49 => {
                    let deadline = match rng.upto(9) {
                        0 => now.saturating_sub(rng.upto(SECOND)),
                        1..=3 => now + rng.upto(10 * tick_ns),
                        4..=7 => now + rng.upto(HOUR),
                        _ => now + rng.upto(3 * DAY),
                    };
                    let key = w.insert(deadline, next_id);
                    live.insert(next_id, (key, deadline));
                    by_deadline.insert((deadline, next_id));
                    next_id += 1;
                }
                50..=64 => {
                    let pick = rng.upto(next_id);
                    let found = live.range(pick..).next().or_else(|| live.iter().next());
                    if let Some((&id, &(key, deadline))) = found {
                        assert_eq!(w.cancel(key), Some(id));
                        live.remove(&id);
                        by_deadline.remove(&(deadline, id));
                        dead.push(key);
                    }
                }
                65..=69 => {
                    if !dead.is_empty() {
                        let len = u64::try_from(dead.len()).unwrap_or(u64::MAX);
                        let key = dead[usize::try_from(rng.upto(len - 1)).unwrap_or(0)];
                        assert_eq!(w.cancel(key), None, "a stale key cancelled a timer");
                    }
                }
                _ => {
                    let previous = now;
                    // Mostly small steps so that thousands of timers pile up and cascade,
                    // with rare jumps of up to the longest deadline.
                    now += match rng.upto(99) {
                        0..=69 => rng.upto(2 * tick_ns),
                        70..=94 => rng.upto(100 * tick_ns),
                        95..=98 => rng.upto(60 * SECOND),
                        _ => match rng.upto(99) {
                            0 => rng.upto(3 * DAY),
                            1..=9 => rng.upto(HOUR),
                            _ => rng.upto(10 * 60 * SECOND),
                        },
                    };
                    let mut fired = Vec::new();
                    w.advance(now, &mut |key, id| fired.push((key, id)));
                    let floor = previous / tick_ns + 1;
                    let mut last_tick = 0;
                    for (key, id) in fired {
                        let Some((want, deadline)) = live.remove(&id) else {
                            panic!("timer {id} fired twice or after being cancelled");
                        };
                        assert_eq!(key, want);
                        assert!(deadline <= now, "fired early: {deadline} > {now}");
                        let order = deadline.div_ceil(tick_ns).max(floor);
                        assert!(order >= last_tick, "out of order");
                        last_tick = order;
                        by_deadline.remove(&(deadline, id));
                        dead.push(key);
                    }
                    if let Some(&(earliest, _)) = by_deadline.first() {
                        assert!(boundary(earliest) > now, "not fired by its tick boundary");
                        assert!(earliest.saturating_add(tick_ns) > now);
                    }
                }
            }
            assert_eq!(w.len(), live.len());
            max_live = max_live.max(live.len());
            match by_deadline.first() {
                None => {
                    assert_eq!(w.next_deadline(), None);
                    assert_eq!(w.next_wake(), None);
                }
                Some(&(earliest, _)) => {
                    let bound = w.next_deadline().unwrap_or(u64::MAX);
                    let wake = w.next_wake().unwrap_or(u64::MAX);
                    assert!(bound <= earliest, "next_deadline {bound} > {earliest}");
                    assert!(bound <= wake && wake <= boundary(earliest).max(now));
                }
            }
        }
        assert!(
            max_live >= 50,
            "the run never had many timers pending: {max_live}"
        );
        // Everything left fires.
        let end = now + 4 * DAY;
        w.advance(end, &mut |key, id| {
            let (want, deadline) = live.remove(&id).unwrap_or_else(|| panic!("{id} twice"));
            assert_eq!(key, want);
            assert!(deadline <= end);
        });
        assert!(live.is_empty() && w.is_empty());
    }

    #[test]
    fn matches_a_reference_model_at_1_ms() {
        for seed in 1..=4 {
            model_test(
                Duration::from_millis(1),
                seed * 0x1234_5678_9ABC_DEF1,
                20_000,
            );
        }
    }

    #[test]
    fn matches_a_reference_model_at_odd_ticks() {
        model_test(Duration::from_nanos(1), 7, 10_000);
        model_test(Duration::from_nanos(977), 11, 10_000);
        model_test(Duration::from_secs(1), 13, 10_000);
    }
}
