//! Configuration: the command line (`Cli`, parsed by clap) and the validated runtime [`Config`]
//! every worker reads.
//!
//! Two layers, as in the house style: `Cli` holds raw flag values exactly as the user typed them;
//! `Config::try_from(Cli)` checks every rule once (URL shape, allowlist syntax, readable CA file,
//! non-zero limits) and produces durations, a compiled allowlist and a parsed origin. Each
//! failure is one line that names the flag, so a bad start-up never prints a wall of text.
//!
//! With `--config FILE`, `Config::from_args` first fills every flag not given on the command
//! line from the file (`crate::config_file`), then validates as above; an error about a value
//! from the file names its key there (`sluice.toml: rate_limit: ...`,
//! `sluice.toml: endpoint[2].rate_limit: ...`, endpoints counted from 1).
//!
//! Not here: resolving the origin's address and loading TLS roots into rustls happen in
//! `upstream` (still at start-up, never on an I/O thread).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::routing::Allowlist;

/// Default `--max-head-bytes`: 16 KiB, the default and nginx's `large_client_header_buffers`
/// order of magnitude. Bigger heads answer 431.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Hard ceiling for `--max-head-bytes` (1 MiB): head offsets are stored as `u32`, and a head this
/// large is an attack, not a request.
pub const MAX_HEAD_BYTES_CEILING: usize = 1024 * 1024;

/// The command line. Flag names of the original Go proxy (`-t`, `--paths`, `-p`, `-o`,
/// `--ingress-request-timeout-ms`) keep their meaning: sluice is a drop-in replacement.
#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A per-core HTTP/1.1 gateway for slow, flaky, rate-limited APIs: forwards an allowlist of \
             paths to one origin, injecting the API token.",
    after_help = "Example:\n  sluice -t $TOKEN --paths \"/crypto/sign,/crypto/verify\" -p 8080 -o https://api.example.com"
)]
pub struct Cli {
    /// API token sent upstream as the exact `Authorization` header value (replaces any
    /// client-supplied Authorization). Prefer the SLUICE_TOKEN environment variable so the token
    /// does not show in `ps`.
    #[arg(
        short = 't',
        long = "token",
        env = "SLUICE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Comma-separated allowlist of paths to forward, e.g. "/crypto/sign,/crypto/verify". Exact
    /// match on the decoded path; a trailing "/*" makes a prefix ("/v1/*" forwards "/v1/...").
    /// Everything else answers 404.
    #[arg(long = "paths")]
    pub paths: Option<String>,

    /// Port to listen on (0 picks a free port, printed at start-up).
    #[arg(short = 'p', long = "port", default_value_t = 8080)]
    pub port: u16,

    /// Origin URL, http:// or https://. A path in it is prepended to every forwarded path.
    #[arg(short = 'o', long = "origin")]
    pub origin: Option<String>,

    /// Deadline for answering a caller (rate-limit wait plus upstream call), in milliseconds.
    /// Accepted now; the job executor uses it.
    #[arg(long = "ingress-request-timeout-ms", default_value_t = 2000)]
    pub ingress_request_timeout_ms: u64,

    /// Address to listen on.
    #[arg(long = "listen", default_value = "0.0.0.0")]
    pub listen: String,

    /// Serve /metrics (Prometheus), /health and /ready on this address and port (e.g.
    /// 127.0.0.1:9901; port 0 picks a free one), separately from the proxy port. Off unless
    /// given. Keep it off public networks.
    #[arg(long = "admin-listen", value_name = "ADDR:PORT")]
    pub admin_listen: Option<String>,

    /// Worker threads, one monoio runtime each, pinned round-robin to the CPUs this process may
    /// run on. Default: the number of those CPUs.
    #[arg(long = "workers")]
    pub workers: Option<usize>,

    /// PEM file with extra trust roots for the origin's certificate (private CAs). The public
    /// web PKI roots (webpki-roots) are always trusted too.
    #[arg(long = "ca-file")]
    pub ca_file: Option<PathBuf>,

    /// Timeout for connecting to the origin (TCP plus TLS handshake), in milliseconds. Expiry
    /// answers 504.
    #[arg(long = "upstream-connect-timeout-ms", default_value_t = 3000)]
    pub upstream_connect_timeout_ms: u64,

    /// Timeout for the origin's response head after the request was sent, in milliseconds.
    /// Expiry answers 504.
    #[arg(long = "upstream-response-timeout-ms", default_value_t = 30_000)]
    pub upstream_response_timeout_ms: u64,

    /// Timeout between two reads of the origin's response body, in milliseconds.
    #[arg(long = "upstream-read-timeout-ms", default_value_t = 30_000)]
    pub upstream_read_timeout_ms: u64,

    /// How long an idle keep-alive connection to the origin stays pooled, in milliseconds. Keep
    /// it below the origin's own idle timeout (many servers use 5 s).
    #[arg(long = "upstream-idle-timeout-ms", default_value_t = 4000)]
    pub upstream_idle_timeout_ms: u64,

    /// Idle keep-alive connections to the origin kept per worker.
    #[arg(long = "upstream-max-idle", default_value_t = 64)]
    pub upstream_max_idle: usize,

    /// Time a client has to send a complete request head once it started one, in milliseconds.
    /// Expiry answers 408 and closes.
    #[arg(long = "client-header-timeout-ms", default_value_t = 10_000)]
    pub client_header_timeout_ms: u64,

    /// How long an idle keep-alive client connection stays open, in milliseconds.
    #[arg(long = "client-idle-timeout-ms", default_value_t = 60_000)]
    pub client_idle_timeout_ms: u64,

    /// Timeout between two reads of a client's request body, in milliseconds.
    #[arg(long = "client-body-timeout-ms", default_value_t = 10_000)]
    pub client_body_timeout_ms: u64,

    /// How long an idle keep-alive client connection keeps its read buffer and request task
    /// before it parks (gives them back), in milliseconds.
    #[arg(long = "client-park-ms", default_value_t = 50)]
    pub client_park_ms: u64,

    /// Largest request head (request line plus headers) in bytes; bigger answers 431.
    #[arg(long = "max-head-bytes", default_value_t = DEFAULT_MAX_HEAD_BYTES)]
    pub max_head_bytes: usize,

    /// Most header fields in a request or response head; more answers 431 (502 upstream).
    #[arg(long = "max-headers", default_value_t = 100)]
    pub max_headers: usize,

    /// Largest request body in bytes; bigger answers 413.
    #[arg(long = "max-request-body-bytes", default_value_t = 1024 * 1024)]
    pub max_request_body_bytes: u64,

    /// Upstream rate limit as N/PERIOD (PERIOD: ms, s, m or h, e.g. 10/1m, 5/2s, 20000/1s).
    /// Every attempt, first or retry, takes a slot.
    #[arg(long = "rate-limit", default_value = "10/1m")]
    pub rate_limit: String,

