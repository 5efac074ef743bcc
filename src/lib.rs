//! sluice: a per-core HTTP/1.1 gateway for slow, flaky, rate-limited APIs.
//!
//! # Layout
//! A request flows through these modules in this order:
//!
//! - [`config`]: the command line and the validated [`config::Config`].
//! - [`server`]: one pinned thread per CPU, each with a monoio runtime (io_uring or epoll), an
//!   `SO_REUSEPORT` listener and its per-core [`server::worker::Worker`] state; start-up
//!   recovery from the store, signals ([`server::signals`]) and graceful shutdown
//!   ([`server::shutdown`]).
//! - [`proxy`]: a client connection's request loop ([`proxy::serve`]): read a head, check the
//!   allowlist, forward ([`proxy::forward`]), stream bodies ([`proxy::body`]). Each request's
//!   outcome is recorded in its connection's [`proxy::trace::RequestTrace`] and ends in one
//!   [`proxy::trace::finish`] (the access log; the request metrics).
//! - [`http`]: sans-IO HTTP/1.1: request and response head parsing into offsets of frozen
//!   buffers, the strict chunked decoder, and the head writers that apply header edits.
//! - [`jobs`]: the executor: every forwarded request is a job that waits for a rate-limit slot
//!   ([`limit`]), is attempted and retried with backoff on per-core timers ([`timer`]), and
//!   answers its client before the deadline or with `202 Accepted`; deferred jobs report by
//!   webhook ([`webhook`]) and at `/_sluice/jobs/<id>`; identical requests share one job,
//!   across cores too ([`jobs::crosscore`]); deferred jobs are stored before their 202
//!   ([`jobs::persist`], [`store`]).
//! - [`routing`]: the allowlist (exact and prefix paths, decoded, no dot-segment tricks).
//! - [`upstream`]: connections to the origin (TCP or rustls TLS) and the per-core keep-alive
//!   pool.
//! - [`store`]: persistence in the data dir (one redb file): deferred jobs, pending deliveries
//!   and send history, written by one thread with group commit and read back at start-up.
//! - [`error`]: the forwarding error type (source, retryability, status) and the JSON error
//!   responses.
//! - [`log`]: leveled, per-target lines on stderr through one logger thread (workers never
//!   block or allocate per line), `--log-level`/`RUST_LOG` filtering, the access-log formats
//!   and the start-up line.
//!
//! Off the request path: [`admin`], the `--admin-listen` port (`/metrics`, `/health`,
//! `/ready`) served by its own std thread; [`fuzz_checks`], the invariant oracles that the fuzz
//! targets in `fuzz/` and `tests/fuzz_regression.rs` share.

pub mod admin;
pub mod config;
pub mod config_file;
pub mod error;
pub mod fuzz_checks;
pub mod http;
pub mod jobs;
pub mod limit;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod store;
pub mod timer;
pub mod upstream;
pub mod webhook;
