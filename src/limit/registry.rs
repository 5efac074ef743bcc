//! The [`Registry`]: the process's limiters, each with a name, and which one every allowlisted
//! endpoint draws from. Built once at start-up and shared by all workers through an `Arc`;
//! lookups are two indexings.
//!
//! [`Registry::new`] builds one limiter per endpoint, or one for the whole origin.
//! `crate::routing::Routes` builds the process's registry from the configuration (per-endpoint
//! limits, named groups) with [`Registry::from_shared`]: limiters are `Arc`s so that a reload
//! carries an unchanged one over, and each has a wait-queue number that stays with it.
//!
//! Not here: the allowlist that numbers the endpoints (`crate::routing`), waiting for a slot.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Algorithm, Limiter, RateSpec, Scope};

/// The name of the only limiter under `--rate-limit-scope origin`.
pub const ORIGIN_LIMITER: &str = "origin";

/// Named limiters and the endpoint -> limiter map.
pub struct Registry {
    /// `(name, limiter)`, indexed by limiter number. `Arc`: a configuration reload hands an
    /// unchanged limiter (state and all) to the new registry.
    limiters: Vec<(String, Arc<Limiter>)>,
    /// Each limiter's wait-queue number on every core (see `crate::jobs::slots`): stable
    /// across reloads for a limiter that is kept, fresh for a new one.
    queues: Vec<usize>,
    /// Limiter number of each endpoint (the allowlist's numbering).
    endpoint_to_limiter: Vec<usize>,
}

impl Registry {
    /// The flag-built registry: under [`Scope::Endpoint`], one limiter per endpoint, named
    /// `endpoint-<i>` (endpoint `i` uses limiter `i`); under [`Scope::Origin`], one limiter named
    /// [`ORIGIN_LIMITER`] for all of them. `workers` is the number of cores that will keep a
    /// lease on each limiter (see [`Limiter::with_workers`]).
    pub fn new(
        endpoints: usize,
        spec: RateSpec,
        algorithm: Algorithm,
        scope: Scope,
        margin: Duration,
        workers: usize,
    ) -> Registry {
        let limiter = || Arc::new(Limiter::with_workers(spec, algorithm, margin, workers));
        match scope {
            Scope::Endpoint => Registry {
                limiters: (0..endpoints)
                    .map(|i| (format!("endpoint-{i}"), limiter()))
                    .collect(),
                endpoint_to_limiter: (0..endpoints).collect(),
                queues: (0..endpoints).collect(),
            },
            Scope::Origin => Registry {
                limiters: vec![(ORIGIN_LIMITER.to_string(), limiter())],
                endpoint_to_limiter: vec![0; endpoints],
                queues: vec![0],
            },
        }
    }

    /// A registry from explicit parts: `limiters` (name, limiter) and, for each endpoint in
    /// allowlist order, the index of its limiter. Rules: names are non-empty and unique, and
    /// every index names a limiter. A limiter no endpoint uses is allowed (a group defined
    /// before its endpoints).
    pub fn from_parts(
        limiters: Vec<(String, Limiter)>,
        endpoint_to_limiter: Vec<usize>,
    ) -> Result<Registry, String> {
        let queues = (0..limiters.len()).collect();
        let limiters = limiters
            .into_iter()
            .map(|(name, l)| (name, Arc::new(l)))
            .collect();
        Registry::from_shared(limiters, queues, endpoint_to_limiter)
    }