    /// What one rate-limit budget covers: `endpoint` (each allowlisted path has its own, the
    /// original's behaviour) or `origin` (all endpoints share one, as the upstream counts per key).
    #[arg(long = "rate-limit-scope", default_value = "endpoint")]
    pub rate_limit_scope: String,

    /// `sliding-window` (exact: never more than N sends in any rolling PERIOD, summed over all
    /// workers) or `token-bucket` (bursts of N, refilling at N/PERIOD).
    #[arg(long = "rate-limit-algorithm", default_value = "sliding-window")]
    pub rate_limit_algorithm: String,

    /// Safety margin added to the sliding window's PERIOD, in milliseconds, so that network
    /// jitter cannot push a send into the upstream's window. Default: PERIOD/20, at most 1000.
    #[arg(long = "rate-limit-margin-ms")]
    pub rate_limit_margin_ms: Option<u64>,

    /// Which failures are retried: comma list of status codes, `5xx`, `connect-error`,
    /// `timeout`.
    #[arg(
        long = "retry-on",
        default_value = "connect-error,timeout,429,502,503,504"
    )]
    pub retry_on: String,

    /// Base of the exponential retry backoff (full jitter), in milliseconds.
    #[arg(long = "retry-base-ms", default_value_t = 1000)]
    pub retry_base_ms: u64,

    /// Cap of one retry delay, in milliseconds (a larger Retry-After is still honoured).
    #[arg(long = "retry-max-ms", default_value_t = 60_000)]
    pub retry_max_ms: u64,

    /// Most attempts per job (first try included).
    #[arg(long = "retry-max-attempts", default_value_t = 100)]
    pub retry_max_attempts: u32,

    /// A job that has not reached a terminal state this long after it was accepted fails
    /// (e.g. 24h, 90m, 30s, 500ms).
    #[arg(long = "job-ttl", default_value = "24h")]
    pub job_ttl: String,

    /// How long finished jobs stay queryable at /_sluice/jobs/<id> (e.g. 1h).
    #[arg(long = "job-retention", default_value = "1h")]
    pub job_retention: String,

    /// Largest upstream response body sluice keeps for a deferred job (its /result and its
    /// callback), in bytes. A bigger answer fails the job with a 502 result.
    #[arg(long = "max-response-body-bytes", default_value_t = 8 * 1024 * 1024)]
    pub max_response_body_bytes: u64,

    /// Which identical requests (method, path, query without `callback`, body) share one
    /// upstream call while a job for them is open: `off`, `safe` (GET and HEAD) or `all`.
    #[arg(long = "dedup", default_value = "safe")]
    pub dedup: String,

    /// Most open jobs (in flight upstream or waiting for a slot, whether their client still
    /// waits or already got a 202) across all workers; beyond it, requests answer 503 with
    /// Retry-After.
    #[arg(long = "max-inflight", default_value_t = 10_000)]
    pub max_inflight: usize,

    /// Signs callbacks per the Standard Webhooks spec (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`) with this `whsec_<base64>` secret. Also from SLUICE_WEBHOOK_SECRET.
    #[arg(
        long = "webhook-secret",
        env = "SLUICE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,

    /// Restricts where callbacks may go: comma list of host names (`hooks.example.com`,
    /// `*.example.com`), IPs and CIDRs (`10.0.0.0/8`). Default: anywhere.
    #[arg(long = "callback-allow")]
    pub callback_allow: Option<String>,

    /// First webhook retry delay in milliseconds (exponential backoff with full jitter).
    #[arg(long = "webhook-retry-base-ms", default_value_t = 5000)]
    pub webhook_retry_base_ms: u64,

    /// Longest delay between two webhook attempts, in milliseconds (a larger Retry-After is
    /// honoured).
    #[arg(long = "webhook-retry-max-ms", default_value_t = 600_000)]
    pub webhook_retry_max_ms: u64,

    /// Stop retrying a callback this long after its first attempt (e.g. 24h).
    #[arg(long = "webhook-give-up-after", default_value = "24h")]
    pub webhook_give_up_after: String,

    /// Timeout of one webhook attempt (connect, TLS, request, response head), in milliseconds.
    #[arg(long = "webhook-timeout-ms", default_value_t = 15_000)]
    pub webhook_timeout_ms: u64,

    /// What is logged on stderr: a level (error, warn, info, debug, trace, off) or directives
    /// `LEVEL,TARGET=LEVEL,...` over the targets general, server, proxy, jobs, webhook, store,
    /// config and access. Default: RUST_LOG when set, else info.
    #[arg(long = "log-level")]
    pub log_level: Option<String>,

    /// Access log on stderr, one line per answered request: off, text (nginx-like) or json.
    #[arg(long = "access-log", default_value = "off")]
    pub access_log: String,

    /// The `RUST_LOG` environment variable: the log filter when neither `--log-level` nor the
    /// file's `log_level` is given.
    #[arg(skip)]
    pub rust_log: Option<std::ffi::OsString>,

    /// Directory of the job store (created if missing, mode 0700): jobs that got a 202,
    /// undelivered callbacks and the rate-limit send history survive restarts and crashes.
    #[arg(long = "data-dir", default_value = "./sluice-data")]
    pub data_dir: PathBuf,

    /// Keep jobs in memory only: a restart loses open jobs and pending callbacks.
    #[arg(long = "no-persist")]
    pub no_persist: bool,

    /// `on`: every upstream attempt of a job carries `Idempotency-Key: <job id>` (unless the
    /// client sent its own), so a retry after a crash is safe for origins that honour it.
    #[arg(long = "idempotency-key", default_value = "on")]
    pub idempotency_key: String,

    /// After SIGTERM or SIGINT, how long waiting clients may still get their answer (or their
    /// 202) before sluice stores what is open and exits (e.g. 30s). A second signal exits at
    /// once.
    #[arg(long = "shutdown-grace", default_value = "30s")]
    pub shutdown_grace: String,

    /// TOML file with any of these settings (keys are the long flag names in snake_case) plus
    /// `[[endpoint]]` tables with per-endpoint settings. Flags override the file. SIGHUP
    /// re-reads it. See sluice.example.toml.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,

    /// The file's `[[endpoint]]` tables (replaced by `--paths` given as a flag).
    #[arg(skip)]
    pub file_endpoints: Vec<crate::config_file::EndpointTable>,

    /// The file's `[group.<name>]` tables.
    #[arg(skip)]
    pub file_groups: std::collections::BTreeMap<String, crate::config_file::GroupTable>,

    /// Whether `paths` came from the file (not the command line).
    #[arg(skip)]
    pub paths_from_file: bool,
}

