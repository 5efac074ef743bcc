//! Logs with the real binary: the start-up line (every endpoint, never a secret), the access
//! log in text and JSON after known requests (exact fields), `--log-level` and `RUST_LOG`
//! filtering by level and target, invalid directives at start-up, and a SIGHUP reload that
//! changes the log level and the access-log mode.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The webhook secret used where one is configured (24 random-looking bytes, base64).
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A token that would stand out in any log.
const SECRET_TOKEN: &str = "tok-3b7c-do-not-log-me";

/// Polls `f` every 20 ms until it returns true or `IO_TIMEOUT` passed.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + IO_TIMEOUT;
    while Instant::now() < until {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Access-log lines (text: `TIME IP "REQUEST" ...`; JSON: `{...}`) in `stderr`.
fn access_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{') || l.split(' ').nth(2).is_some_and(|f| f.starts_with('"')))
        .map(str::to_string)
        .collect()
}

/// Waits until sluice has written `n` access-log lines (a worker hands its lines over within
/// 100 ms), and returns them.
fn wait_access_lines(sluice: &Sluice, n: usize) -> Vec<String> {
    let found = eventually(|| access_lines(&sluice.stderr()).len() >= n);
    let lines = access_lines(&sluice.stderr());
    assert!(
        found && lines.len() == n,
        "expected {n} access lines, got {}:\n{}",
        lines.len(),
        sluice.stderr()
    );
    lines
}

/// Asserts `time` is RFC 3339 UTC with milliseconds (`2026-11-26T10:00:00.123Z`).
fn assert_time(time: &str) {
    let b = time.as_bytes();
    assert!(
        b.len() == 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && b[23] == b'Z'
            && b.iter()
                .enumerate()
                .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit()),
        "not an RFC 3339 millisecond UTC time: {time:?}"
    );
}

/// One text access line split into its fields: time, client, request line, then the rest
/// (`STATUS BYTES DURATION key=value...`).
struct TextLine {
    time: String,
    client: String,
    request: String,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    fields: Vec<(String, String)>,
}

impl TextLine {
    fn parse(line: &str) -> TextLine {
        let (time, rest) = line.split_once(' ').expect("time");
        let (client, rest) = rest.split_once(" \"").expect("client");
        // The request ends at the first quote that is not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated request in {line}"));
        let (request, rest) = (&rest[..end], &rest[end + 2..]);
        let mut parts = rest.split(' ');
        let mut next = || parts.next().unwrap_or_else(|| panic!("short line: {line}"));
        let status = next().parse().expect("status");
        let bytes = next().parse().expect("bytes");
        let duration_ms = next().parse().expect("duration");
        let fields = parts
            .map(|f| {
                let (k, v) = f.split_once('=').unwrap_or_else(|| panic!("{f} in {line}"));
                (k.to_string(), v.to_string())
            })
            .collect();
        TextLine {
            time: time.to_string(),
            client: client.to_string(),
            request: request.to_string(),
            status,
            bytes,
            duration_ms,
            fields,
        }
    }

