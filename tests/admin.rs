//! The admin listener (`--admin-listen`) with the real binary: `/health`, `/ready` and
//! `/metrics` on their own port (exact answers, the exposition checked strictly and by
//! `prometheus-parse`), HEAD, 404/405/400, `/ready` turning 503 while SIGTERM drains, the port
//! closing at exit, and a reload that leaves the admin address alone.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const ADMIN: [&str; 2] = ["--admin-listen", "127.0.0.1:0"];

/// Polls `f` every 20 ms until it returns true or `IO_TIMEOUT` passed.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + IO_TIMEOUT;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Asserts a JSON answer of the admin server: status, `Connection: close`, exact body.
#[track_caller]
fn assert_json(resp: &Response, status: u16, body: &str) {
    let raw = String::from_utf8_lossy(&resp.raw);
    assert_eq!(resp.status, status, "{raw}");
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json"),
        "{raw}"
    );
    assert!(resp.connection_close(), "{raw}");
    assert_eq!(resp.body_text(), body, "{raw}");
}

#[test]
fn health_ready_and_metrics_answer_on_their_own_port() {
    let origin = MockOrigin::echo();
    let sluice = start_proxy(&origin.url(), &ADMIN, false);
    let admin = sluice.admin_addr();
    assert_eq!(admin.ip().to_string(), "127.0.0.1");
    assert_ne!(admin.port(), sluice.addr().port());

    let mut client = sluice.admin();
    assert_json(&client.get("/health"), 200, "{\"status\":\"live\"}\n");
    client.expect_closed();
    assert_json(
        &sluice.admin().get("/ready"),
        200,
        "{\"status\":\"ready\"}\n",
    );
    // A query string does not change the endpoint.
    assert_json(
        &sluice.admin().get("/ready?full=1"),
        200,
        "{\"status\":\"ready\"}\n",
    );

    let scrape = sluice.scrape();
    assert_eq!(scrape.value("sluice_up", &[]), Some(1.0));
    assert_eq!(
        scrape.family("sluice_up").map(|f| f.kind),
        Some(common::prom::Kind::Gauge)
    );

    // The admin port forwards nothing, and the proxy port serves no admin endpoint.
    let resp = sluice.admin().get("/crypto/sign?message=x");
    assert_json_error(&resp, 404, "not_found");
    assert!(
        origin.requests().is_empty(),
        "the admin port reached the origin"
    );
    assert_json_error(&sluice.connect().get("/metrics"), 404, "not_found");
}

#[test]
fn startup_line_ends_with_the_admin_address() {
    let origin = MockOrigin::echo();
    let sluice = start_proxy(&origin.url(), &ADMIN, true);
    // `start_proxy` opens the executor up: `--rate-limit 1000000/1s`.
    let endpoints: String = STD_PATHS
        .split(',')
        .map(|p| {
            format!(" endpoint={p} methods=any limit=1000000/1s(sliding-window) deadline=2000ms")
        })
        .collect();
    let expected = format!(
        "sluice {} listening on {} workers=2 driver={} origin={} log_level=info \
         access_log=off endpoints=3{endpoints} admin={}",
        env!("CARGO_PKG_VERSION"),
        sluice.addr(),
        sluice.driver(),
        origin.url(),
        sluice.admin_addr(),
    );
    assert_eq!(sluice.startup().line, expected);
}

#[test]
fn head_gets_the_headers_of_get_and_no_body() {
    let origin = MockOrigin::echo();
    let sluice = start_proxy(&origin.url(), &ADMIN, false);
    for (path, status, content_type) in [
        ("/health", 200, "application/json"),
        ("/ready", 200, "application/json"),
        ("/metrics", 200, "text/plain; version=0.0.4; charset=utf-8"),
        ("/nope", 404, "application/json"),
    ] {
        let get = sluice.admin().get(path);
        let mut client = sluice.admin();
        client.send(format!("HEAD {path} HTTP/1.1\r\nHost: admin.test\r\n\r\n"));
        let head = client.head_response();
        assert_eq!(head.status, status, "{}", head.head_text());
        assert_eq!(head.header("content-type").as_deref(), Some(content_type));
        let length: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("HEAD {path}: no Content-Length: {}", head.head_text()));
        if path == "/metrics" {
            // The exposition may change between two scrapes; it is never empty.
            assert!(length > 0, "HEAD {path}: {}", head.head_text());
        } else {
            assert_eq!(length, get.body.len(), "HEAD {path}: {}", head.head_text());
        }
        assert!(head.connection_close());
        // Nothing follows the head.
        client.expect_closed();
    }
}

