//! The reloadable route table ([`Routes`]): the allowlist, each endpoint's run-time settings
//! (allowed methods, retry policy, dedup mode, deadline) in a `Vec` indexed by allowlist entry,
//! the rate limiters the endpoints draw from, and the rest of the reloadable configuration
//! (timeouts, size limits, `--max-inflight`, Idempotency-Key, token, retention, shutdown grace,
//! the webhook sender's settings): everything a SIGHUP can change.
//!
//! Built on the main thread from a validated [`Config`] at start-up and again on every SIGHUP
//! reload ([`Routes::build`] with the previous table): a limiter whose name, rate, algorithm
//! and margin are unchanged is carried over (the same `Arc`, so its window and this process's
//! send history continue); a changed or new one starts empty. Workers swap the new table in
//! before their next request (`Worker::routes`); a job keeps the table it started with, so its
//! attempts keep their timeouts, retry policy and token. Settings fixed at start-up (listen
//! address, port, workers, origin, CA file, data dir) are carried over from `previous` by the
//! caller (see `main.rs`'s reload).
//!
//! Not here: matching paths (`super::allowlist`), parsing the file (`crate::config_file`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, DedupMode, LimitChoice};
use crate::http::request::Method;
use crate::http::HeadLimits;
use crate::jobs::backoff::RetryPolicy;
use crate::limit::{Limiter, Registry, Scope, ORIGIN_LIMITER};
use crate::webhook::SenderConfig;

use super::Allowlist;

/// A core's handle on a route table. Held as `Rc<CoreRoutes>`: a request or job takes it
/// with a non-atomic count on this core's own allocation, never touching the shared `Arc`'s
/// counter (a cache line all cores would fight over).
#[derive(Debug)]
pub struct CoreRoutes(pub Arc<Routes>);

impl std::ops::Deref for CoreRoutes {
    type Target = Routes;

    fn deref(&self) -> &Routes {
        &self.0
    }
}

/// Run-time settings of one endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Bit `1 << (method as u16)` per allowed method; 0 allows any.
    pub methods: u16,
    /// The `Allow` header value of a 405 (`GET, POST`); empty when any method is allowed.
    pub allow: Box<str>,
    pub retry: RetryPolicy,
    pub dedup: DedupMode,
    /// How long a client waits for the answer before it gets a 202.
    pub deadline: Duration,
    /// The endpoint's metric label slot (see `crate::metrics`).
    pub metric: u16,
}

impl Endpoint {
    /// Whether `method` may be forwarded to this endpoint.
    pub fn allows(&self, method: Method) -> bool {
        self.methods == 0 || (method != Method::Other && self.methods & (1 << (method as u16)) != 0)
    }
}

/// The allowlist, its endpoints' settings, their limiters and the configuration they were built
/// from: everything a reload replaces.
pub struct Routes {
    /// The configuration of this table. Reloadable settings are read here, never from the
    /// configuration the process started with.
    pub config: Arc<Config>,
    /// Head parsing limits (`--max-head-bytes`, `--max-headers`).
    pub head_limits: HeadLimits,
    /// What the webhook senders deliver with (validated).
    pub webhook: Arc<SenderConfig>,
    pub allowlist: Allowlist,
    /// Indexed like the allowlist.
    pub endpoints: Vec<Endpoint>,
    pub limiters: Registry,
    /// Each limiter's metric label slot, indexed like `limiters`.
    pub limiter_slots: Vec<u16>,
    /// The global retry policy, for jobs resumed from the store whose stored path no longer
    /// matches an endpoint.
    pub retry: RetryPolicy,
}

const METHODS: [(Method, &str); 9] = [
    (Method::Get, "GET"),
    (Method::Head, "HEAD"),
    (Method::Post, "POST"),
    (Method::Put, "PUT"),
    (Method::Delete, "DELETE"),
    (Method::Patch, "PATCH"),
    (Method::Options, "OPTIONS"),
    (Method::Trace, "TRACE"),
    (Method::Connect, "CONNECT"),
];

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("allowlist", &self.allowlist)
            .field("limiters", &self.limiters.len())
            .finish_non_exhaustive()
    }
}

