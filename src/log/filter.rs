//! What gets logged: the levels, the fixed set of targets, the `--log-level` / `RUST_LOG`
//! directive parser ([`Filter`]) and the `--access-log` mode ([`AccessLog`]).
//!
//! Sans-IO: parsing and printing only. Installing a filter (the per-target atomics that every
//! log call reads) is `super::set_filter`.
//!
//! # Directive syntax
//! A comma-separated list of `LEVEL` and `TARGET=LEVEL` items (RUST_LOG style, over a small
//! fixed set of targets rather than module paths): `warn`, `info,proxy=debug`,
//! `error,jobs=info,webhook=info`. A bare `LEVEL` sets every target except `access`; a
//! `TARGET=LEVEL` item sets that target whatever its position; a target named by neither
//! keeps `info`. `access` (the access log's lines, written at `info`) is set only by name, so
//! `--log-level warn --access-log json` quiets the server's own lines and keeps the access log;
//! `access=off` silences it. Target names may carry the crate prefix (`sluice::proxy`), and
//! `sluice=LEVEL` is the bare level (as env_logger users write it). Levels and targets are
//! case-insensitive; a later item overrides an earlier one.

use std::fmt;

/// Log levels, most severe first. `Off` only appears in filters (nothing is logged at it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    /// `error`, `warn` (or `warning`), `info`, `debug`, `trace` or `off`, any case.
    pub fn parse(s: &str) -> Option<Level> {
        const NAMES: [(&str, Level); 7] = [
            ("off", Level::Off),
            ("error", Level::Error),
            ("warn", Level::Warn),
            ("warning", Level::Warn),
            ("info", Level::Info),
            ("debug", Level::Debug),
            ("trace", Level::Trace),
        ];
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, level)| level)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Off,
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a line comes from. A fixed set (not module paths): each is one slot of an array of
/// atomics, so a level check is one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Target {
    /// Lines logged through `log::{error,warn,info,debug}` without a target of their own.
    General = 0,
    /// Start-up, workers, listeners, shutdown.
    Server = 1,
    /// Client connections and forwarding.
    Proxy = 2,
    /// The job executor: accepted, attempts, retries, terminal states.
    Jobs = 3,
    /// Callback deliveries.
    Webhook = 4,
    /// The job store.
    Store = 5,
    /// Configuration and SIGHUP reloads.
    Config = 6,
    /// The access log (one line per answered request, see `--access-log`).
    Access = 7,
}

impl Target {
    /// How many targets there are (the size of the level table).
    pub const COUNT: usize = 8;

    /// Every target, in discriminant order.
    pub const ALL: [Target; Target::COUNT] = [
        Target::General,
        Target::Server,
        Target::Proxy,
        Target::Jobs,
        Target::Webhook,
        Target::Store,
        Target::Config,
        Target::Access,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::General => "general",
            Target::Server => "server",
            Target::Proxy => "proxy",
            Target::Jobs => "jobs",
            Target::Webhook => "webhook",
            Target::Store => "store",
            Target::Config => "config",
            Target::Access => "access",
        }
    }

    /// A target by name (any case; a `sluice::` prefix is accepted).
    pub fn parse(s: &str) -> Option<Target> {
        let name = match s.get(..8) {
            Some(p) if p.eq_ignore_ascii_case("sluice::") => &s[8..],
            _ => s,
        };
        Target::ALL
            .iter()
            .copied()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level of `access` unless a directive names it: the access log is governed by
/// `--access-log`, not by the bare level.
const ACCESS_DEFAULT: Level = Level::Info;

/// The least severe level logged, per target (see the module documentation for the syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The bare level (what every target not named, except `access`, logs at).
    default: Level,
    levels: [Level; Target::COUNT],
}

impl Default for Filter {
    /// `info` everywhere.
    fn default() -> Filter {
        Filter::all(Level::Info)
    }
}

impl Filter {
    /// Every target at `level` (`access` too).
    pub fn all(level: Level) -> Filter {
        Filter {
            default: level,
            levels: [level; Target::COUNT],
        }
    }

    /// Parses directives such as `warn,proxy=debug`. The error is one line without the flag's
    /// name (the caller adds `--log-level` or `RUST_LOG`).
    pub fn parse(spec: &str) -> Result<Filter, String> {
        let mut default = Level::Info;
        let mut named: [Option<Level>; Target::COUNT] = [None; Target::COUNT];
        let mut items = 0;
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            items += 1;
            let level_of = |text: &str| {
                Level::parse(text.trim()).ok_or_else(|| {
                    format!(
                        "unknown level {:?} in {spec:?} (expected error, warn, info, debug, \
                         trace or off)",
                        text.trim()
                    )
                })
            };
            match item.split_once('=') {
                None => default = level_of(item)?,
                // The crate itself, as env_logger users write it: the bare level.
                Some((target, level)) if target.trim().eq_ignore_ascii_case("sluice") => {
                    default = level_of(level)?
                }
                Some((target, level)) => {
                    let t = Target::parse(target.trim()).ok_or_else(|| {
                        let names: Vec<&str> = Target::ALL.iter().map(|t| t.as_str()).collect();
                        format!(
                            "unknown target {:?} in {spec:?} (targets: {})",
                            target.trim(),
                            names.join(", ")
                        )
                    })?;
                    named[t as usize] = Some(level_of(level)?);
                }
            }
        }
        if items == 0 {
            return Err("must not be empty (e.g. info, or warn,proxy=debug)".to_string());
        }
        let mut levels = [default; Target::COUNT];
        levels[Target::Access as usize] = ACCESS_DEFAULT;
        for (slot, level) in levels.iter_mut().zip(named) {
            if let Some(level) = level {
                *slot = level;
            }
        }
        Ok(Filter { default, levels })
    }

    /// The least severe level `target` logs.
    pub fn level(&self, target: Target) -> Level {
        self.levels[target as usize]
    }
}