#[test]
fn unknown_paths_other_methods_and_malformed_heads_are_refused() {
    let origin = MockOrigin::echo();
    let sluice = start_proxy(&origin.url(), &ADMIN, false);
    for path in ["/", "/metrics/", "/healthz", "/_sluice/jobs/x"] {
        let resp = sluice.admin().get(path);
        assert_json_error(&resp, 404, "not_found");
        assert!(resp.connection_close());
    }
    for method in ["POST", "PUT", "DELETE"] {
        let resp = sluice.admin().request(with_body(method, "/metrics", b"{}"));
        assert_json_error(&resp, 405, "method_not_allowed");
        assert_eq!(resp.header("allow").as_deref(), Some("GET, HEAD"));
    }
    let resp = sluice
        .admin()
        .request("GET /health HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n");
    assert_json_error(&resp, 400, "bad_request");
    let resp = sluice.admin().request("GET /health HTTP/1.1\r\n\r\n");
    assert_json_error(&resp, 400, "bad_request");
    let mut big = "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_string();
    big.push_str(&"a".repeat(9 * 1024));
    big.push_str("\r\n\r\n");
    let resp = sluice.admin().request(big);
    assert_json_error(&resp, 431, "header_too_large");
    // Still serving.
    assert_json(
        &sluice.admin().get("/health"),
        200,
        "{\"status\":\"live\"}\n",
    );
}

#[test]
fn ready_is_503_while_draining_and_the_admin_port_closes_at_exit() {
    let origin = MockOrigin::start(|req| {
        let mut r = Reply::ok(format!("slow {}", req.target));
        r.steps.insert(0, Step::Sleep(Duration::from_millis(1500)));
        r
    });
    let mut sluice = start_proxy(
        &origin.url(),
        &[
            ADMIN[0],
            ADMIN[1],
            "--ingress-request-timeout-ms",
            "20000",
            "--shutdown-grace",
            "20s",
        ],
        false,
    );
    let admin = sluice.admin_addr();
    assert_json(
        &sluice.admin().get("/ready"),
        200,
        "{\"status\":\"ready\"}\n",
    );
    let addr = sluice.addr();
    let waiting = std::thread::spawn(move || Client::connect(addr).get("/crypto/sign?m=slow"));
    origin.wait_requests(1);
    sluice.signal(libc::SIGTERM);
    let mut last = None;
    assert!(
        eventually(|| {
            let resp = sluice.admin().get("/ready");
            let draining = resp.status == 503;
            last = Some(resp);
            draining
        }),
        "/ready never turned 503 during the drain: {:?}",
        last.map(|r| String::from_utf8_lossy(&r.raw).into_owned())
    );
    assert_json(
        last.as_ref().unwrap(),
        503,
        "{\"status\":\"not_ready\",\"reason\":\"shutting down\"}\n",
    );
    // Still live, and still scraped, while draining.
    assert_json(
        &sluice.admin().get("/health"),
        200,
        "{\"status\":\"live\"}\n",
    );
    assert_eq!(sluice.scrape().value("sluice_up", &[]), Some(1.0));
    let resp = waiting.join().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.head_text());
    assert_eq!(resp.body_text(), "slow /crypto/sign?m=slow");
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        sluice.stderr()
    );
    assert!(
        TcpStream::connect(admin).is_err(),
        "admin port still open after exit"
    );
}

#[test]
fn admin_listen_from_the_file_needs_a_restart_to_change() {
    let origin = MockOrigin::echo();
    let base = format!(
        "token = \"{TOKEN}\"\norigin = \"{}\"\npaths = \"/crypto/sign\"\n",
        origin.url()
    );
    let path = write_config("reload", &format!("{base}admin_listen = \"127.0.0.1:0\"\n"));
    let path_text = path.display().to_string();
    let sluice = Sluice::start(&["--config", &path_text], false);
    let admin = sluice.admin_addr();
    assert_json(
        &sluice.admin().get("/health"),
        200,
        "{\"status\":\"live\"}\n",
    );
    write_config("reload", &format!("{base}admin_listen = \"127.0.0.1:1\"\n"));
    sluice.signal(libc::SIGHUP);
    assert!(
        eventually(|| sluice.stderr().contains("config reloaded")),
        "no reload; stderr:\n{}",
        sluice.stderr()
    );
    assert!(
        sluice
            .stderr()
            .contains("config reload: admin_listen changed; ignored until restart"),
        "stderr:\n{}",
        sluice.stderr()
    );
    assert_json(
        &Client::connect(admin).get("/ready"),
        200,
        "{\"status\":\"ready\"}\n",
    );
    drop(sluice);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