/// A start-up configuration error: which flag, and what is wrong with it. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag (`--rate-limit`) or, for per-endpoint settings, the file key
    /// (`endpoint[2].rate_limit`, counting from 1).
    pub flag: std::borrow::Cow<'static, str>,
    pub message: String,
}

impl ConfigError {
    fn new(flag: impl Into<std::borrow::Cow<'static, str>>, message: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Scheme of the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The parsed `--origin` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    /// Host name or IP address, without IPv6 brackets (used for DNS and TLS SNI).
    pub host: String,
    pub port: u16,
    /// The `Host` header value sent upstream: the authority as the user wrote it, minus a
    /// default port.
    pub authority: String,
    /// Path prefix prepended to forwarded paths, without a trailing '/'; empty for none.
    pub path_prefix: String,
}

impl Origin {
    /// Parses an `http://` or `https://` URL: `scheme://host[:port][/path]`. User info, query
    /// and fragment are refused because none of them has a meaning for a gateway's origin.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let (scheme, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!("must be an http:// or https:// URL (got {url:?})"));
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "must not contain a query or fragment (got {url:?})"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!("must not contain user info (got {url:?})"));
        }
        if authority.is_empty() {
            return Err(format!("has no host (got {url:?})"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("has an invalid host or port (got {url:?})"))?;
        let port = port.unwrap_or(default_port);
        if port == 0 {
            return Err(format!("has port 0 (got {url:?})"));
        }
        if host.parse::<IpAddr>().is_err() && !is_valid_dns_name(host) {
            return Err(format!("has an invalid host name {host:?}"));
        }
        let host_for_header = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = if port == default_port {
            host_for_header
        } else {
            format!("{host_for_header}:{port}")
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "has whitespace or control characters in its path (got {url:?})"
            ));
        }
        let path_prefix = path.trim_end_matches('/').to_string();
        Ok(Origin {
            scheme,
            host: host.to_string(),
            port,
            authority,
            path_prefix,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.path_prefix
        )
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Splits `host[:port]` or `[v6][:port]`. Returns None on a malformed port or bracket.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        host.parse::<std::net::Ipv6Addr>().ok()?;
        return Some((host, port));
    }
    match authority.rfind(':') {
        Some(i) => {
            let port = authority[i + 1..].parse::<u16>().ok()?;
            Some((&authority[..i], Some(port)))
        }
        None => Some((authority, None)),
    }
}

fn is_valid_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Timeouts, all validated non-zero.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub ingress_request: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub upstream_read: Duration,
    pub upstream_idle: Duration,
    pub client_header: Duration,
    pub client_idle: Duration,
    pub client_body: Duration,
    /// Idle time after which a keep-alive connection parks (see `proxy`).
    pub client_park: Duration,
}

/// The validated runtime configuration shared (read-only, behind an `Arc`) by all workers.
#[derive(Debug)]
pub struct Config {
    pub token: Secret,
    pub allowlist: Allowlist,
    pub listen: IpAddr,
    pub port: u16,
    /// The admin listener's address (`--admin-listen`); `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    pub origin: Origin,
    pub workers: usize,
    pub ca_file: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub upstream_max_idle: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_request_body_bytes: u64,
    /// What is logged (`--log-level`, else `RUST_LOG`); reloadable.
    pub log_filter: crate::log::Filter,
    /// `--access-log`; reloadable.
    pub access_log: crate::log::AccessLog,
    pub executor: ExecutorConfig,
    /// The job store's directory; `None` with `--no-persist`.
    pub data_dir: Option<PathBuf>,
    /// Whether attempts carry `Idempotency-Key: <job id>`.
    pub idempotency_key: bool,
    /// How long a graceful shutdown waits for waiting clients.
    pub shutdown_grace: Duration,
    /// Settings of each allowlist entry, in allowlist order.
    pub endpoints: Vec<EndpointSpec>,
    /// Named shared rate limits (`[group.<name>]`).
    pub groups: Vec<GroupSpec>,
    /// The config file, if any (what SIGHUP re-reads).
    pub config_file: Option<PathBuf>,
    /// Whether the endpoints come from `--paths`/`paths` (not `[[endpoint]]` tables).
    pub endpoints_from_paths: bool,
    /// Whether `--rate-limit-margin-ms` was set (else each limiter uses its own default).
    pub rate_limit_margin_given: bool,
}

/// Validated settings of one endpoint (an allowlist entry).
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// As in the allowlist: exact, or a prefix ending in `/*`.
    pub path: String,
    /// Bit `1 << (method as u16)` for each allowed method; 0 allows any method.
    pub methods: u16,
    pub limit: LimitChoice,
    pub retry: crate::jobs::backoff::RetryPolicy,
    pub dedup: DedupMode,
    /// How long the client waits for the answer before it gets a 202.
    pub deadline: Duration,
}

/// Where an endpoint's rate limit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitChoice {
    /// The global `--rate-limit` under `--rate-limit-scope`.
    Global,
    /// Its own limit.
    Own(crate::limit::RateSpec, crate::limit::Algorithm),
    /// The `[group.<name>]` of this name.
    Group(String),
}

/// A `[group.<name>]`: a rate limit shared by the endpoints naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub spec: crate::limit::RateSpec,
    pub algorithm: crate::limit::Algorithm,
}

/// Settings of the job executor (rate limits, retries, job lifetime).
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub rate_limit: crate::limit::RateSpec,
    pub rate_limit_scope: crate::limit::Scope,
    pub rate_limit_algorithm: crate::limit::Algorithm,
    pub rate_limit_margin: Duration,
    pub retry: crate::jobs::backoff::RetryPolicy,
    pub job_retention: Duration,
    pub max_response_body_bytes: u64,
    pub webhook_secret: Option<crate::webhook::WebhookSecret>,
    pub callback_allow: crate::webhook::CallbackAllow,
    pub webhook_retry: crate::webhook::RetryPolicy,
    pub webhook_timeout: Duration,
    pub max_inflight: usize,
    pub dedup: DedupMode,
}

/// Which requests are deduplicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupMode {
    Off,
    /// GET and HEAD only: repeating them is harmless by definition.
    Safe,
    /// Every method (the operator knows the upstream's semantics).
    All,
}

impl DedupMode {
    pub fn parse(s: &str) -> Result<DedupMode, String> {
        match s {
            "off" => Ok(DedupMode::Off),
            "safe" => Ok(DedupMode::Safe),
            "all" => Ok(DedupMode::All),
            _ => Err(format!("must be off, safe or all (got {s:?})")),
        }
    }

    pub fn applies(self, method: crate::http::request::Method) -> bool {
        use crate::http::request::Method;
        match self {
            DedupMode::Off => false,
            DedupMode::Safe => matches!(method, Method::Get | Method::Head),
            DedupMode::All => true,
        }
    }
}