impl Routes {
    /// The table of `config`, keeping the limiters of `previous` that did not change (and its
    /// TLS roots for callbacks: `--ca-file` is read at start-up only).
    pub fn build(config: Arc<Config>, previous: Option<&Routes>) -> Result<Routes, String> {
        let webhook = Arc::new(webhook_config(&config, previous)?);
        let ex = &config.executor;
        let margin_for = |spec: crate::limit::RateSpec| {
            if config.rate_limit_margin_given {
                ex.rate_limit_margin
            } else {
                spec.default_margin()
            }
        };
        let mut next_queue = previous.map_or(0, |p| p.limiters.queue_count());
        let mut limiters: Vec<(String, Arc<Limiter>)> = Vec::new();
        let mut queues: Vec<usize> = Vec::new();
        // The index of the limiter `name`, creating (or carrying over) it on first use.
        let mut get = |name: String, spec, algorithm| -> usize {
            if let Some(i) = limiters.iter().position(|(n, _)| *n == name) {
                return i;
            }
            let margin = margin_for(spec);
            let kept = previous.and_then(|p| {
                let i = p.limiters.index_of(&name)?;
                let l = p.limiters.shared(i);
                (l.spec() == spec && l.algorithm() == algorithm && l.margin() == margin)
                    .then(|| (l.clone(), p.limiters.queue(i)))
            });
            let (limiter, queue) = kept.unwrap_or_else(|| {
                let q = next_queue;
                next_queue += 1;
                (
                    Arc::new(Limiter::with_workers(
                        spec,
                        algorithm,
                        margin,
                        config.workers,
                    )),
                    q,
                )
            });
            limiters.push((name, limiter));
            queues.push(queue);
            limiters.len() - 1
        };
        let mut map = Vec::with_capacity(config.endpoints.len());
        for (i, e) in config.endpoints.iter().enumerate() {
            let index = match &e.limit {
                LimitChoice::Global => match ex.rate_limit_scope {
                    Scope::Origin => get(
                        ORIGIN_LIMITER.to_string(),
                        ex.rate_limit,
                        ex.rate_limit_algorithm,
                    ),
                    // Flag-style endpoints keep the names of earlier versions (`endpoint-<i>`,
                    // also in stored send history); file endpoints are named by their path.
                    Scope::Endpoint if config.endpoints_from_paths => get(
                        format!("endpoint-{i}"),
                        ex.rate_limit,
                        ex.rate_limit_algorithm,
                    ),
                    Scope::Endpoint => get(e.path.clone(), ex.rate_limit, ex.rate_limit_algorithm),
                },
                LimitChoice::Own(spec, algorithm) => get(e.path.clone(), *spec, *algorithm),
                LimitChoice::Group(name) => {
                    let g = config
                        .groups
                        .iter()
                        .find(|g| &g.name == name)
                        .ok_or_else(|| format!("no [group.{name}] table"))?;
                    get(name.clone(), g.spec, g.algorithm)
                }
            };
            map.push(index);
        }
        let limiters = Registry::from_shared(limiters, queues, map)?;
        // Metric labels: limiters by name (a flag-style per-endpoint limiter, stored as
        // `endpoint-<i>`, by its endpoint's path), endpoints by their path as configured.
        let limiter_slots = (0..limiters.len())
            .map(|li| {
                let name = limiters.name(li);
                let path = name
                    .strip_prefix("endpoint-")
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| config.endpoints.get(i))
                    .map(|e| e.path.as_str());
                crate::metrics::limiter_slot(path.unwrap_or(name))
            })
            .collect();
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                methods: e.methods,
                allow: METHODS
                    .iter()
                    .filter(|(m, _)| e.methods & (1 << (*m as u16)) != 0)
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
                    .into(),
                retry: e.retry.clone(),
                dedup: e.dedup,
                deadline: e.deadline,
                metric: crate::metrics::endpoint_slot(&e.path),
            })
            .collect();
        Ok(Routes {
            head_limits: HeadLimits {
                max_head_bytes: config.max_head_bytes,
                max_headers: config.max_headers,
            },
            webhook,
            allowlist: config.allowlist.clone(),
            endpoints,
            limiters,
            limiter_slots,
            retry: ex.retry.clone(),
            config,
        })
    }

    /// Settings of endpoint `i` (an allowlist index of this table).
    ///
    /// # Panics
    /// If `i` is not an index of this table's allowlist (they come from its own match).
    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i]
    }
}

