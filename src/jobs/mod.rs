//! The job executor: what happens between accepting an allowlisted request and its terminal
//! state.
//!
//! - [`run`]: drives one job (rate-limit slot, attempts, backoff) and answers its client within
//!   the ingress deadline, or with `202 Accepted` and carries on.
//! - [`crosscore`]: dedup across workers: the lock-free table of open keys and the mailboxes
//!   through which a duplicate on one core waits for the job another core runs.
//! - [`persist`]: what of a job goes to the store, and how a stored request is made sendable
//!   again after a restart (pure functions; the writes happen in `run`).
//! - [`slots`]: this core's FIFO queues of requests waiting for a rate-limit slot.
//! - [`backoff`]: the retry policy (which failures, exponential backoff with full jitter,
//!   `Retry-After`, attempt and TTL caps).
//! - [`registry`]: deferred jobs by id, shared by all cores, with their state and result.
//! - [`api`]: `GET /_sluice/jobs/<id>` and `GET /_sluice/jobs/<id>/result`.
//!
//! Not here: the limiters themselves (`crate::limit`), timers (`crate::timer`), webhook
//! delivery (`crate::webhook`).

pub mod api;
pub mod backoff;
pub mod crosscore;
pub mod persist;
pub mod registry;
pub mod run;
pub mod slots;