/// The log filter: `--log-level` (or the file's `log_level`) when given, else `RUST_LOG` when
/// set and not empty, else `info`. An error names where the directives came from.
fn log_filter(
    flag: Option<&str>,
    rust_log: Option<&std::ffi::OsStr>,
) -> Result<crate::log::Filter, ConfigError> {
    if let Some(spec) = flag {
        return crate::log::Filter::parse(spec).map_err(|e| ConfigError::new("--log-level", e));
    }
    match rust_log.filter(|v| !v.is_empty()) {
        None => Ok(crate::log::Filter::default()),
        Some(v) => {
            let spec = v
                .to_str()
                .ok_or_else(|| ConfigError::new(RUST_LOG, "is not valid UTF-8"))?;
            crate::log::Filter::parse(spec).map_err(|e| ConfigError::new(RUST_LOG, e))
        }
    }
}

/// The environment variable read when no `--log-level` is given.
pub const RUST_LOG: &str = "RUST_LOG";

fn millis(flag: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::new(flag, "must be at least 1 (milliseconds)"));
    }
    Ok(Duration::from_millis(ms))
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(mut cli: Cli) -> Result<Config, ConfigError> {
        let has_file_endpoints = cli.paths.is_none() && !cli.file_endpoints.is_empty();
        let missing: Vec<&str> = [
            ("--token <TOKEN>", cli.token.is_none()),
            (
                "--paths <PATHS>",
                cli.paths.is_none() && !has_file_endpoints,
            ),
            ("--origin <ORIGIN>", cli.origin.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(f, _)| *f)
        .collect();
        if !missing.is_empty() {
            return Err(ConfigError::new(
                "missing",
                format!(
                    "the following required arguments were not provided: {}",
                    missing.join(" ")
                ),
            ));
        }
        let token = cli.token.take().unwrap_or_default();
        let origin_text = cli.origin.take().unwrap_or_default();
        if token.is_empty() {
            return Err(ConfigError::new("--token", "must not be empty"));
        }
        if token
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || b == 0 || (b < b' ' && b != b'\t') || b == 0x7f)
        {
            return Err(ConfigError::new(
                "--token",
                "must not contain control characters (it is sent as a header value)",
            ));
        }
        let (allowlist, endpoints, groups) = endpoint_specs(&cli, &executor_config(&cli)?, {
            millis(
                "--ingress-request-timeout-ms",
                cli.ingress_request_timeout_ms,
            )?
        })?;
        let origin = Origin::parse(&origin_text).map_err(|e| ConfigError::new("--origin", e))?;
        let listen: IpAddr = cli.listen.parse().map_err(|_| {
            ConfigError::new(
                "--listen",
                format!(
                    "must be an IP address such as 0.0.0.0 or ::1 (got {:?})",
                    cli.listen
                ),
            )
        })?;
        let admin_listen = match &cli.admin_listen {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "--admin-listen",
                    format!("must be an IP address and port such as 127.0.0.1:9901 or [::1]:9901 (got {text:?})"),
                )
            })?),
            None => None,
        };
        let workers = match cli.workers {
            Some(0) => return Err(ConfigError::new("--workers", "must be at least 1")),
            Some(n) if n > 1024 => {
                return Err(ConfigError::new("--workers", "must be at most 1024"));
            }
            Some(n) => n,
            None => crate::server::allowed_cpus().len().max(1),
        };
        if let Some(path) = &cli.ca_file {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::new(
                    "--ca-file",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        if cli.max_head_bytes < 256 || cli.max_head_bytes > MAX_HEAD_BYTES_CEILING {
            return Err(ConfigError::new(
                "--max-head-bytes",
                format!("must be between 256 and {MAX_HEAD_BYTES_CEILING}"),
            ));
        }
        if cli.max_headers == 0 || cli.max_headers > crate::http::MAX_HEADERS_CAP {
            return Err(ConfigError::new(
                "--max-headers",
                format!("must be between 1 and {}", crate::http::MAX_HEADERS_CAP),
            ));
        }
        let log_filter = log_filter(cli.log_level.as_deref(), cli.rust_log.as_deref())?;
        let access_log = crate::log::AccessLog::parse(&cli.access_log)
            .map_err(|e| ConfigError::new("--access-log", e))?;
        let timeouts = Timeouts {
            ingress_request: millis(
                "--ingress-request-timeout-ms",
                cli.ingress_request_timeout_ms,
            )?,
            upstream_connect: millis(
                "--upstream-connect-timeout-ms",
                cli.upstream_connect_timeout_ms,
            )?,
            upstream_response: millis(
                "--upstream-response-timeout-ms",
                cli.upstream_response_timeout_ms,
            )?,
            upstream_read: millis("--upstream-read-timeout-ms", cli.upstream_read_timeout_ms)?,
            upstream_idle: millis("--upstream-idle-timeout-ms", cli.upstream_idle_timeout_ms)?,
            client_header: millis("--client-header-timeout-ms", cli.client_header_timeout_ms)?,
            client_idle: millis("--client-idle-timeout-ms", cli.client_idle_timeout_ms)?,
            client_body: millis("--client-body-timeout-ms", cli.client_body_timeout_ms)?,
            client_park: millis("--client-park-ms", cli.client_park_ms)?,
        };
        let executor = executor_config(&cli)?;
        let idempotency_key = match cli.idempotency_key.as_str() {
            "on" => true,
            "off" => false,
            other => {
                return Err(ConfigError::new(
                    "--idempotency-key",
                    format!("must be on or off (got {other:?})"),
                ))
            }
        };
        let shutdown_grace = parse_duration(&cli.shutdown_grace)
            .map_err(|e| ConfigError::new("--shutdown-grace", e))?;
        if cli.data_dir.as_os_str().is_empty() && !cli.no_persist {
            return Err(ConfigError::new(
                "--data-dir",
                "must not be empty (or give --no-persist)",
            ));
        }
        Ok(Config {
            token: Secret(token),
            allowlist,
            listen,
            port: cli.port,
            admin_listen,
            origin,
            workers,
            ca_file: cli.ca_file,
            timeouts,
            upstream_max_idle: cli.upstream_max_idle,
            max_head_bytes: cli.max_head_bytes,
            max_headers: cli.max_headers,
            max_request_body_bytes: cli.max_request_body_bytes,
            log_filter,
            access_log,
            executor,
            data_dir: (!cli.no_persist).then_some(cli.data_dir),
            idempotency_key,
            shutdown_grace,
            endpoints,
            groups,
            endpoints_from_paths: cli.paths.is_some(),
            rate_limit_margin_given: cli.rate_limit_margin_ms.is_some(),
            config_file: cli.config,
        })
    }
}