/// Shortest directives that parse back to this filter: the bare level, then every target that
/// differs from what the bare level gives it (`warn,proxy=debug`).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.default.as_str())?;
        for t in Target::ALL {
            let implied = if t == Target::Access {
                ACCESS_DEFAULT
            } else {
                self.default
            };
            if self.level(t) != implied {
                write!(f, ",{t}={}", self.level(t))?;
            }
        }
        Ok(())
    }
}

/// The access log's mode (`--access-log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum AccessLog {
    #[default]
    Off = 0,
    /// One nginx-like line per request.
    Text = 1,
    /// One JSON object per line.
    Json = 2,
}

impl AccessLog {
    /// `off`, `text` or `json`.
    pub fn parse(s: &str) -> Result<AccessLog, String> {
        match s {
            "off" => Ok(AccessLog::Off),
            "text" => Ok(AccessLog::Text),
            "json" => Ok(AccessLog::Json),
            _ => Err(format!("must be off, text or json (got {s:?})")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccessLog::Off => "off",
            AccessLog::Text => "text",
            AccessLog::Json => "json",
        }
    }

    pub(crate) fn from_u8(v: u8) -> AccessLog {
        match v {
            1 => AccessLog::Text,
            2 => AccessLog::Json,
            _ => AccessLog::Off,
        }
    }
}

impl fmt::Display for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(f: &Filter) -> Vec<(&'static str, Level)> {
        Target::ALL
            .iter()
            .map(|&t| (t.as_str(), f.level(t)))
            .collect()
    }

    #[test]
    fn a_bare_level_sets_every_target_but_access() {
        let f = Filter::parse("warn").unwrap();
        for t in Target::ALL {
            let want = if t == Target::Access {
                Level::Info
            } else {
                Level::Warn
            };
            assert_eq!(f.level(t), want, "{t}");
        }
        assert_eq!(
            Filter::parse("OFF").unwrap().level(Target::Server),
            Level::Off
        );
        assert_eq!(
            Filter::parse("Warning").unwrap().level(Target::Jobs),
            Level::Warn
        );
        assert_eq!(
            Filter::parse("trace").unwrap().level(Target::Proxy),
            Level::Trace
        );
    }

    #[test]
    fn named_targets_win_wherever_they_stand() {
        let f = Filter::parse("proxy=debug, warn ,access=off,sluice::jobs=INFO,").unwrap();
        assert_eq!(
            levels(&f),
            vec![
                ("general", Level::Warn),
                ("server", Level::Warn),
                ("proxy", Level::Debug),
                ("jobs", Level::Info),
                ("webhook", Level::Warn),
                ("store", Level::Warn),
                ("config", Level::Warn),
                ("access", Level::Off),
            ]
        );
        // Without a bare level, the rest stays at info.
        let f = Filter::parse("store=error").unwrap();
        assert_eq!(f.level(Target::Store), Level::Error);
        assert_eq!(f.level(Target::Server), Level::Info);
        assert_eq!(
            Filter::parse("sluice=debug").unwrap(),
            Filter::parse("debug").unwrap()
        );
        // A later item overrides an earlier one.
        let f = Filter::parse("proxy=debug,proxy=error,debug,info").unwrap();
        assert_eq!(f.level(Target::Proxy), Level::Error);
        assert_eq!(f.level(Target::Server), Level::Info);
    }

    #[test]
    fn invalid_directives_are_one_line_errors() {
        for (spec, needle) in [
            ("loud", "unknown level \"loud\""),
            ("info,proxy=loud", "unknown level \"loud\""),
            ("info,nope=debug", "unknown target \"nope\""),
            ("hyper=debug", "unknown target \"hyper\""),
            ("proxy", "unknown level \"proxy\""),
            ("=debug", "unknown target \"\""),
            ("", "must not be empty"),
            (" , ", "must not be empty"),
        ] {
            match Filter::parse(spec) {
                Err(e) => {
                    assert!(e.contains(needle), "{spec:?}: {e}");
                    assert!(!e.contains('\n'), "{e}");
                }
                Ok(f) => panic!("{spec:?} parsed as {f:?}"),
            }
        }
        let e = Filter::parse("info,nope=debug").unwrap_err();
        assert!(e.contains("server") && e.contains("access"), "{e}");
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            "info",
            "warn",
            "off",
            "warn,proxy=debug",
            "debug,access=off",
            "error,general=warn,access=trace",
        ] {
            let f = Filter::parse(spec).unwrap();
            assert_eq!(f.to_string(), spec);
            assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        }
        assert_eq!(
            Filter::parse("proxy=info,info").unwrap().to_string(),
            "info"
        );
        assert_eq!(Filter::default().to_string(), "info");
    }

    #[test]
    fn access_log_modes() {
        assert_eq!(AccessLog::parse("off"), Ok(AccessLog::Off));
        assert_eq!(AccessLog::parse("text"), Ok(AccessLog::Text));
        assert_eq!(AccessLog::parse("json"), Ok(AccessLog::Json));
        assert!(AccessLog::parse("JSON")
            .unwrap_err()
            .contains("off, text or json"));
        for m in [AccessLog::Off, AccessLog::Text, AccessLog::Json] {
            assert_eq!(AccessLog::from_u8(m as u8), m);
        }
    }
}