/// The webhook sender's settings of `config`; TLS roots carried over from `previous`.
fn webhook_config(config: &Config, previous: Option<&Routes>) -> Result<SenderConfig, String> {
    let tls = match previous {
        Some(p) => p.webhook.tls.clone(),
        None => Arc::new(crate::upstream::tls::client_config(
            config.ca_file.as_deref(),
        )?),
    };
    let ex = &config.executor;
    let mut sender = SenderConfig::new(tls);
    sender.secret = ex.webhook_secret.clone();
    sender.allow = ex.callback_allow.clone();
    sender.retry = ex.webhook_retry;
    sender.request_timeout = ex.webhook_timeout;
    sender
        .validate()
        .map_err(|e| format!("cannot start the webhook sender: {e}"))?;
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "sluice-routes-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(
            &path,
            format!("token = \"t\"\norigin = \"http://127.0.0.1:9\"\nworkers = 2\n{text}"),
        )
        .unwrap();
        Config::from_args(["sluice", "--config", path.to_str().unwrap()]).unwrap()
    }

    #[test]
    fn reload_keeps_unchanged_limiters_and_replaces_changed_ones() {
        let one = config(
            "[[endpoint]]\npath = \"/a\"\nrate_limit = \"2/1s\"\n\
             [[endpoint]]\npath = \"/b\"\ngroup = \"g\"\nmethods = [\"GET\", \"POST\"]\n\
             [group.g]\nrate_limit = \"5/1s\"\n",
        );
        let first = Routes::build(Arc::new(one), None).unwrap();
        assert_eq!(first.limiters.len(), 2);
        assert_eq!(&*first.endpoint(1).allow, "GET, POST");
        assert!(first.endpoint(1).allows(Method::Post) && !first.endpoint(1).allows(Method::Put));
        assert!(first.endpoint(0).allows(Method::Other));
        let two = config(
            "[[endpoint]]\npath = \"/a\"\nrate_limit = \"1/1s\"\n\
             [[endpoint]]\npath = \"/b\"\ngroup = \"g\"\n\
             [[endpoint]]\npath = \"/c\"\ngroup = \"g\"\n\
             [group.g]\nrate_limit = \"5/1s\"\n",
        );
        let second = Routes::build(Arc::new(two), Some(&first)).unwrap();
        let g_old = first.limiters.index_of("g").unwrap();
        let g_new = second.limiters.index_of("g").unwrap();
        assert!(Arc::ptr_eq(
            first.limiters.shared(g_old),
            second.limiters.shared(g_new)
        ));
        assert_eq!(first.limiters.queue(g_old), second.limiters.queue(g_new));
        let a_old = first.limiters.index_of("/a").unwrap();
        let a_new = second.limiters.index_of("/a").unwrap();
        assert!(!Arc::ptr_eq(
            first.limiters.shared(a_old),
            second.limiters.shared(a_new)
        ));
        // A new limiter gets a wait queue no earlier limiter had.
        assert_eq!(second.limiters.queue(a_new), first.limiters.queue_count());
        assert_eq!(second.limiters.for_endpoint(2).0, g_new);
    }
}