/// The allowlist and per-endpoint settings: from `--paths` (a flag, or `paths` in the file
/// when it has no `[[endpoint]]`), every endpoint with the global settings; else from the
/// file's `[[endpoint]]` tables, whose absent keys take the global settings.
fn endpoint_specs(
    cli: &Cli,
    ex: &ExecutorConfig,
    deadline: Duration,
) -> Result<(Allowlist, Vec<EndpointSpec>, Vec<GroupSpec>), ConfigError> {
    use crate::limit::{Algorithm, RateSpec};
    let mut groups = Vec::new();
    for (name, table) in &cli.file_groups {
        let key = |k: &str| format!("group.{name}.{k}");
        if name.is_empty()
            || name == crate::limit::ORIGIN_LIMITER
            || name.starts_with("endpoint-")
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::new(
                format!("group.{name}"),
                "a group name is letters, digits, '-' and '_', and not \"origin\" or \"endpoint-*\"",
            ));
        }
        let spec = RateSpec::parse(&table.rate_limit)
            .map_err(|e| ConfigError::new(key("rate_limit"), e))?;
        let algorithm = match &table.algorithm {
            Some(a) => Algorithm::parse(a).map_err(|e| ConfigError::new(key("algorithm"), e))?,
            None => ex.rate_limit_algorithm,
        };
        groups.push(GroupSpec {
            name: name.clone(),
            spec,
            algorithm,
        });
    }
    let global = |path: &str| EndpointSpec {
        path: path.to_string(),
        methods: 0,
        limit: LimitChoice::Global,
        retry: ex.retry.clone(),
        dedup: ex.dedup,
        deadline,
    };
    if let Some(paths) = &cli.paths {
        if !cli.file_endpoints.is_empty() && cli.paths_from_file {
            return Err(ConfigError::new(
                "--paths",
                "the config file has both `paths` and [[endpoint]] tables: keep one",
            ));
        }
        let allowlist = Allowlist::parse(paths).map_err(|e| ConfigError::new("--paths", e))?;
        let endpoints = (0..allowlist.len())
            .map(|i| global(allowlist.entry(i)))
            .collect();
        return Ok((allowlist, endpoints, groups));
    }
    let mut endpoints = Vec::with_capacity(cli.file_endpoints.len());
    for (n, table) in cli.file_endpoints.iter().enumerate() {
        let key = |k: &str| format!("endpoint[{}].{k}", n + 1);
        if table.path.contains(',') {
            return Err(ConfigError::new(key("path"), "must not contain ','"));
        }
        Allowlist::parse(&table.path).map_err(|e| ConfigError::new(key("path"), e))?;
        let mut spec = global(&table.path);
        if let Some(methods) = &table.methods {
            if methods.is_empty() {
                return Err(ConfigError::new(
                    key("methods"),
                    "must list at least one method (leave it out to allow any)",
                ));
            }
            for m in methods {
                let method = crate::http::request::Method::from_bytes(m.as_bytes());
                if method == crate::http::request::Method::Other {
                    return Err(ConfigError::new(
                        key("methods"),
                        format!("unknown method {m:?} (use GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE or CONNECT)"),
                    ));
                }
                spec.methods |= 1 << (method as u16);
            }
        }
        let algorithm = match &table.algorithm {
            Some(a) => {
                Some(Algorithm::parse(a).map_err(|e| ConfigError::new(key("algorithm"), e))?)
            }
            None => None,
        };
        spec.limit = match (&table.rate_limit, &table.group) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("group"),
                    "give either rate_limit or group, not both",
                ))
            }
            (Some(text), None) => LimitChoice::Own(
                RateSpec::parse(text).map_err(|e| ConfigError::new(key("rate_limit"), e))?,
                algorithm.unwrap_or(ex.rate_limit_algorithm),
            ),
            (None, Some(group)) => {
                if algorithm.is_some() {
                    return Err(ConfigError::new(
                        key("algorithm"),
                        "an endpoint in a group uses the group's algorithm",
                    ));
                }
                if !groups.iter().any(|g| &g.name == group) {
                    return Err(ConfigError::new(
                        key("group"),
                        format!("no [group.{group}] table"),
                    ));
                }
                LimitChoice::Group(group.clone())
            }
            (None, None) => {
                if algorithm.is_some() {
                    return Err(ConfigError::new(
                        key("algorithm"),
                        "needs rate_limit on the same endpoint",
                    ));
                }
                LimitChoice::Global
            }
        };
        if let Some(retry) = &table.retry {
            let p = &mut spec.retry;
            if let Some(ms) = retry.base_ms {
                p.base = millis_key(key("retry.base_ms"), ms)?;
            }
            if let Some(ms) = retry.max_ms {
                p.max = millis_key(key("retry.max_ms"), ms)?;
            }
            if p.max < p.base {
                return Err(ConfigError::new(
                    key("retry.max_ms"),
                    "must be at least retry.base_ms",
                ));
            }
            if let Some(n) = retry.max_attempts {
                if n == 0 {
                    return Err(ConfigError::new(
                        key("retry.max_attempts"),
                        "must be at least 1",
                    ));
                }
                p.max_attempts = n;
            }
            if let Some(on) = &retry.on {
                p.retry_on = crate::jobs::backoff::RetryOn::parse(on)
                    .map_err(|e| ConfigError::new(key("retry.on"), e))?;
            }
        }
        if let Some(d) = &table.dedup {
            spec.dedup = DedupMode::parse(d).map_err(|e| ConfigError::new(key("dedup"), e))?;
        }
        if let Some(ms) = table.deadline_ms {
            spec.deadline = millis_key(key("deadline_ms"), ms)?;
        }
        endpoints.push(spec);
    }
    let joined: Vec<&str> = endpoints.iter().map(|e| e.path.as_str()).collect();
    let allowlist =
        Allowlist::parse(&joined.join(",")).map_err(|e| ConfigError::new("endpoint", e))?;
    Ok((allowlist, endpoints, groups))
}

fn millis_key(key: String, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::new(key, "must be at least 1 (milliseconds)"));
    }
    Ok(Duration::from_millis(ms))
}

