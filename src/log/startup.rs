//! The start-up line: the one line (target `server`, level `info`) that tells an on-call
//! engineer what this process is: version, listen address, workers, I/O driver, origin, log
//! settings, and every endpoint with its methods, rate limit (and the group or scope sharing
//! it) and deadline:
//!
//! ```text
//! sluice 0.1.0 listening on 0.0.0.0:8080 workers=2 driver=io_uring origin=https://api.example.com log_level=info access_log=off endpoints=2 endpoint=/crypto/sign methods=GET,POST limit=10/1m(sliding-window) shared=signing deadline=2000ms endpoint=/v1/* methods=any limit=10/1m(sliding-window) deadline=2000ms
//! ```
//!
//! Every field after the address is `key=value`; each endpoint starts with `endpoint=`.
//! Secrets never appear: the token and the webhook secret are not read here at all.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::LimitChoice;
use crate::limit::Scope;
use crate::routing::Routes;

/// The start-up line's message (the log line adds time, level and target in front).
pub fn line(addr: SocketAddr, workers: usize, driver: &str, routes: &Routes) -> String {
    let config = &routes.config;
    let mut out = format!(
        "sluice {} listening on {addr} workers={workers} driver={driver} origin={} \
         log_level={} access_log={} endpoints={}",
        env!("CARGO_PKG_VERSION"),
        config.origin,
        config.log_filter,
        config.access_log,
        routes.allowlist.len(),
    );
    for i in 0..routes.allowlist.len() {
        let settings = routes.endpoint(i);
        let methods = if settings.allow.is_empty() {
            "any".to_string()
        } else {
            settings.allow.replace(", ", ",")
        };
        let (index, limiter) = routes.limiters.for_endpoint(i);
        let shared = match config.endpoints.get(i).map(|e| &e.limit) {
            Some(LimitChoice::Group(_)) => Some(routes.limiters.name(index)),
            Some(LimitChoice::Global) if config.executor.rate_limit_scope == Scope::Origin => {
                Some(routes.limiters.name(index))
            }
            _ => None,
        };
        let mut path = Vec::new();
        super::escape::text(&mut path, routes.allowlist.entry(i).as_bytes());
        let _ = write!(
            out,
            " endpoint={} methods={methods} limit={}({})",
            String::from_utf8_lossy(&path),
            limiter.spec(),
            limiter.algorithm(),
        );
        if let Some(name) = shared {
            let _ = write!(out, " shared={name}");
        }
        let _ = write!(out, " deadline={}ms", settings.deadline.as_millis());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn routes(file: &str, extra: &[&str]) -> Routes {
        let dir = std::env::temp_dir().join(format!(
            "sluice-startup-{}-{}",
            std::process::id(),
            file.len() + extra.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, file).unwrap();
        let mut args = vec![
            "sluice",
            "--config",
            path.to_str().unwrap(),
            "-t",
            "tok-secret-value",
            "-o",
            "http://127.0.0.1:9/base",
            "--workers",
            "2",
            "--webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ];
        args.extend_from_slice(extra);
        let config = crate::config::Config::from_args(args).unwrap();
        Routes::build(Arc::new(config), None).unwrap()
    }

    #[test]
    fn every_endpoint_with_methods_limit_and_deadline() {
        let r = routes(
            "rate_limit = \"7/1s\"\n\
             [group.signing]\nrate_limit = \"10/1m\"\nalgorithm = \"token-bucket\"\n\
             [[endpoint]]\npath = \"/crypto/sign\"\nmethods = [\"GET\", \"POST\"]\ngroup = \"signing\"\n\
             [[endpoint]]\npath = \"/v1/*\"\ndeadline_ms = 500\n\
             [[endpoint]]\npath = \"/own\"\nrate_limit = \"3/2s\"\n",
            &["--access-log", "json", "--log-level", "warn,proxy=debug"],
        );
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            line(addr, 2, "epoll", &r),
            format!(
                "sluice {} listening on 127.0.0.1:4000 workers=2 driver=epoll \
                 origin=http://127.0.0.1:9/base log_level=warn,proxy=debug access_log=json \
                 endpoints=3 \
                 endpoint=/crypto/sign methods=GET,POST limit=10/1m(token-bucket) shared=signing deadline=2000ms \
                 endpoint=/v1/* methods=any limit=7/1s(sliding-window) deadline=500ms \
                 endpoint=/own methods=any limit=3/2s(sliding-window) deadline=2000ms",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn origin_scope_is_shown_and_secrets_are_not() {
        let r = routes(
            "paths = \"/a,/b\"\n",
            &["--rate-limit-scope", "origin", "--rate-limit", "5/1s"],
        );
        let addr: SocketAddr = "[::1]:80".parse().unwrap();
        let l = line(addr, 1, "io_uring", &r);
        assert!(
            l.contains(
                " endpoints=2 endpoint=/a methods=any limit=5/1s(sliding-window) shared=origin \
                 deadline=2000ms endpoint=/b methods=any limit=5/1s(sliding-window) shared=origin"
            ),
            "{l}"
        );
        assert!(l.contains("listening on [::1]:80 "), "{l}");
        assert!(
            !l.contains("tok-secret-value") && !l.contains("whsec_"),
            "{l}"
        );
    }
}
