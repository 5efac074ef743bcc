//! The command line: `--help`, argument validation (one-line errors naming the flag), a port
//! already in use, the start-up line and the token taken from `SLUICE_TOKEN`.

mod common;

use std::net::TcpListener;
use std::process::{ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How long a sluice that should exit at once may take.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs sluice to completion (bounded); panics if it is still running after `EXIT_TIMEOUT`.
fn run(args: &[&str]) -> Outcome {
    let mut child = sluice_command(true)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sluice {args:?} still running after {EXIT_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// The error lines, without blank lines and clap's "For more information" hint.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information, try '--help'."))
        .collect()
}

#[test]
fn help_lists_every_flag() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "--help failed: {}", out.stderr);
    let flags = [
        "-t,",
        "--token",
        "SLUICE_TOKEN",
        "--paths",
        "-p,",
        "--port",
        "-o,",
        "--origin",
        "--ingress-request-timeout-ms",
        "--listen",
        "--workers",
        "--ca-file",
        "--upstream-connect-timeout-ms",
        "--upstream-response-timeout-ms",
        "--upstream-read-timeout-ms",
        "--upstream-idle-timeout-ms",
        "--upstream-max-idle",
        "--client-header-timeout-ms",
        "--client-idle-timeout-ms",
        "--client-body-timeout-ms",
        "--max-head-bytes",
        "--max-headers",
        "--max-request-body-bytes",
        "--client-park-ms",
        "--log-level",
        "--access-log",
        "--admin-listen",
    ];
    for flag in flags {
        assert!(
            out.stdout.contains(flag),
            "--help does not mention {flag}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn invalid_arguments_fail_with_one_line_naming_the_flag() {
    let origin = "http://127.0.0.1:9";
    let base = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["--listen", "127.0.0.1", "-p", "0", "--workers", "1"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (base(&["--paths", "/a", "-o", origin]), "--token"),
        (base(&["-t", "tok", "-o", origin]), "--paths"),
        (base(&["-t", "tok", "--paths", "/a"]), "--origin"),
        (
            base(&["-t", "tok", "--paths", "/a", "--origin", "ftp://x"]),
            "--origin",
        ),
        (
            base(&["-t", "tok", "--paths", "/a", "--origin", "not a url"]),
            "--origin",
        ),
        (
            base(&["-t", "tok", "--paths", "relative", "-o", origin]),
            "--paths",
        ),
        (
            base(&["-t", "tok", "--paths", "/a", "-o", origin, "--workers", "0"]),
            "--workers",
        ),
        (
            base(&[
                "-t",
                "tok",
                "--paths",
                "/a",
                "-o",
                origin,
                "--ca-file",
                "/nonexistent/ca.pem",
            ]),
            "--ca-file",
        ),
        (
            base(&[
                "-t",
                "tok",
                "--paths",
                "/a",
                "-o",
                origin,
                "--admin-listen",
                "nope",
            ]),
            "--admin-listen",
        ),
        (
            base(&[
                "-t",
                "tok",
                "--paths",
                "/a",
                "-o",
                origin,
                "--admin-listen",
                "127.0.0.1",
            ]),
            "--admin-listen",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1",
                "--port",
                "70000",
                "-t",
                "tok",
                "--paths",
                "/a",
                "-o",
                origin,
            ],
            "--port",
        ),
    ];
    for (args, flag) in cases {
        let out = run(&args);
        assert!(!out.status.success(), "sluice {args:?} should fail");
        let lines = error_lines(&out.stderr);
        assert_eq!(
            lines.len(),
            1,
            "sluice {args:?}: expected a one-line error, got:\n{}",
            out.stderr
        );
        assert!(
            lines[0].contains(flag),
            "sluice {args:?}: error does not name {flag}: {}",
            lines[0]
        );
    }
}

#[test]
fn port_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let port_arg = port.to_string();
    let out = run(&[
        "--listen",
        "127.0.0.1",
        "-p",
        &port_arg,
        "-t",
        "tok",
        "--paths",
        "/a",
        "-o",
        "http://127.0.0.1:9",
    ]);
    assert!(
        !out.status.success(),
        "sluice started on a port in use; stderr:\n{}",
        out.stderr
    );
    let address = format!("127.0.0.1:{port}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&address) && l.to_ascii_lowercase().contains("in use")),
        "no line names {address} and \"in use\":\n{}",
        out.stderr
    );
    drop(taken);
}

#[test]
fn admin_port_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = run(&[
        "--listen",
        "127.0.0.1",
        "-p",
        "0",
        "--workers",
        "1",
        "--no-persist",
        "--admin-listen",
        &address,
        "-t",
        "tok",
        "--paths",
        "/a",
        "-o",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    let lines = error_lines(&out.stderr);
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line error, got:\n{}",
        out.stderr
    );
    assert!(
        lines[0].starts_with(&format!(
            "sluice: error: --admin-listen: cannot listen on {address}: "
        )),
        "{}",
        lines[0]
    );
    assert!(!out.stderr.contains(" listening on "), "{}", out.stderr);
    drop(taken);
}

#[test]
fn startup_line_reports_address_workers_driver_origin_and_endpoints() {
    let origin = MockOrigin::echo();
    for (workers, legacy) in [("1", true), ("2", false)] {
        let sluice = start_proxy(&origin.url(), &["--workers", workers], legacy);
        // `start_proxy` opens the executor up: `--rate-limit 1000000/1s`.
        let endpoints: String = STD_PATHS
            .split(',')
            .map(|p| {
                format!(
                    " endpoint={p} methods=any limit=1000000/1s(sliding-window) deadline=2000ms"
                )
            })
            .collect();
        let expected = format!(
            "sluice {} listening on {} workers={workers} driver={} origin={} log_level=info \
             access_log=off endpoints=3{endpoints}",
            env!("CARGO_PKG_VERSION"),
            sluice.addr(),
            sluice.driver(),
            origin.url(),
        );
        assert_eq!(sluice.startup().line, expected);
        // A log line: time, level and target in front.
        let raw = &sluice.startup().raw;
        let (time, rest) = raw.split_once(' ').expect("time");
        assert_eq!(rest, format!("info server: {expected}"), "{raw}");
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.contains('T'),
            "{raw}"
        );
        eprintln!("default driver here: {}", sluice.driver());
    }
}

#[test]
fn token_from_environment() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let url = origin.url();
        let sluice = Sluice::start_env(
            &["--paths", STD_PATHS, "-o", &url],
            legacy,
            &[("SLUICE_TOKEN", "envtoken")],
        );
        assert_eq!(sluice.connect().get("/crypto/sign?message=env").status, 200);
        let req = &origin.requests()[0];
        assert_eq!(
            req.header_all("authorization"),
            vec!["envtoken"],
            "{}",
            req.head_text()
        );
    });
}
