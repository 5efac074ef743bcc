//! The `sluice` binary: parse the command line, start the logger thread, prepare the origin,
//! start the workers and the admin listener (`--admin-listen`), log one start-up line saying
//! where it listens, which I/O driver runs and what each endpoint allows (`log::startup`), then
//! wait for a signal: SIGTERM/SIGINT shut down gracefully (exit 0; a second one exits at once
//! with 1), SIGHUP asks for a reload. Every exit after the logger started flushes it first, so
//! no line is lost.

use std::process::ExitCode;
use std::sync::Arc;

use sluice::admin::{Admin, AdminHandlers, Readiness};
use sluice::config::{CliExit, Config};
use sluice::log::{Level, Target};
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
    // Kept for SIGHUP: a reload re-reads the file under the same command line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config = match Config::from_args(args.iter().cloned()) {
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
    sluice::log::set_filter(&config.log_filter);
    sluice::log::set_access_log(config.access_log);
    // Flushes the log when main returns (every exit from here on).
    let _log = match sluice::log::start(Box::new(std::io::stderr())) {
        Ok(guard) => guard,
        Err(line) => {
            eprintln!("sluice: error: {line}");
            return ExitCode::from(1);
        }
    };
    let upstream = match Upstream::prepare(&config) {
        Ok(u) => Arc::new(u),
        Err(line) => return fail(&line),
    };
    let config = Arc::new(config);
    let readiness = Arc::new(Readiness::default());
    let server = match Server::start(config.clone(), upstream) {
        Ok(s) => s,
        Err(line) => return fail(&line),
    };
    // Listeners bound, store open.
    readiness.serving();
    let admin = match config.admin_listen {
        Some(addr) => match Admin::start(addr, admin_handlers(&readiness, &server)) {
            Ok(admin) => Some(admin),
            Err(line) => {
                // The workers run and the store is open: close it cleanly before exiting.
                let _ = server.shutdown();
                return fail(&line);
            }
        },
        None => None,
    };
    let admin_field = admin
        .as_ref()
        .map(|a| format!(" admin={}", a.local_addr()))
        .unwrap_or_default();
    sluice::log::event(
        Target::Server,
        Level::Info,
        format_args!(
            "{}{admin_field}",
            sluice::log::startup::line(
                server.local_addr,
                server.workers,
                server.driver.as_str(),
                &server.shared.routes.current(),
            )
        ),
    );
    let (tx, signals) = std::sync::mpsc::channel();
    let mut terminations = 0u32;
    let draining = readiness.clone();
    let spawned = sluice::server::signals::spawn(move |sig| {
        if sig == Signal::Terminate {
            // `/ready` says so from the first signal on, while the workers drain.
            draining.shutting_down();
            terminations += 1;
            if terminations > 1 {
                sluice::log::event(
                    Target::Server,
                    Level::Warn,
                    format_args!("second signal, exiting now"),
                );
                sluice::log::flush();
                std::process::exit(1);
            }
        }
        let _ = tx.send(sig);
    });
    if let Err(e) = spawned {
        return fail(&format!("cannot start the signal thread: {e}"));
    }
    // Until SIGTERM/SIGINT (or the signal thread is gone).
    while let Ok(Signal::Reload) = signals.recv() {
        if config.config_file.is_none() {
            sluice::log::event(
                Target::Config,
                Level::Warn,
                format_args!("SIGHUP: no --config file to reload"),
            );
            continue;
        }
        match reload(&args, &config, &server) {
            Ok(summary) => sluice::log::event(
                Target::Config,
                Level::Info,
                format_args!("config reloaded: {summary}"),
            ),
            Err(line) => sluice::log::event(
                Target::Config,
                Level::Error,
                format_args!("config reload failed: {line}; the running configuration stays"),
            ),
        }
    }
    sluice::log::event(
        Target::Server,
        Level::Info,
        format_args!(
            "shutting down: draining connections (at most {:?})",
            server.shared.routes.current().config.shutdown_grace
        ),
    );
    let shut_down = server.shutdown();
    // Only now: `/ready` answered 503 during the drain. Bounded (see `Admin::stop`).
    if let Some(admin) = admin {
        admin.stop();
    }
    match shut_down {
        Ok(()) => {
            sluice::log::event(
                Target::Server,
                Level::Info,
                format_args!("shut down cleanly"),
            );
            ExitCode::SUCCESS
        }
        Err(line) => fail(&line),
    }
}

