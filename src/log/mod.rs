//! Logging: leveled lines per target on stderr, written by one logger thread so that logging
//! never blocks (or allocates on) an I/O worker thread.
//!
//! - [`filter`]: levels, targets, the `--log-level` / `RUST_LOG` directives, `--access-log`.
//! - [`writer`] (re-exported here): the per-thread buffers, the logger thread, the dropped-line
//!   counter, [`flush`] at exit.
//! - [`escape`]: client-controlled bytes in lines (text and JSON).
//! - [`access`]: the access-log line formats (the per-request record they are made from is
//!   `crate::proxy::trace`).
//! - [`startup`]: the start-up line.
//!
//! # Cost below the level
//! The filter is one atomic per target. [`enabled`] is one relaxed load and a compare; the
//! arguments arrive as `fmt::Arguments`, which are only rendered when the line is written. So
//! a call whose level is filtered out costs a branch. Above the level, a line is formatted into
//! the thread's reusable buffer (no allocation in steady state) and handed to the logger thread
//! in batches (see [`writer`]).
//!
//! # Line format
//! `2026-11-26T10:00:00.123Z info server: message`: UTC time to the millisecond, level, target,
//! message. Control characters in a message are escaped (`\n` as `\x0a`): one event is one line.
//! Access-log lines have their own formats (see [`access`]).

pub mod access;
pub mod escape;
pub mod filter;
pub mod startup;
pub mod writer;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

pub use filter::{AccessLog, Filter, Level, Target};
pub use writer::{
    buffer_this_thread, dropped_lines, flush, flush_thread, start, LogGuard, FLUSH_INTERVAL,
    FLUSH_WAIT, HANDOVER_BYTES, QUEUE_BATCHES,
};

/// The least severe level logged, per target (indexed by `Target as usize`).
static LEVELS: [AtomicU8; Target::COUNT] =
    [const { AtomicU8::new(Level::Info as u8) }; Target::COUNT];
/// The access log's mode (an `AccessLog` discriminant).
static ACCESS: AtomicU8 = AtomicU8::new(AccessLog::Off as u8);

/// Installs `filter` for every later log call (at start-up and on a reload).
pub fn set_filter(filter: &Filter) {
    for t in Target::ALL {
        LEVELS[t as usize].store(filter.level(t) as u8, Ordering::Relaxed);
    }
}

/// Every target at `level` (what `set_filter(&Filter::all(level))` does).
pub fn set_level(level: Level) {
    set_filter(&Filter::all(level));
}

/// Sets the access log's mode (at start-up and on a reload).
pub fn set_access_log(mode: AccessLog) {
    ACCESS.store(mode as u8, Ordering::Relaxed);
}

/// The access log's mode, `Off` also when the `access` target is filtered out: what the
/// per-request record checks (two relaxed loads) before formatting anything.
#[inline]
pub fn access_log() -> AccessLog {
    match ACCESS.load(Ordering::Relaxed) {
        0 => AccessLog::Off,
        mode if enabled(Target::Access, Level::Info) => AccessLog::from_u8(mode),
        _ => AccessLog::Off,
    }
}

/// Whether a line of `level` for `target` would be written: one relaxed load and a compare.
#[inline]
pub fn enabled(target: Target, level: Level) -> bool {
    level != Level::Off && level as u8 <= LEVELS[target as usize].load(Ordering::Relaxed)
}

/// The installed level of `target`.
pub fn level(target: Target) -> Level {
    Level::from_u8(LEVELS[target as usize].load(Ordering::Relaxed))
}

/// Logs one line for `target` at `level` when enabled, e.g.
/// `log::event(Target::Jobs, Level::Info, format_args!("job {id} accepted"))`.
#[inline]
pub fn event(target: Target, level: Level, args: fmt::Arguments<'_>) {
    if enabled(target, level) {
        emit(target, level, args);
    }
}

#[inline]
pub fn error(args: fmt::Arguments<'_>) {
    event(Target::General, Level::Error, args);
}

#[inline]
pub fn warn(args: fmt::Arguments<'_>) {
    event(Target::General, Level::Warn, args);
}

#[inline]
pub fn info(args: fmt::Arguments<'_>) {
    event(Target::General, Level::Info, args);
}

#[inline]
pub fn debug(args: fmt::Arguments<'_>) {
    event(Target::General, Level::Debug, args);
}

#[cold]
fn emit(target: Target, level: Level, args: fmt::Arguments<'_>) {
    writer::write_line(|buf| format_line(buf, SystemTime::now(), target, level, args));
}

