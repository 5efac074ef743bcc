//! The `--config` file (TOML): its schema and how its values join the command line.
//!
//! Owns: the file's tables ([`FileConfig`], `[[endpoint]]`, `[group.<name>]`, the endpoint's
//! `retry` table), reading and parsing it into one-line errors that name the key (toml gives
//! the line; unknown keys are refused by `deny_unknown_fields`), and the merge rule "flags
//! override the file": a file value fills a flag only when that flag was not on the command
//! line (nor in its environment variable).
//!
//! Top-level keys are the long flag names in snake_case (`--rate-limit` is `rate_limit`), with
//! the same value syntax. Validation of the merged values stays in `crate::config`, which maps
//! an error about a value that came from the file back to its key.
//!
//! Not here: per-endpoint settings at run time (`crate::routing::endpoints`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file. Every key is optional; absent keys keep the flag's value or default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub token: Option<String>,
    pub paths: Option<String>,
    pub port: Option<u16>,
    pub origin: Option<String>,
    pub ingress_request_timeout_ms: Option<u64>,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub workers: Option<usize>,
    pub ca_file: Option<PathBuf>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_response_timeout_ms: Option<u64>,
    pub upstream_read_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_ms: Option<u64>,
    pub upstream_max_idle: Option<usize>,
    pub client_header_timeout_ms: Option<u64>,
    pub client_idle_timeout_ms: Option<u64>,
    pub client_body_timeout_ms: Option<u64>,
    pub client_park_ms: Option<u64>,
    pub max_head_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_request_body_bytes: Option<u64>,
    pub rate_limit: Option<String>,
    pub rate_limit_scope: Option<String>,
    pub rate_limit_algorithm: Option<String>,
    pub rate_limit_margin_ms: Option<u64>,
    pub retry_on: Option<String>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub retry_max_attempts: Option<u32>,
    pub job_ttl: Option<String>,
    pub job_retention: Option<String>,
    pub max_response_body_bytes: Option<u64>,
    pub dedup: Option<String>,
    pub max_inflight: Option<usize>,
    pub webhook_secret: Option<String>,
    pub callback_allow: Option<String>,
    pub webhook_retry_base_ms: Option<u64>,
    pub webhook_retry_max_ms: Option<u64>,
    pub webhook_give_up_after: Option<String>,
    pub webhook_timeout_ms: Option<u64>,
    pub log_level: Option<String>,
    pub access_log: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub no_persist: Option<bool>,
    pub idempotency_key: Option<String>,
    pub shutdown_grace: Option<String>,
    /// `[[endpoint]]` tables, in match order (the first matching path wins).
    #[serde(default)]
    pub endpoint: Vec<EndpointTable>,
    /// `[group.<name>]` tables: rate limits shared by the endpoints that name them.
    #[serde(default)]
    pub group: BTreeMap<String, GroupTable>,
}

/// One `[[endpoint]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTable {
    /// Exact path, or a prefix with a trailing `/*`.
    pub path: String,
    /// Allowed methods (`["GET", "POST"]`); absent: any.
    pub methods: Option<Vec<String>>,
    /// Own limit `N/PERIOD`; exclusive with `group`.
    pub rate_limit: Option<String>,
    /// Name of a `[group.<name>]` whose limit this endpoint shares.
    pub group: Option<String>,
    /// Algorithm of the own `rate_limit`.
    pub algorithm: Option<String>,
    pub retry: Option<RetryTable>,
    /// `off`, `safe` or `all`.
    pub dedup: Option<String>,
    /// How long a client waits before it gets a 202 (the endpoint's
    /// `ingress_request_timeout_ms`).
    pub deadline_ms: Option<u64>,
}

/// An endpoint's `retry` table; absent keys take the global `retry_*` values.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryTable {
    pub base_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub on: Option<String>,
}

/// One `[group.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupTable {
    pub rate_limit: String,
    pub algorithm: Option<String>,
}

/// Reads and parses the file. The error is one line: `<file>: <what>` (toml's own message
/// names unknown keys; the line number and the key of the offending line are added).
pub fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config: cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the text of a config file (see [`load`]).
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| one_line(text, &e))
}

/// toml's error as one line: `line N: <key>: <message>`.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    // The key of a `key = value` line, when the message does not already quote it.
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !message.contains(&format!("`{k}`")));
    match key {
        Some(k) => format!("line {line_no}: {k}: {message}"),
        None => format!("line {line_no}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tables() {
        let f = parse(
            r#"
            token = "t"
            rate_limit = "5/1s"
            [[endpoint]]
            path = "/a"
            methods = ["GET"]
            rate_limit = "2/1s"
            retry = { max_attempts = 3 }
            [[endpoint]]
            path = "/b/*"
            group = "shared"
            [group.shared]
            rate_limit = "10/1m"
            algorithm = "token-bucket"
            "#,
        )
        .unwrap();
        assert_eq!(f.token.as_deref(), Some("t"));
        assert_eq!(f.endpoint.len(), 2);
        assert_eq!(f.endpoint[0].retry.as_ref().unwrap().max_attempts, Some(3));
        assert_eq!(f.group["shared"].rate_limit, "10/1m");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("port = 1\nrate_limt = \"1/1s\"\n").unwrap_err();
        assert!(err.contains("rate_limt") && err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = parse("[[endpoint]]\npath = \"/a\"\ndeadline = 5\n").unwrap_err();
        assert!(err.contains("deadline") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("port = \"eighty\"\n").unwrap_err();
        assert!(err.contains("port") && err.contains("line 1"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