    /// [`Registry::from_parts`] with limiters that may be shared with an earlier registry and
    /// their wait-queue numbers (one per limiter, unique).
    pub fn from_shared(
        limiters: Vec<(String, Arc<Limiter>)>,
        queues: Vec<usize>,
        endpoint_to_limiter: Vec<usize>,
    ) -> Result<Registry, String> {
        if queues.len() != limiters.len() {
            return Err("one wait queue per rate limiter".to_string());
        }
        let mut seen = HashSet::new();
        for (name, _) in &limiters {
            if name.is_empty() {
                return Err("a rate limiter needs a non-empty name".to_string());
            }
            if !seen.insert(name.as_str()) {
                return Err(format!(
                    "rate limiter names must be unique: {name:?} repeats"
                ));
            }
        }
        if let Some((endpoint, &index)) = endpoint_to_limiter
            .iter()
            .enumerate()
            .find(|&(_, &index)| index >= limiters.len())
        {
            return Err(format!(
                "endpoint {endpoint} refers to rate limiter {index}, but there are only {}",
                limiters.len()
            ));
        }
        Ok(Registry {
            limiters,
            endpoint_to_limiter,
            queues,
        })
    }

    /// The limiter number and limiter of `endpoint` (its allowlist index).
    ///
    /// # Panics
    /// If `endpoint` is not below [`Registry::endpoints`]: endpoint numbers come from the same
    /// allowlist the registry was built for, never from a request.
    pub fn for_endpoint(&self, endpoint: usize) -> (usize, &Limiter) {
        let index = self.endpoint_to_limiter[endpoint];
        (index, self.limiter(index))
    }

    /// Limiter number `i`.
    ///
    /// # Panics
    /// If `i` is not below [`Registry::len`].
    pub fn limiter(&self, i: usize) -> &Limiter {
        &self.limiters[i].1
    }

    /// The shared handle of limiter number `i` (to keep it in a reloaded registry).
    ///
    /// # Panics
    /// If `i` is not below [`Registry::len`].
    pub fn shared(&self, i: usize) -> &Arc<Limiter> {
        &self.limiters[i].1
    }

    /// The wait-queue number of limiter number `i`.
    ///
    /// # Panics
    /// If `i` is not below [`Registry::len`].
    pub fn queue(&self, i: usize) -> usize {
        self.queues[i]
    }

    /// One more than the largest wait-queue number (0 when empty).
    pub fn queue_count(&self) -> usize {
        self.queues.iter().max().map_or(0, |&q| q + 1)
    }

    /// The name of limiter number `i` (for logs, status pages and persisted state).
    ///
    /// # Panics
    /// If `i` is not below [`Registry::len`].
    pub fn name(&self, i: usize) -> &str {
        &self.limiters[i].0
    }