/// Appends one line (without its newline): time, level, target, message with control
/// characters escaped.
fn format_line(
    buf: &mut Vec<u8>,
    now: SystemTime,
    target: Target,
    level: Level,
    args: fmt::Arguments<'_>,
) {
    use std::io::Write;
    write_time(buf, now);
    buf.push(b' ');
    buf.extend_from_slice(level.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    let start = buf.len();
    let _ = buf.write_fmt(args);
    escape_controls(buf, start);
}

/// Escapes control bytes (and DEL) in `buf[start..]` as `\xHH`, in place: a message never
/// spans lines, whatever an error text or a client-controlled value in it holds. Messages
/// without any (nearly all) are only scanned.
fn escape_controls(buf: &mut Vec<u8>, start: usize) {
    let is_control = |b: &u8| *b < 0x20 && *b != b'\t' || *b == 0x7f;
    let Some(first) = buf[start..].iter().position(is_control) else {
        return;
    };
    let first = start + first;
    let extra = 3 * buf[first..].iter().filter(|b| is_control(b)).count();
    let old_len = buf.len();
    buf.resize(old_len + extra, 0);
    // From the back, so nothing is overwritten before it is moved.
    let (mut read, mut write) = (old_len, old_len + extra);
    while read > first {
        read -= 1;
        let b = buf[read];
        if is_control(&b) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            write -= 4;
            buf[write..write + 4].copy_from_slice(&[
                b'\\',
                b'x',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            write -= 1;
            buf[write] = b;
        }
    }
}

/// Appends `t` as RFC 3339 UTC with milliseconds (`2026-11-26T10:00:00.123Z`), allocation-free.
pub fn write_time(buf: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = crate::jobs::registry::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let two = |buf: &mut Vec<u8>, v: u64| {
        buf.extend_from_slice(&[b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8])
    };
    let year = y.clamp(0, 9999) as u64;
    two(buf, year / 100);
    two(buf, year % 100);
    buf.push(b'-');
    two(buf, u64::from(m));
    buf.push(b'-');
    two(buf, u64::from(d));
    buf.push(b'T');
    two(buf, rem / 3600);
    buf.push(b':');
    two(buf, rem % 3600 / 60);
    buf.push(b':');
    two(buf, rem % 60);
    buf.push(b'.');
    let millis = u64::from(since.subsec_millis());
    buf.push(b'0' + (millis / 100) as u8);
    two(buf, millis % 100);
    buf.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(target: Target, level: Level, args: fmt::Arguments<'_>) -> String {
        let mut buf = Vec::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_151_200_123);
        format_line(&mut buf, t, target, level, args);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn lines_carry_time_level_and_target() {
        assert_eq!(
            line(
                Target::Server,
                Level::Info,
                format_args!("listening on {}", 7)
            ),
            "2025-11-26T10:00:00.123Z info server: listening on 7"
        );
        assert_eq!(
            line(Target::General, Level::Warn, format_args!("x")),
            "2025-11-26T10:00:00.123Z warn general: x"
        );
    }

    #[test]
    fn a_message_never_spans_lines() {
        let evil = "a\nb\r\x1b[2J\tc\x7f";
        assert_eq!(
            line(Target::Proxy, Level::Error, format_args!("{evil}!")),
            "2025-11-26T10:00:00.123Z error proxy: a\\x0ab\\x0d\\x1b[2J\tc\\x7f!"
        );
    }

    #[test]
    fn times_are_rfc3339_utc_millis() {
        let fmt = |ms: u64| {
            let mut b = Vec::new();
            write_time(&mut b, SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
            String::from_utf8(b).unwrap()
        };
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(fmt(1_614_265_330_999), "2021-02-25T15:02:10.999Z");
        // Before the epoch (a broken clock) shows the epoch rather than failing.
        let mut b = Vec::new();
        write_time(&mut b, SystemTime::UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(b, b"1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn enabled_compares_with_the_installed_level() {
        // One test owns the process-wide levels (tests run in parallel).
        set_filter(&Filter::parse("warn,proxy=debug,access=off").unwrap());
        assert!(enabled(Target::Server, Level::Error) && enabled(Target::Server, Level::Warn));
        assert!(!enabled(Target::Server, Level::Info));
        assert!(enabled(Target::Proxy, Level::Debug) && !enabled(Target::Proxy, Level::Trace));
        assert!(!enabled(Target::Access, Level::Info) && !enabled(Target::Access, Level::Error));
        assert!(!enabled(Target::General, Level::Off));
        set_access_log(AccessLog::Json);
        assert_eq!(access_log(), AccessLog::Off, "the access target is off");
        set_filter(&Filter::default());
        assert_eq!(access_log(), AccessLog::Json);
        assert_eq!(level(Target::Jobs), Level::Info);
        set_access_log(AccessLog::Off);
        assert_eq!(access_log(), AccessLog::Off);
    }
}