/// What the admin endpoints serve: readiness from `readiness`, and the server's metrics.
fn admin_handlers(readiness: &Arc<Readiness>, server: &Server) -> AdminHandlers {
    use sluice::metrics::{text, ProcessGauges};
    let readiness = readiness.clone();
    let metrics = server.shared.metrics.clone();
    let registry = server.shared.registry.clone();
    AdminHandlers {
        metrics: Arc::new(move |out: &mut String| {
            text::family(
                out,
                "sluice_up",
                text::Kind::Gauge,
                "1: this sluice process is running and answering scrapes.",
            );
            text::sample(out, "sluice_up", &[], 1);
            let gauges = ProcessGauges {
                jobs_tracked: registry.len() as u64,
                log_lines_dropped: sluice::log::dropped_lines(),
            };
            metrics.render(out, &gauges);
        }),
        ready: Arc::new(move || readiness.check().map_err(str::to_string)),
    }
}

/// A fatal error after the logger started: everything logged before is written first, then
/// the error line (`sluice: error: ...`, as before the logger), and the exit status is 1.
fn fail(line: &str) -> ExitCode {
    sluice::log::flush();
    eprintln!("sluice: error: {line}");
    ExitCode::from(1)
}

/// SIGHUP: re-reads the config file under the original command line (flags still override
/// it) and hands the new route table (allowlist, endpoint settings, rate limits, retry, dedup,
/// deadlines, timeouts, size limits, token, webhook settings, every other reloadable key) to
/// the workers for their next request; open jobs keep theirs. Settings fixed at start-up
/// (listen, port, workers, origin, ca_file, data_dir, admin_listen) are reported when they
/// changed and keep their running values. Errors are one line.
fn reload(
    args: &[std::ffi::OsString],
    running: &Config,
    server: &Server,
) -> Result<String, String> {
    let mut new = match Config::from_args(args.iter().cloned()) {
        Ok(c) => c,
        Err(CliExit::Invalid(line)) | Err(CliExit::Print(line)) => return Err(line),
    };
    let mut restart = Vec::new();
    if new.listen != running.listen {
        restart.push("listen");
    }
    if new.port != running.port {
        restart.push("port");
    }
    if new.workers != running.workers {
        restart.push("workers");
    }
    if new.origin != running.origin {
        restart.push("origin");
    }
    if new.ca_file != running.ca_file {
        restart.push("ca_file");
    }
    if new.data_dir != running.data_dir {
        restart.push("data_dir");
    }
    if new.admin_listen != running.admin_listen {
        restart.push("admin_listen");
    }
    if !restart.is_empty() {
        sluice::log::event(
            Target::Config,
            Level::Warn,
            format_args!(
                "config reload: {} changed; ignored until restart",
                restart.join(", ")
            ),
        );
    }
    // What cannot change keeps its running value, so the new table is consistent with the
    // process (limiters lease per worker: they are built for the running worker count).
    new.listen = running.listen;
    new.port = running.port;
    new.workers = running.workers;
    new.origin = running.origin.clone();
    new.ca_file = running.ca_file.clone();
    new.data_dir = running.data_dir.clone();
    new.admin_listen = running.admin_listen;
    let slot = &server.shared.routes;
    let current = slot.current();
    let routes = sluice::routing::Routes::build(Arc::new(new), Some(&current))?;
    let kept = (0..routes.limiters.len())
        .filter(|&i| {
            current
                .limiters
                .index_of(routes.limiters.name(i))
                .is_some_and(|j| Arc::ptr_eq(current.limiters.shared(j), routes.limiters.shared(i)))
        })
        .count();
    let summary = format!(
        "paths={} rate limiters: {kept} kept, {} new, log_level={} access_log={}",
        routes.allowlist,
        routes.limiters.len() - kept,
        routes.config.log_filter,
        routes.config.access_log,
    );
    // The new filter applies from here: this reload's own line is logged under it.
    sluice::log::set_filter(&routes.config.log_filter);
    sluice::log::set_access_log(routes.config.access_log);
    slot.replace(Arc::new(routes));
    Ok(summary)
}
