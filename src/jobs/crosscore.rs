//! Cross-core dedup: which worker runs the open job for a dedup key, and how a duplicate that
//! landed on another worker waits for that job's answer.
//!
//! Each worker keeps its own open jobs by key (`Worker::dedup`, no locks); this module adds
//! what makes dedup hold across workers without putting a lock on the request path:
//!
//! - [`OpenKeys`]: a fixed table of `AtomicU64` tags, one per open deduplicable job, claimed
//!   with one CAS when a job opens and released with one CAS when it reaches its terminal
//!   state. A tag is the key's first 56 bits plus the owning worker's number, so a lookup on
//!   another core learns *who* runs the job. A key probes [`PROBE`] slots from its home slot.
//! - [`Mailbox`]es, one per worker: a duplicate on worker A whose key is claimed by worker B
//!   posts a [`RemoteWait`] to B's mailbox (a mutex taken only on this path, which saves an
//!   upstream call each time it is taken) and wakes B's mailbox task (monoio `sync` wakers).
//! - [`RemoteWait`]: the rendezvous between the two cores. B attaches it to the job (or says
//!   the job is gone), registers the job so it has an id, and at the end either hands it the
//!   stored answer or, when A's own deadline passed first, notifies A's callback. A answers its
//!   client from it: the answer, or `202` with the job's id.
//!
//! # What is exact and what is best effort
//! Two workers can never both think they own one key at the same moment *in the same slot*
//! (the CAS decides), and a duplicate always checks the key's whole probe run before claiming.
//! Identical requests arriving within the same instant on two workers race for the first free
//! slot of the run: the loser sees the winner's tag and attaches. What can still give a second
//! upstream call (never a wrong answer): a tag compares 56 bits of the 128-bit key (the owner
//! compares the full key and answers "gone" on a mismatch); all [`PROBE`] slots taken by other
//! keys (the table is sized at twice `--max-inflight`); more than 255 workers (workers from
//! 255 on do not publish their keys); and a job that ends between a duplicate's lookup and its
//! message arriving (the duplicate then runs its own job). None of these break the rate limit:
//! every upstream call still takes a slot from the shared limiter.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::jobs::registry::{JobRecord, StoredResponse};
use crate::jobs::run::DedupKey;
use crate::webhook::CallbackUrl;

/// Slots probed from a key's home slot.
pub const PROBE: usize = 4;
/// The table never has fewer slots than this.
const MIN_SLOTS: usize = 1024;
/// Nor more than this (8 MiB of tags).
const MAX_SLOTS: usize = 1 << 20;
/// Low byte of a tag: the owning worker's number plus one (0 marks a free slot).
const OWNER_BITS: u64 = 0xFF;
/// Workers numbered below this publish their keys.
pub const MAX_PUBLISHING_WORKERS: usize = 255;

/// Result of looking a key up in [`OpenKeys::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This worker now owns the key, in the given slot (release it with [`OpenKeys::release`]).
    Owner(usize),
    /// Another worker (this number) runs an open job for the key, as far as the tag tells.
    Open(usize),
    /// No cross-core dedup for this request (table run full, too many workers, one worker).
    Unavailable,
}

/// The table of open keys and the workers' mailboxes; one per process, shared by all workers.
pub struct OpenKeys {
    slots: Box<[AtomicU64]>,
    mask: usize,
    mailboxes: Box<[Mailbox]>,
}

impl OpenKeys {
    /// A table for `workers` workers and up to `max_open` open jobs. With one worker nothing
    /// is ever published (every duplicate is local).
    pub fn new(workers: usize, max_open: usize) -> OpenKeys {
        let slots = if workers > 1 {
            max_open
                .saturating_mul(2)
                .clamp(MIN_SLOTS, MAX_SLOTS)
                .next_power_of_two()
        } else {
            0
        };
        OpenKeys {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            mask: slots.saturating_sub(1),
            mailboxes: (0..workers).map(|_| Mailbox::default()).collect(),
        }
    }