    /// The index of the limiter called `name` (how a stored job finds its limiter again).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.limiters.iter().position(|(n, _)| n == name)
    }

    /// Number of limiters.
    pub fn len(&self) -> usize {
        self.limiters.len()
    }

    /// Whether there are no limiters (only for a registry of no endpoints).
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }

    /// Number of endpoints mapped.
    pub fn endpoints(&self) -> usize {
        self.endpoint_to_limiter.len()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("limiters", &self.limiters)
            .field("endpoint_to_limiter", &self.endpoint_to_limiter)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn two_per_second() -> RateSpec {
        RateSpec::parse("2/1s").unwrap()
    }

    fn exhaust(l: &Limiter, now: u64) {
        while l.try_acquire(now).is_ok() {}
    }

    #[test]
    fn endpoint_scope_gives_each_endpoint_its_own_budget() {
        let spec = two_per_second();
        let reg = Registry::new(
            3,
            spec,
            Algorithm::SlidingWindow,
            Scope::Endpoint,
            Duration::ZERO,
            2,
        );
        assert_eq!((reg.len(), reg.endpoints()), (3, 3));
        for e in 0..3 {
            assert_eq!(reg.for_endpoint(e).0, e);
            assert_eq!(reg.name(e), format!("endpoint-{e}"));
            assert_eq!(reg.limiter(e).spec(), spec);
        }
        exhaust(reg.for_endpoint(0).1, SEC);
        assert!(reg.for_endpoint(0).1.try_acquire(SEC).is_err());
        assert_eq!(reg.for_endpoint(1).1.try_acquire(SEC), Ok(()));
        assert_eq!(reg.for_endpoint(2).1.try_acquire(SEC), Ok(()));
    }

    #[test]
    fn origin_scope_shares_one_budget() {
        let reg = Registry::new(
            3,
            two_per_second(),
            Algorithm::TokenBucket,
            Scope::Origin,
            Duration::ZERO,
            2,
        );
        assert_eq!((reg.len(), reg.endpoints()), (1, 3));
        assert_eq!(reg.name(0), ORIGIN_LIMITER);
        assert_eq!(reg.limiter(0).algorithm(), Algorithm::TokenBucket);
        for e in 0..3 {
            assert_eq!(reg.for_endpoint(e).0, 0);
        }
        assert_eq!(reg.for_endpoint(0).1.try_acquire(SEC), Ok(()));
        assert_eq!(reg.for_endpoint(1).1.try_acquire(SEC), Ok(()));
        assert!(reg.for_endpoint(2).1.try_acquire(SEC).is_err());
    }

    /// The flag-built limiters know the worker count, so large limits lease and small ones
    /// do not.
    #[test]
    fn flag_built_limiters_lease_by_size() {
        let build = |text: &str, workers| {
            Registry::new(
                1,
                RateSpec::parse(text).unwrap(),
                Algorithm::SlidingWindow,
                Scope::Origin,
                Duration::from_millis(50),
                workers,
            )
        };
        assert_eq!(build("20000/1s", 2).limiter(0).lease_size(), 19);
        assert_eq!(build("20000/1s", 1).limiter(0).lease_size(), 1);
        assert_eq!(build("10/1m", 2).limiter(0).lease_size(), 1);
    }

    #[test]
    fn no_endpoints() {
        let spec = two_per_second();
        let none = Registry::new(
            0,
            spec,
            Algorithm::SlidingWindow,
            Scope::Endpoint,
            Duration::ZERO,
            2,
        );
        assert!(none.is_empty());
        assert_eq!(none.endpoints(), 0);
    }

    #[test]
    fn from_parts_maps_groups() {
        let make = |text: &str| {
            Limiter::new(
                RateSpec::parse(text).unwrap(),
                Algorithm::SlidingWindow,
                Duration::ZERO,
            )
        };
        let reg = Registry::from_parts(
            vec![
                ("signing".to_string(), make("1/1s")),
                ("reads".to_string(), make("5/1s")),
                ("unused".to_string(), make("9/1s")),
            ],
            vec![0, 1, 0],
        )
        .unwrap();
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.for_endpoint(2).0, 0);
        assert_eq!(reg.name(reg.for_endpoint(1).0), "reads");
        assert_eq!(reg.for_endpoint(1).1.spec().limit().get(), 5);
        // Endpoints 0 and 2 share "signing".
        assert_eq!(reg.for_endpoint(0).1.try_acquire(SEC), Ok(()));
        assert!(reg.for_endpoint(2).1.try_acquire(SEC).is_err());
        assert!(format!("{reg:?}").contains("signing"));
    }

    #[test]
    fn from_parts_names_the_broken_rule() {
        let make = || Limiter::new(two_per_second(), Algorithm::SlidingWindow, Duration::ZERO);
        let err = Registry::from_parts(vec![("a".to_string(), make())], vec![0, 1]).unwrap_err();
        assert!(err.contains("endpoint 1 refers to rate limiter 1"), "{err}");
        let err = Registry::from_parts(vec![], vec![0]).unwrap_err();
        assert!(err.contains("only 0"), "{err}");
        let err = Registry::from_parts(
            vec![("a".to_string(), make()), ("a".to_string(), make())],
            vec![0, 1],
        )
        .unwrap_err();
        assert!(err.contains("unique"), "{err}");
        let err = Registry::from_parts(vec![(String::new(), make())], vec![0]).unwrap_err();
        assert!(err.contains("non-empty"), "{err}");
        assert!(Registry::from_parts(vec![], vec![]).unwrap().is_empty());
    }
}
