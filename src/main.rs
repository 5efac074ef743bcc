//! The `sluice` binary: parse the command line, prepare the origin, start the workers, print
//! one start-up line saying where it listens and which I/O driver runs, then wait for a signal:
//! SIGTERM/SIGINT shut down gracefully (exit 0; a second one exits at once with 1), SIGHUP
//! asks for a reload.

use std::process::ExitCode;
use std::sync::Arc;

use sluice::config::{CliExit, Config};
use sluice::server::signals::Signal;
use sluice::server::Server;
use sluice::upstream::Upstream;

fn main() -> ExitCode {
    // Before any thread starts, so that every thread inherits the mask and only the signal
    // thread receives them.
    if let Err(e) = sluice::server::signals::block() {
        eprintln!("sluice: error: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let config = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(CliExit::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(CliExit::Invalid(line)) => {
            eprintln!("sluice: error: {line}");
            return ExitCode::from(2);
        }
    };
    sluice::log::set_level(config.log_level);
    let upstream = match Upstream::prepare(&config) {
        Ok(u) => Arc::new(u),
        Err(line) => {
            eprintln!("sluice: error: {line}");
            return ExitCode::from(1);
        }
    };
    let config = Arc::new(config);
    let server = match Server::start(config.clone(), upstream) {
        Ok(s) => s,
        Err(line) => {
            eprintln!("sluice: error: {line}");
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "sluice {} listening on {} workers={} driver={} origin={} paths={}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr,
        server.workers,
        server.driver.as_str(),
        config.origin,
        config.allowlist,
    );
    let (tx, signals) = std::sync::mpsc::channel();
    let mut terminations = 0u32;
    let spawned = sluice::server::signals::spawn(move |sig| {
        if sig == Signal::Terminate {
            terminations += 1;
            if terminations > 1 {
                eprintln!("sluice: second signal, exiting now");
                std::process::exit(1);
            }
        }
        let _ = tx.send(sig);
    });
    if let Err(e) = spawned {
        eprintln!("sluice: error: cannot start the signal thread: {e}");
        return ExitCode::from(1);
    }
    // Until SIGTERM/SIGINT (or the signal thread is gone).
    while let Ok(Signal::Reload) = signals.recv() {
        sluice::log::warn(format_args!("SIGHUP: no --config file to reload"));
    }
    sluice::log::info(format_args!(
        "shutting down: draining connections (at most {:?})",
        config.shutdown_grace
    ));
    match server.shutdown() {
        Ok(()) => {
            sluice::log::info(format_args!("shut down cleanly"));
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("sluice: error: {line}");
            ExitCode::from(1)
        }
    }
}
