//! Minimal leveled logging to stderr.
//!
//! The level is one process-wide atomic set at start-up; a call below the level costs one
//! relaxed load and a branch and formats nothing (arguments arrive as `fmt::Arguments`, which are
//! only rendered when printed). Each line is written with one `write` call on a locked stderr so
//! lines from different workers do not interleave. Not for the per-request hot path above debug.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

#[inline]
pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

fn emit(level: &str, args: fmt::Arguments<'_>) {
    let line = format!("sluice {level}: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[inline]
pub fn error(args: fmt::Arguments<'_>) {
    if enabled(LogLevel::Error) {
        emit("error", args);
    }
}

#[inline]
pub fn warn(args: fmt::Arguments<'_>) {
    if enabled(LogLevel::Warn) {
        emit("warn", args);
    }
}

#[inline]
pub fn info(args: fmt::Arguments<'_>) {
    if enabled(LogLevel::Info) {
        emit("info", args);
    }
}

#[inline]
pub fn debug(args: fmt::Arguments<'_>) {
    if enabled(LogLevel::Debug) {
        emit("debug", args);
    }
}