    fn assert_fields(
        &self,
        endpoint: &str,
        job: &str,
        upstream: &str,
        attempts: u32,
        reason: &str,
    ) {
        let want: Vec<(String, String)> = [
            ("endpoint", endpoint.to_string()),
            ("job", job.to_string()),
            ("upstream", upstream.to_string()),
            ("attempts", attempts.to_string()),
            ("reason", reason.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(self.fields, want, "request {:?}", self.request);
    }
}

/// An origin that answers `/v1/slow` after 600 ms (so a 100 ms deadline gives a 202) and
/// everything else at once with `METHOD TARGET`.
fn origin_with_slow_path() -> MockOrigin {
    MockOrigin::start(|req| {
        let reply = echo_reply(req);
        if req.target.starts_with("/v1/slow") {
            let mut r = reply;
            r.steps.insert(0, Step::Sleep(Duration::from_millis(600)));
            r
        } else {
            reply
        }
    })
}

/// The requests both access-log tests send, and what each got: a forwarded GET (200), a path
/// not allowlisted (404), a slow endpoint (202), the job's status (200), a POST on a job
/// endpoint (405), a refused head (400, no request line), a client that leaves mid-body (499).
struct Sent {
    ok: Response,
    ok_idempotency_key: String,
    not_found: Response,
    accepted: Response,
    job_id: String,
    status: Response,
    not_allowed: Response,
}

fn send_known_requests(sluice: &Sluice, origin: &MockOrigin) -> Sent {
    let mut client = sluice.connect();
    let ok = client
        .get("/crypto/sign?message=hi&callback=http%3A%2F%2F127.0.0.1%3A1%2Fh%3Fsecret%3Dcbsecret");
    assert_eq!(ok.status, 200, "{}", ok.head_text());
    let ok_idempotency_key = origin.requests()[0]
        .header("idempotency-key")
        .expect("the job id goes upstream as the Idempotency-Key");
    let not_found = client.get("/other/\"quoted\"");
    assert_json_error(&not_found, 404, "not_found");
    let accepted = client.get("/v1/slow");
    assert_eq!(accepted.status, 202, "{}", accepted.head_text());
    let job_id = accepted.json()["id"].as_str().expect("id").to_string();
    let status = client.get(&format!("/_sluice/jobs/{job_id}"));
    assert_eq!(status.status, 200);
    let not_allowed = client.request(with_body("POST", &format!("/_sluice/jobs/{job_id}"), b""));
    assert_json_error(&not_allowed, 405, "method_not_allowed");
    // A head that cannot be parsed: 400, and the connection closes.
    let mut bad = sluice.connect();
    bad.send(b"\x01\r\n\r\n");
    assert_json_error(&bad.response(), 400, "bad_request");
    // A client that leaves in the middle of its body: no answer at all.
    let mut gone = TcpStream::connect(sluice.addr()).expect("connect");
    gone.write_all(b"POST /crypto/verify HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .expect("send");
    thread::sleep(Duration::from_millis(50));
    drop(gone);
    Sent {
        ok,
        ok_idempotency_key,
        not_found,
        accepted,
        job_id,
        status,
        not_allowed,
    }
}

#[test]
fn access_log_text_has_one_exact_line_per_request() {
    let origin = origin_with_slow_path();
    let sluice = start_proxy(
        &origin.url(),
        &[
            "--access-log",
            "text",
            "--ingress-request-timeout-ms",
            "100",
        ],
        false,
    );
    let sent = send_known_requests(&sluice, &origin);
    let lines = wait_access_lines(&sluice, 7);
    let parsed: Vec<TextLine> = lines.iter().map(|l| TextLine::parse(l)).collect();
    for p in &parsed {
        assert_time(&p.time);
        assert_eq!(p.client, "127.0.0.1");
        assert!(p.duration_ms >= 0.0);
    }
    // Lines come in the order the requests ended on their worker; find each by its request.
    let find = |request: &str| {
        parsed
            .iter()
            .find(|p| p.request == request)
            .unwrap_or_else(|| panic!("no access line for {request:?}:\n{}", lines.join("\n")))
    };

    let ok = find("GET /crypto/sign?message=hi&callback=<redacted> HTTP/1.1");
    assert_eq!((ok.status, ok.bytes), (200, sent.ok.body.len() as u64));
    ok.assert_fields("/crypto/sign", &sent.ok_idempotency_key, "200", 1, "-");

    let nf = find("GET /other/\\\"quoted\\\" HTTP/1.1");
    assert_eq!(
        (nf.status, nf.bytes),
        (404, sent.not_found.body.len() as u64)
    );
    nf.assert_fields("-", "-", "-", 0, "not_found");

    let acc = find("GET /v1/slow HTTP/1.1");
    assert_eq!(
        (acc.status, acc.bytes),
        (202, sent.accepted.body.len() as u64)
    );
    // The first attempt is in flight when the deadline gives the 202.
    acc.assert_fields("/v1/*", &sent.job_id, "-", 1, "-");
    assert!(acc.duration_ms >= 100.0, "the 202 comes at the deadline");

    let st = find(&format!("GET /_sluice/jobs/{} HTTP/1.1", sent.job_id));
    assert_eq!((st.status, st.bytes), (200, sent.status.body.len() as u64));
    st.assert_fields("-", &sent.job_id, "-", 0, "-");

    let na = find(&format!("POST /_sluice/jobs/{} HTTP/1.1", sent.job_id));
    assert_eq!(
        (na.status, na.bytes),
        (405, sent.not_allowed.body.len() as u64)
    );
    na.assert_fields("-", "-", "-", 0, "method_not_allowed");

    let bad = find("-");
    assert_eq!(bad.status, 400);
    bad.assert_fields("-", "-", "-", 0, "bad_request");

    let gone = find("POST /crypto/verify HTTP/1.1");
    assert_eq!((gone.status, gone.bytes), (499, 0));
    assert_eq!(gone.fields[0], ("endpoint".into(), "/crypto/verify".into()));
    assert_eq!(gone.fields[4], ("reason".into(), "client_closed".into()));

    let stderr = sluice.stderr();
    assert!(
        !stderr.contains("cbsecret"),
        "a callback's secret was logged:\n{stderr}"
    );
}

#[test]
fn access_log_json_has_the_same_fields() {
    let origin = origin_with_slow_path();
    let sluice = start_proxy(
        &origin.url(),
        &[
            "--access-log",
            "json",
            "--ingress-request-timeout-ms",
            "100",
        ],
        true,
    );
    let sent = send_known_requests(&sluice, &origin);
    let lines = wait_access_lines(&sluice, 7);
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let find = |method: &str, path: &str| {
        objects
            .iter()
            .find(|o| o["method"] == method && o["path"] == path)
            .unwrap_or_else(|| panic!("no line for {method} {path}:\n{}", lines.join("\n")))
            .clone()
    };
    // Everything but the time and the duration is known exactly.
    let check = |mut o: serde_json::Value, want: serde_json::Value| {
        assert_time(o["time"].as_str().expect("time"));
        assert!(o["duration_ms"].as_f64().expect("duration") >= 0.0, "{o}");
        let map = o.as_object_mut().expect("object");
        map.remove("time");
        map.remove("duration_ms");
        assert_eq!(o, want);
    };
    use serde_json::json;
    check(
        find("GET", "/crypto/sign"),
        json!({"client": "127.0.0.1", "method": "GET", "path": "/crypto/sign",
               "query": "message=hi&callback=<redacted>", "protocol": "HTTP/1.1",
               "status": 200, "bytes": sent.ok.body.len(), "endpoint": "/crypto/sign",
               "job": sent.ok_idempotency_key, "upstream": 200, "attempts": 1, "reason": null}),
    );
    check(
        find("GET", "/other/\"quoted\""),
        json!({"client": "127.0.0.1", "method": "GET", "path": "/other/\"quoted\"",
               "query": null, "protocol": "HTTP/1.1", "status": 404,
               "bytes": sent.not_found.body.len(), "endpoint": null, "job": null,
               "upstream": null, "attempts": 0, "reason": "not_found"}),
    );
    let slow = find("GET", "/v1/slow");
    assert!(
        slow["duration_ms"].as_f64().unwrap_or(0.0) >= 100.0,
        "{slow}"
    );
    check(
        slow,
        json!({"client": "127.0.0.1", "method": "GET", "path": "/v1/slow", "query": null,
               "protocol": "HTTP/1.1", "status": 202, "bytes": sent.accepted.body.len(),
               "endpoint": "/v1/*", "job": sent.job_id, "upstream": null, "attempts": 1,
               "reason": null}),
    );
    let status_path = format!("/_sluice/jobs/{}", sent.job_id);
    check(
        find("GET", &status_path),
        json!({"client": "127.0.0.1", "method": "GET", "path": status_path, "query": null,
               "protocol": "HTTP/1.1", "status": 200, "bytes": sent.status.body.len(),
               "endpoint": null, "job": sent.job_id, "upstream": null, "attempts": 0,
               "reason": null}),
    );
    check(
        find("POST", &status_path),
        json!({"client": "127.0.0.1", "method": "POST", "path": status_path, "query": null,
               "protocol": "HTTP/1.1", "status": 405, "bytes": sent.not_allowed.body.len(),
               "endpoint": null, "job": null, "upstream": null, "attempts": 0,
               "reason": "method_not_allowed"}),
    );
    let bad = objects
        .iter()
        .find(|o| o["method"].is_null())
        .expect("a line without a request")
        .clone();
    let bad_bytes = bad["bytes"].clone();
    check(
        bad,
        json!({"client": "127.0.0.1", "method": null, "path": null, "query": null,
               "protocol": null, "status": 400, "bytes": bad_bytes, "endpoint": null,
               "job": null, "upstream": null, "attempts": 0, "reason": "bad_request"}),
    );
    let gone = find("POST", "/crypto/verify");
    let job = gone["job"].clone();
    assert!(job.as_str().is_some_and(|j| j.len() == 32), "{gone}");
    check(
        gone,
        json!({"client": "127.0.0.1", "method": "POST", "path": "/crypto/verify", "query": null,
               "protocol": "HTTP/1.1", "status": 499, "bytes": 0,
               "endpoint": "/crypto/verify", "job": job, "upstream": null, "attempts": 0,
               "reason": "client_closed"}),
    );
}

#[test]
fn startup_line_shows_every_endpoint_and_never_a_secret() {
    let origin = MockOrigin::echo();
    let config = write_config(
        "startup",
        &format!(
            "origin = \"{}\"\nrate_limit = \"7/1s\"\n\
             [group.signing]\nrate_limit = \"10/1m\"\nalgorithm = \"token-bucket\"\n\
             [[endpoint]]\npath = \"/crypto/sign\"\nmethods = [\"GET\", \"POST\"]\ngroup = \"signing\"\n\
             [[endpoint]]\npath = \"/v1/*\"\ndeadline_ms = 500\n",
            origin.url()
        ),
    );
    let config_text = config.display().to_string();
    let sluice = Sluice::start_env(
        &[
            "--config",
            &config_text,
            "-t",
            SECRET_TOKEN,
            "--access-log",
            "text",
        ],
        false,
        &[("SLUICE_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    );
    let expected = format!(
        "sluice {} listening on {} workers=2 driver={} origin={} log_level=info \
         access_log=text endpoints=2 \
         endpoint=/crypto/sign methods=GET,POST limit=10/1m(token-bucket) shared=signing deadline=2000ms \
         endpoint=/v1/* methods=any limit=7/1s(sliding-window) deadline=500ms",
        env!("CARGO_PKG_VERSION"),
        sluice.addr(),
        sluice.driver(),
        origin.url(),
    );
    assert_eq!(sluice.startup().line, expected);
    assert!(
        sluice.startup().raw.contains(" info server: sluice "),
        "{}",
        sluice.startup().raw
    );
    // Requests that carry secrets of their own: a client Authorization, a callback's token.
    let mut client = sluice.connect();
    let resp = client.request(
        "GET /crypto/sign?callback=http%3A%2F%2F127.0.0.1%3A1%2Fh%3Ft%3Dcbsecret HTTP/1.1\r\n\
         Host: t\r\nAuthorization: Bearer client-credential\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    wait_access_lines(&sluice, 1);
    sluice.signal(libc::SIGHUP);
    assert!(eventually(|| sluice.stderr().contains("config reloaded")));
    let stderr = sluice.stderr();
    let key = WEBHOOK_SECRET.trim_start_matches("whsec_");
    for secret in [SECRET_TOKEN, key, "client-credential", "cbsecret"] {
        assert!(
            !stderr.contains(secret),
            "{secret:?} is in the log:\n{stderr}"
        );
    }
}

/// A free local port (bound and released: for the runs that print no start-up line).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts sluice on `port` without waiting for a start-up line (there is none at `warn`),
/// waiting instead until the port answers.
fn start_quiet(args: &[&str], env: &[(&str, &str)], port: u16) -> Child {
    let port_text = port.to_string();
    let mut cmd = sluice_command(false);
    cmd.args(args)
        .args([
            "--listen",
            "127.0.0.1",
            "-p",
            &port_text,
            "--workers",
            "1",
            "--no-persist",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn sluice");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        eventually(|| TcpStream::connect(addr).is_ok()),
        "sluice never listened on {addr}"
    );
    child
}

/// SIGHUP then SIGTERM, and everything the process wrote until it exited.
fn reload_then_stop(mut child: Child) -> String {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and valid signal numbers.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}:\n{stderr}");
    stderr
}

/// The level of each line that is not an access line (`TIME LEVEL TARGET: ...`).
fn levels(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter(|l| !access_lines(l).contains(&l.to_string()))
        .map(|l| {
            let mut f = l.split(' ');
            let _time = f.next();
            let level = f.next().unwrap_or_default().to_string();
            let target = f
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_string();
            (level, target)
        })
        .collect()
}

#[test]
fn log_level_warn_keeps_warnings_and_drops_info() {
    let origin = MockOrigin::echo();
    let url = origin.url();
    let port = free_port();
    let child = start_quiet(
        &[
            "-t",
            TOKEN,
            "--paths",
            STD_PATHS,
            "-o",
            &url,
            "--log-level",
            "warn",
        ],
        &[],
        port,
    );
    let stderr = reload_then_stop(child);
    // SIGHUP without --config is a warning; the start-up, shutdown and every info line are not
    // logged.
    assert_eq!(
        levels(&stderr),
        vec![("warn".to_string(), "config".to_string())],
        "{stderr}"
    );
    assert!(
        stderr.contains("SIGHUP: no --config file to reload"),
        "{stderr}"
    );
}

#[test]
fn targets_have_levels_of_their_own() {
    let origin = MockOrigin::echo();
    let config = write_config(
        "targets",
        &format!("origin = \"{}\"\npaths = \"/a\"\n", origin.url()),
    );
    let config_text = config.display().to_string();
    // The bare level quiets everything but the server's info lines.
    let sluice = Sluice::start(
        &[
            "-t",
            TOKEN,
            "--config",
            &config_text,
            "--log-level",
            "warn,server=info",
        ],
        false,
    );
    sluice.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(500));
    sluice.signal(libc::SIGTERM);
    let mut sluice = sluice;
    assert!(sluice.wait_exit(IO_TIMEOUT).is_some_and(|s| s.success()));
    assert!(eventually(|| sluice.stderr().contains("shut down cleanly")));
    let stderr = sluice.stderr();
    assert!(
        !stderr.contains("config reloaded"),
        "config=warn:\n{stderr}"
    );
    assert!(
        stderr.contains(" info server: shut down cleanly"),
        "{stderr}"
    );
    assert!(
        levels(&stderr)
            .iter()
            .all(|(l, t)| l != "info" || t == "server"),
        "{stderr}"
    );
}

#[test]
fn rust_log_applies_when_the_flag_is_absent() {
    let origin = MockOrigin::echo();
    let config = write_config(
        "rustlog",
        &format!("origin = \"{}\"\npaths = \"/a\"\n", origin.url()),
    );
    let config_text = config.display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["-t", TOKEN, "--config", &config_text];
        args.extend_from_slice(extra);
        let sluice = Sluice::start_env(&args, false, &[("RUST_LOG", "warn,server=info")]);
        sluice.signal(libc::SIGHUP);
        thread::sleep(Duration::from_millis(500));
        sluice.stderr()
    };
    // RUST_LOG quiets the config target: no "config reloaded".
    let quiet = run(&[]);
    assert!(quiet.contains(" info server: sluice "), "{quiet}");
    assert!(!quiet.contains("config reloaded"), "{quiet}");
    // The flag wins over RUST_LOG.
    let loud = run(&["--log-level", "info"]);
    assert!(loud.contains(" info config: config reloaded"), "{loud}");
}

#[test]
fn an_invalid_directive_stops_startup_naming_its_source() {
    let origin = MockOrigin::echo();
    let url = origin.url();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "-t",
            TOKEN,
            "--paths",
            STD_PATHS,
            "-o",
            &url,
            "--no-persist",
        ];
        args.extend_from_slice(extra);
        let out = sluice_command(false)
            .args(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .output()
            .expect("run sluice");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--log-level", "info,proxy=loud"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "sluice: error: --log-level: unknown level \"loud\" in \"info,proxy=loud\" (expected \
         error, warn, info, debug, trace or off)\n"
    );
    let (code, stderr) = run(&[], &[("RUST_LOG", "info,nosuch=debug")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("sluice: error: RUST_LOG: unknown target \"nosuch\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (code, stderr) = run(&["--access-log", "yes"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("sluice: error: --access-log: must be off, text or json"),
        "{stderr}"
    );
}

#[test]
fn sighup_applies_a_new_log_level_and_access_log() {
    let origin = MockOrigin::echo();
    let base = format!("origin = \"{}\"\npaths = \"/a\"\n", origin.url());
    let config = write_config("reload", &format!("{base}access_log = \"off\"\n"));
    let config_text = config.display().to_string();
    let mut sluice = Sluice::start(&["-t", TOKEN, "--config", &config_text], true);
    let mut client = sluice.connect();
    assert_eq!(client.get("/a?n=1").status, 200);
    rewrite(
        &config,
        &format!("{base}access_log = \"json\"\nlog_level = \"warn,config=info\"\n"),
    );
    sluice.signal(libc::SIGHUP);
    assert!(
        eventually(|| sluice.stderr().contains("config reloaded")),
        "{}",
        sluice.stderr()
    );
    assert!(
        sluice
            .stderr()
            .contains("log_level=warn,config=info access_log=json"),
        "{}",
        sluice.stderr()
    );
    assert_eq!(client.get("/a?n=2").status, 200);
    let lines = wait_access_lines(&sluice, 1);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(line["query"], "n=2", "only the request after the reload");
    // The server target is at warn now: no shutdown lines.
    sluice.signal(libc::SIGTERM);
    assert!(sluice.wait_exit(IO_TIMEOUT).is_some_and(|s| s.success()));
    // Let the harness read the last bytes of the closed pipe.
    thread::sleep(Duration::from_millis(200));
    let stderr = sluice.stderr();
    assert!(!stderr.contains("shutting down"), "{stderr}");
    assert!(!stderr.contains("shut down cleanly"), "{stderr}");
}