fn executor_config(cli: &Cli) -> Result<ExecutorConfig, ConfigError> {
    use crate::limit::{Algorithm, RateSpec, Scope};
    let rate_limit =
        RateSpec::parse(&cli.rate_limit).map_err(|e| ConfigError::new("--rate-limit", e))?;
    let rate_limit_scope = Scope::parse(&cli.rate_limit_scope)
        .map_err(|e| ConfigError::new("--rate-limit-scope", e))?;
    let rate_limit_algorithm = Algorithm::parse(&cli.rate_limit_algorithm)
        .map_err(|e| ConfigError::new("--rate-limit-algorithm", e))?;
    let rate_limit_margin = match cli.rate_limit_margin_ms {
        Some(ms) => Duration::from_millis(ms),
        None => rate_limit.default_margin(),
    };
    let retry_on = crate::jobs::backoff::RetryOn::parse(&cli.retry_on)
        .map_err(|e| ConfigError::new("--retry-on", e))?;
    let base = millis("--retry-base-ms", cli.retry_base_ms)?;
    let max = millis("--retry-max-ms", cli.retry_max_ms)?;
    if max < base {
        return Err(ConfigError::new(
            "--retry-max-ms",
            "must be at least --retry-base-ms",
        ));
    }
    if cli.retry_max_attempts == 0 {
        return Err(ConfigError::new(
            "--retry-max-attempts",
            "must be at least 1",
        ));
    }
    let ttl = parse_duration(&cli.job_ttl).map_err(|e| ConfigError::new("--job-ttl", e))?;
    let job_retention =
        parse_duration(&cli.job_retention).map_err(|e| ConfigError::new("--job-retention", e))?;
    Ok(ExecutorConfig {
        rate_limit,
        rate_limit_scope,
        rate_limit_algorithm,
        rate_limit_margin,
        retry: crate::jobs::backoff::RetryPolicy {
            base,
            max,
            max_attempts: cli.retry_max_attempts,
            ttl,
            retry_on,
        },
        job_retention,
        max_response_body_bytes: cli.max_response_body_bytes,
        webhook_secret: match &cli.webhook_secret {
            Some(text) => Some(
                crate::webhook::WebhookSecret::parse(text)
                    .map_err(|e| ConfigError::new("--webhook-secret", e))?,
            ),
            None => None,
        },
        webhook_retry: {
            let first = millis("--webhook-retry-base-ms", cli.webhook_retry_base_ms)?;
            let max = millis("--webhook-retry-max-ms", cli.webhook_retry_max_ms)?;
            if max < first {
                return Err(ConfigError::new(
                    "--webhook-retry-max-ms",
                    "must be at least --webhook-retry-base-ms",
                ));
            }
            crate::webhook::RetryPolicy {
                first_delay: first,
                min_delay: first.min(Duration::from_secs(1)),
                max_delay: max,
                give_up_after: parse_duration(&cli.webhook_give_up_after)
                    .map_err(|e| ConfigError::new("--webhook-give-up-after", e))?,
            }
        },
        webhook_timeout: millis("--webhook-timeout-ms", cli.webhook_timeout_ms)?,
        dedup: DedupMode::parse(&cli.dedup).map_err(|e| ConfigError::new("--dedup", e))?,
        max_inflight: match cli.max_inflight {
            0 => return Err(ConfigError::new("--max-inflight", "must be at least 1")),
            n => n,
        },
        callback_allow: match &cli.callback_allow {
            Some(list) => crate::webhook::CallbackAllow::parse(list)
                .map_err(|e| ConfigError::new("--callback-allow", e))?,
            None => crate::webhook::CallbackAllow::default(),
        },
    })
}

/// Parses a duration such as `24h`, `90m`, `30s` or `500ms` (a number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h (e.g. 24h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 24h, 90m, 30s or 500ms"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?} has an unknown unit (use ms, s, m, h or d)")),
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if ms == 0 {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(Duration::from_millis(ms))
}

impl Config {
    /// Parses and validates a command line (including `argv[0]`). Help and version requests
    /// come back as `Err(CliExit::Print)` with exit code 0.
    pub fn from_args<I, T>(args: I) -> Result<Config, CliExit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::from_args_env(args, std::env::var_os(RUST_LOG))
    }

    /// [`Config::from_args`] with the value of `RUST_LOG` given (tests pass their own).
    fn from_args_env<I, T>(args: I, rust_log: Option<std::ffi::OsString>) -> Result<Config, CliExit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = match Cli::command().try_get_matches_from(args) {
            Ok(m) => m,
            Err(e) => return Err(CliExit::from_clap(e)),
        };
        let mut cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => return Err(CliExit::from_clap(e)),
        };
        cli.rust_log = rust_log;
        let mut from_file = Vec::new();
        if let Some(path) = cli.config.clone() {
            let file = crate::config_file::load(&path).map_err(CliExit::Invalid)?;
            from_file = merge_file(&mut cli, file, &matches);
        }
        let file_name = cli.config.as_ref().map(|p| p.display().to_string());
        Config::try_from(cli).map_err(|e| {
            // An invalid value that came from the file is named by its key there.
            let key = e
                .flag
                .strip_prefix("--")
                .unwrap_or(&e.flag)
                .replace('-', "_");
            let from_the_file = if e.flag.starts_with("--") {
                from_file.contains(&key)
            } else {
                e.flag != "missing" && e.flag != RUST_LOG
            };
            match &file_name {
                _ if e.flag == "missing" => CliExit::Invalid(e.message),
                Some(file) if from_the_file => {
                    CliExit::Invalid(format!("{file}: {key}: {}", e.message))
                }
                _ => CliExit::Invalid(e.to_string()),
            }
        })
    }
}

/// Fills every flag not given on the command line (or in its environment variable) from the
/// file; returns the keys taken from the file.
fn merge_file(
    cli: &mut Cli,
    file: crate::config_file::FileConfig,
    matches: &clap::ArgMatches,
) -> Vec<String> {
    use clap::parser::ValueSource;
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut taken = Vec::new();
    macro_rules! merge {
        ($($field:ident),* $(,)?) => {$(
            if let Some(v) = file.$field {
                if !given(stringify!($field)) {
                    cli.$field = v;
                    taken.push(stringify!($field).to_string());
                }
            }
        )*};
    }
    macro_rules! merge_opt {
        ($($field:ident),* $(,)?) => {$(
            if let Some(v) = file.$field {
                if !given(stringify!($field)) {
                    cli.$field = Some(v);
                    taken.push(stringify!($field).to_string());
                }
            }
        )*};
    }
    merge_opt!(
        token,
        paths,
        origin,
        workers,
        ca_file,
        rate_limit_margin_ms,
        webhook_secret,
        callback_allow,
        admin_listen,
        log_level,
    );
    merge!(
        port,
        ingress_request_timeout_ms,
        listen,
        upstream_connect_timeout_ms,
        upstream_response_timeout_ms,
        upstream_read_timeout_ms,
        upstream_idle_timeout_ms,
        upstream_max_idle,
        client_header_timeout_ms,
        client_idle_timeout_ms,
        client_body_timeout_ms,
        client_park_ms,
        max_head_bytes,
        max_headers,
        max_request_body_bytes,
        rate_limit,
        rate_limit_scope,
        rate_limit_algorithm,
        retry_on,
        retry_base_ms,
        retry_max_ms,
        retry_max_attempts,
        job_ttl,
        job_retention,
        max_response_body_bytes,
        dedup,
        max_inflight,
        webhook_retry_base_ms,
        webhook_retry_max_ms,
        webhook_give_up_after,
        webhook_timeout_ms,
        access_log,
        data_dir,
        no_persist,
        idempotency_key,
        shutdown_grace,
    );
    cli.paths_from_file = taken.iter().any(|k| k == "paths");
    if !given("paths") {
        cli.file_endpoints = file.endpoint;
    }
    cli.file_groups = file.group;
    taken
}