    fn key_bits(key: &DedupKey) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[..8]);
        u64::from_le_bytes(b) & !OWNER_BITS
    }

    fn home(&self, key: &DedupKey) -> usize {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[8..16]);
        (u64::from_le_bytes(b) as usize) & self.mask
    }

    /// The worker a tag names, if the tag is for `bits`.
    fn owner_of(tag: u64, bits: u64) -> Option<usize> {
        if tag == 0 || tag & !OWNER_BITS != bits {
            return None;
        }
        usize::try_from((tag & OWNER_BITS) - 1).ok()
    }

    /// Looks `key` up for worker `me`: another worker's open job, or a fresh claim for `me`.
    /// Lock-free: at most [`PROBE`] loads, then one CAS per free slot tried.
    pub fn claim(&self, key: &DedupKey, me: usize) -> Claim {
        if self.slots.is_empty() || me >= MAX_PUBLISHING_WORKERS {
            return Claim::Unavailable;
        }
        let bits = Self::key_bits(key);
        let home = self.home(key);
        for i in 0..PROBE {
            let tag = self.slots[(home + i) & self.mask].load(Ordering::Acquire);
            if let Some(owner) = Self::owner_of(tag, bits) {
                // Our own tag: a job of ours that just left the local map; do not wait on it.
                return if owner == me {
                    Claim::Unavailable
                } else {
                    Claim::Open(owner)
                };
            }
        }
        let mine = bits | (me as u64 + 1);
        for i in 0..PROBE {
            let at = (home + i) & self.mask;
            match self.slots[at].compare_exchange(0, mine, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Claim::Owner(at),
                Err(tag) => {
                    if let Some(owner) = Self::owner_of(tag, bits) {
                        if owner != me {
                            return Claim::Open(owner);
                        }
                    }
                }
            }
        }
        Claim::Unavailable
    }

    /// Gives up worker `me`'s claim on `key` in slot `at` (its job reached a terminal state).
    pub fn release(&self, at: usize, key: &DedupKey, me: usize) {
        let mine = Self::key_bits(key) | (me as u64 + 1);
        if let Some(slot) = self.slots.get(at) {
            let _ = slot.compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Keys published now (for tests and metrics).
    pub fn published(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Posts a duplicate to worker `owner`'s mailbox and wakes its mailbox task. False when
    /// there is no such worker.
    pub fn post(&self, owner: usize, wait: Arc<RemoteWait>) -> bool {
        let Some(mailbox) = self.mailboxes.get(owner) else {
            return false;
        };
        let waker = {
            let mut inner = mailbox.lock();
            inner.queue.push(wait);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Waits until worker `me`'s mailbox holds something and moves it into `out`.
    pub async fn receive(&self, me: usize, out: &mut Vec<Arc<RemoteWait>>) {
        let Some(mailbox) = self.mailboxes.get(me) else {
            return std::future::pending().await;
        };
        poll_fn(|cx| {
            let mut inner = mailbox.lock();
            if inner.queue.is_empty() {
                inner.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::swap(&mut inner.queue, out);
            Poll::Ready(())
        })
        .await
    }
}

/// One worker's inbox of duplicates from other workers.
#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<MailboxInner>,
}

#[derive(Default)]
struct MailboxInner {
    queue: Vec<Arc<RemoteWait>>,
    waker: Option<Waker>,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxInner> {
        // Plain data changed in single steps: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A duplicate waiting on another worker's job.
pub struct RemoteWait {
    /// The full dedup key; the owner compares it with its job's.
    pub key: DedupKey,
    /// The duplicate's callback, notified if the duplicate's client gets a 202.
    pub callback: Option<CallbackUrl>,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    /// The job's registry entry, set when the owner attached this duplicate.
    record: Option<Arc<JobRecord>>,
    /// The final answer, set at the end unless the duplicate was deferred first.
    result: Option<StoredResponse>,
    /// The owner found no open job for the key.
    gone: bool,
    /// The duplicate's deadline passed: its client gets (got) a 202 and its callback is due.
    deferred: bool,
    waker: Option<Waker>,
}

/// How a duplicate's wait ended.
pub enum RemoteAnswer {
    /// The job's final answer, in time.
    Answer(StoredResponse),
    /// The deadline passed first: answer 202 with this job.
    Accepted(Arc<JobRecord>),
    /// No open job for the key any more: run one.
    Gone,
}

impl RemoteWait {
    pub fn new(key: DedupKey, callback: Option<CallbackUrl>) -> Arc<RemoteWait> {
        Arc::new(RemoteWait {
            key,
            callback,
            state: Mutex::new(RemoteState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(mut state: MutexGuard<'_, RemoteState>) {
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Owner side: attached to the job registered as `record`. Returns the callback to add
    /// now when the duplicate was already deferred.
    pub fn attached(&self, record: Arc<JobRecord>) -> Option<CallbackUrl> {
        let mut state = self.lock();
        state.record = Some(record);
        let due = state.deferred.then(|| self.callback.clone()).flatten();
        Self::wake(state);
        due
    }

    /// Owner side: no open job for this key here.
    pub fn gone(&self) {
        let mut state = self.lock();
        state.gone = true;
        Self::wake(state);
    }

    /// Owner side: the job ended with `stored`. Returns the duplicate's callback when it was
    /// deferred (its client got a 202), so that the owner notifies it.
    pub fn complete(&self, stored: &StoredResponse) -> Option<CallbackUrl> {
        let mut state = self.lock();
        if state.deferred {
            drop(state);
            return self.callback.clone();
        }
        state.result = Some(stored.clone());
        Self::wake(state);
        None
    }

    /// Duplicate side: the answer if there is one; with `deadline_passed`, the job to answer
    /// 202 with (once the owner attached). Registers `waker` otherwise.
    pub fn poll_answer(&self, deadline_passed: bool, waker: &Waker) -> Poll<RemoteAnswer> {
        let mut state = self.lock();
        if state.gone {
            return Poll::Ready(RemoteAnswer::Gone);
        }
        if !state.deferred {
            if let Some(result) = state.result.take() {
                return Poll::Ready(RemoteAnswer::Answer(result));
            }
            if deadline_passed {
                state.deferred = true;
            }
        }
        if state.deferred {
            if let Some(record) = &state.record {
                return Poll::Ready(RemoteAnswer::Accepted(record.clone()));
            }
        }
        state.waker = Some(waker.clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DedupKey {
        // Byte 0 is where the owner goes in a tag: keys must differ elsewhere.
        let mut k = [0u8; 16];
        k[1] = n;
        k[2] = 0x5a;
        k[8] = n;
        k
    }

    #[test]
    fn one_worker_publishes_nothing() {
        let t = OpenKeys::new(1, 100);
        assert_eq!(t.claim(&key(1), 0), Claim::Unavailable);
        assert_eq!(t.published(), 0);
    }

    #[test]
    fn claim_is_seen_by_other_workers_and_released() {
        let t = OpenKeys::new(2, 100);
        let Claim::Owner(at) = t.claim(&key(1), 0) else {
            panic!("worker 0 should own a fresh key");
        };
        assert_eq!(t.claim(&key(1), 1), Claim::Open(0));
        // The owner's own lookup never waits on itself.
        assert_eq!(t.claim(&key(1), 0), Claim::Unavailable);
        // Another key is independent.
        assert!(matches!(t.claim(&key(2), 1), Claim::Owner(_)));
        // A release by the wrong worker changes nothing.
        t.release(at, &key(1), 1);
        assert_eq!(t.claim(&key(1), 1), Claim::Open(0));
        t.release(at, &key(1), 0);
        assert!(matches!(t.claim(&key(1), 1), Claim::Owner(_)));
    }

    #[test]
    fn colliding_keys_probe_then_give_up() {
        let t = OpenKeys::new(2, 10);
        // Same home slot (byte 8), different tags (byte 2).
        let k = |n: u8| {
            let mut k = key(7);
            k[2] = n;
            k
        };
        for n in 0..PROBE as u8 {
            assert!(matches!(t.claim(&k(n), 0), Claim::Owner(_)), "key {n}");
        }
        assert_eq!(t.claim(&k(99), 1), Claim::Unavailable);
        // Keys already in the run are still found.
        assert_eq!(t.claim(&k(2), 1), Claim::Open(0));
    }

    #[test]
    fn racing_claims_have_one_owner() {
        let t = Arc::new(OpenKeys::new(4, 100));
        for round in 0..200u8 {
            let handles: Vec<_> = (0..4)
                .map(|w| {
                    let t = t.clone();
                    std::thread::spawn(move || t.claim(&key(round), w))
                })
                .collect();
            let claims: Vec<Claim> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
            let owners: Vec<usize> = claims
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c, Claim::Owner(_)))
                .map(|(w, _)| w)
                .collect();
            assert_eq!(owners.len(), 1, "round {round}: {claims:?}");
            for c in &claims {
                if let Claim::Open(o) = c {
                    assert_eq!(*o, owners[0]);
                }
            }
        }
    }

    fn noop_waker() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn answer_before_deadline() {
        let w = RemoteWait::new(key(1), None);
        assert!(w.poll_answer(false, &noop_waker()).is_pending());
        let stored = StoredResponse::sluice_error(502, "x", "y");
        assert!(w.complete(&stored).is_none());
        match w.poll_answer(false, &noop_waker()) {
            Poll::Ready(RemoteAnswer::Answer(s)) => assert_eq!(s.status, 502),
            _ => panic!("expected the answer"),
        }
    }

    #[test]
    fn deadline_first_means_202_and_callback() {
        let cb = CallbackUrl::parse_str("http://h.example/cb").ok();
        let w = RemoteWait::new(key(1), cb);
        // Deadline before the owner attached: wait for the record.
        assert!(w.poll_answer(true, &noop_waker()).is_pending());
        let record = crate::jobs::registry::Registry::new().insert_with_id(
            crate::jobs::registry::JobId::random(),
            crate::jobs::registry::JobState {
                status: crate::jobs::registry::JobStatus::Pending,
                attempts: 0,
                last_upstream_status: None,
                next_attempt_at: None,
                created_at: std::time::SystemTime::now(),
                finished_at: None,
                result: None,
                callback: crate::jobs::registry::CallbackState::None,
            },
        );
        // Already deferred: the owner must add the callback at once.
        assert!(w.attached(record.clone()).is_some());
        assert!(matches!(
            w.poll_answer(true, &noop_waker()),
            Poll::Ready(RemoteAnswer::Accepted(_))
        ));
        // And at the end it is told again (the owner keeps one per URL).
        let stored = StoredResponse::sluice_error(500, "x", "y");
        assert!(w.complete(&stored).is_some());
    }

    #[test]
    fn gone_lets_the_duplicate_run_its_own_job() {
        let w = RemoteWait::new(key(1), None);
        w.gone();
        assert!(matches!(
            w.poll_answer(true, &noop_waker()),
            Poll::Ready(RemoteAnswer::Gone)
        ));
    }

    #[test]
    fn mailbox_delivers_across_threads() {
        let t = Arc::new(OpenKeys::new(2, 10));
        let t2 = t.clone();
        let poster = std::thread::spawn(move || t2.post(1, RemoteWait::new(key(3), None)));
        assert!(poster.join().unwrap_or(false));
        let mut out = Vec::new();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(t.receive(1, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, key(3));
        assert!(!t.post(5, RemoteWait::new(key(3), None)));
    }
}
