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
//! - [`sender`]: the thread pool that makes attempts with blocking I/O, away from the gateway's
//!   I/O threads.
//!
//! Flow: request time: [`url::extract_callback`] (400 on error) -> job runs -> job ends:
//! [`Delivery::new`] -> [`SenderHandle::submit`] -> a sender thread: allow check, resolve, allow
//! check of the addresses, connect, POST, verdict -> [`delivery::settle`] -> report hook
//! ([`DeliveryReport`]) -> requeue with a delay, or done.

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
pub use sender::{ReportHook, Sender, SenderClosed, SenderConfig, SenderHandle};
pub use sign::{sign, verify, WebhookSecret};
pub use url::{extract_callback, strip_callback, CallbackHost, CallbackScheme, CallbackUrl};