/// Why the command line did not produce a configuration.
#[derive(Debug)]
pub enum CliExit {
    /// `--help` or `--version`: print this on stdout and exit 0.
    Print(String),
    /// A missing or invalid value: one line naming the flag; exit non-zero.
    Invalid(String),
}

impl CliExit {
    fn from_clap(e: clap::Error) -> CliExit {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => CliExit::Print(e.to_string()),
            _ => CliExit::Invalid(one_line_clap_error(&e.to_string())),
        }
    }
}

/// clap renders errors over several lines (message, indented argument list, usage, hint).
/// Fold them into one: the message plus any indented continuation lines (which name the
/// missing flags), without the usage and hint.
fn one_line_clap_error(rendered: &str) -> String {
    let mut out = String::new();
    for line in rendered.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if !out.is_empty() {
                break;
            }
            continue;
        }
        if trimmed.starts_with("Usage:") || trimmed.starts_with("For more information") {
            break;
        }
        if trimmed.starts_with("tip:") {
            continue;
        }
        let trimmed = trimmed.strip_prefix("error: ").unwrap_or(trimmed);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(trimmed);
    }
    if out.is_empty() {
        out.push_str("invalid command line (see --help)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "sluice",
            "-t",
            "tok",
            "--paths",
            "/a,/b/*",
            "-o",
            "http://127.0.0.1:9000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn seed_command_line_parses() {
        let c = Config::from_args([
            "sluice",
            "-t",
            "6f6b94ab1205cf14b80eb62617d59c17",
            "--paths",
            "/crypto/sign,/crypto/verify",
            "-p",
            "8080",
            "-o",
            "https://hiring.api.synthesia.io",
        ])
        .unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.origin.scheme, Scheme::Https);
        assert_eq!(c.origin.port, 443);
        assert_eq!(c.origin.authority, "hiring.api.synthesia.io");
        assert_eq!(c.timeouts.ingress_request, Duration::from_millis(2000));
        assert_eq!(c.allowlist.len(), 2);
        assert!(!format!("{c:?}").contains("6f6b94ab"));
    }

    #[test]
    fn origin_forms() {
        let o = Origin::parse("http://127.0.0.1:5000/base/").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.authority.as_str()),
            ("127.0.0.1", 5000, "127.0.0.1:5000")
        );
        assert_eq!(o.path_prefix, "/base");
        let o = Origin::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (o.host.as_str(), o.authority.as_str()),
            ("::1", "[::1]:8443")
        );
        let o = Origin::parse("HTTP://Example.com:80/").unwrap();
        assert_eq!(
            (o.authority.as_str(), o.path_prefix.as_str()),
            ("Example.com", "")
        );
        for bad in [
            "ftp://x",
            "not a url",
            "http://",
            "http://a:b",
            "http://u@h",
            "http://h/?q",
            "http://h:0",
            "http://a b",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--workers", "0"], "--workers"),
            (&["--listen", "nope"], "--listen"),
            (
                &["--upstream-connect-timeout-ms", "0"],
                "--upstream-connect-timeout-ms",
            ),
            (&["--max-head-bytes", "10"], "--max-head-bytes"),
            (&["--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--port", "70000"], "--port"),
        ];
        for (extra, flag) in cases {
            match Config::from_args(args(extra)) {
                Err(CliExit::Invalid(msg)) => {
                    assert!(msg.contains(flag), "{msg:?} should name {flag}");
                    assert!(!msg.contains('\n'), "{msg:?} is one line");
                }
                other => panic!("{extra:?}: expected an error, got {other:?}"),
            }
        }
        match Config::from_args(["sluice", "--paths", "/a"]) {
            Err(CliExit::Invalid(msg)) => {
                assert!(msg.contains("--token") && msg.contains("--origin"), "{msg}");
                assert!(!msg.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "h", "10", "0s", "10x", "-1s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Writes `text` to a fresh file and returns its path.
    fn config_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn with_file(name: &str, text: &str, extra: &[&str]) -> Result<Config, CliExit> {
        let path = config_file(name, text);
        let mut v = vec![
            "sluice".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        Config::from_args(v)
    }

    fn invalid(r: Result<Config, CliExit>) -> String {
        match r {
            Err(CliExit::Invalid(msg)) => {
                assert!(!msg.contains('\n'), "{msg:?} is one line");
                msg
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn the_example_file_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sluice.example.toml");
        let c = Config::from_args(["sluice", "-t", "tok", "--config", path]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.origin.authority, "api.example.com");
        assert_eq!(c.allowlist.len(), 3);
        assert_eq!(c.endpoints[0].path, "/crypto/sign");
        assert_eq!(
            c.endpoints[0].methods,
            1 << (crate::http::request::Method::Post as u16)
        );
        assert_eq!(c.endpoints[0].dedup, DedupMode::Off);
        assert_eq!(c.endpoints[1].limit, LimitChoice::Group("reads".into()));
        assert_eq!(c.endpoints[2].methods, 0);
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.groups[0].algorithm, crate::limit::Algorithm::TokenBucket);
        assert_eq!(c.timeouts.ingress_request, Duration::from_millis(2000));
        assert_eq!(c.executor.retry.max_attempts, 100);
    }

    #[test]
    fn file_fills_flags_and_flags_override_it() {
        let text = "token = \"filetok\"\norigin = \"http://127.0.0.1:9000\"\n\
                    paths = \"/a\"\nport = 7000\nrate_limit = \"5/1s\"\n";
        let c = with_file("override", text, &[]).unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(c.token.expose(), "filetok");
        assert_eq!(
            c.executor.rate_limit,
            crate::limit::RateSpec::parse("5/1s").unwrap()
        );
        let c = with_file(
            "override2",
            text,
            &["-p", "7001", "--rate-limit", "9/1s", "--paths", "/x,/y"],
        )
        .unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(
            c.executor.rate_limit,
            crate::limit::RateSpec::parse("9/1s").unwrap()
        );
        assert_eq!(c.allowlist.len(), 2);
        // --paths on the command line replaces the file's [[endpoint]] tables.
        let text = "token = \"t\"\norigin = \"http://127.0.0.1:9000\"\n\
                    [[endpoint]]\npath = \"/a\"\nmethods = [\"GET\"]\n";
        let c = with_file("override3", text, &["--paths", "/z"]).unwrap();
        assert_eq!((c.allowlist.entry(0), c.endpoints[0].methods), ("/z", 0));
    }

    #[test]
    fn invalid_file_values_name_the_key() {
        let base = "token = \"t\"\norigin = \"http://127.0.0.1:9000\"\n";
        let msg = invalid(with_file(
            "bad1",
            &format!("{base}paths = \"/a\"\nrate_limit = \"ten\"\n"),
            &[],
        ));
        assert!(msg.contains("sluice.toml: rate_limit:"), "{msg}");
        let msg = invalid(with_file(
            "bad2",
            &format!("{base}[[endpoint]]\npath = \"/a\"\n[[endpoint]]\npath = \"/b\"\nrate_limit = \"1/0s\"\n"),
            &[],
        ));
        assert!(msg.contains("endpoint[2].rate_limit:"), "{msg}");
        let msg = invalid(with_file(
            "bad3",
            &format!("{base}[[endpoint]]\npath = \"/a\"\ngroup = \"nope\"\n"),
            &[],
        ));
        assert!(msg.contains("endpoint[1].group:"), "{msg}");
        let msg = invalid(with_file(
            "bad4",
            &format!("{base}[[endpoint]]\npath = \"/a\"\nmethods = [\"FETCH\"]\n"),
            &[],
        ));
        assert!(msg.contains("endpoint[1].methods:"), "{msg}");
        let msg = invalid(with_file(
            "bad5",
            &format!("{base}paths = \"/a\"\nworkerz = 2\n"),
            &[],
        ));
        assert!(msg.contains("workerz"), "{msg}");
        // The same bad value as a flag is named by the flag.
        let msg = invalid(with_file(
            "bad6",
            &format!("{base}paths = \"/a\"\n"),
            &["--rate-limit", "x"],
        ));
        assert!(msg.starts_with("--rate-limit:"), "{msg}");
        let msg = invalid(with_file("bad7", "port = 1\n", &[]));
        assert!(msg.contains("--token") && msg.contains("--origin"), "{msg}");
    }

    #[test]
    fn admin_listen_from_flag_or_file() {
        assert_eq!(Config::from_args(args(&[])).unwrap().admin_listen, None);
        let c = Config::from_args(args(&["--admin-listen", "[::1]:9901"])).unwrap();
        assert_eq!(c.admin_listen, Some("[::1]:9901".parse().unwrap()));
        let base = "token = \"t\"\norigin = \"http://127.0.0.1:9000\"\npaths = \"/a\"\n";
        let text = format!("{base}admin_listen = \"127.0.0.1:9901\"\n");
        let c = with_file("admin1", &text, &[]).unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9901".parse().unwrap()));
        let c = with_file("admin2", &text, &["--admin-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:0".parse().unwrap()));
        let msg = invalid(Config::from_args(args(&[
            "--admin-listen",
            "localhost:9901",
        ])));
        assert!(msg.starts_with("--admin-listen: "), "{msg}");
        let msg = invalid(Config::from_args(args(&["--admin-listen", "127.0.0.1"])));
        assert!(msg.starts_with("--admin-listen: "), "{msg}");
        let msg = invalid(with_file(
            "admin3",
            &format!("{base}admin_listen = \"9901\"\n"),
            &[],
        ));
        assert!(msg.contains("sluice.toml: admin_listen: "), "{msg}");
    }

    #[test]
    fn log_level_comes_from_the_flag_the_file_then_rust_log() {
        use crate::log::{AccessLog, Filter, Level, Target};
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        let with = |extra: &[&str], rust_log| Config::from_args_env(args(extra), rust_log);
        // Default: info, no access log.
        let c = with(&[], None).unwrap();
        assert_eq!(c.log_filter, Filter::default());
        assert_eq!(c.access_log, AccessLog::Off);
        // RUST_LOG when there is no flag; the flag wins over it.
        let c = with(&[], env("warn,proxy=debug")).unwrap();
        assert_eq!(c.log_filter.level(Target::Server), Level::Warn);
        assert_eq!(c.log_filter.level(Target::Proxy), Level::Debug);
        let c = with(&["--log-level", "error"], env("debug")).unwrap();
        assert_eq!(c.log_filter, Filter::parse("error").unwrap());
        // An empty RUST_LOG is unset.
        assert_eq!(with(&[], env("")).unwrap().log_filter, Filter::default());
        // The file's log_level wins over RUST_LOG too.
        let path = config_file("loglevel", "log_level = \"error\"\naccess_log = \"json\"\n");
        let mut v = args(&[]);
        v.extend(["--config".to_string(), path.display().to_string()]);
        let c = Config::from_args_env(v.clone(), env("debug")).unwrap();
        assert_eq!(c.log_filter, Filter::parse("error").unwrap());
        assert_eq!(c.access_log, AccessLog::Json);
        v.extend(["--access-log".to_string(), "text".to_string()]);
        assert_eq!(
            Config::from_args_env(v, None).unwrap().access_log,
            AccessLog::Text
        );
    }

    #[test]
    fn invalid_log_settings_name_their_source() {
        let bad = |extra: &[&str], rust_log: Option<&str>| {
            invalid(Config::from_args_env(
                args(extra),
                rust_log.map(std::ffi::OsString::from),
            ))
        };
        let msg = bad(&["--log-level", "info,nope=debug"], None);
        assert!(
            msg.starts_with("--log-level: unknown target \"nope\""),
            "{msg}"
        );
        let msg = bad(&[], Some("info,proxy=loud"));
        assert!(msg.starts_with("RUST_LOG: unknown level \"loud\""), "{msg}");
        let msg = bad(&["--access-log", "xml"], None);
        assert!(
            msg.starts_with("--access-log: must be off, text or json"),
            "{msg}"
        );
        // With a config file, RUST_LOG is still named as RUST_LOG, a file value by its key.
        let path = config_file("badlog", "paths = \"/a\"\n");
        let v = vec![
            "sluice".to_string(),
            "-t".to_string(),
            "tok".to_string(),
            "-o".to_string(),
            "http://127.0.0.1:9".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        let msg = invalid(Config::from_args_env(v, Some("loud".into())));
        assert!(msg.starts_with("RUST_LOG: "), "{msg}");
        let msg = invalid(with_file(
            "badlog2",
            "token = \"t\"\norigin = \"http://127.0.0.1:9\"\npaths = \"/a\"\nlog_level = \"x=1\"\n",
            &[],
        ));
        assert!(
            msg.contains("sluice.toml: log_level: unknown target"),
            "{msg}"
        );
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(
            Config::from_args(["sluice", "--help"]),
            Err(CliExit::Print(_))
        ));
    }
}
