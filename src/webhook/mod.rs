//! Webhooks: telling a caller's callback URL how its deferred job ended.
//!
//! When a job finishes after its caller got `202 Accepted`, sluice POSTs the final upstream body
//! to the `callback` URL the caller gave, signed per the Standard Webhooks spec, retrying with
//! backoff for up to a day. This module owns that delivery end to end, and nothing about jobs
//! themselves (the executor decides when a [`Delivery`] exists).
//!
//! # Layout
//! - [`url`]: the `callback` query parameter: stripping it from a query, percent-decoding and
//!   validating it into a [`CallbackUrl`] (the gateway answers 400 for a bad one).
//! - [`allow`]: `--callback-allow`, the operator's list of acceptable targets (SSRF guard).
//! - [`mod@sign`]: `whsec_` secrets and `webhook-signature` values.
//! - [`schedule`]: the retry schedule (backoff, jitter, caps, `Retry-After`), pure functions.
//! - [`delivery`]: the persistable [`Delivery`] record, attempt results and reports.
//! - [`request`]: the request head and response verdict on the wire, sans-IO.
//! - [`sender`]: the per-core [`Sender`]: each delivery is an async task on the worker's monoio
//!   runtime that sleeps on the worker's timer wheel until due, makes its attempt with
//!   non-blocking I/O (name lookups on the runtime's blocking pool) and reports; records live
//!   in a per-core slab until delivered, given up, or handed back at shutdown.
//!
//! Flow: request time: [`url::extract_callback`] (400 on error) -> job runs -> job ends on a
//! worker: [`Delivery::new`] -> that worker's [`Sender::submit`] -> a task on the same core:
//! wait on the timer wheel until due, allow check, resolve (blocking pool), allow check of the
//! addresses, connect, POST, verdict (all bounded by wheel timers) -> [`delivery::settle`] ->
//! report hook ([`DeliveryReport`]) -> sleep until the next attempt, or done.

pub mod allow;
pub mod delivery;
pub mod request;
pub mod schedule;
pub mod sender;
pub mod sign;
pub mod url;

pub use allow::{CallbackAllow, HostCheck};
pub use delivery::{
    AttemptFailure, AttemptResult, Delivery, DeliveryOutcome, DeliveryReport, JobOutcome,
};
pub use schedule::{next_delay, parse_retry_after, Jitter, RetryPolicy, SplitMix64};
pub use sender::{ReportHook, Sender, SenderClosed, SenderConfig};
pub use sign::{sign, verify, WebhookSecret};
pub use url::{extract_callback, strip_callback, CallbackHost, CallbackScheme, CallbackUrl};
