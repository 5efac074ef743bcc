//! Process signals: SIGTERM and SIGINT ask for a graceful shutdown, SIGHUP for a configuration
//! reload. They are received synchronously on one dedicated thread with `sigwait`, never in an
//! async-signal handler, so what they trigger is ordinary code (locks, allocation, logging).
//!
//! [`block`] must run on the main thread before any other thread starts: threads inherit the
//! signal mask, so every worker has these signals blocked and only `sigwait` consumes them.

use std::io;
use std::thread::JoinHandle;

/// What a received signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT.
    Terminate,
    /// SIGHUP.
    Reload,
}

const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn handled_set() -> libc::sigset_t {
    // SAFETY: `sigemptyset`/`sigaddset` only write the set they are given, which lives on this
    // stack frame and is fully initialised by `sigemptyset` before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every thread it starts
/// afterwards).
pub fn block() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: `set` is a valid, initialised signal set; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread (`sluice-signals`) that waits for the blocked signals and calls
/// `handler` for each, in order, on that thread.
pub fn spawn<H: FnMut(Signal) + Send + 'static>(mut handler: H) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            let set = handled_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is valid and `sig` is a writable c_int; sigwait blocks only
                // this dedicated thread.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                match sig {
                    libc::SIGHUP => handler(Signal::Reload),
                    _ => handler(Signal::Terminate),
                }
            }
        })
}
