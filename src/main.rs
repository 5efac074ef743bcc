//! The `sluice` binary: parse the command line, prepare the origin, start the workers, and
//! print one start-up line saying where it listens and which I/O driver runs.

use std::process::ExitCode;
use std::sync::Arc;

use sluice::config::{CliExit, Config};
use sluice::server::Server;
use sluice::upstream::Upstream;

fn main() -> ExitCode {
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
    server.wait();
    ExitCode::SUCCESS
}
